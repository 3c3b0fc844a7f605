"""The accuracy job: a full tiny run through Hydra's compose API, the two protocols, K-invariance of the
per-sample norms, reuse of one training across K, PreciseBN, reproducibility, and every bad input."""

from __future__ import annotations

import dataclasses
import json
import math
from enum import Enum

import numpy as np
import pandas as pd
import pytest
import torch
from hydra import compose, initialize_config_module
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, ListConfig, open_dict

from normbench import models, norms, specs
from normbench.app import cli
from normbench.errors import UsageError
from normbench.train import accuracy, lr_search, reuse

# A synthetic task small enough for a run in well under a second.
TINY = [
    "dataset=synthetic",
    "dataset.train_size=128",
    "dataset.test_size=64",
    "device=cpu",
    "accuracy.epochs=2",
    "accuracy.progress=false",
    "accuracy.precise_bn_samples=64",
]

COLUMNS = [
    "kind",
    "norm",
    "impl",
    "dataset",
    "model",
    "protocol",
    "norm_batch",
    "workers",
    "global_batch",
    "lr",
    "epochs",
    "steps",
    "seed",
    "test_acc",
    "test_acc_precise_bn",
    "test_acc_batch_stats",
    "precise_bn_samples",
    "train_loss",
    "reused_from",
    "wall_s",
    "samples_per_s",
    "device",
]
TIMING = {"wall_s", "samples_per_s"}


def config(*overrides: str, hydra: bool = False, base: list[str] = TINY):
    with initialize_config_module("normbench.conf", version_base="1.3"):
        return compose(config_name="accuracy", overrides=base + list(overrides), return_hydra_config=hydra)


def train(tmp_path, *overrides: str, shared=None) -> tuple[dict, pd.DataFrame]:
    [row] = accuracy.run(config(*overrides), tmp_path, shared_dir=shared)
    return row, pd.read_csv(tmp_path / accuracy.CURVE_FILE)


def same_row(a: dict, b: dict, ignore: set) -> bool:
    """Equal in every column but `ignore`, NaN equal to NaN (BatchNorm-only columns of other norms)."""

    def same(x, y) -> bool:
        return x == y or (isinstance(x, float) and isinstance(y, float) and math.isnan(x) and math.isnan(y))

    return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a if k not in ignore)


@pytest.fixture
def built(monkeypatch) -> list:
    """Every model the accuracy job builds, kept so a test can look at its trained weights."""
    models_built, real = [], models.from_config

    def build(*args, **kwargs):
        models_built.append(real(*args, **kwargs))
        return models_built[-1]

    monkeypatch.setattr(accuracy.models, "from_config", build)
    return models_built


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
    cfg = hydra_job(tmp_path, "norm=bn", "accuracy.batch_size=8", "accuracy.global_batch=16")
    cli.run_job(accuracy.run, cfg)
    rows = pd.read_csv(tmp_path / "rows.csv")
    assert set(COLUMNS) <= set(rows.columns) and len(rows) == 1
    row = rows.iloc[0]
    assert (row.kind, row.norm, row.dataset, row.model) == ("accuracy", "bn", "synthetic", "cnn1d")
    assert (row.protocol, row.norm_batch, row.workers, row.global_batch) == ("global_batch", 8, 2, 16)
    assert row.steps == 2 * 128 // 16 and row.precise_bn_samples == 64
    assert row.lr == pytest.approx(0.1 * 16 / 64)  # the linear scaling rule from the stated reference
    assert row.test_acc > 0.5  # 4 classes: chance is 0.25
    assert 0 <= row.test_acc_batch_stats <= 1 and 0 <= row.test_acc_precise_bn <= 1
    assert row.samples_per_s > 0 and row.wall_s > 0 and pd.isna(row.reused_from)
    curve = pd.read_csv(tmp_path / accuracy.CURVE_FILE)
    assert curve.epoch.tolist() == [1, 2] and curve.train_loss.iloc[-1] == pytest.approx(row.train_loss)
    assert curve.train_loss.iloc[1] < curve.train_loss.iloc[0]


# ------------------------------------------------------------------------------------------ protocols


