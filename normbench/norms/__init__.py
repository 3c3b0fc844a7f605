"""The norm registry: `available()` names the norms, `build(name, C, impl=...)` makes one, and
`supports(name, impl, device=..., dtype=...)` says whether it runs there (None) or why not.

>>> from normbench import norms
>>> layer = norms.build("gn", 64, impl="reference", groups=8)
>>> y = layer(torch.randn(2, 64, 8, 8))
"""

from normbench.norms.family import BatchRenorm, EvoNormB0, EvoNormS0, FilterResponseNorm, LayerNorm2d, RMSNorm
from normbench.norms.impl import compiled, native, reference, triton  # noqa: F401  (importing registers the implementations)
from normbench.norms.layers import BatchNorm, GroupNorm, InstanceNorm, LayerNorm, NoNorm, Norm, Statistics
from normbench.norms.registry import (
    Query,
    add_norm,
    all_implementations,
    available,
    batch_independent,
    build,
    build_from_config,
    implementations,
    model_groups,
    norm_class,
    options,
    register,
    supports,
)

__all__ = [
    "BatchNorm",
    "BatchRenorm",
    "EvoNormB0",
    "EvoNormS0",
    "FilterResponseNorm",
    "GroupNorm",
    "InstanceNorm",
    "LayerNorm",
    "LayerNorm2d",
    "NoNorm",
    "Norm",
    "Query",
    "RMSNorm",
    "Statistics",
    "add_norm",
    "all_implementations",
    "available",
    "batch_independent",
    "build",
    "build_from_config",
    "implementations",
    "model_groups",
    "norm_class",
    "options",
    "register",
    "supports",
]
