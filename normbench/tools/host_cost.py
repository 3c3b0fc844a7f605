"""Host (Python) microseconds per impl=triton pass, with the kernel launches stubbed out, without a GPU.

    python -m normbench.tools.host_cost              # every GPU-sweep case, planned for an H100 (minutes)
    python -m normbench.tools.host_cost --norm gn --shape resnet_c64 --profile   # and where it goes

The autograd Function runs on uninitialized CPU tensors of the full shape (`DEVICE`) with each Triton
kernel replaced by a stub that only counts its launches (`stubbed`: the Function's `kernels`
argument), planned for an H100 (`KernelSettings.plan_for`). What is left is the host work of a call:
planning, checks, allocations, views, argument packing, the torch operators' dispatch (the
backward's dweight/dbias sums run over empty slices: `stubbed`) and autograd's own bookkeeping.
Passes as in `speed`: fwd (the forward, building the graph), bwd (`torch.autograd.grad` of a kept
graph) and fwdbwd (both); and `impl`, the Function's host functions (`norm_function.triton_forward`
then `triton_backward`) called directly:
the implementation's own host cost, without autograd's, which any Function pays (`Floor`).

The stubs' own calls are taken out fairly: each pass's traced launches are replayed on stubs alone,
with the same grids and arguments, timed the same way, and that time is subtracted from the pass's.

Timing: `timeit` with the process's CPU time as its clock (a shared machine's other load does not
count; garbage collection is off while it times), after `warmup` calls, `repeat` rounds of `number`
calls each; a pass's cost is the median round divided by `number`. `--profile` runs cProfile on the
same clock.

Allocations: unless `--system-allocator`, `main` first makes glibc keep freed blocks for reuse
(`caching_allocator`), as CUDA's caching allocator does on a GPU; otherwise each full-size CPU tensor
costs an mmap and munmap that no GPU host pays (~11 us for 205 MB here, twice per fwd+bwd in y and dx).

Left out, and to be added per launch: a real Triton launch's own host cost (`JITFunction.run` binds and
specializes the arguments, looks up the compiled kernel, calls the driver; about 8-20 us per launch
with current Triton, see docs/triton.md), and the CUDA side of each torch operator (caching
allocator, its own launch). The `kernels` and `torch ops` columns are the counts to multiply.
"""

from __future__ import annotations

import argparse
import cProfile
import dataclasses
import functools
import os
import pstats
import statistics
import sys
import time
import timeit
from dataclasses import dataclass

import torch

from normbench.tools import trace

# impl: fwd+bwd of the host functions alone, without autograd; layer: fwd+bwd of the nn.Module, as a
# user's `torch.autograd.grad(layer(x), ...)` runs it (the module, the registry's call, the Function)
PASSES = ("fwd", "bwd", "fwdbwd", "layer", "impl")
# Uninitialized CPU tensors at the full shape: the stubs never touch their memory, and CPU operators
# dispatch through C++ as CUDA ones do (meta tensors run some, e.g. sum and empty_like, through
# Python reference implementations, several times slower than any real device's host path).
DEVICE = "cpu"


class _Stub:
    """Stands in for a JITFunction: kernel[grid](*args, **meta) only counts (no binding, no launch)."""

    launches = 0

    def __init__(self, kernel):
        self.fn = kernel.fn

    def __getitem__(self, grid):
        return self._launch

    @staticmethod
    def _launch(*args, **meta):
        _Stub.launches += 1


def stubbed():
    """norm_function's kernels with each Triton kernel a `_Stub`, and the backward's dweight/dbias sums
    over empty slices of the partials.

    The sums keep their dispatch (host time on a GPU too) but not their CPU compute and first-touch page
    faults on the (2, rows, splits, C) partials, which on a GPU are device work.
    """
    from normbench.kernels.norm_function import KERNELS, weight_bias_grads

    def sums(partials, dtype):
        return weight_bias_grads(partials[:, :0], dtype)

    return dataclasses.replace(KERNELS.replaced(_Stub), weight_bias_grads=sums)


class Floor(torch.autograd.Function):
    """The least any Function with _TritonNorm's arguments costs: y allocated forward, dx, dweight and dbias
    backward, nothing else (autograd's own bookkeeping and the outputs' allocations)."""

    @staticmethod
    def forward(ctx, x, weight, bias, args):
        ctx.save_for_backward(x, weight)
        return torch.empty_like(x)

    @staticmethod
    def backward(ctx, dy):
        x, weight = ctx.saved_tensors
        return torch.empty_like(x), torch.empty_like(weight), torch.empty_like(weight), None


