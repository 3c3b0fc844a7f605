"""Hostile and mistaken inputs a new user tried (issue 26): each is refused with one line that names the
key and the fix, before anything runs or is written; nothing is called that was not meant to be."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_module
from hydra.errors import ConfigCompositionException

from normbench import data, models, plugins, specs
from normbench.bench import speed_job
from normbench.errors import UsageError
from normbench.train import accuracy
from tests.test_accuracy import TINY


def config(*overrides: str, app: str = "accuracy"):
    with initialize_config_module("normbench.conf", version_base="1.3"):
        return compose(config_name=app, overrides=list(overrides))


# ------------------------------------------------------------------------------ _target_ restriction


def test_a_dataset_target_that_is_not_a_dataset_builder_is_never_called(tmp_path):
    src, dst = tmp_path / "src.txt", tmp_path / "dst.txt"
    src.write_text("secret")
    cfg = config("dataset._target_=shutil.copyfile", f"+dataset.src={src}", f"+dataset.dst={dst}")
    with pytest.raises(UsageError, match=r"dataset._target_=shutil.copyfile is not a dataset builder, so it is not"):
        accuracy.run(cfg, tmp_path)
    assert not dst.exists()


def test_a_model_target_must_build_models(tmp_path):
    victim = tmp_path / "victim"
    victim.mkdir()
    with pytest.raises(UsageError, match=r"model._target_=shutil.rmtree is not a model builder"):
        models.from_config({"_target_": "shutil.rmtree", "path": str(victim)})
    assert victim.is_dir()
    # normbench's module path is no loophole: what counts is where the function lives and its mark.
    with pytest.raises(UsageError, match="is not a dataset builder"):
        data.load({"_target_": "normbench.data.pickle.loads", "data": b""})


def test_a_nested_target_in_the_options_is_refused_before_it_runs(tmp_path):
    dst = tmp_path / "dst.txt"
    node = {
        "_target_": "normbench.data.synthetic",
        "shape": {"_target_": "shutil.copyfile", "src": __file__, "dst": str(dst)},
    }
    with pytest.raises(UsageError, match=r"dataset.shape._target_: a dataset's options may not name a _target_"):
        data.load(node)
    assert not dst.exists()


def test_registered_and_library_builders_are_allowed():
    @plugins.register("dataset")
    def tensor_maker():
        return torch.zeros(2)

    assert plugins.allowed(tensor_maker, "dataset") and not plugins.allowed(tensor_maker, "model")
    assert plugins.allowed(torch.nn.Linear, "model") and not plugins.allowed(torch.nn.Linear, "dataset")
    assert plugins.allowed(data.mnist1d, "dataset") and plugins.allowed(models.resnet20, "model")
    assert not plugins.allowed(torch.zeros, "model") and not plugins.allowed(data.load, "dataset")
    with pytest.raises(ValueError, match="register takes one of"):
        plugins.register("optimizer")


# ------------------------------------------------------------------------------------ accuracy keys


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("accuracy.lr_reference.lr=nan", r"accuracy.lr_reference.lr must be a finite number > 0, got nan"),
        ("accuracy.lr_reference.lr=-1", r"accuracy.lr_reference.lr must be a finite number > 0, got -1"),
        ("accuracy.lr_reference.lr=inf", r"accuracy.lr_reference.lr must be a finite number > 0, got inf"),
        ("accuracy.momentum=1.5", r"accuracy.momentum must be a finite number in \[0, 1\), got 1.5"),
        ("accuracy.weight_decay=-1", r"accuracy.weight_decay must be a finite number >= 0, got -1"),
        ("accuracy.warmup_epochs=-1", r"accuracy.warmup_epochs must be a finite number >= 0"),
        ("accuracy.eval_batch=0", r"accuracy.eval_batch must be > 0, got 0"),
        ("accuracy.eval_batch=-5", r"accuracy.eval_batch must be > 0, got -5"),
        ("accuracy.lr_reference.batch=0", r"accuracy.lr_reference.batch must be > 0, got 0"),
    ],
)
def test_accuracy_values_are_refused_before_training(tmp_path, monkeypatch, override, message):
    def no_training(*args, **kwargs):
        raise AssertionError("trained despite a bad config")

    monkeypatch.setattr(accuracy, "train", no_training)
    with pytest.raises(UsageError, match=message) as info:
        accuracy.run(config(*TINY, override), tmp_path)
    assert "\n" not in str(info.value)
    assert list(tmp_path.iterdir()) == []  # nothing written


@pytest.mark.parametrize(
    ("override", "says"),
    [
        ("accuracy.momentum=abc", r"'abc' of type 'str' could not be converted to Float \(key accuracy.momentum\)"),
        ("accuracy.precision=fp8", r"expected one of \[fp32, bf16\] \(key accuracy.precision\)"),
        ("accuracy.weight_decay_on=some", r"expected one of \[all, weights\] \(key accuracy.weight_decay_on\)"),
        ("accuracy.nesterov=maybe", r"'maybe' is not a valid bool.*\(key accuracy.nesterov\)"),
        ("accuracy.fast_path=often", r"'often' is not a valid bool.*\(key accuracy.fast_path\)"),
        ("accuracy.epochs=ten", r"could not be converted to Integer \(key accuracy.epochs\)"),
        ("accuracy.batchsize=4", r"Key 'batchsize' not in 'AccuracySettings' \(key accuracy.batchsize\)"),
    ],
)
def test_the_accuracy_schema_refuses_a_bad_key_or_value_in_one_line_naming_it(override, says):
    with pytest.raises(ConfigCompositionException) as err:
        config(*TINY, override)
    line = specs.one_line(err.value)
    assert re.search(says, line) and "\n" not in line, line


def test_mnist1d_options_of_the_wrong_type_are_one_line():
    with pytest.raises(UsageError, match=r"dataset.num_samples must be an int, got 'abc'"):
        data.load(config("dataset.num_samples=abc").dataset)
    with pytest.raises(UsageError, match=r"dataset.train_split must be a number between 0 and 1, got 'x'"):
        data.mnist1d(train_split="x")


# ------------------------------------------------------------------------------------ image folders


def test_an_image_folder_with_more_classes_than_cifar10_is_refused(tmp_path):
    from tests.test_data import write_image_folder

    write_image_folder(tmp_path / "tree", classes=[f"c{i:02d}" for i in range(12)], train=1, test=1, size=4)
    with pytest.raises(UsageError, match=r"12 classes under train/ \(c00, c01, .*c11\), more than CIFAR-10's 10"):
        data.cifar10(root=str(tmp_path / "tree"))


@pytest.mark.parametrize("limit", [30, 60])  # 64 pixels: over the limit (PIL warns), over twice it (PIL raises)
def test_a_decompression_bomb_is_named(tmp_path, monkeypatch, limit):
    from PIL import Image

    from tests.test_data import write_image_folder

    write_image_folder(tmp_path / "tree", train=1, test=1, size=8)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", limit)  # the 8x8 images are bombs at this limit
    with pytest.raises(UsageError, match=r"train/cat/0000.png is not a CIFAR-sized image .*64 pixels"):
        data.cifar10(root=str(tmp_path / "tree"))


# --------------------------------------------------------------------------------------- speed keys


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("speed.peak_gbps=inf", r"speed.peak_gbps must be > 0, got inf"),
        ("speed.min_run_time=inf", r"speed.min_run_time must be > 0 and at most 3600, got inf"),
        ("speed.min_run_time=1e9", r"speed.min_run_time must be > 0 and at most 3600, got 1000000000.0"),
        (
            "speed.threads=1000",
            r"speed.threads must be > 0 and at most \d+, got 1000: CPU threads",
        ),
        ("speed.batch_size=100000000", r"the shape \(100000000, .*\) .* need about .* GiB, and cpu has .* GiB free"),
        ("speed.spatial=[1000,1000,1000000]", r"the shape \(.*1000000\) .*need about [0-9.e+]+ GiB"),
        ("speed.peak_copy_mb=100000000", r"speed.peak_copy_mb=100000000: the peak's two copy buffers need about"),
        ("norm.eps=inf", r"bn: eps must be a finite number > 0, got inf: e.g. norm.eps=1e-5"),
    ],
)
def test_speed_values_are_refused_before_anything_is_allocated(tmp_path, monkeypatch, override, message):
    monkeypatch.setattr(speed_job, "_hydra", lambda: None)  # a plain single run, whatever Hydra state another test left
    with pytest.raises(UsageError, match=message) as info:
        speed_job.run(config("device=cpu", "pass=fwd", override, app="speed"), tmp_path)
    assert "\n" not in str(info.value)
    assert list(tmp_path.iterdir()) == []


def test_a_huge_peak_copy_is_fine_when_the_peak_is_given():
    from normbench.bench import speed

    cfg = config("device=cpu", "speed.peak_copy_mb=100000000", "speed.peak_gbps=10", app="speed")
    speed.check_speed_config(speed_job.spec(cfg), torch.device("cpu"))  # no copy is made, so nothing to refuse


# -------------------------------------------------------------------------------------------- console


def test_the_console_says_n_a_for_evaluations_a_norm_does_not_have(tmp_path, caplog):
    caplog.set_level("INFO", logger="normbench.train.accuracy")
    [row] = accuracy.run(config(*TINY, "norm=gn", "accuracy.epochs=1"), tmp_path)
    assert math.isnan(row["test_acc_precise_bn"]) and math.isnan(row["test_acc_batch_stats"])
    [line] = [r.getMessage() for r in caplog.records if "test acc" in r.getMessage() and "epoch" not in r.getMessage()]
    assert line.endswith(f"test acc {row['test_acc']:.4f} (PreciseBN n/a, batch stats n/a)"), line
    assert accuracy.shown(0.91234) == "0.9123"


def test_a_sweep_job_says_which_of_the_planned_jobs_it_is(tmp_path):
    from normbench.app.cli import job_progress

    jobs = [["norm=bn", "seed=0"], ["norm=gn", "seed=0"], ["norm=gn", "seed=1"]]
    (tmp_path / "run.json").write_text(json.dumps({"command": "normbench-accuracy -m", "jobs": jobs}))
    assert job_progress(tmp_path, 2) == "job 3 of 3: norm=gn seed=1"
    assert job_progress(tmp_path, 3) is None  # not a planned job
    (tmp_path / "run.json").write_text('{"jobs": null}')  # another sweeper: nothing planned
    assert job_progress(tmp_path, 0) is None
    (tmp_path / "run.json").write_text("not json")
    assert job_progress(tmp_path, 0) is None
    assert job_progress(tmp_path / "absent", 0) is None


# ----------------------------------------------------------------------------- Ctrl-C and kill -9


@pytest.mark.parametrize(("flags", "lines"), [([], 1), (["-m"], 0)])
def test_ctrl_c_exits_130_without_a_traceback(capsys, monkeypatch, flags, lines):
    from normbench.app import cli

    def interrupted():
        raise KeyboardInterrupt

    monkeypatch.setattr(sys, "argv", ["normbench-speed", *flags, "norm=gn"])
    with pytest.raises(SystemExit) as info:
        cli._app("speed", interrupted)
    assert info.value.code == 130
    err = capsys.readouterr().err
    # A single run says so; a sweep's exit hook prints its own one line (what finished, what did not).
    assert err.splitlines() == (["error: normbench-speed was interrupted (Ctrl-C)"] if lines else [])


ORPHAN = """
import multiprocessing, sys, time
from normbench.workers import end_with_parent


