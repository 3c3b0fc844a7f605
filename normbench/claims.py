"""The seed notebook's six claims about BatchNorm, each turned into a comparison with a verdict.

The runs come from `normbench-accuracy -m +experiment=seed_claims` (conf/sweep/seed_claims.yaml);
the design, one variable changed per comparison, is in docs/claims.md. Every comparison takes the
per-seed values of two sets of runs, A and B, and applies one decision rule:

    d = mean(A) - mean(B),  s = sqrt(sd(A)^2 + sd(B)^2)   (sd over seeds)
    |d| > 2 s, in the claimed direction      -> supported
    |d| > 2 s, against it                     -> not supported
    otherwise                                 -> inconclusive on this task (the seeds disagree more
                                                 than the runs differ)

A claim of equality (C2) is supported when |d| <= 2 s and s is at most EQUAL_WITHIN percentage
points (else the spread is too wide to say), and not supported when |d| > 2 s. A claim made of
several comparisons is supported (or not) when all of them are, and `mixed` when they disagree.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from normbench.accuracy_tables import test_error

SUPPORTED, NOT_SUPPORTED, INCONCLUSIVE, MIXED = "supported", "not supported", "inconclusive on this task", "mixed"
EQUAL_WITHIN = 1.0  # percentage points: the widest seed spread under which "no difference" means equal
LARGE_K, SMALL_K = 64, 2  # normalization batches compared (at 64 samples per step)
GLOBAL = 64  # samples per optimizer step of the normalization-batch runs
OPTIMIZER_BATCHES = (16, 64, 256)  # C6: optimizer batch sizes, one worker (K = the optimizer batch)

CLAIMS = {
    "C1": "Place BN after the activation.",
    "C2": "At inference, running averages tracked in training stand in for the population statistics.",
    "C3": "BN regularises: noisy batch statistics add randomness to training.",
    "C4": "Error grows quickly as the batch shrinks; LN, IN and GN were made to fix that.",
    "C5": "BN speeds up convergence.",
    "C6": "With BN, the choice of batch size matters more than without it.",
}


@dataclass
class Comparison:
    """One comparison: what A and B are, their per-seed values, and the claimed relation of A to B."""

    name: str
    a: np.ndarray
    b: np.ndarray
    expect: str  # "lower", "higher" or "equal": A relative to B
    unit: str = "%"

    @property
    def d(self) -> float:
        return float(np.mean(self.a) - np.mean(self.b))

    @property
    def s(self) -> float:
        return math.sqrt(_sd(self.a) ** 2 + _sd(self.b) ** 2)

    def verdict(self) -> str:
        return decide(self.a, self.b, self.expect)

    def text(self) -> str:
        return (
            f"{self.name}: {_ms(self.a, self.unit)} vs {_ms(self.b, self.unit)} "
            f"(d = {self.d:+.2f}, 2s = {2 * self.s:.2f}: {self.verdict()})"
        )


def _sd(values: np.ndarray) -> float:
    return float(np.std(values, ddof=1)) if len(values) > 1 else math.nan


def _ms(values: np.ndarray, unit: str) -> str:
    return f"{np.mean(values):.2f} ± {_sd(values):.2f}{unit}" if len(values) > 1 else f"{np.mean(values):.2f}{unit}"


def decide(a, b, expect: str) -> str:
    """The decision rule of the module docstring, for per-seed values a and b."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if len(a) < 2 or len(b) < 2:
        return INCONCLUSIVE  # no spread to compare a difference with
    return rule(a.mean() - b.mean(), math.sqrt(_sd(a) ** 2 + _sd(b) ** 2), expect)


def rule(d: float, s: float, expect: str) -> str:
    """The verdict for a difference d (A - B) with seed spread s, given the claimed relation of A to B."""
    clear = abs(d) > 2 * s  # False when s is NaN
    if expect == "equal":
        if clear:
            return NOT_SUPPORTED
        return SUPPORTED if s <= EQUAL_WITHIN else INCONCLUSIVE
    if not clear:
        return INCONCLUSIVE
    return SUPPORTED if (d < 0) == (expect == "lower") else NOT_SUPPORTED


def combine(verdicts: list[str]) -> str:
    """One verdict for a claim made of several comparisons."""
    unique = set(verdicts)
    return unique.pop() if len(unique) == 1 else MIXED


# ------------------------------------------------------------------------------------------- the runs


def _num(frame: pd.DataFrame, col: str) -> pd.Series:
    return pd.to_numeric(frame[col], errors="coerce") if col in frame else pd.Series(np.nan, index=frame.index)


