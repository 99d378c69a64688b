"""Statistics for the report: means and standard errors over seeds, and whether two contenders differ.

  standard_error([0.70, 0.74, 0.72])                  # std (ddof=1) / sqrt(n)
  paired_t_test(a_by_seed, b_by_seed)                 # same seed = same batches: a pair; two-sided
  paired_bootstrap(a_correct, b_correct)              # one seed: resample the evaluation examples, both together
  sign_flip_test(a_by_seed, b_by_seed)                # exact: every sign of the per-seed differences
  difference_test({0: .71, 1: .73}, {0: .66, 1: .70}) # the test the data allow (t-test, bootstrap, sign flip, none)

The Student-t CDF is exact: the regularized incomplete beta function by its continued fraction (Numerical Recipes,
section 6.4), no scipy. Numbers in, numbers out; experiments/report.py decides what to compare.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

ALPHA = 0.05  # Significance level of every test the report makes.
RESAMPLES = 10_000  # Paired bootstrap resamples.
T_TEST = "paired t-test"
BOOTSTRAP = "paired bootstrap"
SIGN_FLIP = "exact sign-flip test"
NO_SPREAD = "the same difference on every seed"
MAX_SIGN_FLIP_PAIRS = 20  # 2^20 sign patterns at most.


def mean(values: Sequence[float]) -> float:
    """The arithmetic mean."""
    return float(np.mean(np.asarray(values, np.float64)))


def standard_error(values: Sequence[float]) -> float:
    """Standard error of the mean: std with ddof=1 over sqrt(n); NaN for fewer than two values."""
    x = np.asarray(values, np.float64)
    return float(np.std(x, ddof=1) / math.sqrt(len(x))) if len(x) > 1 else math.nan


def _continued_fraction(a: float, b: float, x: float, iters: int = 500, eps: float = 1e-15) -> float:
    """The continued fraction of I_x(a, b) by the modified Lentz method (converges fast for x < (a+1)/(a+b+2))."""
    tiny = 1e-300
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, iters + 1):
        for num in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                    -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1.0 + num * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + num / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < eps:
            return h
    raise ArithmeticError(f"incomplete beta: no convergence for a={a}, b={b}, x={x}")


def betainc(a: float, b: float, x: float) -> float:
    """The regularized incomplete beta function I_x(a, b), a, b > 0, 0 <= x <= 1."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1) / (a + b + 2):
        return front * _continued_fraction(a, b, x) / a
    return 1.0 - front * _continued_fraction(b, a, 1.0 - x) / b


def t_two_sided_p(t: float, df: float) -> float:
    """P(|T| >= |t|) for Student's t with `df` degrees of freedom."""
    if math.isnan(t):
        return math.nan
    return betainc(df / 2, 0.5, df / (df + t * t)) if math.isfinite(t) else 0.0


