"""Datasets: the embedded MNIST-1D, synthetic, and the ImageFolder loader on trees the tests write."""

from __future__ import annotations

import random
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from normbench import data
from normbench.errors import UsageError

SHARED_CIFAR = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-jpeg.zip"


def test_mnist1d_is_generated_offline_with_fixed_split_and_leaves_global_rngs_alone():
    np.random.seed(123)
    random.seed(123)
    expected_np, expected_py = np.random.rand(), random.random()
    np.random.seed(123)
    random.seed(123)
    d = data.load({"_target_": "normbench.data.mnist1d", "num_samples": 400, "seed": 7, "train_split": 0.75})
    # make_dataset reseeds numpy and random globally; the loader must restore the caller's streams.
    assert np.random.rand() == expected_np and random.random() == expected_py
    assert d.x_train.shape == (300, 1, 40) and d.x_test.shape == (100, 1, 40)
    assert d.x_train.dtype == torch.float32 and d.y_train.dtype == torch.int64
    assert set(d.y_train.tolist()) == set(range(10)) and d.num_classes == 10
    # Standardized with the training split's own statistics.
    assert abs(d.x_train.mean().item()) < 1e-5 and abs(d.x_train.std().item() - 1) < 1e-3
    again = data.load({"_target_": "normbench.data.mnist1d", "num_samples": 400, "seed": 7, "train_split": 0.75})
    assert torch.equal(d.x_train, again.x_train) and torch.equal(d.y_test, again.y_test)
    other = data.load({"_target_": "normbench.data.mnist1d", "num_samples": 400, "seed": 8, "train_split": 0.75})
    assert not torch.equal(d.x_train, other.x_train)


def test_synthetic_is_seeded_and_learnable_shape():
    a = data.load(
        {"_target_": "normbench.data.synthetic", "shape": [3, 6, 6], "train_size": 20, "test_size": 10, "seed": 1}
    )
    b = data.load(
        {"_target_": "normbench.data.synthetic", "shape": [3, 6, 6], "train_size": 20, "test_size": 10, "seed": 1}
    )
    assert a.x_train.shape == (20, 3, 6, 6) and a.x_test.shape == (10, 3, 6, 6)
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_train, b.y_train)
    per_channel = a.x_train.transpose(0, 1).flatten(1)
    assert torch.allclose(per_channel.mean(1), torch.zeros(3), atol=1e-5)


def test_a_bad_dataset_node_is_one_clear_usage_error():
    with pytest.raises(
        UsageError, match=r"dataset._target_=normbench.data.imagenet could not be built \(ModuleNotFoundError"
    ):
        data.load({"_target_": "normbench.data.imagenet"})
    with pytest.raises(UsageError, match="takes no option 'colour'; its options are: num_classes, shape"):
        data.load({"_target_": "normbench.data.synthetic", "colour": "blue"})
    with pytest.raises(UsageError, match="dataset needs a _target_.*normbench.data.mnist1d"):
        data.load({"num_samples": 100})
    with pytest.raises(UsageError, match="dataset._target_=torch.zeros is not a dataset builder"):
        data.load({"_target_": "torch.zeros", "_args_": [2]})


def write_image_folder(root: Path, classes=("cat", "dog", "frog"), train=3, test=2, size=8) -> dict:
    """An ImageFolder tree of PNGs (lossless, so pixels can be checked) with a known pixel per image."""
    rng = np.random.default_rng(0)
    pixels = {}
    for split, count in (("train", train), ("test", test)):
        for c in classes:
            (root / split / c).mkdir(parents=True)
            for i in range(count):
                img = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
                Image.fromarray(img).save(root / split / c / f"{i:04d}.png")
                pixels[(split, c, i)] = img
    return pixels


def test_image_folder_loads_classes_in_sorted_order_with_limits(tmp_path):
    pixels = write_image_folder(tmp_path / "tree")
    arrays = data._image_folder_arrays(str(tmp_path / "tree"), None, None)
    x_train, y_train, x_test, _y_test = arrays
    assert x_train.shape == (9, 8, 8, 3) and x_test.shape == (6, 8, 8, 3)
    assert y_train.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]  # cat, dog, frog
    assert np.array_equal(x_train[4], pixels[("train", "dog", 1)])
    d = data.cifar10(root=str(tmp_path / "tree"), train_per_class=2, test_per_class=1)
    assert d.x_train.shape == (6, 3, 8, 8) and d.x_test.shape == (3, 3, 8, 8) and d.augment
    assert d.y_train.tolist() == [0, 0, 1, 1, 2, 2]


