"""Slab kernels: each program owns whole (b, group) slabs, so statistics need no second kernel.

A program's tile is (BLOCK_C channels, BLOCK_L positions) of one b, with GPB whole groups in it
(several when groups are small, so rows stay long enough to coalesce in channels_last and programs
carry enough work). Per-channel sums are reduced along positions, then summed over each group's
channels: a plain sum when the tile holds one group, a (BLOCK_C, BLOCK_C) same-group mask otherwise
(BLOCK_C <= 64 then, see layout.py).

- `fused_forward` / `fused_backward`: the slab fits one tile, held in registers: x (and dy) read once.
- `looped_forward` / `looped_backward`: the slab is streamed in BLOCK_L steps twice, once for the
  statistics and once for the output. Persistent programs, as many as let their slabs sit in L2
  together, so the second read of a slab is served from L2 (see layout.looped_programs).

Backward, each program also sums dy and dy * xhat per channel over its slabs (for dbias and dweight)
and writes them once, one partial row per program, which torch then sums: with short slabs
(LayerNorm on (N, C) rows) a row per slab would move more bytes than x (layout.slab_backward_programs).
"""

from __future__ import annotations

import triton
import triton.language as tl

from normbench.kernels.split import aligned, merge_tile_moments, partial_offset, stat_offset


