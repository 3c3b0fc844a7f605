"""Tidy rows: every job writes its own `rows.csv`; a failed job writes `failure.json` instead.

One schema for everything a report reads (`normbench.io.schema.SCHEMA`, documented in docs/schema.md): a row per
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
`read` takes sweeps, run and report directories and pytest-benchmark JSON files
(`normbench.io.benchmark_json`) alike; what made them is `normbench.io.provenance`'s. `summary.csv`
and `summary.parquet` always hold every column of `SCHEMA` with its type (`read_summary` reads either
back with the same dtypes).
"""

from __future__ import annotations

import io
import json
import os
import re
import traceback
from collections.abc import Iterable
from pathlib import Path

import pandas as pd

from normbench.errors import Unsupported, UsageError
from normbench.io.benchmark_json import read_benchmark_json
from normbench.io.provenance import RUN_FILE, load_yaml
from normbench.io.schema import RENAMED, SCHEMA, SCHEMA_VERSION, TEXT_COLUMNS, concat, plain, typed

ROWS_FILE = "rows.csv"
FAILURE_FILE = "failure.json"
SUMMARY_CSV = "summary.csv"
SUMMARY_PARQUET = "summary.parquet"
APP_KINDS = ("speed", "accuracy")  # a Hydra app's config name is the kind of rows it writes


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
    rows = [{**row, "schema_version": SCHEMA_VERSION} for row in rows]
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


def _app_kind(root: Path, job: Path) -> str | None:
    """`speed` or `accuracy`, from the Hydra config the job or sweep recorded."""
    for path in (job / ".hydra" / "hydra.yaml", root / "multirun.yaml"):
        cfg = load_yaml(path) if path.is_file() else None
        if isinstance(cfg, dict):
            name = (cfg.get("hydra") or {}).get("job", {}).get("config_name")
            if name in APP_KINDS:
                return name
    return None


def _job_overrides(job: Path, failure: dict | None) -> str:
    overrides = load_yaml(job / ".hydra" / "overrides.yaml") if (job / ".hydra").is_dir() else None
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
    # A row may say it was skipped (a pass whose CUDA-graph capture failed); the others are measurements.
    rows["status"] = rows["status"].fillna("ok") if "status" in rows else "ok"
    rows["error"] = rows["error"].where(rows["status"] != "ok", None) if "error" in rows else None
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
    return concat(frames + [_not_started(root, frames)])


def planned_jobs(root: Path) -> list[list[str]] | None:
    """The overrides of every job the sweep planned, as `run.json` recorded them (None: not recorded)."""
    try:
        jobs = json.loads((root / RUN_FILE).read_text()).get("jobs")
    except (OSError, ValueError, AttributeError, RecursionError):
        return None
    lists = isinstance(jobs, list) and all(isinstance(j, list) for j in jobs)
    return jobs if lists else None  # a hand-edited or broken list: no jobs known to be missing


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


def read(paths: Iterable[str | Path]) -> pd.DataFrame:
    """Rows from sweep, run and report directories and pytest-benchmark JSON files, in one frame.

    Each row's `input` says which path it came from (a report directory's rows keep theirs), so
    measurements from different inputs are never pooled; the same input given twice is refused.
    """
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
    return concat(frames)


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
