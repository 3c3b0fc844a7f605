"""Confidence intervals for the difference between two arms, and the verdict they allow (docs/claims.md).

- **Paired** (`paired`): the arms ran with the same seeds, so each seed's runs share the initial weights
  and the data order; the difference is taken per seed, and its mean gets a t interval
  (scipy.stats.ttest_rel's). Where the per-seed differences are skewed, a seeded BCa bootstrap
  (scipy.stats.bootstrap) is computed too and the interval is the envelope of both: at 5 seeds the
  bootstrap alone is too narrow (Hesterberg 2015, "What teachers should know about the bootstrap",
  Sec. 5), the t interval alone assumes a symmetric distribution.
- **Unpaired** (`welch`): arms with no seeds in common; Welch's interval (scipy.stats.ttest_ind with
  equal_var=False), which does not assume equal variances.

`verdict` turns an interval into a decision about a claimed relation of A to B: supported or not
supported when the 95% interval excludes 0 on one side; `equal` only when the 90% interval lies inside
a stated margin (TOST at alpha = 0.05, Schuirmann 1987); inconclusive otherwise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats as sps

from normbench.errors import UsageError

SUPPORTED, NOT_SUPPORTED, EQUAL, INCONCLUSIVE = "supported", "not supported", "equal", "inconclusive"
CONFIDENCE = 0.95
SKEWED = 1.0  # |sample skewness| of the per-seed differences above which the bootstrap joins the t interval
RESAMPLES = 9999
BOOTSTRAP_SEED = 0


@dataclass(frozen=True)
class Interval:
    """A difference A - B, its confidence interval at `confidence`, how many seeds (or runs per arm), how."""

    estimate: float
    low: float
    high: float
    n: int
    method: str
    confidence: float = CONFIDENCE

    def text(self, unit: str = "", digits: int = 2) -> str:
        f = f"{{:+.{digits}f}}"
        return (
            f"{f.format(self.estimate)}{unit} [{f.format(self.low)}, {f.format(self.high)}] "
            f"({self.confidence:.0%} CI, {self.method}, n = {self.n})"
        )


def _values(a, b, paired: bool) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(a, dtype=float).ravel(), np.asarray(b, dtype=float).ravel()
    if min(len(a), len(b)) < 2:
        raise UsageError(
            f"a confidence interval needs at least 2 seeds per arm, got {len(a)} and {len(b)}: "
            "run more seeds (e.g. seed=0,1,2,3,4)"
        )
    if paired and len(a) != len(b):
        raise UsageError(f"paired arms need one value per seed on both sides, got {len(a)} and {len(b)}")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise UsageError("an arm holds a missing or infinite value (a failed run?): drop it or rerun that seed")
    return a, b


def _constant(d: np.ndarray) -> bool:
    """Whether differences are all the same up to rounding (their spread has no meaning then)."""
    return float(np.ptp(d)) <= 1e-9 * max(1.0, float(np.abs(d).max()))


def _check(confidence: float) -> float:
    if not 0 < confidence < 1:
        raise UsageError(f"confidence must lie strictly between 0 and 1, got {confidence}: e.g. 0.95")
    return confidence


def paired_t(a, b, confidence: float = CONFIDENCE) -> Interval:
    """The t interval of mean(A - B) over seeds matched by position (a[i] and b[i] share a seed)."""
    a, b = _values(a, b, paired=True)
    d = a - b
    if _constant(d):  # every seed differs by the same amount: no spread, the interval is that point
        return Interval(float(d[0]), float(d[0]), float(d[0]), len(d), "paired t", _check(confidence))
    ci = sps.ttest_rel(a, b).confidence_interval(_check(confidence))
    return Interval(float(d.mean()), float(ci.low), float(ci.high), len(d), "paired t", confidence)


def paired_bootstrap(a, b, confidence: float = CONFIDENCE, seed: int = BOOTSTRAP_SEED) -> Interval:
    """The BCa bootstrap interval of mean(A - B) over matched seeds (scipy.stats.bootstrap, seeded)."""
    a, b = _values(a, b, paired=True)
    d = a - b
    if _constant(d):
        return Interval(float(d[0]), float(d[0]), float(d[0]), len(d), "paired bootstrap", _check(confidence))
    res = sps.bootstrap(
        (d,), np.mean, confidence_level=_check(confidence), n_resamples=RESAMPLES, method="BCa", random_state=seed
    )
    ci = res.confidence_interval
    low, high = float(ci.low), float(ci.high)
    if not (math.isfinite(low) and math.isfinite(high)):  # BCa degenerates on a few distinct values
        res = sps.bootstrap(
            (d,), np.mean, confidence_level=confidence, n_resamples=RESAMPLES, method="percentile", random_state=seed
        )
        low, high = float(res.confidence_interval.low), float(res.confidence_interval.high)
    return Interval(float(d.mean()), low, high, len(d), "paired bootstrap", confidence)


def skewed(d) -> bool:
    """Whether per-seed differences are skewed enough that the t interval's symmetry is in doubt."""
    d = np.asarray(d, dtype=float)
    return len(d) >= 3 and not _constant(d) and abs(float(sps.skew(d, bias=False))) > SKEWED


