"""The tidy row schema: a sweep directory (with failed, interrupted and broken jobs) and a
pytest-benchmark JSON file read into one frame; the summary files."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest
import yaml

from normbench.io import benchmark_json, provenance, results, schema

# ---------------------------------------------------------------------------- hand-made rows and sweeps

SPEED_MS = {"reference": 2.0, "native": 1.0}  # per batch of 4; scales with the batch size
PEAK_GBPS = 20.0


def speed_rows(norm: str, impl: str, pass_: str, batch: int) -> list[dict]:
    ms = SPEED_MS[impl] * batch / 4 * (3 if pass_ == "fwdbwd" else 1) * (1.5 if norm == "gn" else 1)
    nbytes = batch * 64 * 32 * 32 * 4 * (2 if pass_ == "fwd" else 5)
    gbps = nbytes / (ms / 1e3) / 1e9
    return [
        {
            "kind": "speed",
            "norm": norm,
            "impl": impl,
            "pass": pass_,
            "batch_size": batch,
            "shape": f"({batch}, 64, 32, 32)",
            "dtype": "float32",
            "layout": "contiguous",
            "device": "cpu",
            "device_name": "Test CPU",
            "median_ms": ms,
            "p20_ms": ms * 0.95,
            "p80_ms": ms * 1.05,
            "bytes": nbytes,
            "gbps": gbps,
            "peak_gbps": PEAK_GBPS,
            "pct_of_peak": 100 * gbps / PEAK_GBPS,
            "peak_mem_mb": float("nan"),
            "torch_version": "2.13.0",
            "triton_version": None,
        }
    ]


def made_acc(norm: str, batch: int, seed: int) -> float:
    """BN loses accuracy as the batch per worker shrinks; GN does not (made-up numbers, GN-paper-shaped)."""
    base = 0.90 - (0.16 / batch if norm == "bn" else 0.01)
    return round(base + (0.004 if seed else -0.004), 6)


def accuracy_rows(norm: str, batch: int, seed: int) -> list[dict]:
    return [
        {
            "kind": "accuracy",
            "norm": norm,
            "impl": "native",
            "dataset": "synthetic",
            "model": "mlp",
            "norm_batch": batch,
            "workers": 1,
            "global_batch": batch,
            "lr": 0.1 * batch / 64,
            "epochs": 2,
            "seed": seed,
            "test_acc": made_acc(norm, batch, seed),
            "test_acc_batch_stats": 0.5 if norm == "bn" else float("nan"),
            "train_loss": 0.3,
            "wall_s": 1.0,
            "samples_per_s": 1000.0,
            "device": "Test CPU",
        }
    ]


def make_sweep(root: Path, app: str, jobs: list, failures: dict | None = None, missing: int = 0) -> Path:
    """A sweep directory as Hydra and normbench's jobs leave it: `multirun.yaml`, a numbered directory
    per job with `.hydra/overrides.yaml` and `rows.csv`, `failure.json` for each failure
    (overrides -> error), and `missing` jobs that started but left nothing."""
    root.mkdir(parents=True)
    (root / "multirun.yaml").write_text(
        yaml.safe_dump(
            {
                "hydra": {
                    "job": {"config_name": app},
                    "overrides": {"hydra": ["hydra.mode=MULTIRUN"], "task": ["norm=bn,gn"]},
                }
            }
        )
    )
    num = 0

    def job_dir(overrides: list[str]) -> Path:
        nonlocal num
        d = root / str(num)
        (d / ".hydra").mkdir(parents=True)
        (d / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
        (d / ".hydra" / "hydra.yaml").write_text(yaml.safe_dump({"hydra": {"job": {"config_name": app}}}))
        num += 1
        return d

    for overrides, rows in jobs:
        results.write_rows(job_dir(overrides), rows)
    for overrides, error in (failures or {}).items():
        try:
            raise ValueError(error)
        except ValueError as exc:
            results.write_failure(job_dir(overrides.split()), exc, overrides.split())
    for i in range(missing):
        job_dir([f"seed={100 + i}"])
    return root


def speed_sweep(root: Path, **kw) -> Path:
    jobs = [
        (
            [f"norm={n}", f"impl={i}", f"speed.batch_size={b}"],
            [r for p in ("fwd", "fwdbwd") for r in speed_rows(n, i, p, b)],
        )
        for n in ("bn", "gn")
        for i in ("reference", "native")
        for b in (4, 16)
    ]
    return make_sweep(root, "speed", jobs, **kw)


def accuracy_sweep(root: Path, **kw) -> Path:
    jobs = [
        ([f"norm={n}", f"accuracy.batch_size={b}", f"seed={s}"], accuracy_rows(n, b, s))
        for n in ("bn", "gn")
        for b in (2, 8, 32)
        for s in (0, 1)
    ]
    return make_sweep(root, "accuracy", jobs, **kw)


# ----------------------------------------------------------------------------------------------- tests


def test_read_sweep_keeps_failed_and_missing_jobs(tmp_path):
    sweep = speed_sweep(tmp_path / "s", failures={"norm=gn norm.groups=7": "groups=7 does not divide 64"}, missing=1)
    # a job killed mid-write leaves only a temporary file, which is not a result
    (sweep / "6" / ".rows.csv.123.tmp").write_text("norm,impl\nbn,na")
    frame = results.read_sweep(sweep)

    ok = frame[frame.status == "ok"]
    assert len(ok) == 2 * 2 * 2 * 2  # norms x impls x batch sizes x passes
    assert list(frame.columns[:9]) == schema.META_COLUMNS + ["norm"]
    assert set(ok["kind"]) == {"speed"}
    assert ok.loc[
        (ok.norm == "gn") & (ok.impl == "native") & (ok["pass"] == "fwd") & (ok.batch_size == 16), "median_ms"
    ].item() == pytest.approx(6.0)

    failed = frame[frame.status == "failed"]
    assert len(failed) == 1
    assert failed["error"].item() == "ValueError: groups=7 does not divide 64"
    assert failed["overrides"].item() == "norm=gn norm.groups=7"
    assert failed["kind"].item() == "speed"  # from the job's Hydra config, though it wrote no rows

    missing = frame[frame.status == "missing"]
    assert missing["job"].tolist() == ["9"] and "interrupted" in missing["error"].item()
    assert frame["job"].drop_duplicates().tolist() == [str(i) for i in range(10)]  # natural order


def test_read_sweep_tolerates_broken_files(tmp_path):
    sweep = accuracy_sweep(tmp_path / "s")
    (sweep / "0" / "rows.csv").write_text("")  # empty
    (sweep / "1" / "rows.csv").write_text('norm,impl\n"bn,native\n')  # unterminated quote
    (sweep / "2" / "rows.csv").unlink()
    (sweep / "2" / "failure.json").write_text("{not json")
    frame = results.read_sweep(sweep)
    status = frame.drop_duplicates("job").set_index("job")["status"]
    assert status["0"] == "empty" and status["1"] == "unreadable" and status["2"] == "failed"
    assert (status.drop(["0", "1", "2"]) == "ok").all()
    assert "unreadable failure.json" in frame.loc[frame.job == "2", "error"].item()


def test_read_run_dir_and_empty_dir(tmp_path):
    run = tmp_path / "run"
    results.write_rows(run, accuracy_rows("gn", 4, 0))
    frame = results.read_sweep(run)
    assert len(frame) == 1 and frame["job"].item() == "." and frame["test_acc"].item() == made_acc("gn", 4, 0)
    (tmp_path / "empty").mkdir()
    assert results.read_sweep(tmp_path / "empty").empty
    with pytest.raises(FileNotFoundError):
        results.read_sweep(tmp_path / "nope")


def test_summary_round_trips(tmp_path):
    speed = speed_sweep(tmp_path / "speed", failures={"norm=gn norm.groups=7": "bad groups"})
    acc = accuracy_sweep(tmp_path / "acc", missing=1)
    frame = results.read([speed, acc])
    assert set(frame["kind"]) == {"speed", "accuracy"}
    assert set(frame["input"]) == {str(speed), str(acc)}
    csv, parquet = results.write_summary(frame, tmp_path / "out")
    back_csv, back_pq = pd.read_csv(csv), pd.read_parquet(parquet)
    assert len(back_csv) == len(back_pq) == len(frame)
    assert list(back_pq.columns) == list(back_csv.columns) == list(schema.typed(frame).columns)
    assert back_pq["median_ms"].sum() == pytest.approx(frame["median_ms"].sum())
    assert not list((tmp_path / "out").glob(".*tmp"))  # nothing half-written left


def test_atomic_write_leaves_old_file_on_failure(tmp_path, monkeypatch):
    path = results.atomic_write_bytes(tmp_path / "x.csv", b"old")

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(results.os, "replace", boom)
    with pytest.raises(OSError):
        results.atomic_write_bytes(path, b"new")
    assert path.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["x.csv"]


def test_run_info_and_git_commit(tmp_path):
    info = provenance.run_info(["/usr/bin/normbench-speed", "-m", "norm=bn,gn"], app="speed")
    assert info["command"] == "normbench-speed -m norm=bn,gn" and info["app"] == "speed"
    assert info["versions"]["torch"] and info["date"].endswith("+00:00")
    assert provenance.git_commit(tmp_path) is None  # not a repository: no commit, no crash
    sweep = speed_sweep(tmp_path / "s")
    rebuilt = provenance.read_run_info(sweep)  # no run.json: rebuilt from multirun.yaml
    assert rebuilt["command"] == "normbench-speed -m norm=bn,gn"


# ------------------------------------------------------------------------------- pytest-benchmark JSON

BENCH_FILE = """
import time
import pytest

