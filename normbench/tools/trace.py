"""The launches impl=triton makes for a shape, as an H100 would see them, recorded without a GPU.

The autograd Function runs forward and backward on meta tensors (no data, no device) with its
kernels (`norm_function.Kernels`) recorders, and `KernelSettings.plan_for` set so the heuristics plan
for the given SMs and L2 size. What comes out is each pass's kernel launches (kernel, grid, arguments,
constexprs) and the torch operators it runs (each of those is a launch on a GPU too). Used by
`compile_check plans` (compile exactly what the dispatch picks), `traffic` (bytes from HBM) and the
launch-count tests.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import torch
from torch.utils._python_dispatch import TorchDispatchMode, _disable_current_modes

from normbench.kernels.settings import KernelSettings

H100 = (132, 50 * 2**20)  # SMs, L2 bytes: an H100 SXM (NVIDIA H100 Tensor Core GPU datasheet)

# The GPU sweep's image shapes (conf/shape/*.yaml; tests check they agree) and its dtypes and layouts.
GPU_SHAPES = {
    "resnet_c64": (256, 64, 56, 56),
    "resnet_c256": (1024, 256, 14, 14),
    "sd_gn": (16, 512, 64, 64),
}
# And its LayerNorm on transformer rows (conf/sweep/gpu_rows.yaml: (4096, hidden), contiguous only).
ROW_SHAPES = {f"rows_{hidden}": (4096, hidden) for hidden in (1024, 2048, 4096, 8192, 16384)}
NORMS = ("bn", "ln", "in", "gn")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
LAYOUTS = ("contiguous", "channels_last")
GN_GROUPS = 32  # conf/norm/gn.yaml

# Operators that allocate, reshape or alias: no kernel on a GPU.
_NO_KERNEL = {
    "empty",
    "empty_like",
    "empty_strided",
    "new_empty",
    "new_empty_strided",
    "view",
    "_unsafe_view",
    "as_strided",
    "detach",
    "alias",
    "t",
    "permute",
    "expand",
    "unsqueeze",
    "squeeze",
    "select",
    "split_with_sizes",
    "narrow",
    "unbind",
    "slice",
    "reshape",
    "_reshape_alias",
    "clone_meta",
}


@dataclass
class Launch:
    kernel: object  # the triton JITFunction
    grid: tuple
    args: tuple
    meta: dict  # constexprs and launch options (num_warps)

    @property
    def name(self) -> str:
        return self.kernel.fn.__name__


@dataclass
class Pass:
    launches: list[Launch] = field(default_factory=list)
    torch_ops: list[str] = field(default_factory=list)  # operators that launch a kernel on a GPU
    torch_bytes: list[int] = field(default_factory=list)  # and the bytes each reads and writes

    @property
    def count(self) -> int:
        return len(self.launches) + len(self.torch_ops)


class _Recorder:
    """Stands in for a JITFunction: kernel[grid](*args, **meta) is recorded (and run when `run`)."""

    def __init__(self, kernel, sink: list, run: bool):
        self.kernel, self.sink, self.run, self.fn = kernel, sink, run, kernel.fn

    def __getitem__(self, grid):
        def launch(*args, **meta):
            self.sink[-1].launches.append(Launch(self.kernel, tuple(grid), args, meta))
            if self.run:  # the interpreter's own tensor work is not the Function's: not counted
                with _disable_current_modes():
                    self.kernel[grid](*args, **meta)

        return launch


class _TorchOps(TorchDispatchMode):
    def __init__(self, sink: list):
        super().__init__()
        self.sink = sink

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__.rstrip("_")
        out = func(*args, **(kwargs or {}))
        if name not in _NO_KERNEL:
            tensors = [t for t in (*args, *(kwargs or {}).values(), out) if isinstance(t, torch.Tensor)]
            self.sink[-1].torch_ops.append(name)
            self.sink[-1].torch_bytes.append(sum(t.numel() * t.element_size() for t in tensors))
        return out


@contextlib.contextmanager
def recording(run: bool = False):
    """Yield (passes, kernels): `passes` gets one `Pass` per `passes.append(Pass())`, holding the launches
    that the calls given `kernels` (norm_forward's argument) make until the next one, and the torch
    operators anything runs meanwhile.

    With run=False the kernels are not launched (for meta tensors); with run=True they are, so a test
    can count the launches of a real (interpreted) call.
    """
    from normbench.kernels.norm_function import KERNELS

    passes: list[Pass] = [Pass()]
    with _TorchOps(passes):
        yield passes, KERNELS.replaced(lambda kernel: _Recorder(kernel, passes, run))


def norm_kwargs(norm: str, x: torch.Tensor, train: bool = True) -> dict:
    """core.norm_forward's keyword arguments for the registry's default layer of that name."""
    n, c = x.shape[:2]
    if norm == "bn":
        stats = {"running_mean": torch.zeros(c, device=x.device), "running_var": torch.ones(c, device=x.device)}
        return {"samples": n, "groups": c, "eps": 1e-5, **stats, "use_batch_stats": train, "factor": 0.1}
    groups = {"ln": 1, "in": c, "gn": GN_GROUPS}[norm]
    return {"samples": 1, "groups": groups, "eps": 1e-5}


def make_input(shape, dtype: torch.dtype, layout_name: str, device="meta") -> torch.Tensor:
    fmt = {4: torch.channels_last, 5: torch.channels_last_3d}.get(len(shape), torch.contiguous_format)
    fmt = fmt if layout_name == "channels_last" else torch.contiguous_format
    return torch.empty(shape, dtype=dtype, device=device, memory_format=fmt)


def function_inputs(
    norm: str,
    shape,
    dtype: torch.dtype,
    layout_name: str,
    *,
    train: bool = True,
    virtual_batch: int | None = None,
    device="meta",
    settings: KernelSettings | None = None,
    kernels=None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, tuple]:
    """(x, weight, bias, the Function's other arguments) of an affine layer, x and the parameters
    requiring grad (uninitialized: on meta tensors by default), planned with `settings` (an H100's by
    default) and launching `kernels` (norm_function.KERNELS by default)."""
    from normbench.kernels.norm_function import KERNELS

    x = make_input(shape, dtype, layout_name, device).requires_grad_()
    c = shape[1]
    weight = torch.empty(c, device=device, requires_grad=True)
    bias = torch.empty(c, device=device, requires_grad=True)
    kw = norm_kwargs(norm, x, train)
    if virtual_batch:  # BatchNorm's statistics over groups of this many samples
        kw["samples"] = virtual_batch
    args = (
        kw["samples"],
        kw["groups"],
        kw["eps"],
        kw.get("running_mean"),
        kw.get("running_var"),
        kw.get("use_batch_stats", True),
        kw.get("factor", 0.0),
        KernelSettings(plan_for=H100) if settings is None else settings,
        KERNELS if kernels is None else kernels,
    )
    return x, weight, bias, args


def trace(
    norm: str,
    shape,
    dtype: torch.dtype,
    layout_name: str,
    *,
    train: bool = True,
    virtual_batch: int | None = None,
    plan_for: tuple[int, int] = H100,
    cooperative: bool = False,
    force_path: str | None = None,
) -> dict[str, Pass]:
    """{"fwd": Pass, "bwd": Pass} of one forward and backward of an affine layer, on meta tensors, planned
    with these KernelSettings."""
    from normbench.kernels.norm_function import _TritonNorm

    settings = KernelSettings(cooperative=cooperative, force_path=force_path, plan_for=plan_for)
    with recording() as (passes, kernels):
        inputs = {"train": train, "virtual_batch": virtual_batch, "settings": settings, "kernels": kernels}
        x, weight, bias, args = function_inputs(norm, shape, dtype, layout_name, **inputs)
        passes[-1] = Pass()  # the inputs' own operators are not the Function's
        y = _TritonNorm.apply(x, weight, bias, args)
        dy = torch.empty_like(y)
        passes.append(Pass())
        torch.autograd.grad(y, (x, weight, bias), dy)  # no AccumulateGrad: only the Function's work
    return {"fwd": passes[0], "bwd": passes[1]}


def sweep_cases():
    """(norm, shape name, shape, dtype name, layout) of the GPU sweeps (sweep=gpu, then sweep=gpu_rows)."""
    for shape_name, shape in GPU_SHAPES.items():
        for dtype_name in DTYPES:
            for layout_name in LAYOUTS:
                for norm in NORMS:
                    yield norm, shape_name, shape, dtype_name, layout_name
    for shape_name, shape in ROW_SHAPES.items():
        for dtype_name in DTYPES:
            yield "ln", shape_name, shape, dtype_name, "contiguous"
