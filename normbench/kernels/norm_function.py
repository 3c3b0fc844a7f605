"""The autograd Function behind impl=triton: picks fused or split kernels, launches them, updates the
running statistics. `norm_forward` takes the same arguments as `normbench.norms.core.norm_forward`.

Bytes moved per call, with S = bytes of x in its dtype (weight, bias and statistics are O(C) or
O(B x G) and left out; the minimum is one read of each input and one write of each output):

    path                         forward             backward                minimum fwd / bwd
    fused (slab fits a program)  read S, write S     read 2S, write S        2S / 3S
    split (BatchNorm, huge slab) read 2S, write S    read 4S, write S        2S / 3S
    eval-mode BatchNorm          read S, write S     read 2S, write S (*)    2S / 3S

    (*) with affine; without it, only dy is read: read S, write S.
"""

from __future__ import annotations

import torch
from torch import Tensor

from normbench.kernels import fused, split
from normbench.kernels.availability import require_runnable
from normbench.kernels.layout import GroupedView, dense_layout, fused_plan, grouped_view, next_pow2, split_plan


def norm_forward(
    x: Tensor,
    weight: Tensor | None,
    bias: Tensor | None,
    *,
    samples: int,
    groups: int,
    eps: float,
    running_mean: Tensor | None = None,
    running_var: Tensor | None = None,
    use_batch_stats: bool = True,
    factor: float = 0.0,
) -> Tensor:
    """core.norm_forward computed by the Triton kernels (differentiable in x, weight and bias)."""
    require_runnable(x)
    return _TritonNorm.apply(
        x, weight, bias, samples, groups, eps, running_mean, running_var, use_batch_stats, factor
    )


def _combine_block(v: GroupedView, splits: int) -> int:
    return min(1024, next_pow2(splits * v.cg))


def _split_args(v: GroupedView, plan) -> tuple:
    return (v.sb, v.sk, v.sc, v.sl, plan.tiles, plan.tiles_per_split, plan.splits, plan.channel_blocks, plan.l_blocks)


def _batch_statistics(x, y, weight, bias, v: GroupedView, eps: float):
    """Normalize x into y with its own statistics; return (mean, biased var, rstd), each (B * G,) float32."""
    stats = [torch.empty(v.B * v.G, device=x.device, dtype=torch.float32) for _ in range(3)]
    affine = weight is not None
    w, b = (weight, bias) if affine else (x, x)  # never read without affine
    plan = fused_plan(v)
    if plan is not None:
        fused.fused_forward[(plan.programs,)](
            x, y, w, b, *stats, v.C, v.L, v.G, v.cg, v.sb, v.sc, v.sl, eps,
            HAS_AFFINE=affine, GPB=plan.groups_per_program, BLOCK_C=plan.block_c, BLOCK_L=plan.block_l,
            num_warps=plan.num_warps,
        )
        return stats
    sp = split_plan(v, x.device)
    mean_p = torch.empty(v.B, sp.splits, v.C, device=x.device, dtype=torch.float32)
    m2_p = torch.empty_like(mean_p)
    count_p = torch.empty(sp.splits, device=x.device, dtype=torch.float32)
    grid = (v.B * sp.programs,)
    split.partial_moments[grid](
        x, mean_p, m2_p, count_p, v.C, v.L, *_split_args(v, sp),
        BLOCK_C=sp.block_c, BLOCK_L=sp.block_l, num_warps=sp.num_warps,
    )
    split.combine_moments[(v.B * v.G,)](
        mean_p, m2_p, count_p, *stats, v.C, v.G, v.cg, sp.splits, eps, BLOCK=_combine_block(v, sp.splits)
    )
    mean, _, rstd = stats
    _normalize(x, y, weight, bias, mean, rstd, v)
    return stats


def _normalize(x, y, weight, bias, mean, rstd, v: GroupedView) -> None:
    affine = weight is not None
    w, b = (weight, bias) if affine else (x, x)
    sp = split_plan(v, x.device)
    split.normalize[(v.B * sp.programs,)](
        x, y, w, b, mean, rstd, v.C, v.L, v.G, v.cg, *_split_args(v, sp),
        HAS_AFFINE=affine, BLOCK_C=sp.block_c, BLOCK_L=sp.block_l, num_warps=sp.num_warps,
    )