@dataclass
class HostCost:
    us: dict[str, float]  # median host microseconds per pass, the stubs' own time taken out
    stub_us: dict[str, float]  # what the stubs' calls cost per pass (subtracted from `us`)
    kernels: dict[str, int]  # Triton launches per pass (fwd, bwd)
    torch_ops: dict[str, int]  # torch operators that launch a kernel on a GPU, per pass (fwd, bwd)


def pass_calls(norm: str, shape, dtype: torch.dtype, layout_name: str, device=DEVICE, function=None) -> dict:
    """{pass: a no-argument callable running it}, for the Function (impl=triton's by default, with the
    stubbed kernels) as the sweep calls it."""
    from normbench.kernels.norm_function import _TritonNorm

    function = function or _TritonNorm
    kernels = stubbed()
    x, weight, bias, args = trace.function_inputs(norm, shape, dtype, layout_name, device=device, kernels=kernels)
    inputs = (x, weight, bias)
    dy = torch.empty_like(x)
    kept = function.apply(x, weight, bias, args)  # the graph the bwd pass runs again and again
    ours = function is _TritonNorm
    return {
        "impl": functools.partial(_host_functions, x.detach(), weight.detach(), bias.detach(), args, dy)
        if ours
        else lambda: None,
        "layer": _layer_call(norm, x, dy, args[-2], kernels) if ours else lambda: None,
        "fwd": lambda: function.apply(x, weight, bias, args),
        "bwd": lambda: torch.autograd.grad(kept, inputs, dy, retain_graph=True),
        "fwdbwd": lambda: torch.autograd.grad(function.apply(x, weight, bias, args), inputs, dy),
    }


def measure(
    norm: str,
    shape,
    dtype: torch.dtype,
    layout_name: str,
    *,
    repeat: int = 15,
    number: int = 40,
    warmup: int = 5,
    function=None,
) -> HostCost:
    """Median host microseconds per pass, and the launches each makes (see the module's docstring)."""
    counts = trace.trace(norm, shape, dtype, layout_name)
    if function is not None:  # not impl=triton's Function: it launches nothing
        counts = {name: trace.Pass() for name in counts}

    def median_us(call) -> float:
        for _ in range(warmup):
            call()
        rounds = timeit.Timer(call, timer=time.process_time).repeat(repeat=repeat, number=number)
        return statistics.median(rounds) / number * 1e6

    # The stubs' own calls, replayed with the traced arguments: the time they add to a pass is the
    # launch's Python call (the real one is counted per launch instead, docs/triton.md), so it comes out.
    stub_us = {name: median_us(functools.partial(_replay_stubs, _stubs(p.launches))) for name, p in counts.items()}
    if "sum" in counts["bwd"].torch_ops:  # `stubbed` slices the partials before the sum: the tool's, too
        probe = torch.empty(2, 1, 1, shape[1])
        stub_us["bwd"] += median_us(lambda: probe[:, :0])
    stub_us["fwdbwd"] = stub_us["impl"] = stub_us["layer"] = stub_us["fwd"] + stub_us["bwd"]
    calls = pass_calls(norm, shape, dtype, layout_name, function=function)
    us = {name: max(0.0, median_us(calls[name]) - stub_us[name]) for name in PASSES}
    return HostCost(
        us,
        stub_us,
        {name: len(p.launches) for name, p in counts.items()},
        {name: len(p.torch_ops) for name, p in counts.items()},
    )


def _layer_call(norm: str, x: torch.Tensor, dy: torch.Tensor, settings, kernels):
    """fwd+bwd of the registry's impl=triton layer (parameters in x's dtype) on x, launching `kernels`."""
    from normbench import norms
    from normbench.norms.impl.triton import use_kernel_settings

    options = {"groups": trace.GN_GROUPS} if norm == "gn" else {}
    layer = norms.build(norm, x.shape[1], impl="triton", device=x.device, dtype=x.dtype, **options)
    use_kernel_settings(layer, settings, kernels)
    inputs = (x, *layer.parameters())
    return lambda: torch.autograd.grad(layer(x), inputs, dy)


def _host_functions(x, weight, bias, args, dy) -> None:
    """norm_function's forward and backward host functions, called as the Function calls them."""
    from normbench.kernels.norm_function import triton_backward, triton_forward

    _, x, mean, rstd, plan = triton_forward(x, weight, bias, args)
    triton_backward(dy, x, weight, mean, rstd, plan, args[-1])


