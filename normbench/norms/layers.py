"""The modules: one base class carries the parameters, the checks and the dispatch; each norm adds a line.

A layer does not compute anything itself: `forward` checks the input and hands it to the function
registered for the layer's implementation (`impl`). All implementations of a norm share one module
class, so parameters and buffers are named as in torch.nn and a `state_dict` moves between them.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from normbench.errors import UsageError
from normbench.norms import core
from normbench.norms.impl import native as torch_ops

Implementation = Callable[["Norm", Tensor], Tensor]


@dataclass(frozen=True)
class Statistics:
    """The axes one statistic spans, for input (N, C, *spatial) (core.py's table).

    samples: "one" (each sample its own) or "batch" (N, in virtual batches of `virtual_batch`);
    channels: "all" (C), "each" (one per channel) or "groups" (C / groups, the `groups` option);
    spatial: True (over the positions) or False (one statistic per position, as ConvNeXt's LayerNorm2d).
    """

    samples: str = "one"
    channels: str = "all"
    spatial: bool = True

    def __post_init__(self) -> None:
        for field, value, allowed in (
            ("samples", self.samples, ("one", "batch")),
            ("channels", self.channels, ("all", "each", "groups")),
        ):
            if value not in allowed:
                raise UsageError(f"Statistics({field}={value!r}): {field} is one of {', '.join(map(repr, allowed))}")


class Norm(nn.Module):
    """Base of the registered norms: y = (x - E[x]) / sqrt(Var[x] + eps) * weight + bias.

    The moments are taken over the values that share a statistic (see `normbench.norms.core`);
    weight and bias are per channel. Input: (N, C, *spatial) with 0 to 3 spatial dimensions.
    """

    name: ClassVar[str]
    title: ClassVar[str]  # the name plots and tables show
    # The declaration every implementation but a hand-written kernel follows from (registry.add_norm):
    # the axes of a statistic, the equation (a function of tensors and numbers: `reference` calls it,
    # `compiled` compiles it) and, where a torch function computes exactly it, `native`. The options
    # are the keyword-only parameters of `__init__`; `equation_args` turns them into the equation's.
    statistics: ClassVar[Statistics] = Statistics()
    equation: ClassVar[Callable[..., Tensor]] = staticmethod(core.norm_forward)
    native: ClassVar[Implementation | None] = None
    native_supports: ClassVar[Callable[[Any], str | None] | None] = None  # a registry.SupportCheck
    needs_spatial: ClassVar[bool] = False
    batch_independent: ClassVar[bool] = True  # set by each subclass from its `statistics`
    # True for norms that end in their own nonlinearity (FRN's TLU, EvoNorm): models then drop the
    # ReLU after them, as the papers replace the norm-and-ReLU pair (see normbench.models).
    includes_activation: ClassVar[bool] = False
    has_bias: ClassVar[bool] = True  # RMSNorm scales only
    default_eps: ClassVar[float] = 1e-5
    implementations: ClassVar[dict[str, Implementation]]

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        cls.implementations = {}
        # True when no statistic spans samples: how a step's batch is split into normalization batches
        # cannot change what the layer computes.
        cls.batch_independent = cls.statistics.samples != "batch"

    def __init__(
        self,
        num_features: int,
        *,
        impl: str | None = None,
        eps: float | None = None,
        affine: bool = True,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        if isinstance(num_features, bool) or not isinstance(num_features, int) or num_features < 1:
            raise UsageError(
                f"{self.name}: num_features must be a positive int (the input's channel count), got {num_features!r}"
            )
        eps = self.default_eps if eps is None else eps
        if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not 0 < eps < math.inf:
            raise UsageError(f"{self.name}: eps must be a finite number > 0, got {eps!r}: e.g. norm.eps=1e-5")
        if not isinstance(affine, bool):  # "no" would be truthy: a string must not pick the behaviour
            raise UsageError(f"{self.name}: affine must be true or false, got {affine!r}")
        self.num_features = num_features
        self.eps = float(eps)
        self.affine = affine
        if affine:
            self.weight = nn.Parameter(torch.ones(num_features, device=device, dtype=dtype))
            if self.has_bias:
                self.bias = nn.Parameter(torch.zeros(num_features, device=device, dtype=dtype))
            else:
                self.register_parameter("bias", None)
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)
        self.impl = impl or ("native" if "native" in self.implementations else "reference")

    @property
    def impl(self) -> str:
        """The implementation's name; assigning another one switches it, keeping parameters and buffers."""
        return self._impl

    @impl.setter
    def impl(self, impl: str) -> None:
        if impl not in self.implementations:
            raise UsageError(
                f"{self.name} has no implementation {impl!r}; choose one of: {', '.join(sorted(self.implementations))}"
            )
        self._impl = impl
        self._forward_impl = self.implementations[impl]

    @property
    def impl_fn(self) -> Implementation:
        """The implementation's function `(layer, x) -> y` alone, without `forward`'s input checks and
        bookkeeping: what the speed job times, on input `forward` has checked once (docs/speed.md).
        Assigning a function puts it in the implementation's place (the wrapper-overhead probe)."""
        return self._forward_impl

    @impl_fn.setter
    def impl_fn(self, fn: Implementation) -> None:
        self._forward_impl = fn

    # False skips check_input in forward: for input already checked once at these shapes (a timed step).
    check_inputs: bool = True

    # The two numbers that make a norm what it is (see core.py's table), from its `statistics`.
    def groups(self) -> int:
        """G: channel groups that get statistics of their own."""
        channels = self.statistics.channels
        return 1 if channels == "all" else self.num_features if channels == "each" else self.num_groups

    def samples(self, batch_size: int) -> int:
        """K: samples that share a statistic."""
        return (getattr(self, "virtual_batch", None) or batch_size) if self.statistics.samples == "batch" else 1

    def equation_args(self, x: Tensor) -> dict:
        """The keyword arguments of `equation` (all but x) for input x."""
        return {
            "weight": self.weight,
            "bias": self.bias,
            "samples": self.samples(x.shape[0]),
            "groups": self.groups(),
            "eps": self.eps,
        }

    def forward(self, x: Tensor) -> Tensor:
        if self.check_inputs:
            self.check_input(x)
        return self._forward_impl(self, x)

    def check_input(self, x: Tensor) -> None:
        if not torch.is_tensor(x) or not x.is_floating_point():
            got = x.dtype if torch.is_tensor(x) else type(x).__name__
            raise UsageError(f"{self.name} takes a floating-point tensor, got {got}: convert it first, e.g. x.float()")
        if x.numel() == 0:
            # torch.nn disagrees with itself here (BatchNorm returns an empty tensor, InstanceNorm raises
            # IndexError): every implementation of every norm refuses it the same way instead.
            raise UsageError(
                f"{self.name} got an empty input of shape {tuple(x.shape)}: skip the call for an empty batch"
            )
        if not 2 <= x.dim() <= 5:
            raise UsageError(
                f"{self.name} takes (N, C, *spatial) with 0 to 3 spatial dimensions, got shape "
                f"{tuple(x.shape)}: add a batch dimension with x.unsqueeze(0) or flatten extra ones"
            )
        if x.shape[1] != self.num_features:
            raise UsageError(
                f"{self.name} was built for {self.num_features} channels but the input has "
                f"{x.shape[1]} (shape {tuple(x.shape)}, channels on dim 1): build it with "
                f"num_features={x.shape[1]} or move the channels to dim 1"
            )
        if self.needs_spatial and (x.dim() == 2 or math.prod(x.shape[2:]) < 2):
            raise UsageError(
                f"{self.name} normalizes over spatial positions, so it needs more than one of them; "
                f"got shape {tuple(x.shape)}: use ln for (N, C) input"
            )
        if self.uses_own_statistics() and self.values_per_statistic(x) < 2:
            raise UsageError(
                f"{self.name} takes each mean and variance over {self.values_per_statistic(x)} value "
                f"for input of shape {tuple(x.shape)}, and needs more than one: {self.too_few_values_hint}"
            )

    too_few_values_hint: ClassVar[str] = "normalize more channels or spatial positions together"

    def uses_own_statistics(self) -> bool:
        """Whether this call normalizes with statistics of the input (not stored ones)."""
        return True

    def values_per_statistic(self, x: Tensor) -> int:
        positions = math.prod(x.shape[2:]) if self.statistics.spatial else 1
        return self.samples(x.shape[0]) * (x.shape[1] // self.groups()) * positions

    def saved_stats(self, x: Tensor) -> int:
        """float32 values a forward saves for backward (the byte model): a mean and an rstd per statistic."""
        n = x.shape[0]
        return 2 * (n // self.samples(n)) * self.groups()

    def extra_repr(self) -> str:
        return f"{self.num_features}, impl={self.impl!r}, eps={self.eps}, affine={self.affine}"


class BatchNorm(Norm):
    """BatchNorm (Ioffe & Szegedy, 2015): statistics over N and spatial, per channel.

    Training uses the batch's statistics and updates `running_mean` and `running_var` (unbiased) as
    torch.nn does: running = (1 - momentum) * running + momentum * batch, a cumulative average when
    `momentum=None`. Eval mode (`module.eval()`, never grad mode) uses the running statistics.
    `virtual_batch=K` takes statistics over each K consecutive samples separately, as K samples per
    GPU with unsynchronized BatchNorm would (the Group Normalization paper's protocol).

    >>> bn = BatchNorm(3); y = bn(torch.randn(8, 3, 4, 4))
    """

    name = "bn"
    title = "BatchNorm"
    statistics = Statistics(samples="batch", channels="each")
    native = staticmethod(torch_ops.batch_norm)

    def __init__(
        self,
        num_features: int,
        *,
        momentum: float | None = 0.1,
        track_running_stats: bool = True,
        virtual_batch: int | None = None,
        **options,
    ) -> None:
        super().__init__(num_features, **options)
        number = isinstance(momentum, (int, float)) and not isinstance(momentum, bool)
        if momentum is not None and not (number and 0 <= momentum <= 1):
            raise UsageError(f"bn: momentum must be in [0, 1] or None, got {momentum!r}: e.g. momentum=0.1")
        if not isinstance(track_running_stats, bool):
            raise UsageError(f"bn: track_running_stats must be true or false, got {track_running_stats!r}")
        if virtual_batch is not None and (not isinstance(virtual_batch, int) or virtual_batch < 1):
            raise UsageError(f"bn: virtual_batch must be a positive int or None, got {virtual_batch!r}")
        self.momentum = momentum
        self.track_running_stats = track_running_stats
        self.virtual_batch = virtual_batch
        if track_running_stats:
            like = {"device": options.get("device"), "dtype": options.get("dtype")}
            self.register_buffer("running_mean", torch.zeros(num_features, **like))
            self.register_buffer("running_var", torch.ones(num_features, **like))
            self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long, device=options.get("device")))
        else:
            self.register_buffer("running_mean", None)
            self.register_buffer("running_var", None)
            self.register_buffer("num_batches_tracked", None)
        self.update_factor = 0.0

    @property
    def use_batch_stats(self) -> bool:
        return self.training or not self.track_running_stats

    def forward(self, x: Tensor) -> Tensor:
        if self.check_inputs:
            self.check_input(x)
        # As torch.nn does: the module keeps the count; the implementation applies the factor.
        self.update_factor = 0.0
        if self.training and self.track_running_stats:
            self.num_batches_tracked.add_(1)
            self.update_factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        return self._forward_impl(self, x)

    too_few_values_hint = "use a larger batch (or virtual_batch), call .eval(), or pick ln/gn"

    def equation_args(self, x: Tensor) -> dict:
        args = super().equation_args(x)
        if not self.use_batch_stats:
            args["samples"] = x.shape[0]  # running statistics: one (virtual) batch of all samples
        return {
            **args,
            "running_mean": self.running_mean,
            "running_var": self.running_var,
            "use_batch_stats": self.use_batch_stats,
            "factor": self.update_factor,
        }

    def uses_own_statistics(self) -> bool:
        return self.use_batch_stats

    def check_input(self, x: Tensor) -> None:
        n = x.shape[0] if torch.is_tensor(x) and x.dim() else 0
        if not n:
            return super().check_input(x)  # not a tensor, or empty: the base class says which
        k = self.samples(n)
        if self.use_batch_stats and n and n % k:
            raise UsageError(
                f"bn: a batch of {n} does not split into virtual batches of {k}: make the batch size a multiple of {k}"
            )
        super().check_input(x)

    def extra_repr(self) -> str:
        vb = f", virtual_batch={self.virtual_batch}" if self.virtual_batch else ""
        return f"{super().extra_repr()}, momentum={self.momentum}, track_running_stats={self.track_running_stats}{vb}"


class LayerNorm(Norm):
    """LayerNorm as in the Group Normalization paper: statistics over C and spatial, per sample.

    The affine is per channel, so on (N, C) input this is the transformer LayerNorm over the last
    dimension; on images it is GroupNorm with one group.
    """

    name = "ln"
    title = "LayerNorm"
    native = staticmethod(torch_ops.layer_norm)
    too_few_values_hint = "give it more than one channel or spatial position per sample"


class InstanceNorm(Norm):
    """InstanceNorm (Ulyanov et al., 2016): statistics over spatial, per sample and channel.

    Unlike torch.nn.InstanceNorm*d, `affine` defaults to True here, so every norm is compared with
    a learned per-channel scale and shift.
    """

    name = "in"
    title = "InstanceNorm"
    statistics = Statistics(channels="each")
    native = staticmethod(torch_ops.instance_norm)
    needs_spatial = True
    too_few_values_hint = "use ln for (N, C) input"


class GroupNorm(Norm):
    """GroupNorm (Wu & He, 2018): statistics over C / groups channels and spatial, per sample and group."""

    name = "gn"
    title = "GroupNorm"
    statistics = Statistics(channels="groups")
    native = staticmethod(torch_ops.group_norm)
    too_few_values_hint = "use fewer groups or give it spatial positions"

    def __init__(self, num_features: int, *, groups: int = 32, **options) -> None:
        if isinstance(groups, bool) or not isinstance(groups, int) or groups < 1:
            raise UsageError(f"{self.name}: groups must be a positive int, got {groups!r}")
        if isinstance(num_features, int) and num_features >= 1 and num_features % groups:
            divisors = [g for g in range(1, num_features + 1) if num_features % g == 0]
            raise UsageError(
                f"{self.name}: {num_features} channels do not split into {groups} groups; "
                f"choose groups from the divisors of {num_features}: {divisors}"
            )
        self.num_groups = groups
        super().__init__(num_features, **options)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, groups={self.num_groups}"


class NoNorm(nn.Module):
    """The no-normalization baseline: identity, no parameters, whatever the implementation.

    `bias=True` adds a learnable per-channel shift (zero at first): the models' convolutions have no
    bias because a norm shifts, so a fair network without a norm gets it back here.
    """

    name = "none"
    title = "no normalization"
    batch_independent = True

    def __init__(self, num_features: int, *, impl: str = "native", bias: bool = False, **options) -> None:
        super().__init__()
        self.num_features = num_features
        self.impl = impl
        self.bias = nn.Parameter(torch.zeros(num_features)) if bias else None

    def forward(self, x: Tensor) -> Tensor:
        if self.bias is None:
            return x
        return x + self.bias.view(1, -1, *([1] * (x.dim() - 2)))

    def extra_repr(self) -> str:
        return f"{self.num_features}" + (", bias=True" if self.bias is not None else "")
