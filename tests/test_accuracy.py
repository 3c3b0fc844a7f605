"""The accuracy job: a full tiny run through Hydra's compose API, per-worker invariance, reproducibility,
batch-statistics evaluation, and every bad input of issue 4."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest
import torch
from hydra import compose, initialize_config_module
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import open_dict

from normbench import accuracy, cli, models, norms
from normbench.errors import UsageError

# A synthetic task small enough for a run in well under a second.
TINY = [
    "dataset=synthetic", "dataset.train_size=128", "dataset.test_size=64", "device=cpu",
    "accuracy.epochs=2", "accuracy.progress=false",
]

COLUMNS = ["kind", "norm", "impl", "dataset", "model", "batch_size", "workers", "global_batch", "lr", "epochs",
           "seed", "test_acc", "test_acc_batch_stats", "train_loss", "wall_s", "samples_per_s", "device"]


def config(*overrides: str, hydra: bool = False, base: list[str] = TINY):
    with initialize_config_module("normbench.conf", version_base="1.3"):
        return compose(config_name="accuracy", overrides=base + list(overrides), return_hydra_config=hydra)


def train(tmp_path, *overrides: str) -> tuple[dict, pd.DataFrame]:
    [row] = accuracy.run(config(*overrides), tmp_path)
    return row, pd.read_csv(tmp_path / accuracy.CURVE_FILE)


def hydra_job(tmp_path, *overrides: str, mode: RunMode = RunMode.RUN):
    """Compose as the app does and install the Hydra config, so `cli.run_job` runs as under Hydra."""
    cfg = config(*overrides, hydra=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(tmp_path)
        cfg.hydra.mode = mode
        cfg.hydra.job.num = 0
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg


def test_full_tiny_run_through_hydra_writes_rows_and_curve(tmp_path):
    cfg = hydra_job(tmp_path, "norm=bn", "accuracy.batch_size=8", "accuracy.workers=2")
    cli.run_job(accuracy.run, cfg)
    rows = pd.read_csv(tmp_path / "rows.csv")
    assert set(COLUMNS) <= set(rows.columns) and len(rows) == 1
    row = rows.iloc[0]
    assert (row.kind, row.norm, row.dataset, row.model, row.global_batch) == ("accuracy", "bn", "synthetic", "cnn1d", 16)
    assert row.lr == pytest.approx(0.1 * 16 / 64)  # the linear scaling rule from the stated reference
    assert row.test_acc > 0.5 and 0 <= row.test_acc_batch_stats <= 1  # 4 classes: chance is 0.25
    assert row.samples_per_s > 0 and row.wall_s > 0
    curve = pd.read_csv(tmp_path / accuracy.CURVE_FILE)
    assert curve.epoch.tolist() == [1, 2] and curve.train_loss.iloc[-1] == pytest.approx(row.train_loss)
    assert curve.train_loss.iloc[1] < curve.train_loss.iloc[0]


@pytest.mark.parametrize("norm", ["ln", "in", "gn"])
def test_per_sample_norms_do_not_see_the_per_worker_split(tmp_path, norm):
    a, curve_a = train(tmp_path / "a", f"norm={norm}", "accuracy.batch_size=4", "accuracy.workers=4")
    b, curve_b = train(tmp_path / "b", f"norm={norm}", "accuracy.batch_size=16", "accuracy.workers=1")
    assert a["lr"] == b["lr"]
    for key in ("test_acc", "train_loss", "train_acc"):
        assert a[key] == b[key], key
    assert curve_a.train_loss.tolist() == curve_b.train_loss.tolist()
    assert math.isnan(a["test_acc_batch_stats"])


def test_batchnorm_does_see_the_per_worker_split(tmp_path):
    a, _ = train(tmp_path / "a", "norm=bn", "accuracy.batch_size=4", "accuracy.workers=4")
    b, _ = train(tmp_path / "b", "norm=bn", "accuracy.batch_size=16", "accuracy.workers=1")
    assert a["lr"] == b["lr"] and a["train_loss"] != b["train_loss"]


def test_same_seed_same_result_other_seed_other_result(tmp_path):
    first, curve1 = train(tmp_path / "1", "norm=bn", "accuracy.batch_size=4", "accuracy.workers=2", "seed=3")
    second, curve2 = train(tmp_path / "2", "norm=bn", "accuracy.batch_size=4", "accuracy.workers=2", "seed=3")
    other, _ = train(tmp_path / "3", "norm=bn", "accuracy.batch_size=4", "accuracy.workers=2", "seed=4")
    timing = {"wall_s", "samples_per_s"}
    assert {k: v for k, v in first.items() if k not in timing} == {k: v for k, v in second.items() if k not in timing}
    assert curve1.drop(columns="wall_s").equals(curve2.drop(columns="wall_s"))
    assert other["train_loss"] != first["train_loss"]


def test_resnet20_on_augmented_images_runs(tmp_path):
    row, _ = train(tmp_path, "model=resnet20", "norm=gn", "dataset.shape=[3,8,8]", "dataset.augment=true",
                   "accuracy.batch_size=8", "accuracy.workers=2", "accuracy.epochs=1", "dataset.train_size=32",
                   "accuracy.warmup_epochs=0.5")
    assert row["model"] == "resnet20" and row["norm_options"] == "groups=8" and row["steps"] == 2


def test_batch_stats_accuracy_leaves_running_statistics_untouched():
    torch.manual_seed(0)
    model = models.build("cnn1d", input_shape=(1, 40), num_classes=3, norm=lambda c: norms.build("bn", c, virtual_batch=4))
    model.train()
    for _ in range(3):
        model(torch.randn(8, 1, 40))
    model.eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x, y = torch.randn(30, 1, 40), torch.randint(3, (30,))
    acc = accuracy.accuracy_with_batch_stats(model, x, y, 4, seed=0)  # 7 groups of 4, then a group of 2
    assert 0 <= acc <= 1
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not any(m.training for m in model.modules())
    assert all(m.virtual_batch == 4 for m in accuracy.batch_norms(model))
    # By hand: each shuffled group of 4 normalized by its own statistics.
    order = torch.randperm(30, generator=torch.Generator().manual_seed(0))
    xs, ys = x[order], y[order]
    for m in accuracy.batch_norms(model):
        m.track_running_stats = False  # batch statistics, no update (native impl)
    correct = sum((model(xs[i : i + 4]).argmax(1) == ys[i : i + 4]).sum().item() for i in range(0, 28, 4))
    for m in accuracy.batch_norms(model):
        m.virtual_batch = None
    correct += (model(xs[28:]).argmax(1) == ys[28:]).sum().item()
    assert acc == correct / 30


def test_lr_schedule_warms_up_then_anneals_to_zero():
    assert accuracy.scaled_lr(0.1, 128, 16) == pytest.approx(0.0125)
    assert [accuracy.lr_at(s, 10, 2) for s in (0, 1, 2)] == [0.5, 1.0, 1.0]
    assert accuracy.lr_at(10, 10, 2) == pytest.approx(0.0)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["accuracy.batch_size=0"], "accuracy.batch_size must be a positive int"),
        (["accuracy.workers=0"], "accuracy.workers must be a positive int"),
        (["accuracy.batch_size=64", "accuracy.workers=4"], "more than the 128 training samples"),
        (["model=mlp", "norm=bn", "accuracy.batch_size=1"], "accuracy.batch_size=1 x accuracy.workers=1, mlp: bn .* needs more than one"),
        (["dataset.name=imagenet"], "available: mnist1d, synthetic, cifar10"),
        (["model.name=vgg"], "available: cnn1d, resnet20, mlp"),
        (["norm=gn", "model.norm_options.gn.groups=5"], "model.norm_options.gn.groups"),
    ],
)
def test_bad_input_is_one_clear_usage_error(tmp_path, overrides, message):
    with pytest.raises(UsageError, match=message):
        accuracy.run(config(*overrides), tmp_path)


def test_cifar10_root_in_the_wrong_place_or_layout(tmp_path):
    cifar = ["dataset=cifar10", "model=resnet20", "device=cpu"]
    with pytest.raises(UsageError, match="does not exist"):
        accuracy.run(config("dataset.root=/nonexistent/cifar", base=cifar), tmp_path)
    (tmp_path / "images" / "cat").mkdir(parents=True)
    with pytest.raises(UsageError, match="ImageFolder layout"):
        accuracy.run(config(f"dataset.root={tmp_path / 'images'}", base=cifar), tmp_path)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_asked_for_but_absent(tmp_path):
    with pytest.raises(UsageError, match="device=cpu"):
        accuracy.run(config("device=cuda"), tmp_path)


def test_cifar10_without_network_or_root_says_how_to_get_data(tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "torchvision", None)
    with pytest.raises(UsageError, match="dataset.root"):
        accuracy.run(config("model=resnet20", f"dataset.download_dir={tmp_path}", base=["dataset=cifar10"]), tmp_path)


def test_a_failed_run_in_a_multirun_records_failure_and_returns(tmp_path):
    cfg = hydra_job(tmp_path, "accuracy.batch_size=0", mode=RunMode.MULTIRUN)
    cli.run_job(accuracy.run, cfg)  # does not raise: the sweep goes on
    failure = json.loads((tmp_path / "failure.json").read_text())
    assert "accuracy.batch_size must be a positive int" in failure["error"]
    assert not (tmp_path / "rows.csv").exists()


def test_the_default_sweep_is_in_the_config():
    cfg = config(hydra=True, base=[])
    params = cfg.hydra.sweeper.params
    assert params["norm"].split(",") == ["bn", "ln", "in", "gn"]
    assert [int(b) for b in params["accuracy.batch_size"].split(",")] == [2, 4, 8, 16, 32, 64]
    assert cfg.dataset.name == "mnist1d" and cfg.model.name == "cnn1d"
