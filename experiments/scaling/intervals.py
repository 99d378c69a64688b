"""Bootstrap intervals, comparisons and a held-out check on top of experiments/scaling/fits.py's point fits.

  approach2(runs)                           # Chinchilla approach 2: fit, intervals, trust diagnostics
  approach3(runs, budgets=(1e15, 1e18, 1e21))  # approach 3, predictions at those budgets
  bounded(runs, "blimp", chance=0.5)        # a bounded yardstick against compute
  compare(runs_a, runs_b, budgets=(1e18,))  # compute multiplier of B over A, where their curves cross
  held_out(runs)                            # fit without the largest budget, predict it: hit or miss

Intervals are percentile bootstraps: each resample draws runs with replacement within each budget (whole seeds
when a budget has several), refits everything, and is counted under "failed" when a fit refuses (e.g. fewer than
3 distinct sizes left at a budget); draws go on until `resamples` fits succeed or MAX_TRIES times as many were
tried.
scipy's L-BFGS-B is much slower with threaded OpenBLAS on a busy machine: set OPENBLAS_NUM_THREADS=1 there.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence

import numpy as np
from scipy import optimize

from experiments.scaling import fits

PREDICT_BUDGETS = (1e15, 1e18, 1e21)  # Budgets (FLOPs) whose compute-optimal N, D, loss are predicted by default.
LEVEL = 0.9  # Two-sided coverage of every interval.
RESAMPLES = 200  # Successful bootstrap refits per interval.
MAX_TRIES = 4  # Resamples tried at most, per successful refit wanted.
REFIT_STARTS = 0  # Approach 3's bootstrap refits: grid starts besides the point fit (a warm start alone by default).
CROSSING_POINTS = 513  # Grid over log C on which two curves' difference changes sign.


def resample(records: Sequence[dict], rng: np.random.Generator) -> list[dict]:
    """Runs drawn with replacement within each budget: whole seeds when the budget has several, else single runs."""
    by_budget = defaultdict(list)
    for r in records:
        by_budget[float(r["budget"])].append(r)
    out = []
    for c in sorted(by_budget):
        runs = by_budget[c]
        seeds = sorted({r["seed"] for r in runs})
        if len(seeds) > 1:
            by_seed = {s: [r for r in runs if r["seed"] == s] for s in seeds}
            out += [r for i in rng.integers(0, len(seeds), len(seeds)) for r in by_seed[seeds[i]]]
        else:
            out += [runs[i] for i in rng.integers(0, len(runs), len(runs))]
    return out


def bootstrap(groups: Sequence[Sequence[dict]], quantities: Callable[..., dict[str, float]], *,
              point: dict[str, float] | None = None, resamples: int = RESAMPLES, level: float = LEVEL,
              seed: int = 0) -> dict:
    """Percentile intervals of quantities(*groups), each group resampled independently (resample()).
    {"point", "low", "high", "level", "resamples" (fits that succeeded), "failed", "failures" (reason: count),
    "samples" (name: array)}; NaN samples (a quantity undefined in a resample) are left out of its interval."""
    point = quantities(*groups) if point is None else point
    rng = np.random.default_rng(seed)
    rows, failures, tries = [], Counter(), 0
    while len(rows) < resamples and tries < MAX_TRIES * resamples:
        tries += 1
        try:
            rows.append(quantities(*(resample(g, rng) for g in groups)))
        except (ValueError, RuntimeError, np.linalg.LinAlgError) as err:
            failures[re.sub(r"\d[\d.e+-]*", "#", f"{type(err).__name__}: {err}")[:100]] += 1  # numbers apart
    if not rows:
        raise ValueError(f"all {tries} bootstrap resamples failed to fit: {dict(failures)}")
    samples = {k: np.array([row[k] for row in rows], np.float64) for k in point}
    low, high = {}, {}
    for k, s in samples.items():
        s = s[~np.isnan(s)]
        low[k], high[k] = (np.quantile(s, [(1 - level) / 2, (1 + level) / 2], method="inverted_cdf").tolist()
                           if len(s) else (np.nan, np.nan))
    return {"point": point, "low": low, "high": high, "level": level, "resamples": len(rows),
            "failed": tries - len(rows), "failures": dict(failures), "samples": samples}


def _at(name: str, budget: float) -> str:
    """The key of a quantity at a budget, e.g. N_opt@1e+18."""
    return f"{name}@{budget:.3g}"


def _predictions(N: np.ndarray, D: np.ndarray, L: np.ndarray, budgets: Sequence[float]) -> dict[str, float]:
    """N_opt, D_opt, tokens per parameter and L_opt at each budget, as named quantities."""
    out = {}
    for i, c in enumerate(budgets):
        out.update({_at("N_opt", c): float(N[i]), _at("D_opt", c): float(D[i]),
                    _at("tokens_per_param", c): float(D[i] / N[i]), _at("L_opt", c): float(L[i])})
    return out


def approach2_numbers(fit: dict, budgets: Sequence[float]) -> dict[str, float]:
    """An approach-2 fit's quantities: a, G, b, H, the frontier's parameters and the predictions at budgets."""
    f = fit["frontier"]
    out = {k: fit[k] for k in ("a", "G", "b", "H")}
    out.update({"frontier_A": f["A"], "frontier_alpha": f["alpha"]})
    if f["form"] == "saturating":
        out["E"] = f["E"]
    C = np.asarray(budgets, np.float64)
    return out | _predictions(fit["G"] * C ** fit["a"], fit["H"] * C ** fit["b"], fits.curve_value(f, C), budgets)


def approach3_numbers(fit: dict, budgets: Sequence[float]) -> dict[str, float]:
    """An approach-3 fit's quantities: E, A, B, alpha, beta, a, b, G, H and the predictions at budgets."""
    out = {k: fit[k] for k in ("E", "A", "B", "alpha", "beta", "a", "b", "G", "H")}
    opt = fits.allocation(fit, budgets)
    return out | _predictions(opt["N_opt"], opt["D_opt"], opt["L_opt"], budgets)


