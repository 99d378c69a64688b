"""Minimal pairs: an acceptable and an unacceptable sentence that differ in one grammatical point.

  read(paths)            pairs from JSONL(.gz) files, one {"sentence_good", "sentence_bad", ...} object a line;
                         any other field (paradigm, phenomenon, ...) can group them
  blimp()                BLiMP (Warstadt et al. 2020; data/evals/blimp, CC BY 4.0), all 67 paradigms x 1,000 pairs,
                         grouped as the paper's tables group them (see below)
  subset(pairs, n, by)   a fixed stratified subset: in each group, the n pairs whose text hashes lowest

BLiMP's data files label two paradigms (animate_subject_passive, animate_subject_trans) 's-selection' where the
paper's published table counts them under argument_structure, and one (principle_A_case_2) has the field
'syntax/semantics' where the other syntax-semantics paradigms have 'syntax_semantics'. blimp() follows the published
table (the phenomenon of each paradigm as in published_models_summary.jsonl) and the majority spelling, so that
Triad's 12 phenomena and 4 fields are the published ones.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from data.corpus import expand, jsonl_records
from data.errors import DataError

BLIMP_DIR = Path(__file__).resolve().parent / "evals" / "blimp"
BLIMP = BLIMP_DIR / "blimp.jsonl.gz"
BLIMP_PUBLISHED = BLIMP_DIR / "published_models_summary.jsonl"
SENTENCES = ("sentence_good", "sentence_bad")


def read(spec: str, flag: str = "--pairs_files") -> list[dict]:
    """The pairs of every file in `spec` (comma-separated paths or globs), in file order; each pair gets 'source'
    ('file:line'). DataError naming the file, the line and the missing or bad field."""
    out = []
    for path in expand(spec, flag):
        if not str(path).endswith((".jsonl", ".jsonl.gz")):
            raise DataError(f"{flag}: {path} is not a .jsonl or .jsonl.gz file of minimal pairs")
        n_before = len(out)
        for n, rec in jsonl_records(path):
            if not isinstance(rec, dict):
                raise DataError(f"{path}:{n}: a line must be a JSON object with sentence_good and sentence_bad")
            for field in SENTENCES:
                if field not in rec:
                    raise DataError(f"{path}:{n}: missing field {field!r}; each line needs sentence_good and "
                                    "sentence_bad")
                if not isinstance(rec[field], str) or not rec[field].strip():
                    raise DataError(f"{path}:{n}: field {field!r} must be a non-empty string")
            out.append({**rec, "source": f"{path}:{n}"})
        if len(out) == n_before:
            raise DataError(f"{path}: no minimal pairs in it; each line needs sentence_good and sentence_bad")
    return out


def require(pairs: list[dict], field: str) -> None:
    """DataError naming the first pair without the grouping field `field`."""
    for p in pairs:
        if field not in p:
            raise DataError(f"{p['source']}: no field {field!r} to group by; pass --group_by with a field every "
                            "line has, or '' for none")


def blimp() -> list[dict]:
    """All 67,000 BLiMP pairs with 'UID' (paradigm), 'linguistics_term' (phenomenon) and 'field' as in the
    published table (see the module docstring)."""
    phenomenon = {}
    for _, rec in jsonl_records(BLIMP_PUBLISHED):
        if rec["UID"] != "overall":
            phenomenon[rec["UID"]] = rec["linguistics_term"]
    pairs = read(str(BLIMP), "BLiMP")
    for p in pairs:
        p["linguistics_term"] = phenomenon[p["UID"]]
        p["field"] = p["field"].replace("/", "_")
    return pairs


def published() -> dict[str, dict[str, float]]:
    """The BLiMP paper's accuracies: {model: {paradigm UID, 'phenomenon/<term>' or 'overall': accuracy}} for its
    5-gram ('ngram'), LSTM, Transformer-XL ('txl') and GPT-2 models."""
    out: dict[str, dict[str, float]] = {}
    for _, rec in jsonl_records(BLIMP_PUBLISHED):
        key = rec["UID"] if rec["UID"] != "overall" else (
            "overall" if rec["linguistics_term"] == "overall" else f"phenomenon/{rec['linguistics_term']}")
        for model in ("ngram", "lstm", "txl", "gpt2"):
            out.setdefault(model, {})[key] = rec[model]
    return out


def _key(p: dict) -> bytes:
    return hashlib.blake2b(json.dumps([p["sentence_good"], p["sentence_bad"]]).encode(), digest_size=8,
                           person=b"triad-pairs").digest()


def subset(pairs: list[dict], per_group: int, by: str) -> list[dict]:
    """In each group of `by` (all pairs one group when by is ''), the `per_group` pairs whose text hashes lowest
    (all of a smaller group), in their original order: the same pairs on every run and machine."""
    if per_group <= 0:
        return list(pairs)
    if by:
        require(pairs, by)
    groups: dict[object, list[int]] = {}
    for i, p in enumerate(pairs):
        groups.setdefault(p[by] if by else "", []).append(i)
    keep = {i for idx in groups.values() for i in sorted(idx, key=lambda i: (_key(pairs[i]), i))[:per_group]}
    return [p for i, p in enumerate(pairs) if i in keep]
