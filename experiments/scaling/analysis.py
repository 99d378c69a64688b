"""What a scaling ladder says, as numbers and verdicts: analyse(records, meta) -> a JSON-able dict (after clean()).

Only runs with role "ladder" enter the fits. Per contender: Chinchilla approaches 2 and 3 with bootstrap intervals
(experiments/scaling/intervals.py), the compute-optimal N, D, tokens per parameter and loss at meta["predict"]'s
budgets, how far each lies beyond the largest budget run, the trust diagnostics and a verdict per fit; a bounded
fit per yardstick; the held-out check. Across contenders only yardsticks are compared (each contender's loss is that
of its own objective), and a modern recipe against its classic contender on loss too (same objective). The
learning-rate check (lr_rule.py) reads the role "lr_check" runs. A fit that cannot be made is recorded with its
one-line reason under "skipped", and the rest goes on: a partial ladder reports what it has. Words are report.py's.

An interval is {"point", "low", "high"} (LEVEL two-sided, percentile bootstrap); a value without one has
low = high = None.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence

import numpy as np
from scipy import special

from experiments.scaling import fits, intervals
from experiments.scaling.lr_rule import lr_check

RMS_MAX = 0.02  # A loss fit's residual RMS (log loss): beyond 2% a run sits further off the law than seed noise does.
YARDSTICK_RMS_MAX = 0.03  # A bounded fit's residual RMS in accuracy (3 points): several times one run's BLiMP error.
WIDTH_MAX = 0.5  # An exponent's 90% interval may span at most half its value (about +-25%) for "trustworthy".
# Share of failed resamples beyond which an interval describes a minority of the draws. Approach 2 resamples runs
# within each budget: with 5 sizes per budget about 1 draw in 3 keeps fewer than 3 distinct sizes at some budget of 4
# (no sign of a bad fit), with 4 sizes about 4 in 5, with 3 sizes nearly all.
FAILED_MAX = 0.6
MIN_FITTED = 0.5  # Fewer fitted resamples than this share of those asked for: no interval is printed at all.
BAND_POINTS = 48  # Grid over log C of the bootstrap bands drawn in the plots.
EXPONENTS = {"approach2": ("a", "b"), "approach3": ("alpha", "beta"), "yardstick": ("k",)}
PREDICTIONS = (("N_opt", "N_opt"), ("D_opt", "D_opt"), ("tokens_per_param", "tokens_per_param"), ("loss", "L_opt"))


def _key(name: str, budget: float) -> str:
    """intervals' name of a quantity at a budget, e.g. N_opt@1e+18."""
    return f"{name}@{budget:.3g}"


def _iv(boot: dict | None, key: str, point: float | None = None) -> dict:
    """{"point", "low", "high"} of one bootstrapped quantity (low, high None without a bootstrap)."""
    if boot is None:
        return {"point": point, "low": None, "high": None}
    return {"point": boot["point"][key], "low": boot["low"][key], "high": boot["high"][key]}


def _flops(c: float) -> str:
    """A budget as 1.6e13, not 1.6e+13."""
    return f"{c:.3g}".replace("e+", "e")


def _reason(err: Exception) -> str:
    """One line: the error, or for a bootstrap whose every resample failed its count and what to do."""
    if "bootstrap resamples failed" in str(err):
        return str(err).split(":")[0] + _hint(str(err))
    return f"{type(err).__name__}: {err}".splitlines()[0]


def clean(x):
    """x with numpy scalars and arrays as plain floats and lists, tuples as lists, keys as str, NaN and inf as None."""
    if isinstance(x, dict):
        return {str(k): clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple, np.ndarray)):
        return [clean(v) for v in x]
    if isinstance(x, (bool, np.bool_)):
        return bool(x)
    if isinstance(x, (int, np.integer)):
        return int(x)
    if isinstance(x, (float, np.floating)):
        return float(x) if math.isfinite(x) else None
    return x


def flops_per_token_law(records: Sequence[dict]) -> dict:
    """Executed FLOPs per token position against N: f(N) = intercept + slope N by least squares over the runs
    (affine: the 6N of the matrices plus what does not grow with N, e.g. attention at a fixed length); through the
    origin (f = slope N) when the runs have one size or the affine fit's intercept or slope is negative.
    {"intercept", "slope", "form", "max_relative_error"}; law["f"] is the callable approach 3 takes."""
    N, k = fits.columns(records, "params", "flops_per_token")
    slope, icpt, form = 0.0, -1.0, "affine"
    if len(np.unique(N)) >= 2:
        slope, icpt = np.polyfit(N, k, 1)
    if icpt < 0 or slope <= 0:
        slope, icpt, form = float(N @ k / (N @ N)), 0.0, "proportional"
    fitted = icpt + slope * N
    return {"intercept": float(icpt), "slope": float(slope), "form": form,
            "max_relative_error": float(np.max(np.abs(fitted - k) / k)),
            "f": lambda n, i=float(icpt), s=float(slope): i + s * n}