def trust(fit: dict, boot: dict, budgets: Sequence[float], bracketed: dict[float, bool] | None) -> dict:
    """Whether to believe a fit: RMS of its residuals (of log loss; a bounded fit's in its metric's units), each
    quantity's interval width over |point|, the extrapolation factor (largest predicted budget / largest fitted
    one), the fitted budgets whose optimum the sizes run did not bracket, the share of resamples that failed."""
    width = {k: (boot["high"][k] - boot["low"][k]) / abs(v) if v else np.inf for k, v in boot["point"].items()}
    return {"rms_residual": fit["rms"], "relative_width": width,
            "extrapolation": max(budgets, default=0.0) / max(fit["budgets"]),
            "not_bracketed": None if bracketed is None else [c for c, ok in bracketed.items() if not ok],
            "failed_fraction": boot["failed"] / (boot["failed"] + boot["resamples"])}


def approach2(records: Sequence[dict], *, budgets: Sequence[float] = PREDICT_BUDGETS, resamples: int = RESAMPLES,
              level: float = LEVEL, seed: int = 0, min_saturating: int = fits.FRONTIER_MIN_BUDGETS) -> dict:
    """Chinchilla approach 2 with intervals: {"fit", "frontier_form" ("saturating": E + A C^-alpha, or "power"),
    "intervals" (bootstrap()), "trust"}."""
    fit = fits.fit_approach2(records, min_saturating)
    boot = bootstrap([records], lambda r: approach2_numbers(fits.fit_approach2(r, min_saturating), budgets),
                     point=approach2_numbers(fit, budgets), resamples=resamples, level=level, seed=seed)
    return {"fit": fit, "frontier_form": fit["frontier"]["form"], "intervals": boot,
            "trust": trust(fit, boot, budgets, fit["bracketed"])}


