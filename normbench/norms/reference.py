"""`reference`: every norm computed by the shared core in plain tensor ops (the specification); the
wider family through `equations`, which builds on the same core."""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor

from normbench.norms import equations, family
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


def family_call(layer: Norm, x: Tensor) -> tuple[Callable[..., Tensor], dict]:
    """The `equations` function of a wider-family layer and its keyword arguments (all but x) for input x."""
    common = {"weight": layer.weight, "eps": layer.eps}
    if isinstance(layer, family.LayerNorm2d):
        return equations.layer_norm_2d, {**common, "bias": layer.bias}
    if isinstance(layer, family.RMSNorm):
        return equations.rms_norm, common
    common["bias"] = layer.bias
    act = getattr(layer, "apply_act", False)
    if isinstance(layer, family.FilterResponseNorm):
        return equations.filter_response_norm, {
            **common,
            "tau": layer.tau if act else None,
            "eps_learned": layer.eps_learned,
        }
    if isinstance(layer, family.EvoNormS0):
        return equations.evonorm_s0, {**common, "v": layer.v if act else None, "groups": layer.groups()}
    batch = functional_args(layer, x)
    stats = {
        "samples": batch["samples"],
        "running_mean": layer.running_mean,
        "running_var": layer.running_var,
        "factor": layer.update_factor,
    }
    if isinstance(layer, family.EvoNormB0):
        return equations.evonorm_b0, {
            **common,
            **stats,
            "v": layer.v if act else None,
            "use_batch_stats": layer.use_batch_stats,
        }
    if isinstance(layer, family.BatchRenorm):
        rmax, dmax = layer.clip_limits() if layer.training else (1.0, 0.0)
        return equations.batch_renorm, {**common, **stats, "training": layer.training, "rmax": rmax, "dmax": dmax}
    raise TypeError(f"{type(layer).__name__} is not in the wider family")


@register("rms", "reference")
@register("ln2d", "reference")
@register("brn", "reference")
@register("frn", "reference")
@register("evonorm_b0", "reference")
@register("evonorm_s0", "reference")
def family_reference(layer: Norm, x: Tensor) -> Tensor:
    fn, kwargs = family_call(layer, x)
    return fn(x, **kwargs)
