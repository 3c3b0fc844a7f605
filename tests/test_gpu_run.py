"""scripts/gpu_run.py's plan, without a GPU: the dry run fits its budget, in the issue's order of value."""

from __future__ import annotations

import importlib.util
import sys
import tarfile
import time
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "gpu_run.py"


@pytest.fixture(scope="module")
def gpu_run():
    spec = importlib.util.spec_from_file_location("gpu_run", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_run"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_dry_run_fits_480_s_in_the_order_of_value(gpu_run, capsys):
    assert gpu_run.main(["--dry-run"]) == 0
    printed = capsys.readouterr().out
    names = [s.name for s in gpu_run.plan()]
    assert names == ["setup", "selfcheck", "warm", "native", "triton", "compiled", "coop", "rows", "host"]
    total = sum(s.box_s for s in gpu_run.plan()) + gpu_run.PACK_S
    assert total <= gpu_run.BUDGET_S == 480
    assert f"total {total} s of a 480 s budget" in printed
    for step in gpu_run.plan():
        assert f"\n{step.name:<10} {step.box_s:>5}" in printed and step.estimate in printed


def test_default_grid_is_two_large_shapes_fwdbwd_and_the_rows(gpu_run):
    steps = {s.name: s.command for s in gpu_run.plan()}
    assert gpu_run.SHAPES == "resnet_c64,sd_gn"
    for impl in ("native", "triton", "compiled"):
        assert f"impl={impl} " in steps[impl] and "pass=fwdbwd" in steps[impl] and f"speed-{impl}" in steps[impl]
    assert "triton.cooperative=true" in steps["coop"] and "speed-triton-coop" in steps["coop"]
    assert "sweep=gpu_rows" in steps["rows"] and "impl=native,triton" in steps["rows"]
    assert "normbench.app.selfcheck --out" in steps["selfcheck"]
    assert "normbench.tools.host_cost" in steps["host"]


def test_full_plan_is_longer_and_tiny_plan_stays_on_the_cpu(gpu_run):
    full = gpu_run.plan(full=True)
    assert {"check", "ab", "report"} <= {s.name for s in full}
    assert sum(s.box_s for s in full) > gpu_run.BUDGET_S
    for step in gpu_run.plan(tiny=True):
        assert "resnet_c64 " not in step.command.replace("--shape resnet_c64", ""), step.name
        assert "impl=triton" not in step.command, step.name  # the interpreter is not timed


def test_over_budget_or_unknown_step_is_one_clear_line(gpu_run, capsys):
    assert gpu_run.main(["--dry-run", "--budget-s", "100"]) == 1
    assert "over the 100 s budget" in capsys.readouterr().err
    assert gpu_run.main(["--dry-run", "--steps", "host,nope"]) == 2
    err = capsys.readouterr().err
    assert "unknown step(s) nope" in err and "choose from setup" in err


def test_a_step_past_its_box_is_cut_with_its_children_and_its_log_kept(gpu_run, tmp_path):
    (tmp_path / "logs").mkdir()
    marker = tmp_path / "late"
    step = gpu_run.Step("slow", 1, "", f"echo started; (sleep 0.7; touch {marker}) & sleep 5")
    assert gpu_run.run_step(step, 0.3, tmp_path) == 124
    assert (tmp_path / "logs" / "slow.log").read_text() == "started\n"
    assert gpu_run.run_step(gpu_run.Step("ok", 1, "", "exit 3"), 5, tmp_path) == 3
    time.sleep(0.7)
    assert not marker.exists()  # the background child went with the step's process group


def test_pack_brings_back_the_measured_folders_but_not_the_warm_up(gpu_run, tmp_path):
    work, out = tmp_path / "work", tmp_path / "out"
    for d in ("speed-native/0", "warm/0", "logs"):
        (work / d).mkdir(parents=True)
    (work / "speed-native/0/rows.csv").write_text("x\n")
    (work / "env.txt").write_text("gpu: none\n")
    out.mkdir()
    gpu_run.pack(work, out)
    with tarfile.open(out / "reference.tar.gz") as tar:
        names = set(tar.getnames())
    assert {"env.txt", "speed-native/0/rows.csv", "logs"} <= names and not any(n.startswith("warm") for n in names)
