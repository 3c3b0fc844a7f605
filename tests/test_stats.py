"""normbench.report.stats: the intervals against scipy's own functions, and the verdicts on constructed data
(a known difference is found, a null one is not, equality needs the margin), and bad input."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as sps

from normbench.errors import UsageError
from normbench.report import stats

RNG = np.random.default_rng(27)


def test_paired_t_is_scipys_ttest_rel_interval():
    a, b = RNG.normal(5, 1, 5), RNG.normal(5, 1, 5)
    ci = stats.paired_t(a, b)
    ref = sps.ttest_rel(a, b).confidence_interval(0.95)
    assert (ci.low, ci.high) == pytest.approx((ref.low, ref.high), rel=1e-12)
    # and the textbook formula in float64: mean +- t_{0.975, n-1} sd / sqrt(n)
    d = a - b
    half = sps.t.ppf(0.975, len(d) - 1) * d.std(ddof=1) / np.sqrt(len(d))
    assert (ci.low, ci.high) == pytest.approx((d.mean() - half, d.mean() + half), rel=1e-10)
    assert ci.estimate == pytest.approx(d.mean()) and ci.n == 5


def test_welch_is_scipys_ttest_ind_unequal_variances():
    a, b = RNG.normal(5, 0.2, 5), RNG.normal(6, 2.0, 7)
    ci = stats.welch(a, b)
    ref = sps.ttest_ind(a, b, equal_var=False).confidence_interval(0.95)
    assert (ci.low, ci.high) == pytest.approx((ref.low, ref.high), rel=1e-12)
    assert ci.estimate == pytest.approx(a.mean() - b.mean())


def test_bootstrap_is_scipys_bca_seeded_and_reproducible():
    a, b = RNG.normal(5, 1, 8), RNG.normal(4, 1, 8)
    ci = stats.paired_bootstrap(a, b)
    ref = sps.bootstrap((a - b,), np.mean, n_resamples=stats.RESAMPLES, method="BCa", random_state=stats.BOOTSTRAP_SEED)
    assert (ci.low, ci.high) == pytest.approx((ref.confidence_interval.low, ref.confidence_interval.high), rel=1e-12)
    assert stats.paired_bootstrap(a, b) == ci  # seeded: the same interval every time


def test_skewed_differences_widen_the_t_interval_by_the_bootstrap():
    b = np.zeros(6)
    a = np.array([0.1, 0.2, 0.15, 0.1, 0.2, 3.0])  # one seed far out: skewness ~2.4
    assert stats.skewed(a - b)
    ci, t, boot = stats.paired(a, b), stats.paired_t(a, b), stats.paired_bootstrap(a, b)
    assert ci.low == min(t.low, boot.low) and ci.high == max(t.high, boot.high) and "bootstrap" in ci.method
    symmetric = np.array([0.1, -0.2, 0.15, -0.1, 0.05, 0.0])
    assert not stats.skewed(symmetric) and stats.paired(symmetric, b) == stats.paired_t(symmetric, b)


def test_pairing_removes_the_shared_seed_effect():
    """Each seed shifts both arms alike (same initial weights, same data order): paired, a 0.3-point
    difference is found; unpaired, the seed spread of 2 points hides it."""
    seed_effect = np.array([-2.0, 1.0, 0.5, 2.5, -1.5])
    b = 10 + seed_effect
    a = b + 0.3 + np.array([0.05, -0.05, 0.02, -0.02, 0.0])
    assert stats.verdict(a, b, "higher")[0] == stats.SUPPORTED
    assert stats.verdict(a, b, "higher", paired_arms=False)[0] == stats.INCONCLUSIVE


@pytest.mark.parametrize("expect", ["lower", "higher"])
def test_a_known_difference_is_found_in_its_direction(expect):
    b = RNG.normal(10, 0.5, 5)
    a = b - 2 + RNG.normal(0, 0.3, 5)  # A is 2 points lower
    got, ci = stats.verdict(a, b, expect, margin=1.0)
    assert got == (stats.SUPPORTED if expect == "lower" else stats.NOT_SUPPORTED)
    assert ci.high < 0


def test_a_null_difference_is_not_found():
    """No difference: over many seeded draws, the 95% interval excludes 0 about 5% of the time."""
    rng = np.random.default_rng(0)
    found = sum(
        stats.verdict(b + rng.normal(0, 1, 5), b, "lower")[0] != stats.INCONCLUSIVE for b in rng.normal(10, 1, (400, 5))
    )
    assert 0.02 < found / 400 < 0.09


def test_equality_needs_the_margin():
    b = RNG.normal(10, 0.5, 5)
    a = b + RNG.normal(0, 0.05, 5)  # the same within a few hundredths
    assert stats.verdict(a, b, "equal")[0] == stats.INCONCLUSIVE  # no margin: never "equal"
    assert stats.verdict(a, b, "equal", margin=0.5)[0] == stats.SUPPORTED
    assert stats.verdict(a, b, "lower", margin=0.5)[0] == stats.EQUAL
    assert stats.verdict(a, b, "lower")[0] == stats.INCONCLUSIVE
    wide = b + np.array([-2.0, 2.5, -1.5, 1.0, 0.2])  # no difference on average, but a wide interval
    assert stats.verdict(wide, b, "equal", margin=0.5)[0] == stats.INCONCLUSIVE


def test_tost_is_two_one_sided_t_tests():
    """Schuirmann's TOST: equal within m at 5% iff both one-sided tests of d - (-m) > 0 and d - m < 0
    reject at 5% (scipy.stats.ttest_rel with alternative=)."""
    for _ in range(50):
        b = RNG.normal(10, 1, 5)
        a = b + RNG.normal(RNG.uniform(-1, 1), 0.4, 5)
        m = 1.0
        lower = sps.ttest_rel(a + m, b, alternative="greater").pvalue
        upper = sps.ttest_rel(a - m, b, alternative="less").pvalue
        assert stats.equivalent(a, b, m) == (max(lower, upper) < 0.05)


def test_a_difference_inside_the_margin_can_still_be_clear():
    b = np.array([10.0, 11.0, 9.0, 10.5, 9.5])
    a = b + np.array([0.30, 0.32, 0.28, 0.31, 0.29])
    assert stats.verdict(a, b, "higher", margin=1.0)[0] == stats.SUPPORTED  # excludes 0: the direction wins
    assert stats.verdict(a, b, "equal", margin=1.0)[0] == stats.SUPPORTED  # and it is within the margin


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: stats.paired([1.0], [2.0]), "at least 2 seeds per arm, got 1 and 1: run more seeds"),
        (lambda: stats.welch([1.0, 2.0], [2.0]), "at least 2 seeds per arm, got 2 and 1"),
        (lambda: stats.paired([1.0, 2.0, 3.0], [2.0, 3.0]), "one value per seed on both sides"),
        (lambda: stats.verdict([1.0, 2.0], [2.0, 3.0], "equal", margin=0), "margin must be a positive number"),
        (lambda: stats.verdict([1.0, 2.0], [2.0, 3.0], "lower", margin=-1.0), "margin must be a positive number"),
        (lambda: stats.paired([1.0, np.nan], [2.0, 3.0]), "missing or infinite value"),
        (lambda: stats.verdict([1.0, 2.0], [2.0, 3.0], "smaller"), "lower, higher or equal"),
    ],
)
def test_bad_input_is_one_clear_line(call, message):
    with pytest.raises(UsageError, match=message) as info:
        call()
    assert "\n" not in str(info.value)
