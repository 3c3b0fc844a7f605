"""Results integrity (issue 11): a sweep never overwrites, averages away or loses a result, and every
bad input or signal gets a clear answer. One section per item of the issue, in its order."""

from __future__ import annotations

import json
import math
import os
import pickle
import re
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from hydra.errors import ConfigCompositionException
from test_launchers import TOY_APP, TOY_CONFIG, assert_report, run
from test_results import accuracy_rows, make_sweep, speed_rows, speed_sweep
from test_speed import TINY, configure

from normbench import data, norms
from normbench.app import cli
from normbench.app.callbacks import SweepDirTaken, claim_sweep_dir
from normbench.bench import speed_job, timing
from normbench.errors import UsageError
from normbench.io import benchmark_json, provenance, results, schema
from normbench.report import document as report
from normbench.specs import one_line

DOCS = Path(__file__).resolve().parents[1] / "docs"


@pytest.fixture(scope="module")
def hydra_configs():
    from hydra import initialize_config_dir

    from normbench.app.cli import CONFIGS

    with initialize_config_dir(config_dir=CONFIGS, version_base="1.3"):
        yield


@pytest.fixture
def toy(tmp_path) -> Path:
    import textwrap

    (tmp_path / "app.yaml").write_text(TOY_CONFIG)
    (tmp_path / "app.py").write_text(textwrap.dedent(TOY_APP))
    return tmp_path


def toy_sweep(toy: Path, *args: str) -> subprocess.CompletedProcess:
    return run([sys.executable, "app.py", "-m", *args], cwd=toy)


def scaled_speed_sweep(root: Path, factor: float) -> Path:
    """speed_sweep's configurations with every time multiplied by `factor` (spread kept relative)."""
    jobs = []
    for n in ("bn", "gn"):
        for i in ("reference", "native"):
            rows = speed_rows(n, i, "fwd", 4)
            for r in rows:
                r.update(median_ms=r["median_ms"] * factor, p20_ms=r["p20_ms"] * factor, p80_ms=r["p80_ms"] * factor)
            jobs.append(([f"norm={n}", f"impl={i}"], rows))
    return make_sweep(root, "speed", jobs)


# ---------------------------------------------------------------------- 1. a sweep directory is never reused


def test_a_sweep_refuses_a_directory_that_holds_results(toy):
    sweep = toy / "sweep"
    first = toy_sweep(toy, "x=2,3", f"hydra.sweep.dir={sweep}")
    assert first.returncode == 0, first.stderr[-2000:]
    before = {p: p.read_bytes() for p in sweep.rglob("*") if p.is_file()}
    second = toy_sweep(toy, "x=4", f"hydra.sweep.dir={sweep}")
    assert second.returncode == 2
    assert "already holds results" in second.stderr and "hydra.sweep.dir" in second.stderr
    after = {p: p.read_bytes() for p in sweep.rglob("*") if p.is_file()}
    assert after == before  # not one byte of the first sweep changed
    assert pd.read_csv(sweep / "summary.csv")["norm_batch"].tolist() == [2, 3]


def test_two_sweeps_cannot_claim_one_directory(tmp_path):
    sweep = tmp_path / "sweep"
    claim_sweep_dir(sweep, b"{}")
    with pytest.raises(SweepDirTaken, match="already holds results"):
        claim_sweep_dir(sweep, b"{}")
    sweep2 = tmp_path / "sweep2"
    sweep2.mkdir()
    (sweep2 / provenance.RUN_FILE).write_text("{}")  # as if another sweep linked it in between
    with pytest.raises(SweepDirTaken):
        claim_sweep_dir(sweep2, b"{}")
    claim_sweep_dir(tmp_path / "fresh" / "deeper", b'{"a": 1}')  # absent or empty is fine
    assert json.loads((tmp_path / "fresh" / "deeper" / provenance.RUN_FILE).read_text()) == {"a": 1}


