"""scripts/gpu_data.py: the lent-GPU run's CIFAR-10 subset holds the images `train_per_class` /
`test_per_class` keep, bytes unchanged, and the payload check counts what the run tool sends."""

from __future__ import annotations

import importlib.util
import io
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_module
from PIL import Image

from normbench import data as datasets

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "gpu_data.py"


@pytest.fixture(scope="module")
def gpu_data():
    spec = importlib.util.spec_from_file_location("gpu_data", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_data"] = module
    spec.loader.exec_module(module)
    return module


def jpeg(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG")
    return buffer.getvalue()


def test_the_subset_is_the_first_images_per_class_that_train_per_class_keeps(gpu_data, tmp_path):
    source, target = tmp_path / "full.zip", tmp_path / "sub" / "subset.zip"
    with zipfile.ZipFile(source, "w") as z:  # written out of order: the subset must sort
        for i, (split, cls, n) in enumerate(
            (s, c, n) for s, per in (("train", 5), ("test", 3)) for c in ("cat", "dog") for n in range(per)[::-1]
        ):
            z.writestr(f"top/{split}/{cls}/{n:04d}.jpg", jpeg(i))
        z.writestr("top/README.txt", "not an image")
    assert gpu_data.write_subset(source, target, train_per_class=2, test_per_class=1) == 6
    with zipfile.ZipFile(target) as sub, zipfile.ZipFile(source) as full:
        names = sub.namelist()
        assert sorted(names) == [
            *(f"top/test/{c}/0000.jpg" for c in ("cat", "dog")),
            *(f"top/train/{c}/{n:04d}.jpg" for c in ("cat", "dog") for n in (0, 1)),
        ]
        assert all(sub.read(n) == full.read(n) for n in names)  # the JPEG bytes, not re-encoded
    assert not target.with_name("subset.zip.partial").exists()
    # What the run loads from the subset is what the full zip gives with the same per-class keys.
    small = datasets.cifar10(root=str(target), augment=False)
    cut = datasets.cifar10(root=str(source), train_per_class=2, test_per_class=1, augment=False)
    for key in ("x_train", "y_train", "x_test", "y_test"):
        assert torch.equal(getattr(small, key), getattr(cut, key)), key


def test_the_experiment_names_the_subset_the_script_builds(gpu_data):
    root, train, test = gpu_data.subset_spec()
    with initialize_config_module("normbench.conf", version_base="1.3"):
        cfg = compose(config_name="accuracy", overrides=["+experiment=cifar10_resnet20_gpu_subset"])
    assert gpu_data.ROOT / cfg.dataset.root == root and root.parent.name == ".gpu-data"
    assert (cfg.dataset.train_per_class, cfg.dataset.test_per_class) == (train, test) == (800, 500)
    assert cfg.accuracy.global_batch == 128 and cfg.accuracy.fast_path  # the rest is the full experiment's
    # Ignored by git (exit 0, else CalledProcessError): never committed, not sent twice as untracked.
    subprocess.run(["git", "check-ignore", "-q", str(root)], cwd=gpu_data.ROOT, check=True)


def test_the_payload_check_counts_tracked_untracked_and_carried_files_only(gpu_data, tmp_path):
    def git(*args):
        subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True)

    git("init", "-q")
    (tmp_path / ".gitignore").write_bytes(b"/big/\n/carry/\n")  # 14 bytes, untracked
    (tmp_path / "tracked.bin").write_bytes(b"t" * 1000)
    git("add", "tracked.bin")
    (tmp_path / "new.txt").write_bytes(b"n" * 500)
    (tmp_path / "big").mkdir()
    (tmp_path / "big" / "ignored.bin").write_bytes(b"i" * 300)
    (tmp_path / "carry" / "deep").mkdir(parents=True)
    (tmp_path / "carry" / "deep" / "a.whl").write_bytes(b"c" * 200)
    (tmp_path / "one.zip").write_bytes(b"z" * 50)  # a carried file (and untracked: counted in the tree)
    assert gpu_data.travelling_bytes(tmp_path, ["carry"]) == (1514 + 50, 200)
    assert gpu_data.travelling_bytes(tmp_path, ["carry", "big"]) == (1564, 500)

    mib = 2**20
    assert gpu_data.over_limit(40 * mib, 16 * mib) is None  # 56 = 64 - 8: just fits
    error = gpu_data.over_limit(40 * mib, 16 * mib + 1)
    assert error.startswith("error: checkout 40.0 MiB + carried 16.0 MiB") and "\n" not in error
    assert "lower dataset.train_per_class" in error and "cifar10_resnet20_gpu_subset.yaml" in error