def verdict(trust: dict | None, kind: str, extra: Sequence[str] = ()) -> str:
    """"trustworthy" when the residuals are small, every fitted budget's optimum lies within its sizes, the exponents'
    intervals are narrow and few resamples failed; else "not trustworthy: " and the conditions that failed."""
    problems = list(extra)
    if trust is None:
        problems = problems or ["no intervals"]
    else:
        rms_max = YARDSTICK_RMS_MAX if kind == "yardstick" else RMS_MAX
        if not trust["rms_residual"] <= rms_max:
            problems.append(f"residual rms {trust['rms_residual']:.3g} > {rms_max}")
        if trust.get("not_bracketed"):
            problems.append("optimum not bracketed by the sizes run at "
                            + ", ".join(_flops(c) for c in trust["not_bracketed"]))
        for e in EXPONENTS[kind]:
            w = trust["relative_width"].get(e, np.inf)
            if not w <= WIDTH_MAX:
                problems.append(f"{e}'s interval spans {w:.3g} of its value > {WIDTH_MAX}")
        if trust["failed_fraction"] > FAILED_MAX:
            problems.append(f"{trust['failed_fraction']:.0%} of resamples failed > {FAILED_MAX:.0%}")
    return "trustworthy" if not problems else "not trustworthy: " + "; ".join(problems)


def _band(boot: dict | None, curve: Callable[[dict, np.ndarray], np.ndarray], point: dict, grid: np.ndarray) -> dict:
    """A curve on grid: at the point fit and between the LEVEL quantiles of the bootstrap fits (row by row)."""
    out = {"C": grid, "point": curve(point, grid), "low": None, "high": None}
    if boot is not None:
        rows = [dict(zip(boot["samples"], v, strict=True)) for v in zip(*boot["samples"].values(), strict=True)]
        with np.errstate(all="ignore"):
            values = np.array([curve(r, grid) for r in rows])
        q = (1 - boot["level"]) / 2
        out["low"], out["high"] = np.nanquantile(values, [q, 1 - q], axis=0)
    return out


def _usable_for_approach2(runs: list[dict]) -> tuple[list[dict], list[dict]]:
    """The runs of budgets with a convex parabola over MIN_SIZES sizes or more, and why each other budget is out."""
    keep, out = [], []
    for c in sorted({r["budget"] for r in runs}):
        at = [r for r in runs if r["budget"] == c]
        try:
            fits.isoflop_optima(at)
            keep += at
        except ValueError as err:
            out.append({"budget": c, "reason": _reason(err)})
    return keep, out


def _thin(boot: dict, resamples: int) -> str | None:
    """Why a bootstrap's intervals are not worth printing: fewer than MIN_FITTED of the resamples asked for fitted."""
    if boot["resamples"] >= MIN_FITTED * resamples:
        return None
    top = max(boot["failures"], key=boot["failures"].get).removeprefix("ValueError: ").split(";")[0]
    tried = boot["resamples"] + boot["failed"]
    return f"only {boot['resamples']} of {tried} resamples fitted (most often: {top}{_hint(top)})"


def _hint(reason: str) -> str:
    """What to do about resamples that failed for want of sizes."""
    return ("; a budget's runs drawn with replacement keep 3 distinct sizes of 3 in 2 draws of 9, of 4 in 2 of 3: "
            "5 or more sizes per budget give approach 2 intervals") if "model size(s)" in reason else ""


def _bootstrapped(make: Callable[[], dict], point_only: Callable[[], dict],
                  resamples: int) -> tuple[dict, str | None]:
    """make()'s result; when every resample failed, or too few fitted (_thin), point_only()'s with the reason (a
    point fit without intervals)."""
    try:
        res = make()
    except ValueError as err:
        if "bootstrap resamples failed" not in str(err):
            raise
        return point_only(), _reason(err)
    why = _thin(res["intervals"], resamples)
    return (point_only() | {"failed_fraction": res["trust"]["failed_fraction"]}, why) if why else (res, None)


