"""The speed job: time one norm x implementation at one shape, per pass, against the bandwidth roofline.

Normalization is memory-bound, so each time is turned into the bandwidth it implies (the fewest
bytes the pass must move / the median time) and compared with what the device moves in a large copy
(`pct_of_peak`). The timing itself is in `normbench.bench.timing`.

Passes (the module in training mode, input and parameters requiring grad, as in training):
  fwd     the forward alone (building the autograd graph, updating BatchNorm's running statistics);
  bwd     the backward alone: one forward, then `y.backward(dy, retain_graph=True)` per repeat, with
          the gradients set to None between repeats (tritonbench's get_bwd_fn / grad_to_none);
  fwdbwd  forward and backward together.

Fair timing: a pass calls the implementation's function (`layer.impl_fn(layer, x)`, e.g. F.group_norm
for native), on input the module's `forward` checked once before timing; normbench's wrapper (input
checks, registry dispatch) is timed on its own, once per native job, as a row of pass `wrapper`.
Shapes from a model and whole training steps: `normbench.bench.model_speed`.
"""

from __future__ import annotations

import copy
import functools
import logging
import math
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf
from torch._functorch import config as functorch_config

from normbench import norms
from normbench.bench import clocks
from normbench.bench.timing import (
    Timing,
    cache_bytes,
    peak_bandwidth,
    peak_memory_mib,
    time_cpu,
    time_fn,
)
from normbench.device import cpu_cores, device_name, free_memory
from normbench.errors import Unsupported, UsageError
from normbench.specs import PassTiming, SpeedJob, positive

log = logging.getLogger("normbench")

PASSES = ("fwd", "bwd", "fwdbwd")
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
LAYOUTS = ("contiguous", "channels_last")
CHANNELS_LAST = {4: torch.channels_last, 5: torch.channels_last_3d}  # by the input's rank
STAT_BYTES = 4  # mean and rstd are saved in float32 for every input dtype (as torch's kernels do)


# ---------------------------------------------------------------------------------------------------
# The byte model: the fewest bytes each pass must move between memory and the chip.


def byte_terms(layer: torch.nn.Module, x: torch.Tensor) -> dict[str, int]:
    """The pieces the passes are built from, in bytes.

    tensor   one pass over the input, E = x.numel() * x.element_size() (x, y, dy and dx each cost this)
    params   the parameters: weight and bias, C values each (0 without affine), and any others (FRN's
             tau, EvoNorm's v; RMSNorm has no bias)
    running  running mean and variance (bn, brn, evonorm_b0), C values each (0 when not tracked / not
             training)
    stats    what a forward saves for backward, in float32 (`Norm.saved_stats`): a mean and an rstd
             per statistic for the classics; an rstd alone for rms and frn; brn adds r and d;
             evonorm_b0 a batch and an instance variance per channel
    """
    c = x.shape[1]
    running = 0
    if isinstance(layer, norms.BatchNorm) and layer.track_running_stats and layer.use_batch_stats:
        running = 2 * c * layer.running_mean.element_size()
    saved = layer.saved_stats(x) if isinstance(layer, norms.Norm) else 0
    return {
        "tensor": x.numel() * x.element_size(),
        # Every parameter the norm has: RMSNorm has no bias; FRN's tau and EvoNorm's v count too.
        "params": sum(p.numel() * p.element_size() for p in layer.parameters()),
        "running": running,
        "stats": saved * STAT_BYTES,
    }


