"""An independent float64 reference: each norm written slice by slice, the way its paper defines it.

It shares no code with normbench's core (no grouped view): a loop over the slices that share a
mean and a variance, in float64, differentiable with autograd.
"""

from __future__ import annotations

import torch


def _slices(name, n, c, groups=32, virtual_batch=None):
    """Index tuples into x viewed as (N, C, L): one per set of values sharing a mean and a variance."""
    if name == "bn":
        k = virtual_batch or n
        return [(slice(s, s + k), ch) for s in range(0, n, k) for ch in range(c)]
    if name == "ln":
        return [(i,) for i in range(n)]
    if name == "in":
        return [(i, ch) for i in range(n) for ch in range(c)]
    if name == "gn":
        per = c // groups
        return [(i, slice(g * per, (g + 1) * per)) for i in range(n) for g in range(groups)]
    raise ValueError(name)


def norm64(x, name, weight=None, bias=None, eps=1e-5, groups=32, virtual_batch=None):
    """y for norm `name` on x (N, C, *spatial), computed in float64 slice by slice."""
    x = x.double()
    n, c = x.shape[:2]
    flat = x.reshape(n, c, -1)
    out = torch.empty_like(flat)
    for index in _slices(name, n, c, groups, virtual_batch):
        s = flat[index]
        mean = s.mean()
        var = ((s - mean) ** 2).mean()  # biased, as every norm normalizes with
        out[index] = (s - mean) / torch.sqrt(var + eps)
    if weight is not None:
        out = out * weight.double().view(1, c, 1) + bias.double().view(1, c, 1)
    return out.reshape(x.shape)


def min_std64(x, name, eps=1e-5, groups=32, virtual_batch=None):
    """The smallest sqrt(var + eps) over the slices: rounding errors in dx grow as its inverse."""
    flat = x.detach().double().reshape(*x.shape[:2], -1)
    n, c = x.shape[:2]
    return min(float(torch.sqrt(flat[i].var(unbiased=False) + eps)) for i in _slices(name, n, c, groups, virtual_batch))


def batch_moments64(x, virtual_batch=None):
    """Per-channel batch mean and unbiased variance, averaged over virtual batches (float64)."""
    x = x.double()
    n, c = x.shape[:2]
    k = virtual_batch or n
    chunks = x.reshape(n // k, k, c, -1).transpose(1, 2).reshape(n // k, c, -1)
    return chunks.mean(-1).mean(0), chunks.var(-1, unbiased=True).mean(0)
