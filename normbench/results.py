"""Tidy rows: every job writes its own `rows.csv`; a failed job writes `failure.json` instead.

One schema for everything a report reads (`SCHEMA`, documented in docs/schema.md): a row per
measurement (speed, benchmark) or per training run (accuracy), plus the columns that say where it came
from:

- `kind`: `speed`, `accuracy` or `benchmark` (a pytest-benchmark entry that is not one norm's pass);
- `status`: `ok` (a measurement), `failed` (the job raised: `error` holds its line), `skipped` (the
  implementation cannot run that combination, e.g. a norm without `native`: `error` says why), `missing` (the job
  started but left no result: interrupted or still running), `not_started` (planned by the sweep, never
  started), `unreadable` (a result file that cannot be parsed or was cut short), `empty` (no rows);
- `error`, `sweep` (the input's name), `job` (the job's directory within it), `overrides` (the job's
  command-line overrides, space separated), `source` (the file read), `input` (the sweep, run, report
  or JSON file the row came from: rows from different inputs are never pooled).

Files are written to a temporary name and renamed, so a job that dies mid-write leaves nothing that
looks like a result. `read_sweep` tolerates a sweep that was interrupted or had failing jobs;
`read_benchmark_json` turns a pytest-benchmark JSON file into rows of the same schema. `summary.csv`
and `summary.parquet` always hold every column of `SCHEMA` with its type (`read_summary` reads either
back with the same dtypes).
"""

from __future__ import annotations

import io
import json
import math
import os
import re
import traceback
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pandas as pd

from normbench.errors import Unsupported

ROWS_FILE = "rows.csv"
FAILURE_FILE = "failure.json"
SUMMARY_CSV = "summary.csv"
SUMMARY_PARQUET = "summary.parquet"
RUN_FILE = "run.json"  # what ran: written by the sweep callback at multirun start

