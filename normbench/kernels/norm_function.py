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

from normbench.kernels import coop, fused, split
from normbench.kernels.launch_plan import EVAL, TRAIN, TRAIN_RUNNING, LaunchPlan, launch_plan
from normbench.kernels.layout import dense_layout

_F32 = torch.float32


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
    args = (samples, groups, eps, running_mean, running_var, use_batch_stats, factor)
    return _TritonNorm.apply(x, weight, bias, args)


def triton_forward(x: Tensor, weight: Tensor | None, bias: Tensor | None, args: tuple):
    """(y, x as the kernels read it, mean, rstd, the launch plan): the output and what the backward needs.

    args: (samples, groups, eps, running_mean, running_var, use_batch_stats, factor), as norm_forward's.
    """
    samples, groups, eps, running_mean, running_var, use_batch_stats, factor = args
    x, channels_last = dense_layout(x)
    affine = weight is not None
    mode = EVAL if not use_batch_stats else TRAIN if running_mean is None else TRAIN_RUNNING
    lp = launch_plan(x, channels_last, affine, samples, groups, eps, mode)
    y = torch.empty_like(x)  # x is dense, so y gets its strides (channels_last stays channels_last)
    w, b = (weight, bias) if affine else (x, x)  # never read without affine
    device = x.device
    if mode == EVAL:  # the running statistics are constants
        mean = running_mean.detach().to(_F32, copy=True)  # a copy: later steps update the buffer
        rstd = torch.rsqrt(running_var.detach().float() + eps)
        step = lp.forward[0]
        split.normalize[step.grid](x, y, w, b, mean, rstd, *step.args, **step.meta)
        return y, x, mean, rstd, lp
    n = lp.stats
    mean, var, rstd = (
        torch.empty(n, device=device, dtype=_F32),
        torch.empty(n, device=device, dtype=_F32),
        torch.empty(n, device=device, dtype=_F32),
    )
    # Where no kernel updates the running statistics these stand in for them (RUNNING off: untouched).
    run = (running_mean, running_var) if lp.running else (mean, var)
    if lp.path == "slab":
        step = lp.forward[0]
        kernel = fused.looped_forward if lp.plans.slab.looped else fused.fused_forward
        kernel[step.grid](x, y, w, b, mean, var, rstd, *step.args, **step.meta)
    elif lp.path == "coop":
        step = lp.forward[0]
        mean_p, m2_p = (
            torch.empty(lp.scratch, device=device, dtype=_F32),
            torch.empty(lp.scratch, device=device, dtype=_F32),
        )
        sync = torch.zeros(lp.sync, device=device, dtype=torch.int32)  # ticket, arrival counts, ready flags
        in_kernel = lp.update_running is None
        coop.coop_forward[step.grid](
            x,
            y,
            w,
            b,
            mean_p,
            m2_p,
            mean,
            var,
            rstd,
            *(run if in_kernel else (mean, var)),
            sync,
            *step.args,
            factor,
            lp.unbias,
            **step.meta,
        )
    else:
        moments, combine, normalize = lp.forward
        mean_p, m2_p = (
            torch.empty(lp.scratch, device=device, dtype=_F32),
            torch.empty(lp.scratch, device=device, dtype=_F32),
        )
        count_p = torch.empty(lp.scratch[1], device=device, dtype=_F32)
        split.partial_moments[moments.grid](x, mean_p, m2_p, count_p, *moments.args, **moments.meta)
        split.combine_moments[combine.grid](
            mean_p, m2_p, count_p, mean, var, rstd, *run, *combine.args, factor, lp.unbias, **combine.meta
        )
        split.normalize[normalize.grid](x, y, w, b, mean, rstd, *normalize.args, **normalize.meta)
    if lp.update_running is not None:
        step = lp.update_running
        split.update_running[step.grid](mean, var, *run, *step.args, factor, lp.unbias, **step.meta)
    return y, x, mean, rstd, lp


def triton_backward(dy: Tensor, x: Tensor, weight: Tensor | None, mean: Tensor, rstd: Tensor, lp: LaunchPlan):
    """dx, dweight, dbias (None without affine) of triton_forward's output."""
    if dy.stride() != x.stride():
        dy = torch.empty_like(x).copy_(dy)  # the kernels index dy with x's strides
    dx = torch.empty_like(x)
    device = x.device
    w = weight if lp.affine else x  # never read without affine
    partials = torch.empty(lp.partials, device=device, dtype=_F32)
    p_dy, p_dyxhat = partials[0], partials[1]  # one sum of both gives dbias and dweight
    dweight = dbias = None
    if lp.param_grads:
        dweight, dbias = torch.empty(2, *weight.shape, device=device, dtype=weight.dtype).unbind(0)
    if lp.path == "slab":
        step = lp.backward[0]
        kernel = fused.looped_backward if lp.plans.slab.looped else fused.fused_backward
        kernel[step.grid](x, dy, dx, w, mean, rstd, p_dy, p_dyxhat, *step.args, **step.meta)
    else:
        # The group means of dy and dy * xhat; with constant statistics input_grad does not read them.
        means = torch.empty(2, lp.stats, device=device, dtype=_F32).unbind(0)
        grads = (dweight, dbias) if lp.param_grads else means  # not written without PARAM_GRADS
        if lp.path == "coop":
            step = lp.backward[0]
            sync = torch.zeros(lp.sync, device=device, dtype=torch.int32)
            coop.coop_backward[step.grid](
                x, dy, dx, w, mean, rstd, p_dy, p_dyxhat, *means, *grads, sync, *step.args, **step.meta
            )
        else:
            sums, combine, step = lp.backward
            if sums is not None:
                split.partial_grad_sums[sums.grid](x, dy, mean, rstd, p_dy, p_dyxhat, *sums.args, **sums.meta)
            if combine is not None:
                split.combine_grad_sums[combine.grid](p_dy, p_dyxhat, w, *means, *grads, *combine.args, **combine.meta)
            split.input_grad[step.grid](x, dy, dx, w, mean, rstd, *means, *step.args, **step.meta)
    if lp.affine and dweight is None:
        dweight, dbias = weight_bias_grads(partials, weight.dtype)
    return dx, dweight, dbias


def weight_bias_grads(partials: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """dweight and dbias in `dtype` from the backward's (2, rows, splits, C) float32 partial sums of dy and
    of dy * xhat: one sum, and one cast where needed."""
    sums = partials.sum((1, 2))
    if dtype != _F32:  # else .to would return it as it is, after a dispatch
        sums = sums.to(dtype)
    return sums[1], sums[0]


class _TritonNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, args):
        # mean and rstd are neither inputs nor outputs: kept on ctx, without save_for_backward's packing
        y, x, ctx.mean, ctx.rstd, ctx.plan = triton_forward(x, weight, bias, args)
        ctx.save_for_backward(x, weight)
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, dy):
        x, weight = ctx.saved_tensors
        return *triton_backward(dy, x, weight, ctx.mean, ctx.rstd, ctx.plan), None
