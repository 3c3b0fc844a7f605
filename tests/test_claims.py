"""The seed notebook's claims (normbench.claims): the decision rule on constructed inputs, the
convergence measure, the whole table on constructed runs, and the experiment end to end."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from normbench import claims, report, results

ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------- the decision rule


@pytest.mark.parametrize(
    ("a", "b", "expect", "verdict"),
    [
        ([5.0, 5.2, 4.9], [8.0, 8.1, 7.9], "lower", claims.SUPPORTED),  # clear, in the claimed direction
        ([8.0, 8.1, 7.9], [5.0, 5.2, 4.9], "lower", claims.NOT_SUPPORTED),  # clear, against it
        ([8.0, 8.1, 7.9], [5.0, 5.2, 4.9], "higher", claims.SUPPORTED),
        ([5.0, 7.0, 6.0], [6.5, 5.5, 7.5], "lower", claims.INCONCLUSIVE),  # the seeds overlap
        ([5.0, 5.1, 4.9], [5.05, 4.95, 5.0], "equal", claims.SUPPORTED),  # no difference, tight spread
        ([5.0, 5.1, 4.9], [8.0, 8.1, 7.9], "equal", claims.NOT_SUPPORTED),
        ([1.0, 9.0, 5.0], [2.0, 8.0, 5.5], "equal", claims.INCONCLUSIVE),  # no difference, but a wide spread
        ([5.0], [8.0], "lower", claims.INCONCLUSIVE),  # one seed: no spread to judge by
    ],
)
def test_decision_rule(a, b, expect, verdict):
    assert claims.decide(a, b, expect) == verdict


def test_the_rule_is_two_seed_spreads():
    a, b = np.array([0.0, 2.0]), np.array([10.0, 12.0])  # sd sqrt(2) each: s = 2, so 2s = 4
    assert claims.rule(-10.0, 2.0, "lower") == claims.SUPPORTED
    assert claims.rule(-3.9, 2.0, "lower") == claims.INCONCLUSIVE
    assert (
        claims.decide(a, b, "lower") == claims.SUPPORTED
        and claims.decide(a, b + (-10 + 3.9), "lower") == claims.INCONCLUSIVE
    )


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


def _runs(tmp_path: Path, errors: dict, gaps: dict, losses: dict) -> pd.DataFrame:
    """Rows as the accuracy job writes them, 3 seeds per configuration; bn and none get curve files."""
    rows = []
    for (name, norm, k, g, pos), err in errors.items():
        for seed, e in enumerate(err):
            job = tmp_path / f"{name}-{seed}"
            job.mkdir()
            acc = 1 - e / 100
            row = {
                "kind": "accuracy",
                "norm": norm,
                "batch_size": k,
                "global_batch": g,
                "norm_position": pos,
                "seed": seed,
                "test_acc": acc,
                "test_acc_precise_bn": acc + 0.001 * (seed - 1) if norm == "bn" else None,
                "train_acc": acc + gaps.get(name, 1.0) / 100,
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


def test_judge_gives_each_claim_its_verdict(tmp_path):
    low, mid, high = [4.0, 4.2, 3.9], [6.0, 6.1, 5.9], [12.0, 12.4, 11.8]
    errors = {
        ("bn", "bn", 64, 64, "before"): low,
        ("bn_after", "bn", 64, 64, "after"): [4.1, 3.9, 4.2],  # C1: no difference
        ("bn_k2", "bn", 2, 64, "before"): high,  # C4: error grows as K shrinks
        ("none", "none", 64, 64, "before"): mid,
        ("ln", "ln", 64, 64, "before"): mid,  # C4: all three beat bn at K = 2
        ("in", "in", 64, 64, "before"): mid,
        ("gn", "gn", 64, 64, "before"): mid,
        ("bn16", "bn", 16, 16, "before"): [3.0, 3.1, 2.9],  # C6: bn's range 20 pp, none's 1 pp
        ("bn256", "bn", 256, 256, "before"): [23.0, 23.2, 22.8],
        ("none16", "none", 16, 16, "before"): [6.5, 6.4, 6.6],
        ("none256", "none", 256, 256, "before"): [6.6, 6.7, 6.5],
    }
    gaps = {"bn": 1.0, "none": 5.0, "bn_k2": 2.0}  # C3: smaller with BN than without, but larger at K = 2
    fast, slow = [2.0, 1.0, 0.6, 0.4, 0.3], [2.2, 1.9, 1.5, 1.1, 0.9]
    losses = {"bn": [fast] * 3, "none": [slow, [s + 0.01 for s in slow], [s - 0.01 for s in slow]]}
    acc = _runs(tmp_path, errors, gaps, losses)
    assert claims.available(acc)
    table = claims.judge(acc).set_index(claims.judge(acc)["claim"].str[:2])
    assert table.loc["C1", "verdict"] == claims.INCONCLUSIVE
    assert table.loc["C2", "verdict"] == claims.SUPPORTED  # PreciseBN within 0.1 pp of the running EMA
    assert table.loc["C3", "verdict"] == claims.MIXED  # one part supported, the other not
    assert table.loc["C4", "verdict"] == claims.SUPPORTED
    assert table.loc["C5", "verdict"] == claims.SUPPORTED
    assert table.loc["C6", "verdict"] == claims.SUPPORTED
    assert "12.07 ± 0.31%" in table.loc["C4", "measurement"]


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
        "from normbench.cli import accuracy; accuracy()",
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
