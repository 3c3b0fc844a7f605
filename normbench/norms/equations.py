"""The wider family's functions, written from the papers' equations on the shared core (`core.py`).

Each takes tensors and plain numbers only (no module), so `reference` calls them as they are and
`compiled` puts them through torch.compile. Input (N, C, *spatial); statistics in float32 at least.
"""

from __future__ import annotations

import torch
from torch import Tensor

from normbench.norms.core import (
    affine,
    compute_dtype,
    from_positions,
    grouped_view,
    mean_square,
    moments,
    norm_forward,
    normalize,
    per_channel,
    per_position,
    update_running_stats,
)


def layer_norm_2d(x: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float) -> Tensor:
    """ConvNeXt's LayerNorm2d: LayerNorm over C at every position (each position one sample)."""
    rows = norm_forward(per_position(x), weight, bias, samples=1, groups=1, eps=eps)
    return from_positions(rows, x.shape)


def rms_norm(x: Tensor, weight: Tensor | None, eps: float) -> Tensor:
    """Zhang & Sennrich 2019, Eq. 4: a_i / RMS(a) * g_i, RMS(a) = sqrt(mean_C(a^2) + eps), per position."""
    rows = per_position(x)
    rows = normalize(rows, None, mean_square(rows, 1, 1), weight, None, eps, 1, 1)
    return from_positions(rows, x.shape)


def filter_response_norm(
    x: Tensor,
    weight: Tensor | None,
    bias: Tensor | None,
    tau: Tensor | None,
    eps: float,
    eps_learned: Tensor | None = None,
) -> Tensor:
    """Singh & Krishnan 2020: nu^2 = mean_spatial(x^2) (Eq. 1), x_hat = x / sqrt(nu^2 + eps) (Eq. 2),
    y = gamma x_hat + beta, z = max(y, tau) (Eq. 3, the TLU; tau=None leaves it out)."""
    c = x.shape[1]
    if eps_learned is not None:
        eps = eps + eps_learned.abs()  # Sec. 3.1: a learned eps, kept above the fixed one
    y = normalize(x, None, mean_square(x, 1, c), weight, bias, eps, 1, c)
    return y if tau is None else torch.maximum(y, per_channel(tau, x.dim()).to(y.dtype))


def evonorm_s0(
    x: Tensor, weight: Tensor | None, bias: Tensor | None, v: Tensor | None, groups: int, eps: float
) -> Tensor:
    """Liu et al. 2020, Table 1: x * sigmoid(v x) / sqrt(s^2_{w,h,c/g}(x) + eps) * gamma + beta.
    v=None: x / group std (no nonlinearity)."""
    _, var = moments(x, 1, groups)
    xc = x.to(compute_dtype(x.dtype))
    numerator = xc if v is None else xc * torch.sigmoid(per_channel(v, x.dim()) * xc)
    return normalize(numerator, None, var, weight, bias, eps, 1, groups).to(x.dtype)


def evonorm_b0(
    x: Tensor,
    weight: Tensor | None,
    bias: Tensor | None,
    v: Tensor | None,
    eps: float,
    *,
    samples: int | None = None,
    running_mean: Tensor | None = None,
    running_var: Tensor | None = None,
    use_batch_stats: bool = True,
    factor: float | Tensor = 0.0,
) -> Tensor:
    """Liu et al. 2020, Table 1: x / max(sqrt(s^2_{b,w,h}(x) + eps), v x + sqrt(s^2_{w,h}(x) + eps)) * gamma + beta.

    The batch variance is taken over each `samples` consecutive samples (a virtual batch) per
    channel, or is the running variance when `use_batch_stats` is false (eval mode); the running
    statistics are updated as BatchNorm's. v=None: x / sqrt(batch var + eps) (no nonlinearity).
    samples=None: the whole batch.
    """
    n, c = x.shape[:2]
    samples = n if samples is None else samples
    if use_batch_stats:
        mean, batch_var = moments(x, samples, c)  # (B, 1, C, 1, 1)
        if running_var is not None:
            update_running_stats(running_mean, running_var, mean, batch_var, samples * x[0, 0].numel(), factor)
    else:
        samples = n
        batch_var = running_var.to(compute_dtype(x.dtype)).view(1, 1, c, 1, 1)
    xv = grouped_view(x, samples, c).to(compute_dtype(x.dtype))  # (B, K, C, 1, L)
    denominator = torch.sqrt(batch_var + eps)
    if v is not None:
        _, instance_var = moments(x, 1, c)  # (N, 1, C, 1, 1)
        instance_std = torch.sqrt(instance_var.view(n // samples, samples, c, 1, 1) + eps)
        denominator = torch.maximum(denominator, v.view(1, 1, c, 1, 1) * xv + instance_std)
    return affine((xv / denominator).reshape(x.shape), weight, bias).to(x.dtype)


def batch_renorm(
    x: Tensor,
    weight: Tensor | None,
    bias: Tensor | None,
    eps: float,
    *,
    samples: int | None = None,
    running_mean: Tensor,
    running_var: Tensor,
    training: bool,
    factor: float | Tensor = 0.0,
    rmax: float | Tensor = 1.0,
    dmax: float | Tensor = 0.0,
    correct_toward: tuple[Tensor, Tensor] | None = None,
) -> Tensor:
    """Ioffe 2017, Algorithm 1. Training: x_hat = (x - mu_B) / sigma_B * r + d with
    r = stop_gradient(clip(sigma_B / sigma, 1/rmax, rmax)), d = stop_gradient(clip((mu_B - mu) / sigma, -dmax, dmax)),
    then the running statistics move toward the batch's. Eval: (x - mu) / sigma, BatchNorm's.
    samples=None: the whole batch shares the statistics. `correct_toward`: a copy of (running mean,
    running var) for r and d to read, where the caller needs them apart from the buffers this call
    updates (compiled does: see there)."""
    c = x.shape[1]
    samples = x.shape[0] if samples is None else samples
    if not training:
        return norm_forward(
            x,
            weight,
            bias,
            samples=x.shape[0],
            groups=c,
            eps=eps,
            running_mean=running_mean,
            running_var=running_var,
            use_batch_stats=False,
        )
    dtype = compute_dtype(x.dtype)
    mean, var = moments(x, samples, c)  # (B, 1, C, 1, 1)
    std = torch.sqrt(var + eps)
    # r and d are constants in backward (Algorithm 1's stop_gradient). detach, not no_grad: torch.compile
    # (2.13) kept the gradient through a no_grad block here.
    ref_mean, ref_var = (running_mean, running_var) if correct_toward is None else correct_toward
    run_mean = ref_mean.to(dtype).view(1, 1, c, 1, 1)
    run_std = torch.sqrt(ref_var.to(dtype).view(1, 1, c, 1, 1) + eps)
    r = torch.clamp(std.detach() / run_std, 1 / rmax, rmax)
    d = torch.clamp((mean.detach() - run_mean) / run_std, -dmax, dmax)
    # Algorithm 1 computes r and d with the running statistics from before this batch's update.
    update_running_stats(running_mean, running_var, mean, var, samples * x[0, 0].numel(), factor)
    xv = grouped_view(x, samples, c).to(dtype)
    return affine(((xv - mean) / std * r + d).reshape(x.shape), weight, bias).to(x.dtype)
