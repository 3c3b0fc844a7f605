"""The seed notebook's six claims about BatchNorm, each turned into a comparison with a verdict.

The runs come from `normbench-accuracy -m +experiment=seed_claims` (conf/sweep/seed_claims.yaml);
the design, one variable changed per comparison, is in docs/claims.md. Every comparison takes the
per-seed values of two sets of runs, A and B, matched by seed (the same seed gives both the same
initial weights and data order), and judges the 95% confidence interval of mean(A - B) over seeds
(`normbench.report.stats`): **supported** / **not supported** when it excludes 0 on the claimed side / the
other side, **equal** when TOST puts the difference inside +-MARGIN, **inconclusive** otherwise. A
claim of equality (C2) is supported when TOST says equal. A claim made of several comparisons is
supported (or not) when all of them are, and `mixed` when they disagree.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from normbench.errors import UsageError
from normbench.report import stats
from normbench.report.accuracy_tables import test_error

SUPPORTED, NOT_SUPPORTED, EQUAL, INCONCLUSIVE = stats.SUPPORTED, stats.NOT_SUPPORTED, stats.EQUAL, stats.INCONCLUSIVE
MIXED = "mixed"
MARGIN = 1.0  # percentage points of test error (or of a gap): a smaller difference counts as none (docs/claims.md)
LARGE_K, SMALL_K = 64, 2  # normalization batches compared (at 64 samples per step)
GLOBAL = 64  # samples per optimizer step of the normalization-batch runs
# C6: optimizer batches (one worker, K = the batch); conf/claim_run/*_batch*.yaml set their epochs so that
# each trains about the steps of the batch-64 runs (on MNIST-1D: 250, 248 and 240).
OPTIMIZER_BATCHES = (16, 64, 256)

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
    """One comparison: what A and B are, their values by seed, the claimed relation of A to B, and the
    margin under which a difference counts as none (None: never `equal`)."""

    name: str
    a: pd.Series  # indexed by seed
    b: pd.Series
    expect: str  # "lower", "higher" or "equal": A relative to B
    unit: str = "%"
    margin: float | None = MARGIN

    def matched(self) -> tuple[np.ndarray, np.ndarray]:
        """The two sides on the seeds both have (a failed run drops its seed from the comparison)."""
        a, b = self.a.dropna(), self.b.dropna()
        seeds = a.index.intersection(b.index)
        return a.loc[seeds].to_numpy(dtype=float), b.loc[seeds].to_numpy(dtype=float)

    def judged(self) -> tuple[str, stats.Interval | None]:
        a, b = self.matched()
        try:
            return stats.verdict(a, b, self.expect, self.margin)
        except UsageError:  # fewer than two matched seeds: no interval, no verdict
            return INCONCLUSIVE, None

    def verdict(self) -> str:
        return self.judged()[0]

    def text(self) -> str:
        a, b = self.matched()
        verdict, ci = self.judged()
        unit = " pp" if self.unit == "%" else self.unit
        diff = f"A - B = {ci.text(unit)}" if ci else f"{len(a)} matched seed(s): no interval"
        return f"{self.name}: {_ms(a, self.unit)} vs {_ms(b, self.unit)}, {diff}: {verdict}"


def _sd(values: np.ndarray) -> float:
    return float(np.std(values, ddof=1)) if len(values) > 1 else math.nan


def _ms(values: np.ndarray, unit: str) -> str:
    if len(values) == 0:
        return "no runs"
    return f"{np.mean(values):.2f} ± {_sd(values):.2f}{unit}" if len(values) > 1 else f"{np.mean(values):.2f}{unit}"


def decide(a, b, expect: str, margin: float | None = MARGIN) -> str:
    """The verdict for values a and b matched by position (a[i] and b[i] share a seed)."""
    a, b = pd.Series(np.asarray(a, dtype=float)), pd.Series(np.asarray(b, dtype=float))
    return Comparison("", a, b, expect, margin=margin).verdict()


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
        & (_num(acc, "norm_batch") == k)
        & (_num(acc, "global_batch") == global_batch)
        & (pos.fillna("before") == position)
    )
    return acc[keep].sort_values("seed").drop_duplicates("seed")


def _by_seed(runs: pd.DataFrame, values) -> pd.Series:
    return pd.Series(np.asarray(values, dtype=float), index=_num(runs, "seed").to_numpy())


def _err(runs: pd.DataFrame, column: str = "test_acc") -> pd.Series:
    """Test error (%) by seed."""
    return _by_seed(runs, test_error(runs, column))


def train_column(acc: pd.DataFrame) -> str:
    """The train accuracy C3's gap uses: measured in eval mode after training (`train_eval_acc`), or, in
    runs from before it was recorded, the train-mode running accuracy of the last epoch (`train_acc`)."""
    return "train_eval_acc" if _num(acc, "train_eval_acc").notna().any() else "train_acc"


def _gap(runs: pd.DataFrame, column: str) -> pd.Series:
    """Train accuracy minus test accuracy, in percentage points, by seed."""
    return _by_seed(runs, 100 * (_num(runs, column) - _num(runs, "test_acc")))


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
    steps = {
        name: _by_seed(runs[name], [steps_to_level(c, per_epoch[name], level) for c in curves[name]]) for name in runs
    }
    comp = Comparison(
        "steps to reach the level, BN vs no norm", steps["bn"], steps["none"], "lower", unit="", margin=None
    )
    return comp, level, curves, per_epoch


# -------------------------------------------------------------------------------------------- claims


def spread(acc: pd.DataFrame, norm: str) -> tuple[pd.Series, pd.Series, str]:
    """C6: per seed, max - min of the test error over the optimizer batches (pp) and that range relative to
    the seed's mean error (%); with the mean error and steps per batch, as text."""
    cells = {b: _err(select(acc, norm, b, b)) for b in OPTIMIZER_BATCHES}
    table = pd.DataFrame(cells).dropna()  # seeds that ran every batch
    absolute = table.max(axis=1) - table.min(axis=1)
    relative = 100 * absolute / table.mean(axis=1)
    steps = {b: _num(select(acc, norm, b, b), "steps").max() for b in OPTIMIZER_BATCHES}
    values = ", ".join(f"{table[b].mean():.1f}% at {b} ({steps[b]:.0f} steps)" for b in OPTIMIZER_BATCHES)
    return absolute, relative, values


