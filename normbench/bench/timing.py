"""Timing a callable the same careful way on every device, and the device's own bandwidth limit.

* CUDA: `triton.testing.do_bench` when triton is installed (warm-up, a 256 MB L2 flush before every
  repeat, one pair of CUDA events per repeat, gradients set to None outside the timed region); the
  same procedure written out with torch when it is not, or when the L2 is to stay warm. Events
  around one call see the host too where it issues the call slower than the device runs it: this
  is the wall clock of a row; the device and host clocks are in `normbench.bench.clocks`. CUDA is
  asynchronous, so only events or a synchronize make a time real; both paths use events and
  synchronize before reading them.
* CPU: `torch.utils.benchmark.Timer.blocked_autorange` (it sets the thread count, disables the garbage
  collector, sizes blocks of calls so the clock's overhead vanishes, and runs them for `min_run_time`
  seconds), topped up to `min_repeats` blocks. No cache flush: the last-level cache of a server CPU
  holds tens to hundreds of MB, so flushing it between repeats would cost more than the sweep; small
  inputs are therefore timed warm, and can show more than the DRAM copy bandwidth (see docs/speed.md).

Every time is a per-call time in milliseconds; the median and the 20th / 80th percentiles are taken
over the repeats (over the blocks on the CPU).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from filelock import FileLock
from torch import Tensor
from torch.utils.benchmark import Measurement, Timer

from normbench.io.results import atomic_write_bytes

QUANTILES = (0.5, 0.2, 0.8)  # median, p20, p80: triton.testing.do_bench's order
FLUSH_BYTES = 256 * 2**20  # what do_bench clears between repeats: more than any GPU's L2 (H100: 50 MB)


@dataclass
class Timing:
    median_ms: float
    p20_ms: float
    p80_ms: float
    repeats: int | None  # None where do_bench does not say
    timer: str


def quantiles(times_ms: Sequence[float]) -> tuple[float, float, float]:
    t = torch.tensor(list(times_ms), dtype=torch.float64)
    return tuple(float(torch.quantile(t, q)) for q in QUANTILES)


def clear_grads(grads: Sequence[Tensor]) -> None:
    for t in grads:
        t.grad = None


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_cpu(
    fn: Callable[[], object],
    *,
    grad_to_none: Sequence[Tensor] = (),
    min_run_time: float = 0.2,
    min_repeats: int = 10,
    threads: int | None = None,
) -> Timing:
    """Per-call time of fn on the CPU: `Timer.blocked_autorange`'s blocks of calls, each block one sample,
    at least `min_run_time` seconds and `min_repeats` blocks."""

    def call():
        # Inside the timed block (a CPU has no events to pause on): a few us of Python, small next to
        # a CPU norm's tens of us to ms, and what optimizer.zero_grad(set_to_none=True) costs anyway.
        clear_grads(grad_to_none)
        fn()

    timer = Timer(stmt="call()", globals={"call": call}, num_threads=threads or torch.get_num_threads())
    # Its block-size search (calls per block grow tenfold until the clock's overhead is < 0.01%) warms up.
    measured = timer.blocked_autorange(min_run_time=min_run_time)
    # blocked_autorange stops on time alone: a slow call (tens of ms) leaves a few blocks, too few for
    # percentiles, so more blocks of the same size follow; merge() turns every block into per-call time.
    more = [timer.timeit(measured.number_per_run) for _ in range(min_repeats - len(measured.raw_times))]
    (merged,) = Measurement.merge([measured, *more])
    times_ms = [t * 1e3 for t in merged.times]
    repeats = measured.number_per_run * (len(measured.raw_times) + len(more))
    return Timing(*quantiles(times_ms), repeats=repeats, timer="torch.utils.benchmark.Timer.blocked_autorange")


def time_cuda(
    fn: Callable[[], object],
    *,
    grad_to_none: Sequence[Tensor] = (),
    warmup_ms: float = 25,
    rep_ms: float = 100,
    device: torch.device | None = None,
    flush: bool = True,
) -> Timing:
    """Per-call time of fn on a CUDA device: events around each repeat, the L2 cache flushed before it
    (`flush=False`, speed.l2=warm: not flushed, so each repeat finds what the last one left in L2)."""
    # Not torch.utils.benchmark.Timer: on CUDA it synchronizes around a block of calls and reads the
    # host clock, so every call after the first finds its input in L2 and the block's time includes
    # the launch queue draining; a memory-bound norm needs a cold cache and device-side (event) time
    # per call, which do_bench (or _time_cuda_events) gives.
    try:
        from triton.testing import do_bench
    except ImportError:
        do_bench = None
    if do_bench is not None and flush:  # do_bench always flushes
        q = do_bench(fn, warmup=warmup_ms, rep=rep_ms, grad_to_none=list(grad_to_none), quantiles=list(QUANTILES))
        return Timing(*map(float, q), repeats=None, timer="triton.testing.do_bench")
    return _time_cuda_events(fn, grad_to_none, warmup_ms, rep_ms, device or torch.device("cuda"), flush)


def _time_cuda_events(fn, grad_to_none, warmup_ms, rep_ms, device, flush: bool = True) -> Timing:
    """do_bench's procedure without triton: estimate, warm up, then (flush +) event pair per repeat."""
    buffer = torch.empty(FLUSH_BYTES // 4 if flush else 0, dtype=torch.int32, device=device)
    fn()
    torch.cuda.synchronize(device)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(5):
        buffer.zero_()
        fn()
    end.record()
    torch.cuda.synchronize(device)
    estimate = max(start.elapsed_time(end) / 5, 1e-3)
    for _ in range(max(1, int(warmup_ms / estimate))):
        fn()
    n = max(1, int(rep_ms / estimate))
    events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(n)]
    for s, e in events:
        clear_grads(grad_to_none)
        buffer.zero_()  # an empty buffer with flush=False: nothing is cleared
        s.record()
        fn()
        e.record()
    torch.cuda.synchronize(device)
    timer = "cuda events" + ("" if flush else ", L2 not flushed")
    return Timing(*quantiles([s.elapsed_time(e) for s, e in events]), repeats=n, timer=timer)


