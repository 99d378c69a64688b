"""The learning-rate rule's check: a ladder's role "lr_check" runs (0.5x and 2x the rule, and the rule at seed 1)
beside the ladder's run at the rule, per contender, size and budget (experiments/ladder.py plans them)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def lr_check(records: Sequence[dict]) -> list[dict]:
    """Per contender, size and budget of the role "lr_check" runs: the eval loss at each lr_factor (factor 1: the
    ladder's run there, mean over its seeds, else the lr_check runs at factor 1), the seed noise (the spread
    |L(seed 0) - L(seed 1)| of the rule's runs when both exist, else the standard deviation over ladder seeds, else
    None) and the verdict: "holds" unless a neighbour factor beats the rule by more than the noise."""
    out = []
    checks = [r for r in records if r.get("role") == "lr_check" and r.get("loss") is not None]
    where = lambda r: (r["contender"], r["size"], r["budget"])
    for contender, size, budget in sorted({where(r) for r in checks}):
        ladder = [r for r in records if r.get("role") == "ladder" and r.get("loss") is not None
                  and where(r) == (contender, size, budget)]
        mine = [r for r in checks if where(r) == (contender, size, budget)]
        rule_runs = ladder or [r for r in mine if r["lr_factor"] == 1]
        losses = {float(fct): float(np.mean([r["loss"] for r in mine if r["lr_factor"] == fct]))
                  for fct in sorted({r["lr_factor"] for r in mine if r["lr_factor"] != 1})}
        row = {"contender": contender, "size": size, "budget": budget, "losses": losses, "noise": None,
               "noise_from": "unknown", "best_neighbour": None, "margin": None}
        if rule_runs:
            losses[1.0] = float(np.mean([r["loss"] for r in rule_runs]))
        by_seed = {r["seed"]: r["loss"] for r in ladder + [r for r in mine if r["lr_factor"] == 1]}
        if {0, 1} <= set(by_seed) and any(r["lr_factor"] == 1 and r["seed"] == 1 for r in mine):
            row["noise"], row["noise_from"] = abs(by_seed[0] - by_seed[1]), "seeds 0 and 1 of the rule"
        elif len({r["seed"] for r in ladder}) > 1:
            row["noise"] = float(np.std([r["loss"] for r in ladder], ddof=1))
            row["noise_from"] = f"std over {len({r['seed'] for r in ladder})} ladder seeds"
        out.append(row)
        neighbours = {fct: v for fct, v in losses.items() if fct != 1}
        if 1.0 not in losses or not neighbours:
            row["verdict"] = "unknown: " + ("no run at the rule's rate" if 1.0 not in losses else "no neighbour run")
            continue
        best = min(neighbours, key=neighbours.get)
        row["best_neighbour"], row["margin"] = best, losses[1.0] - neighbours[best]
        beats = f"factor {best:g} beats the rule by {row['margin']:.3g}"
        row["verdict"] = ("holds" if row["margin"] <= 0 or (row["noise"] is not None and row["margin"] <= row["noise"])
                          else f"undecided: {beats}, seed noise unknown (run the rule at seed 1)"
                          if row["noise"] is None else f"fails: {beats} > noise {row['noise']:.3g}")
    return out