@torch.no_grad()
def _update_running(running_mean, running_var, mean, var, v: GroupedView, factor: float) -> None:
    """core.update_running_stats on the kernels' (B * C,) statistics: unbiased, averaged over B."""
    n = v.count
    batch_mean = mean.view(v.B, v.G).mean(0)
    batch_var = (var.view(v.B, v.G) * (n / (n - 1))).mean(0)
    running_mean.mul_(1 - factor).add_(factor * batch_mean.to(running_mean.dtype))
    running_var.mul_(1 - factor).add_(factor * batch_var.to(running_var.dtype))


class _TritonNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, samples, groups, eps, running_mean, running_var, use_batch_stats, factor):
        x, channels_last = dense_layout(x)
        y = torch.empty_like(x)  # x is dense, so y gets its strides (channels_last stays channels_last)
        if use_batch_stats:
            v = grouped_view(x, samples, groups, channels_last)
            mean, var, rstd = _batch_statistics(x, y, weight, bias, v, eps)
            if running_mean is not None:
                _update_running(running_mean, running_var, mean, var, v, factor)
        else:  # eval-mode BatchNorm: the running statistics are constants
            v = grouped_view(x, x.shape[0], groups, channels_last)
            mean = running_mean.detach().float().contiguous()
            rstd = torch.rsqrt(running_var.detach().float() + eps)
            _normalize(x, y, weight, bias, mean, rstd, v)
        ctx.save_for_backward(x, weight, mean, rstd)
        ctx.view = v
        ctx.constant_stats = not use_batch_stats
        return y

    @staticmethod
    def backward(ctx, dy):
        x, weight, mean, rstd = ctx.saved_tensors
        v: GroupedView = ctx.view
        if dy.stride() != x.stride():
            dy = torch.empty_like(x).copy_(dy)  # the kernels index dy with x's strides
        dx = torch.empty_like(x)
        affine = weight is not None
        w = weight if affine else x  # never read without affine
        plan = None if ctx.constant_stats else fused_plan(v)
        if plan is not None:
            p_dy = torch.empty(v.B, 1, v.C, device=x.device, dtype=torch.float32)
            p_dyxhat = torch.empty_like(p_dy)
            fused.fused_backward[(plan.programs,)](
                x, dy, dx, w, mean, rstd, p_dy, p_dyxhat, v.C, v.L, v.G, v.cg, v.sb, v.sc, v.sl,
                HAS_AFFINE=affine, GPB=plan.groups_per_program, BLOCK_C=plan.block_c,
                BLOCK_L=plan.block_l, num_warps=plan.num_warps,
            )
        else:
            sp = split_plan(v, x.device)
            grid = (v.B * sp.programs,)
            p_dy = torch.empty(v.B, sp.splits, v.C, device=x.device, dtype=torch.float32)
            p_dyxhat = torch.empty_like(p_dy)
            mean_g = torch.zeros(v.B * v.G, device=x.device, dtype=torch.float32)
            mean_gx = torch.zeros_like(mean_g)
            if affine or not ctx.constant_stats:
                split.partial_grad_sums[grid](
                    x, dy, mean, rstd, p_dy, p_dyxhat, v.C, v.L, v.G, v.cg, *_split_args(v, sp),
                    BLOCK_C=sp.block_c, BLOCK_L=sp.block_l, num_warps=sp.num_warps,
                )
            if not ctx.constant_stats:
                split.combine_grad_sums[(v.B * v.G,)](
                    p_dy, p_dyxhat, w, mean_g, mean_gx, v.C, v.G, v.cg, sp.splits, 1.0 / v.count,
                    HAS_AFFINE=affine, BLOCK=_combine_block(v, sp.splits),
                )
            split.input_grad[grid](
                x, dy, dx, w, mean, rstd, mean_g, mean_gx, v.C, v.L, v.G, v.cg, *_split_args(v, sp),
                HAS_AFFINE=affine, BLOCK_C=sp.block_c, BLOCK_L=sp.block_l, num_warps=sp.num_warps,
            )
        dweight = dbias = None
        if affine:
            dweight = p_dyxhat.sum((0, 1)).to(weight.dtype)
            dbias = p_dy.sum((0, 1)).to(weight.dtype)
        return dx, dweight, dbias, None, None, None, None, None, None, None