def split(*overrides: str) -> specs.Split:
    return specs.train_job(config(*overrides)).split


def test_global_batch_fixes_the_samples_per_step_and_derives_the_workers():
    assert [split(f"accuracy.batch_size={k}") for k in (2, 16, 64)] == [
        specs.Split(2, 32, 64, "global_batch"),
        specs.Split(16, 4, 64, "global_batch"),
        specs.Split(64, 1, 64, "global_batch"),
    ]
    # The GN paper's protocol: fixed workers, the global batch grows with K.
    assert split("accuracy.batch_size=4", "accuracy.global_batch=null", "accuracy.workers=8") == specs.Split(
        4, 8, 32, "workers"
    )


def test_the_gn_paper_experiment_keeps_fixed_workers():
    cfg = config("+experiment=gn_figure1_cifar10", "accuracy.batch_size=2", base=[])
    assert specs.train_job(cfg).split == specs.Split(2, 8, 16, "workers")


@pytest.mark.parametrize("k, workers", [(2, 16), (32, 1)])
def test_the_cifar10_cpu_reference_fixes_32_samples_per_step(k, workers):
    cfg = config("+experiment=cifar10_resnet20_cpu", f"accuracy.batch_size={k}", base=[], hydra=True)
    assert specs.train_job(cfg).split == specs.Split(k, workers, 32, "global_batch")
    assert cfg.model._target_ == "normbench.models.resnet20" and cfg.dataset.train_per_class == 2000
    gn = config("+experiment=cifar10_resnet20_cpu", "norm=gn", base=[])
    assert gn.norm.groups == 8  # ResNet-20 with GroupNorm at 8 groups, as the reference ran
    assert cfg.dataset.augment is False  # three passes over the data underfit: see the experiment file
    grid = cfg.hydra.sweeper.params
    assert grid["accuracy.batch_size"] == "2,32,4,16,8" and grid.norm == "gn,bn,ln,in" and grid.seed == "0,1"


def test_same_steps_and_lr_for_every_k_at_a_fixed_global_batch(tmp_path):
    rows = [
        train(tmp_path / str(k), "norm=bn", f"accuracy.batch_size={k}", "accuracy.global_batch=16")[0] for k in (2, 16)
    ]
    assert [(r["workers"], r["global_batch"]) for r in rows] == [(8, 16), (1, 16)]
    assert rows[0]["steps"] == rows[1]["steps"] == 16 and rows[0]["lr"] == rows[1]["lr"] == 0.025
    assert rows[0]["train_loss"] != rows[1]["train_loss"]  # BatchNorm does see K


@pytest.mark.parametrize("norm", ["ln", "in", "gn", "none"])
def test_per_sample_norms_train_bit_identical_models_for_every_k(tmp_path, built, norm):
    """The guarantee behind reusing one training for every K: same weights, bit for bit."""
    a, curve_a = train(tmp_path / "a", f"norm={norm}", "accuracy.batch_size=2", "accuracy.global_batch=16")
    b, curve_b = train(tmp_path / "b", f"norm={norm}", "accuracy.batch_size=16", "accuracy.global_batch=16")
    assert norms.batch_independent(norm)
    first, second = (m.state_dict() for m in built)
    assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)
    for key in ("test_acc", "train_loss", "train_acc", "lr", "steps"):
        assert a[key] == b[key], key
    assert curve_a.drop(columns=["wall_s", "norm_batch", "workers"]).equals(
        curve_b.drop(columns=["wall_s", "norm_batch", "workers"])
    )
    assert math.isnan(a["test_acc_batch_stats"]) and math.isnan(a["test_acc_precise_bn"])


def test_batch_independence_is_what_the_layer_says():
    """A norm counts as K-invariant exactly when none of its statistics spans samples."""
    for name in norms.available():
        layer = norms.build(name, 64)
        spans_samples = isinstance(layer, norms.Norm) and layer.samples(16) > 1
        assert norms.batch_independent(name) == (not spans_samples), name
    assert not norms.batch_independent("bn")