@triton.jit
def _group_sum(v, j, Cg, GPB: tl.constexpr):
    """For each channel lane, the sum of v over the lanes of its group (v is 0 on unused lanes)."""
    if GPB == 1:
        return tl.zeros_like(v) + tl.sum(v, 0)
    else:
        same = (j // Cg)[:, None] == (j // Cg)[None, :]
        return tl.sum(tl.where(same, v[None, :], 0.0), 1)


@triton.jit
def _slab_at(slab, C, L, G, Cg, sb, sc, sl, GPB: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_L: tl.constexpr):
    """Slab number `slab`: its b, channel lanes j, channels c, their mask, position lanes l, and the
    offsets of its tile (of its first BLOCK_L step when streamed)."""
    blocks = tl.cdiv(G, GPB)
    b = slab // blocks
    j = tl.arange(0, BLOCK_C)
    c = (slab % blocks) * (GPB * Cg) + j
    cmask = (j < GPB * Cg) & (c < C)
    l = tl.arange(0, BLOCK_L)
    base = b.to(tl.int64) * sb + (c[:, None] * sc + l[None, :] * sl)
    return b, j, c, cmask, l, base


@triton.jit
def _backward_program(
    w, C, L, G, Cg, sc, sl, HAS_AFFINE: tl.constexpr, GPB: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_L: tl.constexpr
):
    """What stays fixed for a backward program over its slabs (all of one channel block): its row of
    partial sums, channel lanes j, channels c and their mask, position lanes l, its channels' weights
    (1 without affine), and its tile's offsets within a b."""
    row, j, c, cmask, l, _ = _slab_at(tl.program_id(0), C, L, G, Cg, 0, sc, sl, GPB, BLOCK_C, BLOCK_L)
    wc = tl.full([BLOCK_C], 1.0, tl.float32)
    if HAS_AFFINE:
        wc = tl.load(w + c, mask=cmask, other=0.0).to(tl.float32)
    return row, j, c, cmask, l, wc, c[:, None] * sc + l[None, :] * sl


@triton.jit
def _slab_stats(mean, rstd, slab, G, Cg, c, cmask, GPB: tl.constexpr):
    """Slab `slab`'s b and the mean and rstd of its channels' groups."""
    b = slab // tl.cdiv(G, GPB)
    gi = stat_offset(b, G, c // Cg)
    return b, tl.load(mean + gi, mask=cmask, other=0.0), tl.load(rstd + gi, mask=cmask, other=0.0)


@triton.jit
def _store_partial_row(p_dy, p_dyxhat, acc_dy, acc_dyxhat, row, C, c, cmask):
    tl.store(p_dy + partial_offset(row, 0, 1, C, c), acc_dy, mask=cmask)
    tl.store(p_dyxhat + partial_offset(row, 0, 1, C, c), acc_dyxhat, mask=cmask)


@triton.jit
def _store_stats(mean_out, var_out, rstd_out, mean, var, rstd, b, j, c, cmask, G, Cg):
    """Save a slab's per-group statistics (for the backward and the running statistics)."""
    first = cmask & (j % Cg == 0)  # one lane per group writes its statistics
    gi = stat_offset(b, G, c // Cg)
    tl.store(mean_out + gi, mean, mask=first)
    tl.store(var_out + gi, var, mask=first)
    tl.store(rstd_out + gi, rstd, mask=first)


@triton.jit
def fused_forward(
    x,
    y,
    w,
    bias,
    mean_out,
    var_out,
    rstd_out,
    C,
    L,
    G,
    Cg,
    sb,
    sc,
    sl,
    eps,
    HAS_AFFINE: tl.constexpr,
    GPB: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_L: tl.constexpr,
    ALIGN: tl.constexpr,
):
    """One read of x: mean, then the variance around it (two passes over registers), normalize, affine."""
    L, sb, sc = aligned(L, ALIGN), aligned(sb, ALIGN), aligned(sc, ALIGN)
    b, j, c, cmask, l, offs = _slab_at(tl.program_id(0), C, L, G, Cg, sb, sc, sl, GPB, BLOCK_C, BLOCK_L)
    mask = cmask[:, None] & (l < L)[None, :]
    v = tl.load(x + offs, mask=mask, other=0.0).to(tl.float32)
    inv_n = 1.0 / (Cg * L * 1.0)
    mean = _group_sum(tl.sum(v, 1), j, Cg, GPB) * inv_n
    d = tl.where(mask, v - mean[:, None], 0.0)
    var = _group_sum(tl.sum(d * d, 1), j, Cg, GPB) * inv_n
    rstd = 1.0 / tl.sqrt(var + eps)
    scale = rstd
    shift = tl.zeros_like(rstd)
    if HAS_AFFINE:
        scale = rstd * tl.load(w + c, mask=cmask, other=0.0).to(tl.float32)
        shift = tl.load(bias + c, mask=cmask, other=0.0).to(tl.float32)
    out = d * scale[:, None] + shift[:, None]
    tl.store(y + offs, out.to(y.dtype.element_ty), mask=mask)
    _store_stats(mean_out, var_out, rstd_out, mean, var, rstd, b, j, c, cmask, G, Cg)


@triton.jit
def fused_backward(
    x,
    dy,
    dx,
    w,
    mean,
    rstd,
    p_dy,
    p_dyxhat,
    C,
    L,
    G,
    Cg,
    sb,
    sc,
    sl,
    SLABS,
    HAS_AFFINE: tl.constexpr,
    GPB: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_L: tl.constexpr,
    ALIGN: tl.constexpr,
):
    """One read of x and dy per slab: dx, and the per-channel sums of dy and dy * xhat (for dbias, dweight).

    dx = rstd * (dy * w - mean(dy * w) - xhat * mean(dy * w * xhat)), means over the group. Program p
    takes slabs p, p + P, ... (P programs, a multiple of the channel blocks per b, so all of one block)
    and writes its sums as row p // blocks of the partials: a row per b with a program per slab, a row
    per program when they are persistent (layout.slab_backward_programs).
    """
    L, sb, sc = aligned(L, ALIGN), aligned(sb, ALIGN), aligned(sc, ALIGN)
    row, j, c, cmask, l, wc, inner = _backward_program(w, C, L, G, Cg, sc, sl, HAS_AFFINE, GPB, BLOCK_C, BLOCK_L)
    inv_n = 1.0 / (Cg * L * 1.0)
    mask = cmask[:, None] & (l < L)[None, :]
    acc_dy = tl.zeros([BLOCK_C], tl.float32)
    acc_dyxhat = tl.zeros([BLOCK_C], tl.float32)
    for slab in range(tl.program_id(0), SLABS, tl.num_programs(0)):
        b, mu, r = _slab_stats(mean, rstd, slab, G, Cg, c, cmask, GPB)
        offs = b.to(tl.int64) * sb + inner
        xhat = (tl.load(x + offs, mask=mask, other=0.0).to(tl.float32) - mu[:, None]) * r[:, None]
        g = tl.load(dy + offs, mask=mask, other=0.0).to(tl.float32)
        s1 = tl.sum(g, 1)
        s2 = tl.sum(g * xhat, 1)  # g is 0 where masked
        acc_dy += s1
        acc_dyxhat += s2
        mean_g = _group_sum(wc * s1, j, Cg, GPB) * inv_n
        mean_gx = _group_sum(wc * s2, j, Cg, GPB) * inv_n
        out = r[:, None] * (g * wc[:, None] - mean_g[:, None] - xhat * mean_gx[:, None])
        tl.store(dx + offs, out.to(dx.dtype.element_ty), mask=mask)
    if HAS_AFFINE:
        _store_partial_row(p_dy, p_dyxhat, acc_dy, acc_dyxhat, row, C, c, cmask)


@triton.jit
def looped_forward(
    x,
    y,
    w,
    bias,
    mean_out,
    var_out,
    rstd_out,
    C,
    L,
    G,
    Cg,
    sb,
    sc,
    sl,
    eps,
    SLABS,
    HAS_AFFINE: tl.constexpr,
    GPB: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_L: tl.constexpr,
    ALIGN: tl.constexpr,
):
    """Per slab: per-channel moments over its steps (Chan's update), combined per group; then normalize.

    Persistent: program p takes slabs p, p + P, ... (P programs), so that only P slabs are in flight
    and the second pass over each finds it in L2 (layout.py sizes P so that they fit).
    """
    L, sb, sc = aligned(L, ALIGN), aligned(sb, ALIGN), aligned(sc, ALIGN)
    for slab in range(tl.program_id(0), SLABS, tl.num_programs(0)):
        b, j, c, cmask, l, base = _slab_at(slab, C, L, G, Cg, sb, sc, sl, GPB, BLOCK_C, BLOCK_L)
        n = 0.0
        mean_c = tl.zeros([BLOCK_C], tl.float32)
        m2_c = tl.zeros([BLOCK_C], tl.float32)
        for l0 in range(0, L, BLOCK_L):
            mask = cmask[:, None] & (l0 + l < L)[None, :]
            v = tl.load(x + base + l0 * sl, mask=mask, other=0.0).to(tl.float32)
            n, mean_c, m2_c = merge_tile_moments(n, mean_c, m2_c, v, mask, tl.minimum(L - l0, BLOCK_L))
        # Every channel of a group has L values: the group mean is the mean of its channel means.
        mean_c = tl.where(cmask, mean_c, 0.0)
        mean = _group_sum(mean_c, j, Cg, GPB) / Cg
        dev = tl.where(cmask, m2_c + n * (mean_c - mean) * (mean_c - mean), 0.0)
        var = _group_sum(dev, j, Cg, GPB) / (Cg * n)
        rstd = 1.0 / tl.sqrt(var + eps)
        scale = rstd
        shift = -mean * rstd
        if HAS_AFFINE:
            scale = rstd * tl.load(w + c, mask=cmask, other=0.0).to(tl.float32)
            shift = tl.load(bias + c, mask=cmask, other=0.0).to(tl.float32) - mean * scale
        for l0 in range(0, L, BLOCK_L):
            mask = cmask[:, None] & (l0 + l < L)[None, :]
            v = tl.load(x + base + l0 * sl, mask=mask, other=0.0).to(tl.float32)
            out = v * scale[:, None] + shift[:, None]
            tl.store(y + base + l0 * sl, out.to(y.dtype.element_ty), mask=mask)
        _store_stats(mean_out, var_out, rstd_out, mean, var, rstd, b, j, c, cmask, G, Cg)


@triton.jit
def looped_backward(
    x,
    dy,
    dx,
    w,
    mean,
    rstd,
    p_dy,
    p_dyxhat,
    C,
    L,
    G,
    Cg,
    sb,
    sc,
    sl,
    SLABS,
    HAS_AFFINE: tl.constexpr,
    GPB: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_L: tl.constexpr,
    ALIGN: tl.constexpr,
):
    """fused_backward over streamed slabs (persistent, as looped_forward; programs and partial rows as
    fused_backward): per slab, sums of dy and dy * xhat, then dx."""
    L, sb, sc = aligned(L, ALIGN), aligned(sb, ALIGN), aligned(sc, ALIGN)
    row, j, c, cmask, l, wc, inner = _backward_program(w, C, L, G, Cg, sc, sl, HAS_AFFINE, GPB, BLOCK_C, BLOCK_L)
    inv_n = 1.0 / (Cg * L * 1.0)
    acc_dy = tl.zeros([BLOCK_C], tl.float32)
    acc_dyxhat = tl.zeros([BLOCK_C], tl.float32)
    for slab in range(tl.program_id(0), SLABS, tl.num_programs(0)):
        b, mu, r = _slab_stats(mean, rstd, slab, G, Cg, c, cmask, GPB)
        base = b.to(tl.int64) * sb + inner
        # Accumulate per thread and reduce once after the loop: no reduction inside the loop. (Also
        # the fix for Triton <= 3.6, whose OptimizeThreadLocality pass crashes, "PassManager::run
        # failed", on `s += tl.sum(load)` when s has two uses after the loop.)
        a1 = tl.zeros([BLOCK_C, BLOCK_L], tl.float32)
        a2 = tl.zeros([BLOCK_C, BLOCK_L], tl.float32)
        for l0 in range(0, L, BLOCK_L):
            mask = cmask[:, None] & (l0 + l < L)[None, :]
            xv = tl.load(x + base + l0 * sl, mask=mask, other=0.0).to(tl.float32)
            g = tl.load(dy + base + l0 * sl, mask=mask, other=0.0).to(tl.float32)
            a1 += g
            a2 += g * (xv - mu[:, None])  # g is 0 where masked; times r after the sum
        s1 = tl.sum(a1, 1)
        s2 = tl.sum(a2, 1) * r
        acc_dy += s1
        acc_dyxhat += s2
        mean_g = _group_sum(wc * s1, j, Cg, GPB) * inv_n
        mean_gx = _group_sum(wc * s2, j, Cg, GPB) * inv_n
        # dx = r * (g * w - mean_g - (x - mu) * r * mean_gx) = g * (r * w) - x * alpha + beta
        rw = r * wc
        alpha = r * r * mean_gx
        beta = alpha * mu - r * mean_g
        for l0 in range(0, L, BLOCK_L):
            mask = cmask[:, None] & (l0 + l < L)[None, :]
            xv = tl.load(x + base + l0 * sl, mask=mask, other=0.0).to(tl.float32)
            g = tl.load(dy + base + l0 * sl, mask=mask, other=0.0).to(tl.float32)
            out = g * rw[:, None] - xv * alpha[:, None] + beta[:, None]
            tl.store(dx + base + l0 * sl, out.to(dx.dtype.element_ty), mask=mask)
    if HAS_AFFINE:
        _store_partial_row(p_dy, p_dyxhat, acc_dy, acc_dyxhat, row, C, c, cmask)
