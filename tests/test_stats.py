"""experiments/stats.py: the Student-t distribution against table values and closed forms, the standard error and
the paired t-test by hand, the paired bootstrap on cases with a known answer, and which test difference_test picks."""

import math

import jax.scipy.special
import numpy as np
import pytest

from experiments import stats


@pytest.mark.parametrize("t,df", [(12.706, 1), (4.303, 2), (3.182, 3), (2.776, 4), (2.571, 5), (2.228, 10),
                                  (2.086, 20), (1.960, 1e6)])
def test_t_critical_values_of_the_table_give_p_005(t, df):
    # Two-sided 5% critical values of Student's t, as printed (3 decimals): p is 0.05 to the rounding.
    assert stats.t_two_sided_p(t, df) == pytest.approx(0.05, abs=2e-4)
    assert stats.t_cdf(t, df) == pytest.approx(0.975, abs=1e-4) and stats.t_cdf(-t, df) == pytest.approx(0.025,
                                                                                                           abs=1e-4)


@pytest.mark.parametrize("t", [-30.0, -3.1, -0.4, 0.0, 0.25, 1.0, 2.5, 7.0, 100.0])
def test_t_cdf_equals_the_closed_forms_for_one_and_two_degrees_of_freedom(t):
    assert stats.t_cdf(t, 1) == pytest.approx(0.5 + math.atan(t) / math.pi, abs=1e-12)  # Cauchy
    assert stats.t_cdf(t, 2) == pytest.approx(0.5 + t / (2 * math.sqrt(2 + t * t)), abs=1e-12)


@pytest.mark.parametrize("a,b,x", [(2.0, 0.5, 0.3), (0.5, 0.5, 0.9), (10.0, 0.5, 0.99), (1.5, 0.5, 1e-3),
                                   (3.0, 7.0, 0.6), (50.0, 0.5, 0.5)])
def test_incomplete_beta_agrees_with_jax(a, b, x):
    want = float(jax.scipy.special.betainc(a, b, x))  # float32: agreement to its precision
    assert stats.betainc(a, b, x) == pytest.approx(want, rel=1e-5, abs=1e-12)
    assert stats.betainc(a, b, 0.0) == 0.0 and stats.betainc(a, b, 1.0) == 1.0


def test_standard_error_by_hand():
    # 0.70, 0.74, 0.72: mean 0.72, deviations -0.02, 0.02, 0: variance (ddof=1) 0.0008/2 = 0.0004, sd 0.02;
    # SE = 0.02 / sqrt(3) = 0.011547 (the sd itself would be 0.02).
    assert stats.mean([0.70, 0.74, 0.72]) == pytest.approx(0.72)
    assert stats.standard_error([0.70, 0.74, 0.72]) == pytest.approx(0.02 / math.sqrt(3))
    assert math.isnan(stats.standard_error([0.7]))


def test_paired_t_test_by_hand():
    # d = a - b = 0.10, 0.08, 0.11: mean 0.09667; deviations 0.00333, -0.01667, 0.01333, sum of squares
    # 4.6667e-4, variance 2.3333e-4, sd 0.015275, SE 0.0088192; t = 10.961 on 2 df; two-sided p = 1 - t/sqrt(2+t^2)
    # (the closed form for 2 df) = 0.00822.
    r = stats.paired_t_test([0.70, 0.74, 0.72], [0.60, 0.66, 0.61])
    assert r["method"] == "paired t-test" and r["n"] == 3 and r["df"] == 2
    assert r["difference"] == pytest.approx(0.096667, abs=1e-6) and r["se"] == pytest.approx(0.0088192, abs=1e-7)
    assert r["t"] == pytest.approx(10.961, abs=1e-3)
    assert r["p"] == pytest.approx(1 - r["t"] / math.sqrt(2 + r["t"] ** 2), abs=1e-12)
    assert r["p"] == pytest.approx(0.00822, abs=1e-5)


def test_paired_t_test_not_significant_when_the_differences_disagree():
    # d = 0.10, -0.08, 0.02: mean 0.01333, sd 0.09018, SE 0.05207, t = 0.2561 on 2 df: p = 0.822.
    r = stats.difference_test({0: 0.70, 1: 0.66, 2: 0.72}, {0: 0.60, 1: 0.74, 2: 0.70})
    assert r["method"] == "paired t-test" and r["significant"] is False
    assert r["t"] == pytest.approx(0.2561, abs=1e-4) and r["p"] == pytest.approx(0.822, abs=1e-3)