def test_same_seed_same_result_other_seed_other_result(tmp_path):
    first, curve1 = train(tmp_path / "1", "norm=bn", "accuracy.batch_size=4", "accuracy.global_batch=8", "seed=3")
    second, curve2 = train(tmp_path / "2", "norm=bn", "accuracy.batch_size=4", "accuracy.global_batch=8", "seed=3")
    other, _ = train(tmp_path / "3", "norm=bn", "accuracy.batch_size=4", "accuracy.global_batch=8", "seed=4")
    assert same_row(first, second, ignore=TIMING)
    assert curve1.drop(columns="wall_s").equals(curve2.drop(columns="wall_s"))
    assert other["train_loss"] != first["train_loss"]


# ------------------------------------------------------------------------------------------ reuse


def test_a_reused_row_equals_a_trained_one(tmp_path, built):
    sweep = tmp_path / "sweep"
    first, _ = train(sweep / "0", "norm=gn", "accuracy.batch_size=2", "accuracy.global_batch=16", shared=sweep)
    reused, curve = train(sweep / "1", "norm=gn", "accuracy.batch_size=16", "accuracy.global_batch=16", shared=sweep)
    alone, alone_curve = train(tmp_path / "alone", "norm=gn", "accuracy.batch_size=16", "accuracy.global_batch=16")
    assert len(built) == 2  # the sweep trained once; the job alone trained again
    assert first["reused_from"] is None and reused["reused_from"] == "0" and alone["reused_from"] is None
    assert (reused["norm_batch"], reused["workers"]) == (16, 1)  # the row is the reusing job's own
    assert same_row(reused, alone, ignore=TIMING | {"reused_from"})
    assert curve.drop(columns="wall_s").equals(alone_curve.drop(columns="wall_s"))
    assert (reused["wall_s"], reused["samples_per_s"]) == (first["wall_s"], first["samples_per_s"])


def test_batchnorm_and_other_settings_are_never_reused(tmp_path, built):
    sweep = tmp_path / "sweep"
    for job, extra in enumerate(
        [
            ["norm=bn", "accuracy.batch_size=2"],
            ["norm=bn", "accuracy.batch_size=16"],
            ["norm=gn", "seed=0"],
            ["norm=gn", "seed=1"],
            ["norm=ln", "seed=0"],
            ["norm=gn", "seed=0", "accuracy.global_batch=32"],
        ]
    ):
        row, _ = train(sweep / str(job), "accuracy.global_batch=16", *extra, shared=sweep)
        assert row["reused_from"] is None, extra
    assert len(built) == 6


def test_train_once_waits_for_a_running_training_and_survives_a_failed_one(tmp_path):
    import threading
    import time

    calls = []

    def slow():
        calls.append(threading.current_thread().name)
        time.sleep(0.3)
        return {"acc": 0.5, "nan": math.nan}

    out: dict = {}
    jobs = [
        threading.Thread(target=lambda j=j: out.__setitem__(j, reuse.train_once(tmp_path, {"a": 1}, j, slow)), name=j)
        for j in ("x", "y")
    ]
    for t in jobs:
        t.start()
        time.sleep(0.05)
    for t in jobs:
        t.join()
    assert calls == ["x"]  # y waited for x's training instead of training again
    assert out["x"][1] is None and out["y"][1] == "x" and out["y"][0]["acc"] == 0.5 and math.isnan(out["y"][0]["nan"])

    def fail():
        raise RuntimeError("out of memory")

    with pytest.raises(RuntimeError):
        reuse.train_once(tmp_path, {"a": 2}, "p", fail)
    assert reuse.train_once(tmp_path, {"a": 2}, "q", lambda: {"acc": 0.7}) == ({"acc": 0.7}, None)


# ------------------------------------------------------------------------------------------ PreciseBN


def tiny_bn_model(k: int) -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv1d(2, 4, 3),
        norms.build("bn", 4, virtual_batch=k),
        torch.nn.ReLU(),
        torch.nn.Conv1d(4, 3, 3),
        norms.build("bn", 3, virtual_batch=k),
    )