def _approach2(runs: list[dict], predict: list[float], grid: np.ndarray, resamples: int, seed: int) -> dict:
    usable, left_out = _usable_for_approach2(runs)
    if len({r["budget"] for r in usable}) < 2:
        why = "; ".join(f"{_flops(o['budget'])}: {o['reason']}" for o in left_out)
        raise ValueError(f"approach 2 needs 2 or more budgets with an optimum, "
                         f"has {len({r['budget'] for r in usable})}" + (f" ({why})" if why else ""))

    def point_only() -> dict:
        fit = fits.fit_approach2(usable)
        return {"fit": fit, "intervals": None, "point": intervals.approach2_numbers(fit, predict)}

    res, why = _bootstrapped(lambda: intervals.approach2(usable, budgets=predict, resamples=resamples, seed=seed),
                             point_only, resamples)
    fit, boot = res["fit"], res["intervals"]
    pt = boot["point"] if boot else res["point"]
    fr = fit["frontier"]
    names = ["a", "b", "frontier_alpha"] + (["E"] if fr["form"] == "saturating" else [])
    out = {"exponents": {k: _iv(boot, k, pt[k]) for k in names},
           "frontier": {k: fr[k] for k in ("form", "E", "A", "alpha")},
           "predictions": [{"budget": c, **{n: _iv(boot, _key(k, c), pt[_key(k, c)]) for n, k in PREDICTIONS}}
                           for c in predict],
           "optima": [{k: o[k] for k in ("budget", "N_opt", "D_opt", "L_opt", "bracketed", "sizes")}
                      for o in fit["optima"]],
           "parabolas": [], "left_out": left_out, "intervals_failed": why, "rms": fit["rms"]}
    for o in fit["optima"]:  # the curvature of each budget's parabola in log N, for the plot
        at = [r for r in usable if r["budget"] == o["budget"]]
        out["parabolas"].append({"budget": o["budget"], "N_opt": o["N_opt"], "L_opt": o["L_opt"],
                                 "curvature": float(np.polyfit(np.log([r["params"] for r in at]),
                                                               [r["loss"] for r in at], 2)[0])})
    frontier = lambda p, C: p.get("E", 0.0) + p["frontier_A"] * C ** -p["frontier_alpha"]
    out["band"] = _band(boot, frontier, pt, grid)
    out["trust"] = res.get("trust") or {"rms_residual": fit["rms"], "failed_fraction": res.get("failed_fraction", 1.0),
                                        "not_bracketed": [c for c, ok in fit["bracketed"].items() if not ok]}
    problems = [f"budget {_flops(o['budget'])} left out" for o in left_out]
    if len(fit["residuals"]) <= 3 * len(fit["optima"]):
        problems.append("no residual to judge: with 3 sizes per budget each parabola passes through its runs")
    out["verdict"] = verdict(res.get("trust"), "approach2", problems + ([f"intervals failed ({why})"] if why else []))
    return out


def _approach3(runs: list[dict], f: Callable, predict: list[float], resamples: int, seed: int) -> dict:
    def point_only() -> dict:
        fit = fits.fit_approach3(runs, flops_per_token=f)
        return {"fit": fit, "intervals": None, "point": intervals.approach3_numbers(fit, predict)}

    res, why = _bootstrapped(lambda: intervals.approach3(runs, budgets=predict, flops_per_token=f,
                                                         resamples=resamples, seed=seed), point_only, resamples)
    fit, boot = res["fit"], res["intervals"]
    pt = boot["point"] if boot else res["point"]
    return {"exponents": {k: _iv(boot, k, pt[k]) for k in ("alpha", "beta", "a", "b", "E")},
            "law": {k: fit[k] for k in ("E", "A", "B", "alpha", "beta")}, "rms": fit["rms"],
            "predictions": [{"budget": c, **{n: _iv(boot, _key(k, c), pt[_key(k, c)]) for n, k in PREDICTIONS}}
                            for c in predict],
            "intervals_failed": why, "trust": res.get("trust") or {
                "rms_residual": fit["rms"], "failed_fraction": res.get("failed_fraction", 1.0)},
            "verdict": verdict(res.get("trust"), "approach3", [f"intervals failed ({why})"] if why else [])}


def _yardstick(runs: list[dict], key: str, chance: float, predict: list[float], grid: np.ndarray, resamples: int,
               seed: int) -> dict:
    res = intervals.bounded(runs, key, chance, budgets=predict, resamples=resamples, seed=seed)
    fit, boot = res["fit"], res["intervals"]
    if _thin(boot, resamples):
        raise ValueError(_thin(boot, resamples))
    curve = lambda p, C: chance + (1 - chance) * special.expit(p["k"] * (np.log10(C) - p["c0"]))
    return {"fit": {k: fit[k] for k in ("chance", "k", "c0", "rms")}, "k": _iv(boot, "k"), "c0": _iv(boot, "c0"),
            "predictions": [{"budget": c, "value": _iv(boot, _key(key, c))} for c in predict],
            "band": _band(boot, curve, boot["point"], grid), "trust": res["trust"],
            "verdict": verdict(res["trust"], "yardstick")}


