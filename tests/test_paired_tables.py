"""The report's paired comparisons and LR-search tables (normbench.report.accuracy_tables), on constructed runs."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from normbench.report import accuracy_tables, plots, stats

SEEDS = range(5)
SHARED = np.array([-1.0, 0.5, 1.5, -0.5, 0.2])  # the seed's effect on every arm


def _runs() -> pd.DataFrame:
    rows = []
    for k in (2, 16):
        for s in SEEDS:
            bn_err = (12.0 if k == 2 else 6.0) + SHARED[s]
            gn_err = 9.0 + SHARED[s] + 0.1 * s  # trained once: the same at every K
            for norm, err, grid in (("bn", bn_err, f"0.05:{20 + k} 0.1:{10 + k}"), ("gn", gn_err, "0.05:9 0.1:12")):
                rows.append(
                    {
                        "norm": norm,
                        "norm_batch": k,
                        "global_batch": 64,
                        "protocol": "global_batch",
                        "seed": s,
                        "epochs": 5,
                        "norm_position": "before",
                        "test_acc": 1 - err / 100,
                        "lr_chosen": 0.1 if norm == "bn" else 0.05,
                        "lr_grid": grid,
                    }
                )
    return pd.DataFrame(rows)


def test_paired_difference_to_batchnorm_matches_stats_paired():
    acc = _runs()
    paired = accuracy_tables.paired_to_baseline(acc).set_index("norm_batch")
    for k in (2, 16):
        arm = acc[(acc.norm == "gn") & (acc.norm_batch == k)].sort_values("seed")
        base = acc[(acc.norm == "bn") & (acc.norm_batch == k)].sort_values("seed")
        ci = stats.paired(100 * (1 - arm.test_acc.to_numpy()), 100 * (1 - base.test_acc.to_numpy()))
        got = paired.loc[k]
        assert (got.estimate, got.low, got.high) == pytest.approx((ci.estimate, ci.low, ci.high))
        assert got.n == 5 and got.norm == "gn"
    table = accuracy_tables.paired_table(paired.reset_index())
    assert table["K"].tolist() == [16, 2]  # large K first, as the accuracy table
    low, high = paired.loc[2, ["low", "high"]]
    assert table.loc[1, "gn - bn"] == f"{paired.loc[2, 'estimate']:+.2f} [{low:+.2f}, {high:+.2f}]"


def test_one_seed_gives_no_paired_row():
    acc = _runs()
    assert accuracy_tables.paired_to_baseline(acc[acc.seed == 0]).empty


def test_lr_curves_show_a_k_invariant_search_once(tmp_path):
    curves = accuracy_tables.lr_curves(_runs())
    assert curves[["norm", "norm_batch"]].values.tolist() == [["bn", 2], ["bn", 16], ["gn", "any"]]
    assert curves.iloc[0].grid == [(0.05, 22.0), (0.1, 12.0)] and curves.iloc[2].chosen == 0.05
    table = accuracy_tables.lr_choices(curves)
    assert table.loc[2, "lr chosen"] == "0.05 (grid edge)"
    assert "0.1: 12.0" in table.loc[2, "validation error (%) per LR"]
    assert plots.lr_sensitivity(curves, tmp_path / "lr.png").stat().st_size > 0
    assert accuracy_tables.lr_curves(_runs().drop(columns=["lr_grid"])).empty


def test_accuracy_plot_draws_the_paired_panel(tmp_path):
    acc = _runs()
    long = accuracy_tables.long_errors(accuracy_tables.with_setup(acc))
    plain = plots.accuracy_vs_batch(long, tmp_path / "a.png", reference=False)
    paired = plots.accuracy_vs_batch(
        long, tmp_path / "b.png", reference=False, paired=accuracy_tables.paired_to_baseline(acc)
    )
    from PIL import Image

    assert Image.open(paired).size[0] > 1.8 * Image.open(plain).size[0]  # a second panel beside