def test_docs_state_the_no_overwrite_rule():
    for doc in (DOCS / "report.md", DOCS.parent / "results" / "README.md"):
        assert "never writes over" in doc.read_text(), doc


# ------------------------------------------------------------------ 2. sources are kept apart; --compare


def test_report_of_two_sweeps_keeps_each_measurement(tmp_path):
    a, b = scaled_speed_sweep(tmp_path / "A", 1.0), scaled_speed_sweep(tmp_path / "B", 3.0)
    out = report.build_report([a, b], tmp_path / "out").read_text()
    table = out.split("## Speed")[1].split("##")[0]
    native_bn = [line for line in table.splitlines() if "| bn " in line and " native " in line]
    assert len(native_bn) == 2  # one line per source, never their mean
    assert any("| A " in line and " 1 " in line for line in native_bn), native_bn
    assert any("| B " in line and " 3 " in line for line in native_bn), native_bn
    assert "2 " not in " ".join(line.split("|")[7] for line in native_bn)  # the mean, 2 ms, is nowhere
    assert all("1.00x" in line for line in native_bn)  # speedup is against native of the same source


def test_accuracy_of_two_sweeps_is_not_pooled_as_seeds(tmp_path):
    def jobs(acc: float) -> list:
        return [(["norm=bn", f"seed={s}"], [{**accuracy_rows("bn", 8, s)[0], "test_acc": acc}]) for s in (0, 1)]

    a = make_sweep(tmp_path / "A", "accuracy", jobs(0.9))
    b = make_sweep(tmp_path / "B", "accuracy", jobs(0.5))
    md = report.build_report([a, b], tmp_path / "out").read_text()
    assert "input = A" in md and "input = B" in md
    assert "10.00 ± 0.00" in md and "50.00 ± 0.00" in md and "30.00" not in md


def test_the_same_input_twice_is_refused(tmp_path, capsys):
    a = speed_sweep(tmp_path / "A")
    assert cli.report([str(a), str(tmp_path / "." / "A"), "--out", str(tmp_path / "out")]) == 2
    assert "given twice" in capsys.readouterr().err


def test_compare_gives_b_over_a_with_each_sides_spread(tmp_path, capsys):
    a, b = scaled_speed_sweep(tmp_path / "A", 1.0), scaled_speed_sweep(tmp_path / "B", 2.0)
    out = tmp_path / "cmp"
    assert cli.report(["--compare", str(a), str(b), "--out", str(out), "--noise", "1.5"]) == 0
    table = pd.read_csv(out / "compare.csv")
    assert len(table) == 4 and table["ratio"].round(6).eq(2.0).all()
    assert (table["verdict"] == "B slower").all()  # p20-p80 bands (+-5%) do not overlap at 2x, beyond 1.5x
    assert (table["lo_a"] < table["value_a"]).all() and (table["value_b"] < table["hi_b"]).all()
    md = (out / "compare.md").read_text()
    assert "B/A" in md and "2.000" in md and "[0.95" in md  # A's spread shown
    assert (out / "compare.png").read_bytes()[:4] == b"\x89PNG" and (out / "compare.html").is_file()
    near = scaled_speed_sweep(tmp_path / "C", 1.02)
    assert cli.report(["--compare", str(a), str(near), "--out", str(tmp_path / "cmp2")]) == 0
    assert (pd.read_csv(tmp_path / "cmp2" / "compare.csv")["verdict"] == "within noise").all()
    assert cli.report(["--compare", str(a)]) == 2
    assert "two inputs" in capsys.readouterr().err


# ----------------------------------------------------------- 3. rebuilding a combined report keeps its data


