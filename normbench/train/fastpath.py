"""The fast training loop (`accuracy.fast_path=true`): the same protocol and rows as the standard loop,
with the per-step costs that do not belong to the model taken out (docs/accuracy.md, "The fast path").

- The training images stay on the device as one uint8 tensor (`Dataset.pixels`), standardized per
  batch as the standard loop's float copy was, bit for bit; data without pixels (MNIST-1D) stays float.
- Batches are drawn by index: one permutation per epoch from the same CPU generator as the standard
  loop (so every step, and every worker's chunk of K, holds the same samples), moved once per epoch.
- Augmentation (random crop with padding 4 + horizontal flip) draws one epoch's offsets and flips on
  that CPU generator at once (the same on every device) and applies them on the device as one gather.
- `channels_last` for 4-D inputs, bf16 autocast (`accuracy.precision=bf16`) of convolutions and linear
  layers with every norm layer computing in float32, and `torch.compile` of the model's training
  forward (`accuracy.compile=true`). Evaluation and PreciseBN use the eager model, as before.

Nothing here changes what a norm computes: a norm sees float32 input in any precision, the same
samples per normalization batch, and its own implementation (compiled or not, the same function).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import replace

import torch
from torch import Tensor, nn

from normbench import data as datasets
from normbench.errors import Unsupported
from normbench.norms.registry import NORMS
from normbench.specs import FastPath

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16}
# torch.compile's backend; a test swaps it for a cheap (or a failing) one.
BACKEND: str | Callable = "inductor"


def for_data(opts: FastPath, images: bool) -> FastPath:
    """`opts` for the job's data: channels_last applies to images only."""
    return replace(opts, channels_last=opts.channels_last and images)


def check_device(opts: FastPath, device: torch.device) -> None:
    """Unsupported (a skipped row with the reason) where the device cannot train in `opts.precision`."""
    if opts.precision != "bf16":
        return
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise Unsupported(f"accuracy.precision=bf16: {torch.cuda.get_device_name(device)} has no bfloat16 support")
    if device.type == "cpu" and not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        raise Unsupported("accuracy.precision=bf16: this CPU has no bfloat16 instructions (oneDNN says so)")


# ------------------------------------------------------------------------------------------------ data


class DeviceBatches:
    """A dataset's training split on the device, served by index as the standard loop serves it."""

    def __init__(self, data: datasets.Dataset, channels_last: bool = True):
        self.data = data
        self.pixels = data.pixels  # augment implies images: datasets.load checks it
        self.channels_last = channels_last and data.x_train.dim() == 4  # a layout of images

    def take(self, idx: Tensor, offsets: Tensor | None = None, flips: Tensor | None = None) -> Tensor:
        """Standardized samples `idx`, cropped at `offsets` (2, n; each 0..2 x PADDING) and mirrored
        where `flips` when given: one gather from the stored tensor, then (pixels) the standardization."""
        source = self.data.x_train if self.pixels is None else self.pixels.train
        x = source[idx] if offsets is None else crop_flip(source, idx, offsets, flips)
        if self.pixels is not None:  # the same ops as the float copy was made with: the same values
            x = self.pixels.standardize(x)
        if offsets is not None:  # the padding is 0 after standardization, as in the standard loop
            x = x.masked_fill_(~inside(offsets, flips, x.shape[-2:]), 0.0)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def epoch(self, batch: int, generator: torch.Generator) -> Iterator[tuple[Tensor, Tensor]]:
        """One epoch of `batch`-sample steps in `datasets.train_batches`' order (remainder dropped)."""
        n = self.data.x_train.shape[0]
        order = torch.randperm(n, generator=generator).to(self.data.x_train.device)
        crops = draw_crops(n, generator, order.device) if self.data.augment else None
        for start in range(0, n - batch + 1, batch):
            idx = order[start : start + batch]
            if crops is None:
                yield self.take(idx), self.data.y_train[idx]
            else:
                offsets, flips = crops
                step = slice(start, start + batch)
                yield self.take(idx, offsets[:, step], flips[step]), self.data.y_train[idx]


PADDING = 4  # He et al. 2016, Sec. 4.2: 4 pixels padded on each side, a random 32 x 32 crop


