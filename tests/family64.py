"""Independent float64 formulas for the wider family, written from the papers with plain reductions
(no grouped view, nothing shared with normbench's core); differentiable with autograd."""

from __future__ import annotations

import torch


def _c(t, dim):
    """A (C,) tensor shaped to broadcast over a `dim`-dimensional (N, C, *spatial) tensor."""
    return t.double().view((1, -1) + (1,) * (dim - 2))


def _spatial(x):
    return tuple(range(2, x.dim()))


def rms64(x, weight, eps):
    x = x.double()
    return x / torch.sqrt((x**2).mean(dim=1, keepdim=True) + eps) * _c(weight, x.dim())


def ln2d64(x, weight, bias, eps):
    x = x.double()
    mean = x.mean(dim=1, keepdim=True)
    var = ((x - mean) ** 2).mean(dim=1, keepdim=True)
    return (x - mean) / torch.sqrt(var + eps) * _c(weight, x.dim()) + _c(bias, x.dim())


def frn64(x, weight, bias, tau, eps):
    x = x.double()
    nu2 = (x**2).mean(dim=_spatial(x), keepdim=True)
    y = x / torch.sqrt(nu2 + eps) * _c(weight, x.dim()) + _c(bias, x.dim())
    return y if tau is None else torch.max(y, _c(tau, x.dim()))


def evonorm_s0_64(x, weight, bias, v, groups, eps):
    x = x.double()
    per = x.shape[1] // groups
    out = []
    for g in range(groups):
        xg = x[:, g * per : (g + 1) * per]
        dims = (1, *_spatial(x))
        var = ((xg - xg.mean(dim=dims, keepdim=True)) ** 2).mean(dim=dims, keepdim=True)
        out.append(xg / torch.sqrt(var + eps))
    y = torch.cat(out, dim=1)
    if v is not None:
        y = y * torch.sigmoid(_c(v, x.dim()) * x)
    return y * _c(weight, x.dim()) + _c(bias, x.dim())


def _chunks(x, k):
    return [x[s : s + k] for s in range(0, x.shape[0], k)]


def evonorm_b0_64(x, weight, bias, v, eps, k=None, running_var=None):
    """Training (batch variance over each k samples) or, with running_var, eval."""
    x = x.double()
    out = []
    for chunk in _chunks(x, k or x.shape[0]):
        dims = (0, *_spatial(x))
        if running_var is None:
            var = ((chunk - chunk.mean(dim=dims, keepdim=True)) ** 2).mean(dim=dims, keepdim=True)
        else:
            var = _c(running_var, x.dim())
        denominator = torch.sqrt(var + eps)
        if v is not None:
            sd = _spatial(x)
            inst = ((chunk - chunk.mean(dim=sd, keepdim=True)) ** 2).mean(dim=sd, keepdim=True)
            denominator = torch.max(denominator, _c(v, x.dim()) * chunk + torch.sqrt(inst + eps))
        out.append(chunk / denominator)
    return torch.cat(out) * _c(weight, x.dim()) + _c(bias, x.dim())


def brn64(x, weight, bias, eps, running_mean, running_var, rmax, dmax, k=None):
    """Ioffe 2017, Algorithm 1 (training), per virtual batch of k samples."""
    x = x.double()
    mu, sigma = _c(running_mean, x.dim()), torch.sqrt(_c(running_var, x.dim()) + eps)
    out = []
    for chunk in _chunks(x, k or x.shape[0]):
        dims = (0, *_spatial(x))
        mean = chunk.mean(dim=dims, keepdim=True)
        std = torch.sqrt(((chunk - mean) ** 2).mean(dim=dims, keepdim=True) + eps)
        r = (std / sigma).clamp(1 / rmax, rmax).detach()
        d = ((mean - mu) / sigma).clamp(-dmax, dmax).detach()
        out.append((chunk - mean) / std * r + d)
    return torch.cat(out) * _c(weight, x.dim()) + _c(bias, x.dim())