def select(acc: pd.DataFrame, norm: str, k: int, global_batch: int, position: str = "before") -> pd.DataFrame:
    """The ok runs of one configuration (one row per seed, sorted by seed)."""
    pos = acc["norm_position"] if "norm_position" in acc else pd.Series("before", index=acc.index)
    keep = (
        (acc["norm"] == norm)
        & (_num(acc, "batch_size") == k)
        & (_num(acc, "global_batch") == global_batch)
        & (pos.fillna("before") == position)
    )
    return acc[keep].sort_values("seed").drop_duplicates("seed")


def _err(runs: pd.DataFrame, column: str = "test_acc") -> np.ndarray:
    return test_error(runs, column).to_numpy(dtype=float)


def _gap(runs: pd.DataFrame) -> np.ndarray:
    """Train accuracy (as measured during training) minus test accuracy, in percentage points."""
    return 100 * (_num(runs, "train_acc") - _num(runs, "test_acc")).to_numpy(dtype=float)


def needed(acc: pd.DataFrame) -> dict[str, bool]:
    """Which configurations of the experiment are present (all of them: the claims can be judged)."""
    configs = {
        "bn K=64": ("bn", LARGE_K, GLOBAL, "before"),
        "bn after K=64": ("bn", LARGE_K, GLOBAL, "after"),
        "bn K=2": ("bn", SMALL_K, GLOBAL, "before"),
        "none": ("none", LARGE_K, GLOBAL, "before"),
        **{n: (n, LARGE_K, GLOBAL, "before") for n in ("ln", "in", "gn")},
        **{f"{n} batch {b}": (n, b, b, "before") for n in ("bn", "none") for b in OPTIMIZER_BATCHES},
    }
    return {name: not select(acc, *cfg).empty for name, cfg in configs.items()}


def available(acc: pd.DataFrame) -> bool:
    """Whether `acc` holds every run the claims need, from one input (claims are never judged on runs
    pooled from several sweeps)."""
    if acc is None or acc.empty or "norm" not in acc:
        return False
    one_input = "input" not in acc or acc["input"].nunique(dropna=False) == 1
    return one_input and all(needed(acc).values())


# ----------------------------------------------------------------------------------- convergence (C5)


def steps_to_level(curve: pd.DataFrame, steps_per_epoch: float, level: float) -> float:
    """The first step at which the per-epoch train loss reaches `level`, interpolated linearly between
    the ends of epochs (the curve's resolution); NaN if it never does."""
    steps = curve["epoch"].to_numpy(dtype=float) * steps_per_epoch
    loss = curve["train_loss"].to_numpy(dtype=float)
    below = np.nonzero(loss <= level)[0]
    if len(below) == 0:
        return math.nan
    i = below[0]
    if i == 0:
        return float(steps[0])  # reached within the first epoch: its end is the first point there is
    frac = (loss[i - 1] - level) / (loss[i - 1] - loss[i])
    return float(steps[i - 1] + frac * (steps[i] - steps[i - 1]))


def read_curve(row: pd.Series) -> pd.DataFrame | None:
    """The per-epoch curve a run left beside its rows.csv (None where there is none)."""
    source = row.get("source")
    if not isinstance(source, str):
        return None
    path = Path(source).parent / "curve.csv"
    return pd.read_csv(path) if path.is_file() else None


def convergence(acc: pd.DataFrame) -> tuple[Comparison, float, dict[str, list[pd.DataFrame]], dict[str, float]] | None:
    """C5: steps to a train-loss level, BN vs no norm; the level is the highest final train loss of
    any run compared, so that every run reaches it. Also returns the curves and each norm's steps
    per epoch (for the plot)."""
    runs = {"bn": select(acc, "bn", LARGE_K, GLOBAL), "none": select(acc, "none", LARGE_K, GLOBAL)}
    curves = {name: [read_curve(r) for _, r in rs.iterrows()] for name, rs in runs.items()}
    if any(c is None for cs in curves.values() for c in cs):
        return None
    level = max(c["train_loss"].min() for cs in curves.values() for c in cs)
    per_epoch = {name: float(rs["steps"].iloc[0]) / float(rs["epochs"].iloc[0]) for name, rs in runs.items()}
    steps = {name: np.array([steps_to_level(c, per_epoch[name], level) for c in curves[name]]) for name in runs}
    comp = Comparison("steps to reach the level, BN vs no norm", steps["bn"], steps["none"], "lower", unit="")
    return comp, level, curves, per_epoch


# -------------------------------------------------------------------------------------------- claims


