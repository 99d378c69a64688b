"""Scaling-law fits to a ladder of finished runs: Chinchilla's approaches 2 and 3, and a bounded fit for accuracies.

A run record is a dict {"contender", "budget" (training FLOPs C), "params" N, "tokens" D, "seed", "loss", ...} with
other yardsticks (e.g. "blimp") as extra keys; runs of one budget share its value exactly. Every function takes one
contender's runs (select() picks them) and returns plain dicts; intervals.py adds bootstrap intervals, comparisons
and the held-out check.

  isoflop_optima(runs)                   # approach 2 per budget: a parabola of loss against log N, its minimum
  fit_approach2(runs)                    # N_opt = G C^a, D_opt = H C^b, and the frontier L_opt(C)
  fit_approach3(runs)                    # L(N, D) = E + A / N^alpha + B / D^beta (Hoffmann et al. 2022, D.2)
  allocation(fit3, [1e21])               # N_opt, D_opt, L_opt at those budgets from the fitted law
  fit_curve(runs, "blimp", chance=0.5)   # a yardstick against compute, as a curve dict
  curve_value(curve, C), curve_budget(curve, value)   # the curve and its inverse
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence

import numpy as np
from scipy import optimize, special

HUBER_DELTA = 1e-3  # Huber threshold on log-loss residuals (Hoffmann et al. 2022, appendix D.2).
MIN_SIZES = 3  # Distinct model sizes a budget needs for approach 2's parabola.
FRONTIER_MIN_BUDGETS = 4  # Budgets needed to fit L_opt(C) = E + A C^-alpha (3 parameters); fewer: A C^-alpha.
STARTS = 8  # Approach 3: L-BFGS-B runs from the best points of the grid below.
# Approach 3's starting grid, centred: a = log(A / N^alpha) and b = log(B / D^beta) at the runs' mean log N, log D.
GRID = {"a": (-4, -3, -2, -1, 0, 1), "b": (-4, -3, -2, -1, 0, 1), "e": (-1, -0.5, 0, 0.5, 1),
        "alpha": (0.1, 0.25, 0.5, 1.0, 1.5), "beta": (0.1, 0.25, 0.5, 1.0, 1.5)}
BOUNDS = [(-30, 10), (-30, 10), (-10, 5), (1e-3, 4), (1e-3, 4)]  # a, b, e, alpha, beta
FlopsPerToken = float | Callable[[float], float]  # k in C = k N D, or C = f(N) D


def select(records: Sequence[dict], contender: str) -> list[dict]:
    """The runs of one contender."""
    picked = [r for r in records if r["contender"] == contender]
    if not picked:
        names = sorted({r["contender"] for r in records})
        raise ValueError(f"no runs of contender {contender!r}; the runs are of {names}")
    return picked


def columns(records: Sequence[dict], *keys: str) -> list[np.ndarray]:
    """Those fields of every run as float64 arrays; a run without one is a ValueError naming it."""
    for r in records:
        missing = [k for k in keys if r.get(k) is None]
        if missing:
            raise ValueError(f"run {r.get('contender')} budget={r.get('budget')} params={r.get('params')} has no "
                             f"{', '.join(missing)}")
    return [np.array([float(r[k]) for r in records]) for k in keys]


def isoflop_optima(records: Sequence[dict], metric: str = "loss") -> list[dict]:
    """Per budget, a parabola of the metric against log N over its runs: the optimum N_opt, D_opt (from the runs'
    log D against log N at that budget), L_opt, k = C / (N D), and whether N_opt lies within the sampled sizes."""
    C, N, D, y = columns(records, "budget", "params", "tokens", metric)
    if min(C.min(), N.min(), D.min(), y.min()) <= 0:
        raise ValueError(f"budget, params, tokens and {metric} must be positive for approach 2")
    out = []
    for c in np.unique(C):
        at = C == c
        sizes = np.unique(N[at])
        if len(sizes) < MIN_SIZES:
            raise ValueError(f"budget {c:.3g} has {len(sizes)} model size(s) ({', '.join(f'{n:.3g}' for n in sizes)})"
                             f"; approach 2 needs at least {MIN_SIZES} per budget: add sizes or leave the budget out")
        x = np.log(N[at])
        m = x.mean()
        p2, p1, p0 = np.polyfit(x - m, y[at], 2)
        if p2 <= 0:
            raise ValueError(f"budget {c:.3g}: {metric} against log N is not convex (curvature {p2:.3g}), no optimum")
        u = -p1 / (2 * p2)
        slope, icpt = np.polyfit(x, np.log(D[at]), 1)
        fitted = np.polyval([p2, p1, p0], x - m)
        out.append({"budget": float(c), "N_opt": float(np.exp(m + u)), "D_opt": float(np.exp(icpt + slope * (m + u))),
                    "L_opt": float(p0 - p1 * p1 / (4 * p2)), "k": float(np.exp(np.mean(np.log(c / (N[at] * D[at]))))),
                    "bracketed": bool(sizes[0] <= np.exp(m + u) <= sizes[-1]), "sizes": len(sizes),
                    "residuals": np.log(y[at]) - np.log(np.maximum(fitted, 1e-300))})
    return out


def fit_frontier(budgets: Sequence[float], values: Sequence[float],
                 min_saturating: int = FRONTIER_MIN_BUDGETS) -> dict:
    """value(C) = E + A C^-alpha by least squares on log value with min_saturating distinct budgets or more, else
    A C^-alpha. A curve dict {"form": "saturating" or "power", "E", "A", "alpha"}."""
    x, y = np.log(np.asarray(budgets, np.float64)), np.asarray(values, np.float64)
    if len(np.unique(x)) < 2 or y.min() <= 0:
        raise ValueError(f"a frontier needs 2 or more budgets with positive values, got {len(np.unique(x))}")
    m = x.mean()
    slope, icpt = np.polyfit(x - m, np.log(y), 1)
    best = {"form": "power", "E": 0.0, "A": float(np.exp(icpt - slope * m)), "alpha": float(-slope)}
    if len(np.unique(x)) < min_saturating:
        return best
    u, lo, hi = x - m, [0, -50, 0], [y.min() * (1 - 1e-9), 50, 10]  # E, log A at the mean log C, alpha

    def jac(p: np.ndarray) -> np.ndarray:
        t = np.exp(p[1] - p[2] * u)
        return np.stack([np.ones_like(u), t, -u * t], axis=1) / (p[0] + t)[:, None]

    cost = np.inf
    for e0 in (0.0, 0.5 * hi[0], 0.9 * hi[0]):
        s, i = np.polyfit(u, np.log(y - e0), 1)
        res = optimize.least_squares(lambda p: np.log(p[0] + np.exp(p[1] - p[2] * u)) - np.log(y),
                                     np.clip([e0, i, -s], lo, hi), jac=jac, bounds=(lo, hi))
        if res.cost < cost:
            cost, (e, la, alpha) = res.cost, res.x
            best = {"form": "saturating", "E": float(e), "A": float(np.exp(la + alpha * m)), "alpha": float(alpha)}
    return best


def fit_bounded(records: Sequence[dict], metric: str, chance: float) -> dict:
    """acc(C) = chance + (1 - chance) sigmoid(k (log10 C - c0)) by least squares over every run (each at its
    budget, all sizes): every prediction lies in [chance, 1]. A curve dict {"form": "sigmoid", "chance", "k", "c0",
    "rms", "budgets"}. Every run, not the best size per budget: the best of a few noisy runs is biased upward, and
    its bootstrap more so."""
    if not 0 <= chance < 1:
        raise ValueError(f"chance must be in [0, 1), got {chance}")
    C, v = columns(records, "budget", metric)
    budgets = np.unique(C)
    if len(budgets) < 2:
        raise ValueError(f"a bounded fit of {metric} needs 2 or more budgets, got {len(budgets)}")
    x = np.log10(C)
    m = x.mean()
    k0, z0 = np.polyfit(x - m, special.logit(np.clip((v - chance) / (1 - chance), 0.02, 0.98)), 1)
    model = lambda p: chance + (1 - chance) * special.expit(p[0] * (x - m) + p[1])
    res = optimize.least_squares(lambda p: model(p) - v, [k0, z0], bounds=([-20, -20], [20, 20]))
    k, zc = res.x
    return {"form": "sigmoid", "chance": float(chance), "k": float(k), "c0": float(m - zc / k) if k else np.inf,
            "rms": float(np.sqrt(np.mean(res.fun ** 2))), "budgets": budgets.tolist()}


def fit_curve(records: Sequence[dict], metric: str = "loss", chance: float | None = None,
              min_saturating: int = FRONTIER_MIN_BUDGETS) -> dict:
    """A yardstick against compute: for loss, fit_frontier through approach 2's L_opt per budget; with a chance
    level, fit_bounded over every run; else fit_frontier over every run (so compare contenders on the same ladder)."""
    if chance is not None:
        return fit_bounded(records, metric, chance)
    if metric == "loss":
        optima = isoflop_optima(records, metric)
        budgets, values = [o["budget"] for o in optima], [o["L_opt"] for o in optima]
    else:
        budgets, values = columns(records, "budget", metric)
    return {**fit_frontier(budgets, values, min_saturating), "budgets": sorted(set(map(float, budgets)))}


def curve_value(curve: dict, budget: float | np.ndarray) -> float | np.ndarray:
    """The curve at budget C."""
    C = np.asarray(budget, np.float64)
    if curve["form"] == "sigmoid":
        out = curve["chance"] + (1 - curve["chance"]) * special.expit(curve["k"] * (np.log10(C) - curve["c0"]))
    else:
        out = curve["E"] + np.exp(np.log(curve["A"]) - curve["alpha"] * np.log(C))
    return float(out) if np.ndim(out) == 0 else out


def curve_budget(curve: dict, value: float) -> float:
    """The budget at which the curve reaches value (its inverse); inf where it never does."""
    with np.errstate(divide="ignore", invalid="ignore"):
        if curve["form"] == "sigmoid":
            s = (value - curve["chance"]) / (1 - curve["chance"])
            if not 0 < s < 1 or curve["k"] == 0:
                return np.inf
            return float(10 ** (curve["c0"] + special.logit(s) / curve["k"]))
        if value <= curve["E"] or curve["alpha"] == 0:
            return np.inf
        return float(np.exp((np.log(curve["A"]) - np.log(value - curve["E"])) / curve["alpha"]))


def fit_frontier_exponents(optima: Sequence[dict]) -> dict:
    """N_opt = G C^a and D_opt = H C^b by least squares in log-log over the budgets' optima."""
    lnC = np.log([o["budget"] for o in optima])
    a, lnG = np.polyfit(lnC, np.log([o["N_opt"] for o in optima]), 1)
    b, lnH = np.polyfit(lnC, np.log([o["D_opt"] for o in optima]), 1)
    return {"a": float(a), "G": float(np.exp(lnG)), "b": float(b), "H": float(np.exp(lnH))}


