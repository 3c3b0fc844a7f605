"""`triton`: every norm computed by the fused Triton kernels in normbench.kernels (forward and backward).

Registered whether or not triton is installed, so `implementations(name)` lists it everywhere;
`supports` and the first forward say what is missing (the triton package, a CUDA GPU or
TRITON_INTERPRET=1, a dtype the kernels take).
"""

from __future__ import annotations

import torch
from torch import Tensor

from normbench.kernels import availability
from normbench.norms.layers import Norm
from normbench.norms.reference import functional_args
from normbench.norms.registry import Query, register


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

    return norm_forward(x, layer.weight, layer.bias, **functional_args(layer, x))
