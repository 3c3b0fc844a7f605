"""A user's own code in both apps: the `plugins` key's modules, imported before the registry is read
(`load`), and models and datasets as Hydra `_target_`s, one way to build either from its config node.

`plugins: [my_pkg.my_norms]` (conf/common.yaml; on the command line `plugins=[my_pkg.my_norms]`)
imports each module at the start of every job (and before `--list`), so the norms it registers
(`@normbench.norms.add_norm`) and the models and datasets it marks (`@register`) reach both apps from
YAML files in the user's `--config-dir` (docs/extending.md). A module that fails to import is one
UsageError naming it and the key.

`build(node, key, **runtime)` is `hydra.utils.instantiate(node, **runtime)` with the errors a user can
act on: no `_target_`, a target that cannot be imported, an option it does not take or an argument
of the job's it does not accept is one UsageError naming the key; an exception the target raises
(a UsageError, or a bug's) passes through as itself, not wrapped in Hydra's InstantiationException.
So a user's own model or dataset is a YAML file in a `--config-dir` (docs/plugins.md).

A target runs with the user's options before anything can check what it returns, so `build` first
checks that it is a model or dataset builder at all (`allowed`): an `nn.Module` subclass (models), a
function marked with `@register("model")` or `@register("dataset")` (normbench's own and a user's),
or, for models, a function of a library that builds models (`MODEL_LIBRARIES`). Anything else
(`dataset._target_=shutil.copyfile`) is refused before it is called.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Iterable

from hydra._internal.utils import _locate  # get_object's quiet core: get_object also logs the failure
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from normbench.errors import UsageError

KINDS = ("model", "dataset")
# A model node's settings for the norms in it, not arguments of its target (normbench.norms.model_groups).
MODEL_SETTINGS = ("norm_groups",)
# Libraries whose public functions build models (torchvision.models.resnet50, timm.create_model).
MODEL_LIBRARIES = ("torchvision.models", "timm")
_MARK = "__normbench_builds__"


def load(modules: str | Iterable[str] | None) -> None:
    """Import the `plugins` key's modules (a name or a list of names), in order."""
    names = [modules] if isinstance(modules, str) else list(modules or [])
    for name in names:
        try:
            importlib.import_module(str(name))
        except Exception as exc:
            raise UsageError(
                f"plugins: module {name!r} could not be imported ({type(exc).__name__}: {_first_line(exc)}): "
                "put its folder on PYTHONPATH (or install it) and check the name, e.g. plugins=[my_pkg.my_norms]"
            ) from None