def test_rebuilding_a_combined_report_keeps_its_data(tmp_path, capsys):
    a, b = scaled_speed_sweep(tmp_path / "A", 1.0), scaled_speed_sweep(tmp_path / "B", 3.0)
    c = tmp_path / "C"
    assert cli.report([str(a), str(b), "--out", str(c)]) == 0
    before = results.read_summary(c / "summary.csv")
    pngs = sorted(p.name for p in c.glob("*.png"))
    assert cli.report([str(c)]) == 0  # rebuild in place, from its own summary
    after = results.read_summary(c / "summary.csv")
    assert len(after) == len(before) == 8 and sorted(after["input"].unique()) == [str(a), str(b)]
    assert sorted(p.name for p in c.glob("*.png")) == pngs and pngs
    assert cli.report([str(a), "--out", str(c)]) == 2  # the report of other inputs: refused
    assert "holds the report of other inputs" in capsys.readouterr().err
    assert len(results.read_summary(c / "summary.csv")) == 8


# ---------------------------------------------------------------- 4. every benchmark keeps its own identity


def bench_entry(name: str, median: float, params: dict | None = None, extra: dict | None = None) -> dict:
    return {
        "group": name.split("[")[0],
        "name": name,
        "fullname": f"tests/benchmarks/x.py::{name}",
        "params": params,
        "param": None,
        "extra_info": extra or {},
        "stats": {
            "min": median * 0.9,
            "max": median * 1.2,
            "mean": median,
            "stddev": median / 10,
            "median": median,
            "q1": median * 0.95,
            "q3": median * 1.05,
            "rounds": 5,
            "iterations": 1,
        },
    }


def virtual_batch_json(path: Path) -> Path:
    """What tests/benchmarks/test_virtual_batch.py writes: no norm, impl or batch_size in extra_info."""
    cases = [
        f"test_layer[{c}]"
        for c in ("one batch of 64", "32 workers x 2 (virtual_batch)", "32 workers x 2 (python loop)")
    ]
    entries = [bench_entry(n, 0.01 * (i + 1), {"case": n}) for i, n in enumerate(cases)]
    entries += [
        bench_entry(f"test_model_step[{k}-{w}]", 0.002 * (i + 1), {"k": k, "workers": w})
        for i, (k, w) in enumerate([(64, 1), (2, 32), (8, 8)])
    ]
    norm = {"norm": "bn", "impl": "native", "pass": "fwd", "shape": "4x32x16x16", "batch_size": 4}
    entries.append(bench_entry("test_norm[bn-native-fwd-S]", 0.001, extra=norm))
    path.write_text(json.dumps({"benchmarks": entries, "machine_info": {}, "version": "5.1.0"}))
    return path


def test_virtual_batch_benchmarks_each_come_through(tmp_path):
    bench = virtual_batch_json(tmp_path / "vb.json")
    frame = results.read([bench])
    other = frame[frame["kind"] == "benchmark"]
    assert len(other) == 6 and other["benchmark"].nunique() == 6
    assert (frame["kind"] == "speed").sum() == 1
    md = report.build_report([bench], tmp_path / "out").read_text()
    section = md.split("## Other benchmarks")[1].split("##")[0]
    assert sum("test_layer[" in line or "test_model_step[" in line for line in section.splitlines()) == 6
    assert "| bn " in md.split("## Speed")[1]


def test_benchmark_json_without_median_says_so(tmp_path):
    bad = tmp_path / "old.json"
    bad.write_text(json.dumps({"benchmarks": [{"name": "test_x", "stats": {"mean": 0.5}}]}))
    with pytest.raises(ValueError, match="test_x.*no stats.median"):
        benchmark_json.read_benchmark_json(bad)


# --------------------------------------------------------------------------------- 5. one peak per sweep

PEAK_WORKER = """
import random, sys, time
from pathlib import Path
import torch
from normbench.bench import timing

def slow_measure(device, copy_mb, **kw):
    time.sleep(0.5)  # long enough for every process to race the others
    ms = random.uniform(1, 10)
    return {"peak_gbps": 2 * copy_mb * 2**20 / (ms * 1e-3) / 1e9, "peak_method": "test", "peak_copy_ms": ms}

timing.measure_copy_bandwidth = slow_measure
print(timing.peak_bandwidth(torch.device("cpu"), "cpu", Path(sys.argv[1]), 8)["peak_gbps"])
"""