def draw_crops(n: int, generator: torch.Generator, device: torch.device) -> tuple[Tensor, Tensor]:
    """Offsets (2, n) in 0..2 x PADDING and flips (n,) for one epoch, drawn on the CPU generator."""
    offsets = torch.randint(0, 2 * PADDING + 1, (2, n), generator=generator)
    flips = torch.rand(n, generator=generator) < 0.5
    return offsets.to(device), flips.to(device)


def _positions(offsets: Tensor, flips: Tensor, size: tuple[int, int]) -> tuple[Tensor, Tensor]:
    """Source rows (n, H) and columns (n, W) of each crop in its image, before clamping: a crop at
    offset o of the PADDING-padded image starts at row o - PADDING; a flip reverses the columns."""
    h, w = size
    rows = offsets[0, :, None] - PADDING + torch.arange(h, device=offsets.device)
    cols = offsets[1, :, None] - PADDING + torch.arange(w, device=offsets.device)
    return rows, torch.where(flips[:, None], cols.flip(1), cols)


def crop_flip(source: Tensor, idx: Tensor, offsets: Tensor, flips: Tensor) -> Tensor:
    """Images `idx` of `source` (N, C, H, W), cropped and flipped in one gather; a position in the
    padding reads the nearest edge pixel (`inside` masks those)."""
    _, c, h, w = source.shape
    n = idx.numel()
    rows, cols = _positions(offsets, flips, (h, w))
    rows, cols = rows.clamp(0, h - 1).view(n, 1, h, 1), cols.clamp(0, w - 1).view(n, 1, 1, w)
    channel = torch.arange(c, device=source.device).view(1, c, 1, 1)
    return source[idx.view(n, 1, 1, 1), channel, rows, cols]


def inside(offsets: Tensor, flips: Tensor, size: tuple[int, int]) -> Tensor:
    """(n, 1, H, W): true where a crop's pixel comes from the image, false where from the padding."""
    rows, cols = _positions(offsets, flips, size)
    ok_rows = (rows >= 0) & (rows < size[0])
    ok_cols = (cols >= 0) & (cols < size[1])
    return (ok_rows[:, :, None] & ok_cols[:, None, :]).unsqueeze(1)


# ----------------------------------------------------------------------------------------------- model


def _float32_input(module: nn.Module, args: tuple) -> tuple:
    return (args[0].float(), *args[1:])


def prepare(model: nn.Module, opts: FastPath, input_dim: int) -> tuple[Callable[[Tensor], Tensor], list]:
    """The training forward for `opts` (the model itself, or its compiled wrapper sharing its
    parameters) and the hooks it added. Norm layers get a hook that hands them float32 input, so
    under bf16 autocast their statistics and normalization stay float32 (autocast leaves their
    elementwise ops alone, and would otherwise feed them a bf16 convolution output)."""
    hooks = []
    if opts.channels_last and input_dim == 4:
        model.to(memory_format=torch.channels_last)
    if opts.precision != "fp32":
        norm_types = tuple(NORMS.values())
        hooks = [m.register_forward_pre_hook(_float32_input) for m in model.modules() if isinstance(m, norm_types)]
    forward = model
    if opts.compile:
        # A sweep's process trains model after model, each (norm, K) another graph: past dynamo's
        # recompile limit it would fall back to eager unnoticed. Inductor's on-disk cache still holds
        # the kernels of graphs it has seen.
        torch._dynamo.reset()
        forward = torch.compile(model, backend=BACKEND)
    return forward, hooks


def autocast(opts: FastPath, device: torch.device):
    dtype = PRECISIONS[opts.precision]
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


@contextlib.contextmanager
def compile_errors(opts: FastPath):
    """A torch.compile failure (dynamo's or inductor's, raised at the first forward or backward) as
    Unsupported: a skipped row with the reason; any other exception passes unchanged."""
    from torch._dynamo.exc import TorchDynamoException

    try:
        yield
    except TorchDynamoException as exc:
        if not opts.compile:
            raise
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        raise Unsupported(
            f"accuracy.compile=true: torch.compile failed ({type(exc).__name__}: {first}); "
            "train without it (accuracy.compile=false)"
        ) from None


def synchronized_time(device: torch.device) -> float:
    """time.perf_counter() once the device has finished its queued work."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()
