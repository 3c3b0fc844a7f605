"""`reference`: every norm computed by the shared core in plain tensor ops (the specification)."""

from __future__ import annotations

from torch import Tensor

from normbench.norms.core import norm_forward
from normbench.norms.layers import BatchNorm, Norm
from normbench.norms.registry import register


def functional_args(layer: Norm, x: Tensor) -> dict:
    """The keyword arguments of `core.norm_forward` that make `layer` what it is, for input x."""
    args = {"samples": layer.samples(x.shape[0]), "groups": layer.groups(), "eps": layer.eps}
    if isinstance(layer, BatchNorm):
        if not layer.use_batch_stats:
            args["samples"] = x.shape[0]  # running statistics: one (virtual) batch of all samples
        args.update(
            running_mean=layer.running_mean,
            running_var=layer.running_var,
            use_batch_stats=layer.use_batch_stats,
            factor=layer.update_factor,
        )
    return args


@register("bn", "reference")
@register("ln", "reference")
@register("in", "reference")
@register("gn", "reference")
def reference(layer: Norm, x: Tensor) -> Tensor:
    return norm_forward(x, layer.weight, layer.bias, **functional_args(layer, x))
