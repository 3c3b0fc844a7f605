"""`native`: the fastest torch built-in that computes exactly each norm's function."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from normbench.norms.layers import BatchNorm, Norm
from normbench.norms.registry import register


@register("bn", "native")
def batch_norm(layer: BatchNorm, x: Tensor) -> Tensor:
    n, c = x.shape[:2]
    k = layer.samples(n)
    track = layer.track_running_stats
    if not layer.use_batch_stats or k == n:
        return F.batch_norm(
            x,
            layer.running_mean if track else None,
            layer.running_var if track else None,
            layer.weight,
            layer.bias,
            layer.use_batch_stats,
            layer.update_factor,
            layer.eps,
        )
    # Virtual batches: lay the B = n / k batches side by side as B * c channels, so one batch_norm
    # call takes per-(virtual batch, channel) statistics; the running statistics are averaged over
    # the B copies afterwards, as torch's instance_norm does with its running statistics.
    b = n // k
    xt = x.reshape(b, k, c, -1).transpose(0, 1).reshape(k, b * c, -1)
    rm = layer.running_mean.repeat(b) if track else None
    rv = layer.running_var.repeat(b) if track else None
    w = layer.weight.repeat(b) if layer.weight is not None else None
    bias = layer.bias.repeat(b) if layer.bias is not None else None
    y = F.batch_norm(xt, rm, rv, w, bias, True, layer.update_factor, layer.eps)
    if track:
        layer.running_mean.copy_(rm.view(b, c).mean(0))
        layer.running_var.copy_(rv.view(b, c).mean(0))
    return y.reshape(k, b, c, -1).transpose(0, 1).reshape(x.shape)


@register("ln", "native")
def layer_norm(layer: Norm, x: Tensor) -> Tensor:
    if x.dim() == 2:  # the transformer LayerNorm: one row per sample
        return F.layer_norm(x, (x.shape[1],), layer.weight, layer.bias, layer.eps)
    # Over C and spatial with a per-channel affine: exactly group_norm with one group, in one kernel.
    return F.group_norm(x, 1, layer.weight, layer.bias, layer.eps)


@register("in", "native")
def instance_norm(layer: Norm, x: Tensor) -> Tensor:
    return F.instance_norm(x, weight=layer.weight, bias=layer.bias, use_input_stats=True, eps=layer.eps)


@register("gn", "native")
def group_norm(layer: Norm, x: Tensor) -> Tensor:
    return F.group_norm(x, layer.groups(), layer.weight, layer.bias, layer.eps)
