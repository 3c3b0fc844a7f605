"""Tidy rows: every job writes its own `rows.csv`; a failed job writes `failure.json` instead.

Files are written to a temporary name and renamed, so a job that dies mid-write leaves nothing that
looks like a result.
"""

from __future__ import annotations

import json
import os
import traceback
from pathlib import Path

import pandas as pd

ROWS_FILE = "rows.csv"
FAILURE_FILE = "failure.json"


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_rows(job_dir: str | Path, rows: list[dict]) -> Path:
    """Write one job's rows (one dict per measurement) as `rows.csv` in its output directory."""
    path = Path(job_dir) / ROWS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    _atomic_write(path, pd.DataFrame(rows).to_csv(index=False))
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
    _atomic_write(path, json.dumps(record, indent=2))
    return path
