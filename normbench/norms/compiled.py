"""`compiled`: the reference (`core.norm_forward`) through `torch.compile`, one graph per configuration.

What a sweep over batch sizes must not pay is a compile per batch size, and what it must not time is
eager code after a silent fallback. So:

* The batch dimension is marked dynamic (`maybe_mark_dynamic(x, 0)`) and everything else is static
  (`dynamic=False`): channels, spatial size, groups, dtype and layout get kernels specialized to
  them, as a training run at a fixed shape would, and a new batch size reuses the graph. Measured on
  a 2-core CPU (torch 2.13, (N, 64, 56, 56), fwd + first bwd): a static compile costs 3-5 s for
  every new batch size; with the batch dynamic, 4-5 s once, then 0.01-0.03 s per new batch size,
  at the same run time within noise. Inductor may still guard a size range where it picks another
  reduction strategy (e.g. `784*N <= 4096` for the per-channel gradient sums of (N, 64, 28, 28)):
  the first batch size past it compiles once more (2-3 s in the default CPU sweep).
* Each configuration (norm, groups, train/eval, dtype, device, channels and spatial size, layout)
  gets its own copy of the function's code object, hence its own dynamo cache: a long sweep never
  reaches dynamo's per-function recompile limit (8), past which it would quietly run eager code.
  A batch size of 1 still gets a graph of its own (dynamo specializes sizes 0 and 1).
* BatchNorm's update factor (momentum, or 1 / num_batches_tracked when momentum=None) changes each
  step; it goes in as a 0-d tensor on the input's device, refilled only when it changes, so it
  triggers no recompile and no host-to-device copy. The running statistics are updated in place
  inside the graph (AOTAutograd writes the mutation back), as the reference does.

* Inside a user's `torch.compile` (a model holding these layers) the layer runs the reference's ops,
  and the user's graph compiles them with the rest of the model: a compile cannot call another.

Compile time is paid by the first call of each configuration; the speed job makes that call before
timing and records it as `compile_s`.
"""

from __future__ import annotations

import types
import weakref
from collections.abc import Callable

import torch
from torch import Tensor
from torch._functorch import config as functorch_config

from normbench.norms.core import norm_forward
from normbench.norms.layers import BatchNorm, Norm
from normbench.norms.reference import family_call, family_reference, functional_args, reference
from normbench.norms.registry import register


def _forward(x, weight, bias, running_mean, running_var, factor, samples, groups, eps, use_batch_stats):
    # samples=None: the whole batch shares the statistics (BatchNorm), taken from the dynamic size.
    return norm_forward(
        x,
        weight,
        bias,
        samples=x.shape[0] if samples is None else samples,
        groups=groups,
        eps=eps,
        running_mean=running_mean,
        running_var=running_var,
        use_batch_stats=use_batch_stats,
        factor=factor,
    )


_GRAPHS: dict[tuple, Callable] = {}
_FACTORS: weakref.WeakKeyDictionary[Norm, tuple[float, Tensor]] = weakref.WeakKeyDictionary()


def _fresh_copy(fn: Callable) -> Callable:
    """The same function on a new code object: dynamo keys its cache and recompile count on the code."""
    code = fn.__code__.replace()  # an equal but distinct code object
    copy = types.FunctionType(code, fn.__globals__, fn.__name__, fn.__defaults__, fn.__closure__)
    copy.__kwdefaults__ = fn.__kwdefaults__  # keyword-only defaults are not in __defaults__
    return copy


def graph_for(key: tuple, function: Callable = _forward) -> Callable:
    """The compiled `function` for one configuration (built, not compiled, on first use)."""
    # A graph compiled with donated buffers must not serve a caller that retains it (the speed job
    # turns them off: normbench.speed.retained_backward), nor the other way round.
    key = (*key, functorch_config.donated_buffer)
    fn = _GRAPHS.get(key)
    if fn is None:
        fn = _GRAPHS[key] = torch.compile(_fresh_copy(function), dynamic=False)
    return fn


def configurations() -> int:
    """How many configurations have a compiled function in this process."""
    return len(_GRAPHS)


def _factor_tensor(layer: BatchNorm, device: torch.device) -> Tensor:
    value = float(layer.update_factor)
    cached = _FACTORS.get(layer)
    if cached is None or cached[1].device != device:
        cached = (value, torch.full((), value, dtype=torch.float32, device=device))
        _FACTORS[layer] = cached
    elif cached[0] != value:
        cached[1].fill_(value)  # asynchronous on CUDA: no sync inside a timed loop
        cached = (value, cached[1])
        _FACTORS[layer] = cached
    return cached[1]


@register("bn", "compiled")
@register("ln", "compiled")
@register("in", "compiled")
@register("gn", "compiled")
def compiled(layer: Norm, x: Tensor) -> Tensor:
    if torch.compiler.is_compiling():
        return reference(layer, x)  # inside a user's torch.compile: its graph takes the ops, as ours would
    args = functional_args(layer, x)
    samples = None if args["samples"] == x.shape[0] else args["samples"]
    use_batch_stats = args.get("use_batch_stats", True)
    running_mean, running_var, factor = args.get("running_mean"), args.get("running_var"), None
    if use_batch_stats and running_mean is not None:
        factor = _factor_tensor(layer, x.device)
    key = (
        type(layer).__name__,
        samples,
        args["groups"],
        args["eps"],
        use_batch_stats,
        running_mean is None,
        layer.weight is None,
        x.dtype,
        x.device,
        tuple(x.shape[1:]),
        x.stride()[1:],  # the layout (contiguous or channels_last), independent of the batch size
    )
    torch._dynamo.maybe_mark_dynamic(x, 0)
    return graph_for(key)(
        x,
        layer.weight,
        layer.bias,
        running_mean,
        running_var,
        factor,
        samples,
        args["groups"],
        args["eps"],
        use_batch_stats,
    )


# Numbers that change from step to step (BatchNorm's factor, Batch Renormalization's rmax and dmax
# during their warm-up) go in as 0-d tensors, so they trigger no recompile.
VARYING = ("factor", "rmax", "dmax")


@register("rms", "compiled")
@register("ln2d", "compiled")
@register("brn", "compiled")
@register("frn", "compiled")
@register("evonorm_b0", "compiled")
@register("evonorm_s0", "compiled")
def compiled_family(layer: Norm, x: Tensor) -> Tensor:
    if torch.compiler.is_compiling():
        return family_reference(layer, x)  # inside a user's torch.compile, as `compiled` above
    fn, kwargs = family_call(layer, x)
    if kwargs.get("samples") == x.shape[0]:
        kwargs["samples"] = None  # the whole batch, taken from the dynamic size
    for name in VARYING:
        if name in kwargs:
            kwargs[name] = torch.tensor(float(kwargs[name]), dtype=torch.float32, device=x.device)
    if kwargs.get("training"):
        # torch 2.13's partitioner may recompute r and d in backward from the running-statistics inputs,
        # after the forward has updated them in place (wrong gradients, seen in tests/test_family.py):
        # r and d read copies made here instead.
        kwargs["correct_toward"] = (layer.running_mean.clone(), layer.running_var.clone())
    static = tuple(sorted((k, v) for k, v in kwargs.items() if not isinstance(v, (Tensor, tuple))))
    key = (type(layer).__name__, fn.__name__, static, x.dtype, x.device, tuple(x.shape[1:]), x.stride()[1:])
    torch._dynamo.maybe_mark_dynamic(x, 0)
    return graph_for(key, fn)(x, **kwargs)