def comparisons(acc: pd.DataFrame) -> list[tuple[str, str, list[Comparison], str]]:
    """Each claim's comparisons: (claim id, what ran, the comparisons, a note); C5 only where the runs
    left their per-epoch curves."""
    bn64, bn2 = select(acc, "bn", LARGE_K, GLOBAL), select(acc, "bn", SMALL_K, GLOBAL)
    after, none = select(acc, "bn", LARGE_K, GLOBAL, "after"), select(acc, "none", LARGE_K, GLOBAL)
    column = train_column(acc)
    how = (
        "in eval mode after training, on a fixed training subset"
        if column == "train_eval_acc"
        else "in train mode during the last epoch (runs from before train_eval_acc)"
    )
    out = [
        (
            "C1",
            f"bn with conv -> ReLU -> BN vs conv -> BN -> ReLU, K = {LARGE_K}, {GLOBAL} per step",
            [Comparison("test error after vs before", _err(after), _err(bn64), "lower")],
            "",
        ),
        (
            "C2",
            f"bn at K = {LARGE_K} and {SMALL_K}: eval on running averages vs PreciseBN (population statistics)",
            [
                Comparison(f"K={k} running vs PreciseBN error", _err(r), _err(r, "test_acc_precise_bn"), "equal")
                for k, r in ((LARGE_K, bn64), (SMALL_K, bn2))
            ],
            "",
        ),
        (
            "C3",
            f"train-test accuracy gap (train accuracy {how}): bn vs no norm (K = {LARGE_K}); bn at K = {SMALL_K} "
            f"vs {LARGE_K}",
            [
                Comparison("gap with vs without BN", _gap(bn64, column), _gap(none, column), "lower", unit=" pp"),
                Comparison(
                    f"gap at K={SMALL_K} vs K={LARGE_K}", _gap(bn2, column), _gap(bn64, column), "lower", unit=" pp"
                ),
            ],
            f"Test error with BN {_ms(_err(bn64).to_numpy(), '%')}, without {_ms(_err(none).to_numpy(), '%')}",
        ),
        (
            "C4",
            f"bn at K = {SMALL_K} vs {LARGE_K} ({GLOBAL} per step); ln, in, gn vs bn at K = {SMALL_K}",
            [Comparison(f"bn error at K={SMALL_K} vs K={LARGE_K}", _err(bn2), _err(bn64), "higher")]
            + [
                Comparison(f"{n} vs bn K={SMALL_K} error", _err(select(acc, n, LARGE_K, GLOBAL)), _err(bn2), "lower")
                for n in ("ln", "in", "gn")
            ],
            "",
        ),
    ]
    c5 = convergence(acc)
    if c5 is not None:
        comp, level, _, _ = c5
        out.append(
            (
                "C5",
                f"steps until the per-epoch train loss reaches {level:.3f}: bn vs no norm, K = {LARGE_K}",
                [comp],
                "",
            )
        )
    (bn_abs, bn_rel, bn_values), (no_abs, no_rel, no_values) = spread(acc, "bn"), spread(acc, "none")
    out.append(
        (
            "C6",
            f"bn and no norm at optimizer batch {', '.join(map(str, OPTIMIZER_BATCHES))} (one worker, about the "
            "same steps for each batch)",
            [
                Comparison("range of error over the batches, bn vs no norm", bn_abs, no_abs, "higher", unit=" pp"),
                Comparison(
                    "range relative to the mean error, bn vs no norm",
                    bn_rel,
                    no_rel,
                    "higher",
                    unit="% of mean",
                    margin=None,
                ),
            ],
            f"Mean error: bn {bn_values}; no norm {no_values}",
        )
    )
    return out


def judge(acc: pd.DataFrame) -> pd.DataFrame:
    """The claims table: claim, what was run, the measurement, the verdict (one row per claim)."""
    rows = []
    for cid, ran, comps, extra in comparisons(acc):
        measured = "; ".join(c.text() for c in comps) + (f". {extra}" if extra else "")
        verdict = combine([c.verdict() for c in comps])
        rows.append({"claim": f"{cid} {CLAIMS[cid]}", "what ran": ran, "measurement": measured, "verdict": verdict})
    if not any(r["claim"].startswith("C5") for r in rows):
        rows.insert(
            4,
            {
                "claim": f"C5 {CLAIMS['C5']}",
                "what ran": "bn vs no norm",
                "measurement": "no per-epoch curve (curve.csv) next to the runs' rows",
                "verdict": INCONCLUSIVE,
            },
        )
    table = pd.DataFrame(rows)
    table.attrs["seeds"] = len(select(acc, "bn", LARGE_K, GLOBAL))
    return table
