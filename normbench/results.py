"""Tidy rows: every job writes its own `rows.csv`; a failed job writes `failure.json` instead.

One schema for everything a report reads: a row per measurement (speed) or per training run
(accuracy), with the columns the job wrote, plus the columns that say where it came from:

- `kind`: `speed` or `accuracy`;
- `status`: `ok` (a measurement), `failed` (the job raised: `error` holds its line), `missing` (the job
  started but left no result: interrupted or still running), `unreadable` (a result file that cannot
  be parsed), `empty` (the job returned no rows);
- `error`, `sweep` (the input's name), `job` (the job's directory within it), `overrides` (the job's
  command-line overrides, space separated), `source` (the file read), `input` (the path given to
  `read`).

Files are written to a temporary name and renamed, so a job that dies mid-write leaves nothing that
looks like a result. `read_sweep` tolerates a sweep that was interrupted or had failing jobs;
`read_benchmark_json` turns a pytest-benchmark JSON file into rows of the same schema.
"""

from __future__ import annotations

import json
import math
import os
import re
import traceback
from pathlib import Path
from typing import Any, Iterable

import pandas as pd

ROWS_FILE = "rows.csv"
FAILURE_FILE = "failure.json"
SUMMARY_CSV = "summary.csv"
SUMMARY_PARQUET = "summary.parquet"
RUN_FILE = "run.json"  # what ran: written by the sweep callback at multirun start

META_COLUMNS = ["kind", "status", "error", "sweep", "job", "overrides", "source", "input"]
SPEED_COLUMNS = [
    "norm", "impl", "pass", "batch_size", "shape", "dtype", "layout", "groups", "device", "device_name",
    "median_ms", "p20_ms", "p80_ms", "bytes", "gbps", "peak_gbps", "pct_of_peak", "peak_mem_mb",
    "compile_s", "torch_version", "triton_version",
]  # fmt: skip
ACCURACY_COLUMNS = [
    "norm", "impl", "dataset", "model", "protocol", "batch_size", "workers", "global_batch", "lr", "epochs",
    "steps", "seed", "test_acc", "test_acc_precise_bn", "test_acc_batch_stats", "precise_bn_samples",
    "train_loss", "reused_from", "wall_s", "samples_per_s", "device", "device_name", "torch_version",
]  # fmt: skip
# Columns that hold names even when they look like numbers (a job directory `3`, not 3.0).
TEXT_COLUMNS = {"reused_from": str}
# Config name of the Hydra app -> the kind of rows it writes.
KIND_OF_APP = {"speed": "speed", "accuracy": "accuracy"}


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write `data` to `path` through a temporary file and a rename: readers see all of it or nothing."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_rows(job_dir: str | Path, rows: list[dict]) -> Path:
    """Write one job's rows (one dict per measurement) as `rows.csv` in its output directory."""
    path = Path(job_dir) / ROWS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, pd.DataFrame(rows).to_csv(index=False).encode())
    return path


def write_failure(job_dir: str | Path, exc: BaseException, overrides: list[str] | None = None) -> Path:
    """Record why a job failed: the error line a report shows, and the traceback for the curious."""
    path = Path(job_dir) / FAILURE_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {
        "error": f"{type(exc).__name__}: {exc}".splitlines()[0],
        "overrides": list(overrides or []),
        "traceback": "".join(traceback.format_exception(exc)),
    }
    atomic_write_bytes(path, json.dumps(record, indent=2).encode())
    return path


# ---------------------------------------------------------------------------------------------- reading


def _natural_key(path: Path) -> list:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", path.as_posix())]


def _is_job_dir(path: Path) -> bool:
    return (path / ROWS_FILE).is_file() or (path / FAILURE_FILE).is_file() or (path / ".hydra").is_dir()


def find_jobs(root: str | Path) -> list[Path]:
    """The job directories under `root` (itself when it is one): those with rows, a failure or `.hydra/`."""
    root = Path(root)
    if _is_job_dir(root):
        return [root]
    found = {p.parent for name in (ROWS_FILE, FAILURE_FILE) for p in root.rglob(name)}
    found |= {p.parent for p in root.rglob(".hydra") if p.is_dir()}
    return sorted(found, key=lambda p: _natural_key(p.relative_to(root)))


