"""The autograd Function behind impl=triton: picks the fused, looped or split kernels, launches them, and
updates the running statistics. `norm_forward` takes the arguments of `normbench.norms.core.norm_forward`.

Bytes moved per call, with S = the size of x in its dtype (weight, bias and statistics are O(C) or
O(B x G) and left out). The minimum is one read of each input and one write of each output:
2S forward (x -> y), 3S backward (x, dy -> dx).

    path                              forward               backward
    fused (slab in registers)         read S, write S       read 2S, write S      (the minimum)
    looped (slab streamed twice)      read 2S, write S      read 4S, write S      (2nd read from L2)
    split (BatchNorm, few big slabs)  read 2S, write S      read 4S, write S
    coop (layout.COOPERATIVE)         read S, write S       read 2S, write S      (2nd touch from L2)
    eval-mode BatchNorm               read S, write S       read 2S, write S      (dy only without affine)
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from normbench.kernels import coop, fused, layout, split
from normbench.kernels.layout import GroupedView, Plans, dense_layout, next_pow2, plans


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
    """core.norm_forward computed by the Triton kernels (differentiable in x, weight and bias). The
    caller checks that they can run on x first (availability.require_runnable, as impl=triton does)."""
    return _TritonNorm.apply(x, weight, bias, samples, groups, eps, running_mean, running_var, use_batch_stats, factor)


def _combine_block(v: GroupedView, splits: int) -> int:
    return min(1024, next_pow2(splits * v.cg))


def _split_args(v: GroupedView, plan) -> tuple:
    return (v.sb, v.sk, v.sc, v.sl, plan.tiles, plan.tiles_per_split, plan.splits, plan.channel_blocks, plan.l_blocks)


def _batch_statistics(x, y, weight, bias, p: Plans, eps: float, running=None, factor: float = 0.0):
    """Normalize x into y with its own statistics; return (mean, biased var, rstd), each (B * G,) float32.

    running: (running_mean, running_var) to update with core.update_running_stats' rule (unbiased
    variance, averaged over the B virtual batches), in the combine kernel where there is one.
    """
    v = p.view
    stats = [torch.empty(v.B * v.G, device=x.device, dtype=torch.float32) for _ in range(3)]
    unbias = v.count / (v.count - 1) if running is not None else 1.0
    affine = weight is not None
    w, b = (weight, bias) if affine else (x, x)  # never read without affine
    plan = p.slab
    if plan is not None:
        meta = dict(
            HAS_AFFINE=affine,
            GPB=plan.groups_per_program,
            BLOCK_C=plan.block_c,
            BLOCK_L=plan.block_l,
            ALIGN=v.align,
            num_warps=plan.num_warps,
        )
        args = (x, y, w, b, *stats, v.C, v.L, v.G, v.cg, v.sb, v.sc, v.sl, eps)
        if plan.looped:
            fused.looped_forward[(p.slab_programs[0],)](*args, plan.slabs, **meta)
        else:
            fused.fused_forward[(plan.slabs,)](*args, **meta)
        if running is not None:
            _update_running(stats, running, v, factor, unbias)
        return stats
    if p.coop is not None:
        _coop_forward(x, y, w, b, affine, stats, p, eps, running, factor, unbias)
        return stats
    sp = p.split
    mean_p = torch.empty(v.B, sp.splits, v.C, device=x.device, dtype=torch.float32)
    m2_p = torch.empty_like(mean_p)
    count_p = torch.empty(sp.splits, device=x.device, dtype=torch.float32)
    grid = (v.B * sp.programs,)
    split.partial_moments[grid](
        x,
        mean_p,
        m2_p,
        count_p,
        v.C,
        v.L,
        *_split_args(v, sp),
        BLOCK_C=sp.block_c,
        BLOCK_L=sp.block_l,
        ALIGN=v.align,
        num_warps=sp.num_warps,
    )
    run = running if running is not None else (stats[0], stats[1])  # not touched without RUNNING
    split.combine_moments[(v.G if running is not None else v.B * v.G,)](
        mean_p,
        m2_p,
        count_p,
        *stats,
        *run,
        v.C,
        v.G,
        v.cg,
        sp.splits,
        v.B,
        eps,
        factor,
        unbias,
        RUNNING=running is not None,
        BLOCK=_combine_block(v, sp.splits),
    )
    mean, _, rstd = stats
    _normalize(x, y, weight, bias, mean, rstd, p)
    return stats


def _sync(p: Plans, device) -> Tensor:
    """The cooperative kernels' ticket counter, per-unit arrival counts and ready flags: zeros."""
    return torch.zeros(1 + 2 * p.coop.units, device=device, dtype=torch.int32)


