"""The console scripts' own flags: --version, --list and each app's --help (its config groups only)."""

from __future__ import annotations

import os
import sys
from importlib import metadata
from pathlib import Path

import pytest

import normbench
from normbench import norms
from normbench.app import catalog, cli
from normbench.errors import UsageError
from normbench.kernels import availability

CONF = Path(cli.CONFIGS) if not cli.CONFIGS.startswith("pkg://") else None
pytestmark = pytest.mark.skipif(CONF is None, reason="reads conf/ of a checkout")


def run_app(app: str, *args: str, monkeypatch, capsys) -> str:
    """Run a console script in this process as its command line would, and return what it printed."""
    monkeypatch.setattr(sys, "argv", [f"normbench-{app}", *args])
    try:
        getattr(cli, app)()
    except SystemExit as exc:  # Hydra's --help and argparse's --version exit 0
        assert exc.code in (0, None)
    return capsys.readouterr().out


def conf_options(group: str) -> set[str]:
    return {p.stem for p in (CONF / group).glob("*.yaml")}


def help_groups(text: str) -> dict[str, set[str]]:
    """The `group: a, b` lines of a --help's configuration groups section."""
    section = text.split("== Configuration groups ==")[1].split("== Config ==")[0]
    lines = [line for line in section.splitlines()[1:] if ": " in line]
    return {g: set(opts.split(", ")) for g, opts in (line.split(": ", 1) for line in lines)}


@pytest.mark.parametrize("app", ["speed", "accuracy", "report"])
def test_version_names_normbench_and_what_it_measures_with(app, monkeypatch, capsys):
    out = run_app(app, "--version", monkeypatch=monkeypatch, capsys=capsys)
    assert out.startswith(f"normbench-{app} (normbench {normbench.__version__})")
    assert normbench.__version__ == metadata.version("normbench")
    for dist in ("torch", "hydra-core"):
        assert f"{dist} {metadata.version(dist)}" in out
    assert "Hydra 1." not in out  # Hydra's own --version answer


@pytest.mark.parametrize(
    ("app", "groups"),
    [("speed", ["shape", "sweep"]), ("accuracy", ["dataset", "model", "sweep", "experiment", "claim_run"])],
)
def test_list_shows_the_registry_and_the_apps_groups(app, groups, monkeypatch, capsys):
    out = run_app(app, "--list", monkeypatch=monkeypatch, capsys=capsys)
    first_column = {line.split()[0] for line in out.splitlines() if line.startswith("  ") and line.strip()}
    assert set(norms.available()) <= first_column
    table = next(line for line in out.splitlines() if "reference" in line and "native" in line)
    assert set(table.split()) == set(norms.all_implementations())
    for group in groups:
        assert f"{group}=  (conf/{group}/)" in out
        assert set(catalog.options(cli.CONFIGS, app, group)) <= first_column
    if app == "speed":
        assert conf_options("shape") <= first_column
        assert "(8, 64, 28, 28)" in out  # conf/shape/cpu.yaml's tensor
    else:
        assert conf_options("dataset") | conf_options("model") <= first_column
    evonorm = next(line for line in out.splitlines() if line.startswith("  evonorm_b0 ") and "yes" in line)
    assert evonorm.split()[1:] == ["yes" if i in norms.implementations("evonorm_b0") else "-" for i in table.split()]


def test_what_runs_here(monkeypatch):
    assert catalog.unsupported_here("bn", "native") is None
    assert "no implementation 'native'" in catalog.unsupported_here("evonorm_b0", "native")
    monkeypatch.setattr(availability, "cuda_available", lambda: False)
    monkeypatch.setattr(availability, "interpreter_on", lambda: False)
    assert "CUDA GPU" in catalog.unsupported_here("gn", "triton")
    monkeypatch.setattr(availability, "cuda_available", lambda: True)
    assert catalog.unsupported_here("gn", "triton") is None
    monkeypatch.setattr(availability, "triton_installed", lambda: False)
    assert "pip install" in catalog.unsupported_here("gn", "triton")