def _load_yaml(path: Path) -> Any:
    import yaml

    try:
        return yaml.safe_load(path.read_text())
    except (OSError, ValueError, yaml.YAMLError):
        return None


def _app_kind(root: Path, job: Path) -> str | None:
    """`speed` or `accuracy`, from the Hydra config the job or sweep recorded."""
    for path in (job / ".hydra" / "hydra.yaml", root / "multirun.yaml"):
        cfg = _load_yaml(path) if path.is_file() else None
        if isinstance(cfg, dict):
            name = (cfg.get("hydra") or {}).get("job", {}).get("config_name")
            if name in KIND_OF_APP:
                return KIND_OF_APP[name]
    return None


def _job_overrides(job: Path, failure: dict | None) -> str:
    overrides = _load_yaml(job / ".hydra" / "overrides.yaml") if (job / ".hydra").is_dir() else None
    if not isinstance(overrides, list) and failure:
        overrides = failure.get("overrides")
    return " ".join(str(o) for o in overrides) if isinstance(overrides, list) else ""


def _read_job(root: Path, job: Path) -> pd.DataFrame:
    rel = job.relative_to(root).as_posix() if job != root else "."
    meta = {"sweep": root.name, "job": rel}
    rows_path, failure_path = job / ROWS_FILE, job / FAILURE_FILE
    failure = None
    if failure_path.is_file():
        try:
            failure = json.loads(failure_path.read_text())
        except (OSError, ValueError) as exc:
            failure = {"error": f"unreadable {FAILURE_FILE}: {exc}"}
    meta["overrides"] = _job_overrides(job, failure)
    kind = _app_kind(root, job)

    def single(status: str, error: str | None, source: Path | None) -> pd.DataFrame:
        return pd.DataFrame([{"kind": kind, "status": status, "error": error, **meta,
                              "source": str(source) if source else str(job)}])  # fmt: skip

    # A job re-run in the same directory may hold both files: the newer one is the job's outcome.
    rows_newer = rows_path.is_file() and (
        failure is None or rows_path.stat().st_mtime >= failure_path.stat().st_mtime
    )
    if failure is not None and not rows_newer:
        return single("failed", str(failure.get("error") or "unknown error"), failure_path)
    if not rows_path.is_file():
        return single("missing", f"no {ROWS_FILE} or {FAILURE_FILE}: the job was interrupted or is still running", None)
    try:
        rows = pd.read_csv(rows_path, dtype=TEXT_COLUMNS)
    except pd.errors.EmptyDataError:
        return single("empty", f"{ROWS_FILE} holds no rows", rows_path)
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        return single("unreadable", f"unreadable {ROWS_FILE}: {str(exc).splitlines()[0]}", rows_path)
    if rows.empty:
        return single("empty", f"{ROWS_FILE} holds no rows", rows_path)
    if "kind" not in rows:
        rows.insert(0, "kind", kind)
    else:
        rows["kind"] = rows["kind"].fillna(kind) if kind else rows["kind"]
    rows["status"] = "ok"
    rows["error"] = None
    for key, value in meta.items():
        rows[key] = value
    rows["source"] = str(rows_path)
    return rows


def tidy(frame: pd.DataFrame) -> pd.DataFrame:
    """Order columns (provenance, then the speed and accuracy schema, then anything else)."""
    for col in META_COLUMNS:
        if col not in frame:
            frame[col] = None
    known = META_COLUMNS + [c for c in SPEED_COLUMNS + ACCURACY_COLUMNS if c in frame]
    known = list(dict.fromkeys(known))
    return frame[known + [c for c in frame.columns if c not in known]].reset_index(drop=True)


def _concat(frames: list[pd.DataFrame]) -> pd.DataFrame:
    frames = [f.dropna(axis=1, how="all") if len(f) else f for f in frames]
    frames = [f for f in frames if len(f)]
    if not frames:
        return tidy(pd.DataFrame())
    return tidy(pd.concat(frames, ignore_index=True, sort=False))


def read_sweep(path: str | Path) -> pd.DataFrame:
    """Every job of a sweep (or one run directory) as tidy rows, failed and interrupted jobs included.

    A failed job is one row with `status="failed"` and its error line; a job with no result file is one
    row with `status="missing"`; a result file that cannot be parsed is `status="unreadable"`.
    """
    root = Path(path)
    if not root.is_dir():
        raise FileNotFoundError(f"no such sweep directory: {root}")
    return _concat([_read_job(root, job) for job in find_jobs(root)])


