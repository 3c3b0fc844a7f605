"""The wider family's modules: RMSNorm, channel LayerNorm, Batch Renormalization, FRN and EvoNorm.

Like the four classics, each class declares its statistics, its equation (`normbench.norms.equations`:
reference, compiled) and its `native` where torch has one, and holds the options, parameters, buffers
and checks. Parameters are named as in timm where
timm has the layer (`v`, `tau`), so the two are easy to compare.
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
from torch import Tensor, nn

from normbench.errors import UsageError
from normbench.norms import equations
from normbench.norms.impl import native as torch_ops
from normbench.norms.layers import BatchNorm, GroupNorm, Norm, Statistics


def _flag(name: str, key: str, value) -> bool:
    if not isinstance(value, bool):  # "no" would be truthy: a string must not pick the behaviour
        raise UsageError(f"{name}: {key} must be true or false, got {value!r}")
    return value


def _number(name: str, key: str, value, low: float, hint: str, integer: bool = False) -> float:
    kinds = int if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds) or not value >= low:
        raise UsageError(f"{name}: {key} must be {'an int' if integer else 'a number'} >= {low}, got {value!r}: {hint}")
    return value


class PerPositionNorm(Norm):
    """Base of the norms with one statistic per sample and position, over the C channels."""

    statistics = Statistics(spatial=False)
    default_eps = 1e-6  # ConvNeXt's and timm's LayerNorm2d / RmsNorm2d
    moments_saved: ClassVar[int] = 2
    too_few_values_hint = "give it more than one channel"

    def saved_stats(self, x: Tensor) -> int:
        return self.moments_saved * x.shape[0] * math.prod(x.shape[2:])


class LayerNorm2d(PerPositionNorm):
    """ConvNeXt's channel LayerNorm (Liu et al. 2022, Sec. 2.6; timm's LayerNorm2d): the transformer
    LayerNorm over C at every position, per-channel affine. On (N, C) input it equals `ln`."""

    name = "ln2d"
    title = "LayerNorm2d"
    equation = staticmethod(equations.layer_norm_2d)
    native = staticmethod(torch_ops.layer_norm_2d)

    def equation_args(self, x: Tensor) -> dict:
        return {"weight": self.weight, "bias": self.bias, "eps": self.eps}


class RMSNorm(PerPositionNorm):
    """RMSNorm (Zhang & Sennrich 2019, Eq. 4): x / sqrt(mean_C(x^2) + eps) * g over C at every
    position (timm's RmsNorm2d; the transformer RMSNorm on (N, C) input). A gain, no bias, no centering."""

    name = "rms"
    title = "RMSNorm"
    equation = staticmethod(equations.rms_norm)
    native = staticmethod(torch_ops.rms_norm)
    has_bias = False
    moments_saved = 1

    def equation_args(self, x: Tensor) -> dict:
        return {"weight": self.weight, "eps": self.eps}


class FilterResponseNorm(Norm):
    """Filter Response Normalization with TLU (Singh & Krishnan 2020, Eq. 1-3):
    nu^2 = mean over spatial of x^2 per sample and channel, y = gamma * x / sqrt(nu^2 + eps) + beta,
    z = max(y, tau). `learned_eps=True` adds a learned scalar: eps + |eps_learned| (Sec. 3.1, for
    small spatial sizes). `apply_act=False` drops the TLU (models do so where no ReLU followed)."""

    name = "frn"
    title = "FRN + TLU"
    statistics = Statistics(channels="each")
    equation = staticmethod(equations.filter_response_norm)
    native = staticmethod(torch_ops.filter_response_norm)
    native_supports = staticmethod(torch_ops.fixed_eps_only)
    needs_spatial = True  # over one position nu^2 = x^2 and the output is sign(x)
    includes_activation = True
    default_eps = 1e-6  # the paper's
    too_few_values_hint = "FRN needs spatial positions: use ln2d or rms for (N, C) input"

    def __init__(self, num_features: int, *, learned_eps: bool = False, apply_act: bool = True, **options) -> None:
        super().__init__(num_features, **options)
        self.learned_eps = _flag("frn", "learned_eps", learned_eps)
        self.apply_act = _flag("frn", "apply_act", apply_act)
        like = {"device": options.get("device"), "dtype": options.get("dtype")}
        self.tau = nn.Parameter(torch.zeros(num_features, **like))
        # Started off 0: d|e|/de is 0 there, so a learned eps starting at 0 would never move.
        self.eps_learned = nn.Parameter(torch.full((), 1e-4, **like)) if self.learned_eps else None

    def equation_args(self, x: Tensor) -> dict:
        return {
            "weight": self.weight,
            "bias": self.bias,
            "tau": self.tau if self.apply_act else None,
            "eps": self.eps,
            "eps_learned": self.eps_learned,
        }

    def saved_stats(self, x: Tensor) -> int:
        return x.shape[0] * x.shape[1]  # 1 / sqrt(nu^2 + eps) only

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, learned_eps={self.learned_eps}, apply_act={self.apply_act}"


class EvoNormS0(GroupNorm):
    """EvoNorm-S0 (Liu et al. 2020, Table 1): x * sigmoid(v * x) / sqrt(s^2_{w,h,c/g}(x) + eps) * gamma + beta,
    the swish numerator over the group standard deviation (groups as GroupNorm's, default 32).
    `apply_act=False` gives x / group std (the paper's variant where no ReLU followed)."""

    name = "evonorm_s0"
    title = "EvoNorm-S0"
    equation = staticmethod(equations.evonorm_s0)
    includes_activation = True

    def __init__(self, num_features: int, *, apply_act: bool = True, **options) -> None:
        super().__init__(num_features, **options)
        self.apply_act = _flag(self.name, "apply_act", apply_act)
        self.v = nn.Parameter(torch.ones(num_features, device=options.get("device"), dtype=options.get("dtype")))

    def equation_args(self, x: Tensor) -> dict:
        v = self.v if self.apply_act else None
        return {"weight": self.weight, "bias": self.bias, "v": v, "groups": self.groups(), "eps": self.eps}

    def saved_stats(self, x: Tensor) -> int:
        return x.shape[0] * self.num_groups


class EvoNormB0(BatchNorm):
    """EvoNorm-B0 (Liu et al. 2020, Table 1): x / max(sqrt(s^2_{b,w,h}(x) + eps), v * x + sqrt(s^2_{w,h}(x) + eps))
    * gamma + beta: the batch variance per channel (running in eval mode, as BatchNorm's) against the
    instance variance per sample and channel. Options as `bn`'s (momentum, virtual_batch); the running
    mean is kept as BatchNorm's too (PreciseBN and tooling treat both alike) though the formula uses
    only the variance."""

    name = "evonorm_b0"
    title = "EvoNorm-B0"
    equation = staticmethod(equations.evonorm_b0)
    needs_spatial = True  # the instance variance
    includes_activation = True
    too_few_values_hint = "use a larger batch (or virtual_batch) or call .eval()"

    def __init__(self, num_features: int, *, apply_act: bool = True, **options) -> None:
        super().__init__(num_features, **options)
        self.apply_act = _flag(self.name, "apply_act", apply_act)
        self.v = nn.Parameter(torch.ones(num_features, device=options.get("device"), dtype=options.get("dtype")))

    def equation_args(self, x: Tensor) -> dict:
        args = super().equation_args(x)
        del args["groups"]
        return {**args, "v": self.v if self.apply_act else None}

    def saved_stats(self, x: Tensor) -> int:
        n, c = x.shape[:2]
        return (n // self.samples(n)) * c + n * c  # a batch and an instance variance per channel


class BatchRenorm(BatchNorm):
    """Batch Renormalization (Ioffe 2017, Algorithm 1): in training,
    x_hat = (x - mu_B) / sigma_B * r + d with r = clip(sigma_B / sigma, 1/rmax, rmax) and
    d = clip((mu_B - mu) / sigma, -dmax, dmax), both constants in backward (mu, sigma: the running
    statistics, sigma = sqrt(running_var + eps)); eval mode is BatchNorm's. rmax and dmax start at 1
    and 0 (plain BatchNorm) for `warmup_steps` steps and grow linearly to their values at
    `rmax_steps` and `dmax_steps` (Sec. 4: 5k, 40k and 25k steps to rmax=3, dmax=5). The running
    statistics follow torch.nn's BatchNorm (momentum, unbiased variance), where the paper's update
    moves sigma itself."""

    name = "brn"
    title = "Batch Renormalization"
    equation = staticmethod(equations.batch_renorm)
    native = staticmethod(torch_ops.batch_renorm)

    def __init__(
        self,
        num_features: int,
        *,
        rmax: float = 3.0,
        dmax: float = 5.0,
        warmup_steps: int = 5000,
        rmax_steps: int = 40000,
        dmax_steps: int = 25000,
        **options,
    ) -> None:
        self.rmax = float(_number("brn", "rmax", rmax, 1, "e.g. rmax=3 (1 turns the r correction off)"))
        self.dmax = float(_number("brn", "dmax", dmax, 0, "e.g. dmax=5 (0 turns the d correction off)"))
        hint = "steps counted by num_batches_tracked, e.g. warmup_steps=5000"
        self.warmup_steps = _number("brn", "warmup_steps", warmup_steps, 0, hint, integer=True)
        self.rmax_steps = _number("brn", "rmax_steps", rmax_steps, 0, hint, integer=True)
        self.dmax_steps = _number("brn", "dmax_steps", dmax_steps, 0, hint, integer=True)
        if options.get("track_running_stats") is False:
            raise UsageError(
                "brn: r and d compare each batch with the running statistics: track_running_stats must be true"
            )
        super().__init__(num_features, **options)

    def clip_limits(self) -> tuple[float, float]:
        """(rmax, dmax) at the current step (num_batches_tracked): the warm-up schedule."""
        # One host read per training step; it keeps the schedule in the state_dict's step count.
        step = int(self.num_batches_tracked)

        def ramp(end: int) -> float:
            if step <= self.warmup_steps:
                return 0.0
            return 1.0 if end <= self.warmup_steps else min(1.0, (step - self.warmup_steps) / (end - self.warmup_steps))

        return 1 + (self.rmax - 1) * ramp(self.rmax_steps), self.dmax * ramp(self.dmax_steps)

    def equation_args(self, x: Tensor) -> dict:
        args = {k: v for k, v in super().equation_args(x).items() if k not in ("groups", "use_batch_stats")}
        rmax, dmax = self.clip_limits() if self.training else (1.0, 0.0)
        args.update(training=self.training, rmax=rmax, dmax=dmax)
        if self.training:
            # r and d read copies of the running statistics this call updates: torch 2.13's partitioner
            # may otherwise recompute them in a compiled backward from the updated buffers (wrong
            # gradients, seen in tests/test_family.py).
            args["correct_toward"] = (self.running_mean.clone(), self.running_var.clone())
        return args

    def saved_stats(self, x: Tensor) -> int:
        n, c = x.shape[:2]
        return 4 * (n // self.samples(n)) * c  # mean, rstd, r and d

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, rmax={self.rmax}, dmax={self.dmax}, warmup_steps={self.warmup_steps}, "
            f"rmax_steps={self.rmax_steps}, dmax_steps={self.dmax_steps}"
        )


# In the order the registry lists them.
WIDER = (RMSNorm, LayerNorm2d, BatchRenorm, FilterResponseNorm, EvoNormB0, EvoNormS0)
