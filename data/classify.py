"""Labelled examples -> fixed-shape classification batches, with the same `Split` interface as data/pipeline.py.

Examples come from .jsonl files (task 'jsonl': data.train_files / data.val_files), one record a line,
`{"text": ..., "label": ...}` or `{"text_a": ..., "text_b": ..., "label": ...}`, or from the probe tasks of
data/probes.py (built from the pretraining corpus's validation text). The label vocabulary is the sorted set of the
training labels (all ints or all strings); label id i is its index, so for binary tasks the positive class (the one
F1 is reported for) is the larger label: 1, 'true', 'pos'.

Encoding per architecture (truncated to data.seq_len; a pair keeps the end of a and the start of b, the tokens
nearest their boundary, taking from the longer side first):
  bert  [CLS] a [SEP] b [SEP]     token_types 0 up to the first [SEP], 1 after; the [CLS] state is pooled
  gpt   a [SEP] b                 lengths = real tokens; the state of the last one is pooled
  t5    a [SEP] b </s> (encoder)  the encoder output is mean-pooled; decoder_inputs (B, 1) = the start token is
                                  carried only so the loop's FLOP count sees an encoder-decoder batch; with
                                  task.t5_states='decoder' decoder_inputs = start + the encoder row, and lengths
                                  its real positions
A batch holds the model inputs plus `targets` (B, 1) int32 label ids and `weights` (B, 1) float32, so the one train
step and `losses.cross_entropy` need no change. Train batch `step` is a pure function of (seed, step): example
step * B + g of an endless sequence of shuffled epochs. Validation batch i holds examples i * B .. i * B + B - 1;
rows past the end repeat example 0 with weight 0, and `train.eval_steps = 0` means every validation batch once.

Probe examples shuffle in groups: a source document's positives and negatives (task.train_pairs pairs) stay
adjacent, so a batch splits at most the first and last group it holds. A positive and its negative differ only in
a swapped word pair or in b, so within a batch the pair's gradient is that difference; shuffled apart, it drowns
in the variation between documents (with examples shuffled one by one no model learned a probe: docs/results.md,
"The probe recipe").
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from data import corpus as corpus_lib
from data import probes
from data import tokenizer as tokenizer_lib
from data.errors import DataError
from data.pipeline import SPLIT_IDS

TASKS = ("jsonl",) + probes.TASKS
ARCHS = ("gpt", "bert", "t5")
log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Example:
    """One labelled example; `where` ('file:line') is what error messages name."""

    text_a: str
    text_b: str | None
    label: str | int
    where: str
    group: int | None = None  # probes: the source document (its positive and negative share it)


def parse_record(record, where: str) -> Example:
    """A jsonl record (or a probe record, same format) -> Example; DataError naming `where` and the fix."""
    if not isinstance(record, dict):
        raise DataError(f"{where}: not a JSON object; each line must be {{\"text\": ..., \"label\": ...}}")
    if "label" not in record:
        raise DataError(f"{where}: record has no 'label' field; add one (a string or an integer) to every line")
    label = record["label"]
    if not isinstance(label, bool | int | str):
        raise DataError(f"{where}: label {label!r} is a {type(label).__name__}; labels must be strings, integers or "
                        "booleans")
    if "text" in record and ("text_a" in record or "text_b" in record):
        raise DataError(f"{where}: record has both 'text' and 'text_a'/'text_b'; use 'text' for one text or "
                        "'text_a' and 'text_b' for a pair")
    if "text" in record:
        a, b = record["text"], None
    elif "text_a" in record:
        a, b = record["text_a"], record.get("text_b")  # a pair's second text is optional
    else:
        raise DataError(f"{where}: record has no text field; give 'text' (one text) or 'text_a' and 'text_b' "
                        "(a pair)")
    for name, v in (("text", a), ("text_b", b)):
        if v is not None and not isinstance(v, str):
            raise DataError(f"{where}: field {name!r} is a {type(v).__name__}; it must be a string")
    return Example(a, b, label, where)


def read_jsonl(path: Path) -> list[Example]:
    """The examples of one .jsonl(.gz) file; DataError (file:line and the fix) on anything malformed or empty."""
    if not path.name.removesuffix(".gz").endswith(".jsonl"):
        raise DataError(f"{path}: classification data must be .jsonl (or .jsonl.gz) with one "
                        "{\"text\": ..., \"label\": ...} record a line")
    out = []
    for n, record in corpus_lib.jsonl_records(path):
        out.append(parse_record(record, f"{path}:{n}"))
    if not out:
        raise DataError(f"{path}: contains no examples (the file is empty); add {{\"text\": ..., \"label\": ...}} "
                        "lines or pass another file")
    return out


def label_vocabulary(examples: list[Example]) -> list:
    """The sorted distinct labels of the training examples (all of one type: ints, strings or bools; at least two)."""
    kinds = {type(e.label) for e in examples}
    if len(kinds) > 1:
        first = next(e for e in examples if type(e.label) is not type(examples[0].label))
        raise DataError(f"{first.where}: label {first.label!r} is a {type(first.label).__name__} but "
                        f"{examples[0].where} has {examples[0].label!r}; use one type for every label")
    labels = sorted({e.label for e in examples})
    if len(labels) < 2:
        raise DataError(f"{examples[0].where.rsplit(':', 1)[0]}: every training example has label {labels[0]!r}; "
                        "classification needs at least two labels")
    return labels


def label_ids(examples: list[Example], labels: list, train_source: str) -> np.ndarray:
    """(N,) int32 index of each example's label in `labels`; DataError for a label training never saw."""
    index = {v: i for i, v in enumerate(labels)}
    out = np.empty(len(examples), np.int32)
    for j, e in enumerate(examples):
        if e.label not in index:
            raise DataError(f"{e.where}: label {e.label!r} does not occur in the training data ({train_source}; "
                            f"labels {labels}); fix the label or add training examples of it")
        out[j] = index[e.label]
    return out