def from_overrides(args: Iterable[str]) -> list[str]:
    """The modules a `plugins=[...]` (or `+plugins=...`) command-line override names: what `--list` loads,
    since it answers before Hydra composes a config."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    found: list[str] = []
    for arg in args:
        if arg.lstrip("+").startswith("plugins="):
            value = OverridesParser.create().parse_override(arg).value()
            found = [str(v) for v in value] if isinstance(value, list) else [str(value)]
    return found


def register(kind: str):
    """Mark a function as a builder of `kind` ("model" or "dataset"), so a `_target_` may name it:

    @plugins.register("dataset")
    def blobs(n=1000): ...
    """
    if kind not in KINDS:
        raise ValueError(f"register takes one of {KINDS}, got {kind!r}")

    def mark(fn):
        setattr(fn, _MARK, kind)
        return fn

    return mark


def allowed(fn, kind: str) -> bool:
    """Whether `fn` may be a `_target_` of `kind`: a registered builder of that kind, an nn.Module class
    (models), or a function of a model library (models)."""
    if getattr(fn, _MARK, None) == kind:
        return True
    if kind != "model":
        return False
    if isinstance(fn, type):
        from torch import nn

        return issubclass(fn, nn.Module)
    module = str(getattr(fn, "__module__", None) or "")
    return callable(fn) and any(module == m or module.startswith(m + ".") for m in MODEL_LIBRARIES)


def build(node, key: str, example: str, *, kind: str, **runtime):
    """The object `node` (a DictConfig or dict with `_target_`) builds, called with `runtime` too.

    `key` is the node's place in the config (`model`, `dataset`, `shape.model`) and `example` a target
    that works there, both for messages; `kind` ("model" or "dataset") what the target must build
    (see `allowed`). Lists and dicts reach the target as plain Python ones.
    """
    node = node if isinstance(node, DictConfig) else OmegaConf.create(dict(node))
    if kind == "model" and any(k in node for k in MODEL_SETTINGS):
        node = OmegaConf.create({k: v for k, v in node.items_ex(resolve=False) if k not in MODEL_SETTINGS})
    target = node.get("_target_")
    if not target:
        raise UsageError(
            f"{key} needs a _target_ (the class or function that builds it): e.g. {key}._target_={example}"
        )
    try:
        fn = _locate(str(target))
    except Exception as exc:
        cause = exc.__cause__ or exc
        raise UsageError(
            f"{key}._target_={target} could not be built ({type(cause).__name__}: {_first_line(cause)}): "
            f"install its package or fix the name, e.g. {key}._target_={example}"
        ) from None
    _check_targets(node, key, kind, fn, target, example)
    options = [k for k in node if not str(k).startswith("_")]
    takes_any = _check_arguments(fn, target, key, options, runtime)
    try:
        return instantiate(node, **runtime, _convert_="all")
    except InstantiationException as exc:
        cause = exc.__cause__
        # A target taking **kwargs was not checked above: an option it rejects surfaces here.
        if takes_any and isinstance(cause, TypeError) and "keyword argument" in str(cause):
            raise UsageError(f"{key}._target_={target}: {cause}; remove or rename that option") from exc
        if cause is None:
            raise
        # The target's own exception, not Hydra's wrapper: a UsageError stays one line, a bug keeps its
        # type and its traceback into the target.
        raise cause from None


def _check_targets(node, key: str, kind: str, fn, target, example: str) -> None:
    """Refuse `target` unless it builds a `kind`; Hydra would also call any `_target_` nested in the
    options before the target, so those are refused too."""
    if not allowed(fn, kind):
        what = (
            "an nn.Module class, a function of torchvision.models or timm, or a function"
            if kind == "model"
            else "a function"
        )
        raise UsageError(
            f"{key}._target_={target} is not a {kind} builder, so it is not called: a {kind} target must be "
            f"{what} marked @normbench.plugins.register({kind!r}) (docs/plugins.md), e.g. {key}._target_={example}"
        )
    nested = [f"{key}.{path}" for path in _nested_targets(OmegaConf.to_container(node, resolve=False), "")]
    if nested:
        raise UsageError(
            f"{', '.join(nested)}: a {kind}'s options may not name a _target_ of their own (Hydra would call it "
            "before the target); build the object inside your target instead"
        )


def _nested_targets(value, path: str) -> list[str]:
    found = []
    if isinstance(value, dict):
        for k, v in value.items():
            sub = f"{path}.{k}" if path else str(k)
            if path and k == "_target_":
                found.append(sub)
            elif k != "_target_":
                found += _nested_targets(v, sub)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            found += _nested_targets(v, f"{path}[{i}]" if path else f"[{i}]")
    return found


def _check_arguments(fn, target, key: str, options: list[str], runtime: dict) -> bool:
    """Whether `fn` takes **kwargs; else every option and runtime argument must be one of its parameters."""
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):  # a builtin without a signature: let the call decide
        return True
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return True
    named = [n for n, p in params.items() if p.kind not in (inspect.Parameter.VAR_POSITIONAL,)]
    lacking = [a for a in runtime if a not in params]
    if lacking:
        raise UsageError(
            f"{key}._target_={target} does not take {', '.join(lacking)}: the job passes "
            f"{', '.join(runtime)} as keyword arguments, so its signature needs them (docs/plugins.md)"
        )
    unknown = [o for o in options if o not in params]
    if unknown:
        raise UsageError(
            f"{key} ({target}) takes no option {', '.join(map(repr, unknown))}; its options are: "
            f"{', '.join(n for n in named if n not in runtime)}"
        )
    return False


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else ""
