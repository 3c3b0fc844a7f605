"""The accuracy job's optimizer: SGD with momentum, optionally Nesterov's, and weight decay on every
parameter or on the weights of convolutions and linear layers only (docs/accuracy.md, "Schedule").

Decaying only weights is "no bias decay" (He et al. 2019, "Bag of Tricks for Image Classification with
Convolutional Neural Networks", Sec. 3.1; timm's `param_groups_weight_decay` does the same): norm
parameters and biases scale and shift activations, and pulling them toward 0 regularizes nothing the
normalization does not undo. Which parameters a norm has differs (EvoNorm's `v`, FRN's `tau`), so the
rule is by shape, not by name: every parameter of one dimension is exempt.
"""

from __future__ import annotations

import torch
from omegaconf import DictConfig
from torch import nn

from normbench.errors import UsageError

DECAY = ("all", "weights")


def param_groups(model: nn.Module, weight_decay: float, decay: str) -> list[dict]:
    """One group with weight decay and, for decay=weights, one without for parameters of one dimension."""
    if decay not in DECAY:
        raise UsageError(
            f"accuracy.weight_decay_on={decay!r} is not one of {', '.join(DECAY)}: all parameters, or the "
            "weights of convolutions and linear layers only (not norm parameters or biases)"
        )
    params = [p for p in model.parameters() if p.requires_grad]
    if decay == "all":
        return [{"params": params, "weight_decay": weight_decay}]
    return [
        {"params": [p for p in params if p.dim() > 1], "weight_decay": weight_decay},
        {"params": [p for p in params if p.dim() <= 1], "weight_decay": 0.0},
    ]


def sgd(model: nn.Module, acc: DictConfig, lr: float) -> torch.optim.SGD:
    """SGD from `accuracy.momentum`, `nesterov`, `weight_decay` and `weight_decay_on`."""
    momentum, nesterov = float(acc.momentum), acc.get("nesterov", False)
    if not isinstance(nesterov, bool):
        raise UsageError(f"accuracy.nesterov must be true or false, got {nesterov!r}")
    if nesterov and momentum <= 0:
        raise UsageError(f"accuracy.nesterov=true needs accuracy.momentum > 0, got {momentum}")
    groups = param_groups(model, float(acc.weight_decay), acc.get("weight_decay_on", "all"))
    # foreach: one multi-tensor update per group instead of a Python loop over the parameters, the same
    # values bit for bit (on a CPU torch would pick the loop; fused=True rounds differently, so not that).
    return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=nesterov, foreach=True)


def label_smoothing(acc: DictConfig) -> float:
    """`accuracy.label_smoothing` (Szegedy et al. 2016, Sec. 7), checked: 0 <= value < 1."""
    value = acc.get("label_smoothing", 0.0)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
        raise UsageError(f"accuracy.label_smoothing must be a number in [0, 1), e.g. 0.1, got {value!r}")
    return float(value)
