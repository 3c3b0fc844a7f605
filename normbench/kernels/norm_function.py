"""The autograd Function behind impl=triton: picks the fused, looped or split kernels, launches them, and
updates the running statistics. `norm_forward` takes the arguments of `normbench.norms.core.norm_forward`.

Bytes moved per call, with S = the size of x in its dtype (weight, bias and statistics are O(C) or
O(B x G) and left out). The minimum is one read of each input and one write of each output:
2S forward (x -> y), 3S backward (x, dy -> dx).

    path                              forward               backward
    fused (slab in registers)         read S, write S       read 2S, write S      (the minimum)
    looped (slab streamed twice)      read 2S, write S      read 4S, write S      (2nd read from L2)
    split (BatchNorm, few big slabs)  read 2S, write S      read 4S, write S
    coop (settings.cooperative)       read S, write S       read 2S, write S      (2nd touch from L2)
    eval-mode BatchNorm               read S, write S       read 2S, write S      (dy only without affine)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from normbench.kernels import coop, fused, split
from normbench.kernels.launch_plan import EVAL, TRAIN, TRAIN_RUNNING, LaunchPlan, launch_plan
from normbench.kernels.layout import dense_layout
from normbench.kernels.settings import DEFAULT, KernelSettings

_F32 = torch.float32
_I32 = torch.int32


def weight_bias_grads(partials: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """dweight and dbias in `dtype` from the backward's (2, rows, splits, C) float32 partial sums of dy and
    of dy * xhat: one sum, and one cast where needed."""
    sums = partials.sum((1, 2))
    if dtype != _F32:  # else .to would return it as it is, after a dispatch
        sums = sums.to(dtype)
    return sums[1], sums[0]


@dataclass(frozen=True)
class Kernels:
    """What a call launches: the Triton kernels (`kernel[grid](*args, **meta)`) and the torch sum of the
    dweight/dbias partials. A tool passes its own (kernels.trace records, kernels.host_cost stubs)."""

    fused_forward: object = fused.fused_forward
    fused_backward: object = fused.fused_backward
    looped_forward: object = fused.looped_forward
    looped_backward: object = fused.looped_backward
    partial_moments: object = split.partial_moments
    combine_moments: object = split.combine_moments
    update_running: object = split.update_running
    normalize: object = split.normalize
    partial_grad_sums: object = split.partial_grad_sums
    combine_grad_sums: object = split.combine_grad_sums
    input_grad: object = split.input_grad
    coop_forward: object = coop.coop_forward
    coop_backward: object = coop.coop_backward
    weight_bias_grads: Callable[[Tensor, torch.dtype], tuple[Tensor, Tensor]] = weight_bias_grads

    def replaced(self, stand_in: Callable[[object], object]) -> Kernels:
        """These kernels with each Triton kernel replaced by `stand_in(kernel)`."""
        return dataclasses.replace(self, **{name: stand_in(getattr(self, name)) for name in KERNEL_NAMES})


KERNEL_NAMES = tuple(f.name for f in dataclasses.fields(Kernels) if f.name != "weight_bias_grads")
KERNELS = Kernels()


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
    settings: KernelSettings = DEFAULT,
    kernels: Kernels | None = None,
) -> Tensor:
    """core.norm_forward computed by the Triton kernels (differentiable in x, weight and bias), planned
    with `settings` and launching `kernels` (KERNELS by default). The caller checks that they can run
    on x first (availability.require_runnable, as impl=triton does)."""
    args = (samples, groups, eps, running_mean, running_var, use_batch_stats, factor, settings, kernels or KERNELS)
    return _TritonNorm.apply(x, weight, bias, args)


def triton_forward(x: Tensor, weight: Tensor | None, bias: Tensor | None, args: tuple):
    """(y, x as the kernels read it, mean, rstd, the launch plan): the output and what the backward needs.

    args: (samples, groups, eps, running_mean, running_var, use_batch_stats, factor, settings,
    kernels), as norm_forward's. Every buffer is new per call (two forwards before their backwards
    each keep their own statistics); the float32 ones come out of one allocation (`LaunchPlan.
    forward_sizes`: statistics, then the path's scratch), since each allocation is host time.
    """
    samples, groups, eps, running_mean, running_var, use_batch_stats, factor, settings, k = args
    x, channels_last = dense_layout(x)
    affine = weight is not None
    mode = EVAL if not use_batch_stats else TRAIN if running_mean is None else TRAIN_RUNNING
    lp = launch_plan(x, channels_last, affine, samples, groups, eps, mode, settings)
    y = torch.empty_like(x)  # x is dense, so y gets its strides (channels_last stays channels_last)
    w, b = (weight, bias) if affine else (x, x)  # never read without affine
    device = x.device
    if mode == EVAL:  # the running statistics are constants
        mean = running_mean.detach().to(_F32, copy=True)  # a copy: later steps update the buffer
        rstd = torch.rsqrt(running_var.detach().float() + eps)
        step = lp.forward[0]
        k.normalize[step.grid](x, y, w, b, mean, rstd, *step.args, **step.meta)
        return y, x, mean, rstd, lp
    mean, var, rstd, *scratch = torch.empty(lp.forward_total, device=device, dtype=_F32).split_with_sizes(
        lp.forward_sizes
    )
    # Where no kernel updates the running statistics these stand in for them (RUNNING off: untouched).
    run = (running_mean, running_var) if lp.running else (mean, var)
    path = lp.path
    if path == "slab":
        step = lp.forward[0]
        kernel = k.looped_forward if lp.plans.slab.looped else k.fused_forward
        kernel[step.grid](x, y, w, b, mean, var, rstd, *step.args, **step.meta)
    elif path == "coop":
        step = lp.forward[0]
        sync = torch.zeros(lp.sync, device=device, dtype=_I32)  # ticket, arrival counts, ready flags
        in_kernel = lp.update_running is None
        k.coop_forward[step.grid](
            x,
            y,
            w,
            b,
            *scratch,
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
        mean_p, m2_p, count_p = scratch
        k.partial_moments[moments.grid](x, mean_p, m2_p, count_p, *moments.args, **moments.meta)
        k.combine_moments[combine.grid](
            mean_p, m2_p, count_p, mean, var, rstd, *run, *combine.args, factor, lp.unbias, **combine.meta
        )
        k.normalize[normalize.grid](x, y, w, b, mean, rstd, *normalize.args, **normalize.meta)
    if lp.update_running is not None:
        step = lp.update_running
        k.update_running[step.grid](mean, var, *run, *step.args, factor, lp.unbias, **step.meta)
    return y, x, mean, rstd, lp


def triton_backward(
    dy: Tensor, x: Tensor, weight: Tensor | None, mean: Tensor, rstd: Tensor, lp: LaunchPlan, k: Kernels = KERNELS
):
    """dx, dweight, dbias (None without affine) of triton_forward's output."""
    if dy.stride() != x.stride():
        dy = torch.empty_like(x).copy_(dy)  # the kernels index dy with x's strides
    dx = torch.empty_like(x)
    device = x.device
    w = weight if lp.affine else x  # never read without affine
    partials = torch.empty(lp.partials, device=device, dtype=_F32)
    p_dy, p_dyxhat = partials.unbind(0)  # one sum of both gives dbias and dweight
    dweight = dbias = None
    if lp.param_grads:
        dweight = torch.empty_like(weight)
        dbias = torch.empty_like(weight)
    path = lp.path
    if path == "slab":
        step = lp.backward[0]
        kernel = k.looped_backward if lp.plans.slab.looped else k.fused_backward
        kernel[step.grid](x, dy, dx, w, mean, rstd, p_dy, p_dyxhat, *step.args, **step.meta)
    else:
        # The group means of dy and dy * xhat; with constant statistics input_grad does not read them.
        means = torch.empty((2, lp.stats), device=device, dtype=_F32).unbind(0)
        grads = (dweight, dbias) if lp.param_grads else means  # not written without PARAM_GRADS
        if path == "coop":
            step = lp.backward[0]
            sync = torch.zeros(lp.sync, device=device, dtype=_I32)
            k.coop_backward[step.grid](
                x, dy, dx, w, mean, rstd, p_dy, p_dyxhat, *means, *grads, sync, *step.args, **step.meta
            )
        else:
            sums, combine, step = lp.backward
            if sums is not None:
                k.partial_grad_sums[sums.grid](x, dy, mean, rstd, p_dy, p_dyxhat, *sums.args, **sums.meta)
            if combine is not None:
                k.combine_grad_sums[combine.grid](p_dy, p_dyxhat, w, *means, *grads, *combine.args, **combine.meta)
            k.input_grad[step.grid](x, dy, dx, w, mean, rstd, *means, *step.args, **step.meta)
    if lp.affine and dweight is None:
        dweight, dbias = k.weight_bias_grads(partials, weight.dtype)
    return dx, dweight, dbias


class _TritonNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, args):
        # mean and rstd are neither inputs nor outputs: kept on ctx, without save_for_backward's packing
        y, x, ctx.mean, ctx.rstd, ctx.plan = triton_forward(x, weight, bias, args)
        ctx.kernels = args[-1]
        ctx.save_for_backward(x, weight)
        return y

    @staticmethod
    def backward(ctx, dy):
        if torch.is_grad_enabled():  # create_graph=True: the kernels' gradients have no graph of their own
            raise RuntimeError("impl=triton is differentiable once: its backward cannot be differentiated again")
        x, weight = ctx.saved_tensors
        return *triton_backward(dy, x, weight, ctx.mean, ctx.rstd, ctx.plan, ctx.kernels), None
