"""The tables a speed report opens with: the headline, a model's step, the module wrapper; and the
report's order (headline and step tables first, the full table after), from hand-made rows."""

from __future__ import annotations

import pandas as pd
import pytest
from test_results import make_sweep, speed_rows

from normbench.io import results
from normbench.report import document as report
from normbench.report import speed_tables

STEP_MS = {("bn", "native"): 10.0, ("bn", "compiled"): 8.0, ("gn", "native"): 12.0, ("gn", "compiled"): 9.0}


def step_row(norm: str, impl: str, batch: int = 8) -> dict:
    ms = STEP_MS[norm, impl] * batch / 8
    return {
        "kind": "speed",
        "norm": norm,
        "impl": impl,
        "pass": "step",
        "model": "resnet20",
        "batch_size": batch,
        "shape": f"{batch}x3x32x32",
        "dtype": "float32",
        "layout": "contiguous",
        "device": "cpu",
        "device_name": "Test CPU",
        "median_ms": ms,
        "layers": 19,
        "norm_ms": ms / 4,
        "norm_share": 25.0,
    }


def wrapper_row(norm: str, us: float) -> dict:
    return {
        "kind": "speed",
        "norm": norm,
        "impl": "native",
        "pass": "wrapper",
        "batch_size": 4,
        "shape": "(4, 64, 32, 32)",
        "device": "cpu",
        "device_name": "Test CPU",
        "median_ms": us / 1e3,
    }


def test_headline_picks_the_fastest_impl_at_the_largest_input():
    rows = [
        r
        for n in ("bn", "gn")
        for i in ("reference", "native")
        for b in (4, 16)
        for p in ("fwd", "fwdbwd")
        for r in speed_rows(n, i, p, b)
    ]
    faster = speed_rows("gn", "reference", "fwd", 16)[0] | {"median_ms": 3.0, "pct_of_peak": 80.0}
    rows = [r for r in rows if (r["norm"], r["impl"], r["pass"], r["batch_size"]) != ("gn", "reference", "fwd", 16)]
    table = speed_tables.headline_table(report.speed_stats(pd.DataFrame(rows + [faster])))
    assert list(table.columns) == [
        "norm",
        "pass",
        "largest input",
        "best impl",
        "median ms",
        "% of roofline",
        "speedup vs native",
    ]
    assert len(table) == 4 and (table["largest input"] == "(16, 64, 32, 32)").all()  # the largest only
    best = table.set_index(["norm", "pass"])
    assert best.loc[("gn", "fwd"), "best impl"] == "reference"  # 3 ms against native's 1 x 4 x 1.5 = 6 ms
    assert (
        best.loc[("gn", "fwd"), "speedup vs native"] == "2.00x" and best.loc[("gn", "fwd"), "% of roofline"] == "80.0"
    )
    assert (
        best.loc[("bn", "fwdbwd"), "best impl"] == "native"
        and best.loc[("bn", "fwdbwd"), "speedup vs native"] == "1.00x"
    )


def test_step_table_gives_speedups_over_native_and_over_bn_native():
    stats = speed_tables.step_stats(pd.DataFrame([step_row(n, i) for n, i in STEP_MS]))
    by = stats.set_index(["norm", "impl"])
    assert by.loc[("bn", "compiled"), "speedup_vs_native"] == pytest.approx(10 / 8)
    assert by.loc[("gn", "compiled"), "speedup_vs_native"] == pytest.approx(12 / 9)
    assert by.loc[("gn", "native"), "speedup_vs_bn_native"] == pytest.approx(10 / 12)  # switching to gn costs
    table = speed_tables.step_table(stats)
    assert list(table.columns) == [
        "model",
        "batch",
        "norm",
        "impl",
        "step ms",
        "norm layers ms",
        "norm share %",
        "speedup vs native",
        "speedup vs bn native",
    ]
    assert table[["norm", "impl"]].values.tolist() == [  # norms and impls in registry order
        ["bn", "native"],
        ["bn", "compiled"],
        ["gn", "native"],
        ["gn", "compiled"],
    ]
    assert table["step ms"].tolist() == ["10", "8", "12", "9"] and table["norm share %"].eq("25.0").all()


def test_wrapper_table_in_us_and_against_the_fastest_native_fwd():
    layers = pd.DataFrame([r for b in (4, 16) for r in speed_rows("bn", "native", "fwd", b)])
    table = speed_tables.wrapper_table(pd.DataFrame([wrapper_row("bn", 5.0), wrapper_row("bn", 7.0)]), layers)
    assert table.to_dict("records") == [
        {"norm": "bn", "device": "Test CPU", "wrapper us per call": "6.00", "% of the fastest native fwd": "0.6"}
    ]  # 6 us of the 1 ms fwd at batch 4


def test_model_report_opens_with_the_headline_and_step_tables(tmp_path):
    jobs = [
        (
            [f"norm={n}", f"impl={i}"],
            [*speed_rows(n, "native" if i == "native" else "reference", "fwdbwd", 8), step_row(n, i)]
            + ([wrapper_row(n, 6.0)] if i == "native" else []),
        )
        for n, i in STEP_MS
    ]
    md = report.build_report([make_sweep(tmp_path / "s", "speed", jobs)], tmp_path / "out").read_text()
    headline, ran, full = md.index("## Headline"), md.index("## What ran"), md.index("## Speed")
    step = md.index("### A model's training step")
    assert headline < step < ran < full
    assert "| resnet20 " in md[step:ran] and "0.83x" in md[step:ran]  # gn native vs bn native: 10 / 12
    assert "wrapper us per call" in md[full:] and "| step " not in md[full:]  # steps stay out of the full table
    summary = results.read_summary(tmp_path / "out" / results.SUMMARY_CSV)
    assert set(summary["pass"].dropna()) == {"fwdbwd", "step", "wrapper"}
    assert summary.loc[summary["pass"] == "step", "norm_share"].eq(25.0).all()