def test_pairing_by_seed_finds_a_small_consistent_difference_an_unpaired_test_misses():
    # The seeds move both contenders alike (0.60, 0.70, 0.80); a beats b by 0.010-0.012 on every seed.
    a, b = {0: 0.610, 1: 0.712, 2: 0.811}, {0: 0.600, 1: 0.700, 2: 0.800}
    r = stats.difference_test(a, b)
    assert r["significant"] and r["p"] < 0.01 and r["difference"] == pytest.approx(0.011)
    # Unpaired (Welch) on the same numbers: t = 0.011 / sqrt(2 * 0.01 / 3) = 0.13, nowhere near significant.
    va, vb = np.array(list(a.values())), np.array(list(b.values()))
    welch_t = (va.mean() - vb.mean()) / math.sqrt(va.var(ddof=1) / 3 + vb.var(ddof=1) / 3)
    assert stats.t_two_sided_p(welch_t, 4) > 0.5
    # The same difference on every seed: no spread, the test's limit (p = 0), said so.
    same = stats.paired_t_test([0.7, 0.8], [0.6, 0.7])
    assert same["p"] == 0.0 and same["t"] == math.inf and same["note"] == "the same difference on every seed"
    assert stats.paired_t_test([0.7, 0.8], [0.7, 0.8])["p"] == 1.0
    # Pairs are by seed, not by position: the same numbers in another order give the same test.
    assert stats.difference_test(dict(reversed(list(a.items()))), b)["p"] == pytest.approx(r["p"])


def test_paired_bootstrap_known_answers():
    right, wrong = [1.0] * 200, [0.0] * 200
    same = stats.paired_bootstrap([1, 0, 1, 0.5] * 50, [1, 0, 1, 0.5] * 50)
    assert same["method"] == "paired bootstrap" and same["p"] == pytest.approx(1.0) and same["difference"] == 0
    apart = stats.paired_bootstrap(right, wrong)
    assert apart["difference"] == 1.0 and apart["p"] == pytest.approx(1 / (stats.RESAMPLES + 1)) and apart["p"] < 1e-3
    # 60% vs 55% right on 400 independent examples: the bootstrap agrees with the normal approximation of the
    # paired difference (z = mean(d) / (sd(d) / sqrt(n))) to within its resampling noise.
    rng = np.random.default_rng(1)
    a, b = (rng.random(400) < 0.6).astype(float), (rng.random(400) < 0.55).astype(float)
    d = a - b
    z = d.mean() / (d.std(ddof=1) / math.sqrt(len(d)))
    got = stats.paired_bootstrap(a, b)
    assert got["p"] == pytest.approx(math.erfc(abs(z) / math.sqrt(2)), abs=0.01)
    assert stats.paired_bootstrap(a, b)["p"] == got["p"]  # fixed seed: the same p on every rebuild
    # Pairing matters: 110 vs 100 of 200 right, the same examples but 10 that only a gets right. Resampled in
    # pairs, d* > 0 unless none of the 10 is drawn (K ~ Binomial(200, 0.05); p = P(K = 0 or K >= 20) ~ 0.003);
    # resampled apart, the two 50% accuracies alone would give p ~ 0.3.
    paired = stats.paired_bootstrap([1.0] * 110 + [0.0] * 90, [1.0] * 100 + [0.0] * 100)
    assert paired["difference"] == pytest.approx(0.05) and paired["p"] < 0.01
    with pytest.raises(ValueError):
        stats.paired_bootstrap([1, 0], [1])


def test_difference_test_picks_the_test_the_data_allow():
    ids = list(range(100))
    ex_a = {0: (ids, [1.0] * 100)}
    ex_b = {0: (ids[::-1], [0.0] * 100)}  # another order: paired by id
    one = stats.difference_test({0: 1.0}, {0: 0.0}, ex_a, ex_b)
    assert one["method"] == "paired bootstrap" and one["n"] == 100 and one["significant"]
    none = stats.difference_test({0: 0.8}, {0: 0.6})
    assert none["method"] is None and none["p"] is None and none["n"] == 1 and none["difference"] == pytest.approx(0.2)
    disjoint = stats.difference_test({0: 1.0}, {0: 0.0}, ex_a, {0: ([1000 + i for i in ids], [0.0] * 100)})
    assert disjoint["method"] is None and "no example in common" in disjoint["why"]
    # With two seeds in common the t-test is used, even where per-example results exist.
    assert stats.difference_test({0: 0.7, 1: 0.8}, {0: 0.6, 1: 0.65, 2: 0.9}, ex_a, ex_b)["method"] == "paired t-test"
