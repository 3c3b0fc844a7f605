"""`reference`: a norm's declared equation in plain tensor ops (the specification): the shared core
(`core.norm_forward`) for the classics, `equations` for the wider family."""

from __future__ import annotations

from torch import Tensor

from normbench.norms.layers import Norm


def reference(layer: Norm, x: Tensor) -> Tensor:
    return layer.equation(x, **layer.equation_args(x))


def functional_args(layer: Norm, x: Tensor) -> dict:
    """The keyword arguments of `core.norm_forward` but weight and bias, for a norm whose equation it is
    (bn, ln, in, gn: what the fused kernels take)."""
    return {k: v for k, v in layer.equation_args(x).items() if k not in ("weight", "bias")}
