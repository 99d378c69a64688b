"""experiments/scaling/intervals.py and fits.py on synthetic ladders drawn from a known law L = E + A / N^alpha +
B / D^beta with C = 6 N D and lognormal noise. The truths are computed here, independently of the fits: the optimal
N at a budget by a dense grid search along its isoFLOP line, a = beta / (alpha + beta)."""

import os

# Before scipy loads its OpenBLAS: threaded, it makes L-BFGS-B many times slower on 2 busy cores.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from scipy import special  # noqa: E402

from experiments.scaling import fits as scaling_fits  # noqa: E402
from experiments.scaling import intervals as scaling  # noqa: E402

LAW = {"E": 1.69, "A": 406.4, "B": 410.7, "alpha": 0.34, "beta": 0.28}  # Hoffmann et al. (2022)'s fit
A_TRUE = LAW["beta"] / (LAW["alpha"] + LAW["beta"])
BUDGETS = (1e17, 1e18, 1e19, 1e20)
RATIOS = (1 / 4, 1 / 2, 1, 2, 4)  # sizes at a budget, times its true optimal N
NOISE = 0.005  # lognormal sigma of a run's loss
R = 100  # bootstrap resamples in the fast tests


def true_loss(N, D, law=LAW):
    return law["E"] + law["A"] / N ** law["alpha"] + law["B"] / D ** law["beta"]


def true_optimum(C, law=LAW, flops_per_token=lambda n: 6 * n):
    """(N_opt, L_opt) by grid search over log N, 1e-5 apart."""
    u = np.arange(np.log(C) / 2 - 12, np.log(C) / 2 + 4, 1e-5)
    L = true_loss(np.exp(u), C / flops_per_token(np.exp(u)), law)
    return float(np.exp(u[L.argmin()])), float(L.min())


def ladder(law=LAW, budgets=BUDGETS, ratios=RATIOS, noise=NOISE, seed=0, seeds=(0,), contender="A"):
    rng = np.random.default_rng(seed)
    runs = []
    for C in budgets:
        n_opt = true_optimum(C, law)[0]
        for s in seeds:
            for r in ratios:
                N, D = n_opt * r, C / (6 * n_opt * r)
                runs.append({"contender": contender, "budget": C, "params": N, "tokens": D, "seed": s,
                             "loss": true_loss(N, D, law) * np.exp(noise * rng.normal())})
    return runs


def covers(boot, key, truth):
    return boot["low"][key] <= truth <= boot["high"][key]


@pytest.fixture(scope="module")
def runs():
    return ladder()


@pytest.fixture(scope="module")
def a3(runs):
    return scaling.approach3(runs, budgets=(1e19, 1e21), resamples=200)


@pytest.fixture(scope="module")
def a2(runs):
    return scaling.approach2(runs, budgets=(1e19, 1e21), resamples=R)


def test_approach3_recovers_E_alpha_beta_within_its_intervals(a3):
    boot = a3["intervals"]
    for key, truth in [("E", LAW["E"]), ("alpha", LAW["alpha"]), ("beta", LAW["beta"]), ("a", A_TRUE)]:
        assert covers(boot, key, truth), (key, boot["low"][key], boot["point"][key], boot["high"][key])
    assert boot["resamples"] == 200 and boot["failed"] == 0
    assert a3["fit"]["a"] + a3["fit"]["b"] == pytest.approx(1)


def test_approach2_recovers_the_allocation_exponent_within_its_interval(a2, runs):
    boot = a2["intervals"]
    assert covers(boot, "a", A_TRUE), (boot["low"]["a"], boot["point"]["a"], boot["high"]["a"])
    assert boot["low"]["a"] < boot["point"]["a"] < boot["high"]["a"]
    fit = a2["fit"]
    assert fit["a"] + fit["b"] == pytest.approx(1, abs=1e-9)  # D_opt = C / (6 N_opt) at every budget
    for o in fit["optima"]:
        assert o["bracketed"] and o["k"] == pytest.approx(6)
        assert o["D_opt"] == pytest.approx(o["budget"] / (6 * o["N_opt"]))
    assert a2["frontier_form"] == "saturating" and covers(boot, "E", LAW["E"])
    three = scaling_fits.fit_approach2([r for r in runs if r["budget"] < 1e20])
    assert three["frontier"]["form"] == "power" and three["frontier"]["E"] == 0


def test_approaches_2_and_3_agree_on_the_optimal_size(a2, a3):
    n2, n3 = a2["intervals"]["point"]["N_opt@1e+19"], a3["intervals"]["point"]["N_opt@1e+19"]
    truth = true_optimum(1e19)[0]
    assert 1 / 1.25 < n2 / n3 < 1.25  # the stated factor
    assert 1 / 1.25 < n2 / truth < 1.25 and 1 / 1.25 < n3 / truth < 1.25