def test_image_folder_reads_a_zip_with_a_top_folder(tmp_path):
    write_image_folder(tmp_path / "cifar-small")
    archive = tmp_path / "small.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for path in sorted((tmp_path / "cifar-small").rglob("*.png")):
            z.write(path, Path("cifar-small") / path.relative_to(tmp_path / "cifar-small"))
    from_zip = data._image_folder_arrays(str(archive), None, None)
    from_dir = data._image_folder_arrays(str(tmp_path / "cifar-small"), None, None)
    for a, b in zip(from_zip, from_dir):
        assert np.array_equal(a, b)


@pytest.mark.skipif(not SHARED_CIFAR.is_file(), reason="the shared CIFAR-10 JPEG zip is not on this machine")
def test_real_cifar10_zip_subset():
    d = data.cifar10(root=str(SHARED_CIFAR), train_per_class=2, test_per_class=1)
    assert d.x_train.shape == (20, 3, 32, 32) and d.x_test.shape == (10, 3, 32, 32)
    assert d.y_train.tolist() == [c for c in range(10) for _ in range(2)]


def test_image_folder_bad_layouts_say_what_is_expected(tmp_path):
    (tmp_path / "flat").mkdir()
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "flat" / "a.png")
    with pytest.raises(UsageError, match=r"train/<class>/\*.jpg"):
        data.cifar10(root=str(tmp_path / "flat"))
    with pytest.raises(UsageError, match="does not exist"):
        data.cifar10(root=str(tmp_path / "missing"))
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(UsageError, match="not a .zip"):
        data.cifar10(root=str(tmp_path / "file.txt"))
    write_image_folder(tmp_path / "mismatch", classes=("a", "b"))
    (tmp_path / "mismatch" / "test" / "b").rename(tmp_path / "mismatch" / "test" / "c")
    with pytest.raises(UsageError, match="classes"):
        data.cifar10(root=str(tmp_path / "mismatch"))


def test_cifar10_without_data_or_torchvision_says_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torchvision", None)  # as on a machine without torchvision
    with pytest.raises(UsageError, match="dataset.root") as info:
        data.cifar10(download_dir=str(tmp_path))
    assert "torchvision" in str(info.value) and "network" in str(info.value)


def test_cifar10_reads_torchvisions_pickles_without_torchvision(tmp_path, monkeypatch):
    import pickle

    monkeypatch.setitem(sys.modules, "torchvision", None)
    batches = tmp_path / "cifar-10-batches-py"
    batches.mkdir()
    rng = np.random.default_rng(0)
    for name, n in [(f"data_batch_{i}", 20) for i in range(1, 6)] + [("test_batch", 20)]:
        labels = [i % 10 for i in range(n)]
        with open(batches / name, "wb") as f:
            pickle.dump({"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), "labels": labels}, f)
    d = data.cifar10(download_dir=str(tmp_path), train_per_class=3)
    assert d.x_train.shape == (30, 3, 32, 32) and d.x_test.shape == (20, 3, 32, 32)
    assert torch.bincount(d.y_train).tolist() == [3] * 10


def test_augment_is_a_padded_crop_or_its_mirror_of_each_image():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(6, 2, 5, 5)
    y = data.augment(x, g, padding=2)
    assert y.shape == x.shape
    padded = torch.nn.functional.pad(x, (2,) * 4)
    flips = 0
    for i in range(6):
        crops = [(padded[i, :, r : r + 5, c : c + 5], f) for r in range(5) for c in range(5) for f in (0, 1)]
        matches = [f for crop, f in crops if torch.equal(crop.flip(-1) if f else crop, y[i])]
        assert matches, f"sample {i} is not a padded crop of its input"
        flips += matches[0]
    assert 0 < flips < 6  # both mirrored and unmirrored crops occur (seeded draw)
    again = data.augment(x, torch.Generator().manual_seed(0), padding=2)
    assert torch.equal(y, again)  # seeded: same draws, same batch


def test_train_batches_are_full_shuffled_and_disjoint():
    d = data.load({"_target_": "normbench.data.synthetic", "train_size": 50, "test_size": 10})
    g = torch.Generator().manual_seed(0)
    batches = list(data.train_batches(d, 8, g))
    assert len(batches) == 6 and all(x.shape[0] == 8 for x, _ in batches)  # 50 // 8, remainder dropped
    rows = torch.cat([x for x, _ in batches]).flatten(1)
    assert torch.unique(rows, dim=0).shape[0] == 48
    assert not torch.equal(rows, d.x_train[:48].flatten(1))  # shuffled