def paired(a, b, confidence: float = CONFIDENCE) -> Interval:
    """The interval of mean(A - B) over matched seeds: the t interval, widened to also cover the BCa
    bootstrap's where the differences are skewed (the module docstring says why)."""
    t = paired_t(a, b, confidence)
    d = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    if not skewed(d):
        return t
    boot = paired_bootstrap(a, b, confidence)
    return Interval(t.estimate, min(t.low, boot.low), max(t.high, boot.high), t.n, "paired t + bootstrap", confidence)


def welch(a, b, confidence: float = CONFIDENCE) -> Interval:
    """Welch's interval of mean(A) - mean(B) for unpaired arms (unequal variances)."""
    a, b = _values(a, b, paired=False)
    ci = sps.ttest_ind(a, b, equal_var=False).confidence_interval(_check(confidence))
    return Interval(float(a.mean() - b.mean()), float(ci.low), float(ci.high), min(len(a), len(b)), "Welch", confidence)


def check_margin(margin: float | None) -> float | None:
    if margin is not None and not (isinstance(margin, int | float) and math.isfinite(margin) and margin > 0):
        raise UsageError(f"an equivalence margin must be a positive number, got {margin!r}: e.g. 1.0 (pp)")
    return margin


def equivalent(a, b, margin: float, paired_arms: bool = True, alpha: float = 0.05) -> bool:
    """TOST (Schuirmann 1987): A and B are equal within +-margin at level alpha when the (1 - 2 alpha)
    interval of the difference lies inside (-margin, margin)."""
    check_margin(margin)
    ci = (paired if paired_arms else welch)(a, b, 1 - 2 * alpha)
    return -margin < ci.low and ci.high < margin


def verdict(a, b, expect: str, margin: float | None = None, paired_arms: bool = True) -> tuple[str, Interval]:
    """The verdict on "A is `expect` than B" ("lower", "higher" or "equal") and the 95% interval it rests on.

    A directional claim: supported / not supported when the interval excludes 0 on the claimed side / the
    other side, else equal when TOST at `margin` says so (never without a margin), else inconclusive.
    A claim of equality: supported when TOST says equal (a difference too small to matter may still
    exclude 0), not supported when the interval excludes 0 and TOST fails, else inconclusive.
    """
    if expect not in ("lower", "higher", "equal"):
        raise UsageError(f"expect must be lower, higher or equal, got {expect!r}")
    check_margin(margin)
    ci = (paired if paired_arms else welch)(a, b)
    same = margin is not None and equivalent(a, b, margin, paired_arms)
    excludes = ci.low > 0 or ci.high < 0
    if expect == "equal":
        return (SUPPORTED if same else NOT_SUPPORTED if excludes else INCONCLUSIVE), ci
    if excludes:
        return (SUPPORTED if (ci.high < 0) == (expect == "lower") else NOT_SUPPORTED), ci
    return (EQUAL if same else INCONCLUSIVE), ci
