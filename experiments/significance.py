"""Which contender leads on each shared yardstick, by how much, and whether the difference is significant.

A yardstick is a probe column (shared by every contender) or the eval loss among the contenders of one objective.
Each pair of its contenders is tested by experiments/stats.py: a paired t-test over seeds, or with one seed a
paired bootstrap over the zero-shot pairs where they were kept; where every seed gives the same difference (no
spread: no t-test) the bootstrap over the pairs of all seeds, or an exact sign-flip test over the seeds. The report
leads with these lines.
"""

from __future__ import annotations

from experiments import stats
from experiments.tables import PROBE_SUFFIXES, cell, loss, pct, points, probe_header, probe_keys, probe_kind


def yardsticks(groups: list[dict]) -> list[dict]:
    """The columns contenders are compared on: each probe column (fine-tuned, zero-shot, random init, then any
    other), shared by all; and the eval loss among the groups of each objective that more than one group trains."""
    rank = list(PROBE_SUFFIXES)
    out = []
    for key in sorted(probe_keys(groups), key=lambda k: (rank.index(probe_kind(k)), k)):
        out.append({"key": key, "label": f"probe: {key.removeprefix('probe/')}", "higher_is_better": True,
                    "col": (key, probe_header(key), pct, points),
                    "groups": [g for g in groups if g.get(key) is not None]})
    for obj in dict.fromkeys(g["objective_id"] for g in groups):
        members = [g for g in groups if g["objective_id"] == obj and g.get("eval_loss") is not None]
        if len(members) > 1:
            out.append({"key": "eval_loss", "label": f"eval loss, {members[0]['objective']}",
                        "higher_is_better": False, "col": ("eval_loss", "eval loss", loss, loss),
                        "groups": members})
    return out


def _ranked(stick: dict) -> list[dict]:
    """The yardstick's groups, best first."""
    return sorted(stick["groups"], key=lambda g: g[stick["key"]], reverse=stick["higher_is_better"])


def difference(better: dict, worse: dict, key: str) -> dict:
    """stats.difference_test of two groups on one column: pairs by seed, the per-example results where kept."""
    def by_seed(g, what):
        return {r["seed"]: (r.get(key) if what == "value" else r["examples"].get(key)) for r in g["members"]}

    return stats.difference_test(by_seed(better, "value"), by_seed(worse, "value"),
                                 by_seed(better, "examples"), by_seed(worse, "examples"))


def significance(groups: list[dict]) -> list[dict]:
    """One record per yardstick and pair of its groups (the better first): the test and its result."""
    out = []
    for stick in yardsticks(groups):
        ranked = _ranked(stick)
        for i, a in enumerate(ranked):
            for b in ranked[i + 1:]:
                rec = {"yardstick": stick["label"], "key": stick["key"], "better": a["group"], "worse": b["group"],
                       "mean_difference": a[stick["key"]] - b[stick["key"]]}
                out.append({**rec, **difference(a, b, stick["key"])})
    return out


def _pval(p: float) -> str:
    return "< 0.001" if p < 0.001 else f"{p:.3f}"


def _p(p: float) -> str:
    return f"p {_pval(p)}" if p < 0.001 else f"p = {_pval(p)}"


def _method(rec: dict) -> str:
    if rec["method"] == stats.T_TEST:
        return f"paired t-test over {rec['n']} seeds"
    if rec["method"] == stats.SIGN_FLIP:
        return f"exact sign-flip test over {rec['n']} seeds"
    seeds = f" of {len(rec['seeds'])} seeds" if len(rec.get("seeds", ())) > 1 else ""
    return f"paired bootstrap over {rec['n']} pairs{seeds}, {rec['resamples']:,} resamples"


def verdict(rec: dict) -> str:
    """'paired t-test over 3 seeds, p = 0.012: significant', or why no test was made."""
    if rec["method"] is None:
        if rec["n"] == 1:
            return "one seed: no test; --seeds=N, N >= 2 (3 or more advised), for a paired t-test"
        return f"no test: {rec['why']}"
    note = f" ({rec['note']})" if rec.get("note") else ""
    return f"{_method(rec)}, {_p(rec['p'])}{note}: {'significant' if rec['significant'] else 'not significant'}"


def lead(groups: list[dict], records: list[dict]) -> list[dict]:
    """Per yardstick: who leads, by how much over the runner-up, and the test of that difference."""
    out = []
    for stick in yardsticks(groups):
        ranked = _ranked(stick)
        first = ranked[0]
        rec = {"yardstick": stick["label"], "key": stick["key"], "higher_is_better": stick["higher_is_better"],
               "leader": first["group"], "value": cell(first, stick["col"]), "runner_up": None}
        if len(ranked) > 1:
            second = ranked[1]["group"]
            test = next(r for r in records if r["yardstick"] == stick["label"] and r["better"] == first["group"]
                        and r["worse"] == second)
            rec.update(runner_up=second, difference=test["mean_difference"], test=test)
        out.append(rec)
    return out


def lead_line(rec: dict) -> str:
    """'- **probe: word_order (zero-shot)**: gpt leads with 71.2% ± 0.8, +4.1 points over t5 (...: significant)'."""
    head = f"- **{rec['yardstick']}**: "
    if rec["runner_up"] is None:
        return head + f"only {rec['leader']} has it: {rec['value']}"
    d, test = rec["difference"], verdict(rec["test"])
    if abs(d) < 1e-12:
        return head + f"{rec['leader']} and {rec['runner_up']} tie at {rec['value']} ({test})"
    by = f"+{100 * d:.1f} points over" if rec["higher_is_better"] else f"{-d:.3f} lower than"
    return head + f"{rec['leader']} leads with {rec['value']}, {by} {rec['runner_up']} ({test})"


def significance_table(records: list[dict]) -> list[str]:
    """The markdown lines of the tested pairs (none when no pair was tested)."""
    tested = [r for r in records if r["method"] is not None]
    if not tested:
        return []
    lines = ["## Significance of the differences", "",
             "| yardstick | better | worse | difference | p | p < 0.05 | test |", "|" + "---|" * 7]
    for r in tested:
        d = r["difference"]
        diff = f"{100 * d:+.1f} points" if r["key"].startswith("probe/") else f"{d:+.3f}"
        test = {stats.T_TEST: f"t-test, {r['n']} seeds", stats.SIGN_FLIP: f"sign-flip, {r['n']} seeds"}.get(
            r["method"], f"bootstrap, {r['n']} pairs")
        lines.append(f"| {r['yardstick']} | {r['better']} | {r['worse']} | {diff} | {_pval(r['p'])} | "
                     f"{'yes' if r['significant'] else 'no'} | {test} |")
    return lines + [""]
