"""Models and datasets by `_target_`: a user's own model from a --config-dir trains, the timm example,
one helper for both apps, every shipped choice and experiment still composes to what it meant, and
GroupNorm's groups have one key."""

from __future__ import annotations

import os
import sys
import types
from pathlib import Path

import pandas as pd
import pytest
import torch
from hydra import compose, initialize_config_module
from torch import nn

from normbench import models, norms, specs
from normbench.bench import model_speed, speed_job
from normbench.errors import UsageError
from normbench.train import accuracy
from tests.test_accuracy import TINY
from tests.test_launchers import app_command, run

CONF = Path(__file__).resolve().parent.parent / "conf"

# A user's model: its own module, outside normbench, taking the job's three arguments.
USER_MODULE = """
import math
from torch import nn


class Model(nn.Module):
    def __init__(self, input_shape, num_classes, norm, width=8):
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(math.prod(input_shape), width), norm(width), nn.ReLU())
        self.head = nn.Linear(width, num_classes)

    def forward(self, x):
        return self.head(self.body(x))
"""


# And a dataset: a function returning normbench.data.Dataset, registered as a dataset builder.
USER_DATA = """
from normbench import data, plugins


@plugins.register("dataset")
def blobs(n=64):
    return data.synthetic(num_classes=3, shape=[2, 12], train_size=n, test_size=n // 2, seed=5)
"""


def user_config(tmp_path: Path) -> Path:
    """tmp/mynet.py with tmp/myconf/model/mine.yaml, and tmp/mydata.py with myconf/dataset/blobs.yaml."""
    (tmp_path / "mynet.py").write_text(USER_MODULE)
    (tmp_path / "mydata.py").write_text(USER_DATA)
    for group, name, text in [
        ("model", "mine", "_target_: mynet.Model\nwidth: 16\n"),
        ("dataset", "blobs", "_target_: mydata.blobs\n"),
    ]:
        (tmp_path / "myconf" / group).mkdir(parents=True)
        (tmp_path / "myconf" / group / f"{name}.yaml").write_text(text)
    return tmp_path / "myconf"


def config(*overrides: str, app: str = "accuracy"):
    with initialize_config_module("normbench.conf", version_base="1.3"):
        return compose(config_name=app, overrides=list(overrides))


def test_a_users_model_from_a_config_dir_trains(tmp_path, monkeypatch):
    myconf = user_config(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    cfg = config(*TINY, f"hydra.searchpath=[file://{myconf}]", "model=mine", "norm=ln", "accuracy.epochs=1")
    assert cfg.model._target_ == "mynet.Model"
    [row] = accuracy.run(cfg, tmp_path)
    assert row["model"] == "Model" and row["steps"] == 128 // 64
    assert 0 <= row["test_acc"] <= 1 and row["train_loss"] > 0


@pytest.mark.slow
def test_a_users_model_trains_through_the_command_line(tmp_path, monkeypatch):
    """The issue's case: `normbench-accuracy --config-dir myconf model=mine` on the offline synthetic data."""
    myconf = user_config(tmp_path)
    sweep = tmp_path / "sweep"
    root = str(Path(__file__).resolve().parent.parent)  # this checkout, as the tests import it
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(tmp_path), root, os.environ.get("PYTHONPATH", "")]))
    proc = run(
        app_command("accuracy")
        + [
            "--config-dir",
            str(myconf),
            "-m",
            "hydra/launcher=basic",
            "model=mine",
            "norm=bn",
            "seed=0",
            "accuracy.batch_size=16",
        ]
        + TINY
        + ["accuracy.epochs=1", f"hydra.sweep.dir={sweep}"],
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = pd.read_csv(sweep / "summary.csv")
    assert summary["status"].tolist() == ["ok"] and summary["model"].tolist() == ["Model"]
    assert 0 <= summary["test_acc"].iloc[0] <= 1


def test_the_timm_example_trains_where_timm_is_installed(tmp_path):
    try:
        import timm  # noqa: F401 - only whether it imports
    except Exception as exc:
        pytest.skip(f"timm cannot be imported: {type(exc).__name__}")
    cfg = config(*TINY, "model=timm", "model.model_name=resnet18", "dataset.shape=[3,16,16]", "norm=gn")
    [row] = accuracy.run(cfg, tmp_path)
    assert row["model"] == "resnet18" and row["norm_options"] == "groups=32" and 0 <= row["test_acc"] <= 1


def test_the_timm_adapter_hands_timm_the_norm_factory(monkeypatch):
    """Without timm: a stand-in create_model checks what normbench passes and builds with its norm_layer."""
    calls = {}

    def create_model(name, **kwargs):
        calls.update(name=name, **kwargs)
        return nn.Sequential(nn.Conv2d(kwargs["in_chans"], 4, 1), kwargs["norm_layer"](4, dtype=torch.float64))

    monkeypatch.setitem(sys.modules, "timm", types.SimpleNamespace(create_model=create_model))
    model = models.from_config(
        {"_target_": "normbench.models.timm_model", "model_name": "resnet18", "drop_rate": 0.1},
        input_shape=(3, 8, 8),
        num_classes=7,
        norm=lambda c: norms.build("gn", c, groups=2),
    )
    assert (calls["name"], calls["in_chans"], calls["num_classes"], calls["pretrained"]) == ("resnet18", 3, 7, False)
    assert calls["drop_rate"] == 0.1
    assert isinstance(model[1], norms.GroupNorm) and model[1].weight.dtype == torch.float64


def test_timm_missing_is_one_usage_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)
    with pytest.raises(UsageError, match="model resnet18 needs timm, which cannot be imported.*pip install timm"):
        accuracy.run(config(*TINY, "model=timm", "dataset.shape=[3,8,8]"), tmp_path)


