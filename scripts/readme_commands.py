"""Run every command the README shows, once, each on a tiny config: CI's check that they work as typed.

    python scripts/readme_commands.py              # all of them (.ci/run does this), ~1-2 min on 2 cores
    python scripts/readme_commands.py --list       # what would run, nothing run

The commands are read from README.md: every line of its ```bash blocks and every `normbench-...`
command quoted in its prose. Each runs exactly as the README types it, in a scratch directory, with
the overrides of `TINY` below appended (later Hydra overrides win, so a sweep shrinks to a job or
two and a model to a few steps) and the README's placeholders filled in (`PLACEHOLDERS`). A command
the README shows that `TINY` does not know fails the check: a new README command gets its tiny
config here. `pip install` is .ci/run's own install step and `pytest` its test step, so those parts
of a line are not run again. Exit status: the number of commands that failed (0: all passed).
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import subprocess
import sys
import tempfile
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# Run by .ci/run itself: its install step (`pip install ...`) and its test step (`pytest`).
CI_STEPS = ("pip install", "pytest")

_SPEED = ["speed.channels=8", "speed.spatial=[4,4]", "speed.min_run_time=0.01", "speed.min_repeats=2"]
_SPEED += ["speed.peak_copy_mb=8", "device=cpu"]
_ONE_SPEED_JOB = ["norm=bn", "impl=native", "speed.batch_size=2"]
_ACC = ["accuracy.epochs=1", "accuracy.progress=false", "accuracy.precise_bn_samples=32", "device=cpu"]
_MNIST1D = ["dataset.num_samples=200"]  # 160 training samples: 2 steps of 64
# 20 images of 8x8 per class (dataset.root below): resnet20 takes 8 x K = 16 images per step at K = 2.
_CIFAR = ["dataset.train_per_class=2", "dataset.test_per_class=1", "accuracy.eval_batch=10"]
_CIFAR += ["accuracy.precise_bn_samples=16", "norm=bn", "accuracy.batch_size=2", "seed=0"]
# Time: the end-of-sweep report (plots) and joblib's worker processes cost seconds per sweep, so only
# the main sweeps build one and use the default launcher; `normbench-report` builds two more below.
_LEAN = ["hydra.callbacks.report.enabled=false"]
_LEAN_ACC = [*_LEAN, "hydra/launcher=basic"]

# README command (placeholders filled in) -> what CI appends to it.
TINY: dict[str, list[str]] = {
    "normbench-accuracy -m": _ACC
    + _MNIST1D
    + ["norm=bn,gn", "accuracy.batch_size=8", "seed=0", "hydra.sweep.dir={accuracy_sweep}"],
    "normbench-speed -m": _SPEED + _ONE_SPEED_JOB + ["hydra.sweep.dir={speed_sweep}"],
    "normbench-speed -m sweep=gpu": _SPEED
    + _ONE_SPEED_JOB
    + _LEAN
    + ["shape=cpu", "dtype=float32", "layout=contiguous"],
    "normbench-speed -m sweep=model": [*_SPEED, *_ONE_SPEED_JOB, *_LEAN, "shape.input=[3,8,8]"],
    "normbench-report {accuracy_sweep}": [],
    "normbench-report --compare {speed_sweep} {speed_sweep_2}": [],
    "pytest tests/benchmarks --benchmark-only": ["-q", "-p", "no:cacheprovider", "--benchmark-max-time=0.001"],
    "normbench-speed --list": [],
    "normbench-accuracy --help": [],
    "normbench-speed --version": [],
    # The same one job as `normbench-speed -m`, so that --compare has both sides of it.
    "normbench-speed -m norm=bn,gn impl=reference,native speed.batch_size=4,16 device=cpu": _SPEED
    + _ONE_SPEED_JOB
    + [*_LEAN, "hydra.sweep.dir={speed_sweep_2}"],
    # No GPU here: run as a one-job sweep, whose row is `skipped` with the reason (a single run exits 2
    # with it: triton needs CUDA or TRITON_INTERPRET=1); `-m` last, after every override.
    "normbench-speed impl=triton triton.cooperative=true": [*_SPEED, *_ONE_SPEED_JOB[:1], *_LEAN, "-m"],
    "normbench-speed norm=gn impl=compiled dtype=bfloat16 layout=channels_last shape=sd_gn": [
        *_SPEED,
        "speed.batch_size=1",
        "speed.channels=32",
    ],
    "normbench-accuracy -m norm=bn,gn accuracy.batch_size=4,16 seed=0 accuracy.epochs=2 device=cpu": _ACC
    + _MNIST1D
    + _LEAN_ACC
    + ["norm=bn", "accuracy.batch_size=16"],
    "normbench-accuracy -m seed=0,1,2,3,4 "
    "'accuracy.lr_search={grid:[0.025,0.05,0.1,0.2,0.4],validation:0.2,seed:0,seeds:3}'": _ACC
    + _MNIST1D
    + _LEAN_ACC
    + [
        "seed=0",
        "norm=bn",
        "accuracy.batch_size=8",
        "accuracy.lr_search.grid=[0.05,0.1]",
        "accuracy.lr_search.seeds=1",
    ],
    "normbench-accuracy -m +experiment=norm_family": _ACC
    + _MNIST1D
    + _LEAN_ACC
    + ["norm=brn", "accuracy.batch_size=8", "seed=0"],
    "normbench-accuracy -m +experiment=gn_figure1_cifar10 dataset.root={cifar10_zip}": _ACC + _CIFAR + _LEAN_ACC,
    "normbench-accuracy -m +experiment=cifar10_resnet20_cpu dataset.root={cifar10_zip}": _ACC
    + _CIFAR
    + _LEAN_ACC
    + ["accuracy.global_batch=16"],
    # Its report holds the claims' verdicts: built at the sweep's end.
    "normbench-accuracy -m +experiment=seed_claims": _ACC
    + _MNIST1D
    + ["accuracy.precise_bn_samples=null", "+claim_run=bn,none", "seed=0", "hydra/launcher=basic"],
    "normbench-accuracy --config-dir myconf model=mine": _ACC + _MNIST1D + ["accuracy.batch_size=8"],
    "python -m normbench.tools.hbm_bytes hbm.csv": ["--dry-run", "--norm", "gn"],
    "python -m normbench.app.selfcheck --out DIR": ["--device", "cpu", "speed.min_run_time=0.01"],
    # The plan prices each (norm, K) by one training step on the CPU: one pair keeps it to seconds.
    "python -m normbench.app.plan +experiment=cifar10_resnet20_gpu": ["norm=bn", "accuracy.batch_size=32", "seed=0"],
}
# README text -> where the scratch directory has it.
PLACEHOLDERS = {
    "results/accuracy-sweep/<stamp>": "{accuracy_sweep}",
    "--compare BEFORE AFTER": "--compare {speed_sweep} {speed_sweep_2}",
    "path/to/cifar10-jpeg.zip": "{cifar10_zip}",
    "../shared/data/cifar10-jpeg.zip": "{cifar10_zip}",
}
# Prose that quotes a command's syntax rather than a command to run.
SYNTAX = ("PATH...", "A B", "--compare A B")

# The user's model the README describes: myconf/model/mine.yaml naming mynet.Model (docs/plugins.md).
USER_MODEL = """import math
from torch import nn