def _ms(seconds: Any) -> float:
    try:
        return float(seconds) * 1e3
    except (TypeError, ValueError):
        return math.nan


def _scalar(value: Any) -> bool:
    return value is None or isinstance(value, (str, int, float, bool))


def read_benchmark_json(path: str | Path) -> pd.DataFrame:
    """A pytest-benchmark JSON file (`--benchmark-json`) as rows of the speed schema.

    Each benchmark's `extra_info` (norm, impl, pass, shape, dtype, bytes, ...) and its `params` become
    columns; its stats (seconds) become `median_ms`, `min_ms`, `mean_ms`, `stddev_ms`, `q1_ms`,
    `q3_ms` (pytest-benchmark keeps quartiles, not the 20th/80th percentiles). Where the row knows its
    `bytes`, `gbps` is recomputed from the median so the two columns always agree, and `pct_of_peak`
    from `peak_gbps` when given.
    """
    path = Path(path)
    data = json.loads(path.read_text())
    if not isinstance(data, dict) or not isinstance(data.get("benchmarks"), list):
        raise ValueError(f"{path} is not a pytest-benchmark JSON file (no 'benchmarks' list)")
    machine = data.get("machine_info") or {}
    cpu = (machine.get("cpu") or {}).get("brand_raw") if isinstance(machine.get("cpu"), dict) else None
    rows = []
    for bench in data["benchmarks"]:
        stats = bench.get("stats") or {}
        extra = {k: v for k, v in (bench.get("extra_info") or {}).items() if _scalar(v)}
        params = {k: (v if _scalar(v) else str(v)) for k, v in (bench.get("params") or {}).items()}
        row: dict[str, Any] = {
            "kind": "speed",
            "status": "ok",
            "error": None,
            "sweep": path.stem,
            "job": bench.get("fullname") or bench.get("name"),
            "overrides": bench.get("param") or "",
            "source": str(path),
            "benchmark": bench.get("name"),
            "group": bench.get("group"),
        }
        row.update(params)
        row.update(extra)
        for stat in ("median", "min", "max", "mean", "stddev", "q1", "q3"):
            if stat in stats:
                row[f"{stat}_ms"] = _ms(stats[stat])
        row["rounds"] = stats.get("rounds")
        row["iterations"] = stats.get("iterations")
        median_s = row.get("median_ms", math.nan) / 1e3
        try:
            nbytes = float(row["bytes"])
            if median_s > 0 and math.isfinite(nbytes):
                row["gbps"] = nbytes / median_s / 1e9
        except (KeyError, TypeError, ValueError):
            pass
        try:
            peak = float(row["peak_gbps"])
            if peak > 0 and "gbps" in row:
                row["pct_of_peak"] = 100.0 * float(row["gbps"]) / peak
        except (KeyError, TypeError, ValueError):
            pass
        if "batch_size" not in row and isinstance(row.get("shape"), str):
            first = re.match(r"\D*(\d+)", row["shape"])
            if first:
                row["batch_size"] = int(first.group(1))
        row.setdefault("device", "cpu")
        if row["device"] == "cpu" and cpu:
            row.setdefault("device_name", cpu)
        rows.append(row)
    if not rows:
        empty = {"kind": "speed", "status": "empty", "error": "no benchmarks in file", "sweep": path.stem, "job": ".",
                 "overrides": "", "source": str(path)}  # fmt: skip
        return _concat([pd.DataFrame([empty])])
    return _concat([pd.DataFrame(rows)])


def read(paths: Iterable[str | Path]) -> pd.DataFrame:
    """Rows from sweep directories, run directories and pytest-benchmark JSON files, in one frame."""
    frames = []
    for p in paths:
        p = Path(p)
        frame = read_benchmark_json(p) if p.is_file() else read_sweep(p)
        frames.append(frame.assign(input=str(p)))
    return _concat(frames)


def _for_parquet(frame: pd.DataFrame) -> pd.DataFrame:
    """Columns pyarrow can store: object columns mixing types become strings (missing stays missing)."""
    out = frame.copy()
    for col in out.columns:
        if out[col].dtype == object:
            kinds = {type(v) for v in out[col].dropna()}
            if len(kinds) > 1 or (kinds and not kinds <= {str, bool, int, float}):
                out[col] = out[col].map(lambda v: v if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v}")
    return out