def test_every_process_of_a_sweep_gets_the_same_peak(tmp_path):
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH", "")]),
    }
    procs = [
        subprocess.Popen([sys.executable, "-c", PEAK_WORKER, str(tmp_path)], stdout=subprocess.PIPE, text=True, env=env)
        for _ in range(3)
    ]
    peaks = {p.communicate(timeout=120)[0].strip() for p in procs}
    assert len(peaks) == 1 and float(peaks.pop()) > 0


@pytest.mark.parametrize("cached", [[1, 2], 0, "fast", {"x": "y"}, None])
def test_a_broken_peak_cache_is_measured_again(tmp_path, monkeypatch, cached):
    key = f"cpu [cpu] 8MiB {torch.get_num_threads()} threads"
    content = cached if not isinstance(cached, (int, str, type(None))) else {key: cached}
    (tmp_path / timing.PEAK_FILE).write_text(json.dumps(content))
    monkeypatch.setattr(timing, "_PEAKS", {})
    monkeypatch.setattr(timing, "measure_copy_bandwidth", lambda *a, **k: copy_record(12.5, 8))
    assert timing.peak_bandwidth(torch.device("cpu"), "cpu", tmp_path, 8)["peak_gbps"] == 12.5
    assert json.loads((tmp_path / timing.PEAK_FILE).read_text())[key]["peak_gbps"] == 12.5


def copy_record(gbps: float, copy_mb: int) -> dict:
    """A record as measure_copy_bandwidth writes it: the peak and the copy time that gives it."""
    return {"peak_gbps": gbps, "peak_method": "test", "peak_copy_ms": 2 * copy_mb * 2**20 / (gbps * 1e9) * 1e3}


def test_peak_settings_are_checked(tmp_path, caplog, hydra_configs):
    for bad, match in (
        ("speed.peak_gbps=0", "speed.peak_gbps must be > 0, got 0.0"),
        ("speed.peak_gbps=-3", "peak_gbps"),
        ("speed.peak_copy_mb=0", "speed.peak_copy_mb must be > 0"),
    ):
        cfg = configure([*TINY, bad], tmp_path)
        with pytest.raises(UsageError, match=match):
            speed_job.run(cfg, tmp_path)
    with pytest.raises(ConfigCompositionException) as err:  # not a number: the schema's
        configure([*TINY, "speed.peak_gbps=abc"], tmp_path)
    assert re.search(
        r"'abc' of type 'str' could not be converted to Float \(key speed.peak_gbps\)", one_line(err.value)
    )
    cfg = configure([*TINY, "pass=fwd", "speed.peak_copy_mb=4"], tmp_path)
    speed_job.run(cfg, tmp_path)
    assert "peak_copy_mb=4 may sit in" in caplog.text


# ------------------------------------------------------------------------------ 6. SIGTERM writes a report


