"""Probe tasks built deterministically from the VALIDATION text of the pretraining corpus (never its training text).

The source documents are the validation split exactly as data/corpus.py makes it (data.val_files, or the
documents whose content hash falls in the lowest data.val_fraction). They are divided again, by a differently salted
content hash, into probe-train and probe-eval documents (task.eval_fraction of them to eval), so the two parts never
share a source document. Each document then gives its passages as sources (`passages`: runs of whole sentences of
at least task.max_words words; a verse or a short document is one passage), at most task.passages of them, evenly
spaced through it (a chapter of a book gives many, so a few held-out books give enough probe pairs). Every usable
probe-eval source gives one positive and one negative example; a probe-train source gives task.train_pairs such
pairs, the same positive each time with another negative (another pair of words swapped, another document's
continuation), as far as the text allows. Both parts are exactly balanced. Records have the data/classify.py format
({"text": ...} or {"text_a", "text_b"}, "label"), plus "source": the index of the source passage, which its
positives and negatives share (fine-tuning keeps them in one batch, data/classify.py).

  next_sentence  Each document is cut in two at the boundary nearest its middle, preferring a line break, then a
                 sentence end (.?!), a clause end (;:), a comma, any space. a = the first part (its last
                 task.max_words // 2 words), b = the second (its first task.max_words // 2 words). Label 1: b is a's
                 own continuation; label 0: b is the second part of another document of the same part whose cut
                 has the same signature (a's final punctuation, b's capitalisation), so those surface cues do not
                 give the label away. (KJV documents are verses, and consecutive verses are rarely both in the val
                 split, so "the line that follows" is the part that follows within a document.)
  word_order     The first task.max_words words of a document: label 1 intact; label 0 with two adjacent
                 alphabetic, different words swapped (never the first word, so capitalisation and punctuation give
                 nothing away; the swap is always inside the text the model sees).

  python -m data.probes --config=experiments/configs/finetune.py:task=word_order --out=/tmp/probes
                                                   # writes train.jsonl and val.jsonl to look at
"""

from __future__ import annotations

import hashlib
import json
import os
import re

import numpy as np
from absl import app, flags
from ml_collections import config_flags

from data import corpus as corpus_lib
from data.errors import DataError

TASKS = ("next_sentence", "word_order")
_TASK_IDS = {"next_sentence": 0, "word_order": 1}
_PART_IDS = {"train": 0, "eval": 1}
_WORD = re.compile(r"\S+")
_MIN_SIDE = 3  # next_sentence: words each part keeps at least


def source_documents(data) -> list[str]:
    """The validation documents of the corpus config.data describes, as data/corpus.py splits them."""
    return list(corpus_lib.documents(data, "val"))


def split_sources(docs: list[str], eval_fraction: float) -> dict[str, list[str]]:
    """Probe-train and probe-eval sources: the round(eval_fraction * n) documents with the smallest salted hashes
    go to eval (independent of the corpus split's own hash order); both keep document order."""
    if not 0.0 < eval_fraction < 1.0:
        raise DataError(f"task.eval_fraction={eval_fraction} must be in (0, 1)")
    n_eval = min(len(docs) - 1, max(1, round(eval_fraction * len(docs))))
    keys = [hashlib.blake2b(d.encode("utf-8"), digest_size=8, person=b"triad-probes").digest() for d in docs]
    order = sorted(range(len(docs)), key=lambda i: (keys[i], i))
    is_eval = np.zeros(len(docs), bool)
    is_eval[order[:n_eval]] = True
    return {"train": [d for d, e in zip(docs, is_eval, strict=True) if not e],
            "eval": [d for d, e in zip(docs, is_eval, strict=True) if e]}


def _sentence_end(word: str) -> bool:
    return word.rstrip("\"')]").endswith((".", "?", "!"))


def passages(doc: str, min_words: int, limit: int) -> list[str]:
    """At most `limit` passages of `doc`, evenly spaced (the first, and the last when limit > 1): its runs of whole
    sentences, each
    the shortest with at least `min_words` words (the rest of the document joins the last run); words joined by
    single spaces. A document shorter than min_words is one passage."""
    words = doc.split()
    runs, start = [], 0
    for i, w in enumerate(words):
        if i + 1 - start >= min_words and _sentence_end(w):
            runs.append(words[start:i + 1])
            start = i + 1
    if start < len(words):
        if runs and len(words) - start < min_words:
            runs[-1] = runs[-1] + words[start:]
        else:
            runs.append(words[start:])
    keep = sorted({round(k) for k in np.linspace(0, len(runs) - 1, min(limit, len(runs)))}) if runs else []
    return [" ".join(runs[k]) for k in keep]


def _boundary_rank(word: str, gap: str) -> int:
    """How good a cut after `word` (followed by whitespace `gap`) is: 0 line break ... 4 any space."""
    if "\n" in gap:
        return 0
    w = word.rstrip("\"')]")
    if w.endswith((".", "?", "!")):
        return 1
    if w.endswith((";", ":")):
        return 2
    return 3 if w.endswith(",") else 4


