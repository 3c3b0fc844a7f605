"""docs/extending.md's worked example, as written there: a toy norm in a module of its own and a YAML
in a --config-dir of its own reach `--list`, a speed sweep and an accuracy run through the `plugins`
key, with no other edit; its implementations follow from its declaration and compute its equation."""

from __future__ import annotations

import itertools
import re
import sys
from functools import partial
from pathlib import Path

import pandas as pd
import pytest
import torch
from hydra import compose, initialize_config_module
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import open_dict

from normbench.app import cli
from normbench.bench import speed_job
from normbench.io.results import ROWS_FILE
from normbench.norms import registry
from normbench.train import accuracy
from tests import test_accuracy, test_speed

DOC = (Path(__file__).resolve().parent.parent / "docs" / "extending.md").read_text()
BLOCKS = re.findall(r"```(\w+)\n(.*?)```", DOC, flags=re.S)


def block(first_line: str) -> str:
    [text] = [text for _, text in BLOCKS if text.startswith(first_line)]
    return text


# (app, its arguments) of each command the page shows
COMMANDS = [
    (words[1].removeprefix("normbench-"), words[2:])
    for words in map(str.split, block("PYTHONPATH=. normbench-speed --list").splitlines())
]


@pytest.fixture
def user(tmp_path, monkeypatch):
    """The page's module and YAML in tmp_path, importable as the page's PYTHONPATH=. makes them, and a
    registry of this test's own, so the toy norm leaves no trace in other tests."""
    (tmp_path / "my_norms.py").write_text(block("# my_norms.py"))
    yaml_path = tmp_path / block("# myconf/").splitlines()[0].removeprefix("# ")
    yaml_path.parent.mkdir(parents=True)
    yaml_path.write_text(block("# myconf/"))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "my_norms", raising=False)
    monkeypatch.setattr(registry, "NORMS", dict(registry.NORMS))
    monkeypatch.setattr(registry, "CHECKS", dict(registry.CHECKS))
    return tmp_path


def hydra_overrides(args: list[str], root: Path) -> list[list[str]]:
    """The command line's overrides, `--config-dir DIR` as the search path it adds, `-m`'s a,b lists
    expanded into one job each (as Hydra's basic sweeper does)."""
    args = list(args)
    if "--config-dir" in args:
        i = args.index("--config-dir")
        args[i : i + 2] = [f"hydra.searchpath=[file://{root / args[i + 1]}]"]
    multirun = "-m" in args
    args = [a for a in args if a != "-m"]
    choices = [
        [f"{a.split('=')[0]}={v}" for v in a.split("=", 1)[1].split(",")] if multirun and "[" not in a else [a]
        for a in args
    ]
    return [list(job) for job in itertools.product(*choices)]