def test_precise_bn_equals_a_direct_full_pass():
    """Population statistics of every BatchNorm = the mean and unbiased variance over every value it
    sees in one train-mode pass over all the samples at K (the first layer's input: the raw conv)."""
    k, x = 4, torch.randn(48, 2, 10, generator=torch.Generator().manual_seed(1)) * 3 + 1
    model = tiny_bn_model(k)
    for _ in range(3):  # some EMA history, which PreciseBN must replace, not blend in
        model.train()(torch.randn(16, 2, 10))
    ema = {n: b.clone() for n, b in model.state_dict().items()}
    precise = accuracy.precise_bn(model, [x[:24], x[24:]], k)  # in two chunks of several K
    assert all(torch.equal(ema[n], b) for n, b in model.state_dict().items())  # the original is untouched
    # Direct: record each BatchNorm's whole input in one pass, K per normalization batch.
    seen = {}
    direct = tiny_bn_model(k)
    direct.load_state_dict(model.state_dict())
    for name, m in direct.named_modules():
        if isinstance(m, norms.BatchNorm):
            m.register_forward_pre_hook(lambda mod, args, name=name: seen.__setitem__(name, args[0].detach()))
    with torch.no_grad():
        direct.train()(x)
    first = model[0](x).detach()
    assert torch.allclose(seen["1"], first)
    for name in ("1", "4"):
        values = seen[name].transpose(0, 1).reshape(seen[name].shape[1], -1).double()
        layer = precise.get_submodule(name)
        assert torch.allclose(layer.running_mean.double(), values.mean(1), atol=1e-6)
        assert torch.allclose(layer.running_var.double(), values.var(1), rtol=1e-5)
    assert not precise.training and precise[1].virtual_batch == k


def test_precise_bn_at_small_k_is_not_the_ema_and_its_accuracy_is_reported(tmp_path):
    row, _ = train(tmp_path, "norm=bn", "accuracy.batch_size=2", "accuracy.global_batch=16")
    assert row["precise_bn_samples"] == 64 and 0 <= row["test_acc_precise_bn"] <= 1
    off, _ = train(
        tmp_path / "off",
        "norm=bn",
        "accuracy.batch_size=2",
        "accuracy.global_batch=16",
        "accuracy.precise_bn_samples=null",
    )
    assert math.isnan(off["test_acc_precise_bn"]) and off["test_acc"] == row["test_acc"]


def test_resnet20_on_augmented_images_runs(tmp_path):
    row, _ = train(
        tmp_path,
        "model=resnet20",
        "norm=gn",
        "dataset.shape=[3,8,8]",
        "dataset.augment=true",
        "accuracy.batch_size=8",
        "accuracy.global_batch=16",
        "accuracy.epochs=1",
        "dataset.train_size=32",
        "accuracy.warmup_epochs=0.5",
    )
    assert row["model"] == "resnet20" and row["norm_options"] == "groups=8" and row["steps"] == 2


def test_batch_stats_accuracy_leaves_running_statistics_untouched():
    torch.manual_seed(0)
    model = models.build(
        "cnn1d", input_shape=(1, 40), num_classes=3, norm=lambda c: norms.build("bn", c, virtual_batch=4)
    )
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


def test_linear_scaling_rule():
    assert accuracy.scaled_lr(0.1, 128, 16) == pytest.approx(0.0125)


def closed_form_schedule(total: int, warmup: int) -> np.ndarray:
    """The LR factor at steps 0..total in float64, written out independently of torch's schedulers."""
    s = np.arange(total + 1, dtype=np.float64)
    cosine = 0.5 * (1 + np.cos(np.pi * (s - warmup) / max(1, total - warmup)))
    return np.where(s < warmup, (s + 1) / max(warmup, 1), cosine)