def caching_allocator() -> bool:
    """Make this process's CPU allocations behave as CUDA's caching allocator does for the host: glibc
    serves every block from its heap (M_MMAP_MAX 0) and keeps what is freed (M_TRIM_THRESHOLD), so
    allocating a full-size tensor again reuses the freed block (~1 us) instead of an mmap and munmap of
    hundreds of MB (~11 us), host time that a GPU's cached allocations do not have. False where there
    is no glibc."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        m_trim_threshold, m_mmap_max = -1, -4  # malloc.h
        return bool(libc.mallopt(m_mmap_max, 0)) and bool(libc.mallopt(m_trim_threshold, 2**31 - 1))
    except (OSError, AttributeError, TypeError):
        return False


def _stubs(launches: list) -> list:
    return [(_Stub(launch.kernel), launch.grid, launch.args, launch.meta) for launch in launches]


def _replay_stubs(stubs: list) -> None:
    for stub, grid, args, meta in stubs:
        stub[grid](*args, **meta)


def profile(cases: list, calls_per_case: int = 200, top: int = 25) -> str:
    """cProfile of fwdbwd over `cases`: the functions with the most own time, as pstats prints them."""
    profiler = cProfile.Profile(time.process_time)
    for norm, _, shape, dtype_name, layout_name in cases:
        fwdbwd = pass_calls(norm, shape, trace.DTYPES[dtype_name], layout_name)["fwdbwd"]
        fwdbwd()
        profiler.enable()
        for _ in range(calls_per_case):
            fwdbwd()
        profiler.disable()
    out = _Text()
    pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(top)
    return out.text


class _Text:
    def __init__(self):
        self.text = ""

    def write(self, s: str) -> None:
        self.text += s


HEADER = (
    "| shape | layout | dtype | norm | fwd us | bwd us | fwd+bwd us | layer fwd+bwd us | host functions fwd+bwd us "
    "| fwd+bwd above the floor us | kernels fwd+bwd | torch ops fwd+bwd |"
)


def _row(case: tuple, c: HostCost, floor: HostCost | None = None) -> str:
    """A table row; floor None: the floor's own row (no layer, host functions or launches)."""
    us = [f"{c.us[name]:.0f}" for name in ("fwd", "bwd", "fwdbwd")]
    if floor is None:
        return f"| {' | '.join((*case, *us))} | | | | | |"
    above = c.us["fwdbwd"] - floor.us["fwdbwd"]
    launches = f"{c.kernels['fwd']}+{c.kernels['bwd']} | {c.torch_ops['fwd']}+{c.torch_ops['bwd']}"
    return f"| {' | '.join((*case, *us))} | {c.us['layer']:.0f} | {c.us['impl']:.0f} | {above:.0f} | {launches} |"


def _load() -> str:
    """The 1, 5 and 15 minute load averages: on a shared machine they inflate every figure."""
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--norm", choices=trace.NORMS, action="append", help="only these norms (repeatable)")
    parser.add_argument(
        "--shape", choices=[*trace.GPU_SHAPES, *trace.ROW_SHAPES], action="append", help="only these shapes"
    )
    parser.add_argument("--repeat", type=int, default=15, help="timed rounds per pass (median taken)")
    parser.add_argument("--number", type=int, default=40, help="calls per round")
    parser.add_argument("--profile", action="store_true", help="also print cProfile's top functions (fwdbwd)")
    parser.add_argument(
        "--system-allocator",
        action="store_true",
        help="leave glibc's malloc as it is: every full-size tensor is then an mmap and munmap (~11 us each)",
    )
    opts = parser.parse_args(argv)
    # The stubs launch nothing, but a layer's call checks that the kernels can run on its input: on CPU
    # tensors that is the interpreter (read by triton when asked, so setting it here is enough).
    os.environ.setdefault("TRITON_INTERPRET", "1")
    if not opts.system_allocator:
        caching_allocator()
    cases = [
        c
        for c in trace.sweep_cases()
        if (not opts.norm or c[0] in opts.norm) and (not opts.shape or c[1] in opts.shape)
    ]
    print(f"load average {_load()}; torch {torch.__version__}, {os.cpu_count()} CPUs", flush=True)
    print(HEADER)
    print("|---" * (HEADER.count("|") - 1) + "|")
    timing = {"repeat": opts.repeat, "number": opts.number}
    floor = measure("gn", trace.GPU_SHAPES["resnet_c64"], torch.float32, "contiguous", function=Floor, **timing)
    print(_row(("resnet_c64", "contiguous", "fp32", "autograd floor (`Floor`)"), floor), flush=True)
    for norm, shape_name, shape, dtype_name, layout_name in cases:
        cost = measure(norm, shape, trace.DTYPES[dtype_name], layout_name, **timing)
        print(_row((shape_name, layout_name, dtype_name, norm), cost, floor), flush=True)
    print(f"load average {_load()}")
    if opts.profile:
        print(profile(cases))
    return 0


if __name__ == "__main__":
    sys.exit(main())