def _held_out(runs: list[dict], method: str, f: Callable, resamples: int, seed: int) -> dict:
    res = intervals.held_out(runs, method=method, flops_per_token=f, resamples=resamples, seed=seed)
    fitted = min(resamples, intervals.MAX_TRIES * resamples - res["failed"])  # held_out's bootstrap, as it counts
    thin = fitted < MIN_FITTED * resamples
    row = lambda d: {"predicted": d["predicted"], "measured": d["measured"], "hit": None if thin else d["hit"],
                     "low": None if thin else d["interval"][0], "high": None if thin else d["interval"][1]}
    used = len({r["budget"] for r in runs}) - 1
    form = None if method == "approach3" else "saturating" if used >= fits.FRONTIER_MIN_BUDGETS else "power"
    return {"budget": res["budget"], "extrapolation": res["extrapolation"], "failed": res["failed"],
            "frontier_form": form, "note": f"no interval: only {fitted} of {fitted + res['failed']} resamples "
                                           f"fitted" if thin else None,
            **row(res["optimum"]), "sizes": [{"params": s["params"], "tokens": s["tokens"], **row(s)}
                                             for s in res["sizes"]]}


def _compare(ra: list[dict], rb: list[dict], metric: str, chance: float | None, budgets: list[float],
             cross: tuple[float, float], top: float, resamples: int, seed: int) -> dict:
    """intervals.compare's multipliers of B over A at budgets (each marked as inside the runs' budgets or beyond) and
    the crossing in cross; the point values alone when every resample failed."""
    def point_only() -> dict:
        ca, cb = fits.fit_curve(ra, metric, chance), fits.fit_curve(rb, metric, chance)
        point = {_key("multiplier", c): intervals.multiplier(ca, cb, c) for c in budgets}
        return {"intervals": None, "point": point, "crossing": intervals.crossing(ca, cb, *cross),
                "crossing_fraction": None}

    res, why = _bootstrapped(lambda: intervals.compare(ra, rb, metric=metric, chance=chance, budgets=budgets,
                                                       cross_range=cross, resamples=resamples, seed=seed),
                             point_only, resamples)
    boot = res["intervals"]
    pt = boot["point"] if boot else res["point"]
    return {"metric": metric, "chance": chance, "cross_range": list(cross), "largest_run": top,
            "multipliers": [{"budget": c, "beyond_data": c > top, **_iv(boot, _key("multiplier", c),
                                                                       pt[_key("multiplier", c)])} for c in budgets],
            "crossing": res["crossing"], "crossing_beyond_data": res["crossing"] is not None and res["crossing"] > top,
            "crossing_fraction": res["crossing_fraction"], "intervals_failed": why}


def _attempt(skipped: list, what: str, call: Callable[..., dict], *args) -> dict:
    """call(*args), or {"skipped": reason} with the reason also listed under skipped."""
    try:
        return call(*args)
    except (ValueError, RuntimeError, np.linalg.LinAlgError) as err:
        skipped.append({"what": what, "reason": _reason(err)})
        return {"skipped": _reason(err)}


def _contender(name: str, rs: list[dict], meta: dict, predict: list[float], grid: np.ndarray, skipped: list,
               resamples: int, seed: int) -> dict:
    """One contender's fits, yardsticks and held-out check."""
    top = max(r["budget"] for r in rs)
    law = _attempt(skipped, f"{name} FLOPs per token", flops_per_token_law, rs)
    f = law.pop("f", None)
    res = {"runs": len(rs), "budgets": sorted({r["budget"] for r in rs}), "sizes": sorted({r["params"] for r in rs}),
           "largest_budget": top, "extrapolation": [{"budget": c, "factor": c / top} for c in predict],
           "flops_per_token": law}
    no_law = {"skipped": "no FLOPs-per-token law"}
    res["approach2"] = _attempt(skipped, f"{name} approach 2", _approach2, rs, predict, grid, resamples, seed)
    res["approach3"] = _attempt(skipped, f"{name} approach 3", _approach3, rs, f, predict, resamples,
                                seed) if f else no_law
    res["yardsticks"] = {}
    for key, chance in meta.get("yardsticks", {}).items():
        scored = [r for r in rs if r.get(key) is not None]
        res["yardsticks"][key] = _attempt(skipped, f"{name} {key}", _yardstick, scored, key, chance, predict, grid,
                                          resamples, seed) if scored else {"skipped": "not scored"}
    if len(res["budgets"]) < 3:
        why = f"{len(res['budgets'])} budget(s): the held-out check needs 3 (2 to fit, 1 to predict)"
        res["held_out"] = {m: {"skipped": why} for m in ("approach2", "approach3")}
        skipped.append({"what": f"{name} held-out check", "reason": why})
        return res
    usable = _usable_for_approach2(rs)[0]
    res["held_out"] = {"approach2": _attempt(skipped, f"{name} held-out approach 2", _held_out, usable, "approach2",
                                             6.0, resamples, seed),
                       "approach3": _attempt(skipped, f"{name} held-out approach 3", _held_out, rs, "approach3", f,
                                             resamples, seed) if f else no_law}
    return res


