"""The speed job: time one norm x implementation at one shape, per pass, against the bandwidth roofline.

Normalization is memory-bound, so each time is turned into the bandwidth it implies (the fewest
bytes the pass must move / the median time) and compared with what the device moves in a large copy
(`pct_of_peak`). The timing itself is in `normbench.timing`.

Passes (the module in training mode, input and parameters requiring grad, as in training):
  fwd     the forward alone (building the autograd graph, updating BatchNorm's running statistics);
  bwd     the backward alone: one forward, then `y.backward(dy, retain_graph=True)` per repeat, with
          the gradients set to None between repeats (tritonbench's get_bwd_fn / grad_to_none);
  fwdbwd  forward and backward together.

Fair timing: a pass calls the implementation's function (`layer.impl_fn(layer, x)`, e.g. F.group_norm
for native), on input the module's `forward` checked once before timing; normbench's wrapper (input
checks, registry dispatch) is timed on its own, once per native job, as a row of pass `wrapper`.
Shapes from a model and whole training steps: `normbench.model_speed`.
"""

from __future__ import annotations

import copy
import functools
import logging
import math
import time
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf
from torch._functorch import config as functorch_config

from normbench import clocks, norms
from normbench.device import cpu_cores, device_name, free_memory, resolve_device
from normbench.errors import Unsupported, UsageError
from normbench.timing import (
    Timing,
    cache_bytes,
    peak_bandwidth,
    peak_memory_mib,
    time_cpu,
    time_fn,
)

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


def parse_dtype(name: str) -> torch.dtype:
    if name not in DTYPES:
        raise UsageError(f"unknown dtype {name!r}: use dtype={', dtype='.join(DTYPES)}")
    return DTYPES[name]


def input_shape(speed: DictConfig) -> tuple[int, ...]:
    spatial = list(speed.spatial or [])
    shape = (speed.batch_size, speed.channels, *spatial)
    if any(not isinstance(s, int) or isinstance(s, bool) or s < 1 for s in shape):
        raise UsageError(
            f"speed.batch_size, speed.channels and speed.spatial must be positive ints, got shape {shape}: "
            "e.g. speed.batch_size=8 speed.channels=64 speed.spatial=[28,28]"
        )
    if len(spatial) > 3:
        raise UsageError(f"speed.spatial has {len(spatial)} dimensions; norms take 0 to 3, e.g. speed.spatial=[28,28]")
    return shape


def make_input(shape, dtype: torch.dtype, layout: str, device: torch.device) -> torch.Tensor:
    if layout not in LAYOUTS:
        raise UsageError(f"unknown layout {layout!r}: use layout=contiguous or layout=channels_last")
    if layout == "channels_last" and len(shape) not in CHANNELS_LAST:
        raise UsageError(
            f"layout=channels_last needs an (N, C, H, W) or (N, C, D, H, W) input, got shape "
            f"{tuple(shape)}: use layout=contiguous, or give speed.spatial two or three sizes"
        )
    x = torch.randn(shape, dtype=dtype, device=device)
    if layout == "channels_last":
        x = x.contiguous(memory_format=CHANNELS_LAST[len(shape)])
    return x.requires_grad_()


def _number(value, key: str, hint: str, *, integer: bool = False, allow_none: bool = False, most: float | None = None):
    """`value` if it is a positive finite number (an int when `integer`) of at most `most`, else
    UsageError naming `key`."""
    if value is None and allow_none:
        return None
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds) or not value > 0 or not math.isfinite(value):
        what = "a positive int" if integer else "a positive finite number"
        raise UsageError(f"{key} must be {what}{' or null' if allow_none else ''}, got {value!r}: {hint}")
    if most is not None and value > most:
        raise UsageError(f"{key}={value} is more than {most:g}: {hint}")
    return value