def approach3(records: Sequence[dict], *, budgets: Sequence[float] = PREDICT_BUDGETS,
              flops_per_token: fits.FlopsPerToken = 6.0, resamples: int = RESAMPLES, level: float = LEVEL,
              seed: int = 0) -> dict:
    """Chinchilla approach 3 with intervals: {"fit", "intervals", "trust"}; refits start from the point fit and the
    best REFIT_STARTS grid points (none by default). An optimum is bracketed when it lies within its budget's sizes."""
    fit = fits.fit_approach3(records, flops_per_token=flops_per_token)
    refit = lambda r: approach3_numbers(fits.fit_approach3(r, flops_per_token=flops_per_token, starts=REFIT_STARTS,
                                                      init=fit), budgets)
    boot = bootstrap([records], refit, point=approach3_numbers(fit, budgets), resamples=resamples, level=level,
                     seed=seed)
    C, N = fits.columns(records, "budget", "params")
    n_opt = fits.allocation(fit, fit["budgets"])["N_opt"]
    bracketed = {c: bool(N[C == c].min() <= n <= N[C == c].max()) for c, n in zip(fit["budgets"], n_opt, strict=True)}
    return {"fit": fit, "intervals": boot, "trust": trust(fit, boot, budgets, bracketed)}


def bounded(records: Sequence[dict], metric: str, chance: float, *, budgets: Sequence[float] = PREDICT_BUDGETS,
            resamples: int = RESAMPLES, level: float = LEVEL, seed: int = 0) -> dict:
    """A bounded yardstick against compute (fits.fit_bounded: a sigmoid in log C between chance and 1) with intervals
    of k, c0 and the value at each budget: {"fit", "intervals", "trust"}; its rms is in the metric's units."""
    numbers = lambda curve: {"k": curve["k"], "c0": curve["c0"]} | {_at(metric, c): fits.curve_value(curve, c)
                                                                   for c in budgets}
    fit = fits.fit_bounded(records, metric, chance)
    boot = bootstrap([records], lambda r: numbers(fits.fit_bounded(r, metric, chance)), point=numbers(fit),
                     resamples=resamples, level=level, seed=seed)
    return {"fit": fit, "intervals": boot, "trust": trust(fit, boot, budgets, None)}


def crossing(curve_a: dict, curve_b: dict, low: float, high: float) -> float | None:
    """The smallest budget in [low, high] where the two curves are equal, or None."""
    x = np.linspace(np.log(low), np.log(high), CROSSING_POINTS)
    diff = lambda u: fits.curve_value(curve_a, np.exp(u)) - fits.curve_value(curve_b, np.exp(u))
    f = diff(x)
    where = np.nonzero(np.sign(f[:-1]) * np.sign(f[1:]) <= 0)[0]
    if not len(where):
        return None
    i = where[0]
    return float(np.exp(x[i] if f[i] == 0 else optimize.brentq(diff, x[i], x[i + 1], xtol=1e-12)))


def multiplier(curve_a: dict, curve_b: dict, budget: float) -> float:
    """Effective compute multiplier of B over A at a budget: C_B(value_A(C)) / C (inf where B never gets there)."""
    return fits.curve_budget(curve_b, fits.curve_value(curve_a, budget)) / budget


def compare(records_a: Sequence[dict], records_b: Sequence[dict], *, metric: str = "loss",
            chance: float | None = None, budgets: Sequence[float] = (), targets: Sequence[float] = (),
            cross_range: tuple[float, float] | None = None, resamples: int = RESAMPLES, level: float = LEVEL,
            seed: int = 0) -> dict:
    """Two contenders on one yardstick (curves by fits.fit_curve): the compute multiplier of B over A at each budget
    (multiplier@C) and at each target value (C_B(v) / C_A(v), multiplier_at@v), with intervals from resampling
    both independently; and the budget where the curves cross within cross_range (default: the budgets run), or
    None, with the share of resamples in which they cross there."""
    fit = lambda r: fits.fit_curve(r, metric, chance)
    ca, cb = fit(records_a), fit(records_b)
    lo, hi = cross_range or (min(ca["budgets"] + cb["budgets"]), max(ca["budgets"] + cb["budgets"]))

    def numbers(a: dict, b: dict) -> dict[str, float]:
        out = {_at("multiplier", c): multiplier(a, b, c) for c in budgets}
        out |= {_at("multiplier_at", v): fits.curve_budget(b, v) / fits.curve_budget(a, v) for v in targets}
        return out | {"crossing": crossing(a, b, lo, hi) or np.nan}

    boot = bootstrap([records_a, records_b], lambda ra, rb: numbers(fit(ra), fit(rb)), point=numbers(ca, cb),
                     resamples=resamples, level=level, seed=seed)
    crosses = ~np.isnan(boot["samples"]["crossing"])
    return {"curves": (ca, cb), "crossing": crossing(ca, cb, lo, hi), "cross_range": (lo, hi),
            "crossing_fraction": float(crosses.mean()), "intervals": boot}


