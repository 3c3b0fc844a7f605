"""The seed notebook's claims (normbench.report.claims): the decision rule on constructed inputs, the
convergence measure, the whole table on constructed runs, and the experiment end to end."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from normbench.io import results
from normbench.report import claims
from normbench.report import document as report

ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------- the decision rule

SEEDS = [0, 1, 2, 3, 4]
SHARED = np.array([-1.5, 0.8, 0.2, 1.6, -1.1])  # what a seed does to both arms (initial weights, data order)


@pytest.mark.parametrize(
    ("delta", "expect", "margin", "verdict"),
    [
        (-2.0, "lower", 1.0, claims.SUPPORTED),  # a clear difference in the claimed direction
        (+2.0, "lower", 1.0, claims.NOT_SUPPORTED),  # against it
        (+2.0, "higher", 1.0, claims.SUPPORTED),
        (0.0, "lower", 1.0, claims.EQUAL),  # no difference, inside the margin
        (0.0, "lower", None, claims.INCONCLUSIVE),  # no difference, but no margin stated
        (0.0, "equal", 1.0, claims.SUPPORTED),
        (-2.0, "equal", 1.0, claims.NOT_SUPPORTED),
    ],
)
def test_decision_rule_on_paired_seeds(delta, expect, margin, verdict):
    b = 10 + SHARED
    a = b + delta + np.array([0.1, -0.1, 0.05, -0.05, 0.0])
    assert claims.decide(a, b, expect, margin) == verdict


def test_a_wide_spread_of_differences_is_inconclusive():
    b = 10 + SHARED
    a = b + np.array([-3.0, 2.5, -1.0, 3.5, -2.0])
    assert claims.decide(a, b, "lower") == claims.INCONCLUSIVE
    assert claims.decide(a, b, "equal") == claims.INCONCLUSIVE


def test_comparisons_match_seeds_and_need_two():
    a = pd.Series([5.0, 5.1, 4.9, 5.2, 9.9], index=[0, 1, 2, 3, 7])
    b = pd.Series([8.0, 8.2, 7.9, 8.1, 1.0], index=[3, 2, 1, 0, 8])  # other order; seeds 7 and 8 have no partner
    comp = claims.Comparison("x", a, b, "lower")
    got_a, got_b = comp.matched()
    assert got_a.tolist() == [5.0, 5.1, 4.9, 5.2] and got_b.tolist() == [8.1, 7.9, 8.2, 8.0]
    assert comp.verdict() == claims.SUPPORTED and "[" in comp.text() and "n = 4" in comp.text()
    one = claims.Comparison("x", a.iloc[:1], b, "lower")
    assert one.verdict() == claims.INCONCLUSIVE and "no interval" in one.text()


def test_combine():
    assert claims.combine([claims.SUPPORTED, claims.SUPPORTED]) == claims.SUPPORTED
    assert claims.combine([claims.INCONCLUSIVE]) == claims.INCONCLUSIVE
    assert claims.combine([claims.SUPPORTED, claims.NOT_SUPPORTED]) == claims.MIXED
    assert claims.combine([claims.SUPPORTED, claims.INCONCLUSIVE]) == claims.MIXED


def test_steps_to_level_interpolates_between_epochs():
    curve = pd.DataFrame({"epoch": [1, 2, 3], "train_loss": [2.0, 1.0, 0.5]})
    assert claims.steps_to_level(curve, 100, 1.5) == pytest.approx(150)  # halfway through epoch 2
    assert claims.steps_to_level(curve, 100, 0.5) == pytest.approx(300)
    assert claims.steps_to_level(curve, 100, 3.0) == pytest.approx(100)  # the first point is the resolution
    assert np.isnan(claims.steps_to_level(curve, 100, 0.1))


# ------------------------------------------------------------------------------ the table, constructed


def _runs(tmp_path: Path, errors: dict, gaps: dict, losses: dict, eval_mode: bool = True) -> pd.DataFrame:
    """Rows as the accuracy job writes them, one per seed of each configuration (its errors, shifted per seed
    by SHARED); bn and none get curve files; the train/test gap in `train_eval_acc` (or, for runs from before
    it, in `train_acc`)."""
    rows = []
    for (name, norm, k, g, pos), err in errors.items():
        for seed, e in zip(SEEDS, np.asarray(err) + SHARED[: len(err)] * 0.3):
            job = tmp_path / f"{name}-{seed}"
            job.mkdir()
            acc = 1 - e / 100
            gap = gaps.get(name, 1.0) + 0.1 * (seed - 2) / 100
            row = {
                "kind": "accuracy",
                "norm": norm,
                "norm_batch": k,
                "global_batch": g,
                "norm_position": pos,
                "seed": seed,
                "test_acc": acc,
                "test_acc_precise_bn": acc + 0.001 * (seed - 2) if norm == "bn" else None,
                "train_acc": acc + (0 if eval_mode else gap / 100) + 0.3,  # train mode: not what C3 should read
                "train_eval_acc": acc + gap / 100 if eval_mode else None,
                "steps": 500,
                "epochs": 5,
                "source": str(job / "rows.csv"),
            }
            if name in losses:
                pd.DataFrame({"epoch": [1, 2, 3, 4, 5], "train_loss": losses[name][seed]}).to_csv(
                    job / "curve.csv", index=False
                )
            rows.append(row)
    return pd.DataFrame(rows)


def _experiment(tmp_path: Path, eval_mode: bool = True) -> pd.DataFrame:
    noise = np.array([0.1, -0.1, 0.05, -0.05, 0.0])
    low, mid, high = 4.0 + noise, 6.0 + noise, 12.0 + noise
    errors = {
        ("bn", "bn", 64, 64, "before"): low,
        ("bn_after", "bn", 64, 64, "after"): low + np.array([0.1, -0.2, 0.1, 0.0, -0.1]),  # C1: the same
        ("bn_k2", "bn", 2, 64, "before"): high,  # C4: error grows as K shrinks
        ("none", "none", 64, 64, "before"): mid,
        ("ln", "ln", 64, 64, "before"): mid,  # C4: all three beat bn at K = 2
        ("in", "in", 64, 64, "before"): mid,
        ("gn", "gn", 64, 64, "before"): mid,
        ("bn16", "bn", 16, 16, "before"): 3.0 + noise,  # C6: bn's range ~20 pp, none's ~0.2 pp
        ("bn256", "bn", 256, 256, "before"): 23.0 + noise,
        ("none16", "none", 16, 16, "before"): 6.1 + noise,
        ("none256", "none", 256, 256, "before"): 6.2 + noise,
    }
    gaps = {"bn": 1.0, "none": 5.0, "bn_k2": 2.0}  # C3: smaller with BN than without, but larger at K = 2
    fast, slow = np.array([2.0, 1.0, 0.6, 0.4, 0.3]), np.array([2.2, 1.9, 1.5, 1.1, 0.9])
    losses = {"bn": [fast + 0.01 * s for s in SEEDS], "none": [slow + 0.02 * (s - 2) for s in SEEDS]}
    return _runs(tmp_path, errors, gaps, losses, eval_mode)


def test_judge_gives_each_claim_its_verdict(tmp_path):
    acc = _experiment(tmp_path)
    assert claims.available(acc)
    judged = claims.judge(acc)
    table = judged.set_index(judged["claim"].str[:2])
    assert table.loc["C1", "verdict"] == claims.EQUAL  # within 0.2 pp in every seed: equal within the margin
    assert table.loc["C2", "verdict"] == claims.SUPPORTED  # PreciseBN within 0.2 pp of the running EMA
    assert table.loc["C3", "verdict"] == claims.MIXED  # smaller with BN (supported), larger at K = 2 (not)
    assert table.loc["C4", "verdict"] == claims.SUPPORTED
    assert table.loc["C5", "verdict"] == claims.SUPPORTED
    assert table.loc["C6", "verdict"] == claims.SUPPORTED  # absolute and relative range both wider with BN
    assert "in eval mode after training" in table.loc["C3", "what ran"]
    assert "-4.00 pp [" in table.loc["C3", "measurement"]  # the gap with BN is 4 pp smaller, interval given
    assert "95% CI, paired" in table.loc["C4", "measurement"] and "n = 5" in table.loc["C4", "measurement"]
    assert judged.attrs["seeds"] == 5


def test_c3_reads_the_train_mode_accuracy_only_in_old_runs(tmp_path):
    acc = _experiment(tmp_path, eval_mode=False)
    table = claims.judge(acc).set_index(claims.judge(acc)["claim"].str[:2])
    assert "in train mode" in table.loc["C3", "what ran"] and "-4.00 pp [" in table.loc["C3", "measurement"]


def test_c6_spread_is_per_seed_absolute_and_relative(tmp_path):
    acc = _experiment(tmp_path)
    absolute, relative, text = claims.spread(acc, "bn")
    errors = pd.DataFrame({b: claims._err(claims.select(acc, "bn", b, b)) for b in claims.OPTIMIZER_BATCHES})
    assert absolute.to_numpy() == pytest.approx((errors.max(axis=1) - errors.min(axis=1)).to_numpy())
    assert relative.to_numpy() == pytest.approx(100 * absolute.to_numpy() / errors.mean(axis=1).to_numpy())
    assert "(500 steps)" in text


def test_missing_runs_mean_no_claims_section(tmp_path):
    acc = _runs(tmp_path, {("bn", "bn", 64, 64, "before"): [4.0, 4.1, 4.2]}, {}, {})
    assert not claims.available(acc)
    assert not claims.available(pd.DataFrame())


# -------------------------------------------------------------------------------- the experiment, run


@pytest.mark.slow
def test_the_experiment_runs_every_claim_and_reports_it(tmp_path):
    sweep = tmp_path / "sweep"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [
        sys.executable,
        "-c",
        "from normbench.app.cli import accuracy; accuracy()",
        "-m",
        "+experiment=seed_claims",
        "dataset=synthetic",
        "dataset.train_size=512",
        "accuracy.epochs=2",
        "accuracy.precise_bn_samples=256",
        "seed=0,1",
        "accuracy.progress=false",
        f"hydra.sweep.dir={sweep}",
    ]
    done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    frame = results.read([sweep])
    acc = report.ok_rows(frame, "accuracy")
    assert len(acc) == 22 and all(claims.needed(acc).values())
    text = (sweep / "report.md").read_text()
    assert "## The notebook's claims" in text
    for cid in claims.CLAIMS:
        assert f"| {cid} " in text
    assert (sweep / "claims_convergence.png").is_file()
