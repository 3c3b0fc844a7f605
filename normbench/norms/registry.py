"""Names -> norm classes -> implementations: a plain dict and a small factory.

Adding a norm is one `add_norm(cls)`; adding an implementation of a norm is one `@register(name, impl)`
on a function `(layer, x) -> y`. Everything that measures takes a norm and an implementation by name
through `build` and never knows more.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

from torch import nn

from normbench.errors import Unsupported, UsageError
from normbench.norms.family import FAMILY
from normbench.norms.layers import (
    BatchNorm,
    GroupNorm,
    Implementation,
    InstanceNorm,
    LayerNorm,
    NoNorm,
)

NORMS: dict[str, type] = {}


def add_norm(cls: type) -> type:
    NORMS[cls.name] = cls
    return cls


for _cls in (BatchNorm, LayerNorm, InstanceNorm, GroupNorm, NoNorm, *FAMILY):
    add_norm(_cls)


def register(name: str, impl: str) -> Callable[[Implementation], Implementation]:
    """Decorator: register `fn(layer, x) -> y` as implementation `impl` of norm `name`."""

    def decorate(fn: Implementation) -> Implementation:
        norm_class(name).implementations[impl] = fn
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


def implementations(name: str) -> list[str]:
    """The implementation names of norm `name` (`none` takes any implementation and ignores it)."""
    cls = norm_class(name)
    if cls is NoNorm:
        return all_implementations()
    return list(cls.implementations)


def all_implementations() -> list[str]:
    names: dict[str, None] = {}
    for cls in NORMS.values():
        names.update(dict.fromkeys(getattr(cls, "implementations", {})))
    return list(names)


def build(name: str, num_features: int, *, impl: str | None = None, **options) -> nn.Module:
    """A `name` norm over `num_features` channels, computed by implementation `impl` (default: `native`,
    or `reference` for a norm torch has no primitive for, e.g. EvoNorm).

    Options are those of the torch.nn counterpart (`eps`, `affine`, `momentum`,
    `track_running_stats`, `device`, `dtype`) plus `groups` for gn and `virtual_batch` for bn.
    """
    cls = norm_class(name)
    if impl is None:
        impl = "native" if "native" in implementations(name) else "reference"
    if impl not in implementations(name):
        # An implementation other norms have (EvoNorm has no `native`) is a combination to skip; a
        # name no norm has is a typo.
        error = Unsupported if impl in all_implementations() else UsageError
        raise error(f"{name} has no implementation {impl!r}; choose one of: {', '.join(implementations(name))}")
    if cls is not NoNorm:
        accepted = _options_of(cls)
        unknown = sorted(set(options) - accepted)
        if unknown:
            raise UsageError(
                f"{name} takes no option {', '.join(map(repr, unknown))}; "
                f"its options are: {', '.join(sorted(accepted))}"
            )
    return cls(num_features, impl=impl, **options)


def _options_of(cls: type) -> set[str]:
    names: set[str] = set()
    for klass in cls.__mro__:
        if "__init__" in vars(klass):
            params = inspect.signature(vars(klass)["__init__"]).parameters.values()
            names |= {p.name for p in params if p.kind is p.KEYWORD_ONLY}
    return names - {"impl"}


def build_from_config(norm_cfg, num_features: int, *, impl: str = "native", **overrides) -> nn.Module:
    """`build` from a Hydra `norm` group node ({name: gn, groups: 32, eps: ...}) plus per-call overrides."""
    options = {k: v for k, v in dict(norm_cfg).items() if k != "name"}
    options.update(overrides)
    return build(norm_cfg["name"], num_features, impl=impl, **options)