def test_sigterm_writes_the_partial_report_with_jobs_never_started(toy):
    sweep = toy / "sweep"
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.Popen(
        [sys.executable, "app.py", "-m", "x=1,2,3", "sleep=4", f"hydra.sweep.dir={sweep}"],
        cwd=toy,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    deadline = time.time() + 120
    while not (sweep / "0" / "rows.csv").exists() and time.time() < deadline:
        time.sleep(0.2)
    time.sleep(1.0)  # job 1 is running
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err[-2000:]
    md = assert_report(sweep)
    assert "stopped by SIGTERM" in md
    frame = results.read_summary(sweep / "summary.csv")
    assert frame["status"].tolist() == ["ok", "missing", "not_started"]
    assert frame["overrides"].iloc[2] == "x=3 sleep=4" or "x=3" in frame["overrides"].iloc[2]
    assert "2 of 3 jobs failed" in err


# ------------------------------------------------------------------------------------- 7. the exit status


def test_a_sweep_with_failed_jobs_exits_non_zero(toy):
    proc = toy_sweep(toy, "x=2,7", f"hydra.sweep.dir={toy / 'a'}")
    assert proc.returncode == 1
    assert f"1 of 2 jobs failed (1 failed): see {toy / 'a' / 'report.md'}" in proc.stderr
    proc = toy_sweep(toy, "x=7", "hydra.callbacks.report.fail_on_error=false", f"hydra.sweep.dir={toy / 'b'}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (toy / "b" / "report.md").is_file()


# --------------------------------------------------------------------------- 8. no data file runs code


class Payload:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_a_crafted_cifar_pickle_does_not_run(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torchvision", None)
    batches = tmp_path / "cifar-10-batches-py"
    batches.mkdir()
    marker = tmp_path / "pwned"
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (batches / name).write_bytes(pickle.dumps({"data": Payload(marker), "labels": [0]}))
    with pytest.raises(UsageError, match="data_batch_1 is not a CIFAR-10 batch.*pathlib"):
        data.cifar10(download_dir=str(tmp_path))
    assert not marker.exists()
    real = {"batch_label": "x", "labels": [1, 2], "data": np.zeros((2, 3072), np.uint8), "filenames": [b"a", b"b"]}
    (batches / "one").write_bytes(pickle.dumps(real, protocol=2))
    assert data.read_cifar_batch(batches / "one")["labels"] == [1, 2]


def test_a_loaders_own_type_error_keeps_its_traceback(monkeypatch):
    from normbench import plugins

    @plugins.register("dataset")
    def broken(num_classes: int = 4):
        return len(None)  # a bug inside the loader: TypeError

    monkeypatch.setattr(data, "synthetic", broken)
    with pytest.raises(TypeError, match="NoneType"):
        data.load({"_target_": "normbench.data.synthetic"})
    with pytest.raises(UsageError, match="takes no option 'colour'.*num_classes"):
        data.load({"_target_": "normbench.data.synthetic", "colour": 1})


# --------------------------------------------------------------------- 9. errors name the thing that is wrong


def test_a_corrupt_image_is_named(tmp_path):
    from test_data import write_image_folder

    root = tmp_path / "folder"
    write_image_folder(root)
    bad = root / "train" / "dog" / "0001.png"
    bad.write_bytes(bad.read_bytes()[:40])  # truncated
    with pytest.raises(UsageError, match="cannot read train/dog/0001.png"):
        data._image_folder_arrays(str(root), None, None)
    archive = tmp_path / "crc.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_STORED) as z:
        for p in sorted((root).rglob("*.png")):
            if p != bad:
                z.write(p, p.relative_to(root).as_posix())
        z.write(root / "train" / "cat" / "0000.png", "train/dog/0001.png")
    raw = bytearray(archive.read_bytes())
    with zipfile.ZipFile(archive) as z:
        info = z.getinfo("train/dog/0001.png")
    offset = info.header_offset + 30 + len(info.filename) + len(info.extra) + 10
    raw[offset] ^= 0xFF  # one flipped byte in the member: its CRC no longer matches
    archive.write_bytes(bytes(raw))
    with pytest.raises(UsageError, match="cannot read train/dog/0001.png.*BadZipFile"):
        data._image_folder_arrays(str(archive), None, None)


@pytest.mark.parametrize("seed", ["x", "1.5", "true"])
def test_seed_must_be_an_int(seed, tmp_path, hydra_configs):
    with pytest.raises(ConfigCompositionException) as err:
        configure([*TINY, f"seed={seed}"], tmp_path)
    assert re.search(
        rf"seed={seed}: Value '.*' of type '.*' could not be converted to Integer \(key seed\)", one_line(err.value)
    )


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"eps": "abc"}, "eps must be a finite number > 0"),
        ({"momentum": "fast"}, "momentum must be in"),
        ({"affine": "no"}, "affine must be true or false"),
        ({"track_running_stats": "yes"}, "track_running_stats"),
    ],
)
def test_norm_options_of_the_wrong_type_are_one_line(options, match):
    with pytest.raises(UsageError, match=match):
        norms.build("bn", 4, **options)


