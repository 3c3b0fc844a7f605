"""pytest-benchmark's JSON (`pytest --benchmark-json FILE`) read as rows of normbench's schema, so a
report shows a benchmark file beside sweeps (normbench.results.read takes either)."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import pandas as pd

from normbench.schema import concat


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
        return concat([pd.DataFrame([empty])])
    return concat([pd.DataFrame(rows)])
