"""Speed on a real model (`shape=model`): the norm layers' input shapes, each timed, and the whole step.

A user's question is "what does switching my model's BatchNorm to GroupNorm (or to the compiled one)
cost per training step?". So a job with `shape.model` set:

1. builds the model (a Hydra `_target_`: normbench.models.resnet20, torchvision.models.resnet50, ...;
   `models.from_config`, as the accuracy job does, with no arguments of the job's) and swaps every
   norm layer for the job's norm x implementation (same seed, so the same weights);
2. runs one forward with hooks on those layers, collecting each one's input shape, dtype and layout;
3. times every distinct input as a standalone layer, per pass, as the single-shape job does; a row
   says which model and which layers (`layers`, `layer_names`) it stands for;
4. times the model's forward + backward step on one fixed input (pass `step`): `norm_ms` is the
   layers' share estimated from step 3 (fwdbwd time x layers, summed), `norm_share` its % of the step.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import OmegaConf
from torch import nn

from normbench import models, norms
from normbench.bench import clocks, speed
from normbench.errors import UsageError
from normbench.specs import SpeedJob

log = logging.getLogger("normbench")

# Norms over (N, C, *spatial) that a registered norm can stand in for: torch.nn's BatchNorm*d and
# InstanceNorm*d (_NormBase), GroupNorm, and normbench's own. torch.nn.LayerNorm normalizes the last
# dimensions of (N, ..., C), not C at dim 1, so it is left in place.
SWAPPABLE = (nn.modules.batchnorm._NormBase, nn.GroupNorm, norms.Norm)


@dataclass(frozen=True)
class LayerInput:
    """What a norm layer was called with: shape, dtype and layout (contiguous, channels_last, strided)."""

    shape: tuple[int, ...]
    dtype: torch.dtype
    layout: str


def model_name(job: SpeedJob) -> str:
    """The model as rows name it (resnet20, resnet50), as the accuracy job names it."""
    return models.name_of(job.model)


def num_features(module: nn.Module) -> int:
    return module.num_channels if isinstance(module, nn.GroupNorm) else module.num_features


def swap_norms(model: nn.Module, make) -> list[str]:
    """Replace every swappable norm layer of `model` by `make(channels)`; return their names, in order."""
    names = [name for name, m in model.named_modules() if isinstance(m, SWAPPABLE) and name]
    for name in names:
        parent, _, child = name.rpartition(".")
        owner = model.get_submodule(parent) if parent else model
        setattr(owner, child, make(num_features(owner.get_submodule(child))))
    return names


def capture_inputs(model: nn.Module, x: torch.Tensor, names: list[str]) -> dict[LayerInput, list[str]]:
    """One forward with a hook on each named layer: each distinct input -> the layers that took it."""
    seen: dict[LayerInput, list[str]] = {}

    def hook(name):
        def record(module, args):
            t = args[0]
            seen.setdefault(LayerInput(tuple(t.shape), t.dtype, speed.layout_of(t)), []).append(name)

        return record

    handles = [model.get_submodule(n).register_forward_pre_hook(hook(n)) for n in names]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    return seen


def build_model(job: SpeedJob, dtype: torch.dtype, device: torch.device) -> tuple[nn.Module, list[str]]:
    """The model with job.norm x job.impl in place of its norm layers, in training mode on `device`."""
    node = OmegaConf.create(job.model)
    model = models.from_config(node, key="shape.model", example="normbench.models.resnet20")
    # The norm node alone gives the options: norm.groups, 8 for resnet20 (shape.model.norm_groups).
    names = swap_norms(
        model, lambda c: norms.build_from_config(job.norm_node, c, impl=job.impl, device=device, dtype=dtype)
    )
    if not names:
        raise UsageError(
            f"model {node.get('_target_')} has no norm layer normbench can swap (BatchNorm*d, InstanceNorm*d, "
            "GroupNorm or a normbench norm): pick a model with some"
        )
    model = model.to(device=device, dtype=dtype).train()
    if job.layout == "channels_last":
        model = model.to(memory_format=torch.channels_last)
    return model, names


def model_input(job: SpeedJob, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A batch of speed.batch_size random samples of shape.input (C, *spatial), in the job's layout."""
    sample = job.model_input or ()
    if not sample or any(s < 1 for s in sample):
        raise UsageError(f"shape.input must be one sample's (C, *spatial), all > 0, got {list(sample)}: e.g. [3,32,32]")
    x = speed.make_input((job.batch_size, *sample), dtype, job.layout, device)
    return x.detach()  # the step needs no input gradient: a network's input is data


