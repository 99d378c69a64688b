"""BLiMP, and any other minimal-pair suite, scored zero-shot by each family as the BabyLM pipeline scores it.

  python -m experiments.blimp --workdir=runs/compare/gpt                    # all 67,000 BLiMP pairs
  python -m experiments.blimp --workdir=runs/compare/gpt --per_group=90     # the report's fixed subset (6,030 pairs)
  python -m experiments.blimp --workdir=runs/gpt --pairs_files=mine.jsonl --group_by=phenomenon

A sentence's score is its log-likelihood under the model's own objective (model/scoring.py, through
experiments.probes.scorer), summed over its tokens with no length normalisation: GPT sums log p(token | the tokens
before it) after the eos it starts every document with in training; BERT sums pseudo-log-likelihoods, each token
masked in turn inside [CLS] ... [SEP] ([CLS] and [SEP] never masked; Salazar et al. 2020); T5 replaces each token in
turn by <extra_id_0> in the encoder input (which ends with eos, as in pretraining) and reads the token from the
decoder after [start, <extra_id_0>]. A pair counts 1 when the acceptable sentence scores higher, 0 when lower and
1/2 on an exact tie (BabyLM's pipeline counts a tie as correct, which flatters a degenerate model; the ties are
counted and reported).

Accuracy of a group (a BLiMP paradigm, or a --group_by value) is the mean over its pairs, with standard error
std / sqrt(n); a level above it (phenomenon, field) and the overall number are means over its paradigms, as
published (every BLiMP paradigm has 1,000 pairs, and the subset keeps the same number of each), with standard
error sqrt(sum of the paradigms' squared errors) / paradigms. Results go to `<workdir>/blimp/<name>.json`, written
whole or not at all; the report of a comparison reads them (experiments/compare.py scores every contender on the
--per_group subset of its suite).
"""

from __future__ import annotations

import hashlib
import json
import os
import time

import numpy as np
from absl import app, flags, logging

from data import minimal_pairs
from experiments.planning import SweepError, check_command_line
from experiments.probes import _record, per_pair_path, scorer
from train import errors
from train.workdir import load_workdir, write_json

BLIMP_LEVELS = ("UID", "linguistics_term", "field")  # paradigm, phenomenon, field
FIELDS = ("morphology", "syntax", "syntax_semantics", "semantics")
LEVEL_NAMES = {"UID": "paradigm", "linguistics_term": "phenomenon", "field": "field"}


def pair_results(good: np.ndarray, bad: np.ndarray) -> np.ndarray:
    """Per pair: 1 if the acceptable sentence scores higher, 0 if lower, 0.5 on an exact tie."""
    return (good > bad) + 0.5 * (good == bad)


def score_pairs(score, tok, pairs: list[dict], max_len: int) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """(good scores, bad scores, indices of the pairs scored): each distinct sentence scored once; a pair with a
    sentence longer than the model takes (max_len, less 2 for the specials) is left out."""
    sentences = sorted({p[f] for p in pairs for f in minimal_pairs.SENTENCES})
    ids = dict(zip(sentences, (tok.encode(s) for s in sentences), strict=True))
    fits = {s for s, t in ids.items() if 0 < len(t) <= max_len - 2}
    kept = [i for i, p in enumerate(pairs) if p["sentence_good"] in fits and p["sentence_bad"] in fits]
    todo = sorted({pairs[i][f] for i in kept for f in minimal_pairs.SENTENCES})
    by_text = dict(zip(todo, score([[]] * len(todo), [ids[s] for s in todo]), strict=True)) if todo else {}
    good = np.array([by_text[pairs[i]["sentence_good"]] for i in kept])
    bad = np.array([by_text[pairs[i]["sentence_bad"]] for i in kept])
    return good, bad, kept


def _group(values: np.ndarray) -> dict:
    n = len(values)
    se = float(np.std(values, ddof=1) / np.sqrt(n)) if n > 1 else None
    return {"accuracy": float(np.mean(values)), "se": se, "pairs": n}


def _mean_of(groups: list[dict]) -> dict:
    """The mean of groups' accuracies and its standard error (independent groups)."""
    ses = [g["se"] for g in groups]
    se = float(np.sqrt(sum(s * s for s in ses)) / len(groups)) if all(s is not None for s in ses) else None
    return {"accuracy": float(np.mean([g["accuracy"] for g in groups])), "se": se,
            "groups": len(groups), "pairs": sum(g["pairs"] for g in groups)}