def time_fn(
    fn: Callable[[], object], device: torch.device, *, grad_to_none: Sequence[Tensor] = (), **options
) -> Timing:
    """Per-call time of fn on `device` (options: min_run_time, min_repeats, threads on the CPU;
    warmup_ms, rep_ms, flush on CUDA; the others are ignored)."""
    if device.type == "cuda":
        keep = {k: options[k] for k in ("warmup_ms", "rep_ms", "flush") if k in options}
        return time_cuda(fn, grad_to_none=grad_to_none, device=device, **keep)
    keep = {k: options[k] for k in ("min_run_time", "min_repeats", "threads") if k in options}
    return time_cpu(fn, grad_to_none=grad_to_none, **keep)


def peak_memory_mib(fn: Callable[[], object], device: torch.device, grad_to_none: Sequence[Tensor] = ()) -> float:
    """MiB that one call allocates on top of what is already resident (CUDA only; NaN on the CPU,
    where torch keeps no allocator statistics)."""
    if device.type != "cuda":
        return math.nan
    clear_grads(grad_to_none)
    torch.cuda.synchronize(device)
    base = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    torch.cuda.synchronize(device)
    return (torch.cuda.max_memory_allocated(device) - base) / 2**20


# ---------------------------------------------------------------------------------------------------
# The roofline: what the device can move, measured as a large copy (read + write counted).

PEAK_FILE = "peak_bandwidth.json"
_PEAKS: dict[str, dict] = {}