@pytest.mark.parametrize(("total", "warmup"), [(10, 2), (10, 0), (10, 1), (7, 7), (310, 5), (1, 0)])
def test_lr_schedule_warms_up_linearly_then_anneals_to_zero(total, warmup):
    weight = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.SGD([weight], lr=1.0)
    schedule = accuracy.lr_schedule(optimizer, total, warmup)
    factors = [optimizer.param_groups[0]["lr"]]
    for _ in range(total):  # as in training: optimizer.step(), then schedule.step()
        optimizer.step()
        schedule.step()
        factors.append(optimizer.param_groups[0]["lr"])
    expected = closed_form_schedule(total, warmup)
    np.testing.assert_allclose(factors, expected, rtol=1e-12, atol=1e-12)
    assert schedule.get_last_lr()[0] == pytest.approx(expected[-1], abs=1e-12)
    if warmup < total:
        assert factors[-1] == pytest.approx(0.0, abs=1e-12)  # every run ends annealed
    if warmup:
        assert factors[0] == pytest.approx(1 / warmup) and factors[warmup - 1] == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["accuracy.batch_size=0"], "accuracy.batch_size must be > 0"),
        (
            ["accuracy.batch_size=12"],
            r"global_batch=64 does not split .* accuracy.batch_size=12: .* 1, 2, 4, 8, 16, 32, 64",
        ),
        (["accuracy.workers=4"], "both fix the samples per step: keep one .*accuracy.workers=null"),
        (["accuracy.global_batch=null"], "set accuracy.global_batch .* or accuracy.workers"),
        (["accuracy.global_batch=0"], "accuracy.global_batch must be > 0"),
        (["accuracy.global_batch=null", "accuracy.workers=0"], "accuracy.workers must be > 0"),
        (["accuracy.batch_size=64", "accuracy.global_batch=256"], "more than the 128 training samples"),
        (["accuracy.precise_bn_samples=1000"], "precise_bn_samples=1000 must lie between K=16 and the 128"),
        (
            ["model=mlp", "norm=bn", "accuracy.batch_size=1"],
            "accuracy.batch_size=1 x workers=64, mlp: bn .* needs more than one",
        ),
        (["dataset._target_=normbench.data.imagenet"], "dataset._target_=normbench.data.imagenet could not be built"),
        (["model._target_=normbench.models.vgg"], "model._target_=normbench.models.vgg could not be built"),
        (["model._target_=torch.nn.Linear"], r"does not take input_shape, num_classes, norm.*docs/plugins.md"),
        (["model._target_=builtins.dict"], "model._target_=builtins.dict is not a model builder, so it is not called"),
        (["+model.depth=3"], "model cnn1d: .*depth.*conf/model/cnn1d.yaml"),
        (["norm=gn", "norm.groups=5"], r"gn with 5 groups \(norm.groups\) cannot normalize .* 32-channel layers"),
        (["norm=gn", "+norm_options.gn.groups=4"], "one key, norm.groups.*set norm.groups=4"),
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
    assert "accuracy.batch_size must be > 0" in failure["error"]
    assert not (tmp_path / "rows.csv").exists()


def test_the_default_sweep_is_in_the_config():
    cfg = config(hydra=True, base=[])
    params = cfg.hydra.sweeper.params
    assert params["norm"].split(",") == ["bn", "ln", "in", "gn"]
    assert [int(b) for b in params["accuracy.batch_size"].split(",")] == [2, 4, 8, 16, 32, 64]
    assert params["seed"].split(",") == ["0", "1", "2"] and list(params)[-1] == "seed"  # seeds vary fastest
    assert cfg.dataset._target_ == "normbench.data.mnist1d" and cfg.model._target_ == "normbench.models.cnn1d"
    assert (cfg.accuracy.global_batch, cfg.accuracy.workers, cfg.accuracy.reuse) == (64, None, True)
    assert all(64 % int(k) == 0 for k in params["accuracy.batch_size"].split(","))


# ------------------------------------------------------------------------------------------ LR search

SEARCH = "accuracy.lr_search={grid:[0.02,0.1,0.5],validation:0.25,seed:0}"


