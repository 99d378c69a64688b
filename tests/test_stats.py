"""experiments/stats.py: the Student-t distribution against table values and closed forms, the standard error and
the paired t-test by hand, the paired bootstrap on cases with a known answer, the exact sign-flip test by counting,
and which test difference_test picks (no spread between seeds included)."""

import itertools
import math

import jax.scipy.special
import numpy as np
import pytest

from experiments import significance, stats


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
    # The same difference on every seed: no spread, no t-test (t = d / 0 measures nothing), said so.
    same = stats.paired_t_test([0.7, 0.8], [0.6, 0.7])
    assert same["method"] is None and same["p"] is None and same["t"] is None
    assert same["why"] == "the same difference on every seed" and same["difference"] == pytest.approx(0.1)
    assert stats.paired_t_test([0.7, 0.8], [0.7, 0.8])["p"] is None
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


def test_sign_flip_test_counts_the_sign_patterns():
    # d = 0.01 on all 3 seeds: of the 8 sign patterns only +++ and --- reach |mean| 0.01: p = 2/8.
    r = stats.sign_flip_test([0.71, 0.72, 0.73], [0.70, 0.71, 0.72])
    assert r["method"] == "exact sign-flip test" and r["n"] == 3 and r["p"] == pytest.approx(0.25)
    assert r["difference"] == pytest.approx(0.01)
    # d = 3, 1, -1, 2 (sum 5): |sum| >= 5 needs 3 and 2 with the same sign (else at most 1 + 1 + 1); then 3 of the 4
    # signs of the 1 and the -1 keep it at 5 or more (sums 5, 7, 5; not 3), times 2 for the overall sign: p = 6/16.
    d = [3.0, 1.0, -1.0, 2.0]
    want = sum(abs(sum(s * x for s, x in zip(signs, d, strict=True))) >= 5 - 1e-9
               for signs in itertools.product((1, -1), repeat=4)) / 16
    assert want == 6 / 16 and stats.sign_flip_test(d, [0.0] * 4)["p"] == pytest.approx(want)
    assert stats.sign_flip_test([0.5, 0.5], [0.5, 0.5])["p"] == 1.0  # no difference: every pattern reaches 0
    assert stats.sign_flip_test([1.0] * 6, [0.0] * 6)["p"] == pytest.approx(2 / 64)
    with pytest.raises(ValueError):
        stats.sign_flip_test([], [])


def test_the_same_difference_on_every_seed_is_not_called_significant_by_a_t_test():
    # Accuracies over 200 pairs, 2 seeds, +0.5 points on both: the t-test has no spread to measure (it would say
    # t = inf, p = 0). Without per-example results: the sign-flip test over 2 seeds, p = 2/4.
    r = stats.difference_test({0: .705, 1: .715}, {0: .700, 1: .710})
    assert r["method"] == "exact sign-flip test" and r["p"] == pytest.approx(0.5) and r["significant"] is False
    assert r["note"] == "no t-test: the same difference on every seed" and r["seeds"] == [0, 1]
    three = stats.difference_test({0: .71, 1: .72, 2: .73}, {0: .70, 1: .71, 2: .72})
    assert three["p"] == pytest.approx(0.25) and not three["significant"]
    # With per-example results: the paired bootstrap over the examples of every seed that kept them, pooled. a is
    # right on 141 of 200 where b is on 140 (seed 0), 143 vs 142 (seed 1): 2 of 400 pairs differ, p large.
    ids = list(range(200))
    ex_a = {0: (ids, [1.0] * 141 + [0.0] * 59), 1: (ids, [1.0] * 143 + [0.0] * 57)}
    ex_b = {0: (ids, [1.0] * 140 + [0.0] * 60), 1: (ids, [1.0] * 142 + [0.0] * 58)}
    boot = stats.difference_test({0: .705, 1: .715}, {0: .700, 1: .710}, ex_a, ex_b)
    assert boot["method"] == "paired bootstrap" and boot["n"] == 400 and boot["seeds"] == [0, 1]
    assert boot["difference"] == pytest.approx(0.005) and boot["p"] > 0.1 and not boot["significant"]
    assert boot["note"] == "no t-test: the same difference on every seed"
    # Only seed 1 kept them: the bootstrap over its 200 pairs alone. 40 of them for a on both seeds: significant.
    ex_a1 = {1: (ids, [1.0] * 40 + [0.0] * 160)}
    one = stats.difference_test({0: .2, 1: .2}, {0: .0, 1: .0}, ex_a1, {0: None, 1: (ids, [0.0] * 200)})
    assert one["method"] == "paired bootstrap" and one["n"] == 200 and one["seeds"] == [1] and one["significant"]


def test_the_report_says_which_test_replaced_the_t_test():
    flip = stats.difference_test({0: .71, 1: .72, 2: .73}, {0: .70, 1: .71, 2: .72})
    assert significance.verdict(flip) == ("exact sign-flip test over 3 seeds, p = 0.250 (no t-test: the same "
                                          "difference on every seed): not significant")
    ids = list(range(100))
    boot = stats.difference_test({0: .9, 1: .9}, {0: .5, 1: .5}, {s: (ids, [1.0] * 90 + [0.0] * 10) for s in (0, 1)},
                                 {s: (ids, [1.0] * 50 + [0.0] * 50) for s in (0, 1)})
    assert significance.verdict(boot) == ("paired bootstrap over 200 pairs of 2 seeds, 10,000 resamples, p < 0.001 "
                                          "(no t-test: the same difference on every seed): significant")
    rows = significance.significance_table([{**flip, "yardstick": "y", "key": "eval_loss", "better": "a",
                                             "worse": "b"}])
    assert rows[-2].endswith("| 0.250 | no | sign-flip, 3 seeds |")