def test_both_apps_build_their_model_with_the_one_helper(monkeypatch, tmp_path):
    seen = []
    real = models.from_config

    def spy(node, *args, **kwargs):
        seen.append((node["_target_"], sorted(set(kwargs) - {"key", "example"})))
        return real(node, *args, **kwargs)

    monkeypatch.setattr(models, "from_config", spy)
    accuracy.run(config(*TINY, "accuracy.epochs=1", "norm=ln"), tmp_path)
    speed_cfg = config("shape=model", "shape.input=[3,8,8]", app="speed")
    model_speed.build_model(speed_job.spec(speed_cfg), torch.float32, torch.device("cpu"))
    assert seen == [
        ("normbench.models.cnn1d", ["input_shape", "norm", "num_classes"]),
        ("normbench.models.resnet20", []),  # the speed job swaps the norm layers instead
    ]


# ------------------------------------------------------------------- the shipped choices, unchanged


@pytest.mark.parametrize(
    ("model", "input_shape", "norm_layers"),
    [("cnn1d", (1, 40), 3), ("resnet20", (3, 8, 8), 19), ("mlp", (1, 40), 2)],
)
def test_every_shipped_model_config_builds_its_model(model, input_shape, norm_layers):
    cfg = config(f"model={model}", "norm=gn")
    assert cfg.norm.groups == (32 if model == "mlp" else 8)  # what the model's widths take
    make, _ = accuracy.norm_factory(specs.train_job(cfg))
    built = models.from_config(cfg.model, input_shape=input_shape, num_classes=10, norm=make)
    assert models.name_of(cfg.model) == model
    assert sum(isinstance(m, norms.GroupNorm) for m in built.modules()) == norm_layers
    assert built(torch.randn(2, *input_shape)).shape == (2, 10)


@pytest.mark.parametrize("experiment", sorted(p.stem for p in (CONF / "experiment").glob("*.yaml")))
@pytest.mark.parametrize("norm", ["gn", "evonorm_s0", "bn"])
def test_every_experiment_composes_with_the_groups_its_model_takes(experiment, norm):
    cfg = config(f"+experiment={experiment}", f"norm={norm}")
    resnet = "cifar10" in experiment
    assert cfg.model._target_ == f"normbench.models.{'resnet20' if resnet else 'cnn1d'}"
    assert cfg.dataset._target_ == f"normbench.data.{'cifar10' if resnet else 'mnist1d'}"
    assert cfg.norm.get("groups") == (None if norm == "bn" else 8)


@pytest.mark.parametrize("claim", sorted(p.stem for p in (CONF / "claim_run").glob("*.yaml")))
def test_every_claim_run_composes(claim):
    cfg = config("+experiment=seed_claims", f"+claim_run={claim}")
    assert cfg.norm.name == claim.split("_")[0] and cfg.model._target_ == "normbench.models.cnn1d"
    assert cfg.model.norm_position == ("after" if claim.endswith("after") else "before")
    assert cfg.norm.get("groups") == (8 if cfg.norm.name == "gn" else None)


def test_norm_groups_is_the_one_groups_key():
    assert config("norm=gn", "model=resnet20", "norm.groups=16").norm.groups == 16  # the user's value wins
    assert config("norm=gn", "model=resnet20").norm.groups == 8
    assert config("norm=gn", app="speed").norm.groups == 32  # the GN paper's default, where no model says
    assert config("norm=gn", "shape=model", app="speed").norm.groups == 8  # shape=model is resnet20
    assert config("norm=evonorm_s0", "model=mlp").norm.groups == norms.GroupNorm(32).num_groups  # the class's default
    # The model says it once, for every GN-like norm: no file per model x norm pair.
    assert not (CONF / "model_norm").exists()
    for name in ("cnn1d", "resnet20"):
        assert config(f"model={name}").model.norm_groups == 8


def test_a_users_dataset_from_a_config_dir(tmp_path, monkeypatch):
    myconf = user_config(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    overrides = [f"hydra.searchpath=[file://{myconf}]", "dataset=blobs", "model=mine", "norm=ln", "device=cpu"]
    fast = ["accuracy.epochs=1", "accuracy.global_batch=32", "accuracy.progress=false"]
    [row] = accuracy.run(config(*overrides, *fast), tmp_path)
    assert row["dataset"] == "synthetic" and row["steps"] == 2 and 0 <= row["test_acc"] <= 1