def check_speed_config(sp: DictConfig, device: torch.device) -> None:
    """The speed.* keys, checked before anything is timed or allocated: one line naming the key that
    is wrong, and the memory a shape or the peak's copy would take against what the device has free."""
    if sp.get("cuda_graph") not in (None, True, False):
        raise UsageError(f"speed.cuda_graph must be true or false, got {sp.get('cuda_graph')!r}")
    if sp.get("cuda_graph") and device.type != "cuda":
        raise UsageError(
            f"speed.cuda_graph=true times the replay of a captured CUDA graph, and the device is {device}: "
            "run it with device=cuda on a GPU, or leave speed.cuda_graph=false"
        )
    _number(sp.get("min_run_time"), "speed.min_run_time", "seconds of timed calls per pass, e.g. 0.2", most=3600)
    _number(sp.get("min_repeats"), "speed.min_repeats", "e.g. 10", integer=True)
    _number(sp.get("warmup_ms"), "speed.warmup_ms", "e.g. 25")
    _number(sp.get("rep_ms"), "speed.rep_ms", "e.g. 100")
    cores = cpu_cores()
    _number(
        sp.get("threads"),
        "speed.threads",
        f"CPU threads, at most the {cores} core(s) this process may use, e.g. 1",
        integer=True,
        allow_none=True,
        most=cores,
    )
    _number(
        sp.get("peak_gbps"),
        "speed.peak_gbps",
        "the roofline in GB/s, e.g. 3350, or null to measure it",
        allow_none=True,
    )
    copy_mb = _number(sp.get("peak_copy_mb"), "speed.peak_copy_mb", "MiB per copy buffer, e.g. 512", integer=True)
    # Sizes estimated before anything is allocated: an allocation that cannot succeed is a traceback
    # (or, on the CPU, the OOM killer) instead of a line. Elements at float32's 4 bytes, the widest dtype.
    free = free_memory(device)
    dims = [sp.get("batch_size"), sp.get("channels"), *(sp.get("spatial") or [])]
    needs = []
    if all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in dims):
        needs.append(
            (
                f"the shape {tuple(dims)} (speed.batch_size, speed.channels, speed.spatial): its input, output "
                "and their gradients",
                4 * 4 * math.prod(dims),
                "choose a smaller shape",
            )
        )
    if sp.get("peak_gbps") is None:
        needs.append(
            (
                f"speed.peak_copy_mb={copy_mb}: the peak's two copy buffers",
                2 * copy_mb * 2**20,
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


def check_support(cfg: DictConfig, dtype: torch.dtype, device: torch.device) -> None:
    """Unsupported (a sweep records the job as skipped) unless cfg.impl runs cfg.norm here, at its speed."""
    options = {k: v for k, v in OmegaConf.to_container(cfg.norm, resolve=True).items() if k != "name"}
    reason = norms.supports(cfg.norm.name, cfg.impl, device=device, dtype=dtype, timing=True, **options)
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
    probe._forward_impl = _identity
    with torch.no_grad():
        return time_cpu(lambda: probe.forward(x), min_run_time=min_run_time, min_repeats=min_repeats)


def _dynamo_compiles() -> int:
    from torch._dynamo.utils import counters

    return counters["frames"]["ok"]


def _hydra():
    from hydra.core.hydra_config import HydraConfig

    return HydraConfig.get() if HydraConfig.initialized() else None


def run(cfg: DictConfig, out_dir: Path) -> list[dict]:
    """Time cfg.norm with cfg.impl at one shape for each pass in cfg.pass; one row per pass. With
    `shape=model`, at every input shape of a model's norm layers, and the model's whole step."""
    from hydra.types import RunMode

    from normbench import model_speed

    hc = _hydra()
    multirun = hc is not None and hc.mode == RunMode.MULTIRUN
    device = resolve_device(cfg.device, hc.job.num if multirun else None)
    check_speed_config(cfg.speed, device)
    clocks.check_clock_config(cfg.speed)
    passes = parse_passes(cfg["pass"])
    dtype = parse_dtype(cfg.dtype)
    from_model = model_speed.model_mode(cfg)
    shape = None if from_model else input_shape(cfg.speed)
    check_support(cfg, dtype, device)
    # The peak is measured once per sweep: in the sweep directory, or in a single run's own.
    peak_dir = Path(hc.sweep.dir) if multirun else Path(out_dir)
    threads = torch.get_num_threads()
    if device.type == "cpu" and cfg.speed.get("threads"):
        torch.set_num_threads(int(cfg.speed.threads))
    try:
        with retained_backward():
            if from_model:
                return model_speed.time_model(cfg, passes, dtype, device, peak_dir)
            torch.manual_seed(cfg.seed)
            layer = norms.build_from_config(cfg.norm, shape[1], impl=cfg.impl, device=device, dtype=dtype).train()
            x = make_input(shape, dtype, cfg.layout, device)
            first_call_s = _first_call(layer, x)  # before the peak: a bad combination fails fast
            pk = peak(cfg, device, peak_dir)
            return time_layer(cfg, layer, x, passes, pk, first_call_s, wrapper=cfg.impl == "native")
    finally:
        torch.set_num_threads(threads)  # the next job of a sweep in this process starts from the default


def timing_options(sp: DictConfig) -> dict:
    """The wall clock's options; speed.l2=warm leaves the L2 unflushed between its repeats."""
    keep = {k: sp[k] for k in ("min_run_time", "min_repeats", "warmup_ms", "rep_ms")}
    return {**keep, "flush": sp.get("l2") != "warm"}


def peak(cfg: DictConfig, device: torch.device, peak_dir: Path) -> dict:
    """The roofline: speed.peak_gbps if given, else the copy bandwidth measured once per sweep."""
    sp = cfg.speed
    if sp.get("peak_gbps") is not None:
        return {"peak_gbps": float(sp.peak_gbps), "peak_method": "given (speed.peak_gbps)"}
    warn_if_cached(int(sp.peak_copy_mb), device)
    copy_timing = {**timing_options(sp), "min_repeats": 5}  # each copy takes ~0.1 s on a CPU
    return peak_bandwidth(device, device_name(device), peak_dir, sp.peak_copy_mb, **copy_timing)


def base_row(cfg: DictConfig, shape, device: torch.device) -> dict:
    """The columns every row of this job shares, for an input of `shape`."""
    return {
        "kind": "speed",
        **{k: v for k, v in OmegaConf.to_container(cfg.norm, resolve=True).items() if k != "name"},  # groups, eps, ...
        "norm": cfg.norm.name,
        "impl": cfg.impl,
        "batch_size": shape[0],
        "channels": shape[1],
        "spatial": "x".join(map(str, shape[2:])),
        "shape": "x".join(map(str, shape)),
        "dtype": cfg.dtype,
        "layout": cfg.layout,
        "device": str(device),
        "device_name": device_name(device),
        "threads": torch.get_num_threads() if device.type == "cpu" else None,
        "torch_version": torch.__version__,
        "triton_version": _triton_version(),
        "seed": cfg.seed,
    }


def time_layer(
    cfg: DictConfig,
    layer,
    x: torch.Tensor,
    passes,
    peak: dict,
    first_call_s: float,
    *,
    wrapper: bool = False,
    extra: dict | None = None,
) -> list[dict]:
    """One row per pass for `layer` on `x`, after `_first_call` checked x through the module (plus a
    row of the wrapper's own cost when `wrapper`); `extra` columns go on every row."""
    base = {
        **base_row(cfg, tuple(x.shape), x.device),
        "layout": layout_of(x),
        **(extra or {}),
        "compile_s": first_call_s if cfg.impl == "compiled" else None,
    }
    rows = []
    for pass_ in passes:
        nbytes = bytes_moved(layer, x, pass_)
        make = functools.partial(_pass_copy, layer, x, pass_)
        try:
            with clocks.preserved_buffers(layer):  # BatchNorm's running statistics as before the pass
                timed = time_pass(cfg, make, x.device, pass_, nbytes)
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
    sp = cfg.speed
    t = wrapper_overhead(layer, x, min_run_time=sp.min_run_time, min_repeats=sp.min_repeats) if wrapper else None
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


def time_pass(cfg: DictConfig, make, device: torch.device, what: str, nbytes: int | None = None) -> dict:
    """The timing columns of a row (no bandwidth) for the pass `make(i)` builds as (fn, gradients to
    set to None between calls), copy i over buffers of its own (copy 0 may share the job's input):
    the wall clock of copy 0, then the device and host clocks (`normbench.clocks`; `nbytes`, the
    pass's bytes, sizes the rotation that keeps the L2 cold). With speed.cuda_graph the wall clock is
    of a captured graph's replay. Raises clocks.CaptureFailed where a capture fails."""
    sp = cfg.speed
    chosen = clocks.parse_clocks(sp.get("clocks", "all"))
    fn, grads = make(0)
    peak_mem = peak_memory_mib(fn, device, grads)  # of the call itself: a graph's replay allocates nothing
    compiles = _dynamo_compiles()
    graph = bool(sp.get("cuda_graph"))
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

    t = time_fn(fn, device, grad_to_none=grads, **timing_options(sp))
    del fn, grads  # the device clocks build their own copies (see above)
    cols = clocks.device_columns(
        make,
        device,
        t,
        nbytes=nbytes,
        clocks=chosen,
        device_clock=sp.get("device_clock", "graph"),
        l2=sp.get("l2", "cold"),
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


def _first_call(layer, x: torch.Tensor) -> float:
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
