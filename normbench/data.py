"""Datasets: `mnist1d` (the embedded default), `synthetic` (for tests) and `cifar10`, each a function
that conf/dataset/ names by `_target_` (a user's own is one more: docs/plugins.md).

Every loader returns a `Dataset`: float32 tensors standardized per channel with the training split's
statistics, integer labels, fixed seeded splits. Images are decoded once and kept as tensors (on the
training device when asked), batches are drawn by index, and augmentation (random crop with 4-pixel
padding, horizontal flip) runs on whole batches of tensors, never per image in Python.

    >>> data = load({"_target_": "normbench.data.synthetic", "shape": [1, 40]})
    >>> data.x_train.shape, data.num_classes
"""

from __future__ import annotations

import functools
import io
import pickle
import random
import warnings
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from normbench import plugins
from normbench.errors import UsageError

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")


@dataclass(frozen=True)
class Pixels:
    """Training images as stored, uint8 (N, C, H, W), and the standardization that made `x_train`
    from them: x_train = (pixels / 255 - mean) / std, per channel (the fast loop's source)."""

    train: Tensor
    mean: Tensor  # (1, C, 1, 1) float32
    std: Tensor

    def to(self, device: torch.device) -> Pixels:
        return Pixels(self.train.to(device), self.mean.to(device), self.std.to(device))

    def standardize(self, images: Tensor) -> Tensor:
        """uint8 images as the float data: the one formula both loops use, so their values are the same."""
        return images.float().div_(255).sub_(self.mean).div_(self.std)


@dataclass(frozen=True)
class Dataset:
    """A train and a test split, as tensors: x is (N, C, *spatial) float32, y is (N,) int64."""

    name: str
    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor
    num_classes: int
    augment: bool = False  # random crop with padding + horizontal flip at training time (images only)
    pixels: Pixels | None = None  # the uint8 images x_train was standardized from, where there are any

    def to(self, device: torch.device) -> Dataset:
        moved = {k: getattr(self, k).to(device) for k in ("x_train", "y_train", "x_test", "y_test")}
        return replace(self, **moved, pixels=self.pixels.to(device) if self.pixels is not None else None)


# ---------------------------------------------------------------------------------------------- loading


def load(cfg, device: torch.device | str = "cpu") -> Dataset:
    """The dataset a Hydra `dataset` node (or a plain dict) names by `_target_`, on `device`."""
    data = plugins.build(cfg, "dataset", "normbench.data.mnist1d", kind="dataset")
    if not isinstance(data, Dataset):
        raise UsageError(
            f"dataset._target_={cfg.get('_target_')} returned a {type(data).__name__}, not a normbench.data.Dataset "
            "(see docs/plugins.md)"
        )
    if data.augment and data.x_train.dim() != 4:
        raise UsageError(
            f"dataset {data.name} has no images ({tuple(data.x_train.shape[1:])} per sample), so it cannot be "
            "augmented by crop and flip: set dataset.augment=false"
        )
    return data.to(torch.device(device))


def channel_stats(x_train: Tensor) -> tuple[Tensor, Tensor]:
    """The training split's per-channel mean and std, shaped to broadcast over (N, C, *spatial)."""
    dims = [0] + list(range(2, x_train.dim()))
    return x_train.mean(dim=dims, keepdim=True), x_train.std(dim=dims, keepdim=True).clamp_min(1e-8)


def standardize(x_train: Tensor, x_test: Tensor) -> tuple[Tensor, Tensor]:
    """Per-channel standardization with the training split's mean and std (the test split never leaks in)."""
    mean, std = channel_stats(x_train)
    return (x_train - mean) / std, (x_test - mean) / std


