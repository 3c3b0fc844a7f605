"""Fused kernels: each program holds whole (b, group) slabs in registers, so x (and dy) is read once.

A program's tile is (BLOCK_C channels, BLOCK_L positions) of one b, with GPB whole groups in it
(several when groups are small, so rows stay long enough to coalesce in channels_last and programs
carry enough work). Per-channel sums are reduced along positions, then summed over each group's
channels: a plain sum when the tile holds one group, a (BLOCK_C, BLOCK_C) same-group mask otherwise
(BLOCK_C <= 64 then, see layout.py).
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _group_sum(v, j, Cg, GPB: tl.constexpr):
    """For each channel lane, the sum of v over the lanes of its group (v is 0 on unused lanes)."""
    if GPB == 1:
        return tl.zeros_like(v) + tl.sum(v, 0)
    else:
        same = (j // Cg)[:, None] == (j // Cg)[None, :]
        return tl.sum(tl.where(same, v[None, :], 0.0), 1)


@triton.jit
def _slab(C, L, G, Cg, sb, sc, sl, GPB: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_L: tl.constexpr):
    pid = tl.program_id(0)
    blocks = tl.cdiv(G, GPB)
    b = pid // blocks
    j = tl.arange(0, BLOCK_C)
    c = (pid % blocks) * (GPB * Cg) + j
    cmask = (j < GPB * Cg) & (c < C)
    l = tl.arange(0, BLOCK_L)
    mask = cmask[:, None] & (l < L)[None, :]
    offs = b.to(tl.int64) * sb + (c[:, None] * sc + l[None, :] * sl)
    return b, j, c, cmask, mask, offs


@triton.jit
def fused_forward(
    x, y, w, bias, mean_out, var_out, rstd_out,
    C, L, G, Cg, sb, sc, sl, eps,
    HAS_AFFINE: tl.constexpr, GPB: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_L: tl.constexpr,
):
    """One read of x: mean, then the variance around it (two passes over registers), normalize, affine."""
    b, j, c, cmask, mask, offs = _slab(C, L, G, Cg, sb, sc, sl, GPB, BLOCK_C, BLOCK_L)
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
    first = cmask & (j % Cg == 0)  # one lane per group writes its statistics
    gi = b * G + c // Cg
    tl.store(mean_out + gi, mean, mask=first)
    tl.store(var_out + gi, var, mask=first)
    tl.store(rstd_out + gi, rstd, mask=first)


@triton.jit
def fused_backward(
    x, dy, dx, w, mean, rstd, p_dy, p_dyxhat,
    C, L, G, Cg, sb, sc, sl,
    HAS_AFFINE: tl.constexpr, GPB: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_L: tl.constexpr,
):
    """One read of x and dy: dx, plus this b's per-channel sums of dy and dy * xhat (for dbias, dweight).

    dx = rstd * (dy * w - mean(dy * w) - xhat * mean(dy * w * xhat)), means over the group.
    """
    b, j, c, cmask, mask, offs = _slab(C, L, G, Cg, sb, sc, sl, GPB, BLOCK_C, BLOCK_L)
    gi = b * G + c // Cg
    mu = tl.load(mean + gi, mask=cmask, other=0.0)
    r = tl.load(rstd + gi, mask=cmask, other=0.0)
    xhat = (tl.load(x + offs, mask=mask, other=0.0).to(tl.float32) - mu[:, None]) * r[:, None]
    g = tl.load(dy + offs, mask=mask, other=0.0).to(tl.float32)
    s1 = tl.sum(g, 1)
    s2 = tl.sum(g * xhat, 1)  # g is 0 where masked
    wc = tl.full([BLOCK_C], 1.0, tl.float32)
    if HAS_AFFINE:
        wc = tl.load(w + c, mask=cmask, other=0.0).to(tl.float32)
        tl.store(p_dy + b * C + c, s1, mask=cmask)
        tl.store(p_dyxhat + b * C + c, s2, mask=cmask)
    inv_n = 1.0 / (Cg * L * 1.0)
    mean_g = _group_sum(wc * s1, j, Cg, GPB) * inv_n
    mean_gx = _group_sum(wc * s2, j, Cg, GPB) * inv_n
    out = r[:, None] * (g * wc[:, None] - mean_g[:, None] - xhat * mean_gx[:, None])
    tl.store(dx + offs, out.to(dx.dtype.element_ty), mask=mask)
