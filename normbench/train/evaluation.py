"""Test accuracy of a trained model, and BatchNorm's three ways to evaluate.

A BatchNorm model can be evaluated with (Wu & Johnson 2021, "Rethinking 'Batch' in BatchNorm"):

- its running statistics, the EMA that training kept (`model.eval()`; `accuracy`);
- PreciseBN population statistics (Sec. 3.1), recomputed after training by `precise_bn`;
- batch statistics at the normalization batch K, as in training (Sec. 4; `accuracy_with_batch_stats`).

The same three apply to every BatchNorm subclass: Batch Renormalization and EvoNorm-B0, whose eval
mode also reads running statistics.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable

import torch
from torch import Tensor, nn

from normbench.norms import BatchNorm, BatchRenorm


@torch.no_grad()
def accuracy(model: nn.Module, x: Tensor, y: Tensor, batch: int) -> float:
    """Top-1 accuracy of `model` as it is (train or eval mode) over chunks of `batch` samples."""
    correct = torch.zeros((), dtype=torch.long, device=x.device)
    for start in range(0, x.shape[0], batch):
        correct += (model(x[start : start + batch]).argmax(1) == y[start : start + batch]).sum()
    return correct.item() / x.shape[0]


def batch_norms(model: nn.Module) -> list[BatchNorm]:
    return [m for m in model.modules() if isinstance(m, BatchNorm)]


def chunk_of(norm_batch: int) -> int:
    """Samples per forward call when evaluating in groups of K: several K at once (the virtual batch
    keeps them apart), about 1024, so K=2 does not cost 500 calls."""
    return norm_batch * max(1, 1024 // norm_batch)


@torch.no_grad()
def accuracy_with_batch_stats(model: nn.Module, x: Tensor, y: Tensor, norm_batch: int, seed: int) -> float:
    """Test accuracy with BatchNorm normalizing each group of K test samples by its own statistics,
    as in training, instead of by the running averages; the running statistics are left untouched.

    The test set is shuffled first (seeded): in class order, a group of K would hold one class only.
    A last group smaller than K is normalized on its own.
    """
    bns = batch_norms(model)
    saved = [{k_: b.clone() for k_, b in m.named_buffers()} for m in bns]
    # Batch statistics alone: Batch Renormalization's r and d would pull them toward the running ones.
    renorms = [(m, m.rmax, m.dmax) for m in bns if isinstance(m, BatchRenorm)]
    for m, _, _ in renorms:
        m.rmax, m.dmax = 1.0, 0.0
    order = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(seed)).to(x.device)
    x, y = x[order], y[order]
    full = (x.shape[0] // norm_batch) * norm_batch
    try:
        for m in bns:
            m.train()
        correct = accuracy(model, x[:full], y[:full], chunk_of(norm_batch)) * full if full else 0.0
        if full < x.shape[0]:
            for m in bns:
                m.virtual_batch = x.shape[0] - full
            correct += accuracy(model, x[full:], y[full:], x.shape[0] - full) * (x.shape[0] - full)
    finally:
        for m, buffers in zip(bns, saved):
            m.eval()
            m.virtual_batch = norm_batch
            for name, value in buffers.items():
                getattr(m, name).copy_(value)
        for m, rmax, dmax in renorms:
            m.rmax, m.dmax = rmax, dmax
    return correct / x.shape[0]


@torch.no_grad()
def precise_bn(model: nn.Module, batches: Iterable[Tensor], norm_batch: int) -> nn.Module:
    """A copy of `model` whose BatchNorms hold population statistics (PreciseBN; Wu & Johnson 2021,
    Sec. 3.1; fvcore's `update_bn_stats`), over the samples in `batches` (each a multiple of K).

    As fvcore does, the copy runs in train mode, so every BatchNorm normalizes each group of K by its
    own statistics (the features the model was trained on), while a hook records, per layer and per
    normalization batch B, the mean and variance. They are then averaged with equal weights, not by
    an EMA: mean = E[mu_B] and var = E[sigma_B^2 + mu_B^2] - mean^2, which for batches of equal size is
    exactly the mean and variance over every value the layer saw. The variance is stored unbiased, as
    PyTorch stores its running variance. The model passed in is left as it was.
    """
    model = copy.deepcopy(model)
    bns = batch_norms(model)
    sums: dict[BatchNorm, list] = {m: [0, 0.0, 0.0, 0] for m in bns}  # batches, sum mu, sum E[x^2], values

    def record(module: BatchNorm, args: tuple) -> None:
        x = args[0].detach().double()
        n, c = x.shape[:2]
        groups = x.reshape(n // norm_batch, norm_batch, c, -1).transpose(1, 2).reshape(n // norm_batch, c, -1)
        var, mean = torch.var_mean(groups, dim=2, unbiased=False)  # per normalization batch and channel
        s = sums[module]
        s[0] += n // norm_batch
        s[1] = s[1] + mean.sum(0)
        s[2] = s[2] + (var + mean**2).sum(0)
        s[3] += groups.numel() // c

    hooks = [m.register_forward_pre_hook(record) for m in bns]
    try:
        model.train()
        for m in bns:
            m.virtual_batch = norm_batch
        for x in batches:
            model(x)
    finally:
        for h in hooks:
            h.remove()
    model.eval()
    for m in bns:
        batches_seen, sum_mean, sum_sq, values = sums[m]
        if not batches_seen:
            raise ValueError("precise_bn saw no batch: give it at least K samples")
        mean = sum_mean / batches_seen
        var = sum_sq / batches_seen - mean**2
        m.running_mean.copy_(mean)
        m.running_var.copy_(var * values / max(1, values - 1))
    return model
