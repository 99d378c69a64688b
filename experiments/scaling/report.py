"""A scaling ladder's report: build(workdir, records, meta) writes ladder_report.md (the answers first),
ladder_report.json (analysis.analyse()'s dict with the runs and meta) and the pictures of plots.py, each under a
temporary name renamed into place, and returns the report's lead. markdown() is the text alone. Numbers have 3
significant digits, an interval reads "x [lo, hi]"."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence

from experiments.scaling import analysis, intervals, plots

REPORT, DATA = "ladder_report.md", "ladder_report.json"


def num(x: float | None) -> str:
    """3 significant digits: 0.435, 2.00, 114, 1.56e4; 'n/a' for None or NaN."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    text = f"{x:#.3g}"
    if "e" in text:
        mantissa, exp = text.split("e")
        return f"{mantissa.rstrip('.')}e{int(exp)}"
    return text.rstrip(".")


def flops(c: float) -> str:
    """A budget: 1e21, 6.4e13."""
    return f"{c:.3g}".replace("e+", "e")


def ival(d: dict | None) -> str:
    """An interval dict as "x [lo, hi]" (x alone without a bootstrap)."""
    if not d:
        return "n/a"
    if d.get("low") is None:
        return num(d.get("point"))
    return f"{num(d['point'])} [{num(d['low'])}, {num(d['high'])}]"


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(map(str, r)) + " |" for r in rows])


def _ok(part: dict | None) -> bool:
    return bool(part) and "skipped" not in part


def _fitted(result: dict) -> dict[str, dict]:
    return {n: c for n, c in result["contenders"].items() if c.get("runs")}


def _exponents(result: dict) -> str:
    rows = []
    for name, c in _fitted(result).items():
        a3, a2 = c["approach3"], c["approach2"]
        e3 = [ival(a3["exponents"][k]) if _ok(a3) else "-" for k in ("a", "b", "alpha", "beta", "E")]
        e2 = [ival(a2["exponents"][k]) if _ok(a2) else "-" for k in ("a", "b")]
        rows.append([name, *e3, *e2])
    return table(["contender", "a (appr. 3)", "b (appr. 3)", "alpha", "beta", "E", "a (appr. 2)", "b (appr. 2)"], rows)


def _predictions(result: dict) -> str:
    rows = []
    for name, c in _fitted(result).items():
        for i, x in enumerate(c["extrapolation"]):
            a3, a2 = (c[k]["predictions"][i] if _ok(c[k]) else {} for k in ("approach3", "approach2"))
            rows.append([name, flops(x["budget"]), f"{num(x['factor'])}x", ival(a3.get("N_opt")),
                         ival(a3.get("D_opt")), ival(a3.get("tokens_per_param")), ival(a2.get("tokens_per_param")),
                         ival(a3.get("loss")), ival(a2.get("loss"))])
    return table(["contender", "budget", "x largest run", "N_opt", "D_opt", "tokens/param", "tokens/param (appr. 2)",
                  "loss", "loss (appr. 2)"], rows)


def _reach(name: str, c: dict) -> str:
    parts = [f"{flops(x['budget'])} is {num(x['factor'])} times" if x["factor"] > 1 else
             f"{flops(x['budget'])} lies within the runs" for x in c["extrapolation"]]
    far = flops(max(x["budget"] for x in c["extrapolation"]))
    return (f"- **{name}**: {', '.join(parts)} the largest budget run ({flops(c['largest_budget'])} FLOPs): read "
            f"{far} FLOPs as the fitted law's statement, not a measurement.")


def _yardsticks(result: dict, predict: list[float]) -> str:
    rows = [[name, key, *[ival(p["value"]) for p in y["predictions"]], y["verdict"]]
            for name, c in _fitted(result).items() for key, y in c["yardsticks"].items() if _ok(y)]
    return table(["contender", "yardstick", *[flops(b) for b in predict], "verdict"], rows) if rows else \
        "No yardstick could be fitted."


