"""Names -> norm classes -> implementations: a plain dict and a small factory.

Adding a norm is one `@add_norm` on its class: `reference`, `compiled` and (where the class names one)
`native` follow from the class's declaration (normbench.norms.layers.Norm). Adding another
implementation of a norm is one `@register(name, impl)` on a function `(layer, x) -> y`. Everything
that measures takes a norm and an implementation by name through `build` and never knows more.

The support contract: "can implementation `impl` of norm `name` run this input here?" has one answer,
`supports(name, impl, device=..., dtype=..., **options)`: None, or the reason it cannot. An
implementation that cannot run everywhere registers a check (`register(..., supports=check)`) and
raises `Unsupported` with that check's reason when called where it cannot run; a sweep records such a
job as skipped. Any other exception from an implementation is a bug and keeps its traceback.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from normbench.errors import Unsupported, UsageError
from normbench.norms import family
from normbench.norms.impl.compiled import compiled
from normbench.norms.impl.reference import reference
from normbench.norms.layers import (
    BatchNorm,
    GroupNorm,
    Implementation,
    InstanceNorm,
    LayerNorm,
    NoNorm,
    Norm,
)

NORMS: dict[str, type] = {}


@dataclass(frozen=True)
class Query:
    """What a support check is asked about. None for device or dtype: not known yet (at `build`, before
    the module is moved); a check then answers from what it knows. `timing`: the run is to be timed,
    so an implementation that runs only in a slow correctness mode (Triton's interpreter) is refused."""

    norm: str
    device: torch.device | None = None
    dtype: torch.dtype | None = None
    options: Mapping[str, Any] = field(default_factory=dict)
    timing: bool = False


SupportCheck = Callable[[Query], "str | None"]
CHECKS: dict[tuple[str, str], SupportCheck] = {}  # (norm, impl) -> its check; none: runs wherever torch does


def add_norm(cls: type) -> type:
    """Register norm class `cls` under `cls.name` (a decorator too): a `Norm` subclass gets `reference`
    and `compiled` from its `equation`, and `native` where it declares one."""
    if not isinstance(getattr(cls, "name", None), str):
        raise UsageError(f"{cls.__qualname__} has no `name`: give the norm class a name = '...' to register it")
    NORMS[cls.name] = cls
    if isinstance(cls, type) and issubclass(cls, Norm):
        cls.implementations.update(reference=reference, compiled=compiled)
        native, check = _declared_native(cls)
        if native is not None:
            cls.implementations["native"] = native
            if check is not None:
                CHECKS[cls.name, "native"] = check
    return cls


def _declared_native(cls: type) -> tuple[Implementation | None, SupportCheck | None]:
    """The `native` (and its check) of the nearest class that declares a native or an equation: a
    subclass with an equation of its own and no native has none, whatever its base's is."""
    for klass in cls.__mro__:
        own = vars(klass)
        if "native" in own:
            return cls.native, klass.native_supports
        if "equation" in own:
            return None, None
    return None, None


BUILT_IN = (BatchNorm, LayerNorm, InstanceNorm, GroupNorm, NoNorm, *family.WIDER)
for _cls in BUILT_IN:
    add_norm(_cls)


def register(
    name: str, impl: str, *, supports: SupportCheck | None = None
) -> Callable[[Implementation], Implementation]:
    """Decorator: register `fn(layer, x) -> y` as implementation `impl` of norm `name`; `supports(query)`
    returns None where it runs, else the reason it cannot (see `supports`)."""

    def decorate(fn: Implementation) -> Implementation:
        norm_class(name).implementations[impl] = fn
        if supports is not None:
            CHECKS[name, impl] = supports
        return fn

    return decorate


def available() -> list[str]:
    """The registered norm names."""
    return list(NORMS)


def norm_class(name: str) -> type:
    try:
        return NORMS[name]
    except (KeyError, TypeError):
        raise UsageError(f"unknown norm {name!r}; available: {', '.join(NORMS)}") from None


def batch_independent(name: str) -> bool:
    """Whether norm `name` computes the same function however a batch is split into normalization
    batches (no statistic spans samples); unknown classes count as dependent."""
    return bool(getattr(norm_class(name), "batch_independent", False))


# Listed in this order (specification first, then by how much is built for speed) whatever order the
# modules happen to be imported in; others follow in the order they were registered.
ORDER = ("reference", "native", "compiled", "triton")


def _in_order(names) -> list[str]:
    return sorted(names, key=lambda impl: ORDER.index(impl) if impl in ORDER else len(ORDER))


def implementations(name: str) -> list[str]:
    """The implementation names of norm `name` (`none` takes any implementation and ignores it)."""
    cls = norm_class(name)
    if cls is NoNorm:
        return all_implementations()
    return _in_order(cls.implementations)


def all_implementations() -> list[str]:
    names: dict[str, None] = {}
    for cls in NORMS.values():
        names.update(dict.fromkeys(getattr(cls, "implementations", {})))
    return _in_order(names)


def supports(
    name: str,
    impl: str,
    *,
    device: torch.device | str | None = "cpu",
    dtype: torch.dtype | None = torch.float32,
    timing: bool = False,
    **options,
) -> str | None:
    """None if implementation `impl` of norm `name` runs on `device` with `dtype` input (and the norm's
    `options`, e.g. learned_eps=True), else the reason it cannot, one line naming what to do instead.

    `timing=True` asks whether it runs at its speed (the speed job's question). An unknown norm or an
    implementation no norm has is a typo: UsageError, not a reason.
    """
    cls = norm_class(name)
    if impl not in implementations(name):
        if impl not in all_implementations():
            raise UsageError(_no_such_impl(name, impl))
        return _no_such_impl(name, impl)
    check = CHECKS.get((cls.name, impl))
    device = torch.device(device) if device is not None else None
    return check(Query(name, device, dtype, options, timing)) if check else None


def _no_such_impl(name: str, impl: str) -> str:
    return f"{name} has no implementation {impl!r}; choose one of: {', '.join(implementations(name))}"


def build(name: str, num_features: int, *, impl: str | None = None, **options) -> nn.Module:
    """A `name` norm over `num_features` channels, computed by implementation `impl` (default: `native`,
    or `reference` for a norm torch has no primitive for, e.g. EvoNorm).

    Options are those of the torch.nn counterpart (`eps`, `affine`, `momentum`,
    `track_running_stats`, `device`, `dtype`) plus `groups` for gn and `virtual_batch` for bn.
    """
    cls = norm_class(name)
    if impl is None:
        impl = "native" if "native" in implementations(name) else "reference"
    if cls is not NoNorm:
        accepted = _options_of(cls)
        unknown = sorted(set(options) - accepted)
        if unknown:
            raise UsageError(
                f"{name} takes no option {', '.join(map(repr, unknown))}; "
                f"its options are: {', '.join(sorted(accepted))}"
            )
    # What is known before the module is moved: the options, and device and dtype where given. An
    # implementation other norms have (EvoNorm has no `native`) is a combination to skip; a typo raises.
    norm_options = {k: v for k, v in options.items() if k not in ("device", "dtype")}
    reason = supports(name, impl, device=options.get("device"), dtype=options.get("dtype"), **norm_options)
    if reason:
        raise Unsupported(reason)
    return cls(num_features, impl=impl, **options)


def _options_of(cls: type) -> set[str]:
    return set(options(cls)) - {"impl"}


def options(cls: type) -> dict[str, Any]:
    """A norm class's declared options, the keyword-only parameters of its `__init__`s, with their defaults."""
    found: dict[str, Any] = {}
    for klass in reversed(cls.__mro__):
        if "__init__" in vars(klass):
            params = inspect.signature(vars(klass)["__init__"]).parameters.values()
            found.update({p.name: p.default for p in params if p.kind is p.KEYWORD_ONLY})
    return found


# A model's config may say which groups GN-like norms (those with a `groups` option) take in it.
MODEL_GROUPS_KEY = "norm_groups"


def model_groups(*, _parent_, _root_) -> int | None:
    """The OmegaConf resolver `${normbench.groups:}` for a norm node's `groups`: the model's
    `norm_groups` (the accuracy app's `model`, the speed app's `shape.model`), else the norm class's
    default. `norm.groups=...` on the command line replaces the interpolation, so it wins over both."""
    from omegaconf import OmegaConf

    for key in ("model", "shape.model"):
        value = OmegaConf.select(_root_, f"{key}.{MODEL_GROUPS_KEY}", default=None)
        if value is not None:
            return value
    return options(norm_class(_parent_.name)).get("groups")


def build_from_config(norm_cfg, num_features: int, *, impl: str = "native", **overrides) -> nn.Module:
    """`build` from a Hydra `norm` group node ({name: gn, groups: 32, eps: ...}) plus per-call overrides."""
    options = {k: v for k, v in dict(norm_cfg).items() if k != "name"}
    options.update(overrides)
    return build(norm_cfg["name"], num_features, impl=impl, **options)