def worker(path):
    assert end_with_parent(interval=0.02)
    while True:  # a job that writes for as long as it lives
        with open(path, "a") as f:
            f.write("x")
        time.sleep(0.01)


if __name__ == "__main__":
    p = multiprocessing.get_context("fork").Process(target=worker, args=(sys.argv[1],))
    p.start()
    print(p.pid, flush=True)
    time.sleep(60)
"""


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state not in ("Z", "X")  # a zombie has ended; only its exit status waits to be read


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc (Linux)")
def test_a_worker_process_ends_with_its_parent_on_kill_9(tmp_path):
    out = tmp_path / "written"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    parent = subprocess.Popen([sys.executable, "-c", ORPHAN, str(out)], stdout=subprocess.PIPE, text=True, env=env)
    worker = int(parent.stdout.readline())
    deadline = time.monotonic() + 10
    while not (out.exists() and out.stat().st_size) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert _alive(worker) and out.stat().st_size > 0
    parent.kill()  # SIGKILL: the parent runs no handler, so only the worker's own watcher can end it
    parent.wait()
    while _alive(worker) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not _alive(worker), "the worker outlived its parent"
    size = out.stat().st_size
    time.sleep(0.1)
    assert out.stat().st_size == size  # and it writes no more


def test_the_main_process_has_no_parent_to_end_with():
    from normbench.workers import end_with_parent

    assert end_with_parent() is False  # pytest's own process: under nohup a sweep must outlive its shell