def from_pixels(
    name: str, train: Tensor, y_train: Tensor, test: Tensor, y_test: Tensor, num_classes: int, augment: bool
) -> Dataset:
    """A dataset of uint8 (N, C, H, W) images: float copies in [0, 1] standardized per channel, and
    the pixels themselves for the fast loop (the same values: `Pixels` says how)."""
    pixels = Pixels(train, *channel_stats(train.float().div_(255)))
    x_train, x_test = pixels.standardize(train), pixels.standardize(test)
    return Dataset(name, x_train, y_train, x_test, y_test, num_classes, augment, pixels)


@functools.lru_cache(maxsize=4)  # a multirun trains many models in one process on the same data
def _mnist1d_arrays(num_samples: int, seed: int, train_split: float) -> tuple[np.ndarray, ...]:
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()  # the published MNIST-1D settings (Greydanus & Kobak, 2024)
    args.num_samples, args.seed, args.train_split = num_samples, seed, train_split
    # make_dataset seeds numpy's and Python's global generators; keep the caller's streams untouched.
    np_state, py_state = np.random.get_state(), random.getstate()
    try:
        d = make_dataset(args)  # generated from the package's templates: no download, no cache file
    finally:
        np.random.set_state(np_state)
        random.setstate(py_state)
    return d["x"], d["y"], d["x_test"], d["y_test"]