def summarize(pairs: list[dict], results: np.ndarray, levels: tuple[str, ...]) -> dict:
    """{'overall': ..., level: {value: ...}} where levels[0] is the unit whose pairs are averaged (BLiMP's
    paradigm) and every other level, and the overall figure, average the units in it; no levels: one unit."""
    if not levels:
        return {"overall": _group(results)}
    units: dict[str, list[int]] = {}
    for i, p in enumerate(pairs):
        units.setdefault(p[levels[0]], []).append(i)
    unit_stats = {u: _group(results[idx]) for u, idx in units.items()}
    out = {"overall": _mean_of(list(unit_stats.values())), levels[0]: unit_stats}
    for level in levels[1:]:
        members: dict[str, list[str]] = {}
        for u, idx in units.items():
            members.setdefault(pairs[idx[0]][level], []).append(u)
        out[level] = {v: _mean_of([unit_stats[u] for u in us]) for v, us in members.items()}
    return out


def fingerprint(pairs: list[dict]) -> str:
    """12 hex digits naming the pairs (their texts, in order): two runs' results pair up when these agree."""
    texts = [[p["sentence_good"], p["sentence_bad"]] for p in pairs]
    return hashlib.sha256(json.dumps(texts).encode()).hexdigest()[:12]


def evaluate(workdir: str, pairs: list[dict], levels: tuple[str, ...], name: str, log=print) -> dict:
    """Scores `pairs` with the model in `workdir`; writes and returns `<workdir>/blimp/<name>.json`: the summary
    (summarize), ties, pairs left out, time and throughput, and each pair's result (for paired tests)."""
    for level in levels:
        minimal_pairs.require(pairs, level)
    config, model_cfg, model, params, tok = load_workdir(workdir)
    score = scorer(model, params, tok, workdir, "minimal pairs")
    t0 = time.perf_counter()
    good, bad, kept = score_pairs(score, tok, pairs, model_cfg.max_len)
    wall = time.perf_counter() - t0
    if not kept:
        raise SweepError(f"minimal pairs: no pair fits model.max_len={model_cfg.max_len} of {workdir}")
    scored = [pairs[i] for i in kept]
    results = pair_results(good, bad)
    record = {"name": name, "workdir": os.path.abspath(workdir), "arch": model_cfg.arch, "levels": list(levels),
              **summarize(scored, results, levels), "ties": int(np.sum(good == bad)),
              "left_out": len(pairs) - len(kept),
              "wall_s": wall, "pairs_per_s": len(kept) / wall, "examples_sha": fingerprint(pairs), "pair": kept,
              "correct": results.tolist()}
    path = os.path.join(workdir, "blimp", f"{name}.json")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    write_json(path, record)
    o = record["overall"]
    log(f"[blimp] {os.path.basename(os.path.abspath(workdir))} {name}: accuracy {o['accuracy']:.3f} ± "
        f"{o['se'] or 0:.3f} over {len(kept):,} pairs ({record['ties']} ties, {record['left_out']} left out), "
        f"{wall:.0f} s, {record['pairs_per_s']:.0f} pairs/s")
    return record


def blimp_name(per_group: int) -> str:
    return "blimp" if per_group <= 0 else f"blimp-{per_group}-per-paradigm"


def run_blimp(workdir: str, per_group: int = 0, log=print) -> dict:
    """BLiMP (all of it, or the fixed subset of `per_group` pairs per paradigm) scored by the model in `workdir`."""
    pairs = minimal_pairs.subset(minimal_pairs.blimp(), per_group, "UID")
    return evaluate(workdir, pairs, BLIMP_LEVELS, blimp_name(per_group), log=log)