def write_summary(frame: pd.DataFrame, out_dir: str | Path) -> list[Path]:
    """`summary.csv` and `summary.parquet` (one row per measurement or job outcome) in `out_dir`."""
    out_dir = Path(out_dir)
    csv = atomic_write_bytes(out_dir / SUMMARY_CSV, frame.to_csv(index=False).encode())
    import io

    buf = io.BytesIO()
    _for_parquet(frame).to_parquet(buf, index=False)
    parquet = atomic_write_bytes(out_dir / SUMMARY_PARQUET, buf.getvalue())
    return [csv, parquet]


# ------------------------------------------------------------------------------------------- provenance


def git_commit(where: str | Path | None = None) -> str | None:
    """`git rev-parse HEAD` of the checkout holding `where` (default: this package), `+dirty` when
    it has uncommitted changes to tracked files outside results/ (what normbench writes is no change to
    the code that wrote it); None where there is no git or no repository."""
    import subprocess

    cwd = Path(where) if where else Path(__file__).resolve().parent
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10)
        if head.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ":/", ":!/results"],
                               cwd=cwd, capture_output=True, text=True, timeout=10)  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    return head.stdout.strip() + ("+dirty" if dirty.returncode == 0 and dirty.stdout.strip() else "")


def versions() -> dict[str, str | None]:
    """Versions of what measures: python, normbench, torch, triton, hydra."""
    import platform
    from importlib import metadata

    out: dict[str, str | None] = {"python": platform.python_version()}
    for dist in ("normbench", "torch", "triton", "hydra-core"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = None
    return out


def run_info(argv: list[str] | None = None, **fields: Any) -> dict[str, Any]:
    """What is running now: the command, the date (UTC), the git commit, the host and the versions."""
    import datetime as dt
    import shlex
    import socket
    import sys

    argv = list(sys.argv if argv is None else argv)
    command = shlex.join([Path(argv[0]).name, *argv[1:]]) if argv else None
    return {
        "command": command,
        "cwd": os.getcwd(),
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "git_commit": git_commit(),
        "host": socket.gethostname(),
        "versions": versions(),
        **fields,
    }


def read_run_info(path: str | Path) -> dict[str, Any]:
    """What made the results at `path` (a sweep or run directory, or a pytest-benchmark JSON file).

    A sweep that normbench's callback saw has `run.json`; otherwise the command is rebuilt from the
    overrides Hydra recorded, and the rest is marked unknown.
    """
    import datetime as dt

    path = Path(path)
    info: dict[str, Any] = {"path": str(path), "name": path.stem if path.is_file() else path.name}
    if path.is_file():
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            return info
        commit = data.get("commit_info") or {}
        machine = data.get("machine_info") or {}
        info.update(
            command=f"pytest --benchmark-json {path.name} ...  (pytest-benchmark {data.get('version', '?')})",
            date=data.get("datetime"),
            git_commit=(commit.get("id") or None) and commit["id"] + ("+dirty" if commit.get("dirty") else ""),
            host=machine.get("node"),
            versions={"python": machine.get("python_version")},
        )
        return info
    if (path / RUN_FILE).is_file():
        try:
            info.update(json.loads((path / RUN_FILE).read_text()))
            return info
        except (OSError, ValueError):
            pass
    for name in ("multirun.yaml", ".hydra/hydra.yaml"):
        cfg = _load_yaml(path / name) if (path / name).is_file() else None
        if isinstance(cfg, dict) and isinstance(cfg.get("hydra"), dict):
            hydra = cfg["hydra"]
            app = (hydra.get("job") or {}).get("config_name")
            ov = hydra.get("overrides") or {}
            args = [*(ov.get("hydra") or []), *(ov.get("task") or [])]
            args = [a for a in args if not str(a).startswith("hydra.mode=")]
            multirun = name == "multirun.yaml"
            info["command"] = " ".join([f"normbench-{app}", *(["-m"] if multirun else []), *map(str, args)])
            info["date"] = dt.datetime.fromtimestamp((path / name).stat().st_mtime, dt.timezone.utc).isoformat(
                timespec="seconds"
            )
            break
    return info