def held_out(records: Sequence[dict], *, method: str = "approach3", flops_per_token: fits.FlopsPerToken = 6.0,
             resamples: int = RESAMPLES, level: float = LEVEL, seed: int = 0) -> dict:
    """Fit on every budget but the largest and predict the largest: its compute-optimal loss (measured: the
    parabola minimum of its runs, when it has 3 or more sizes) and, for approach 3, each size's loss (mean over
    seeds). Intervals are prediction intervals: each bootstrap refit's prediction times the exp of a residual
    drawn from the point fit's (scaled for the parameters fitted), so a single run's noise is inside them.
    {"method", "budget", "extrapolation", "optimum": {"predicted", "measured", "interval", "hit"}, "sizes": [...],
    "hit" (the optimum's), "failed"}."""
    if method not in ("approach2", "approach3"):
        raise ValueError(f"held_out: method must be 'approach2' or 'approach3', got {method!r}")
    top = max(float(r["budget"]) for r in records)
    train, test = [r for r in records if r["budget"] < top], [r for r in records if r["budget"] == top]
    N, D, L = fits.columns(test, "params", "tokens", "loss")
    sizes = np.unique(N)
    measured_opt = fits.isoflop_optima(test)[0]["L_opt"] if len(sizes) >= 3 or method == "approach2" else None
    if method == "approach2":
        fit = fits.fit_approach2(train)
        predict = lambda f: {"optimum": fits.curve_value(f["frontier"], top)}
        refit = lambda r: predict(fits.fit_approach2(r))
        n_params = 3 * len(fit["budgets"])
    else:
        fit = fits.fit_approach3(train, flops_per_token=flops_per_token)
        predict = lambda f: {"optimum": float(fits.allocation(f, [top])["L_opt"][0])} | {
            _at("size", n): float(fits.law_loss(f, n, D[N == n].mean())) for n in sizes}
        refit = lambda r: predict(fits.fit_approach3(r, flops_per_token=flops_per_token, starts=REFIT_STARTS, init=fit))
        n_params = 5
    boot = bootstrap([train], refit, point=predict(fit), resamples=resamples, level=level, seed=seed)
    resid = fit["residuals"] * np.sqrt(len(fit["residuals"]) / max(len(fit["residuals"]) - n_params, 1))
    rng = np.random.default_rng(seed + 1)

    def check(key: str, measured: float | None) -> dict:
        s = boot["samples"][key] * np.exp(rng.choice(resid, len(boot["samples"][key])))
        lo, hi = np.quantile(s, [(1 - level) / 2, (1 + level) / 2], method="inverted_cdf").tolist()
        return {"predicted": boot["point"][key], "measured": measured, "interval": (lo, hi),
                "hit": None if measured is None else bool(lo <= measured <= hi)}

    optimum = check("optimum", measured_opt)
    per_size = [{"params": float(n), "tokens": float(D[N == n].mean()),
                 **check(_at("size", n), float(L[N == n].mean()))} for n in sizes] if method == "approach3" else []
    return {"method": method, "budget": top, "extrapolation": top / max(fit["budgets"]), "optimum": optimum,
            "sizes": per_size, "hit": optimum["hit"], "failed": boot["failed"]}
