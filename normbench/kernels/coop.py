"""Cooperative kernels: one launch per pass that reads each byte of x (and dy) from HBM once.

The input is cut into units, (b, channel super-block) pairs that hold whole groups, and each unit into
S items of TPS tiles (the split path's tiles, see layout.py). The work is one stream of steps; step s
does the A part of item s (partial moments, or partial gradient sums) and the B part of item s - D
(normalize, or dx, over the same tiles). Programs claim BATCH steps at a time from an atomic
counter. A program counts its finished A items per unit (one atomic per run of them, not per item);
the one whose count completes a unit combines the unit's partials into its statistics and raises the
unit's ready flag, which the unit's B items wait for (once per unit and program). layout.coop_plan
sizes D so that the D items read in between fit a share of the L2: the second touch of every tile is
served from L2, not HBM. Atomics are batched because each one waits for a round trip to L2, which
costs more than the bytes a small item saves. Used only with KernelSettings.cooperative: where a large
L2 already serves much of the other paths' second read, the atomics can cost more than that read
(the timings are in docs/triton.md).

The waits cannot deadlock, whatever the grid and however many programs fit on the GPU at once: a B
item waits only for A items of earlier steps, which programs already running have claimed (the
argument of decoupled look-back scans), and a program counts its pending A items before it waits.
Counters and flags are int32 zeros made per call.
"""

from __future__ import annotations

import triton
import triton.language as tl

from normbench.kernels.fused import _group_sum
from normbench.kernels.split import (
    _tile_offsets,
    aligned,
    dx_coefficients,
    grad_sum_tiles,
    input_grad_tiles,
    normalize_tiles,
    partial_offset,
    scale_shift,
    stat_offset,
    update_running_at,
)


@triton.jit
def tile_count(t0, t1, NLB, L, BLOCK_L: tl.constexpr):
    """Values per channel in tiles [t0, t1) of a channel block (tile t = (k, t % NLB); the last of a
    row, t % NLB == NLB - 1, holds L - (NLB - 1) * BLOCK_L positions)."""
    last = t1 // NLB - t0 // NLB
    return ((t1 - t0) * BLOCK_L - last * (NLB * BLOCK_L - L)).to(tl.float32)


@triton.jit
def _item(i, S, SPB, NUC, GBLK):
    """Item i of the stream: its unit, sample b, channel block and split within the block."""
    u = i // S
    r = i % S
    return u, u // NUC, (u % NUC) * GBLK + r // SPB, r % SPB


@triton.jit
def _chan(n, mean, m2, nt, mt, qt):
    """Merge (nt, mt, qt) into the running (count, mean, M2) lane by lane; empty lanes stay empty."""
    n_new = n + nt
    frac = tl.where(n_new > 0, nt / tl.where(n_new > 0, n_new, 1.0), 0.0)
    delta = mt - mean
    return n_new, mean + delta * frac, m2 + qt + delta * delta * n * frac


