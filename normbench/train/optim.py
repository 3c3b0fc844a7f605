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
from torch import nn

from normbench.specs import Schedule


def param_groups(model: nn.Module, weight_decay: float, decay: str) -> list[dict]:
    """One group with weight decay and, for decay=weights (the other choice is all), one without for
    parameters of one dimension."""
    params = [p for p in model.parameters() if p.requires_grad]
    if decay == "all":
        return [{"params": params, "weight_decay": weight_decay}]
    return [
        {"params": [p for p in params if p.dim() > 1], "weight_decay": weight_decay},
        {"params": [p for p in params if p.dim() <= 1], "weight_decay": 0.0},
    ]


def sgd(model: nn.Module, schedule: Schedule, lr: float) -> torch.optim.SGD:
    """SGD from the schedule's momentum, nesterov, weight_decay and weight_decay_on."""
    groups = param_groups(model, schedule.weight_decay, schedule.weight_decay_on)
    # foreach: one multi-tensor update per group instead of a Python loop over the parameters, the same
    # values bit for bit (on a CPU torch would pick the loop; fused=True rounds differently, so not that).
    return torch.optim.SGD(groups, lr=lr, momentum=schedule.momentum, nesterov=schedule.nesterov, foreach=True)