def test_bad_config_values_fail_the_job_with_one_line(tmp_path, hydra_configs):
    from normbench.app.cli import run_job

    for bad in ("norm.eps=abc", "norm.momentum=fast", "+norm.affine=no"):  # the norm node's own checks
        out = tmp_path / bad.replace("=", "_").replace("+", "")
        run_job(speed_job.run, configure([*TINY, "pass=fwd", bad], out, job=0))
        failure = json.loads((out / "0" / results.FAILURE_FILE).read_text())
        assert failure["error"].startswith("UsageError: "), (bad, failure["error"])


# ------------------------------------------------------------------------------------------- 10. schema


def test_summaries_have_the_full_schema_with_one_dtype_each(tmp_path):
    from test_results import accuracy_sweep

    speed_only = results.write_summary(results.read([speed_sweep(tmp_path / "s")]), tmp_path / "a")
    acc_only = results.write_summary(results.read([accuracy_sweep(tmp_path / "acc")]), tmp_path / "b")
    frames = [results.read_summary(p) for p in speed_only + acc_only]
    for f in frames:
        assert list(f.columns[: len(schema.SCHEMA)]) == list(schema.SCHEMA)
    csv, parquet = frames[0], frames[1]
    assert list(pd.read_csv(speed_only[0]).columns) == list(pd.read_parquet(acc_only[1]).columns)
    assert dict(csv.dtypes) == dict(parquet.dtypes)
    assert str(csv["job"].dtype) == str(pd.read_parquet(speed_only[1])["job"].dtype) == "string"
    assert "peak_mem_mib" in csv and "peak_mem_mb" not in csv  # the old name, read as the new
    pd.testing.assert_frame_equal(csv, parquet)


def test_a_truncated_rows_csv_is_not_a_result(tmp_path):
    sweep = speed_sweep(tmp_path / "s")
    rows = sweep / "0" / "rows.csv"
    text = rows.read_text()
    rows.write_text(text[: text.rindex(",", 0, len(text) - 5)])  # cut in the middle of the last row
    frame = results.read_sweep(sweep)
    job0 = frame[frame["job"] == "0"]
    assert job0["status"].tolist() == ["unreadable"] and "cut short" in job0["error"].item()
    assert frame.loc[frame["status"] == "ok", "median_ms"].notna().all()


def test_schema_is_documented():
    doc = (DOCS / "schema.md").read_text()
    for col, (kind, _unit, _) in schema.SCHEMA.items():
        assert f"| `{col}` | {kind} |" in doc, col


# ------------------------------------------------------------------------------- 11. edge input, one answer


@pytest.mark.parametrize("name", ["bn", "ln", "in", "gn"])
@pytest.mark.parametrize("training", [True, False])
def test_an_empty_batch_gets_one_answer_from_every_implementation(name, training):
    for impl in [i for i in norms.implementations(name) if i != "triton"]:
        layer = norms.build(name, 4, impl=impl, **({"groups": 2} if name == "gn" else {})).train(training)
        with pytest.raises(UsageError, match="empty input"):
            layer(torch.randn(0, 4, 3, 3))


def test_one_nan_batch_poisons_batchnorms_running_statistics_for_good():
    """Documented in README: as torch.nn does, in every implementation."""
    for impl in [i for i in norms.implementations("bn") if i != "triton"]:
        layer = norms.build("bn", 3, impl=impl)
        layer(torch.full((4, 3, 2, 2), math.nan))
        for _ in range(3):
            layer(torch.randn(4, 3, 2, 2))
        assert layer.running_mean.isnan().all() and layer.running_var.isnan().all(), impl
    reference = torch.nn.BatchNorm2d(3)
    reference(torch.full((4, 3, 2, 2), math.nan))
    assert reference.running_mean.isnan().all()