def fit_approach2(records: Sequence[dict], min_saturating: int = FRONTIER_MIN_BUDGETS) -> dict:
    """Chinchilla approach 2: the isoFLOP optima, power laws N_opt = G C^a and D_opt = H C^b through them, and the
    loss frontier L_opt(C) (E + A C^-alpha with min_saturating budgets or more, else A C^-alpha: see frontier form)."""
    optima = isoflop_optima(records)
    if len(optima) < 2:
        raise ValueError(f"approach 2 needs 2 or more budgets for its power laws, got {len(optima)}")
    residuals = np.concatenate([o["residuals"] for o in optima])
    frontier = fit_frontier([o["budget"] for o in optima], [o["L_opt"] for o in optima], min_saturating)
    dof = len(residuals) - 3 * len(optima)
    return {**fit_frontier_exponents(optima), "frontier": frontier, "optima": optima,
            "budgets": [o["budget"] for o in optima], "residuals": residuals,
            "rms": float(np.sqrt(np.sum(residuals ** 2) / max(dof, 1))),
            "bracketed": {o["budget"]: o["bracketed"] for o in optima}}


def _lse(t1: np.ndarray, t2: np.ndarray, t3: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
    """log(e^t1 + e^t2 + e^t3) and the three softmax weights (its derivatives), broadcast; by hand: scipy's
    logsumexp costs five times as much at these sizes, and approach 3's bootstrap calls this ~10^5 times."""
    m = np.maximum(np.maximum(t1, t2), t3)
    w = [np.exp(t1 - m), np.exp(t2 - m), np.exp(t3 - m)]
    s = w[0] + w[1] + w[2]
    return m + np.log(s), [x / s for x in w]


def _huber(r: np.ndarray, delta: float) -> np.ndarray:
    """Huber's loss: r^2 / 2 within delta, delta (|r| - delta / 2) beyond."""
    ar = np.abs(r)
    return np.where(ar <= delta, 0.5 * r * r, delta * (ar - 0.5 * delta))


def _objective(theta: np.ndarray, lnN: np.ndarray, lnD: np.ndarray, lnL: np.ndarray,
               delta: float) -> tuple[float, np.ndarray]:
    """Sum of Huber(log L_hat - log L) / delta^2 and its gradient, log L_hat = LSE(a - alpha lnN, b - beta lnD, e)."""
    a, b, e, alpha, beta = theta
    lse, w = _lse(a - alpha * lnN, b - beta * lnD, e)
    r = lse - lnL
    g = np.clip(r, -delta, delta) / delta ** 2
    grad = np.array([g @ w[0], g @ w[1], g @ w[2], -(g * w[0]) @ lnN, -(g * w[1]) @ lnD])
    return float(_huber(r, delta).sum() / delta ** 2), grad


def _grid_best(lnN: np.ndarray, lnD: np.ndarray, lnL: np.ndarray, delta: float, count: int) -> np.ndarray:
    """The count grid points of lowest objective, evaluated all at once."""
    th = np.array(list(itertools.product(*GRID.values())), np.float64)[:, :, None]  # (P, 5, 1): a, b, e, alpha, beta
    lse, _ = _lse(th[:, 0] - th[:, 3] * lnN, th[:, 1] - th[:, 4] * lnD, th[:, 2])
    return th[np.argsort(_huber(lse - lnL, delta).sum(axis=1))[:count], :, 0]


def fit_approach3(records: Sequence[dict], *, flops_per_token: FlopsPerToken = 6.0, delta: float = HUBER_DELTA,
                  starts: int = STARTS, init: dict | None = None) -> dict:
    """Chinchilla approach 3: L(N, D) = E + A / N^alpha + B / D^beta, minimising the Huber loss of log L in the
    log-sum-exp form of Hoffmann et al. (2022, D.2) with L-BFGS-B from the best `starts` points of GRID (and from
    `init`, an earlier fit, when given); internally a and b are centred at the runs' mean log N and log D.
    law()'s dict plus "objective", "budgets", "residuals" (log L - log L_hat) and "rms" (over n - 5)."""
    N, D, L = columns(records, "params", "tokens", "loss")
    if min(N.min(), D.min(), L.min()) <= 0:
        raise ValueError("params, tokens and loss must be positive for approach 3")
    if len(set(zip(N, D, strict=True))) < 6:
        raise ValueError(f"approach 3 fits 5 parameters: it needs 6 or more distinct (params, tokens), got "
                         f"{len(set(zip(N, D, strict=True)))}")
    mN, mD = np.log(N).mean(), np.log(D).mean()
    lnN, lnD, lnL = np.log(N) - mN, np.log(D) - mD, np.log(L)
    points = list(_grid_best(lnN, lnD, lnL, delta, starts)) if starts else []
    if init is not None:
        points.append(np.array([np.log(init["A"]) - init["alpha"] * mN, np.log(init["B"]) - init["beta"] * mD,
                                np.log(init["E"]), init["alpha"], init["beta"]]))
    best = None
    for p in points:
        res = optimize.minimize(_objective, np.clip(p, *np.transpose(BOUNDS)), args=(lnN, lnD, lnL, delta), jac=True,
                                method="L-BFGS-B", bounds=BOUNDS, options={"maxiter": 2000, "ftol": 1e-13})
        if np.isfinite(res.fun) and (best is None or res.fun < best.fun):
            best = res
    if best is None:
        raise ValueError("approach 3: no start gave a finite objective")
    a, b, e, alpha, beta = best.x
    fit = law(float(np.exp(e)), float(np.exp(a + alpha * mN)), float(np.exp(b + beta * mD)), float(alpha),
              float(beta), flops_per_token)
    resid = np.log(L) - np.log(law_loss(fit, N, D))
    return {**fit, "objective": float(best.fun), "budgets": sorted(set(columns(records, "budget")[0].tolist())),
            "residuals": resid, "rms": float(np.sqrt(np.sum(resid ** 2) / max(len(resid) - 5, 1)))}


def law(E: float, A: float, B: float, alpha: float, beta: float, flops_per_token: FlopsPerToken = 6.0) -> dict:
    """A law L = E + A / N^alpha + B / D^beta with its allocation: a = beta / (alpha + beta), b = alpha / (alpha +
    beta) and, for C = k N D, G = (alpha A / (beta B))^(1 / (alpha + beta)) k^-a and H = 1 / (G k) in N_opt = G C^a,
    D_opt = H C^b (Hoffmann et al. 2022, eq. 4, there with k = 6); NaN for a FLOPs-per-token function."""
    G = H = np.nan
    if not callable(flops_per_token):
        G = (alpha * A / (beta * B)) ** (1 / (alpha + beta)) * flops_per_token ** (-beta / (alpha + beta))
        H = 1 / (G * flops_per_token)
    return {"E": E, "A": A, "B": B, "alpha": alpha, "beta": beta, "flops_per_token": flops_per_token,
            "a": beta / (alpha + beta), "b": alpha / (alpha + beta), "G": float(G), "H": float(H)}


def law_loss(fit: dict, params: float | np.ndarray, tokens: float | np.ndarray) -> np.ndarray:
    """E + A / N^alpha + B / D^beta."""
    return fit["E"] + fit["A"] * np.asarray(params, np.float64) ** -fit["alpha"] + \
        fit["B"] * np.asarray(tokens, np.float64) ** -fit["beta"]


def allocation(fit: dict, budgets: Sequence[float]) -> dict[str, np.ndarray]:
    """Compute-optimal N_opt, D_opt, L_opt at each budget under the fitted law: closed form for C = k N D
    (N_opt = G C^a), else minimising L(N, C / f(N)) over log N for a FLOPs-per-token function f."""
    C = np.asarray(budgets, np.float64)
    k = fit["flops_per_token"]
    if callable(k):
        g6 = (fit["alpha"] * fit["A"] / (fit["beta"] * fit["B"])) ** (1 / (fit["alpha"] + fit["beta"]))
        N = []
        for c in C:
            guess = np.log(g6 * (c / 6) ** fit["a"])
            res = optimize.minimize_scalar(lambda u, c=c: law_loss(fit, np.exp(u), c / k(np.exp(u))),
                                           bounds=(guess - 9, guess + 9), method="bounded", options={"xatol": 1e-9})
            N.append(np.exp(res.x))
        N = np.array(N)
        D = C / np.array([k(n) for n in N])
    else:
        N = fit["G"] * C ** fit["a"]
        D = C / (k * N)
    return {"N_opt": N, "D_opt": D, "L_opt": law_loss(fit, N, D)}