def test_lr_search_never_reads_the_test_split(tmp_path, monkeypatch):
    """Scrambled test labels (and test inputs) leave every validation error and the chosen LR as they
    were; only the reported test accuracy, which reads them, changes."""
    real = accuracy.datasets.load
    rows = {}
    for scrambled in (False, True):

        def load(cfg, device, scrambled=scrambled):
            data = real(cfg, device)
            if not scrambled:
                return data
            gen = torch.Generator().manual_seed(1)
            return dataclasses.replace(
                data,
                y_test=data.y_test[torch.randperm(len(data.y_test), generator=gen)],
                x_test=torch.randn(data.x_test.shape, generator=gen),
            )

        monkeypatch.setattr(accuracy.datasets, "load", load)
        out = tmp_path / str(scrambled)
        out.mkdir()
        [rows[scrambled]] = accuracy.run(config("norm=bn", SEARCH), out)
    assert rows[True]["lr_grid"] == rows[False]["lr_grid"] and rows[True]["lr_chosen"] == rows[False]["lr_chosen"]
    assert rows[True]["test_acc"] != rows[False]["test_acc"]
    grid = lr_search.parse_grid(rows[False]["lr_grid"])
    assert [lr for lr, _ in grid] == [0.02, 0.1, 0.5]
    best = min(grid, key=lambda p: (p[1], p[0]))
    assert rows[False]["lr_chosen"] == best[0]
    assert rows[False]["lr"] == pytest.approx(best[0] * 64 / 64)  # scaled linearly to the 64 per step


def test_validation_split_holds_out_training_samples_only():
    data = accuracy.datasets.load(config().dataset, "cpu")
    split = lr_search.validation_split(data, 0.25, seed=0)
    assert split.x_train.shape[0] + split.x_test.shape[0] == data.x_train.shape[0]
    assert split.x_test.shape[0] == 32
    pooled = torch.cat([split.x_train, split.x_test]).flatten(1)
    assert torch.equal(pooled.sort(0).values, data.x_train.flatten(1).sort(0).values)  # the same samples, split


def test_validation_split_cuts_the_stored_images_as_it_cuts_x_train():
    # The fast loop trains from Dataset.pixels: a split that kept every image would train on held-out ones.
    data = accuracy.datasets.synthetic(shape=[3, 4, 4], train_size=40, test_size=8, pixels=True)
    split = lr_search.validation_split(data, 0.25, seed=0)
    p = split.pixels
    assert p.train.shape[0] == split.x_train.shape[0] == 30
    assert torch.equal(p.train.float().div(255).sub(p.mean).div(p.std), split.x_train)


