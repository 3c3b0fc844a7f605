"""`triton`: every norm computed by the fused Triton kernels in normbench.kernels (forward and backward).

Registered whether or not triton is installed, so `implementations(name)` lists it everywhere; the
first forward says what is missing (the triton package, or a CUDA GPU / TRITON_INTERPRET=1).
"""

from __future__ import annotations

from torch import Tensor

from normbench.kernels.availability import require_runnable
from normbench.norms.layers import Norm
from normbench.norms.reference import functional_args
from normbench.norms.registry import register


@register("bn", "triton")
@register("ln", "triton")
@register("in", "triton")
@register("gn", "triton")
def triton_norm(layer: Norm, x: Tensor) -> Tensor:
    require_runnable(x)
    from normbench.kernels.norm_function import norm_forward  # imports triton, so only once it can run

    return norm_forward(x, layer.weight, layer.bias, **functional_args(layer, x))