def cut(doc: str, max_words: int) -> tuple[str, str] | None:
    """(a, b): `doc` cut at its best boundary nearest the middle, each side at most max_words // 2 words; None
    when the document is too short for both sides to keep _MIN_SIDE words."""
    spans = [m.span() for m in _WORD.finditer(doc)]
    n = len(spans)
    if n < 2 * _MIN_SIDE:
        return None
    best = min(range(_MIN_SIDE - 1, n - _MIN_SIDE),
               key=lambda i: (_boundary_rank(doc[spans[i][0]:spans[i][1]], doc[spans[i][1]:spans[i + 1][0]]),
                              abs(2 * (i + 1) - n), i))
    words = [doc[s:e] for s, e in spans]
    half = max(_MIN_SIDE, max_words // 2)
    return " ".join(words[:best + 1][-half:]), " ".join(words[best + 1:][:half])


def _signature(a: str, b: str) -> tuple[str, bool]:
    end = a.rstrip("\"')]")[-1]
    return (end if not end.isalnum() else "", b[:1].isupper())


def next_sentence(docs: list[str], rng: np.random.Generator, max_words: int, pairs: int = 1) -> list[dict]:
    """Per usable document, `pairs` (positive, matched negative) pairs with distinct negatives (fewer when its
    signature group is smaller; see the module docstring)."""
    cuts = [c for c in (cut(d, max_words) for d in docs) if c is not None]
    groups: dict[tuple, list[int]] = {}
    for i, (a, b) in enumerate(cuts):
        groups.setdefault(_signature(a, b), []).append(i)
    out = []
    for i, (a, b) in enumerate(cuts):
        others = [j for j in groups[_signature(a, b)] if j != i and cuts[j][1] != b]
        if not others:
            continue  # no negative with the same surface signature: leave the document out (keeps balance)
        negatives = [cuts[others[int(rng.integers(len(others)))]][1]]
        if pairs > 1:
            rest = sorted({cuts[j][1] for j in others} - set(negatives))
            negatives += [rest[k] for k in rng.permutation(len(rest))[:pairs - 1]]
        for neg in negatives:
            out.append({"text_a": a, "text_b": b, "label": 1, "source": i})
            out.append({"text_a": a, "text_b": neg, "label": 0, "source": i})
    return out


def word_order(docs: list[str], rng: np.random.Generator, max_words: int, swaps: int = 1,
               pairs: int = 1) -> list[dict]:
    """Per usable document, `pairs` (intact, swapped) pairs: the intact text and the same text with `swaps` disjoint
    adjacent pairs swapped, each pair at other spots (fewer pairs when the text allows fewer)."""
    out = []
    for i, d in enumerate(docs):
        words = d.split()[:max_words]
        spots = [k for k in range(1, len(words) - 1)
                 if words[k].isalpha() and words[k + 1].isalpha() and words[k].lower() != words[k + 1].lower()]
        if len(spots) < swaps:
            continue
        order, seen = list(rng.permutation(spots)), set()
        while len(seen) < pairs and len(order) >= swaps:
            swapped, used, rest = list(words), set(), []
            for k in order:
                if len(used) == 2 * swaps or k in used or k + 1 in used:
                    rest.append(k)
                    continue
                swapped[k], swapped[k + 1] = swapped[k + 1], swapped[k]
                used |= {k, k + 1}
            if len(used) < 2 * swaps:
                break
            order = rest  # the next pair swaps at other spots
            text = " ".join(swapped)
            if text not in seen:
                seen.add(text)
                out.append({"text": " ".join(words), "label": 1, "source": i})
                out.append({"text": text, "label": 0, "source": i})
    return out


def build(data, task) -> dict[str, list[dict]]:
    """{'train': records, 'eval': records} of probe task.name from the corpus in config.data (`data`)."""
    if task.name not in TASKS:
        raise DataError(f"task.name: {task.name!r} is not a probe task; choose one of {list(TASKS)}")
    if task.max_words < 2 * _MIN_SIDE:
        raise DataError(f"task.max_words={task.max_words} is too small for the probes; use at least {2 * _MIN_SIDE}")
    if task.passages < 1:
        raise DataError(f"task.passages={task.passages} must be >= 1")
    parts = {part: [p for d in docs for p in passages(d, task.max_words, task.passages)]
             for part, docs in split_sources(source_documents(data), task.eval_fraction).items()}
    if task.swaps < 1:
        raise DataError(f"task.swaps={task.swaps} must be >= 1")
    if task.train_pairs < 1:
        raise DataError(f"task.train_pairs={task.train_pairs} must be >= 1")
    out = {}
    for part, docs in parts.items():
        rng = np.random.default_rng([task.seed, _TASK_IDS[task.name], _PART_IDS[part]])
        pairs = task.train_pairs if part == "train" else 1  # eval: one pair per source, independent examples
        if task.name == "next_sentence":
            out[part] = next_sentence(docs, rng, task.max_words, pairs)
        else:
            out[part] = word_order(docs, rng, task.max_words, task.swaps, pairs)
        if not out[part]:
            raise DataError(f"the {task.name} probe has no {part} examples: the validation split has too few usable "
                            f"documents ({len(docs)} {part} sources); raise data.val_fraction or pass larger "
                            "data.val_files")
    return out


def write(records: dict[str, list[dict]], directory: str) -> dict[str, str]:
    """Writes train.jsonl and val.jsonl (the 'eval' part) to `directory`; returns their paths."""
    os.makedirs(directory, exist_ok=True)
    paths = {}
    for part, name in (("train", "train.jsonl"), ("eval", "val.jsonl")):
        paths[part] = os.path.join(directory, name)
        with open(paths[part], "w", encoding="utf-8") as f:
            f.writelines(json.dumps(r) + "\n" for r in records[part])
    return paths


def main(argv):
    config = flags.FLAGS.config
    paths = write(build(config.data, config.task), flags.FLAGS.out)
    print(f"wrote {paths['train']} and {paths['eval']}")


if __name__ == "__main__":
    config_flags.DEFINE_config_file("config", None, "A fine-tuning config with a probe task, e.g. "
                                    "experiments/configs/finetune.py:task=word_order.", lock_config=True)
    flags.DEFINE_string("out", None, "Directory for train.jsonl and val.jsonl.")
    flags.mark_flags_as_required(["config", "out"])
    app.run(main)
