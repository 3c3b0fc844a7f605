"""Everything a call's launches need that its tensors' values do not change, computed once per geometry.

`launch_plan` turns (shape, strides, dtype, device, statistics, eps, affine, mode, the heuristics'
settings) into a `LaunchPlan`: the path, each kernel's grid, scalar arguments and constexprs, and
the scratch buffers' sizes. A call then only allocates its outputs and scratch and binds its tensors
(norm_function), so none of layout's planning, no property of the grouped view and no dict of
constexprs is rebuilt per call. The cache is bounded and keyed by value: a changed shape, stride,
dtype, device or setting misses it and is planned afresh.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch

from normbench.kernels import layout
from normbench.kernels.layout import GroupedView, Plans, next_pow2
from normbench.kernels.settings import DEFAULT, KernelSettings


@dataclass(frozen=True, eq=False)
class Step:
    """One launch: its grid, the scalar arguments after its tensors (up to the per-call ones: the
    running-statistics factor and what follows it) and its constexprs and options."""

    grid: tuple[int]
    args: tuple
    meta: dict


@dataclass(frozen=True, eq=False)
class LaunchPlan:
    """One geometry's launches, forward and backward, as norm_function makes them."""

    plans: Plans
    path: str  # "slab" (fused or looped), "coop", "split"; "eval": normalize with running statistics
    stats: int  # values per statistic tensor: B x G
    affine: bool
    running: bool  # whether the forward updates running statistics
    unbias: float  # n / (n - 1) of the running variance's update
    forward: tuple[Step, ...]  # the path's launches, in order
    backward: tuple[Step, ...]
    update_running: Step | None  # after a forward kernel that does not update them itself
    partials: tuple[int, int, int, int]  # the backward's (2, rows, splits, C) dweight/dbias partial sums
    scratch: tuple[int, ...]  # per-path forward scratch sizes (split: B, splits, C; coop: B, items, C)
    sync: int  # int32 counters of the cooperative kernels (0 elsewhere)
    param_grads: bool  # the backward's kernels write dweight and dbias themselves

    @property
    def view(self) -> GroupedView:
        return self.plans.view

    # The forward's float32 buffers as the sizes of one allocation's pieces (cached_property: computed
    # on the first call of a plan, then read from the instance).
    @functools.cached_property
    def forward_sizes(self) -> tuple[int, ...]:
        """mean, var, rstd, then the path's scratch: split (B, splits, C) mean and m2 partials and the
        per-split counts; coop (B, items, C) mean and m2 partials."""
        n, scratch = self.stats, math.prod(self.scratch)
        if self.path == "split":
            return n, n, n, scratch, scratch, self.scratch[1]
        return (n, n, n, scratch, scratch) if self.path == "coop" else (n, n, n)

    @functools.cached_property
    def forward_total(self) -> int:
        return sum(self.forward_sizes)


TRAIN, TRAIN_RUNNING, EVAL = 0, 1, 2  # launch_plan's modes


def launch_plan(
    x: torch.Tensor,
    channels_last: bool,
    affine: bool,
    samples: int,
    groups: int,
    eps: float,
    mode: int,
    settings: KernelSettings = DEFAULT,
) -> LaunchPlan:
    """The cached plan for x (dense: contiguous, or channels_last as layout.dense_layout says). mode:
    TRAIN (batch statistics), TRAIN_RUNNING (and update running statistics) or EVAL (running
    statistics as constants)."""
    device = x.device
    key = (x.shape, x.stride(), x.dtype, device, channels_last, affine, samples, groups, eps, mode, settings)
    return _launch_plan(*key, layout.cache_key(device, settings))