@triton.jit
def _step(step, end, items, S, D, pend_u, pend_n, seen):
    """Step `step` of a batch that ends at `end`: whether it has an A part, whether it has a B part and
    that item's number, and whether the program must first count its pending A items (their unit's run
    ends, the batch ends, or it is about to wait for another unit)."""
    i = step - D
    has_a = (step < end) & (step < items)
    has_b = (step < end) & (i >= 0) & (i < items)
    count = (step >= end) | (step >= items) | (step // S != pend_u) | (has_b & (i // S != seen))
    return has_a, has_b, i, count & (pend_n > 0)


@triton.jit
def _arrive(sync, u, n, S):
    """Count n finished A items of unit u; whether they were its last (their program then combines)."""
    tl.debug_barrier()  # every thread's partials are stored before the count says so
    return tl.atomic_add(sync + 1 + u, n) + n == S


@triton.jit
def _raise(flag):
    tl.debug_barrier()  # the statistics are stored before the flag says so
    tl.atomic_xchg(flag, 1)


@triton.jit
def _wait(flag):
    seen = tl.atomic_add(flag, 0)
    while seen == 0:
        seen = tl.atomic_add(flag, 0)


@triton.jit
def _first_lanes(ub, GBLK, C, Cg, GPB: tl.constexpr, BLOCK_C: tl.constexpr):
    """Each group of the unit's first block (all of the unit when it is one group), and the one lane
    per group that writes its statistics."""
    j = tl.arange(0, BLOCK_C)
    c = ub * GBLK * BLOCK_C + j
    if GPB == 1:
        first = j == 0
    else:
        first = (j % Cg == 0) & (c < C)
    return j, c // Cg, first


@triton.jit
def _moments_item(x, mean_p, m2_p, b, cb, split, C, L, sb, sk, sc, sl, T, TPS, SPB, NLB, BLOCK_C, BLOCK_L, STAGES):
    """Per-channel mean and M2 over the item's tiles, from per-thread sums around the first tile's mean
    (no reduction inside the loop; the shift keeps a large mean from cancelling the variance)."""
    c = cb * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = c < C
    t0 = split * TPS
    t1 = tl.minimum(t0 + TPS, T)
    offs, lmask = _tile_offsets(b, t0 // NLB, t0 % NLB, c, sb, sk, sc, sl, L, BLOCK_L)
    mask = cmask[:, None] & lmask[None, :]
    v = tl.load(x + offs, mask=mask, other=0.0).to(tl.float32)
    shift = tl.sum(v, 1) / tl.minimum(L - (t0 % NLB) * BLOCK_L, BLOCK_L).to(tl.float32)
    d = tl.where(mask, v - shift[:, None], 0.0)
    a1 = d
    a2 = d * d
    for t in tl.range(t0 + 1, t1, num_stages=STAGES):
        offs, lmask = _tile_offsets(b, t // NLB, t % NLB, c, sb, sk, sc, sl, L, BLOCK_L)
        mask = cmask[:, None] & lmask[None, :]
        v = tl.load(x + offs, mask=mask, other=0.0).to(tl.float32)
        d = tl.where(mask, v - shift[:, None], 0.0)
        a1 += d
        a2 += d * d
    n = tile_count(t0, t1, NLB, L, BLOCK_L)
    s1 = tl.sum(a1, 1)
    out = partial_offset(b, split, SPB, C, c)
    tl.store(mean_p + out, shift + s1 / n, mask=cmask)
    tl.store(m2_p + out, tl.maximum(tl.sum(a2, 1) - s1 * s1 / n, 0.0), mask=cmask)


@triton.jit
def _combine_moments(
    mean_p,
    m2_p,
    mean_out,
    var_out,
    rstd_out,
    run_mean,
    run_var,
    b,
    ub,
    C,
    L,
    G,
    Cg,
    T,
    TPS,
    SPB,
    NLB,
    GBLK,
    eps,
    factor,
    unbias,
    RUNNING: tl.constexpr,
    GPB: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_L: tl.constexpr,
    BLOCK_S: tl.constexpr,
):
    """A unit's statistics per group from its partials (Chan's combination), written once; RUNNING
    (one sample-set, B == 1) also updates the running statistics."""
    j = tl.arange(0, BLOCK_C)
    n = tl.zeros([BLOCK_C], tl.float32)
    mean = tl.zeros([BLOCK_C], tl.float32)
    m2 = tl.zeros([BLOCK_C], tl.float32)
    for gb in range(GBLK):  # lanes pool the channels j, j + BLOCK_C, ... of a group spanning blocks
        c = (ub * GBLK + gb) * BLOCK_C + j
        cmask = c < C
        for s0 in range(0, SPB, BLOCK_S):
            s = s0 + tl.arange(0, BLOCK_S)
            smask = s < SPB
            t0 = s * TPS
            ns = tl.where(smask, tile_count(t0, tl.minimum(t0 + TPS, T), NLB, L, BLOCK_L), 0.0)
            m = smask[:, None] & cmask[None, :]
            p = partial_offset(b, s[:, None], SPB, C, c[None, :])
            mu = tl.load(mean_p + p, mask=m, other=0.0, cache_modifier=".cg")
            q = tl.load(m2_p + p, mask=m, other=0.0, cache_modifier=".cg")
            w = tl.where(m, ns[:, None], 0.0)
            nt = tl.sum(w, 0)
            mt = tl.sum(w * mu, 0) / tl.where(nt > 0, nt, 1.0)
            dev = tl.where(m, mu - mt[None, :], 0.0)
            n, mean, m2 = _chan(n, mean, m2, nt, mt, tl.sum(q + w * dev * dev, 0))
    ng = _group_sum(n, j, Cg, GPB)
    ng = tl.where(ng > 0, ng, 1.0)  # lanes past C: no values, no statistics written
    mg = _group_sum(n * mean, j, Cg, GPB) / ng
    var = _group_sum(m2 + n * (mean - mg) * (mean - mg), j, Cg, GPB) / ng
    rstd = 1.0 / tl.sqrt(var + eps)
    j, g, first = _first_lanes(ub, GBLK, C, Cg, GPB, BLOCK_C)
    gi = stat_offset(b, G, g)
    tl.store(mean_out + gi, mg, mask=first)
    tl.store(var_out + gi, var, mask=first)
    tl.store(rstd_out + gi, rstd, mask=first)
    if RUNNING:
        update_running_at(run_mean, run_var, g, mg, var, factor, unbias, first)


@triton.jit
def _normalize_item(
    x,
    y,
    w,
    bias,
    mean,
    rstd,
    b,
    cb,
    split,
    C,
    L,
    G,
    Cg,
    sb,
    sk,
    sc,
    sl,
    T,
    TPS,
    NLB,
    HAS_AFFINE,
    BLOCK_C,
    BLOCK_L,
    STAGES,
):
    c = cb * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = c < C
    gi = stat_offset(b, G, c // Cg)
    mu = tl.load(mean + gi, mask=cmask, other=0.0, cache_modifier=".cg")
    r = tl.load(rstd + gi, mask=cmask, other=0.0, cache_modifier=".cg")
    scale, shift = scale_shift(w, bias, c, cmask, mu, r, HAS_AFFINE)
    t0 = split * TPS
    normalize_tiles(
        x, y, scale, shift, b, c, cmask, t0, tl.minimum(t0 + TPS, T), sb, sk, sc, sl, L, NLB, BLOCK_L, STAGES
    )


@triton.jit
def coop_forward(
    x,
    y,
    w,
    bias,
    mean_p,
    m2_p,
    mean_out,
    var_out,
    rstd_out,
    run_mean,
    run_var,
    sync,
    C,
    L,
    G,
    Cg,
    sb,
    sk,
    sc,
    sl,
    T,
    TPS,
    SPB,
    NLB,
    GBLK,
    NUC,
    U,
    D,
    eps,
    factor,
    unbias,
    HAS_AFFINE: tl.constexpr,
    RUNNING: tl.constexpr,
    GPB: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_L: tl.constexpr,
    BLOCK_S: tl.constexpr,
    STAGES: tl.constexpr,
    BATCH: tl.constexpr,
    ALIGN: tl.constexpr,
):
    """y = normalize(x) with per-(b, group) statistics, x read from HBM once; also writes the
    statistics (mean, biased variance, rstd) and, with RUNNING, the running statistics."""
    L, sb, sk, sc = aligned(L, ALIGN), aligned(sb, ALIGN), aligned(sk, ALIGN), aligned(sc, ALIGN)
    S = GBLK * SPB
    items = U * S
    steps = items + D
    ready = sync + 1 + U
    seen = -1  # the last unit this program saw ready: its B items need not wait again
    pend_u = -1  # A items this program finished and has not counted yet: their unit and number
    pend_n = 0
    base = tl.atomic_add(sync, BATCH)
    while base < steps:
        end = tl.minimum(base + BATCH, steps)
        for step in range(base, end + 1):  # the extra step counts what is pending at the batch's end
            has_a, has_b, i, count = _step(step, end, items, S, D, pend_u, pend_n, seen)
            if count:
                if _arrive(sync, pend_u, pend_n, S):  # the unit's last items: combine it
                    _combine_moments(
                        mean_p,
                        m2_p,
                        mean_out,
                        var_out,
                        rstd_out,
                        run_mean,
                        run_var,
                        pend_u // NUC,
                        pend_u % NUC,
                        C,
                        L,
                        G,
                        Cg,
                        T,
                        TPS,
                        SPB,
                        NLB,
                        GBLK,
                        eps,
                        factor,
                        unbias,
                        RUNNING,
                        GPB,
                        BLOCK_C,
                        BLOCK_L,
                        BLOCK_S,
                    )
                    _raise(ready + pend_u)
                pend_n = 0
            if has_a:
                u, b, cb, split = _item(step, S, SPB, NUC, GBLK)
                _moments_item(
                    x, mean_p, m2_p, b, cb, split, C, L, sb, sk, sc, sl, T, TPS, SPB, NLB, BLOCK_C, BLOCK_L, STAGES
                )
                pend_u = u
                pend_n += 1
            if has_b:
                u, b, cb, split = _item(i, S, SPB, NUC, GBLK)
                if u != seen:
                    _wait(ready + u)
                    seen = u
                _normalize_item(
                    x,
                    y,
                    w,
                    bias,
                    mean_out,
                    rstd_out,
                    b,
                    cb,
                    split,
                    C,
                    L,
                    G,
                    Cg,
                    sb,
                    sk,
                    sc,
                    sl,
                    T,
                    TPS,
                    NLB,
                    HAS_AFFINE,
                    BLOCK_C,
                    BLOCK_L,
                    STAGES,
                )
        base = tl.atomic_add(sync, BATCH)


@triton.jit
def _grad_sums_item(
    x,
    dy,
    mean,
    rstd,
    p_dy,
    p_dyxhat,
    b,
    cb,
    split,
    C,
    L,
    G,
    Cg,
    sb,
    sk,
    sc,
    sl,
    T,
    TPS,
    SPB,
    NLB,
    BLOCK_C,
    BLOCK_L,
    STAGES,
):
    """Per-channel sums of dy and dy * xhat over the item's tiles (per-thread, reduced once)."""
    c = cb * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = c < C
    gi = stat_offset(b, G, c // Cg)
    mu = tl.load(mean + gi, mask=cmask, other=0.0)
    r = tl.load(rstd + gi, mask=cmask, other=0.0)
    t0 = split * TPS
    t1 = tl.minimum(t0 + TPS, T)
    s1, s2 = grad_sum_tiles(x, dy, mu, b, c, cmask, t0, t1, sb, sk, sc, sl, L, NLB, BLOCK_C, BLOCK_L, STAGES)
    out = partial_offset(b, split, SPB, C, c)
    tl.store(p_dy + out, s1, mask=cmask)
    tl.store(p_dyxhat + out, s2 * r, mask=cmask)


@triton.jit
def _combine_grad_sums(
    p_dy,
    p_dyxhat,
    w,
    mean_g,
    mean_gx,
    dw,
    db,
    b,
    ub,
    C,
    G,
    Cg,
    SPB,
    GBLK,
    inv_count,
    HAS_AFFINE: tl.constexpr,
    PARAM_GRADS: tl.constexpr,
    GPB: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_S: tl.constexpr,
):
    """A unit's group means of dy * w and dy * w * xhat; PARAM_GRADS (B == 1, one channel per group)
    also writes dweight and dbias, the unweighted sums, for the unit's channels."""
    j = tl.arange(0, BLOCK_C)
    s1 = tl.zeros([BLOCK_C], tl.float32)
    s2 = tl.zeros([BLOCK_C], tl.float32)
    for gb in range(GBLK):
        c = (ub * GBLK + gb) * BLOCK_C + j
        cmask = c < C
        d1 = tl.zeros([BLOCK_C], tl.float32)
        d2 = tl.zeros([BLOCK_C], tl.float32)
        for s0 in range(0, SPB, BLOCK_S):
            s = s0 + tl.arange(0, BLOCK_S)
            m = (s < SPB)[:, None] & cmask[None, :]
            p = partial_offset(b, s[:, None], SPB, C, c[None, :])
            d1 += tl.sum(tl.load(p_dy + p, mask=m, other=0.0, cache_modifier=".cg"), 0)
            d2 += tl.sum(tl.load(p_dyxhat + p, mask=m, other=0.0, cache_modifier=".cg"), 0)
        wc = tl.full([BLOCK_C], 1.0, tl.float32)
        if HAS_AFFINE:
            wc = tl.load(w + c, mask=cmask, other=0.0).to(tl.float32)
        if PARAM_GRADS:
            tl.store(dw + c, d2.to(dw.dtype.element_ty), mask=cmask)
            tl.store(db + c, d1.to(db.dtype.element_ty), mask=cmask)
        s1 += wc * d1
        s2 += wc * d2
    j, g, first = _first_lanes(ub, GBLK, C, Cg, GPB, BLOCK_C)
    gi = stat_offset(b, G, g)
    tl.store(mean_g + gi, _group_sum(s1, j, Cg, GPB) * inv_count, mask=first)
    tl.store(mean_gx + gi, _group_sum(s2, j, Cg, GPB) * inv_count, mask=first)


@triton.jit
def _input_grad_item(
    x,
    dy,
    dx,
    w,
    mean,
    rstd,
    mean_g,
    mean_gx,
    b,
    cb,
    split,
    C,
    L,
    G,
    Cg,
    sb,
    sk,
    sc,
    sl,
    T,
    TPS,
    NLB,
    HAS_AFFINE,
    BLOCK_C,
    BLOCK_L,
    STAGES,
):
    """dx = dy * (rstd * w) - x * alpha + beta per channel (see split.input_grad)."""
    c = cb * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = c < C
    gi = stat_offset(b, G, c // Cg)
    mu = tl.load(mean + gi, mask=cmask, other=0.0)
    r = tl.load(rstd + gi, mask=cmask, other=0.0)
    a = tl.load(mean_g + gi, mask=cmask, other=0.0, cache_modifier=".cg")
    bb = tl.load(mean_gx + gi, mask=cmask, other=0.0, cache_modifier=".cg")
    rw, alpha, beta = dx_coefficients(w, c, cmask, mu, r, a, bb, HAS_AFFINE)
    t0 = split * TPS
    t1 = tl.minimum(t0 + TPS, T)
    input_grad_tiles(x, dy, dx, rw, alpha, beta, b, c, cmask, t0, t1, sb, sk, sc, sl, L, NLB, BLOCK_L, STAGES)


@triton.jit
def coop_backward(
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
    dw,
    db,
    sync,
    C,
    L,
    G,
    Cg,
    sb,
    sk,
    sc,
    sl,
    T,
    TPS,
    SPB,
    NLB,
    GBLK,
    NUC,
    U,
    D,
    inv_count,
    HAS_AFFINE: tl.constexpr,
    PARAM_GRADS: tl.constexpr,
    GPB: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_L: tl.constexpr,
    BLOCK_S: tl.constexpr,
    STAGES: tl.constexpr,
    BATCH: tl.constexpr,
    ALIGN: tl.constexpr,
):
    """dx for batch statistics, x and dy read from HBM once; the per-(b, split, channel) sums of dy and
    dy * xhat stay in p_dy / p_dyxhat (dweight and dbias: in-kernel with PARAM_GRADS, else summed after)."""
    L, sb, sk, sc = aligned(L, ALIGN), aligned(sb, ALIGN), aligned(sk, ALIGN), aligned(sc, ALIGN)
    S = GBLK * SPB
    items = U * S
    steps = items + D
    ready = sync + 1 + U
    seen = -1  # as in coop_forward
    pend_u = -1
    pend_n = 0
    base = tl.atomic_add(sync, BATCH)
    while base < steps:
        end = tl.minimum(base + BATCH, steps)
        for step in range(base, end + 1):
            has_a, has_b, i, count = _step(step, end, items, S, D, pend_u, pend_n, seen)
            if count:
                if _arrive(sync, pend_u, pend_n, S):
                    _combine_grad_sums(
                        p_dy,
                        p_dyxhat,
                        w,
                        mean_g,
                        mean_gx,
                        dw,
                        db,
                        pend_u // NUC,
                        pend_u % NUC,
                        C,
                        G,
                        Cg,
                        SPB,
                        GBLK,
                        inv_count,
                        HAS_AFFINE,
                        PARAM_GRADS,
                        GPB,
                        BLOCK_C,
                        BLOCK_S,
                    )
                    _raise(ready + pend_u)
                pend_n = 0
            if has_a:
                u, b, cb, split = _item(step, S, SPB, NUC, GBLK)
                _grad_sums_item(
                    x,
                    dy,
                    mean,
                    rstd,
                    p_dy,
                    p_dyxhat,
                    b,
                    cb,
                    split,
                    C,
                    L,
                    G,
                    Cg,
                    sb,
                    sk,
                    sc,
                    sl,
                    T,
                    TPS,
                    SPB,
                    NLB,
                    BLOCK_C,
                    BLOCK_L,
                    STAGES,
                )
                pend_u = u
                pend_n += 1
            if has_b:
                u, b, cb, split = _item(i, S, SPB, NUC, GBLK)
                if u != seen:
                    _wait(ready + u)
                    seen = u
                _input_grad_item(
                    x,
                    dy,
                    dx,
                    w,
                    mean,
                    rstd,
                    mean_g,
                    mean_gx,
                    b,
                    cb,
                    split,
                    C,
                    L,
                    G,
                    Cg,
                    sb,
                    sk,
                    sc,
                    sl,
                    T,
                    TPS,
                    NLB,
                    HAS_AFFINE,
                    BLOCK_C,
                    BLOCK_L,
                    STAGES,
                )
        base = tl.atomic_add(sync, BATCH)