def test_lr_search_is_shared_across_seeds_and_k_where_the_norm_cannot_see_k(tmp_path, monkeypatch):
    calls = []
    real = lr_search.search

    def counted(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(lr_search, "search", counted)
    grid = "accuracy.lr_search={grid:[0.05,0.2],validation:0.25,seed:0}"
    for i, (k, seed) in enumerate([(8, 0), (16, 0), (8, 1)]):
        out = tmp_path / str(i)
        out.mkdir()
        accuracy.run(config("norm=ln", grid, f"accuracy.batch_size={k}", f"seed={seed}"), out, shared_dir=tmp_path)
    assert len(calls) == 1


@pytest.mark.parametrize(
    ("grid", "message"),
    [
        ("[0.1,0.0,0.2]", r"at least two positive LRs, got \[0.1, 0.0, 0.2\]"),
        ("[-0.1,0.2]", "at least two positive LRs"),
        ("[0.1]", "at least two positive LRs"),
        ("[0.1,0.2],seeds:0", "lr_search.seeds must be a positive int"),
    ],
)
def test_a_bad_lr_grid_is_one_line_before_any_training(tmp_path, grid, message):
    with pytest.raises(UsageError, match=message) as info:
        accuracy.run(config(f"accuracy.lr_search={{grid:{grid}}}"), tmp_path)
    assert "\n" not in str(info.value) and not (tmp_path / accuracy.CURVE_FILE).exists()


def test_train_accuracy_in_eval_mode_on_a_fixed_subset(tmp_path, built):
    row, _ = train(tmp_path, "norm=bn", "accuracy.train_eval_samples=100")
    data = accuracy.datasets.load(config().dataset, "cpu")
    idx = torch.randperm(data.x_train.shape[0], generator=torch.Generator().manual_seed(0))[:100]
    model = built[-1].eval()
    with torch.no_grad():
        expect = (model(data.x_train[idx]).argmax(1) == data.y_train[idx]).float().mean().item()
    assert row["train_eval_acc"] == pytest.approx(expect) and not model.training


def test_the_no_norm_baseline_can_take_back_the_conv_bias():
    plain, biased = norms.build("none", 4), norms.build("none", 4, bias=True)
    x = torch.randn(3, 4, 5, dtype=torch.float64)
    assert not list(plain.parameters()) and torch.equal(plain(x), x)
    with torch.no_grad():
        biased.bias.copy_(torch.tensor([1.0, -2.0, 0.5, 0.0]))
    assert torch.equal(biased.double()(x), x + torch.tensor([1.0, -2.0, 0.5, 0.0], dtype=torch.float64).view(1, 4, 1))
    cfg = config("norm=none", "+norm_options.none.bias=true")
    make, options = accuracy.norm_factory(specs.train_job(cfg))
    assert options == {"bias": True} and make(8).bias.shape == (8,)


def test_reproducibility_switches_are_on_for_the_run_only(tmp_path, monkeypatch):
    seen = []
    real = accuracy.measure

    def spy(*args):
        seen.append((torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark))
        return real(*args)

    monkeypatch.setattr(accuracy, "measure", spy)
    before = torch.are_deterministic_algorithms_enabled()
    [on] = accuracy.run(config("norm=gn", "accuracy.deterministic=true"), tmp_path)
    [off] = accuracy.run(config("norm=gn"), tmp_path)
    assert seen == [(True, False), (before, torch.backends.cudnn.benchmark)]
    assert torch.are_deterministic_algorithms_enabled() == before
    assert on["test_acc"] == off["test_acc"] and on["train_loss"] == off["train_loss"]  # CPU: the same run


def test_lr_search_picks_the_lowest_validation_error_and_skips_a_diverged_lr():
    data = accuracy.datasets.load(config().dataset, "cpu")
    errors = {0.05: 0.30, 0.1: 0.10, 0.2: 0.10, 0.4: None}  # 0.1 and 0.2 tie; 0.4 diverges

    seen = []

    def train_at(lr, split, seed):
        assert split.x_test.shape[0] == 32 and split.name.endswith("(validation split)")
        seen.append(seed)
        if errors[lr] is None or (lr == 0.2 and seed == 6):
            raise RuntimeError("train loss diverged")
        return {"curve": [{"test_acc": 1 - errors[lr] - 0.02 * (seed - 5)}]}

    spec = specs.lr_search({"grid": [0.4, 0.1, 0.05, 0.2], "validation": 0.25, "seed": 5, "seeds": 2})
    found = lr_search.search(spec, train_at, data)
    assert sorted(set(seen)) == [5, 6] and len(seen) == 8  # every LR with both seeds
    assert found["grid"] == [0.05, 0.1, 0.2, 0.4] and found["chosen"] == 0.1 and not found["edge"]
    # the mean over the two seeds; 0.2 diverged with one of them (100%); 0.4 with both (NaN)
    assert found["val_error"][:3] == pytest.approx([31.0, 11.0, 55.0]) and math.isnan(found["val_error"][3])
    assert lr_search.parse_grid(lr_search.grid_text(found))[:3] == [(0.05, 31.0), (0.1, 11.0), (0.2, 55.0)]


def test_the_train_job_is_the_config_read_once_into_plain_frozen_values():
    cfg = config("norm=bn", "accuracy.batch_size=4", "+norm_options.bn.eps=0.001", "accuracy.weight_decay_on=weights")
    job = specs.train_job(cfg)
    seen = []

    def walk(value):
        seen.append(type(value))
        if dataclasses.is_dataclass(value):
            for f in dataclasses.fields(value):
                walk(getattr(value, f.name))
        elif isinstance(value, dict | list | tuple):
            for v in value.values() if isinstance(value, dict) else value:
                walk(v)

    walk(job)
    assert not [t for t in seen if issubclass(t, DictConfig | ListConfig | Enum)]  # nothing of Hydra's below
    with pytest.raises(dataclasses.FrozenInstanceError):
        job.seed = 1  # type: ignore[misc]
    assert job.norm_batch == job.split.norm_batch == 4 and job.split.workers == cfg.accuracy.global_batch // 4
    assert job.norm_extra == {"eps": 0.001} and job.schedule.weight_decay_on == "weights"
    assert job.model["_target_"] == cfg.model._target_ and job.loop == specs.FastPath()
