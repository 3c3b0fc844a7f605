"""The one piece of math behind bn, ln, in and gn: the executable specification.

The four norms differ only in which values share a mean and a variance. For an input (N, C, *spatial)
with L = prod(spatial), each views x as (B, K, G, C // G, L) and takes the moments over
(K, C // G, L), one pair per (B, G) slice:

    norm  B                    K (samples per statistic)    G (channel groups)
    bn    N / virtual_batch    virtual_batch (default N)    C
    ln    N                    1                            1
    in    N                    1                            C
    gn    N                    1                            groups

Then every value is normalized by its slice's moments and scaled and shifted per channel. Written
with plain tensor ops, two-pass variance, statistics in float32 at least (float64 stays float64), so it
reads as the formula does; speed is the other implementations' job.

The wider family (normbench.norms.family) reuses these pieces: RMSNorm and FRN divide by the root mean
square (`mean_square`, no centering), the channel norms take their statistics per position
(`per_position`: each position becomes a sample), EvoNorm and Batch Renormalization combine moments.
"""

from __future__ import annotations

import torch
from torch import Tensor

STAT_DIMS = (1, 3, 4)  # K, C // G, L in the grouped view


def grouped_view(x: Tensor, samples: int, groups: int) -> Tensor:
    """View x (N, C, *spatial) as (N // samples, samples, groups, C // groups, L)."""
    n, c = x.shape[:2]
    return x.reshape(n // samples, samples, groups, c // groups, -1)


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """Statistics are taken in float32 for half-precision inputs, as PyTorch's kernels do."""
    return torch.promote_types(dtype, torch.float32)


def moments(x: Tensor, samples: int, groups: int) -> tuple[Tensor, Tensor]:
    """Mean and biased variance of each (B, G) slice, shaped (B, 1, G, 1, 1)."""
    xv = grouped_view(x, samples, groups).to(compute_dtype(x.dtype))
    mean = xv.mean(dim=STAT_DIMS, keepdim=True)
    var = (xv - mean).square().mean(dim=STAT_DIMS, keepdim=True)
    return mean, var


def mean_square(x: Tensor, samples: int, groups: int) -> Tensor:
    """E[x^2] of each (B, G) slice, shaped (B, 1, G, 1, 1): the uncentered second moment (RMSNorm's
    RMS^2, FRN's nu^2)."""
    xv = grouped_view(x, samples, groups).to(compute_dtype(x.dtype))
    return xv.square().mean(dim=STAT_DIMS, keepdim=True)


def per_channel(t: Tensor, dim: int) -> Tensor:
    """A (C,) parameter shaped to broadcast over a `dim`-dimensional (N, C, *spatial) tensor."""
    return t.view((1, -1) + (1,) * (dim - 2))


def affine(y: Tensor, weight: Tensor | None, bias: Tensor | None) -> Tensor:
    """weight * y + bias per channel; either may be None (RMSNorm has no bias)."""
    if weight is not None:
        y = y * per_channel(weight, y.dim())
    if bias is not None:
        y = y + per_channel(bias, y.dim())
    return y


def per_position(x: Tensor) -> Tensor:
    """(N, C, *spatial) -> (N * L, C): each position a sample, so that statistics over C with
    samples=1, groups=1 are taken per position (ConvNeXt's channel LayerNorm, timm's RmsNorm2d)."""
    return x.movedim(1, -1).reshape(-1, x.shape[1])


def from_positions(rows: Tensor, shape: torch.Size) -> Tensor:
    """The inverse of `per_position` for an input of `shape`."""
    return rows.reshape(shape[0], *shape[2:], shape[1]).movedim(-1, 1)


def normalize(
    x: Tensor,
    mean: Tensor | None,
    var: Tensor,
    weight: Tensor | None,
    bias: Tensor | None,
    eps: float,
    samples: int,
    groups: int,
) -> Tensor:
    """(x - mean) / sqrt(var + eps) per slice, then weight * . + bias per channel, in x's dtype.

    mean=None divides without centering (var is then E[x^2]); eps may be a tensor (FRN's learned eps).
    """
    xv = grouped_view(x, samples, groups).to(compute_dtype(x.dtype))
    centered = xv if mean is None else xv - mean
    y = (centered * torch.rsqrt(var + eps)).reshape(x.shape)
    return affine(y, weight, bias).to(x.dtype)


@torch.no_grad()
def update_running_stats(
    running_mean: Tensor, running_var: Tensor, mean: Tensor, var: Tensor, count: int, factor: float
) -> None:
    """PyTorch's rule: running = (1 - factor) * running + factor * batch, with the unbiased variance.

    `factor` is `momentum`, or 1 / num_batches_tracked for a cumulative average (momentum=None).
    With virtual batches (B > 1) the per-batch statistics are averaged over B, as torch does for
    InstanceNorm's running statistics.
    """
    batch_mean = mean.mean(dim=0).flatten()
    batch_var = (var * (count / (count - 1))).mean(dim=0).flatten()
    running_mean.mul_(1 - factor).add_(factor * batch_mean.to(running_mean.dtype))
    running_var.mul_(1 - factor).add_(factor * batch_var.to(running_var.dtype))


def norm_forward(
    x: Tensor,
    weight: Tensor | None,
    bias: Tensor | None,
    *,
    samples: int | None,
    groups: int,
    eps: float,
    running_mean: Tensor | None = None,
    running_var: Tensor | None = None,
    use_batch_stats: bool = True,
    factor: float = 0.0,
) -> Tensor:
    """Normalize x with its own moments (updating the running ones when given), or with the running ones.

    `use_batch_stats=False` is BatchNorm's eval mode: running_mean/var, one per channel, stand in
    for the batch's moments. Running statistics are updated only when `use_batch_stats` is true and
    they are given. samples=None: the whole batch (a dynamic size under torch.compile).
    """
    samples = x.shape[0] if samples is None else samples
    if use_batch_stats:
        mean, var = moments(x, samples, groups)
        if running_mean is not None:
            count = x[0, 0].numel() * samples  # values behind each statistic: K * L
            update_running_stats(running_mean, running_var, mean, var, count, factor)
    else:
        stat_shape = (1, 1, groups, 1, 1)
        dtype = compute_dtype(x.dtype)
        mean = running_mean.to(dtype).view(stat_shape)
        var = running_var.to(dtype).view(stat_shape)
    return normalize(x, mean, var, weight, bias, eps, samples, groups)