def _pair(skipped: list, what: str, ra: list[dict], rb: list[dict], metric: str, chance: float | None,
          predict: list[float], resamples: int, seed: int) -> dict:
    """_compare at the budgets either ran and predict, crossings searched from the smallest run to the largest
    predicted budget."""
    budgets = sorted({r["budget"] for r in ra + rb} | set(predict))
    top = min(max(r["budget"] for r in ra), max(r["budget"] for r in rb))
    cross = (min(r["budget"] for r in ra + rb), budgets[-1])
    return _attempt(skipped, what, _compare, ra, rb, metric, chance, budgets, cross, top, resamples, seed)


def analyse(records: Sequence[dict], meta: dict, *, resamples: int = intervals.RESAMPLES, seed: int = 0) -> dict:
    """The ladder's fits, predictions, comparisons, held-out and learning-rate checks (see the module docstring)."""
    ladder = [r for r in records if r.get("role", "ladder") == "ladder"]
    predict = sorted(float(c) for c in meta["predict"])
    sticks = meta.get("yardsticks", {})
    span = sorted({float(r["budget"]) for r in ladder} | set(predict))
    grid = np.logspace(np.log10(span[0]), np.log10(span[-1]), BAND_POINTS)
    skipped: list[dict] = []
    out = {"predict": predict, "level": intervals.LEVEL, "resamples": resamples, "skipped": skipped,
           "thresholds": {"rms_max": RMS_MAX, "yardstick_rms_max": YARDSTICK_RMS_MAX, "width_max": WIDTH_MAX,
                          "failed_max": FAILED_MAX}, "contenders": {}, "pairwise": [], "modern": []}
    runs = {c: [r for r in ladder if r["contender"] == c] for c in meta["contenders"]}
    for name, rs in runs.items():
        lost = [r["name"] for r in rs if r.get("loss") is None]
        if lost:
            skipped.append({"what": f"{name}: {len(lost)} run(s) left out",
                            "reason": "no eval loss: " + ", ".join(lost)})
            rs = [r for r in rs if r.get("loss") is not None]
        if rs:
            out["contenders"][name] = _contender(name, rs, meta, predict, grid, skipped, resamples, seed)
        else:
            skipped.append({"what": name, "reason": "no ladder runs"})
            out["contenders"][name] = {"runs": 0}
    for a, b in itertools.combinations([c for c in meta["contenders"] if runs[c]], 2):
        for key, chance in sticks.items():
            ra, rb = ([r for r in runs[c] if r.get(key) is not None] for c in (a, b))
            if ra and rb:  # a shared yardstick
                out["pairwise"].append({"a": a, "b": b, "yardstick": key, **_pair(
                    skipped, f"{a} vs {b} on {key}", ra, rb, key, chance, predict, resamples, seed)})
    for modern, classic in meta.get("modern_of", {}).items():
        if not runs.get(modern) or not runs.get(classic):
            skipped.append({"what": f"{modern} over {classic}", "reason": "no ladder runs of one of them"})
            continue
        for key, chance in [("loss", None), *sticks.items()]:
            rm, rc = ([r for r in runs[c] if r.get(key) is not None] for c in (modern, classic))
            if key == "loss":  # budgets with an isoFLOP optimum only
                rm, rc = _usable_for_approach2(rm)[0], _usable_for_approach2(rc)[0]
            if rm and rc:
                out["modern"].append({"modern": modern, "classic": classic, "yardstick": key, **_pair(
                    skipped, f"{modern} over {classic} on {key}", rm, rc, key, chance, predict, resamples, seed)})
    out["lr_check"] = lr_check(records)
    return out