def test_allocation_is_the_minimum_along_the_isoflop_line():
    budgets = [1e15, 1e18, 1e21]
    closed = scaling_fits.allocation(scaling_fits.law(**LAW), budgets)
    numeric = scaling_fits.allocation(scaling_fits.law(**LAW, flops_per_token=lambda n: 6 * n), budgets)
    f = lambda n: 6 * n + 2e4  # a FLOPs-per-token function off 6N (an attention-like term)
    other = scaling_fits.allocation(scaling_fits.law(**LAW, flops_per_token=f), budgets)
    for i, C in enumerate(budgets):
        n, loss = true_optimum(C)
        assert closed["N_opt"][i] == pytest.approx(n, rel=1e-4) and closed["L_opt"][i] == pytest.approx(loss)
        assert closed["D_opt"][i] == pytest.approx(C / (6 * n), rel=1e-4)
        assert numeric["N_opt"][i] == pytest.approx(n, rel=1e-4)
        assert other["N_opt"][i] == pytest.approx(true_optimum(C, flops_per_token=f)[0], rel=1e-4)
    assert scaling_fits.law(**LAW)["a"] == pytest.approx(A_TRUE)


def _coverage(draws: int, resamples: int) -> dict:
    keys = {"E": LAW["E"], "alpha": LAW["alpha"], "beta": LAW["beta"], "a": A_TRUE}
    hits = dict.fromkeys([*keys, "approach2 a"], 0)
    for d in range(draws):
        runs = ladder(seed=100 + d)
        boot = scaling.approach3(runs, budgets=(), resamples=resamples, seed=d)["intervals"]
        for key, truth in keys.items():
            hits[key] += covers(boot, key, truth)
        if draws > 10:
            hits["approach2 a"] += covers(scaling.approach2(runs, budgets=(), resamples=resamples, seed=d)["intervals"],
                                          "a", A_TRUE)
    return hits


def test_90_percent_intervals_cover_the_truth_in_most_of_10_draws():
    # E, the least well determined, is covered in about 80% of draws (the slow test); at 80%, 5 or more of 10
    # happens 99% of the time, at 50% only 62%.
    hits = _coverage(10, 60)
    hits.pop("approach2 a")
    assert min(hits.values()) >= 5, hits


@pytest.mark.slow
def test_90_percent_intervals_cover_the_truth_in_70_percent_of_30_draws():
    hits = _coverage(30, 200)
    assert min(hits.values()) >= 21, hits


def test_a_planted_compute_multiplier_of_two_is_recovered_and_the_curves_do_not_cross():
    # B at (N, D) is A at (N / sqrt 2, D / sqrt 2): B's optimal loss at C is A's at C / 2.
    law_b = dict(LAW, A=LAW["A"] * 2 ** (LAW["alpha"] / 2), B=LAW["B"] * 2 ** (LAW["beta"] / 2))
    target = true_optimum(1e19)[1]
    out = scaling.compare(ladder(seed=1), ladder(law_b, seed=2, contender="B"), budgets=(10 ** 18.5,),
                          targets=(target,), resamples=R)
    boot = out["intervals"]
    for key in ("multiplier@3.16e+18", f"multiplier_at@{target:.3g}"):
        assert covers(boot, key, 2.0) and 1.6 < boot["point"][key] < 2.5, (key, boot["low"][key], boot["high"][key])
    assert out["crossing"] is None and out["cross_range"] == (1e17, 1e20)


def test_curves_planted_to_cross_report_the_crossing():
    # X: E higher by 0.15, A and B scaled by s < 1: its frontier meets A's where (1 - s) (L_opt - E) = 0.15.
    c_star = 10 ** 18.5
    s = 1 - 0.15 / (true_optimum(c_star)[1] - LAW["E"])
    law_x = dict(LAW, E=LAW["E"] + 0.15, A=LAW["A"] * s, B=LAW["B"] * s)
    assert true_optimum(c_star, law_x)[1] == pytest.approx(true_optimum(c_star)[1], rel=1e-6)
    out = scaling.compare(ladder(seed=1), ladder(law_x, seed=3, contender="X"), budgets=(1e17, 1e20), resamples=R)
    assert out["crossing"] is not None and 1 / 3 < out["crossing"] / c_star < 3
    assert covers(out["intervals"], "crossing", c_star) and out["crossing_fraction"] > 0.8
    point = out["intervals"]["point"]
    assert point["multiplier@1e+17"] < 1 < point["multiplier@1e+20"]  # X is ahead early, behind late


