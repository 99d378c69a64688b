"""A ladder's runs read back as records: `<workdir>/ladder.json` (what experiments/ladder.py planned) and each run's
summary.json. Plain JSON: nothing is built or trained.

  records, meta = load("runs/ladder")

A record is {"name", "contender", "size", "d_model", "budget" (the nominal budget, shared exactly by the runs of
one budget), "seed", "role" ("ladder" or "lr_check"), "lr", "lr_factor", "flops" (executed), "params", "tokens"
(token positions trained on: steps x batch x (L, or S + T for t5)), "flops_per_token", "loss" (the final eval
cross-entropy of the run's own objective), "loss_tokens", and a value (or None) per yardstick of
meta["yardsticks"] ("blimp" with "blimp_se", "zero_shot/<task>")}. meta is ladder.json without its "runs", plus
"finished" and "missing" (the planned runs with no summary.json yet, by name): a partial ladder is still read.
"""

from __future__ import annotations

import json
import os

PLAN_FILE = "ladder.json"


def _read(path: str) -> dict:
    with open(path) as f:
        return json.load(f)


def record(planned: dict, summary: dict) -> dict:
    """One run's record from its ladder.json entry and its summary.json."""
    steps, per_step, tokens_per_step = summary["steps"], summary["flops_per_step"], summary["tokens_per_step"]
    ev = summary.get("final_eval") or {}
    zero = summary.get("zero_shot_results") or {}
    blimp = (summary.get("blimp") or {}).get("overall") or {}
    out = {k: planned[k] for k in ("name", "contender", "size", "d_model", "budget", "seed", "role", "lr",
                                   "lr_factor")}
    out.update({"flops": steps * per_step, "params": summary["params"], "tokens": steps * tokens_per_step,
                "flops_per_token": per_step / tokens_per_step, "steps": steps,
                # The objective's cross-entropy alone (eval/nll), as experiments/report.py reads it.
                "loss": ev.get("eval/nll", ev.get("eval/loss")), "loss_tokens": ev.get("eval/tokens"),
                "blimp": blimp.get("accuracy"), "blimp_se": blimp.get("se")})
    for task, r in zero.items():
        if not task.startswith("blimp"):
            out[f"zero_shot/{task}"] = r.get("accuracy")
    return out


def load(workdir: str) -> tuple[list[dict], dict]:
    """(the records of every finished run, in plan order; meta) of the ladder in `workdir`."""
    path = os.path.join(workdir, PLAN_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} not found: {workdir} is not a ladder's workdir (experiments/ladder.py "
                                f"writes it)")
    plan = _read(path)
    meta = {k: v for k, v in plan.items() if k != "runs"}
    records, missing = [], []
    for planned in plan["runs"]:
        summary = os.path.join(workdir, planned["name"], "summary.json")
        if not os.path.isfile(summary):
            missing.append(planned["name"])
            continue
        s = _read(summary)
        if s.get("stopped_by") or s.get("steps") != planned["steps"]:
            missing.append(planned["name"])
            continue
        rec = record(planned, s)
        for key in meta.get("yardsticks", {}):
            rec.setdefault(key, None)
        records.append(rec)
    meta.update(finished=len(records), missing=missing)
    return records, meta