@pytest.mark.parametrize("impl", ["reference", "native"])
def test_norm(benchmark, impl):
    benchmark.group = "bn"
    benchmark.extra_info.update(norm="bn", impl=impl, **{"pass": "fwd"}, shape="(8, 16, 4, 4)",
                                dtype="float32", layout="contiguous", bytes=8_000_000, peak_gbps=10.0)
    benchmark.pedantic(time.sleep, args=(0.002 if impl == "reference" else 0.001,), rounds=5, iterations=1)
"""


@pytest.fixture(scope="module")
def bench_json(tmp_path_factory) -> Path:
    """A JSON file from a real (tiny) pytest-benchmark run (made once per test session)."""
    d = tmp_path_factory.getbasetemp() / "tiny-bench"
    out = d / "bench.json"
    if out.is_file():
        return out
    d.mkdir(exist_ok=True)
    (d / "test_tiny_bench.py").write_text(textwrap.dedent(BENCH_FILE))
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "--benchmark-only",
            f"--benchmark-json={out}",
            "-o",
            "addopts=",
            "--rootdir",
            str(d),
            str(d / "test_tiny_bench.py"),
        ],
        cwd=d,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return out


def test_benchmark_json_becomes_speed_rows(bench_json):
    raw = json.loads(bench_json.read_text())
    frame = benchmark_json.read_benchmark_json(bench_json)
    assert len(frame) == 2 and set(frame["status"]) == {"ok"} and set(frame["kind"]) == {"speed"}
    assert list(frame.columns[: len(schema.META_COLUMNS) - 1]) == schema.META_COLUMNS[:-1]
    by_impl = frame.set_index("impl")
    for bench in raw["benchmarks"]:
        row = by_impl.loc[bench["params"]["impl"]]
        assert row["median_ms"] == pytest.approx(bench["stats"]["median"] * 1e3)
        assert row["min_ms"] == pytest.approx(bench["stats"]["min"] * 1e3)
        assert row["gbps"] == pytest.approx(8e6 / bench["stats"]["median"] / 1e9)  # from the median
        assert row["pct_of_peak"] == pytest.approx(10 * row["gbps"])
        assert row["norm"] == "bn" and row["pass"] == "fwd" and row["batch_size"] == 8
    assert 1.0 < by_impl.loc["native", "median_ms"] < by_impl.loc["reference", "median_ms"]
    assert frame["device"].eq("cpu").all()


def test_benchmark_json_that_is_not_one(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"hello": 1}')
    with pytest.raises(ValueError, match="not a pytest-benchmark JSON"):
        benchmark_json.read_benchmark_json(bad)
    minimal = tmp_path / "minimal.json"  # no extra_info, no params: rows still come out
    minimal.write_text(json.dumps({"benchmarks": [{"name": "test_x", "stats": {"median": 0.5}}]}))
    frame = benchmark_json.read_benchmark_json(minimal)
    assert frame["median_ms"].item() == 500.0 and frame["job"].item() == "test_x"
