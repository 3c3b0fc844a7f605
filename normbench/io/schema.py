"""The one row schema every result file and report shares (documented in docs/schema.md): its columns,
their types and units, and the frame operations that hold rows to it: `tidy` (provenance columns
first), `concat` (rows of several sources in one frame), `typed` (every column, with the schema's
pandas dtypes, as summary.csv and summary.parquet store it) and `plain` (numpy dtypes again).
"""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

# The rows' format, written on every row (column schema_version). 2: accuracy rows hold K in
# norm_batch; version 1's (no schema_version) held it in batch_size, which `upgrade` moves on reading.
SCHEMA_VERSION = 2

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
    "schema_version": ("int", "", "the rows' format (empty: version 1, before norm_batch)"),
    # what was measured
    "norm": ("str", "", "norm name: bn, ln, in, gn, none"),
    "impl": ("str", "", "implementation: reference, native, compiled, triton"),
    "pass": (
        "str",
        "",
        "speed: fwd, bwd, fwdbwd; step (a model's forward + backward), wrapper (the module's own cost) or "
        "copy (the self-check's pure copy, norm copy)",
    ),
    "batch_size": ("int", "samples", "speed: N of the input (config key speed.batch_size)"),
    "norm_batch": (
        "int",
        "samples",
        "accuracy: K, samples per normalization batch (config key accuracy.batch_size; before schema 2, batch_size)",
    ),
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
    # speed: the time a table or plot ranks by, and the three clocks behind it (docs/speed.md)
    "median_ms": (
        "float",
        "ms",
        "the row's time per call, what tables, plots and --compare rank by: device_ms where the row has it, else "
        "wall_ms; a pytest-benchmark entry's median round",
    ),
    "p20_ms": ("float", "ms", "20th percentile of the time per call (device_p20_ms, else wall_p20_ms)"),
    "p80_ms": ("float", "ms", "80th percentile of the time per call (device_p80_ms, else wall_p80_ms)"),
    "wall_ms": (
        "float",
        "ms",
        "wall clock: median time per call as an eager loop sees it, host + device (CUDA: do_bench's events "
        "around each call; CPU: blocks of calls, each block's time / its calls); older rows' median_ms",
    ),
    "wall_p20_ms": ("float", "ms", "20th percentile of the wall clock per call"),
    "wall_p80_ms": ("float", "ms", "80th percentile of the wall clock per call"),
    "repeats": ("int", "calls", "calls the wall clock timed (CPU: in all blocks; empty where do_bench does not say)"),
    "timer": (
        "str",
        "",
        "what took the wall clock, e.g. triton.testing.do_bench, cuda events, "
        "torch.utils.benchmark.Timer.blocked_autorange",
    ),
    "device_ms": (
        "float",
        "ms",
        "device clock: the GPU time of one call, the clock gbps and pct_of_peak use; device_clock says which "
        "(CPU: the wall clock)",
    ),
    "device_p20_ms": ("float", "ms", "20th percentile of device_ms over the graph replays (or kineto chunks)"),
    "device_p80_ms": ("float", "ms", "80th percentile of device_ms over the graph replays (or kineto chunks)"),
    "device_clock": ("str", "", "which clock device_ms is: graph, kineto, or wall (CPU)"),
    "device_graph_ms": ("float", "ms", "CUDA-graph replay of calls round-robin over rotating copies / calls"),
    "device_kineto_ms": ("float", "ms", "sum of the kernels' busy time in torch.profiler (kineto) / calls"),
    "device_clocks_differ": ("bool", "", "device_graph_ms and device_kineto_ms differ by more than 5%"),
    "host_us": ("float", "us", "host time to issue one call (launch path only, the device not waited for); CUDA only"),
    "launches": ("float", "launches", "kernels, memsets and memcopies per call (kineto); CUDA only"),
    "bound": ("str", "", "host where host_us exceeds device_ms (an eager loop waits on Python), else device"),
    "l2": ("str", "", "speed.l2: cold (rotating copies over 3x the L2, L2 flushed) or warm (one resident copy)"),
    "l2_copies": ("int", "", "copies of the pass the device clocks rotate over (CUDA)"),
    "rotated_mib": ("float", "MiB (2**20 bytes)", "bytes of all those copies, by the byte model"),
    "graph_calls": ("int", "calls", "calls captured in the graph device_graph_ms replays"),
    "cuda_graph": ("bool", "", "speed.cuda_graph: the time is of a captured CUDA graph's replay"),
    "bytes": ("int", "bytes", "the fewest bytes the pass must move (docs/speed.md)"),
    "gbps": ("float", "GB/s (1e9 bytes/s)", "bytes / device_ms (older rows: / median_ms)"),
    "peak_gbps": ("float", "GB/s (1e9 bytes/s)", "the device's measured (or given) copy bandwidth"),
    "peak_method": ("str", "", "how peak_gbps was found"),
    "peak_copy_ms": ("float", "ms", "median time of the copy that measured peak_gbps"),
    "pct_of_peak": ("float", "%", "gbps / peak_gbps x 100: % of the roofline, from the device clock"),
    "peak_mem_mib": ("float", "MiB (2**20 bytes)", "CUDA memory one call allocates beyond its inputs; NaN on CPU"),
    "compile_s": ("float", "s", "impl=compiled: wall time of the first call, which compiles"),
    "layers": ("int", "", "speed, shape=model: the model's norm layers the row stands for (step: all of them)"),
    "layer_names": ("str", "", "speed, shape=model: those layers' module names, space separated"),
    "norm_ms": ("float", "ms", "pass step: the norm layers' time in one step, sum of fwdbwd device_ms x layers"),
    "norm_share": ("float", "%", "pass step: norm_ms / the step's device_ms x 100"),
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
    "train_eval_acc": ("float", "fraction in [0, 1]", "train accuracy after training, eval mode, fixed subset"),
    "lr_chosen": ("float", "", "accuracy.lr_search: the grid LR chosen (per lr_reference.batch samples)"),
    "lr_grid": ("str", "", "accuracy.lr_search: lr:validation error (%) per grid LR"),
    "reused_from": ("str", "", "the job whose training this row reuses (K-invariant norms); empty if trained here"),
    "wall_s": ("float", "s", "wall time of the run"),
    "samples_per_s": ("float", "samples/s", "training throughput"),
    "train_loop": ("str", "", "accuracy: standard, or fast and its options (precision, channels_last, compile)"),
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
    "wall_ms",
    "device_ms",
    "device_clock",
    "host_us",
    "launches",
    "bound",
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
    "norm_batch",
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


