"""pytest-benchmark's JSON (`pytest --benchmark-json FILE`) read as rows of normbench's schema, so a
report shows a benchmark file beside sweeps (normbench.io.results.read takes either)."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import pandas as pd

from normbench.errors import UsageError
from normbench.io.schema import concat


def _seconds(value: Any) -> bool:
    """A time pytest-benchmark could have written: a finite, non-negative number (not a bool)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value >= 0


def _ms(seconds: Any) -> float:
    return float(seconds) * 1e3 if _seconds(seconds) else math.nan


def _scalar(value: Any) -> bool:
    return value is None or isinstance(value, (str, int, float, bool))


HOW = "normbench reads the JSON that `pytest --benchmark-json FILE` writes (pytest-benchmark >= 3.0)"


def load(path: Path) -> dict:
    """The file's JSON object, or UsageError naming the file and what is wrong with it."""
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UsageError(f"{path} is not a pytest-benchmark JSON file: not UTF-8 text (byte {exc.start})") from None
    try:
        data = json.loads(text)
    except RecursionError:
        raise UsageError(f"{path} is not a pytest-benchmark JSON file: nested too deeply to read") from None
    except ValueError as exc:
        ends = getattr(exc, "pos", 0) >= len(text.rstrip()) or str(getattr(exc, "msg", "")).startswith("Unterminated")
        cut = " (cut short?)" if ends else ""
        raise UsageError(f"{path} is not valid JSON{cut}: {exc}; {HOW}") from None
    if not isinstance(data, dict) or not isinstance(data.get("benchmarks"), list):
        raise UsageError(f"{path} is not a pytest-benchmark JSON file (no 'benchmarks' list)")
    for field in ("machine_info", "commit_info"):
        if data.get(field) is not None and not isinstance(data[field], dict):
            raise UsageError(f"{path}: {field} is a {type(data[field]).__name__}, not an object; {HOW}")
    return data


def _check(path: Path, bench: Any) -> dict:
    """One entry of `benchmarks`, or UsageError naming it and the field that is wrong."""
    if not isinstance(bench, dict):
        raise UsageError(f"{path}: a benchmark entry is a {type(bench).__name__}, not an object; {HOW}")
    name = bench.get("fullname") or bench.get("name")
    stats = bench.get("stats")
    if not isinstance(stats, dict) or "median" not in stats:
        raise UsageError(f"{path}: benchmark {name!r} has no stats.median; {HOW}")
    if not _seconds(stats["median"]):
        raise UsageError(
            f"{path}: benchmark {name!r} has stats.median {stats['median']!r}: a time is a finite number of "
            "seconds >= 0"
        )
    for field in ("extra_info", "params"):
        if bench.get(field) is not None and not isinstance(bench[field], dict):
            raise UsageError(
                f"{path}: benchmark {name!r} has {field} of type {type(bench[field]).__name__}, not an object; {HOW}"
            )
    return stats


def read_benchmark_json(path: str | Path) -> pd.DataFrame:
    """A pytest-benchmark JSON file (`--benchmark-json`) as rows of the speed schema.

    Each benchmark's `extra_info` (norm, impl, pass, shape, dtype, bytes, ...) and its `params` become
    columns; its stats (seconds) become `median_ms`, `min_ms`, `mean_ms`, `stddev_ms`, `q1_ms`,
    `q3_ms` (pytest-benchmark keeps quartiles, not the 20th/80th percentiles). Where the row knows its
    `bytes`, `gbps` is recomputed from the median so the two columns always agree, and `pct_of_peak`
    from `peak_gbps` when given.
    """
    path = Path(path)
    data = load(path)
    machine = data.get("machine_info") or {}
    cpu = machine["cpu"].get("brand_raw") if isinstance(machine.get("cpu"), dict) else None
    cpu = cpu if isinstance(cpu, str) else None
    rows = []
    for bench in data["benchmarks"]:
        stats = _check(path, bench)
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
        if "batch_size" not in row and isinstance(row.get("shape"), str):
            first = re.match(r"\D*(\d+)", row["shape"])
            if first:
                row["batch_size"] = int(first.group(1))
        # One norm's pass: named by strings, at a known batch size; anything else is a benchmark of its own.
        named = all(isinstance(row.get(k), str) for k in ("norm", "impl", "pass"))
        batch = row.get("batch_size")
        if named and isinstance(batch, (int, float)) and not isinstance(batch, bool) and math.isfinite(batch):
            row["kind"] = "speed"
        for stat in ("median", "min", "max", "mean", "stddev", "q1", "q3"):
            if stat in stats:
                row[f"{stat}_ms"] = _ms(stats[stat])
        for count in ("rounds", "iterations"):
            value = stats.get(count)
            row[count] = value if isinstance(value, int) and not isinstance(value, bool) else None
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