def measure_copy_bandwidth(device: torch.device, copy_mb: int = 512, **timing) -> dict:
    """GB/s of `dst.copy_(src)` for two buffers of copy_mb MiB, counting the read and the write.

    The buffers must dwarf the last-level cache (a GPU's L2 is at most ~50-100 MB; a server CPU's L3
    up to a few hundred MB), else the copy measures the cache.
    """
    n = copy_mb * 2**20 // 4
    src = torch.ones(n, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    dst.copy_(src)  # first touch: page faults are not bandwidth
    _synchronize(device)
    t = time_fn(lambda: dst.copy_(src), device, **timing)
    moved = 2 * src.numel() * src.element_size()
    return {
        "peak_gbps": moved / (t.median_ms * 1e-3) / 1e9,
        "peak_method": f"copy of {copy_mb} MiB, read + write, {t.timer}",
        "peak_copy_ms": t.median_ms,
    }


PEAK_KEYS = {"peak_gbps", "peak_method", "peak_copy_ms"}  # what measure_copy_bandwidth records
# No memory copies slower than 0.1 GB/s or faster than 100 TB/s (an H200's HBM3e: 4.8 TB/s, NVIDIA's
# datasheet): a cached peak outside is planted or broken, and would put every row at 0% or 10^5 %.
PLAUSIBLE_GBPS = (0.1, 1e5)


def _valid_peak(record, copy_mb: int | None = None) -> bool:
    """A cached record worth reusing: the keys a measurement writes and no others but `peak_*` ones
    (each becomes a row column), a plausible positive, finite `peak_gbps`, and (given `copy_mb`) the
    bandwidth its own copy time implies."""
    if not isinstance(record, dict) or not PEAK_KEYS <= set(record) or not isinstance(record["peak_method"], str):
        return False
    if not all(isinstance(k, str) and k.startswith("peak_") for k in record):
        return False

    def positive(v) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0

    gbps, ms = record["peak_gbps"], record["peak_copy_ms"]
    if not (positive(gbps) and positive(ms) and PLAUSIBLE_GBPS[0] <= gbps <= PLAUSIBLE_GBPS[1]):
        return False
    implied = 2 * copy_mb * 2**20 / (ms * 1e-3) / 1e9 if copy_mb else gbps  # read + write of copy_mb MiB
    return math.isclose(gbps, implied, rel_tol=1e-6)


def peak_bandwidth(
    device: torch.device, device_name: str, cache_dir: Path | None, copy_mb: int = 512, **timing
) -> dict:
    """The device's copy bandwidth, measured once per process and once per sweep directory.

    The record is kept in memory and in `cache_dir/peak_bandwidth.json` (keyed by device, copy size
    and, on the CPU, thread count). The file is read, measured into and written under one lock, so
    the first job of a sweep measures and every other job, in any process, reports that same peak; a
    record that is not what a measurement writes (a hand-edited or broken file: another key, a peak
    outside PLAUSIBLE_GBPS or that its copy time does not give) is measured again.
    """
    key = f"{device_name} [{device}] {copy_mb}MiB"
    if device.type == "cpu":  # one core copies less than all of them: a peak per thread count
        key += f" {torch.get_num_threads()} threads"
    if cache_dir is None:
        if not _valid_peak(_PEAKS.get(key), copy_mb):
            _PEAKS[key] = measure_copy_bandwidth(device, copy_mb, **timing)
        return _PEAKS[key]
    path = Path(cache_dir) / PEAK_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = Path(str(path) + ".lock")
    if lock.is_symlink():  # FileLock would open (and truncate) what it points to: a planted link, not a lock
        lock.unlink()
    try:
        held = FileLock(str(lock))
        held.acquire()
    except OSError as exc:
        from normbench.errors import UsageError

        raise UsageError(f"cannot lock {lock} ({exc.strerror or exc}): remove it, or use a fresh directory") from None
    try:
        try:
            records = json.loads(path.read_text()) if path.exists() else {}
        except (OSError, ValueError):
            records = {}  # unreadable: measure again
        if not isinstance(records, dict):
            records = {}
        if not _valid_peak(records.get(key), copy_mb):
            records[key] = (
                _PEAKS[key]
                if _valid_peak(_PEAKS.get(key), copy_mb)
                else measure_copy_bandwidth(device, copy_mb, **timing)
            )
            atomic_write_bytes(path, json.dumps(records, indent=2).encode())
    finally:
        held.release()
    _PEAKS[key] = records[key]
    return records[key]


def cache_bytes(device: torch.device) -> int | None:
    """The last-level cache of `device` in bytes (a GPU's L2, a CPU's L3), or None where unknown."""
    try:
        if device.type == "cuda":
            return int(torch.cuda.get_device_properties(device).L2_cache_size)
        import os

        size = os.sysconf("SC_LEVEL3_CACHE_SIZE")
        return int(size) if size > 0 else None
    except (AttributeError, ValueError, OSError, RuntimeError):
        return None
