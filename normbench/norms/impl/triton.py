"""`triton`: every norm computed by the fused Triton kernels in normbench.kernels (forward and backward).

Registered whether or not triton is installed, so `implementations(name)` lists it everywhere;
`supports` and the first forward say what is missing (the triton package, a CUDA GPU or
TRITON_INTERPRET=1, a dtype the kernels take). A layer plans with the default KernelSettings unless
`use_kernel_settings` gave it others (the speed app's `triton.cooperative`).
"""

from __future__ import annotations

import torch
from torch import Tensor

from normbench.kernels import availability
from normbench.kernels.settings import DEFAULT, KernelSettings
from normbench.norms.impl.reference import functional_args
from normbench.norms.layers import Norm
from normbench.norms.registry import Query, register

_SETTINGS = "triton_kernel_settings"  # the layer's own (instance __dict__: no nn.Module lookup per call)
_DEFAULTS = (DEFAULT, None)  # None: norm_function's own kernels


def use_kernel_settings(layer: Norm, settings: KernelSettings, kernels=None) -> Norm:
    """Make impl=triton's `layer` plan with `settings` (and launch `kernels`, a norm_function.Kernels,
    for a tool that records or stubs them); returns the layer."""
    layer.__dict__[_SETTINGS] = (settings, kernels)
    return layer


def kernel_settings(layer: Norm) -> KernelSettings:
    """The settings `layer` plans with."""
    return layer.__dict__.get(_SETTINGS, _DEFAULTS)[0]


def _supports(query: Query) -> str | None:
    return availability.unsupported(query.device, query.dtype, timing=query.timing)


# Not traced by torch.compile: the launches pick their kernels and grids in Python from the input's
# strides and sizes, and dynamo cannot trace the interpreter's kernels. In a compiled model the layer
# is a graph break and runs eagerly, as it does outside one.
@register("bn", "triton", supports=_supports)
@register("ln", "triton", supports=_supports)
@register("in", "triton", supports=_supports)
@register("gn", "triton", supports=_supports)
@torch.compiler.disable
def triton_norm(layer: Norm, x: Tensor) -> Tensor:
    availability.require_runnable(x)
    from normbench.kernels.norm_function import norm_forward  # imports triton, so only once it can run

    settings, kernels = layer.__dict__.get(_SETTINGS, _DEFAULTS)
    return norm_forward(x, layer.weight, layer.bias, **functional_args(layer, x), settings=settings, kernels=kernels)