def blimp_contender(rundir: str, per_group: int, log=print) -> dict:
    """run_blimp on a finished contender, recorded in `<rundir>/summary.json`: report columns 'blimp (zero-shot)'
    and 'blimp_<field> (zero-shot)' under "probes", their details under "zero_shot_results" (with a per-pair file
    each, for the report's paired bootstrap) and the whole breakdown under "blimp". A result of the same
    checkpoint (summary) and pairs is read back, not scored again."""
    name = blimp_name(per_group)
    path = os.path.join(rundir, "blimp", f"{name}.json")
    with open(os.path.join(rundir, "summary.json")) as f:
        summary = json.load(f)
    if (summary.get("blimp") or {}).get("name") == name and os.path.isfile(path):  # a retrained run has no "blimp"
        with open(path) as f:
            return json.load(f)
    pairs = minimal_pairs.subset(minimal_pairs.blimp(), per_group, "UID")
    record = evaluate(rundir, pairs, BLIMP_LEVELS, name, log=log)
    field_of = [pairs[i]["field"] for i in record["pair"]]
    tasks = {"blimp": (record["overall"]["accuracy"], list(range(len(field_of))))}
    for fld in FIELDS:
        tasks[f"blimp_{fld}"] = (record["field"][fld]["accuracy"], [j for j, x in enumerate(field_of) if x == fld])
    details, columns = {}, {}
    os.makedirs(os.path.dirname(per_pair_path(rundir, "blimp")), exist_ok=True)
    for task, (acc, idx) in tasks.items():
        write_json(per_pair_path(rundir, task), {
            "task": task, "accuracy": acc, "pair": [record["pair"][j] for j in idx],
            "correct": [record["correct"][j] for j in idx], "examples_sha": record["examples_sha"]})
        details[task] = {"accuracy": acc, "pairs": len(idx), "wall_s": record["wall_s"], "subset": name}
        columns[f"{task} (zero-shot)"] = acc
    _record(rundir, columns, "zero_shot_results", {**(summary.get("zero_shot_results") or {}), **details})
    with open(os.path.join(rundir, "summary.json")) as f:
        summary = json.load(f)
    summary["blimp"] = {k: record[k] for k in ("name", "overall", "field", "linguistics_term", "UID", "ties",
                                                "left_out", "wall_s", "pairs_per_s", "examples_sha")}
    write_json(os.path.join(rundir, "summary.json"), summary)
    return record


def main(argv: list[str]) -> None:
    fv = flags.FLAGS
    with errors.one_line():
        check_command_line(argv, fv.workdir, "--workdir=runs/gpt (a workdir written by train.main)")
        logging.set_verbosity(logging.WARNING)
        if fv.pairs_files:
            pairs = minimal_pairs.read(fv.pairs_files)
            group_by = tuple(g.strip() for g in fv.group_by.split(",") if g.strip())
            name = fv.name or os.path.basename(fv.pairs_files.split(",")[0]).split(".")[0]
            pairs = minimal_pairs.subset(pairs, fv.per_group, group_by[0] if group_by else "")
            record = evaluate(fv.workdir, pairs, group_by, name)
        else:
            record = run_blimp(fv.workdir, fv.per_group)
        print(format_record(record))


def format_record(record: dict) -> str:
    """The overall figure and one table per level, as text."""
    def row(label, r):
        se = f" ± {100 * r['se']:.1f}" if r.get("se") is not None else ""
        return f"  {label:<44} {100 * r['accuracy']:5.1f}%{se}  ({r['pairs']:,} pairs)"
    lines = [row("overall (mean over groups)" if record["levels"] else "overall", record["overall"])]
    for level in record["levels"][::-1]:
        lines.append(f"by {LEVEL_NAMES.get(level, level)}:")
        lines += [row(k, v) for k, v in sorted(record[level].items())]
    return "\n".join(lines)


if __name__ == "__main__":
    flags.DEFINE_string("workdir", "", "A pretrained workdir (train.main) to score.")
    flags.DEFINE_integer("per_group", 0, "Pairs per group (BLiMP paradigm, or the first --group_by field): the "
                         "fixed subset of the lowest text hashes; 0 = every pair.")
    flags.DEFINE_string("pairs_files", "", "JSONL(.gz) files of {sentence_good, sentence_bad, ...} instead of BLiMP "
                        "(comma-separated paths or globs).")
    flags.DEFINE_string("group_by", "", "With --pairs_files: comma-separated fields, the unit averaged over its pairs "
                        "first, then higher levels averaging units ('' = one group).")
    flags.DEFINE_string("name", "", "With --pairs_files: the result's name (<workdir>/blimp/<name>.json); default: "
                        "the first file's name.")
    app.run(main)