def test_list_says_why_an_implementation_cannot_run_here(monkeypatch):
    monkeypatch.setattr(availability, "cuda_available", lambda: False)
    monkeypatch.setattr(availability, "interpreter_on", lambda: False)
    out = catalog.listing(cli.CONFIGS, "speed")
    gn = next(line for line in out.splitlines() if line.startswith("  gn ") and "yes" in line)
    assert gn.split()[-2:] == ["no", "[1]"]
    assert "  [1] impl=triton runs on a CUDA GPU, and this machine has none" in out


def test_each_apps_help_lists_its_own_groups(monkeypatch, capsys):
    speed = run_app("speed", "--help", monkeypatch=monkeypatch, capsys=capsys)
    accuracy = run_app("accuracy", "--help", monkeypatch=monkeypatch, capsys=capsys)
    assert speed.startswith("normbench-speed: ") and accuracy.startswith("normbench-accuracy: ")
    assert help_groups(speed) == {
        "norm": conf_options("norm"),
        "shape": conf_options("shape"),
        "sweep": {"cpu", "gpu", "gpu_rows", "model"},  # told from the accuracy sweeps by the keys they set
    }
    got = help_groups(accuracy)
    assert set(got) == {"norm", "dataset", "model", "sweep", "+experiment", "+claim_run"}
    assert got["dataset"] == conf_options("dataset") and got["+experiment"] == conf_options("experiment")
    assert not got["sweep"] & help_groups(speed)["sweep"]  # sweeps are each app's own
    for text in (speed, accuracy):
        assert "--list" in text and "--version" in text
        assert "batch_size" in text  # the composed config follows ($CONFIG)


def test_every_config_option_belongs_to_an_app():
    """A new file in conf/<group>/ shows in some app's --help; an app's named option exists."""
    skip = {"hydra", "__pycache__"}
    groups = [p.name for p in CONF.iterdir() if p.is_dir() and p.name not in skip]
    for group in groups:
        listed = set()
        for app, app_groups in catalog.APP_GROUPS.items():
            if group in app_groups:
                listed |= set(catalog.options(cli.CONFIGS, app, group))
        assert listed == conf_options(group), group


@pytest.mark.parametrize(
    "app, override, says",
    [
        ("speed", "speed.l2=hot", "speed.l2=hot: Invalid value 'hot', expected one of [cold, warm] (key speed.l2)"),
        ("speed", "speed.bogus=1", "Key 'bogus' not in 'SpeedSettings' (key speed.bogus)"),
        ("speed", "norm=xyz", "Could not find 'norm/xyz'; Available options in 'norm': bn, "),
        ("accuracy", "seed=1.5", "Value '1.5' of type 'float' could not be converted to Integer (key seed)"),
    ],
)
def test_a_config_hydra_cannot_compose_is_one_line_at_the_console(app, override, says, monkeypatch, capsys):
    """Composition fails before any job runs: Hydra's several lines come out as one, exit status 2."""
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    monkeypatch.setattr(sys, "argv", [f"normbench-{app}", override])
    with pytest.raises(SystemExit) as exc:
        getattr(cli, app)()
    err = capsys.readouterr().err.strip()
    assert exc.value.code == 2 and err.startswith("error: ") and says in err and "\n" not in err, err
    assert "HYDRA_FULL_ERROR" not in os.environ  # put back as it was


def test_a_sweep_belongs_to_the_app_whose_keys_it_sets():
    def app_of(text: str) -> str:
        return catalog.app_of(cli.CONFIGS, text, "conf/sweep/mine.yaml")

    assert app_of("hydra:\n  sweeper:\n    params:\n      norm: bn,gn\n      speed.channels: 8,16\n") == "speed"
    assert app_of("hydra:\n  sweeper:\n    params:\n      +claim_run: bn\n      seed: 0,1\n") == "accuracy"
    assert app_of("defaults:\n  - override /dataset: mnist1d\n") == "accuracy"
    with pytest.raises(UsageError, match=r"conf/sweep/mine.yaml sets keys of speed and accuracy"):
        app_of("hydra:\n  sweeper:\n    params:\n      dtype: float32\n      accuracy.epochs: 1,2\n")
    with pytest.raises(UsageError, match="sets keys of no app"):
        app_of("hydra:\n  sweeper:\n    params:\n      norm: bn,gn\n")