def bytes_moved(layer: torch.nn.Module, x: torch.Tensor, pass_: str) -> int:
    """Bytes a pass must move at least. tritonbench's layer_norm counts 2 E (fwd), 3 E (bwd) and 5 E
    (fwdbwd); this adds the small terms it leaves out:

    fwd     read x, write y (2 E); read weight and bias; read and write the running statistics; write
            the saved mean and rstd
    bwd     read x and dy, write dx (3 E); read weight, write its and bias's gradients (1.5 x params);
            read the saved mean and rstd
    fwdbwd  the sum of the two
    """
    t = byte_terms(layer, x)
    fwd = 2 * t["tensor"] + t["params"] + 2 * t["running"] + t["stats"]
    bwd = 3 * t["tensor"] + t["params"] * 3 // 2 + t["stats"]
    if pass_ == "fwd":
        return fwd
    if pass_ == "bwd":
        return bwd
    if pass_ == "fwdbwd":
        return fwd + bwd
    raise UsageError(f"unknown pass {pass_!r}: use pass=fwd, bwd, fwdbwd or all")


# ---------------------------------------------------------------------------------------------------
# Reading and checking the config.


def parse_passes(value) -> list[str]:
    """`pass` may be one pass, `all`, or a list of passes."""
    items = list(value) if OmegaConf.is_list(value) or isinstance(value, (list, tuple)) else [value]
    if items == ["all"]:
        return list(PASSES)
    bad = [p for p in items if p not in PASSES]
    if bad or not items:
        raise UsageError(
            f"unknown pass {', '.join(map(repr, bad)) or '(none)'}: use pass=fwd, pass=bwd, pass=fwdbwd, "
            "pass=all or a list such as pass=[fwd,bwd]"
        )
    return items


def input_shape(job: SpeedJob) -> tuple[int, ...]:
    """(N, C, *spatial) of a single-shape job; the schema typed each, this checks their ranges."""
    shape = job.shape
    if any(s is None or s < 1 for s in shape):
        raise UsageError(f"speed.batch_size, speed.channels and speed.spatial must be > 0, got {shape}: e.g. shape=cpu")
    if len(job.spatial) > 3:
        raise UsageError(f"speed.spatial has {len(job.spatial)} dimensions; norms take 0 to 3, e.g. [28,28]")
    return shape


def make_input(shape, dtype: torch.dtype, layout: str, device: torch.device) -> torch.Tensor:
    if layout == "channels_last" and len(shape) not in CHANNELS_LAST:
        raise UsageError(
            f"layout=channels_last needs an (N, C, H, W) or (N, C, D, H, W) input, got shape "
            f"{tuple(shape)}: use layout=contiguous, or give speed.spatial two or three sizes"
        )
    x = torch.randn(shape, dtype=dtype, device=device)
    if layout == "channels_last":
        x = x.contiguous(memory_format=CHANNELS_LAST[len(shape)])
    return x.requires_grad_()


def check_speed_config(job: SpeedJob, device: torch.device) -> None:
    """What the schema cannot say, checked before anything is timed or allocated: one line naming the
    key that is wrong, and the memory a shape or the peak's copy would take against what the device has free."""
    if job.timing.cuda_graph and device.type != "cuda":
        raise UsageError(
            f"speed.cuda_graph=true times the replay of a captured CUDA graph, and the device is {device}: "
            "run it with device=cuda on a GPU, or leave speed.cuda_graph=false"
        )
    cores = cpu_cores()
    positive(job.threads, "speed.threads", f"CPU threads, at most the {cores} core(s) this process may use", most=cores)
    # Sizes estimated before anything is allocated: an allocation that cannot succeed is a traceback
    # (or, on the CPU, the OOM killer) instead of a line. Elements at float32's 4 bytes, the widest dtype.
    free = free_memory(device)
    dims = job.shape
    needs = []
    if all(d is not None and d > 0 for d in dims):
        needs.append(
            (
                f"the shape {tuple(dims)} (speed.batch_size, speed.channels, speed.spatial): its input, output "
                "and their gradients",
                4 * 4 * math.prod(dims),
                "choose a smaller shape",
            )
        )
    if job.peak_gbps is None:
        needs.append(
            (
                f"speed.peak_copy_mb={job.peak_copy_mb}: the peak's two copy buffers",
                2 * job.peak_copy_mb * 2**20,
                "lower speed.peak_copy_mb (e.g. 512) or give speed.peak_gbps",
            )
        )
    for what, nbytes, fix in needs:
        if free is not None and nbytes > free:
            raise UsageError(
                f"{what} need about {nbytes / 2**30:.3g} GiB, and {device} has {free / 2**30:.3g} GiB free: {fix}"
            )