def _fit_pair(na: int, nb: int, budget: int) -> tuple[int, int]:
    """Tokens kept of a and b when both must fit `budget`: the longer one is cut first."""
    if na + nb <= budget:
        return na, nb
    ka = min(na, max(budget // 2, budget - nb))
    return ka, min(nb, budget - ka)


def encode(examples: list[Example], tok, arch: str, seq_len: int,
           t5_decoder: bool = False) -> tuple[dict[str, np.ndarray], int]:
    """Model inputs of every example (see the module docstring) and how many were truncated; t5_decoder: the text
    goes to T5's decoder too (task.t5_states='decoder')."""
    if arch not in ARCHS:
        raise DataError(f"model.arch={arch!r} cannot be fine-tuned; choose one of {list(ARCHS)}")
    N, L = len(examples), seq_len
    enc_a = tok.encode_batch([e.text_a for e in examples])
    pairs = [j for j, e in enumerate(examples) if e.text_b is not None]
    enc_b = dict(zip(pairs, tok.encode_batch([examples[j].text_b for j in pairs]), strict=True))
    ids = np.full((N, L), tok.pad_id, np.int32)
    types = np.zeros((N, L), np.int32)
    lengths = np.zeros(N, np.int32)
    truncated = 0
    for j, a in enumerate(enc_a):
        b = enc_b.get(j)
        specials = {"bert": 2, "gpt": 0, "t5": 1}[arch] + (b is not None)
        budget = L - specials
        if b is None:
            ka, kb = min(len(a), budget), 0
            a = a[:ka]
        else:
            ka, kb = _fit_pair(len(a), len(b), budget)
            a, b = a[len(a) - ka:], b[:kb]
        truncated += (ka + kb) < len(enc_a[j]) + len(enc_b.get(j) or ())
        if arch == "bert":
            row = [tok.cls_id, *a, tok.sep_id]
            first = len(row)
            if b is not None:
                row += [*b, tok.sep_id]
            types[j, first:len(row)] = 1
        else:
            row = [*a, *([tok.sep_id, *b] if b is not None else []), *([tok.eos_id] if arch == "t5" else [])]
        ids[j, :len(row)] = row
        lengths[j] = len(row)
    if arch == "bert":
        inputs = {"inputs": ids, "token_types": types}
    elif arch == "gpt":
        inputs = {"inputs": ids, "lengths": lengths}
    elif not t5_decoder:
        inputs = {"encoder_inputs": ids, "decoder_inputs": np.zeros((N, 1), np.int32)}
    else:  # the start token (0), then the encoder's text; lengths counts the start token
        decoder = np.concatenate([np.zeros((N, 1), np.int32), ids[:, :-1]], axis=1)
        decoder[np.arange(L)[None, :] > lengths[:, None]] = tok.pad_id
        inputs = {"encoder_inputs": ids, "decoder_inputs": decoder, "lengths": np.minimum(lengths + 1, L)}
    return inputs, truncated


@dataclasses.dataclass
class Split:
    """A finite labelled split cut into fixed-shape batches (this process's rows of each global batch)."""

    name: str
    arrays: dict[str, np.ndarray]  # model inputs + 'targets' (N, 1) + 'weights' (N, 1), one row per example
    seed: int
    global_batch_size: int
    rows: tuple[int, int]  # [start, stop) of this process's rows in the global batch
    groups: np.ndarray | None = None  # (N,) ids, nondecreasing: the shuffle keeps each group's examples adjacent

    def __post_init__(self):
        self._perms: dict[int, np.ndarray] = {}
        if self.groups is not None and (len(self.groups) != self.num_examples or np.any(np.diff(self.groups) < 0)):
            raise ValueError("Split.groups must hold one nondecreasing id per example")

    @property
    def num_examples(self) -> int:
        return len(self.arrays["targets"])

    @property
    def num_batches(self) -> int:
        """Batches that cover the split once (what an evaluation runs)."""
        return -(-self.num_examples // self.global_batch_size)

    def _permutation(self, epoch: int) -> np.ndarray:
        if epoch not in self._perms:
            if len(self._perms) > 4:
                self._perms.clear()
            rng = np.random.default_rng([self.seed, SPLIT_IDS[self.name], epoch])
            if self.groups is None:
                self._perms[epoch] = rng.permutation(self.num_examples)
            else:  # shuffle whole groups; members keep their order
                starts = np.flatnonzero(np.r_[True, np.diff(self.groups) != 0])
                members = np.split(np.arange(self.num_examples), starts[1:])
                self._perms[epoch] = np.concatenate([members[g] for g in rng.permutation(len(members))])
        return self._perms[epoch]

    def batch(self, step: int) -> dict[str, np.ndarray]:
        """This process's rows of global batch `step` (train: shuffled epochs; val: sequential, zero-weight tail)."""
        if step < 0:
            raise ValueError(f"step must be >= 0, got {step}")
        N = self.num_examples
        i = step * self.global_batch_size + np.arange(*self.rows, dtype=np.int64)
        if self.name == "train":
            epoch, pos = i // N, i % N
            idx = np.array([self._permutation(int(e))[p] for e, p in zip(epoch, pos, strict=True)], np.int64)
            valid = np.ones(len(i), bool)
        else:
            valid = i < N
            idx = np.where(valid, i, 0)
        out = {k: v[idx] for k, v in self.arrays.items()}
        out["weights"] = out["weights"] * valid[:, None]
        return out

    def iterate(self, start_step: int, num_steps: int) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
        """Yields (step, batch) for start_step..start_step + num_steps - 1 (batches are cheap: no prefetch)."""
        return ((s, self.batch(s)) for s in range(start_step, start_step + num_steps))


@dataclasses.dataclass
class Data:
    """The tokenizer, both splits and the label vocabulary; `summary()` is what to log."""

    tokenizer: object
    train: Split
    val: Split
    labels: list
    task: str
    truncated: dict[str, int]
    eval_steps: int  # validation batches per evaluation (train.eval_steps, or every batch once when it is 0)

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.vocab_size

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    @property
    def layout(self) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
        """Batch key -> (per-example shape, dtype)."""
        return {k: (v.shape[1:], v.dtype) for k, v in self.train.arrays.items()}

    def summary(self) -> dict:
        """Flat dict of task facts for logging (and config.json)."""
        out = {"objective": "classify", "task": self.task, "labels": self.labels, "num_classes": self.num_classes,
               "eval_steps": self.eval_steps, "vocab_size": self.vocab_size, "tokenizer": self.tokenizer.path or "byte"}
        for s in (self.train, self.val):
            targets = s.arrays["targets"][:, 0]
            out[f"{s.name}_examples"] = s.num_examples
            out[f"{s.name}_label_counts"] = np.bincount(targets, minlength=len(self.labels)).tolist()
            out[f"{s.name}_truncated"] = self.truncated[s.name]
        return out


def _tokenizer(data, texts: list[str]):
    """data.tokenizer, the byte tokenizer, or one trained (cached) on `texts` (the training examples)."""
    if data.tokenizer:
        return tokenizer_lib.load(data.tokenizer)
    if data.tokenizer_type == "byte":
        return tokenizer_lib.ByteTokenizer()
    return tokenizer_lib.train_cached(texts, data.vocab_size, data.tokenizer_type,
                                      corpus_lib.cache_root(data.cache_dir))[0]


def load_examples(config) -> tuple[list[Example], list[Example], object, str]:
    """(train examples, eval examples, tokenizer, where the training labels came from) for config.task."""
    task, data = config.task, config.data
    if task.name == "jsonl":
        if not data.val_files:
            raise DataError("data.val_files: task 'jsonl' needs an evaluation file; pass "
                            "--config.data.val_files=val.jsonl")
        train_files = corpus_lib.expand(data.train_files, "data.train_files")
        train = [e for f in train_files for e in read_jsonl(f)]
        val = [e for f in corpus_lib.expand(data.val_files, "data.val_files") for e in read_jsonl(f)]
        texts = [t for e in train for t in (e.text_a, e.text_b) if t]
        return train, val, _tokenizer(data, texts), ", ".join(map(str, train_files))
    built = probes.build(data, task)
    parts = {p: [dataclasses.replace(parse_record(r, f"{task.name} probe ({p}) example {n}"), group=r["source"])
                 for n, r in enumerate(built[p])] for p in ("train", "eval")}
    tok = corpus_lib.load(data).tokenizer  # the pretraining run's tokenizer (cached): same ids as its model
    return parts["train"], parts["eval"], tok, f"the {task.name} probe"


def build(config, process_index: int = 0, process_count: int = 1) -> Data:
    """Classification data for config.task (fine-tuning from a pretrained run: after train/workdir.py's
    `inherit_pretrained` has put that run's model and data settings into the config). The config is not changed:
    the number of classes and the evaluation batches are facts of the returned Data."""
    if config.task.name not in TASKS:
        raise DataError(f"task.name: unknown {config.task.name!r}; choose one of {list(TASKS)}")
    B = config.train.batch_size
    if B <= 0 or B % process_count:
        raise DataError(f"train.batch_size={B} must be positive and divisible by the {process_count} processes")
    if config.data.seq_len < 4:
        raise DataError(f"data.seq_len={config.data.seq_len} is too short for classification; use at least 4")
    train, val, tok, source = load_examples(config)
    for name, cap in (("train", config.task.max_train_examples), ("val", config.task.max_eval_examples)):
        if cap < 0:
            raise DataError(f"task.max_{'eval' if name == 'val' else name}_examples={cap} must be >= 0 (0 = all)")
    train = train[:config.task.max_train_examples or None]
    val = val[:config.task.max_eval_examples or None]
    labels = label_vocabulary(train)
    if config.task.num_classes not in (0, len(labels)):
        raise DataError(f"task.num_classes={config.task.num_classes} but the training data has {len(labels)} labels "
                        f"{labels}; set task.num_classes=0 to derive it")
    if config.model.pad_id != tok.pad_id:
        raise DataError(f"model.pad_id={config.model.pad_id} but the tokenizer's pad id is {tok.pad_id}; set it")
    per = B // process_count
    rows = (process_index * per, (process_index + 1) * per)
    splits, truncated = {}, {}
    for name, examples in (("train", train), ("val", val)):
        arrays, truncated[name] = encode(examples, tok, config.model.arch, config.data.seq_len,
                                         config.task.t5_states == "decoder")
        arrays["targets"] = label_ids(examples, labels, source)[:, None]
        arrays["weights"] = np.ones((len(examples), 1), np.float32)
        groups = None if any(e.group is None for e in examples) else np.array([e.group for e in examples])
        splits[name] = Split(name, arrays, config.seed, B, rows, groups)
    if config.train.eval_steps < 0:
        raise DataError(f"train.eval_steps={config.train.eval_steps} must be >= 0 (0 = the whole validation set)")
    eval_steps = config.train.eval_steps or splits["val"].num_batches
    if truncated["train"] or truncated["val"]:
        log.warning("%d train and %d validation examples were truncated to data.seq_len=%d", truncated["train"],
                    truncated["val"], config.data.seq_len)
    return Data(tok, splits["train"], splits["val"], labels, config.task.name, truncated, eval_steps)