def _multipliers(entries: list[dict], label, note: str) -> list[str]:
    """One table per yardstick: a row per budget, a column per pair; then each pair's crossing."""
    out = []
    for key in dict.fromkeys(e["yardstick"] for e in entries):
        rows_of = [e for e in entries if e["yardstick"] == key]
        fitted = [e for e in rows_of if _ok(e)]
        out.append(f"**{key}** ({note})")
        if fitted:
            budgets = sorted({m["budget"] for e in fitted for m in e["multipliers"]})
            cells = {(label(e), m["budget"]): ival(m) for e in fitted for m in e["multipliers"]}
            beyond = {m["budget"] for e in fitted for m in e["multipliers"] if m["beyond_data"]}
            out.append(table(["budget", *[label(e) for e in fitted]],
                             [[flops(b) + (" (extrapolated)" if b in beyond else ""),
                               *[cells.get((label(e), b), "-") for e in fitted]] for b in budgets]))
        for e in rows_of:
            if not _ok(e):
                out.append(f"- {label(e)}: not compared ({e['skipped']})")
            elif e["crossing"] is None:
                share = "" if e["crossing_fraction"] is None else f" ({e['crossing_fraction']:.0%} of resamples do)"
                out.append(f"- {label(e)}: the curves do not cross between {flops(e['cross_range'][0])} and "
                           f"{flops(e['cross_range'][1])} FLOPs{share}")
            else:
                where = ("beyond the runs: the fitted laws' statement" if e["crossing_beyond_data"]
                         else "within the runs")
                share = "" if e["crossing_fraction"] is None else f"; {e['crossing_fraction']:.0%} of resamples cross"
                out.append(f"- {label(e)}: the curves cross at {num(e['crossing'])} FLOPs ({where}{share})")
            if _ok(e) and e["intervals_failed"]:
                out.append(f"  (point values only: {e['intervals_failed']})")
        out.append("")
    return out


def lead(result: dict, records: Sequence[dict], meta: dict) -> str:
    """The answers: exponents, predictions and how far they reach, yardsticks, pairwise and modern multipliers."""
    predict = result["predict"]
    ladder = [r for r in records if r.get("role", "ladder") == "ladder"]
    lines = [f"# Scaling ladder: {meta.get('suite', '?')}", "",
             f"Made by `{meta.get('command', '?')}`. {len(ladder)} ladder runs of {', '.join(meta['contenders'])} at "
             f"{', '.join(flops(b) for b in sorted({r['budget'] for r in ladder}))} FLOPs, "
             f"{len(records) - len(ladder)} learning-rate check runs. Every interval is a "
             f"{result['level']:.0%} percentile bootstrap over runs ({result['resamples']} resamples). Each loss is "
             "its contender's own objective (MLM, causal LM, span corruption): losses are compared within a "
             "contender and with its modern recipe, never across contenders; the shared yardsticks are.", ""]
    if meta.get("missing"):
        lines += [f"{len(meta['missing'])} planned run(s) have not finished and are not in the fits: "
                  f"{', '.join(meta['missing'])}.", ""]
    if result["skipped"]:
        lines += [f"{len(result['skipped'])} fit(s) could not be made: see *What could not be fitted*.", ""]
    lines += ["## Answers", "", "### Compute-optimal exponents", "",
              "N_opt ~ C^a, D_opt ~ C^b. Approach 3 fits L = E + A/N^alpha + B/D^beta to every run (C = f(N) D with "
              "f affine in N, fitted to each contender's FLOPs per token); approach 2 fits a parabola per budget and "
              "power laws through the optima.", "", _exponents(result), ""]
    lines += [f"- {name} {what.replace('approach', 'approach ')}: point values only, {c[what]['intervals_failed']}"
              for name, c in _fitted(result).items() for what in ("approach2", "approach3")
              if _ok(c[what]) and c[what]["intervals_failed"]]
    lines += ["",
              f"### Predictions at {', '.join(flops(b) for b in predict)} FLOPs", "",
              "Compute-optimal N, D, tokens per parameter and loss (approach 3 unless marked approach 2).", "",
              _predictions(result), ""]
    lines += [_reach(n, c) for n, c in _fitted(result).items()] + [""]
    lines += ["### Yardsticks at the predicted budgets", "", _yardsticks(result, predict), ""]
    if result["pairwise"]:
        lines += ["### Pairwise compute multipliers on the shared yardsticks", "",
                  "B/A at C: the compute B needs to reach A's value at C, divided by C (above 1: A is ahead, B needs "
                  "more compute; below 1: B is ahead; n/a: B's fitted curve never reaches that value). Loss is not "
                  "compared: the objectives differ.", ""]
        lines += _multipliers(result["pairwise"], lambda e: f"{e['b']}/{e['a']}", "B/A compute multiplier")
    if result["modern"]:
        lines += ["### Modern recipe over its classic contender", "",
                  "classic/modern at C: the compute the classic contender needs to reach the modern recipe's value "
                  "at C, divided by C (above 1: the modern recipe saves compute). Loss is compared here: one "
                  "objective.", ""]
        lines += _multipliers(result["modern"], lambda e: f"{e['classic']}/{e['modern']}",
                              "classic/modern compute multiplier")
    return "\n".join(lines).rstrip() + "\n"