# The time columns a row is ranked by, from its clocks: (ranked, device clock, wall clock).
RANKED = [
    ("median_ms", "device_ms", "wall_ms"),
    ("p20_ms", "device_p20_ms", "wall_p20_ms"),
    ("p80_ms", "device_p80_ms", "wall_p80_ms"),
]


def with_clocks(frame: pd.DataFrame) -> pd.DataFrame:
    """median_ms, p20_ms and p80_ms from a row's clocks: the device clock where it has one, else the wall
    clock. Rows from before the clocks (and pytest-benchmark's) have median_ms alone, their wall clock."""
    for ranked, device, wall in RANKED:
        if ranked in frame and (wall not in frame or frame[wall].isna().all()):
            frame[wall] = frame[ranked]
        values = [frame[c] for c in (device, wall, ranked) if c in frame]
        if values:
            out = values[0].astype(object)
            for v in values[1:]:
                out = out.where(out.notna(), v)
            frame[ranked] = pd.to_numeric(out, errors="coerce")
    return frame


def upgrade(frame: pd.DataFrame) -> pd.DataFrame:
    """Rows of an older schema in this one's columns: a version-1 accuracy row's K moves from
    batch_size to norm_batch (its batch_size is then empty: accuracy rows have no N)."""
    if "kind" not in frame or "batch_size" not in frame or frame.empty:
        return frame
    old = (frame["kind"] == "accuracy") & frame["batch_size"].notna()
    if "norm_batch" in frame:
        old &= frame["norm_batch"].isna()
    if old.any():
        frame = frame.copy()
        frame["norm_batch"] = frame["norm_batch"] if "norm_batch" in frame else pd.Series(pd.NA, index=frame.index)
        frame["norm_batch"] = frame["norm_batch"].astype(object).where(~old, frame["batch_size"])
        frame["batch_size"] = frame["batch_size"].astype(object).where(~old, None)
    return frame


def tidy(frame: pd.DataFrame) -> pd.DataFrame:
    """Order columns (provenance, then the speed and accuracy schema, then anything else); older rows
    upgraded (`upgrade`); the ranked times from the clocks (`with_clocks`)."""
    frame = with_clocks(upgrade(frame))
    for col in META_COLUMNS:
        if col not in frame:
            frame[col] = None
    known = META_COLUMNS + [c for c in SPEED_COLUMNS + ACCURACY_COLUMNS if c in frame]
    known = list(dict.fromkeys(known))
    return frame[known + [c for c in frame.columns if c not in known]].reset_index(drop=True)


def concat(frames: list[pd.DataFrame]) -> pd.DataFrame:
    """Rows of several sources in one tidy frame (columns no frame fills are left out)."""
    frames = [f.dropna(axis=1, how="all") if len(f) else f for f in frames]
    frames = [f for f in frames if len(f)]
    if not frames:
        return tidy(pd.DataFrame())
    return tidy(pd.concat(frames, ignore_index=True, sort=False))


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
    out = upgrade(frame.rename(columns=RENAMED)).copy()
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