def run_job(app: str, overrides: list[str], out: Path, num: int) -> Path:
    """One job through the apps' entry (cli.run_job), with the Hydra runtime a launcher fills in."""
    with initialize_config_module("normbench.conf", version_base="1.3"):
        cfg = compose(config_name=app, overrides=overrides, return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(out / str(num))
        cfg.hydra.sweep.dir = str(out)
        cfg.hydra.mode = RunMode.MULTIRUN
        cfg.hydra.job.num = num
    HydraConfig.instance().set_config(cfg)
    cli.run_job(speed_job.run if app == "speed" else partial(accuracy.run, shared_dir=None), cfg)
    return out / str(num)


def test_the_toy_norm_is_listed_with_the_implementations_its_declaration_gives(user, monkeypatch, capsys):
    app, args = COMMANDS[0]
    assert (app, args) == ("speed", ["--list", "plugins=[my_norms]"])
    monkeypatch.setattr(sys, "argv", ["normbench-speed", *args])
    cli.speed()
    out = capsys.readouterr().out
    [row] = [line.split() for line in out.splitlines() if line.startswith("  center ") and "yes" in line]
    table = next(line for line in out.splitlines() if "reference" in line and "native" in line).split()
    cells = dict(zip(table, row[1:]))
    assert cells["reference"] == cells["compiled"] == "yes" and cells["native"] == cells["triton"] == "-"
    described = [line for line in out.splitlines() if line.startswith("  center ") and "yes" not in line]
    assert "GroupCenter" in described[0]  # its docstring's first sentence


def test_the_toy_norm_computes_its_equation(user):
    """reference (float64) against the formula written here, compiled (float32) against reference."""
    import my_norms  # noqa: F401  (registers `center`)

    from normbench import norms

    assert norms.implementations("center") == ["reference", "compiled"]
    assert "no implementation 'native'" in norms.supports("center", "native")
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 8, 5, 5, generator=g, dtype=torch.float64) * 2 + 1
    layer = norms.build("center", 8, impl="reference", groups=2, dtype=torch.float64)
    with torch.no_grad():
        layer.weight.copy_(1 + torch.randn(8, generator=g, dtype=torch.float64))
        layer.bias.copy_(torch.randn(8, generator=g, dtype=torch.float64))
    slices = x.reshape(3, 2, -1)
    want = (slices - slices.mean(dim=2, keepdim=True)).reshape(x.shape) * layer.weight.view(1, 8, 1, 1)
    torch.testing.assert_close(layer(x), want + layer.bias.view(1, 8, 1, 1), rtol=1e-12, atol=1e-12)
    layer = layer.float()
    with torch.no_grad():
        y_ref = layer(x.float())
        layer.impl = "compiled"
        torch.testing.assert_close(layer(x.float()), y_ref, rtol=1e-5, atol=1e-5)


def test_the_toy_norm_in_a_speed_sweep(user):
    app, args = COMMANDS[1]
    jobs = hydra_overrides(args, user)
    assert len(jobs) == 4  # center, gn x reference, compiled
    sweep = user / "speed-sweep"
    # The page's sweep at a tiny shape and time budget; compiled only for the toy (its compile is the
    # slow part: test_compiled.py proves gn's).
    done = [
        run_job(app, [*job, *test_speed.TINY, "pass=fwd"], sweep, num)
        for num, job in enumerate(jobs)
        if not ("norm=gn" in job and "impl=compiled" in job)
    ]
    rows = pd.concat(pd.read_csv(d / ROWS_FILE) for d in done)
    rows = rows[rows["pass"] == "fwd"]
    assert sorted(zip(rows.norm, rows.impl)) == [("center", "compiled"), ("center", "reference"), ("gn", "reference")]
    assert (rows.wall_ms > 0).all()
    assert dict(zip(rows.norm, rows.groups)) == {"center": 4, "gn": 32}  # each class's default


def test_the_toy_norm_in_an_accuracy_run(user):
    app, args = COMMANDS[2]
    [job] = hydra_overrides(args, user)
    out = run_job(app, [*job, *test_accuracy.TINY, "accuracy.epochs=1"], user / "accuracy", 0)
    [row] = pd.read_csv(out / ROWS_FILE).to_dict("records")
    assert row["norm"] == "center" and row["model"] == "cnn1d"
    assert row["norm_options"] == "groups=8"  # cnn1d's norm_groups, not the class's 4
    assert 0 <= row["test_acc"] <= 1 and row["train_loss"] > 0


def test_a_plugin_that_does_not_import_is_one_line(user, tmp_path, capsys):
    with initialize_config_module("normbench.conf", version_base="1.3"):
        cfg = compose(config_name="speed", overrides=["plugins=[my_normz]"], return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(tmp_path / "run")
        cfg.hydra.mode = RunMode.RUN
    HydraConfig.instance().set_config(cfg)
    with pytest.raises(SystemExit) as exit_:
        cli.run_job(speed_job.run, cfg)
    assert exit_.value.code == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("error: plugins: module 'my_normz' could not be imported (ModuleNotFoundError")


def test_a_statistics_declaration_with_a_typo_is_one_line():
    from normbench.errors import UsageError
    from normbench.norms import Statistics

    with pytest.raises(
        UsageError, match=r"^Statistics\(channels='group'\): channels is one of 'all', 'each', 'groups'$"
    ):
        Statistics(channels="group")