class Model(nn.Module):
    def __init__(self, input_shape, num_classes, norm, width=16):
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(math.prod(input_shape), width), norm(width), nn.ReLU())
        self.head = nn.Linear(width, num_classes)

    def forward(self, x):
        return self.head(self.body(x))
"""


def readme_commands(text: str) -> list[str]:
    """Every command of README.md: the lines of its bash blocks and the `normbench-` commands in its prose,
    in order, each once, comments dropped and placeholders marked."""
    found: list[str] = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for raw in block.splitlines():
            line = re.split(r"\s+#\s", raw, maxsplit=1)[0].strip()
            if line:
                found += [part.strip() for part in line.split("&&")]
    prose = re.sub(r"```.*?```", "", text, flags=re.S)
    for quoted in re.findall(r"`((?:normbench-|python -m normbench)[^`]*)`", prose):
        if " " in quoted and not any(s in quoted for s in SYNTAX):
            found.append(" ".join(quoted.split()))  # a quote may break across lines
    commands = []
    for typed in found:
        command = typed
        for text_, mark in PLACEHOLDERS.items():
            command = command.replace(text_, mark)
        if command not in commands and not (command.startswith(CI_STEPS[0]) or command == CI_STEPS[1]):
            commands.append(command)
    return commands


def tiny_cifar10_zip(path: Path) -> Path:
    """A CIFAR-10-shaped ImageFolder .zip of 8x8 PNGs: 10 classes, 2 train and 1 test image each."""
    import io

    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    with zipfile.ZipFile(path, "w") as z:
        for split, count in (("train", 2), ("test", 1)):
            for c in range(10):
                for i in range(count):
                    buf = io.BytesIO()
                    Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(buf, format="PNG")
                    z.writestr(f"cifar10/{split}/class{c}/{i}.png", buf.getvalue())
    return path


def scratch(work: Path) -> dict[str, str]:
    """The scratch directory's files the commands need, and the placeholders' values there."""
    (work / "myconf" / "model").mkdir(parents=True)
    (work / "myconf" / "model" / "mine.yaml").write_text("_target_: mynet.Model\n")
    (work / "mynet.py").write_text(USER_MODEL)
    return {
        "cifar10_zip": str(tiny_cifar10_zip(work / "cifar10-tiny.zip")),
        "accuracy_sweep": "results/accuracy-sweep/tiny",
        "speed_sweep": "results/speed-sweep/tiny",
        "speed_sweep_2": "results/speed-sweep/tiny-2",
    }


def fill(arg: str, values: dict[str, str]) -> str:
    """`arg` with its placeholders ({accuracy_sweep}...) filled in; other braces (a Hydra dict) kept."""
    for name, value in values.items():
        arg = arg.replace("{" + name + "}", value)
    return arg


def run(command: str, values: dict[str, str], work: Path, env: dict[str, str]) -> tuple[str, float, float, str | None]:
    """(command, wall seconds, CPU seconds of the command and its children, None if it passed else
    what it printed)."""
    argv = [fill(a, values) for a in shlex.split(command) + TINY[command]]
    if argv[0] == "pytest":  # the same interpreter's pytest, in the checkout
        argv = [sys.executable, "-m", *argv]
    elif argv[0] == "python":
        argv[0] = sys.executable
    cwd = ROOT if command.startswith(CI_STEPS[1]) else work
    t = time.perf_counter()
    with tempfile.TemporaryFile("w+") as log:
        proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT, text=True)
        _, status, usage = os.wait4(proc.pid, 0)  # the CPU time of this command alone, children included
        proc.returncode = os.waitstatus_to_exitcode(status)
        log.seek(0)
        output = log.read()
    failure = f"exit {proc.returncode}; ran: {shlex.join(argv)}\n{output[-5000:]}" if proc.returncode else None
    return command, time.perf_counter() - t, usage.ru_utime + usage.ru_stime, failure


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--list", action="store_true", help="print the commands with their tiny overrides; run none")
    opts = parser.parse_args(argv)
    commands = readme_commands((ROOT / "README.md").read_text())
    unknown = [c for c in commands if c not in TINY]
    if unknown:
        for c in unknown:
            print(
                f"error: the README shows `{c}`, which scripts/readme_commands.py has no tiny config for",
                file=sys.stderr,
            )
        return len(unknown)
    if opts.list:
        for c in commands:
            print(shlex.join(shlex.split(c) + TINY[c]))
        return 0
    failed, total, cpu = [], time.perf_counter(), 0.0
    with tempfile.TemporaryDirectory(prefix="readme-commands-") as tmp:
        work = Path(tmp)
        values = scratch(work)
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(work), os.environ.get("PYTHONPATH")]))}
        env.update(OMP_NUM_THREADS="1", NORMBENCH_BENCH_SIZE="tiny")
        # The console scripts of this interpreter's environment, activated or not.
        env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
        # Two at a time (CI has 2 cores; each command runs on one thread), the benchmarks alone (they
        # time), and the reports after the sweeps they read.
        bench = [c for c in commands if c.startswith(CI_STEPS[1])]
        reports = [c for c in commands if c.startswith("normbench-report")]
        rest = [c for c in commands if c not in bench + reports]
        for group, width in ((rest, 2), (reports, 2), (bench, 1)):
            with ThreadPoolExecutor(width) as pool:
                for command, seconds, cpu_s, failure in pool.map(lambda c: run(c, values, work, env), group):
                    cpu += cpu_s
                    print(
                        f"{seconds:6.1f} s ({cpu_s:5.1f} s CPU)  {'FAILED' if failure else 'ok'}  {command}", flush=True
                    )
                    if failure:
                        failed.append(command)
                        print(f"  {failure}", flush=True)
    passed = len(commands) - len(failed)
    wall = time.perf_counter() - total
    print(f"{passed} of {len(commands)} README commands passed in {wall:.0f} s ({cpu:.0f} s of CPU time)")
    return len(failed)


if __name__ == "__main__":
    sys.exit(main())
