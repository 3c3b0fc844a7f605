"""`compiled`: a norm's declared equation through `torch.compile`, one graph per configuration.

What a sweep over batch sizes must not pay is a compile per batch size, and what it must not time is
eager code after a silent fallback. So:

* The batch dimension is marked dynamic (`maybe_mark_dynamic(x, 0)`) and everything else is static
  (`dynamic=False`): channels, spatial size, groups, dtype and layout get kernels specialized to
  them, as a training run at a fixed shape would, and a new batch size reuses the graph. Inductor may
  still guard a size range where it picks another reduction strategy: the first batch size past it
  compiles once more. Compile times: docs/speed.md.
* Each configuration (norm class, the equation's numbers and flags, dtype, device, channels and
  spatial size, layout) gets its own copy of the equation's code object, hence its own dynamo cache: a
  long sweep never reaches dynamo's per-function recompile limit, past which it would quietly run
  eager code. A batch size of 1 still gets a graph of its own (dynamo specializes sizes 0 and 1).
* Numbers that change from step to step (BatchNorm's update factor, Batch Renormalization's rmax and
  dmax during their warm-up) go in as 0-d tensors on the input's device, refilled only when they
  change, so they trigger no recompile and no host-to-device copy. Running statistics are updated in
  place inside the graph (AOTAutograd writes the mutation back), as the reference does.
* Every graph is compiled without AOTAutograd's donated buffers (`_retainable`): they only save
  memory in backward, and they forbid a second backward on a retained graph, which the speed job's
  `bwd` pass does. So one graph serves training and the speed job alike, whatever torch's setting was
  when it compiled; torch still checks its setting when a retained graph runs backward, which the
  speed job turns off for its scope (normbench.bench.speed.retained_backward).
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

from normbench.norms.impl.reference import reference
from normbench.norms.layers import Norm

# The equation's arguments that vary from step to step: 0-d tensors, so that they do not recompile.
VARYING = ("factor", "rmax", "dmax")

_GRAPHS: dict[tuple, Callable] = {}
_NUMBERS: weakref.WeakKeyDictionary[Norm, dict[str, tuple[float, Tensor]]] = weakref.WeakKeyDictionary()


def _retainable(gm, example_inputs):
    """Inductor, with donated buffers off for this compile only (see the module's docstring)."""
    from torch._inductor.compile_fx import compile_fx

    with functorch_config.patch(donated_buffer=False):
        return compile_fx(gm, example_inputs)


def _fresh_copy(fn: Callable) -> Callable:
    """The same function on a new code object: dynamo keys its cache and recompile count on the code."""
    code = fn.__code__.replace()  # an equal but distinct code object
    copy = types.FunctionType(code, fn.__globals__, fn.__name__, fn.__defaults__, fn.__closure__)
    copy.__kwdefaults__ = fn.__kwdefaults__  # keyword-only defaults are not in __defaults__
    return copy


def graph_for(key: tuple, function: Callable) -> Callable:
    """The compiled `function` for one configuration (built, not compiled, on first use)."""
    fn = _GRAPHS.get(key)
    if fn is None:
        fn = _GRAPHS[key] = torch.compile(_fresh_copy(function), dynamic=False, backend=_retainable)
    return fn


def configurations() -> int:
    """How many configurations have a compiled function in this process."""
    return len(_GRAPHS)


def _number(layer: Norm, name: str, value: float, device: torch.device) -> Tensor:
    """`value` as a 0-d float32 tensor kept per layer and argument, refilled only when it changes."""
    numbers = _NUMBERS.setdefault(layer, {})
    cached = numbers.get(name)
    value = float(value)
    if cached is None or cached[1].device != device:
        numbers[name] = (value, torch.full((), value, dtype=torch.float32, device=device))
    elif cached[0] != value:
        cached[1].fill_(value)  # asynchronous on CUDA: no sync inside a timed loop
        numbers[name] = (value, cached[1])
    return numbers[name][1]


def compiled(layer: Norm, x: Tensor) -> Tensor:
    if torch.compiler.is_compiling():
        return reference(layer, x)  # inside a user's torch.compile: its graph takes the ops, as ours would
    kwargs = layer.equation_args(x)
    if kwargs.get("samples") == x.shape[0]:
        kwargs["samples"] = None  # the whole batch, taken from the dynamic size
    for name in VARYING:
        if name in kwargs:
            kwargs[name] = _number(layer, name, kwargs[name], x.device)
    # Tensors (and tuples of them) are the graph's inputs; the rest, None included, specialize it.
    static = tuple(sorted((k, v) for k, v in kwargs.items() if not isinstance(v, (Tensor, tuple))))
    key = (type(layer), static, x.dtype, x.device, tuple(x.shape[1:]), x.stride()[1:])
    torch._dynamo.maybe_mark_dynamic(x, 0)
    return graph_for(key, layer.equation)(x, **kwargs)
