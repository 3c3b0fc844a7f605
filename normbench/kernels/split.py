"""Split reductions: per-channel partial sums over a split of the (k, l) tiles, a combine per (b, group),
then an element-wise sweep. For statistics too big for one program (BatchNorm over N x spatial, huge
spatial extents). Programs run over (b, channel block, split); see layout.py for the view and tiling.

Forward: `partial_moments` (read x) -> `combine_moments` -> `normalize` (read x, write y).
Backward: `partial_grad_sums` (read x, dy) -> `combine_grad_sums` -> `input_grad` (read x, dy, write dx);
the same per-channel partial sums of dy and dy * xhat give dbias and dweight (summed over b and
splits on the host side: B x splits x C values, small next to x).
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _program(S, CB):
    """(b, channel block, split) of this program; consecutive programs take consecutive splits."""
    pid = tl.program_id(0)
    s = pid % S
    rest = pid // S
    return rest // CB, rest % CB, s


@triton.jit
def partial_offset(b, s, S, C, c):
    """Where (b, split s, channel c) sits in a (B, S, C) partial-sum buffer, in int64: B x S x C can
    pass 2**31 (on (N, C) rows B = N), where int32 would wrap to a negative offset."""
    return (tl.cast(b, tl.int64) * S + s) * C + c


@triton.jit
def aligned(n, ALIGN: tl.constexpr):
    """n, a multiple of ALIGN (GroupedView.align), written so that the compiler sees it: Triton knows
    the divisibility of integer arguments only when it is 16, so without this the loads along the
    positions of an NCHW input of 14 x 14 (L = 196 = 4 x 49) stay scalar."""
    return n // ALIGN * ALIGN


@triton.jit
def stat_offset(b, G, g):
    """Index of (b, group g) among the B x G statistics, in int64 for the same reason."""
    return tl.cast(b, tl.int64) * G + g


@triton.jit
def _tile_offsets(b, k, lb, c, sb, sk, sc, sl, L, BLOCK_L: tl.constexpr):
    l = lb * BLOCK_L + tl.arange(0, BLOCK_L)
    base = b.to(tl.int64) * sb + k.to(tl.int64) * sk
    return base + (c[:, None] * sc + l[None, :] * sl), l < L


@triton.jit
def scale_shift(w, bias, c, cmask, mu, r, HAS_AFFINE: tl.constexpr):
    """Per channel, y = x * scale + shift: the statistics and the affine parameters folded."""
    scale = r
    shift = -mu * r
    if HAS_AFFINE:
        scale = r * tl.load(w + c, mask=cmask, other=0.0).to(tl.float32)
        shift = tl.load(bias + c, mask=cmask, other=0.0).to(tl.float32) - mu * scale
    return scale, shift


@triton.jit
def dx_coefficients(w, c, cmask, mu, r, mean_g, mean_gx, HAS_AFFINE: tl.constexpr):
    """Per channel, dx = dy * rw - x * alpha + beta, from the group means of dy * w (mean_g) and of
    dy * w * xhat (mean_gx): rstd * (dy * w - mean_g - xhat * mean_gx) rearranged."""
    rw = r
    if HAS_AFFINE:
        rw = r * tl.load(w + c, mask=cmask, other=0.0).to(tl.float32)
    alpha = r * r * mean_gx
    return rw, alpha, alpha * mu - r * mean_g


@triton.jit
def normalize_tiles(
    x, y, scale, shift, b, c, cmask, t0, t1, sb, sk, sc, sl, L, NLB, BLOCK_L: tl.constexpr, STAGES: tl.constexpr
):
    """y = x * scale[c] + shift[c] over tiles [t0, t1) of one channel block."""
    for t in tl.range(t0, t1, num_stages=STAGES):
        offs, lmask = _tile_offsets(b, t // NLB, t % NLB, c, sb, sk, sc, sl, L, BLOCK_L)
        mask = cmask[:, None] & lmask[None, :]
        v = tl.load(x + offs, mask=mask, other=0.0).to(tl.float32)
        tl.store(y + offs, (v * scale[:, None] + shift[:, None]).to(y.dtype.element_ty), mask=mask)


@triton.jit
def grad_sum_tiles(
    x,
    dy,
    mu,
    b,
    c,
    cmask,
    t0,
    t1,
    sb,
    sk,
    sc,
    sl,
    L,
    NLB,
    BLOCK_C: tl.constexpr,
    BLOCK_L: tl.constexpr,
    STAGES: tl.constexpr,
):
    """Per-channel sums of dy and of dy * (x - mu) over tiles [t0, t1): per-thread, reduced once after
    the loop (see fused.looped_backward for why)."""
    a1 = tl.zeros([BLOCK_C, BLOCK_L], tl.float32)
    a2 = tl.zeros([BLOCK_C, BLOCK_L], tl.float32)
    for t in tl.range(t0, t1, num_stages=STAGES):
        offs, lmask = _tile_offsets(b, t // NLB, t % NLB, c, sb, sk, sc, sl, L, BLOCK_L)
        mask = cmask[:, None] & lmask[None, :]
        xv = tl.load(x + offs, mask=mask, other=0.0).to(tl.float32)
        g = tl.load(dy + offs, mask=mask, other=0.0).to(tl.float32)
        a1 += g
        a2 += g * (xv - mu[:, None])  # g is 0 where masked
    return tl.sum(a1, 1), tl.sum(a2, 1)


@triton.jit
def input_grad_tiles(
    x,
    dy,
    dx,
    rw,
    alpha,
    beta,
    b,
    c,
    cmask,
    t0,
    t1,
    sb,
    sk,
    sc,
    sl,
    L,
    NLB,
    BLOCK_L: tl.constexpr,
    STAGES: tl.constexpr,
):
    """dx = dy * rw[c] - x * alpha[c] + beta[c] over tiles [t0, t1) (see input_grad)."""
    for t in tl.range(t0, t1, num_stages=STAGES):
        offs, lmask = _tile_offsets(b, t // NLB, t % NLB, c, sb, sk, sc, sl, L, BLOCK_L)
        mask = cmask[:, None] & lmask[None, :]
        xv = tl.load(x + offs, mask=mask, other=0.0).to(tl.float32)
        g = tl.load(dy + offs, mask=mask, other=0.0).to(tl.float32)
        out = g * rw[:, None] - xv * alpha[:, None] + beta[:, None]
        tl.store(dx + offs, out.to(dx.dtype.element_ty), mask=mask)


@triton.jit
def merge_tile_moments(n, mean, m2, v, mask, valid):
    """Chan et al.'s pairwise update of per-channel (count, mean, M2) with a tile of `valid` values per row.

    The tile's moments are taken around its own mean (two passes over registers), so a large mean
    does not cancel the variance as a plain sum of squares would.
    """
    nt = valid.to(tl.float32)
    mt = tl.sum(v, 1) / nt
    d = tl.where(mask, v - mt[:, None], 0.0)
    n_new = n + nt
    delta = mt - mean
    mean += delta * (nt / n_new)
    m2 += tl.sum(d * d, 1) + delta * delta * (n * nt / n_new)
    return n_new, mean, m2


@triton.jit
def partial_moments(
    x,
    mean_p,
    m2_p,
    count_p,
    C,
    L,
    sb,
    sk,
    sc,
    sl,
    T,
    TPS,
    S,
    CB,
    NLB,
    BLOCK_C: tl.constexpr,
    BLOCK_L: tl.constexpr,
    ALIGN: tl.constexpr,
):
    """Mean and sum of squared deviations per channel over this program's tiles, and their count."""
    L, sb, sk, sc = aligned(L, ALIGN), aligned(sb, ALIGN), aligned(sk, ALIGN), aligned(sc, ALIGN)
    b, cb, s = _program(S, CB)
    c = cb * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = c < C
    n = 0.0
    mean = tl.zeros([BLOCK_C], tl.float32)
    m2 = tl.zeros([BLOCK_C], tl.float32)
    t_end = tl.minimum(s * TPS + TPS, T)
    for t in range(s * TPS, t_end):
        k = t // NLB
        lb = t % NLB
        offs, lmask = _tile_offsets(b, k, lb, c, sb, sk, sc, sl, L, BLOCK_L)
        mask = cmask[:, None] & lmask[None, :]
        v = tl.load(x + offs, mask=mask, other=0.0).to(tl.float32)
        n, mean, m2 = merge_tile_moments(n, mean, m2, v, mask, tl.minimum(L - lb * BLOCK_L, BLOCK_L))
    out = partial_offset(b, s, S, C, c)
    tl.store(mean_p + out, mean, mask=cmask)
    tl.store(m2_p + out, m2, mask=cmask)
    tl.store(count_p + s, n, mask=(b == 0) & (cb == 0))