@functools.lru_cache(maxsize=512)
def _launch_plan(shape, strides, dtype, device, channels_last, affine, samples, groups, eps, mode, settings, key):
    element_size = dtype.itemsize
    samples = shape[0] if mode == EVAL else samples
    p = layout.plans_of(shape, samples, groups, channels_last, element_size, device, settings, key)
    v = p.view
    running = mode == TRAIN_RUNNING
    unbias = v.count / (v.count - 1) if running else 1.0
    sp = p.split
    split_grid = (v.B * sp.programs,)
    split_args = (v.sb, v.sk, v.sc, v.sl, sp.tiles, sp.tiles_per_split, sp.splits, sp.channel_blocks, sp.l_blocks)
    split_meta = dict(BLOCK_C=sp.block_c, BLOCK_L=sp.block_l, ALIGN=v.align, num_warps=sp.num_warps)
    normalize = Step(split_grid, (v.C, v.L, v.G, v.cg, *split_args), dict(HAS_AFFINE=affine, **split_meta))
    combine_block = min(1024, next_pow2(sp.splits * v.cg))
    common = dict(stats=v.B * v.G, affine=affine, running=running, unbias=unbias, sync=0)
    block = min(1024, next_pow2(v.G))
    update = Step((-(-v.G // block),), (v.G, v.B), dict(BLOCK=block))
    if mode == EVAL:
        return LaunchPlan(
            p,
            "eval",
            forward=(normalize,),
            backward=_split_backward(v, sp, split_grid, split_args, split_meta, affine, True, combine_block),
            update_running=None,
            partials=(2, v.B, sp.splits, v.C),
            scratch=(),
            param_grads=False,
            **common,
        )
    if p.slab is not None:
        plan = p.slab
        meta = dict(
            HAS_AFFINE=affine,
            GPB=plan.groups_per_program,
            BLOCK_C=plan.block_c,
            BLOCK_L=plan.block_l,
            ALIGN=v.align,
            num_warps=plan.num_warps,
        )
        tail = (v.C, v.L, v.G, v.cg, v.sb, v.sc, v.sl)
        forward, backward = p.slab_programs
        rows = backward // (plan.slabs // v.B)  # a row of partial sums per program's channel block
        return LaunchPlan(
            p,
            "slab",
            forward=(Step((forward,), (*tail, eps, *((plan.slabs,) if plan.looped else ())), meta),),
            backward=(Step((backward,), (*tail, plan.slabs), meta),),
            update_running=update if running else None,
            partials=(2, rows, 1, v.C),
            scratch=(),
            param_grads=False,
            **common,
        )
    if p.coop is not None:
        cp = p.coop
        in_kernel = running and v.B == 1  # with B > 1 the update averages over b: after
        coop_args = (v.sb, v.sk, v.sc, v.sl, cp.tiles, cp.tiles_per_item, cp.items_per_block, cp.l_blocks, cp.gblk)
        coop_meta = dict(
            ALIGN=v.align,
            GPB=cp.gpb,
            BLOCK_C=cp.block_c,
            BLOCK_L=cp.block_l,
            BLOCK_S=min(layout.COOP_BLOCK_S, next_pow2(cp.items_per_block)),
            STAGES=layout.COOP_STAGES,
            BATCH=cp.batch,
            num_warps=cp.num_warps,
        )
        grid = (min(cp.programs, cp.items),)
        head = (v.C, v.L, v.G, v.cg, *coop_args, cp.units_per_b, cp.units)
        param_grads = affine and v.B == 1 and v.cg == 1  # else summed from the partials
        return LaunchPlan(
            p,
            "coop",
            forward=(Step(grid, (*head, cp.delay[0], eps), dict(HAS_AFFINE=affine, RUNNING=in_kernel, **coop_meta)),),
            backward=(
                Step(
                    grid,
                    (*head, cp.delay[1], 1.0 / v.count),
                    dict(HAS_AFFINE=affine, PARAM_GRADS=param_grads, **coop_meta),
                ),
            ),
            update_running=update if running and not in_kernel else None,
            partials=(2, v.B, cp.items_per_block, v.C),
            scratch=(v.B, cp.items_per_block, v.C),
            param_grads=param_grads,
            **{**common, "sync": 1 + 2 * cp.units},
        )
    combine = Step(
        (v.G if running else v.B * v.G,),
        (v.C, v.G, v.cg, sp.splits, v.B, eps),
        dict(RUNNING=running, BLOCK=combine_block),
    )
    return LaunchPlan(
        p,
        "split",
        forward=(Step(split_grid, (v.C, v.L, *split_args), split_meta), combine, normalize),
        backward=_split_backward(v, sp, split_grid, split_args, split_meta, affine, False, combine_block),
        update_running=None,
        partials=(2, v.B, sp.splits, v.C),
        scratch=(v.B, sp.splits, v.C),
        param_grads=affine and v.cg == 1,  # one channel per group (bn, in): the combine kernel writes them
        **common,
    )


def _split_backward(v, sp, grid, split_args, split_meta, affine, constant_stats, combine_block) -> tuple[Step, ...]:
    """partial_grad_sums, combine_grad_sums, input_grad; with constant statistics only the first where
    dweight/dbias need it, then the last."""
    tail = (v.C, v.L, v.G, v.cg, *split_args)
    sums = Step(grid, tail, split_meta)
    param_grads = v.cg == 1
    combine = Step(
        (v.G if param_grads else v.B * v.G,),
        (v.C, v.G, v.cg, sp.splits, v.B, 1.0 / v.count),
        dict(HAS_AFFINE=affine, PARAM_GRADS=param_grads, BLOCK=combine_block),
    )
    dx = Step(grid, tail, dict(HAS_AFFINE=affine, CONSTANT_STATS=constant_stats, **split_meta))
    if constant_stats:
        return (sums, None, dx) if affine else (None, None, dx)
    return sums, combine, dx