@plugins.register("dataset")
def mnist1d(num_samples: int = 5000, seed: int = 42, train_split: float = 0.8) -> Dataset:
    """MNIST-1D: ten 1-D digit templates, randomly padded, translated, sheared, scaled and noised.

    The published setting (5,000 samples, 4,000 train / 1,000 test, seed 42) is small but hard: a
    logistic regression scores ~32%, an MLP ~68%, a CNN ~94% (Greydanus & Kobak, "Scaling down deep
    learning with MNIST-1D", ICML 2024, Table 1), so norms and batch sizes can differ visibly.
    Input: (N, 1, 40).
    """
    for key, value in (("num_samples", num_samples), ("seed", seed)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise UsageError(
                f"dataset.{key} must be an int, got {value!r}: e.g. dataset.num_samples=5000 dataset.seed=42"
            )
    if isinstance(train_split, bool) or not isinstance(train_split, (int, float)):
        raise UsageError(f"dataset.train_split must be a number between 0 and 1, got {train_split!r}: e.g. 0.8")
    if num_samples < 20 or not 0 < train_split < 1:
        raise UsageError(
            f"mnist1d: num_samples must be >= 20 and 0 < train_split < 1, got {num_samples} and {train_split}"
        )
    xs, ys, xt, yt = _mnist1d_arrays(int(num_samples), int(seed), float(train_split))
    x_train, x_test = standardize(torch.from_numpy(xs).float().unsqueeze(1), torch.from_numpy(xt).float().unsqueeze(1))
    return Dataset("mnist1d", x_train, torch.from_numpy(ys).long(), x_test, torch.from_numpy(yt).long(), 10)


@plugins.register("dataset")
def synthetic(
    num_classes: int = 4,
    shape: list[int] | tuple[int, ...] = (1, 40),
    train_size: int = 256,
    test_size: int = 128,
    noise: float = 1.0,
    seed: int = 0,
    augment: bool = False,
    pixels: bool = False,
) -> Dataset:
    """Gaussian classes around seeded random prototypes: learnable in a few steps, for fast tests.
    `pixels`: stored as uint8 images (a sigmoid of each value, x 255), as CIFAR-10 is."""
    shape = tuple(int(s) for s in shape)
    if len(shape) not in (2, 3) or min(shape) < 1 or num_classes < 2 or train_size < 1 or test_size < 1:
        raise UsageError(
            "synthetic: shape must be [C, L] or [C, H, W] of positive sizes, num_classes >= 2 and the "
            f"split sizes >= 1; got shape={list(shape)}, num_classes={num_classes}, "
            f"train_size={train_size}, test_size={test_size}"
        )
    g = torch.Generator().manual_seed(seed)
    prototypes = torch.randn((num_classes, *shape), generator=g)

    def draw(n: int) -> tuple[Tensor, Tensor]:
        y = torch.randint(num_classes, (n,), generator=g)
        return prototypes[y] + noise * torch.randn((n, *shape), generator=g), y

    (x_train, y_train), (x_test, y_test) = draw(train_size), draw(test_size)
    if pixels:
        if len(shape) != 3:
            raise UsageError(f"synthetic: pixels=true makes images, which need shape [C, H, W], got {list(shape)}")
        to_u8 = lambda x: x.sigmoid().mul(255).round().to(torch.uint8)  # noqa: E731
        return from_pixels("synthetic", to_u8(x_train), y_train, to_u8(x_test), y_test, num_classes, augment)
    x_train, x_test = standardize(x_train, x_test)
    return Dataset("synthetic", x_train, y_train, x_test, y_test, num_classes, augment=augment)


@plugins.register("dataset")
def cifar10(
    root: str | None = None,
    download_dir: str = ".data",
    train_per_class: int | None = None,
    test_per_class: int | None = None,
    augment: bool = True,
) -> Dataset:
    """CIFAR-10 (Krizhevsky 2009): 10 classes of 32x32 RGB images, 50,000 train / 10,000 test.

    From `root` when given: a folder, or a .zip of one, in the ImageFolder layout
    (`train/<class>/*.jpg`, `test/<class>/*.jpg`), e.g. ../shared/data/cifar10-jpeg.zip. Otherwise from
    torchvision's copy in `download_dir`, downloaded when missing (needs torchvision and network).
    `train_per_class` / `test_per_class` keep the first images of each class, for quick runs.
    """
    for key, value in (("train_per_class", train_per_class), ("test_per_class", test_per_class)):
        if value is not None and (not isinstance(value, int) or value < 1):
            raise UsageError(f"cifar10: {key} must be a positive int or null (all images), got {value!r}")
    if root:
        arrays = _image_folder_arrays(str(root), train_per_class, test_per_class)
    else:
        arrays = _torchvision_cifar10_arrays(Path(download_dir), train_per_class, test_per_class)
    xs, ys, xt, yt = arrays
    chw = lambda a: torch.from_numpy(a).permute(0, 3, 1, 2).contiguous()  # noqa: E731  uint8 HWC -> CHW
    return from_pixels("cifar10", chw(xs), torch.from_numpy(ys), chw(xt), torch.from_numpy(yt), 10, augment)


# ------------------------------------------------------------------------------------- image folders


def _layout_error(root: str, detail: str) -> UsageError:
    return UsageError(
        f"dataset.root={root} is not in the ImageFolder layout ({detail}): it must hold "
        "train/<class>/*.jpg and test/<class>/*.jpg (directly or inside one top folder), as a folder "
        "or a .zip of one, e.g. dataset.root=../shared/data/cifar10-jpeg.zip"
    )


class _Tree:
    """Read access to an ImageFolder tree that is a directory or a .zip, through relative paths."""

    def __init__(self, root: str):
        self.root = root
        path = Path(root).expanduser()
        if not path.exists():
            raise UsageError(
                f"dataset.root={root} does not exist: point it at a folder (or .zip) holding "
                "train/<class>/*.jpg and test/<class>/*.jpg, or leave it unset to download with torchvision"
            )
        if path.is_file():
            if not zipfile.is_zipfile(path):
                raise _layout_error(root, "a file that is not a .zip")
            self.zip = zipfile.ZipFile(path)
            self.files = [n for n in self.zip.namelist() if not n.endswith("/")]
        else:
            self.zip = None
            self.dir = path
            self.files = [str(p.relative_to(path)) for p in path.rglob("*") if p.is_file()]

    def read(self, name: str) -> bytes:
        return self.zip.read(name) if self.zip is not None else (self.dir / name).read_bytes()


def _split_files(tree: _Tree, split: str) -> dict[str, list[str]]:
    """{class: sorted image paths} of one split, found at <top>/split/<class>/<file> with <top> optional."""
    by_class: dict[str, list[str]] = {}
    for name in tree.files:
        parts = Path(name).parts
        if len(parts) >= 3 and parts[-3] == split and len(parts) <= 4 and name.lower().endswith(IMAGE_SUFFIXES):
            by_class.setdefault(parts[-2], []).append(name)
    return {c: sorted(files) for c, files in sorted(by_class.items())}


@functools.lru_cache(maxsize=2)  # decode once per process, however many runs of a sweep use it
def _image_folder_arrays(root: str, train_per_class: int | None, test_per_class: int | None):
    from PIL import Image  # pillow comes with matplotlib; torchvision is not needed to read folders

    tree = _Tree(root)
    splits = {s: _split_files(tree, s) for s in ("train", "test")}
    for split, by_class in splits.items():
        if not by_class:
            raise _layout_error(root, f"no images under {split}/<class>/")
    if list(splits["train"]) != list(splits["test"]):
        raise _layout_error(root, f"train has classes {list(splits['train'])} but test has {list(splits['test'])}")
    if len(splits["train"]) > len(CIFAR10_CLASSES):  # labels past 9 would reach a 10-class model
        names = list(splits["train"])
        raise _layout_error(
            root, f"{len(names)} classes under train/ ({', '.join(names[:12])}), more than CIFAR-10's 10"
        )
    out = []
    for split, limit in (("train", train_per_class), ("test", test_per_class)):
        images, labels = [], []
        for label, files in enumerate(splits[split].values()):
            for name in files[:limit]:
                images.append(_decode(tree, name, Image))
                labels.append(label)
        shapes = {a.shape for a in images}
        if len(shapes) != 1:
            raise _layout_error(root, f"images of different sizes {sorted(shapes)[:3]} in {split}/")
        out += [np.stack(images), np.asarray(labels, dtype=np.int64)]
    return tuple(out)


def _decode(tree: _Tree, name: str, image_module) -> np.ndarray:
    """One image as an RGB array; a file that cannot be read or decoded is named in the error."""
    try:
        # An image declaring more pixels than PIL's MAX_IMAGE_PIXELS is a decompression bomb: its
        # warning (over the limit) becomes the error it raises at twice the limit, before decoding.
        with warnings.catch_warnings():
            warnings.simplefilter("error", image_module.DecompressionBombWarning)
            with image_module.open(io.BytesIO(tree.read(name))) as im:
                return np.asarray(im.convert("RGB"))
    except (image_module.DecompressionBombWarning, image_module.DecompressionBombError) as exc:
        raise UsageError(
            f"dataset.root={tree.root}: {name} is not a CIFAR-sized image ({exc}): replace or remove that file"
        ) from None
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:  # truncated, corrupt, bad CRC
        raise UsageError(
            f"dataset.root={tree.root}: cannot read {name} ({type(exc).__name__}: {exc}): replace or remove that file"
        ) from None


class _CifarUnpickler(pickle.Unpickler):
    """Unpickles what a CIFAR-10 python batch holds (a dict of numpy arrays, lists, bytes and strings)
    and nothing else: a pickle naming any other class or function could run code, so it is refused."""

    ALLOWED = frozenset(
        {
            ("numpy", "ndarray"),
            ("numpy", "dtype"),
            ("numpy.core.multiarray", "_reconstruct"),
            ("numpy._core.multiarray", "_reconstruct"),
            ("_codecs", "encode"),  # how protocol 2 spells bytes from Python 3: text in, bytes out
        }
    )

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"it names {module}.{name}, which a CIFAR-10 batch never holds")
        return super().find_class(module, name)