# The documented columns: name -> (type, unit, meaning). summary.csv and summary.parquet always hold
# all of them in this order (then any extra column an input brought), so two sweeps' summaries line up.
SCHEMA: dict[str, tuple[str, str, str]] = {
    # provenance: every row
    "kind": ("str", "", "speed, accuracy or benchmark (a pytest-benchmark entry that is not one norm's pass)"),
    "status": ("str", "", "ok, failed, skipped, missing, not_started, unreadable or empty"),
    "error": ("str", "", "why a job left no measurement (its error line)"),
    "sweep": ("str", "", "name of the sweep directory, run directory or JSON file"),
    "job": ("str", "", "the job's directory within its sweep (pytest-benchmark: the test's full name)"),
    "overrides": ("str", "", "the job's command-line overrides, space separated"),
    "source": ("str", "", "the file the row was read from"),
    "input": ("str", "", "the sweep, run, report or JSON file the row came from (never pooled across)"),
    # what was measured
    "norm": ("str", "", "norm name: bn, ln, in, gn, none"),
    "impl": ("str", "", "implementation: reference, native, compiled, triton"),
    "pass": (
        "str",
        "",
        "speed: fwd, bwd, fwdbwd; step (a model's forward + backward) or wrapper (the module's own cost)",
    ),
    "batch_size": ("int", "samples", "speed: N of the input; accuracy: K, samples per normalization batch"),
    "channels": ("int", "", "speed: C of the input"),
    "spatial": ("str", "", "speed: spatial sizes, e.g. 28x28"),
    "shape": ("str", "", "speed: the input's shape, e.g. 8x64x28x28"),
    "dtype": ("str", "", "speed: float32, float16 or bfloat16"),
    "layout": ("str", "", "speed: contiguous or channels_last"),
    "groups": ("int", "", "gn: channel groups"),
    "eps": ("float", "", "the norm's eps"),
    "momentum": ("float", "", "bn: weight of the new batch in the running statistics"),
    "affine": ("bool", "", "the norm has a per-channel weight and bias"),
    "track_running_stats": ("bool", "", "bn: keeps running statistics"),
    "virtual_batch": ("int", "samples", "bn: samples per statistic"),
    "device": ("str", "", "torch device, e.g. cpu or cuda:0"),
    "device_name": ("str", "", "the GPU's or CPU's model"),
    "threads": ("int", "", "CPU intra-op threads"),
    "seed": ("int", "", "random seed"),
    # speed
    "median_ms": ("float", "ms", "median time per call (CPU: over blocks of calls, each block's time / its calls)"),
    "p20_ms": ("float", "ms", "20th percentile of the time per call"),
    "p80_ms": ("float", "ms", "80th percentile of the time per call"),
    "repeats": ("int", "calls", "calls timed (CPU: in all blocks; empty where triton's do_bench does not say)"),
    "timer": (
        "str",
        "",
        "what timed them, e.g. triton.testing.do_bench, cuda events, torch.utils.benchmark.Timer.blocked_autorange",
    ),
    "cuda_graph": ("bool", "", "speed.cuda_graph: the time is of a captured CUDA graph's replay"),
    "bytes": ("int", "bytes", "the fewest bytes the pass must move (docs/speed.md)"),
    "gbps": ("float", "GB/s (1e9 bytes/s)", "bytes / median time"),
    "peak_gbps": ("float", "GB/s (1e9 bytes/s)", "the device's measured (or given) copy bandwidth"),
    "peak_method": ("str", "", "how peak_gbps was found"),
    "peak_copy_ms": ("float", "ms", "median time of the copy that measured peak_gbps"),
    "pct_of_peak": ("float", "%", "gbps / peak_gbps x 100: % of the roofline"),
    "peak_mem_mib": ("float", "MiB (2**20 bytes)", "CUDA memory one call allocates beyond its inputs; NaN on CPU"),
    "compile_s": ("float", "s", "impl=compiled: wall time of the first call, which compiles"),
    "layers": ("int", "", "speed, shape=model: the model's norm layers the row stands for (step: all of them)"),
    "layer_names": ("str", "", "speed, shape=model: those layers' module names, space separated"),
    "norm_ms": ("float", "ms", "pass step: the norm layers' time in one step, sum of fwdbwd median x layers"),
    "norm_share": ("float", "%", "pass step: norm_ms / the step's median_ms x 100"),
    "torch_version": ("str", "", "torch version"),
    "triton_version": ("str", "", "triton version, if installed"),
    # accuracy
    "dataset": ("str", "", "dataset name"),
    "model": ("str", "", "model name (speed, shape=model: the _target_'s last part, e.g. resnet20)"),
    "norm_position": ("str", "", "norm before or after the activation"),
    "norm_options": ("str", "", "the model's per-norm options, key=value"),
    "protocol": ("str", "", "what a sweep over K holds fixed: global_batch or workers"),
    "workers": ("int", "", "W: simulated data-parallel workers"),
    "global_batch": ("int", "samples", "K x W: samples per optimizer step"),
    "lr": ("float", "", "learning rate after linear scaling"),
    "epochs": ("int", "", "training epochs"),
    "steps": ("int", "", "optimizer steps"),
    "test_acc": ("float", "fraction in [0, 1]", "test accuracy, model in eval mode"),
    "test_acc_precise_bn": ("float", "fraction in [0, 1]", "bn: test accuracy with PreciseBN population statistics"),
    "test_acc_batch_stats": ("float", "fraction in [0, 1]", "bn: test accuracy with batch statistics at K"),
    "precise_bn_samples": ("int", "samples", "bn: training samples PreciseBN averaged over"),
    "train_loss": ("float", "", "mean train loss of the last epoch"),
    "train_acc": ("float", "fraction in [0, 1]", "train accuracy of the last epoch"),
    "reused_from": ("str", "", "the job whose training this row reuses (K-invariant norms); empty if trained here"),
    "wall_s": ("float", "s", "wall time of the run"),
    "samples_per_s": ("float", "samples/s", "training throughput"),
    # pytest-benchmark
    "benchmark": ("str", "", "the benchmark's name, parameters included"),
    "group": ("str", "", "the benchmark's group"),
    "min_ms": ("float", "ms", "fastest round"),
    "max_ms": ("float", "ms", "slowest round"),
    "mean_ms": ("float", "ms", "mean of the rounds"),
    "stddev_ms": ("float", "ms", "standard deviation of the rounds"),
    "q1_ms": ("float", "ms", "first quartile of the rounds"),
    "q3_ms": ("float", "ms", "third quartile of the rounds"),
    "rounds": ("int", "", "rounds timed"),
    "iterations": ("int", "", "calls per round"),
}
META_COLUMNS = ["kind", "status", "error", "sweep", "job", "overrides", "source", "input"]
SPEED_COLUMNS = [
    "norm",
    "impl",
    "pass",
    "batch_size",
    "shape",
    "dtype",
    "layout",
    "groups",
    "device",
    "device_name",
    "median_ms",
    "p20_ms",
    "p80_ms",
    "bytes",
    "gbps",
    "peak_gbps",
    "pct_of_peak",
    "peak_mem_mib",
    "compile_s",
    "torch_version",
    "triton_version",
]
ACCURACY_COLUMNS = [
    "norm",
    "impl",
    "dataset",
    "model",
    "protocol",
    "batch_size",
    "workers",
    "global_batch",
    "lr",
    "epochs",
    "steps",
    "seed",
    "test_acc",
    "test_acc_precise_bn",
    "test_acc_batch_stats",
    "precise_bn_samples",
    "train_loss",
    "reused_from",
    "wall_s",
    "samples_per_s",
    "device",
    "device_name",
    "torch_version",
]
RENAMED = {"peak_mem_mb": "peak_mem_mib"}  # older rows.csv files: the values were MiB all along
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
    """Record why a job failed (or was skipped, for `Unsupported`): the error line a report shows, and the
    traceback for the curious."""
    path = Path(job_dir) / FAILURE_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {
        "status": "skipped" if isinstance(exc, Unsupported) else "failed",
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
        return pd.DataFrame(
            [{"kind": kind, "status": status, "error": error, **meta, "source": str(source) if source else str(job)}]
        )

    # A job re-run in the same directory may hold both files: the newer one is the job's outcome.
    rows_newer = rows_path.is_file() and (failure is None or rows_path.stat().st_mtime >= failure_path.stat().st_mtime)
    if failure is not None and not rows_newer:
        status = "skipped" if failure.get("status") == "skipped" else "failed"
        return single(status, str(failure.get("error") or "unknown error"), failure_path)
    if not rows_path.is_file():
        return single("missing", f"no {ROWS_FILE} or {FAILURE_FILE}: the job was interrupted or is still running", None)
    try:
        cut = truncation(rows_path)
        if cut:
            return single("unreadable", f"{ROWS_FILE} is cut short ({cut}): the job's result is incomplete", rows_path)
        rows = pd.read_csv(rows_path, dtype=TEXT_COLUMNS).rename(columns=RENAMED)
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


def truncation(path: Path) -> str | None:
    """Why a CSV file written by pandas is incomplete (no final newline, a row with fewer fields than
    the header), or None. pandas itself pads a short last row with NaN and reads on."""
    import csv

    text = path.read_text()
    if not text.strip():
        return None  # empty: its own status
    if not text.endswith("\n"):
        return "no final newline"
    lines = list(csv.reader(io.StringIO(text)))
    width = len(lines[0])
    for number, fields in enumerate(lines[1:], start=2):
        if fields and len(fields) != width:
            return f"line {number} has {len(fields)} of {width} fields"
    return None


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
    jobs = find_jobs(root)
    if not jobs and (root / SUMMARY_CSV).is_file():
        # A report directory (`normbench-report A B --out C`): its summary is the data; its rows keep
        # the inputs they came from.
        return plain(read_summary(root / SUMMARY_CSV))
    frames = [_read_job(root, job) for job in jobs]
    return _concat(frames + [_not_started(root, frames)])


def planned_jobs(root: Path) -> list[list[str]] | None:
    """The overrides of every job the sweep planned, as `run.json` recorded them (None: not recorded)."""
    try:
        jobs = json.loads((root / RUN_FILE).read_text()).get("jobs")
    except (OSError, ValueError, AttributeError):
        return None
    return jobs if isinstance(jobs, list) else None


def _not_started(root: Path, frames: list[pd.DataFrame]) -> pd.DataFrame:
    """One `not_started` row per planned job that has no directory (matched by its overrides)."""
    planned = planned_jobs(root)
    if not planned:
        return pd.DataFrame()
    started = [sorted(str(f["overrides"].iloc[0]).split()) for f in frames if len(f)]
    kind = _app_kind(root, root)
    rows = []
    for overrides in planned:
        key = sorted(str(o) for o in overrides)
        if key in started:
            started.remove(key)
            continue
        rows.append(
            {
                "kind": kind,
                "status": "not_started",
                "error": "planned, but the sweep ended before it started",
                "sweep": root.name,
                "job": None,
                "overrides": " ".join(map(str, overrides)),
                "source": str(root / RUN_FILE),
            }
        )
    return pd.DataFrame(rows)


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
        stats = bench.get("stats") if isinstance(bench, dict) else None
        if not isinstance(stats, dict) or not isinstance(stats.get("median"), (int, float)):
            name = bench.get("fullname") or bench.get("name") if isinstance(bench, dict) else bench
            raise ValueError(
                f"{path}: benchmark {name!r} has no stats.median; normbench reads the JSON that "
                "`pytest --benchmark-json FILE` writes (pytest-benchmark >= 3.0)"
            )
        extra = {k: v for k, v in (bench.get("extra_info") or {}).items() if _scalar(v)}
        params = {k: (v if _scalar(v) else str(v)) for k, v in (bench.get("params") or {}).items()}
        row: dict[str, Any] = {
            "kind": "benchmark",  # until extra_info says it is one norm's pass (below)
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
        if all(row.get(k) is not None for k in ("norm", "impl", "pass")):
            row["kind"] = "speed"
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
        if row["kind"] == "speed" and "batch_size" not in row and isinstance(row.get("shape"), str):
            first = re.match(r"\D*(\d+)", row["shape"])
            if first:
                row["batch_size"] = int(first.group(1))
        row.setdefault("device", "cpu")
        if row["device"] == "cpu" and cpu:
            row.setdefault("device_name", cpu)
        rows.append(row)
    if not rows:
        empty = {
            "kind": "speed",
            "status": "empty",
            "error": "no benchmarks in file",
            "sweep": path.stem,
            "job": ".",
            "overrides": "",
            "source": str(path),
        }
        return _concat([pd.DataFrame([empty])])
    return _concat([pd.DataFrame(rows)])


def read(paths: Iterable[str | Path]) -> pd.DataFrame:
    """Rows from sweep, run and report directories and pytest-benchmark JSON files, in one frame.

    Each row's `input` says which path it came from (a report directory's rows keep theirs), so
    measurements from different inputs are never pooled; the same input given twice is refused.
    """
    from normbench.errors import UsageError

    paths = [Path(p) for p in paths]
    seen: dict[Path, Path] = {}
    for p in paths:
        if p.resolve() in seen:
            raise UsageError(f"{p} is given twice (also as {seen[p.resolve()]}): each input counts once")
        seen[p.resolve()] = p
    frames = []
    for p in paths:
        frame = read_benchmark_json(p) if p.is_file() else read_sweep(p)
        frame["input"] = frame["input"].where(frame["input"].notna(), str(p)) if len(frame) else str(p)
        frames.append(frame)
    return _concat(frames)


def _extra_for_parquet(column: pd.Series) -> pd.Series:
    """An undocumented object column pyarrow can store: mixed types become strings."""
    kinds = {type(v) for v in column.dropna()}
    if len(kinds) > 1 or (kinds and not kinds <= {str, bool, int, float}):
        return column.map(lambda v: v if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v}")
    return column


def _as_bool(value: Any) -> Any:
    if isinstance(value, str):
        return {"true": True, "false": False}.get(value.strip().lower(), pd.NA)
    return pd.NA if pd.isna(value) else bool(value)


def typed(frame: pd.DataFrame) -> pd.DataFrame:
    """Every `SCHEMA` column (missing ones empty), in order, then the extras, with the schema's types as
    pandas nullable dtypes: str -> string, int -> Int64, float -> float64, bool -> boolean."""
    out = frame.rename(columns=RENAMED).copy()
    for col, (kind, _, _) in SCHEMA.items():
        values = out[col] if col in out else pd.Series([pd.NA] * len(out), index=out.index, dtype=object)
        if kind == "str":
            values = values.astype(object).where(values.notna(), None).map(lambda v: v if v is None else str(v))
            out[col] = values.astype("string")
        elif kind == "bool":
            out[col] = values.map(_as_bool).astype("boolean")
        else:
            numbers = pd.to_numeric(values, errors="coerce").astype("float64")
            integral = kind == "int" and bool((numbers.dropna() % 1 == 0).all())
            out[col] = numbers.astype("Int64") if integral else numbers
    extras = [c for c in out.columns if c not in SCHEMA]
    out = out[list(SCHEMA) + extras]
    for col in extras:
        if out[col].dtype == object:
            out[col] = _extra_for_parquet(out[col])
    return out.reset_index(drop=True)


def plain(frame: pd.DataFrame) -> pd.DataFrame:
    """A typed frame with numpy dtypes again (what the report's code and plots expect)."""
    out = frame.copy()
    for col in out.columns:
        dtype = str(out[col].dtype)
        if dtype == "Int64":
            out[col] = out[col].astype("float64") if out[col].isna().any() else out[col].astype("int64")
        elif dtype in ("string", "boolean"):
            out[col] = out[col].astype(object).where(out[col].notna(), None)
    return out


def write_summary(frame: pd.DataFrame, out_dir: str | Path) -> list[Path]:
    """`summary.csv` and `summary.parquet` (one row per measurement or job outcome) in `out_dir`: every
    `SCHEMA` column, always, with the same types in both (read them back with `read_summary`)."""
    out_dir = Path(out_dir)
    frame = typed(frame)
    csv = atomic_write_bytes(out_dir / SUMMARY_CSV, frame.to_csv(index=False).encode())
    buf = io.BytesIO()
    frame.to_parquet(buf, index=False)
    parquet = atomic_write_bytes(out_dir / SUMMARY_PARQUET, buf.getvalue())
    return [csv, parquet]


def read_summary(path: str | Path) -> pd.DataFrame:
    """`summary.csv` or `summary.parquet` with the schema's types (the same frame from either)."""
    path = Path(path)
    if path.suffix == ".parquet":
        return typed(pd.read_parquet(path))
    strings = {c: str for c, (kind, _, _) in SCHEMA.items() if kind in ("str", "bool")}
    return typed(pd.read_csv(path, dtype=strings, keep_default_na=False, na_values=[""]))


# ------------------------------------------------------------------------------------------- provenance


def git_commit(where: str | Path | None = None) -> str | None:
    """`git rev-parse HEAD` of the checkout holding `where` (default: this package), `+dirty` when
    it has uncommitted changes to tracked files outside results/ (what normbench writes is no change to
    the code that wrote it); None where there is no git or no repository."""
    import subprocess

    cwd = Path(where) if where else Path(__file__).resolve().parent
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10, check=False
        )
        if head.returncode != 0:
            return None
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "--", ":/", ":!/results"],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
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