def time_model(job: SpeedJob, dtype: torch.dtype, device: torch.device, peak_dir: Path) -> list[dict]:
    """Rows for every distinct norm input of the model (per pass), then one row for the whole step."""
    torch.manual_seed(job.seed)  # the same weights and input for every norm and implementation
    model, names = build_model(job, dtype, device)
    x = model_input(job, dtype, device)
    try:
        inputs = capture_inputs(model, x, names)
    except UsageError as exc:
        raise UsageError(f"norm={job.norm} cannot run in model {model_name(job)}: {exc}") from None
    name = model_name(job)
    log.info("%s: %d norm layers, %d distinct inputs", name, len(names), len(inputs))
    pk, rows = None, []
    for i, (inp, layers) in enumerate(sorted(inputs.items(), key=lambda kv: -len(kv[1]))):
        layer = norms.build_from_config(job.norm_node, inp.shape[1], impl=job.impl, device=device, dtype=inp.dtype)
        layer = layer.train()
        layout = inp.layout if inp.layout in speed.LAYOUTS else "contiguous"  # a strided view: timed contiguous
        lx = speed.make_input(inp.shape, inp.dtype, layout, device)
        first_call_s = speed.first_call(layer, lx)
        pk = pk or speed.peak(job, device, peak_dir)
        extra = {"model": name, "layers": len(layers), "layer_names": " ".join(layers)}
        # The wrapper costs the same at every shape: measured once, at the first.
        rows += speed.time_layer(
            job, layer, lx, job.passes, pk, first_call_s, extra=extra, wrapper=job.impl == "native" and i == 0
        )
    rows.append(step_row(job, model, x, names, rows))
    return rows


def step_row(job: SpeedJob, model: nn.Module, x: torch.Tensor, names: list[str], layer_rows: list[dict]) -> dict:
    """The model's forward + backward, timed as a whole (no optimizer step; conv and the rest eager)."""
    # Every layer checked its input in the capturing forward; inside the step the norm layers skip
    # those checks, as the per-layer rows do, so the step holds what a torch.nn model would run.
    layers = [model.get_submodule(n) for n in names]
    for m in layers:
        m.check_inputs = False
    try:
        start = time.perf_counter()
        out = model(x)
        dy = torch.randn_like(out)
        out.backward(dy)  # the first step compiles impl=compiled where a layer's graph is new
        if x.device.type == "cuda":
            torch.cuda.synchronize(x.device)
        first_call_s = time.perf_counter() - start
        params = [p for p in model.parameters() if p.requires_grad]

        def step():
            model(x).backward(dy)

        with clocks.preserved_buffers(model):  # BatchNorm's running statistics as before the step
            timed = speed.time_pass(job.timing, lambda i: (step, params), x.device, "the step")
    except clocks.CaptureFailed as exc:
        timed = {"status": "skipped", "error": str(exc)}
        log.warning("%s step with %s %s skipped: %s", model_name(job), job.norm, job.impl, str(exc))
    finally:
        for m in layers:
            m.check_inputs = True
    share = norm_ms(layer_rows)
    row = {
        **speed.base_row(job, tuple(x.shape), x.device),
        "model": model_name(job),
        "layers": len(names),
        "pass": "step",
        **timed,
        "compile_s": first_call_s if job.impl == "compiled" else None,
        "norm_ms": share,
        "norm_share": None if share is None or "device_ms" not in timed else 100 * share / timed["device_ms"],
    }
    if "device_ms" not in timed:
        return row
    log.info(
        "%s step with %s %s: %.3f ms device, norm layers ~%s ms",
        row["model"],
        row["norm"],
        row["impl"],
        row["device_ms"],
        "?" if share is None else f"{share:.3f}",
    )
    return row


def norm_ms(layer_rows: list[dict]) -> float | None:
    """The norm layers' device time in one step: per distinct input, fwdbwd (else fwd + bwd) x layers,
    summed; None where a pass needed was skipped."""
    per_pass: Counter = Counter()
    have: dict[str, set] = {}
    for r in layer_rows:
        if r["pass"] in speed.PASSES and "device_ms" in r:
            per_pass[r["pass"]] += r["device_ms"] * r["layers"]
            have.setdefault(r["pass"], set()).add(r["shape"])
    shapes = {r["shape"] for r in layer_rows}
    if have.get("fwdbwd") == shapes:
        return per_pass["fwdbwd"]
    if have.get("fwd") == shapes and have.get("bwd") == shapes:
        return per_pass["fwd"] + per_pass["bwd"]
    return None