@triton.jit
def _group_moments(mean_p, m2_p, count_p, b, g, C, Cg, S, BLOCK: tl.constexpr):
    """Mean and biased variance of one (b, group) from its S x Cg partials (Chan's combination)."""
    M = S * Cg
    acc_n = tl.zeros([BLOCK], tl.float32)
    acc_s = tl.zeros([BLOCK], tl.float32)
    for i0 in range(0, M, BLOCK):
        i = i0 + tl.arange(0, BLOCK)
        m = i < M
        cnt = tl.load(count_p + i // Cg, mask=m, other=0.0)
        mu = tl.load(mean_p + partial_offset(b, i // Cg, S, C, g * Cg + i % Cg), mask=m, other=0.0)
        acc_n += cnt
        acc_s += cnt * mu
    n = tl.sum(acc_n, 0)
    mean = tl.sum(acc_s, 0) / n
    acc_q = tl.zeros([BLOCK], tl.float32)
    for i0 in range(0, M, BLOCK):
        i = i0 + tl.arange(0, BLOCK)
        m = i < M
        cnt = tl.load(count_p + i // Cg, mask=m, other=0.0)
        p = partial_offset(b, i // Cg, S, C, g * Cg + i % Cg)
        mu = tl.load(mean_p + p, mask=m, other=0.0)
        q = tl.load(m2_p + p, mask=m, other=0.0)
        acc_q += q + cnt * (mu - mean) * (mu - mean)
    return mean, tl.sum(acc_q, 0) / n


@triton.jit
def update_running_at(run_mean, run_var, g, batch_mean, batch_var, factor, unbias, mask):
    """running = (1 - factor) * running + factor * batch statistic at groups g (where mask); the
    variance made unbiased."""
    rm = tl.load(run_mean + g, mask=mask, other=0.0).to(tl.float32)
    rv = tl.load(run_var + g, mask=mask, other=0.0).to(tl.float32)
    tl.store(run_mean + g, ((1.0 - factor) * rm + factor * batch_mean).to(run_mean.dtype.element_ty), mask=mask)
    new_var = (1.0 - factor) * rv + factor * batch_var * unbias
    tl.store(run_var + g, new_var.to(run_var.dtype.element_ty), mask=mask)


@triton.jit
def combine_moments(
    mean_p,
    m2_p,
    count_p,
    mean_out,
    var_out,
    rstd_out,
    run_mean,
    run_var,
    C,
    G,
    Cg,
    S,
    B,
    eps,
    factor,
    unbias,
    RUNNING: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """Mean, biased variance and 1/sqrt(var + eps) per (b, group) from the S x Cg partials.

    RUNNING (BatchNorm's running statistics): one program per group loops over the B (virtual)
    batches and then updates running_mean/var[group] with their average, so the update costs no
    launch of its own; otherwise one program per (b, group).
    """
    if RUNNING:
        g = tl.program_id(0)
        sum_mean = 0.0
        sum_var = 0.0
        for b in range(B):
            mean, var = _group_moments(mean_p, m2_p, count_p, b, g, C, Cg, S, BLOCK)
            tl.store(mean_out + stat_offset(b, G, g), mean)
            tl.store(var_out + stat_offset(b, G, g), var)
            tl.store(rstd_out + stat_offset(b, G, g), 1.0 / tl.sqrt(var + eps))
            sum_mean += mean
            sum_var += var
        update_running_at(run_mean, run_var, g, sum_mean / B, sum_var / B, factor, unbias, g >= 0)
    else:
        pid = tl.program_id(0)
        mean, var = _group_moments(mean_p, m2_p, count_p, pid // G, pid % G, C, Cg, S, BLOCK)
        tl.store(mean_out + pid, mean)
        tl.store(var_out + pid, var)
        tl.store(rstd_out + pid, 1.0 / tl.sqrt(var + eps))


@triton.jit
def update_running(mean, var, run_mean, run_var, G, B, factor, unbias, BLOCK: tl.constexpr):
    """The running-statistics update after a slab kernel (no combine kernel to fold it into)."""
    g = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    m = g < G
    sum_mean = tl.zeros([BLOCK], tl.float32)
    sum_var = tl.zeros([BLOCK], tl.float32)
    for b in range(B):
        sum_mean += tl.load(mean + stat_offset(b, G, g), mask=m, other=0.0)
        sum_var += tl.load(var + stat_offset(b, G, g), mask=m, other=0.0)
    update_running_at(run_mean, run_var, g, sum_mean / B, sum_var / B, factor, unbias, m)


@triton.jit
def _channel_stats(mean, rstd, b, c, cmask, G, Cg):
    gi = stat_offset(b, G, c // Cg)
    return tl.load(mean + gi, mask=cmask, other=0.0), tl.load(rstd + gi, mask=cmask, other=0.0)


@triton.jit
def normalize(
    x,
    y,
    w,
    bias,
    mean,
    rstd,
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
    S,
    CB,
    NLB,
    HAS_AFFINE: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_L: tl.constexpr,
    ALIGN: tl.constexpr,
):
    """y = x * scale[c] + shift[c], the per-(b, channel) scale and shift folded from stats and affine."""
    L, sb, sk, sc = aligned(L, ALIGN), aligned(sb, ALIGN), aligned(sk, ALIGN), aligned(sc, ALIGN)
    b, cb, s = _program(S, CB)
    c = cb * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = c < C
    mu, r = _channel_stats(mean, rstd, b, c, cmask, G, Cg)
    scale, shift = scale_shift(w, bias, c, cmask, mu, r, HAS_AFFINE)
    t_end = tl.minimum(s * TPS + TPS, T)
    normalize_tiles(x, y, scale, shift, b, c, cmask, s * TPS, t_end, sb, sk, sc, sl, L, NLB, BLOCK_L, None)


@triton.jit
def partial_grad_sums(
    x,
    dy,
    mean,
    rstd,
    p_dy,
    p_dyxhat,
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
    S,
    CB,
    NLB,
    BLOCK_C: tl.constexpr,
    BLOCK_L: tl.constexpr,
    ALIGN: tl.constexpr,
):
    """Per-channel sums of dy and dy * xhat over this program's tiles."""
    L, sb, sk, sc = aligned(L, ALIGN), aligned(sb, ALIGN), aligned(sk, ALIGN), aligned(sc, ALIGN)
    b, cb, s = _program(S, CB)
    c = cb * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = c < C
    mu, r = _channel_stats(mean, rstd, b, c, cmask, G, Cg)
    t_end = tl.minimum(s * TPS + TPS, T)
    s1, s2 = grad_sum_tiles(x, dy, mu, b, c, cmask, s * TPS, t_end, sb, sk, sc, sl, L, NLB, BLOCK_C, BLOCK_L, None)
    out = partial_offset(b, s, S, C, c)
    tl.store(p_dy + out, s1, mask=cmask)
    tl.store(p_dyxhat + out, s2 * r, mask=cmask)  # xhat = (x - mu) * r


@triton.jit
def _group_grad_sums(p_dy, p_dyxhat, w, b, g, C, Cg, S, HAS_AFFINE: tl.constexpr, BLOCK: tl.constexpr):
    """Sums of w * dy and w * dy * xhat over one (b, group)'s S x Cg partials."""
    M = S * Cg
    acc1 = tl.zeros([BLOCK], tl.float32)
    acc2 = tl.zeros([BLOCK], tl.float32)
    for i0 in range(0, M, BLOCK):
        i = i0 + tl.arange(0, BLOCK)
        m = i < M
        c = g * Cg + i % Cg
        p = partial_offset(b, i // Cg, S, C, c)
        wc = 1.0
        if HAS_AFFINE:
            wc = tl.load(w + c, mask=m, other=0.0).to(tl.float32)
        acc1 += wc * tl.load(p_dy + p, mask=m, other=0.0)
        acc2 += wc * tl.load(p_dyxhat + p, mask=m, other=0.0)
    return tl.sum(acc1, 0), tl.sum(acc2, 0)


@triton.jit
def combine_grad_sums(
    p_dy,
    p_dyxhat,
    w,
    a_out,
    b_out,
    dw_out,
    db_out,
    C,
    G,
    Cg,
    S,
    B,
    inv_count,
    HAS_AFFINE: tl.constexpr,
    PARAM_GRADS: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """Per (b, group): the means of dy * w and of dy * w * xhat over the group's values.

    PARAM_GRADS (one channel per group, as in BatchNorm): one program per channel loops over the B
    batches and also writes dweight and dbias (the sums of dy * xhat and dy over all of them), so
    they cost no launch of their own; otherwise one program per (b, group).
    """
    if PARAM_GRADS:
        g = tl.program_id(0)
        wc = 1.0
        if HAS_AFFINE:
            wc = tl.load(w + g).to(tl.float32)
        total1 = 0.0
        total2 = 0.0
        for b in range(B):
            s1, s2 = _group_grad_sums(p_dy, p_dyxhat, w, b, g, C, 1, S, False, BLOCK)
            tl.store(a_out + stat_offset(b, G, g), wc * s1 * inv_count)
            tl.store(b_out + stat_offset(b, G, g), wc * s2 * inv_count)
            total1 += s1
            total2 += s2
        if HAS_AFFINE:
            tl.store(dw_out + g, total2.to(dw_out.dtype.element_ty))
            tl.store(db_out + g, total1.to(db_out.dtype.element_ty))
    else:
        pid = tl.program_id(0)
        s1, s2 = _group_grad_sums(p_dy, p_dyxhat, w, pid // G, pid % G, C, Cg, S, HAS_AFFINE, BLOCK)
        tl.store(a_out + pid, s1 * inv_count)
        tl.store(b_out + pid, s2 * inv_count)


@triton.jit
def input_grad(
    x,
    dy,
    dx,
    w,
    mean,
    rstd,
    mean_g,
    mean_gx,
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
    S,
    CB,
    NLB,
    HAS_AFFINE: tl.constexpr,
    CONSTANT_STATS: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_L: tl.constexpr,
    ALIGN: tl.constexpr,
):
    """dx = rstd * (dy * w - mean(dy * w) - xhat * mean(dy * w * xhat)), as two FMAs per value.

    mean_g and mean_gx are those group means; with CONSTANT_STATS (eval-mode BatchNorm: the
    statistics do not depend on x) both terms vanish and they are not read.
    So dx = dy * (rstd * w) - x * alpha + beta per channel.
    """
    L, sb, sk, sc = aligned(L, ALIGN), aligned(sb, ALIGN), aligned(sk, ALIGN), aligned(sc, ALIGN)
    b, cb, s = _program(S, CB)
    c = cb * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = c < C
    mu, r = _channel_stats(mean, rstd, b, c, cmask, G, Cg)
    a = tl.zeros([BLOCK_C], tl.float32)
    bb = tl.zeros([BLOCK_C], tl.float32)
    if not CONSTANT_STATS:
        gi = stat_offset(b, G, c // Cg)
        a = tl.load(mean_g + gi, mask=cmask, other=0.0)
        bb = tl.load(mean_gx + gi, mask=cmask, other=0.0)
    rw, alpha, beta = dx_coefficients(w, c, cmask, mu, r, a, bb, HAS_AFFINE)
    t_end = tl.minimum(s * TPS + TPS, T)
    input_grad_tiles(x, dy, dx, rw, alpha, beta, b, c, cmask, s * TPS, t_end, sb, sk, sc, sl, L, NLB, BLOCK_L, None)