def warn_if_cached(copy_mb: int, device: torch.device) -> None:
    """A copy buffer that fits the last-level cache measures the cache, not the memory: say so."""
    cache = cache_bytes(device)
    if copy_mb * 2**20 < (cache or 64 * 2**20):  # each buffer smaller than the cache: the pair may fit
        where = f"the {cache / 2**20:.0f} MiB last-level cache" if cache else "a last-level cache"
        log.warning(
            "speed.peak_copy_mb=%d may sit in %s of %s: the peak would measure the cache, not memory, "
            "and %% of roofline would read low; use at least %d",
            copy_mb,
            where,
            device,
            max(512, 4 * (cache or 0) // 2**20),
        )


def check_support(job: SpeedJob, dtype: torch.dtype, device: torch.device) -> None:
    """Unsupported (a sweep records the job as skipped) unless job.impl runs job.norm here, at its speed."""
    reason = norms.supports(job.norm, job.impl, device=device, dtype=dtype, timing=True, **job.norm_options)
    if reason:
        raise Unsupported(reason)


def retained_backward():
    """The speed job's scope: the `bwd` pass calls backward repeatedly on one retained graph, which
    AOTAutograd's donated buffers (on by default) forbid for impl=compiled. tritonbench turns them off
    for the same reason (tritonbench/operators/layer_norm/operator.py, torch_compile_layer_norm); they
    only save memory in backward. Set while the job's graphs compile and run, and only then."""
    return functorch_config.patch(donated_buffer=False)


# ---------------------------------------------------------------------------------------------------
# The passes.


def timed_call(layer):
    """What a pass calls: the implementation's function alone, as a torch.nn user pays for a torch call
    (F.batch_norm, F.group_norm, ...), not normbench's module with its checks and dispatch."""
    if isinstance(layer, norms.Norm):
        return functools.partial(layer.impl_fn, layer)
    return layer


def pass_callable(layer, x: torch.Tensor, pass_: str):
    """(fn, grad_to_none): what one repeat runs, and the gradients to reset between repeats."""
    call = timed_call(layer)
    grads = [x] + [p for p in layer.parameters() if p.requires_grad]
    if pass_ == "fwd":
        return (lambda: call(x)), []
    y = call(x)
    dy = torch.randn_like(y)
    if pass_ == "bwd":
        return (lambda: y.backward(dy, retain_graph=True)), grads
    return (lambda: call(x).backward(dy)), grads


def fresh_copy(x: torch.Tensor) -> torch.Tensor:
    """A new leaf with x's values, strides and requires_grad, in memory of its own."""
    return x.detach().clone(memory_format=torch.preserve_format).requires_grad_(x.requires_grad)


def _pass_copy(layer, x: torch.Tensor, pass_: str, i: int):
    """Copy i of a pass for the clocks' rotation: copy 0 on the job's input, the others on fresh ones."""
    return pass_callable(layer, x if i == 0 else fresh_copy(x), pass_)


def _identity(layer, x: torch.Tensor) -> torch.Tensor:
    return x


def wrapper_overhead(layer, x: torch.Tensor, *, min_run_time: float = 0.2, min_repeats: int = 10) -> Timing | None:
    """Per-call cost of normbench's module around an implementation: `forward` (input checks, dispatch,
    BatchNorm's call count) on a copy whose implementation returns its input, so nothing is computed.

    Timed on the host clock on every device: the wrapper is Python, which GPU events do not see.
    None for a module without a wrapper (`none`).
    """
    if not isinstance(layer, norms.Norm):
        return None
    probe = copy.deepcopy(layer)  # the call count BatchNorm keeps changes on the copy, not the layer
    probe.impl_fn = _identity
    with torch.no_grad():
        return time_cpu(lambda: probe.forward(x), min_run_time=min_run_time, min_repeats=min_repeats)


def _dynamo_compiles() -> int:
    from torch._dynamo.utils import counters

    return counters["frames"]["ok"]


def peak(job: SpeedJob, device: torch.device, peak_dir: Path) -> dict:
    """The roofline: speed.peak_gbps if given, else the copy bandwidth measured once per sweep."""
    if job.peak_gbps is not None:
        return {"peak_gbps": job.peak_gbps, "peak_method": "given (speed.peak_gbps)"}
    warn_if_cached(job.peak_copy_mb, device)
    copy_timing = {**job.timing.wall_options(), "min_repeats": 5}  # each copy takes ~0.1 s on a CPU
    return peak_bandwidth(device, device_name(device), peak_dir, job.peak_copy_mb, **copy_timing)


def base_row(job: SpeedJob, shape, device: torch.device) -> dict:
    """The columns every row of this job shares, for an input of `shape`."""
    return {
        "kind": "speed",
        **job.norm_options,  # groups, eps, ...
        "norm": job.norm,
        "impl": job.impl,
        "batch_size": shape[0],
        "channels": shape[1],
        "spatial": "x".join(map(str, shape[2:])),
        "shape": "x".join(map(str, shape)),
        "dtype": job.dtype,
        "layout": job.layout,
        "device": str(device),
        "device_name": device_name(device),
        "threads": torch.get_num_threads() if device.type == "cpu" else None,
        "torch_version": torch.__version__,
        "triton_version": _triton_version(),
        "seed": job.seed,
    }


def time_layer(
    job: SpeedJob,
    layer,
    x: torch.Tensor,
    passes,
    peak: dict,
    first_call_s: float,
    *,
    wrapper: bool = False,
    extra: dict | None = None,
) -> list[dict]:
    """One row per pass for `layer` on `x`, after `first_call` checked x through the module (plus a
    row of the wrapper's own cost when `wrapper`); `extra` columns go on every row."""
    base = {
        **base_row(job, tuple(x.shape), x.device),
        "layout": layout_of(x),
        **(extra or {}),
        "compile_s": first_call_s if job.impl == "compiled" else None,
    }
    rows = []
    for pass_ in passes:
        nbytes = bytes_moved(layer, x, pass_)
        make = functools.partial(_pass_copy, layer, x, pass_)
        try:
            with clocks.preserved_buffers(layer):  # BatchNorm's running statistics as before the pass
                timed = time_pass(job.timing, make, x.device, pass_, nbytes)
        except clocks.CaptureFailed as exc:  # this row is skipped; the job's other rows go on
            rows.append({**base, "pass": pass_, "status": "skipped", "error": str(exc), "bytes": nbytes})
            log.warning("%s %s %s skipped: %s", base["norm"], base["impl"], pass_, str(exc))
            continue
        row = {**base, "pass": pass_, **timed}
        gbps = nbytes / (row["device_ms"] * 1e-3) / 1e9  # the device clock: the roofline is about the kernels
        row.update(bytes=nbytes, gbps=gbps, **peak, pct_of_peak=100 * gbps / peak["peak_gbps"])
        rows.append(row)
        log.info(
            "%s %s %s %s: %.3f ms device (%s), %.3f ms wall, %.1f GB/s, %.0f%% of peak",
            row["norm"],
            row["impl"],
            pass_,
            row["shape"],
            row["device_ms"],
            row["device_clock"],
            row["wall_ms"],
            gbps,
            row["pct_of_peak"],
        )
    opts = {"min_run_time": job.timing.min_run_time, "min_repeats": job.timing.min_repeats}
    t = wrapper_overhead(layer, x, **opts) if wrapper else None
    if t is not None:
        own = {k: v for k, v in base.items() if k not in ("layers", "layer_names")}  # it stands for no layer
        rows.append(
            {
                **own,
                "pass": "wrapper",
                "compile_s": None,
                "cuda_graph": False,
                **_timing_columns(t, f"{t.timer}, host clock"),
            }
        )
        log.info("%s wrapper (checks, dispatch): %.2f us per call", base["norm"], 1e3 * t.median_ms)
    return rows


def time_pass(timing: PassTiming, make, device: torch.device, what: str, nbytes: int | None = None) -> dict:
    """The timing columns of a row (no bandwidth) for the pass `make(i)` builds as (fn, gradients to
    set to None between calls), copy i over buffers of its own (copy 0 may share the job's input):
    the wall clock of copy 0, then the device and host clocks (`normbench.bench.clocks`; `nbytes`, the
    pass's bytes, sizes the rotation that keeps the L2 cold). With speed.cuda_graph the wall clock is
    of a captured graph's replay. Raises clocks.CaptureFailed where a capture fails."""
    chosen = list(timing.clocks)
    fn, grads = make(0)
    peak_mem = peak_memory_mib(fn, device, grads)  # of the call itself: a graph's replay allocates nothing
    compiles = _dynamo_compiles()
    graph = timing.cuda_graph
    if graph:  # the replay rewrites its gradients: nothing to clear between repeats
        chosen = [c for c in chosen if c != "graph"]  # the wall clock is of a replay already
        # Free the eager pass first: its autograd graph keeps the leaves' AccumulateGrad nodes alive,
        # and those stay on the stream they were made on (the default one), so a captured backward
        # would make that stream wait on the capture, which CUDA refuses (cudaErrorStreamCaptureImplicit).
        del fn
        replay = clocks.capture(make, 1, 1, device)
        fn, grads, nbytes = replay, [], None  # one graph of one copy: nothing to rotate

        def make(i):  # every clock then times the replay
            return replay, []

    t = time_fn(fn, device, grad_to_none=grads, **timing.wall_options())
    del fn, grads  # the device clocks build their own copies (see above)
    cols = clocks.device_columns(
        make,
        device,
        t,
        nbytes=nbytes,
        clocks=chosen,
        device_clock=timing.device_clock,
        l2=timing.l2,
    )
    if _dynamo_compiles() != compiles:
        raise RuntimeError(f"torch.compile compiled while timing {what}: the time includes compilation")
    timer = t.timer + (" of a CUDA graph replay" if graph else "")
    return {**_timing_columns(t, timer), **cols, "cuda_graph": graph, "peak_mem_mib": peak_mem}


def _timing_columns(t: Timing, timer: str) -> dict:
    wall = {"wall_ms": t.median_ms, "wall_p20_ms": t.p20_ms, "wall_p80_ms": t.p80_ms}
    return {**wall, "repeats": t.repeats, "timer": timer}


def layout_of(x: torch.Tensor) -> str:
    """contiguous, channels_last, or strided (neither; a model's view of another tensor)."""
    if x.is_contiguous():
        return "contiguous"
    if x.dim() in CHANNELS_LAST and x.is_contiguous(memory_format=CHANNELS_LAST[x.dim()]):
        return "channels_last"
    return "strided"


def first_call(layer, x: torch.Tensor) -> float:
    """One forward and backward through the module, untimed by the passes: it checks x, and compiles
    impl=compiled (its wall time is `compile_s`). What an implementation cannot run was refused before
    (`check_support`), or raises Unsupported here; any other exception is a bug and keeps its traceback."""
    start = time.perf_counter()
    try:
        layer(x).backward(torch.randn_like(x))
        if x.device.type == "cuda":
            torch.cuda.synchronize(x.device)
    finally:
        x.grad = None
    return time.perf_counter() - start


def _triton_version() -> str | None:
    try:
        import triton
    except ImportError:
        return None
    return triton.__version__