def _held_out(result: dict) -> str:
    rows = []
    for name, c in _fitted(result).items():
        for method, h in c["held_out"].items():
            if not _ok(h):
                rows.append([name, method, "-", "-", "-", "-", f"not run: {h['skipped']}"])
                continue
            mark = {True: "HIT", False: "MISS", None: f"n/a ({h.get('note') or 'fewer than 3 sizes held out'})"}[
                h["hit"]]
            if h.get("frontier_form") == "power":
                method += " (frontier A C^-alpha, no E: fewer than 4 budgets fitted)"
            rows.append([name, method, flops(h["budget"]), f"{num(h['extrapolation'])}x",
                         ival({"point": h["predicted"], "low": h["low"], "high": h["high"]}), num(h["measured"]), mark])
    return table(["contender", "method", "held-out budget", "x largest fitted", "predicted [interval]",
                  "measured", "HIT/MISS"], rows)


def _lr_check(result: dict) -> str:
    if not result["lr_check"]:
        return "No learning-rate check runs."
    factors = sorted({f for r in result["lr_check"] for f in r["losses"]}, key=float)
    rows = [[r["contender"], r["size"], flops(r["budget"]), *[num(r["losses"].get(f)) for f in factors],
             f"{num(r['noise'])} ({r['noise_from']})" if r["noise"] is not None else "unknown", r["verdict"]]
            for r in result["lr_check"]]
    return table(["contender", "size", "budget", *[f"loss at {float(f):g}x" + (" (rule)" if float(f) == 1 else "")
                                                   for f in factors], "seed noise", "verdict"], rows)


def _trust(result: dict) -> str:
    rows = []
    for name, c in _fitted(result).items():
        fits = [("approach 2", c["approach2"], ("a", "b")), ("approach 3", c["approach3"], ("alpha", "beta"))]
        fits += [(key, y, ("k",)) for key, y in c["yardsticks"].items() if _ok(y)]
        for what, part, exps in fits:
            if not _ok(part):
                continue
            t = part["trust"]
            widths = ", ".join(f"{e} {num(t['relative_width'][e])}" for e in exps if e in t.get("relative_width", {}))
            failed = f"{t['failed_fraction']:.1%}"
            bracket = ", ".join(flops(b) for b in t.get("not_bracketed") or []) or "-"
            rows.append([name, what, num(t["rms_residual"]), widths or "-", bracket, failed, part["verdict"]])
    th = result["thresholds"]
    return (f"Trustworthy when the residual RMS is at most {th['rms_max']} (log loss; {th['yardstick_rms_max']} in "
            f"accuracy for a yardstick), every fitted budget's optimum lies within its sizes, each exponent's "
            f"{result['level']:.0%} interval spans at most {th['width_max']} of its value, and at most "
            f"{th['failed_max']:.0%} of resamples failed.\n\n" +
            table(["contender", "fit", "rms residual", "interval width / value", "not bracketed", "failed resamples",
                   "verdict"], rows))