def read_cifar_batch(path: Path) -> dict:
    """One CIFAR-10 python batch (`data_batch_1`, ...): a dict with `data` and `labels`, read without
    running any code the file might carry."""
    try:
        with open(path, "rb") as f:
            d = _CifarUnpickler(f, encoding="latin1").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as exc:
        raise UsageError(f"{path} is not a CIFAR-10 batch ({exc}): delete it and download again") from None
    if not isinstance(d, dict) or "data" not in d or "labels" not in d:
        raise UsageError(f"{path} is not a CIFAR-10 batch (no 'data' and 'labels'): delete it and download again")
    return d


def _torchvision_cifar10_arrays(download_dir: Path, train_per_class: int | None, test_per_class: int | None):
    batches = download_dir / "cifar-10-batches-py"
    if not batches.is_dir():
        how = (
            "get the data one of two ways: run once with network and torchvision installed "
            f"(it downloads to dataset.download_dir={download_dir}), or set dataset.root to a folder or "
            ".zip in the ImageFolder layout (train/<class>/*.jpg, test/<class>/*.jpg), e.g. "
            "dataset.root=../shared/data/cifar10-jpeg.zip"
        )
        try:
            from torchvision.datasets import CIFAR10  # only for downloading; reading needs no torchvision
        except Exception as exc:
            raise UsageError(
                f"cifar10 is not in {batches} and torchvision is unavailable ({type(exc).__name__}): {how}"
            ) from None
        try:
            CIFAR10(str(download_dir), train=True, download=True)
        except Exception as exc:
            raise UsageError(f"cifar10 download failed ({type(exc).__name__}: {exc}); {how}") from None

    def read(names: list[str], limit: int | None):
        xs, ys = [], []
        for name in names:
            d = read_cifar_batch(batches / name)
            xs.append(np.asarray(d["data"], dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
            ys.append(np.asarray(d["labels"], dtype=np.int64))
        x, y = np.concatenate(xs), np.concatenate(ys)
        if limit is not None:  # the first `limit` images of each class, in file order
            keep = np.concatenate([np.flatnonzero(y == c)[:limit] for c in range(10)])
            keep.sort()
            x, y = x[keep], y[keep]
        return x, y

    train = read([f"data_batch_{i}" for i in range(1, 6)], train_per_class)
    test = read(["test_batch"], test_per_class)
    return (*train, *test)


# ---------------------------------------------------------------------------------------------- batches


def train_batches(data: Dataset, batch: int, generator: torch.Generator) -> Iterator[tuple[Tensor, Tensor]]:
    """One epoch of shuffled training batches of exactly `batch` samples (the remainder is dropped, so
    every step holds full per-worker batches), augmented when the dataset says so."""
    n = data.x_train.shape[0]
    order = torch.randperm(n, generator=generator).to(data.x_train.device)
    for start in range(0, n - batch + 1, batch):
        idx = order[start : start + batch]
        x = data.x_train[idx]
        if data.augment:
            x = augment(x, generator)
        yield x, data.y_train[idx]


def augment(x: Tensor, generator: torch.Generator, padding: int = 4) -> Tensor:
    """Random crop with `padding` zero pixels and random horizontal flip, for a whole (N, C, H, W) batch.

    The standard CIFAR augmentation (He et al. 2016, Sec. 4.2). Offsets and flips are drawn on the CPU
    generator (reproducible on any device) and applied with one gather, not per image in Python.
    """
    n, _, h, w = x.shape
    offsets = torch.randint(0, 2 * padding + 1, (2, n), generator=generator).to(x.device)
    flip = (torch.rand(n, generator=generator) < 0.5).to(x.device)
    padded = torch.nn.functional.pad(x, (padding,) * 4)
    rows = (offsets[0, :, None] + torch.arange(h, device=x.device)).view(n, 1, h, 1)
    cols = offsets[1, :, None] + torch.arange(w, device=x.device)
    cols = torch.where(flip[:, None], cols.flip(1), cols).view(n, 1, 1, w)
    batch = torch.arange(n, device=x.device).view(n, 1, 1, 1)
    channel = torch.arange(x.shape[1], device=x.device).view(1, -1, 1, 1)
    return padded[batch, channel, rows, cols]