@pytest.mark.parametrize("method", ["approach3", "approach2"])
def test_held_out_largest_budget_hits_on_the_law_and_misses_off_it(method):
    runs = ladder(budgets=(*BUDGETS, 1e21), seed=4)
    clean = scaling.held_out(runs, method=method, resamples=R)
    lo, hi = clean["optimum"]["interval"]
    assert clean["hit"] is True and lo <= clean["optimum"]["measured"] <= hi and clean["budget"] == 1e21
    assert clean["optimum"]["measured"] == pytest.approx(true_optimum(1e21)[1], rel=0.01)
    off = scaling.held_out([dict(r, loss=r["loss"] * 1.1) if r["budget"] == 1e21 else r for r in runs],
                           method=method, resamples=R)
    assert off["hit"] is False and off["optimum"]["measured"] > off["optimum"]["interval"][1]
    assert off["optimum"]["predicted"] == clean["optimum"]["predicted"]  # the largest budget was not fitted
    if method == "approach3":
        assert sum(s["hit"] for s in clean["sizes"]) >= 4 and not any(s["hit"] for s in off["sizes"])


def test_the_bounded_fit_never_leaves_chance_to_one():
    rng = np.random.default_rng(5)
    k, c0 = 0.9, 19.5  # accuracy halfway between chance and 1 at 10^19.5 FLOPs
    runs = [dict(r, blimp=0.5 + 0.5 * special.expit(k * (np.log10(r["budget"]) - c0)) + 0.01 * rng.normal())
            for r in ladder(budgets=(1e15, 1e17, 1e19, 1e21, 1e23))]
    assert min(r["blimp"] for r in runs) < 0.5  # noise below chance at the smallest budget
    out = scaling.bounded(runs, "blimp", 0.5, budgets=(1e5, 1e19, 1e40), resamples=R)
    curve, boot = out["fit"], out["intervals"]
    values = scaling_fits.curve_value(curve, np.logspace(0, 60, 200))
    assert values.min() >= 0.5 and values.max() <= 1
    for key in ("blimp@1e+05", "blimp@1e+19", "blimp@1e+40"):
        assert 0.5 <= boot["low"][key] <= boot["high"][key] <= 1
    assert curve["k"] == pytest.approx(k, rel=0.15) and curve["c0"] == pytest.approx(c0, abs=0.2)
    assert scaling_fits.curve_budget(curve, scaling_fits.curve_value(curve, 1e20)) == pytest.approx(1e20)
    assert scaling_fits.curve_budget(curve, 0.45) == np.inf and scaling_fits.curve_budget(curve, 1.0) == np.inf


def test_fewer_than_three_sizes_at_a_budget_is_a_one_line_value_error(runs):
    thin = [r for r in runs if r["budget"] != 1e18 or r["params"] < true_optimum(1e18)[0] * 0.9]
    for call in (lambda: scaling.approach2(thin, resamples=2), lambda: scaling.compare(runs, thin, resamples=2)):
        with pytest.raises(ValueError, match=r"budget 1e\+18 has 2 model size\(s\).*at least 3") as err:
            call()
        assert "\n" not in str(err.value)


def test_bootstraps_repeat_with_a_seed_and_count_failed_resamples():
    runs = ladder()  # 5 sizes: about 1 resample in 3 keeps fewer than 3 at some budget
    first, again, other = (scaling.approach2(runs, budgets=(), resamples=40, seed=s)["intervals"] for s in (7, 7, 8))
    assert first["low"] == again["low"] and first["high"] == again["high"] and first["low"] != other["low"]
    assert first["resamples"] == 40 and first["failed"] > 0 and sum(first["failures"].values()) == first["failed"]
    assert all("at least #" in reason for reason in first["failures"])


def test_budgets_with_seeds_are_resampled_by_whole_seeds():
    runs = ladder(seeds=(0, 1, 2))
    drawn = scaling.resample(runs, np.random.default_rng(0))
    assert len(drawn) == len(runs)
    for C in BUDGETS:
        at = [r for r in drawn if r["budget"] == C]
        seeds = [r["seed"] for r in at]
        assert all(seeds.count(s) % len(RATIOS) == 0 for s in set(seeds))  # each drawn seed brings all its sizes
        assert len({r["params"] for r in at}) == len(RATIOS)


def test_an_optimum_outside_the_sizes_run_is_flagged(runs):
    n_opt = true_optimum(1e19)[0]
    below = [r for r in runs if r["budget"] != 1e19] + [
        r for r in ladder(budgets=(1e19,), ratios=(1 / 16, 1 / 8, 1 / 4, 1 / 2), noise=0.0)]
    out = scaling.approach2(below, budgets=(1e21,), resamples=10)
    assert out["trust"]["not_bracketed"] == [1e19] and out["fit"]["optima"][2]["N_opt"] > n_opt / 2


def test_trust_diagnostics(a3):
    trust = a3["trust"]
    assert trust["extrapolation"] == pytest.approx(10)  # 1e21 predicted, 1e20 the largest fitted
    assert 0.5 * NOISE < trust["rms_residual"] < 1.5 * NOISE
    assert trust["not_bracketed"] == [] and trust["failed_fraction"] == 0
    assert 0 < trust["relative_width"]["alpha"] < trust["relative_width"]["tokens_per_param@1e+21"]