def _runs(records: Sequence[dict], meta: dict) -> str:
    sticks = list(meta.get("yardsticks", {}))
    rows = []
    order = lambda r: (r["contender"], r.get("role", "ladder") != "ladder", r["budget"], r["params"],
                       r.get("lr_factor", 1), r.get("seed", 0))
    for r in sorted(records, key=order):
        role = "ladder" if r.get("role", "ladder") == "ladder" else f"lr x{r['lr_factor']:g}"
        cells = [num(r.get(k)) + (f" ± {num(r[k + '_se'])}" if r.get(k + "_se") is not None and r.get(k) is not None
                                  else "") for k in sticks]
        rows.append([r["contender"], r["size"], flops(r["budget"]), num(r["params"]), num(r["tokens"]),
                     num(r["tokens"] / r["params"]), role, r.get("seed", 0), num(r["loss"]), *cells])
    return table(["contender", "size", "budget", "params", "tokens", "tokens/param", "role", "seed", "loss", *sticks],
                 rows)


def markdown(result: dict, records: Sequence[dict], meta: dict) -> str:
    """The whole report: lead(), then the held-out check, learning-rate check, trust, what could not be fitted, the
    runs and the pictures."""
    lines = [lead(result, records, meta), "## Held-out check", "",
             "Each method fitted without the largest budget predicts it: the compute-optimal loss there (measured: "
             "the parabola minimum of its runs) with a prediction interval. A MISS is a law that did not hold one "
             "budget out. Approach 2 fitted on fewer than 4 budgets has a frontier A C^-alpha without a floor E, which "
             "under-predicts a loss that flattens: its MISS there says as much about that form as about the law.", "",
             _held_out(result), "", "## Learning-rate rule check", "",
             f"The rule: {meta.get('lr_rule', '?')}. It holds unless a neighbouring factor beats the rule's loss by "
             "more than the seed noise.", "", _lr_check(result), "", "## Trust", "", _trust(result), ""]
    if result["skipped"]:
        lines += ["## What could not be fitted", ""]
        lines += [f"- {s['what']}: {s['reason']}" for s in result["skipped"]] + [""]
    lines += ["## Runs", "", _runs(records, meta), "", "## Pictures", ""]
    lines += [f"![{name}]({name})" for name in plots.FILES]
    return "\n".join(lines) + "\n"


def _write(path: str, text: str) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def build(workdir: str, records: Sequence[dict], meta: dict, *, resamples: int = intervals.RESAMPLES) -> str:
    """Analyse the ladder and write ladder_report.md, ladder_report.json and the pictures into workdir; the lead."""
    os.makedirs(workdir, exist_ok=True)
    result = analysis.analyse(records, meta, resamples=resamples)
    tmp = {name: os.path.join(workdir, f".tmp.{name}") for name in plots.FILES}
    plots.draw(records, result, meta, tmp)
    for name, path in tmp.items():
        os.replace(path, os.path.join(workdir, name))
    data = analysis.clean({"analysis": result, "records": list(records), "meta": meta})
    _write(os.path.join(workdir, DATA), json.dumps(data, indent=1, allow_nan=False) + "\n")
    cleaned = data["analysis"]
    _write(os.path.join(workdir, REPORT), markdown(cleaned, records, meta))
    return lead(cleaned, records, meta)