def _spread(acc: pd.DataFrame, norm: str) -> tuple[float, float, str]:
    """C6: max - min over optimizer batch sizes of the mean test error, its sd, and the values."""
    cells = {b: _err(select(acc, norm, b, b)) for b in OPTIMIZER_BATCHES}
    means = {b: v.mean() for b, v in cells.items()}
    hi, lo = max(means, key=means.get), min(means, key=means.get)
    sd = math.sqrt(_sd(cells[hi]) ** 2 + _sd(cells[lo]) ** 2)
    values = ", ".join(f"{means[b]:.1f}% at {b}" for b in OPTIMIZER_BATCHES)
    return means[hi] - means[lo], sd, values


def judge(acc: pd.DataFrame) -> pd.DataFrame:
    """The claims table: claim, what was run, the measurement, the verdict (one row per claim)."""
    bn64, bn2 = select(acc, "bn", LARGE_K, GLOBAL), select(acc, "bn", SMALL_K, GLOBAL)
    after, none = select(acc, "bn", LARGE_K, GLOBAL, "after"), select(acc, "none", LARGE_K, GLOBAL)
    seeds = len(bn64)
    rows = []

    def add(cid: str, ran: str, comps: list[Comparison], extra: str = "") -> None:
        verdicts = [c.verdict() for c in comps]
        measured = "; ".join(c.text() for c in comps) + (f". {extra}" if extra else "")
        rows.append(
            {"claim": f"{cid} {CLAIMS[cid]}", "what ran": ran, "measurement": measured, "verdict": combine(verdicts)}
        )

    add(
        "C1",
        f"bn with conv -> ReLU -> BN vs conv -> BN -> ReLU, K = {LARGE_K}, {GLOBAL} per step",
        [Comparison("test error after vs before", _err(after), _err(bn64), "lower")],
    )
    add(
        "C2",
        f"bn at K = {LARGE_K} and {SMALL_K}: eval on running averages vs PreciseBN (population statistics)",
        [
            Comparison(f"K={k} running vs PreciseBN error", _err(r), _err(r, "test_acc_precise_bn"), "equal")
            for k, r in ((LARGE_K, bn64), (SMALL_K, bn2))
        ],
    )
    add(
        "C3",
        f"train-test accuracy gap: bn vs no norm (K = {LARGE_K}); bn at K = {SMALL_K} vs {LARGE_K}",
        [
            Comparison("gap (pp) with vs without BN", _gap(bn64), _gap(none), "lower", unit=" pp"),
            Comparison(f"gap (pp) at K={SMALL_K} vs K={LARGE_K}", _gap(bn2), _gap(bn64), "lower", unit=" pp"),
        ],
        f"Test error with BN {_ms(_err(bn64), '%')}, without {_ms(_err(none), '%')}",
    )
    add(
        "C4",
        f"bn at K = {SMALL_K} vs {LARGE_K} ({GLOBAL} per step); ln, in, gn vs bn at K = {SMALL_K}",
        [Comparison(f"bn error at K={SMALL_K} vs K={LARGE_K}", _err(bn2), _err(bn64), "higher")]
        + [
            Comparison(f"{n} vs bn K={SMALL_K} error", _err(select(acc, n, LARGE_K, GLOBAL)), _err(bn2), "lower")
            for n in ("ln", "in", "gn")
        ],
    )
    c5 = convergence(acc)
    if c5 is None:
        rows.append(
            {
                "claim": f"C5 {CLAIMS['C5']}",
                "what ran": "bn vs no norm",
                "verdict": INCONCLUSIVE,
                "measurement": "no per-epoch curve (curve.csv) next to the runs' rows",
            }
        )
    else:
        comp, level, _, _ = c5
        add("C5", f"steps until the per-epoch train loss reaches {level:.3f}: bn vs no norm, K = {LARGE_K}", [comp])
    (bn_range, bn_sd, bn_values), (no_range, no_sd, no_values) = _spread(acc, "bn"), _spread(acc, "none")
    d, s = bn_range - no_range, math.sqrt(bn_sd**2 + no_sd**2)
    rows.append(
        {
            "claim": f"C6 {CLAIMS['C6']}",
            "what ran": f"bn and no norm at optimizer batch {', '.join(map(str, OPTIMIZER_BATCHES))} (one worker, "
            "same epochs, LR scaled linearly)",
            "measurement": f"range of mean error: bn {bn_range:.2f} pp ({bn_values}), no norm {no_range:.2f} pp "
            f"({no_values}) (d = {d:+.2f}, 2s = {2 * s:.2f}; s from the seeds of the extreme cells)",
            "verdict": rule(d, s, "higher"),
        }
    )
    table = pd.DataFrame(rows)
    table.attrs["seeds"] = seeds
    return table
