"""Tables, plots and the Markdown/HTML report, built from hand-made sweeps (see test_results.py)."""

from __future__ import annotations

import re
import shutil
import struct
from pathlib import Path

import pandas as pd
import pytest
from test_results import accuracy_sweep, bench_json, made_acc, speed_sweep  # noqa: F401 - bench_json: fixture

from normbench import norms
from normbench.app import cli
from normbench.app.callbacks import ERROR_FILE, SweepReport
from normbench.io import results, schema
from normbench.report import document as report
from normbench.report import plots

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_size(path: Path) -> tuple[int, int]:
    """(width, height) of a valid PNG file (asserts the signature and the IHDR chunk)."""
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE and data[12:16] == b"IHDR", f"{path} is not a PNG"
    return struct.unpack(">II", data[16:24])


def assert_png(path: Path, min_w: int = 400, min_h: int = 300) -> None:
    w, h = png_size(path)
    assert w >= min_w and h >= min_h, (path, w, h)


@pytest.fixture(scope="module")
def sweeps(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("sweeps")
    return {
        "speed": speed_sweep(
            root / "speed", failures={"norm=gn norm.groups=7": "groups=7 does not divide 64"}, missing=1
        ),
        "accuracy": accuracy_sweep(root / "accuracy"),
    }


@pytest.fixture(scope="module")
def both(sweeps, tmp_path_factory) -> Path:
    """One report over both sweeps (so every table and plot is drawn once for the module)."""
    out = tmp_path_factory.mktemp("both")
    return report.build_report([sweeps["speed"], sweeps["accuracy"]], out)


# ----------------------------------------------------------------------------------------------- tables


def test_accuracy_table_holds_mean_sd_and_best(sweeps):
    acc = report.ok_rows(results.read_sweep(sweeps["accuracy"]), "accuracy")
    stats = report.accuracy_stats(acc).set_index(["norm_batch", "norm", "evaluation"])
    for norm in ("bn", "gn"):
        for bs in (2, 8, 32):
            errors = [100 * (1 - made_acc(norm, bs, s)) for s in (0, 1)]
            assert stats.loc[(bs, norm, "running"), "mean"] == pytest.approx(sum(errors) / 2)
            assert stats.loc[(bs, norm, "running"), "sd"] == pytest.approx(pd.Series(errors).std())
            assert stats.loc[(bs, norm, "running"), "n"] == 2
    assert stats.loc[(2, "bn", "batch stats"), "mean"] == pytest.approx(50.0)
    assert (2, "gn", "batch stats") not in stats.index  # NaN: gn has no batch statistics to evaluate with
    table = report.accuracy_table(stats.reset_index()).set_index("K")
    assert list(table.index) == [32, 8, 2]  # large to small, as the GN paper's Figure 1
    assert list(table.columns) == ["bn", "bn batch stats", "gn", "best"]
    assert table.loc[2, "bn"] == "18.00 ± 0.57" and table.loc[2, "gn"] == "11.00 ± 0.57"
    assert table.loc[2, "best"] == "gn (11.00)" and table.loc[32, "best"] == "bn (10.50)"


def k_sweep(protocol: str = "global_batch") -> pd.DataFrame:
    """Rows of a default-shaped sweep: bn's error falls with K, gn's is the same run at every K."""
    rows = []
    for k in (2, 8, 32):
        for seed in (0, 1, 2):
            for norm in ("bn", "gn"):
                acc = 0.80 + 0.1 * (k >= 8) + 0.01 * seed if norm == "bn" else 0.90 + 0.01 * seed
                rows.append(
                    {
                        "norm": norm,
                        "norm_batch": k,
                        "seed": seed,
                        "test_acc": acc,
                        "protocol": protocol,
                        "global_batch": 64 if protocol == "global_batch" else 8 * k,
                        "workers": 64 // k if protocol == "global_batch" else 8,
                        "test_acc_precise_bn": acc + 0.01 if norm == "bn" else float("nan"),
                        "test_acc_batch_stats": acc - 0.05 if norm == "bn" else float("nan"),
                        "reused_from": "0" if norm == "gn" and k != 2 else None,
                    }
                )
    return pd.DataFrame(rows)


def test_headline_states_the_effect_with_its_spread():
    text = report.headline(k_sweep())
    assert text.startswith("**BatchNorm**: test error 19.0 ± 1.0% at 2 per normalization batch vs 9.0 ± 1.0% at 32")
    assert "64 samples per step, the same steps and LR for every K" in text and "over 3 seeds" in text
    assert "GroupNorm do not depend on it (identical by construction at every K: GroupNorm 9.0 ± 1.0%)" in text
    assert "BatchNorm with PreciseBN: 18.0 ± 1.0% vs 8.0 ± 1.0%" in text
    assert "BatchNorm with batch statistics at K: 24.0 ± 1.0% vs 14.0 ± 1.0%" in text
    assert "6 of 18 rows (GroupNorm) reuse" in report.reuse_note(k_sweep())


def test_headline_makes_no_invariance_claim_the_rows_do_not_support():
    rows = k_sweep("workers")
    rows.loc[(rows.norm == "gn") & (rows.norm_batch == 32), "test_acc"] -= 0.05  # as if undertrained
    text = report.headline(rows)
    assert "identical by construction" not in text and "**GroupNorm**: test error 9.0 ± 1.0% at 2" in text
    assert "8 workers: the global batch and LR grow with K" in text


def test_accuracy_error_accepts_percent():
    acc = pd.DataFrame({"test_acc": [90.0, 85.5]})
    assert report.test_error(acc).tolist() == pytest.approx([10.0, 14.5])


def test_speed_table_holds_metrics_and_speedup(sweeps):
    speed = report.ok_rows(results.read_sweep(sweeps["speed"]), "speed")
    stats = report.speed_stats(speed)
    assert len(stats) == 16
    pick = (stats.norm == "gn") & (stats.impl == "reference") & (stats["pass"] == "fwdbwd") & (stats.batch_size == 16)
    row = stats[pick]
    assert row["median_ms"].item() == pytest.approx(2.0 * 4 * 3 * 1.5)
    assert row["speedup_vs_native"].item() == pytest.approx(0.5)
    assert row["pct_of_peak"].item() == pytest.approx(row["gbps"].item() / 20 * 100)
    assert (stats.loc[stats.impl == "native", "speedup_vs_native"] == 1).all()
    table = report.speed_table(stats)
    # the shape varies only by its batch dimension here, so it is not a column of its own
    assert list(table.columns) == [
        "norm",
        "impl",
        "pass",
        "batch",
        "median ms",
        "GB/s",
        "% of roofline",
        "speedup vs native",
    ]
    first = table.iloc[0]
    assert (first["norm"], first["impl"], first["pass"], first["batch"]) == ("bn", "reference", "fwd", "4")
    assert first["median ms"] == "2" and first["speedup vs native"] == "0.50x"


def test_speed_without_native_has_no_speedup():
    speed = pd.DataFrame(
        {
            "norm": ["bn"],
            "impl": ["reference"],
            "pass": ["fwd"],
            "batch_size": [4],
            "median_ms": [1.0],
            "gbps": [2.0],
            "pct_of_peak": [10.0],
        }
    )
    table = report.speed_table(report.speed_stats(speed))
    assert table["speedup vs native"].tolist() == [""]


def test_failures_table_lists_error_lines(sweeps):
    bad = report.failures_table(results.read_sweep(sweeps["speed"]))
    assert bad["status"].tolist() == ["failed", "missing"]
    assert bad.loc[0, "error"] == "ValueError: groups=7 does not divide 64"
    assert bad.loc[0, "overrides"] == "norm=gn norm.groups=7"  # no override is shared by every job


# ------------------------------------------------------------------------------------------------ plots


def test_norm_colours_are_fixed():
    colours = plots.norm_colors()
    assert plots.norm_palette(["gn", "bn"]) == {"bn": colours["bn"], "gn": colours["gn"]}
    many = plots.norm_palette(["zz", "in", "none", "ln", "bn", "gn"])
    assert list(many) == ["bn", "ln", "in", "gn", "none", "zz"] and len(set(many.values())) == 6
    assert len(set(colours.values())) == len(norms.available())  # every registered norm its own colour
    assert plots.impl_palette(["native"])["native"] == plots.impl_colors()["native"]
    assert plots.norm_label("gn") == "GroupNorm" and plots.norm_label("zz") == "zz"


@pytest.fixture
def registered_norm():
    """A norm registered the way a user adds one (normbench.norms.add_norm), removed afterwards."""
    from normbench.norms import registry
    from normbench.norms.layers import LayerNorm

    class ScaledLayerNorm(LayerNorm):
        name = "sln"
        title = "Scaled LayerNorm"

    registry.add_norm(ScaledLayerNorm)
    yield ScaledLayerNorm
    del registry.NORMS["sln"]


def test_a_newly_registered_norm_appears_in_plots_and_tables(registered_norm):
    assert plots.norm_order()[-2:] == ["sln", "none"]  # in registry order, the no-op baseline last
    assert plots.norm_label("sln") == "Scaled LayerNorm"
    assert plots.norm_colors()["sln"] not in {c for n, c in plots.norm_colors().items() if n != "sln"}
    rows = [
        {"norm": n, "impl": "reference", "pass": "fwd", "batch_size": b, "median_ms": 0.1 * b}
        for n in ("sln", "bn")
        for b in (2, 4)
    ]
    grid = plots._speed_grid(pd.DataFrame(rows), "median_ms", "ms", "t", False)
    assert grid.row_names == ["bn", "sln"]  # a facet row of its own, after bn as the registry orders them
    assert grid.axes_dict[("sln", "fwd")].title.get_color() == plots.norm_colors()["sln"]
    plots.plt.close(grid.figure)
    stats = report.speed_stats(pd.DataFrame(rows).assign(input="x"))
    assert stats["norm"].tolist() == ["bn", "bn", "sln", "sln"]


def test_plots_are_pngs(both):
    out = both.parent
    for key, name in report.PLOTS.items():
        if key != "claims":  # drawn for the claims experiment only (tests/test_claims.py)
            assert_png(out / name)
    w, h = png_size(out / report.PLOTS["accuracy"])
    assert w > h  # ours and the GN paper's panel side by side


def test_plots_skip_empty_frames(tmp_path):
    columns = ["norm", "batch_size", "norm_batch", "test_error", "median_ms", "impl"]
    empty = pd.DataFrame({c: [] for c in columns})
    assert plots.accuracy_vs_batch(empty, tmp_path / "a.png") is None
    assert plots.speed_roofline(empty, tmp_path / "b.png") is None
    assert not list(tmp_path.iterdir())


# ----------------------------------------------------------------------------------------------- report


def test_markdown_links_resolve_and_tables_render(both):
    md = both.read_text()
    out = both.parent
    links = re.findall(r"!?\[[^\]]*\]\(([^)]+)\)", md)
    assert len(links) == 4
    for link in links:
        assert not link.startswith(("/", "http")) and (out / link).is_file(), link
    assert "| K " in md and "| 2 " in md and "18.00 ± 0.57" in md
    assert "**BatchNorm**: test error 18.0 ± 0.6% at 2 per normalization batch vs 10.5 ± 0.6% at 32" in md
    assert "normbench-speed -m norm=bn,gn" in md  # what ran
    assert "ValueError: groups=7 does not divide 64" in md and "missing" in md
    assert "git commit:" in md and "device: Test CPU" in md
    assert (out / "summary.csv").is_file() and (out / "summary.parquet").is_file()
    assert len(pd.read_csv(out / "summary.csv")) == len(results.read(list(re.findall(r"input: `([^`]+)`", md))))


def test_html_is_self_contained(both):
    text = both.with_name(report.REPORT_HTML).read_text()
    refs = re.findall(r'(?:src|href)\s*=\s*["\']([^"\']+)', text)
    assert refs and all(r.startswith("data:image/png;base64,") for r in refs), refs
    assert text.count("<img") == 4 and text.count("<table") >= 3
    assert "<link" not in text and "<script" not in text
    assert "ValueError: groups=7 does not divide 64" in text


def test_html_renders_the_markdown_not_its_marks(tmp_path):
    png = tmp_path / "plot.png"
    png.write_bytes(PNG_SIGNATURE + b"\0" * 16)
    doc = report.Document(tmp_path)
    doc.heading(2, "Speed of `gn`")
    doc.para("**supported** and *mixed*; `a*b` and `x**2` are code")
    doc.table(pd.DataFrame({"job": ["test_bn[native]", None], "error": ["a*b | c", "_x_"]}))
    doc.image(png, "latency *per* norm")
    md, page = doc.markdown(), doc.html("t")
    assert "**supported**" in md and "![latency \\*per\\* norm](plot.png)" in md  # report.md stays Markdown
    para = "<p><strong>supported</strong> and <em>mixed</em>; <code>a*b</code> and <code>x**2</code> are code</p>"
    assert para in page and "<h2>Speed of <code>gn</code></h2>" in page
    cells = re.findall(r"<td[^>]*>(.*?)</td>", page)
    assert cells == ["test_bn[native]", "a*b | c", "", "_x_"]  # data, shown as written, one row each
    img = re.search(r"<img [^>]+>", page).group(0)
    assert 'src="data:image/png;base64,' in img and 'data-file="plot.png"' in img and 'alt="latency *per* norm"' in img


def test_report_html_has_no_literal_markup(both):
    page = both.with_name(report.REPORT_HTML).read_text()
    body = re.sub(r"<code>.*?</code>|<pre>.*?</pre>", "", page.split("<body>")[1], flags=re.S)
    assert "**" not in body and "<strong>PreciseBN</strong>" in page
    assert set(re.findall(r'data-file="([^"]+)"', page)) == {
        name for key, name in report.PLOTS.items() if key != "claims"
    }


def test_report_from_benchmark_json(bench_json, tmp_path):  # noqa: F811 - the fixture
    out = tmp_path / "out"
    assert cli.report([str(bench_json), "--out", str(out)]) == 0
    md = (out / "report.md").read_text()
    assert "## Speed" in md and "| bn " in md and "0.50x" not in md.split("## Speed")[0]
    table = md.split("## Speed")[1]
    speedups = re.findall(r"\| (reference|native) .*\| (\d+\.\d\d)x\s*\|", table)
    assert dict(speedups)["native"] == "1.00" and 0.2 < float(dict(speedups)["reference"]) < 1
    assert_png(out / report.PLOTS["latency"])
    assert_png(out / report.PLOTS["roofline"])
    assert not (out / report.PLOTS["accuracy"]).exists()


def test_report_cli_on_interrupted_sweep(tmp_path, capsys):
    sweep = accuracy_sweep(tmp_path / "s", missing=2)
    for job in ("0", "1", "2"):  # interrupted before these wrote their rows
        (sweep / job / "rows.csv").unlink()
    assert cli.report([str(sweep)]) == 0  # default out: the sweep itself
    md = (sweep / "report.md").read_text()
    assert "5 missing" in md and "9 ok" in md
    assert not [p for p in sweep.rglob("*") if p.name.endswith(".tmp")]
    assert cli.report([str(tmp_path / "nope")]) == 2
    assert "no such file" in capsys.readouterr().err


def test_rebuild_removes_plots_the_data_no_longer_has(tmp_path):
    sweep = accuracy_sweep(tmp_path / "s")
    (sweep / report.PLOTS["latency"]).write_bytes(b"stale")
    report.build_report([sweep], sweep)
    assert not (sweep / report.PLOTS["latency"]).exists()
    assert (sweep / report.PLOTS["accuracy"]).exists()


def test_callback_failure_is_logged_and_left_on_disk(tmp_path, monkeypatch, caplog):
    sweep = accuracy_sweep(tmp_path / "s")

    def broken(*a, **k):
        raise RuntimeError("plotting exploded")

    monkeypatch.setattr(report, "build_report", broken)
    cb = SweepReport()
    cb.sweep_dir = str(sweep)
    assert cb.write_report() is None  # never raises into Hydra
    assert "plotting exploded" in (sweep / ERROR_FILE).read_text()
    assert "normbench-report" in caplog.text and "plotting exploded" in caplog.text
    monkeypatch.undo()
    assert cb.write_report() == sweep / "report.md" and not (sweep / ERROR_FILE).exists()


def test_speed_table_shows_what_varies_within_a_norm():
    def row(norm, groups, shape="8x64x28x28"):
        return {
            "norm": norm,
            "impl": "native",
            "pass": "fwd",
            "batch_size": 8,
            "shape": shape,
            "groups": groups,
            "dtype": "float32",
            "median_ms": 1.0,
            "gbps": 1.0,
            "pct_of_peak": 5.0,
        }

    only_gn_has_groups = pd.DataFrame([row("bn", None), row("gn", 32)])
    assert "groups" not in report.speed_table(report.speed_stats(only_gn_has_groups)).columns
    two_groupings = pd.DataFrame([row("bn", None), row("gn", 32), row("gn", 8), row("gn", 8, "8x64x14x14")])
    table = report.speed_table(report.speed_stats(two_groupings))
    assert {"groups", "shape"} <= set(table.columns)
    assert sorted(table["groups"]) == ["", "32", "8", "8"]


def test_a_schema_1_summary_still_builds_a_report_with_k_in_norm_batch(tmp_path):
    """results/reference/accuracy-cpu-default/summary.csv predates schema 2: its accuracy rows hold K in
    batch_size. Read, they hold it in norm_batch (batch_size empty), and the report's tables show it."""
    old = Path(__file__).resolve().parents[1] / "results/reference/accuracy-cpu-default/summary.csv"
    raw = pd.read_csv(old)
    assert "norm_batch" not in raw and "schema_version" not in raw and (raw["kind"] == "accuracy").all()
    given = tmp_path / "old"
    given.mkdir()
    shutil.copy(old, given / "summary.csv")
    frame = results.read_summary(given / "summary.csv")
    assert frame["norm_batch"].tolist() == raw["batch_size"].tolist() and frame["batch_size"].isna().all()
    md = report.build_report([given], tmp_path / "out").read_text()
    stats = report.accuracy_stats(schema.plain(frame[frame["status"] == "ok"]))
    assert sorted(stats["norm_batch"].unique()) == sorted(raw["batch_size"].dropna().unique())
    assert "Accuracy" in md and (tmp_path / "out" / "summary.csv").is_file()
    again = pd.read_csv(tmp_path / "out" / "summary.csv")
    assert again["norm_batch"].tolist() == raw["batch_size"].tolist()


def test_upgrade_moves_k_only_for_version_1_accuracy_rows():
    rows = pd.DataFrame(
        {
            "kind": ["speed", "accuracy", "accuracy"],
            "batch_size": [8, 16, None],
            "norm_batch": [None, None, 4],
            "schema_version": [2, None, 2],
        }
    )
    out = schema.upgrade(rows)
    assert out["batch_size"].tolist()[0] == 8 and pd.isna(out["batch_size"].tolist()[1])
    assert out["norm_batch"].tolist()[1:] == [16, 4] and pd.isna(out["norm_batch"].tolist()[0])
    assert schema.upgrade(out).equals(out)  # idempotent
