"""`native`: the fastest torch built-in that computes exactly each norm's function (EvoNorm has none).

Each norm class names its function here as its `native` (normbench.norms.layers, family); the registry
makes that its `native` implementation.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor

from normbench.errors import Unsupported
from normbench.norms.core import affine, per_channel

if TYPE_CHECKING:
    from normbench.norms.family import BatchRenorm, FilterResponseNorm
    from normbench.norms.layers import BatchNorm, Norm
    from normbench.norms.registry import Query


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
    xt = side_by_side(x, b, k)
    rm = layer.running_mean.repeat(b) if track else None
    rv = layer.running_var.repeat(b) if track else None
    w = layer.weight.repeat(b) if layer.weight is not None else None
    bias = layer.bias.repeat(b) if layer.bias is not None else None
    y = F.batch_norm(xt, rm, rv, w, bias, True, layer.update_factor, layer.eps)
    if track:
        layer.running_mean.copy_(rm.view(b, c).mean(0))
        layer.running_var.copy_(rv.view(b, c).mean(0))
    return one_behind_another(y, x)


def _channels_last(x: Tensor) -> bool:
    # Both layouts at once (one channel, or one pixel) is no layout to keep: the plain path.
    return x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()


def side_by_side(x: Tensor, b: int, k: int) -> Tensor:
    """(b k, c, ...) as (k, b c, ...): the b virtual batches of k samples side by side as channels, in
    one copy. A channels_last x gives a channels_last (k, b c, h, w), so batch_norm keeps the layout."""
    c = x.shape[1]
    if not _channels_last(x):
        return x.reshape(b, k, c, -1).transpose(0, 1).reshape(k, b * c, -1)
    h, w = x.shape[2:]
    nhwc = x.permute(0, 2, 3, 1).reshape(b, k, h, w, c)  # a view: x's storage order
    return nhwc.permute(1, 2, 3, 0, 4).reshape(k, h, w, b * c).permute(0, 3, 1, 2)


def one_behind_another(y: Tensor, x: Tensor) -> Tensor:
    """side_by_side's inverse: `y` (k, b c, ...) back in `x`'s shape and memory format."""
    return _OneBehindAnother.apply(y, x.shape, _channels_last(x))


class _OneBehindAnother(torch.autograd.Function):
    """One copy each way into a tensor of its own, not a view: after a view, the in-place ReLU that
    follows the norm would make autograd copy the whole gradient once more (CopySlices), into NCHW."""

    @staticmethod
    def forward(ctx, y: Tensor, shape: torch.Size, channels_last: bool) -> Tensor:
        n, c = shape[:2]
        k = y.shape[0]
        ctx.k, ctx.b, ctx.y_shape, ctx.channels_last = k, n // k, y.shape, channels_last
        if not channels_last:
            out = y.new_empty(shape)
            out.view(n // k, k, c, -1).copy_(y.reshape(k, n // k, c, -1).transpose(0, 1))
            return out
        h, w = shape[2:]
        out = torch.empty(shape, dtype=y.dtype, device=y.device, memory_format=torch.channels_last)
        khwbc = y.permute(0, 2, 3, 1).reshape(k, h, w, n // k, c)  # a view where batch_norm kept the layout
        out.permute(0, 2, 3, 1).view(n // k, k, h, w, c).copy_(khwbc.permute(3, 0, 1, 2, 4))
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):
        layout = torch.channels_last if ctx.channels_last else torch.contiguous_format
        return side_by_side(grad.contiguous(memory_format=layout), ctx.b, ctx.k).reshape(ctx.y_shape), None, None


def layer_norm(layer: Norm, x: Tensor) -> Tensor:
    if x.dim() == 2:  # the transformer LayerNorm: one row per sample
        return F.layer_norm(x, (x.shape[1],), layer.weight, layer.bias, layer.eps)
    # Over C and spatial with a per-channel affine: exactly group_norm with one group, in one kernel.
    return F.group_norm(x, 1, layer.weight, layer.bias, layer.eps)


def instance_norm(layer: Norm, x: Tensor) -> Tensor:
    if _channels_last(x):  # what F.instance_norm does (one batch_norm over n c channels), in x's layout
        n = x.shape[0]
        w, b = (p.repeat(n) if p is not None else None for p in (layer.weight, layer.bias))
        return one_behind_another(F.batch_norm(side_by_side(x, n, 1), None, None, w, b, True, 0.0, layer.eps), x)
    return F.instance_norm(x, weight=layer.weight, bias=layer.bias, use_input_stats=True, eps=layer.eps)


def group_norm(layer: Norm, x: Tensor) -> Tensor:
    return F.group_norm(x, layer.groups(), layer.weight, layer.bias, layer.eps)


# The wider family, where torch has a primitive for it.


def rms_norm(layer: Norm, x: Tensor) -> Tensor:
    # F.rms_norm normalizes over trailing dimensions: put the channels last, and back.
    return F.rms_norm(x.movedim(1, -1), (x.shape[1],), layer.weight, layer.eps).movedim(-1, 1)


def layer_norm_2d(layer: Norm, x: Tensor) -> Tensor:
    return F.layer_norm(x.movedim(1, -1), (x.shape[1],), layer.weight, layer.bias, layer.eps).movedim(-1, 1)


def fixed_eps_only(query: Query) -> str | None:
    return _fixed_eps_only(query.options.get("learned_eps"))


def _fixed_eps_only(learned_eps) -> str | None:
    if learned_eps is True:  # other values: the layer refuses them itself
        return "frn: impl=native (F.rms_norm) takes a fixed eps; with learned_eps=true use impl=reference or compiled"
    return None


def filter_response_norm(layer: FilterResponseNorm, x: Tensor) -> Tensor:
    # nu^2 over the spatial dimensions is what F.rms_norm computes over trailing dimensions.
    reason = _fixed_eps_only(layer.learned_eps)
    if reason:  # switched to native after it was built (layer.impl = "native")
        raise Unsupported(reason)
    y = affine(F.rms_norm(x, x.shape[2:], None, layer.eps), layer.weight, layer.bias)
    return torch.maximum(y, per_channel(layer.tau, x.dim())) if layer.apply_act else y


def batch_renorm(layer: BatchRenorm, x: Tensor) -> Tensor:
    """y = gamma * (x_hat_B * r + d) + beta = (gamma r) x_hat_B + (gamma d + beta): F.batch_norm with that
    weight and bias, r and d (constants in backward) from a var_mean of the input."""
    if not layer.training:
        return batch_norm(layer, x)
    n, c = x.shape[:2]
    k = layer.samples(n)
    b = n // k
    xt = side_by_side(x, b, k)  # virtual batches as channels
    rm, rv = layer.running_mean.repeat(b), layer.running_var.repeat(b)
    rmax, dmax = layer.clip_limits()
    with torch.no_grad():
        var, mean = torch.var_mean(xt, dim=[0, *range(2, xt.dim())], unbiased=False)
        run_std = torch.sqrt(rv + layer.eps)
        r = torch.clamp(torch.sqrt(var + layer.eps) / run_std, 1 / rmax, rmax).to(x.dtype)
        d = torch.clamp((mean - rm) / run_std, -dmax, dmax).to(x.dtype)
    weight, bias = r, d
    if layer.weight is not None:
        w = layer.weight.repeat(b)
        weight, bias = w * r, w * d + layer.bias.repeat(b)
    y = F.batch_norm(xt, rm, rv, weight, bias, True, layer.update_factor, layer.eps)
    layer.running_mean.copy_(rm.view(b, c).mean(0))
    layer.running_var.copy_(rv.view(b, c).mean(0))
    return one_behind_another(y, x)