def _coop_args(v: GroupedView, cp) -> tuple:
    return (v.sb, v.sk, v.sc, v.sl, cp.tiles, cp.tiles_per_item, cp.items_per_block, cp.l_blocks, cp.gblk)


def _coop_meta(v: GroupedView, cp) -> dict:
    return dict(
        ALIGN=v.align,
        GPB=cp.gpb,
        BLOCK_C=cp.block_c,
        BLOCK_L=cp.block_l,
        BLOCK_S=min(layout.COOP_BLOCK_S, next_pow2(cp.items_per_block)),
        STAGES=layout.COOP_STAGES,
        BATCH=cp.batch,
        num_warps=cp.num_warps,
    )


def _update_running(stats, running, v: GroupedView, factor: float, unbias: float) -> None:
    """The running-statistics update after a kernel that does not make it itself."""
    block = min(1024, next_pow2(v.G))
    split.update_running[(-(-v.G // block),)](stats[0], stats[1], *running, v.G, v.B, factor, unbias, BLOCK=block)


def _coop_forward(x, y, w, b, affine: bool, stats, p: Plans, eps, running, factor, unbias) -> None:
    v, cp = p.view, p.coop
    in_kernel = running is not None and v.B == 1  # with B > 1 the update averages over b: after
    mean_p = torch.empty(v.B, cp.items_per_block, v.C, device=x.device, dtype=torch.float32)
    m2_p = torch.empty_like(mean_p)
    run = running if in_kernel else (stats[0], stats[1])  # not touched without RUNNING
    coop.coop_forward[(min(cp.programs, cp.items),)](
        x,
        y,
        w,
        b,
        mean_p,
        m2_p,
        *stats,
        *run,
        _sync(p, x.device),
        v.C,
        v.L,
        v.G,
        v.cg,
        *_coop_args(v, cp),
        cp.units_per_b,
        cp.units,
        cp.delay[0],
        eps,
        factor,
        unbias,
        HAS_AFFINE=affine,
        RUNNING=in_kernel,
        **_coop_meta(v, cp),
    )
    if running is not None and not in_kernel:
        _update_running(stats, running, v, factor, unbias)


def _normalize(x, y, weight, bias, mean, rstd, p: Plans) -> None:
    v, sp = p.view, p.split
    affine = weight is not None
    w, b = (weight, bias) if affine else (x, x)
    split.normalize[(v.B * sp.programs,)](
        x,
        y,
        w,
        b,
        mean,
        rstd,
        v.C,
        v.L,
        v.G,
        v.cg,
        *_split_args(v, sp),
        HAS_AFFINE=affine,
        BLOCK_C=sp.block_c,
        BLOCK_L=sp.block_l,
        ALIGN=v.align,
        num_warps=sp.num_warps,
    )


def grad_partials(rows: int, splits: int, channels: int, device) -> tuple[Tensor, Tensor, Tensor]:
    """The backward's float32 partial sums of dy and of dy * xhat as one (2, rows, splits, C) buffer, and
    its two halves for the kernels: one torch.sum then gives dbias and dweight together."""
    both = torch.empty(2, rows, splits, channels, device=device, dtype=torch.float32)
    return both, both[0], both[1]


def weight_bias_grads(partials: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """dweight and dbias in `dtype` from grad_partials' buffer: one sum, and one cast where needed."""
    sums = partials.sum((1, 2))
    if dtype != torch.float32:  # else .to would return it as it is, after a dispatch
        sums = sums.to(dtype)
    return sums[1], sums[0]


class _TritonNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, samples, groups, eps, running_mean, running_var, use_batch_stats, factor):
        x, channels_last = dense_layout(x)
        y = torch.empty_like(x)  # x is dense, so y gets its strides (channels_last stays channels_last)
        if use_batch_stats:
            p = plans(x, samples, groups, channels_last)
            running = (running_mean, running_var) if running_mean is not None else None
            mean, _, rstd = _batch_statistics(x, y, weight, bias, p, eps, running, factor)
        else:  # eval-mode BatchNorm: the running statistics are constants
            p = plans(x, x.shape[0], groups, channels_last)
            mean = running_mean.detach().to(torch.float32, copy=True)  # a copy: later steps update the buffer
            rstd = torch.rsqrt(running_var.detach().float() + eps)
            _normalize(x, y, weight, bias, mean, rstd, p)
        ctx.save_for_backward(x, weight, mean, rstd)
        ctx.plans = p
        ctx.constant_stats = not use_batch_stats
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, dy):
        x, weight, mean, rstd = ctx.saved_tensors
        p: Plans = ctx.plans
        v = p.view
        if dy.stride() != x.stride():
            dy = torch.empty_like(x).copy_(dy)  # the kernels index dy with x's strides
        dx = torch.empty_like(x)
        affine = weight is not None
        w = weight if affine else x  # never read without affine
        dweight = dbias = None
        plan = None if ctx.constant_stats else p.slab
        if p.coop is not None and not ctx.constant_stats:
            cp = p.coop
            partials, p_dy, p_dyxhat = grad_partials(v.B, cp.items_per_block, v.C, x.device)
            mean_g = torch.empty(v.B * v.G, device=x.device, dtype=torch.float32)
            mean_gx = torch.empty_like(mean_g)
            param_grads = affine and v.B == 1 and v.cg == 1  # else summed from the partials below
            if param_grads:
                dweight, dbias = torch.empty_like(weight), torch.empty_like(weight)
            coop.coop_backward[(min(cp.programs, cp.items),)](
                x,
                dy,
                dx,
                w,
                mean,
                rstd,
                p_dy,
                p_dyxhat,
                mean_g,
                mean_gx,
                *((dweight, dbias) if param_grads else (mean_g, mean_gx)),  # not written without PARAM_GRADS
                _sync(p, x.device),
                v.C,
                v.L,
                v.G,
                v.cg,
                *_coop_args(v, cp),
                cp.units_per_b,
                cp.units,
                cp.delay[1],
                1.0 / v.count,
                HAS_AFFINE=affine,
                PARAM_GRADS=param_grads,
                **_coop_meta(v, cp),
            )
        elif plan is not None:
            programs = p.slab_programs[1]
            rows = programs // (plan.slabs // v.B)  # a row of partial sums per program's channel block
            partials, p_dy, p_dyxhat = grad_partials(rows, 1, v.C, x.device)
            meta = dict(
                HAS_AFFINE=affine,
                GPB=plan.groups_per_program,
                BLOCK_C=plan.block_c,
                BLOCK_L=plan.block_l,
                ALIGN=v.align,
                num_warps=plan.num_warps,
            )
            kernel = fused.looped_backward if plan.looped else fused.fused_backward
            kernel[(programs,)](
                x, dy, dx, w, mean, rstd, p_dy, p_dyxhat, v.C, v.L, v.G, v.cg, v.sb, v.sc, v.sl, plan.slabs, **meta
            )
        else:
            sp = p.split
            grid = (v.B * sp.programs,)
            partials, p_dy, p_dyxhat = grad_partials(v.B, sp.splits, v.C, x.device)
            # The group means are written by combine_grad_sums; with constant statistics input_grad
            # does not read them (so no zeros to fill).
            mean_g = torch.empty(v.B * v.G, device=x.device, dtype=torch.float32)
            mean_gx = torch.empty_like(mean_g)
            if affine or not ctx.constant_stats:
                split.partial_grad_sums[grid](
                    x,
                    dy,
                    mean,
                    rstd,
                    p_dy,
                    p_dyxhat,
                    v.C,
                    v.L,
                    v.G,
                    v.cg,
                    *_split_args(v, sp),
                    BLOCK_C=sp.block_c,
                    BLOCK_L=sp.block_l,
                    ALIGN=v.align,
                    num_warps=sp.num_warps,
                )
            if not ctx.constant_stats:
                # One channel per group (bn, in): dweight and dbias come out of this kernel too.
                param_grads = v.cg == 1
                if affine and param_grads:
                    dweight, dbias = torch.empty_like(weight), torch.empty_like(weight)
                grads = (dweight, dbias) if affine and param_grads else (mean_g, mean_gx)  # else unused
                split.combine_grad_sums[(v.G if param_grads else v.B * v.G,)](
                    p_dy,
                    p_dyxhat,
                    w,
                    mean_g,
                    mean_gx,
                    *grads,
                    v.C,
                    v.G,
                    v.cg,
                    sp.splits,
                    v.B,
                    1.0 / v.count,
                    HAS_AFFINE=affine,
                    PARAM_GRADS=param_grads,
                    BLOCK=_combine_block(v, sp.splits),
                )
            split.input_grad[grid](
                x,
                dy,
                dx,
                w,
                mean,
                rstd,
                mean_g,
                mean_gx,
                v.C,
                v.L,
                v.G,
                v.cg,
                *_split_args(v, sp),
                HAS_AFFINE=affine,
                CONSTANT_STATS=ctx.constant_stats,
                BLOCK_C=sp.block_c,
                BLOCK_L=sp.block_l,
                ALIGN=v.align,
                num_warps=sp.num_warps,
            )
        if affine and dweight is None:
            dweight, dbias = weight_bias_grads(partials, weight.dtype)
        return dx, dweight, dbias, None, None, None, None, None, None, None