def t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with `df` degrees of freedom."""
    tail = t_two_sided_p(t, df) / 2
    return 1.0 - tail if t >= 0 else tail


def paired_t_test(a: Sequence[float], b: Sequence[float]) -> dict:
    """Two-sided paired t-test of mean(a - b) = 0, a[i] and b[i] a pair (the same seed): {'method', 'n',
    'difference' (mean of a - b), 'se', 't', 'df', 'p'}. Where every pair differs by the same amount there is no
    spread and the test is undefined: 'method', 't' and 'p' are then None and 'why' says so (stats.NO_SPREAD)."""
    d = np.asarray(a, np.float64) - np.asarray(b, np.float64)
    n = len(d)
    if n < 2:
        raise ValueError(f"paired_t_test: needs at least 2 pairs, got {n}")
    diff, se = float(d.mean()), standard_error(d)
    out = {"method": T_TEST, "n": n, "difference": diff, "se": se, "df": n - 1}
    tol = 1e-12 * max(1.0, float(np.max(np.abs(a))), float(np.max(np.abs(b))))  # rounding of the values
    if se <= tol:  # every pair differs by the same amount: t = d / 0 measures nothing
        return {**out, "method": None, "t": None, "p": None, "why": NO_SPREAD}
    t = diff / se
    return {**out, "t": t, "p": t_two_sided_p(t, n - 1)}


def sign_flip_test(a: Sequence[float], b: Sequence[float]) -> dict:
    """Exact two-sided sign-flip (permutation) test of mean(a - b) = 0, a[i] and b[i] a pair: under the null each
    difference is as likely negated, so p = #{signs s: |mean(s * d)| >= |mean(d)|} / 2^n over all 2^n signs. Its
    smallest p is 2 / 2^n (0.25 with 3 pairs, 0.5 with 2). {'method', 'n', 'difference', 'p'}."""
    d = np.asarray(a, np.float64) - np.asarray(b, np.float64)
    n = len(d)
    if not 1 <= n <= MAX_SIGN_FLIP_PAIRS or len(a) != len(b):
        raise ValueError(f"sign_flip_test: needs 1 to {MAX_SIGN_FLIP_PAIRS} pairs, got {len(a)} and {len(b)}")
    signs = 1 - 2 * ((np.arange(2 ** n)[:, None] >> np.arange(n)) & 1)  # every pattern of +-1, one per row
    means = np.abs(signs @ d) / n
    diff = float(d.mean())
    tol = 1e-12 * max(1.0, float(np.max(np.abs(d))))
    return {"method": SIGN_FLIP, "n": n, "difference": diff, "p": float(np.mean(means >= abs(diff) - tol))}


def paired_bootstrap(a: Sequence[float], b: Sequence[float], resamples: int = RESAMPLES, seed: int = 0,
                     chunk: int = 500) -> dict:
    """Two-sided paired bootstrap of mean(a - b) = 0 over evaluation examples (a[i], b[i]: the two contenders'
    scores on example i, e.g. 1 right, 0 wrong): the examples are resampled with replacement, the same draw for
    both, and p = (1 + #{|d* - d| >= |d|}) / (resamples + 1), d the observed mean difference and d* a resample's.
    {'method', 'n', 'difference', 'se' (std of d*), 'resamples', 'p'}."""
    d = np.asarray(a, np.float64) - np.asarray(b, np.float64)
    n = len(d)
    if n < 1 or len(a) != len(b):
        raise ValueError(f"paired_bootstrap: needs two equally long non-empty arrays, got {len(a)} and {len(b)}")
    rng = np.random.default_rng(seed)
    diff = float(d.mean())
    stars = np.concatenate([d[rng.integers(0, n, size=(min(chunk, resamples - i), n))].mean(axis=1)
                            for i in range(0, resamples, chunk)])
    extreme = int(np.sum(np.abs(stars - diff) >= abs(diff) - 1e-12))
    return {"method": BOOTSTRAP, "n": n, "difference": diff, "se": float(np.std(stars)), "resamples": resamples,
            "p": (1 + extreme) / (resamples + 1)}


def _pooled_examples(seeds: list, a_examples: Mapping | None, b_examples: Mapping | None) -> tuple[list, list, list]:
    """Both contenders' per-example scores on the examples both evaluated, over the seeds where both kept them
    (an example of one seed pairs with the same example of the same seed): (a scores, b scores, those seeds)."""
    va, vb, used = [], [], []
    for s in seeds:
        ea, eb = (a_examples or {}).get(s), (b_examples or {}).get(s)
        if ea and eb:
            bt = dict(zip(*eb, strict=True))
            pairs = [(x, bt[i]) for i, x in zip(*ea, strict=True) if i in bt]
            va += [x for x, _ in pairs]
            vb += [y for _, y in pairs]
            used += [s] if pairs else []
    return va, vb, used


def difference_test(a: Mapping, b: Mapping, a_examples: Mapping | None = None,
                    b_examples: Mapping | None = None) -> dict:
    """Whether a and b differ, by the test their data allow. a, b: {seed: value}; *_examples: {seed: (example ids,
    per-example scores)} where kept (None where not).

    Two or more common seeds: paired t-test over them. Where every seed gives the same difference the t-test is
    undefined (no spread): the paired bootstrap over the examples both evaluated, pooled over the seeds that kept
    them, or without per-example results the exact sign-flip test over the seeds; 'note' says so. One common seed
    with per-example scores on both sides: paired bootstrap over the examples both evaluated. Otherwise no test
    ('p' None, 'why' says what is missing).
    The record: {'method', 'n', 'difference' (mean a - b over the pairs), 'p', 'significant', 'seeds', ...}."""
    seeds = [s for s in a if s in b and a[s] is not None and b[s] is not None]
    va, vb, example_seeds = _pooled_examples(seeds, a_examples, b_examples)
    if len(seeds) >= 2:
        out = paired_t_test([a[s] for s in seeds], [b[s] for s in seeds])
        if out["method"] is None:  # no spread between seeds: what the data support instead
            note = f"no t-test: {out['why']}"
            out = ({**paired_bootstrap(va, vb), "seeds": example_seeds} if va
                   else sign_flip_test([a[s] for s in seeds], [b[s] for s in seeds]))
            out["note"] = note
    elif len(seeds) == 1 and (a_examples or {}).get(seeds[0]) and (b_examples or {}).get(seeds[0]):
        if not va:
            return {"method": None, "n": 0, "difference": None, "p": None, "significant": None,
                    "why": "the two evaluated no example in common"}
        out = paired_bootstrap(va, vb)
    else:
        why = ("one seed and no per-example results" if len(seeds) == 1 else "no seed in common")
        diff = a[seeds[0]] - b[seeds[0]] if seeds else None
        return {"method": None, "n": len(seeds), "difference": diff, "p": None, "significant": None, "why": why}
    out.setdefault("seeds", seeds)
    out["significant"] = bool(out["p"] < ALPHA)
    return out
