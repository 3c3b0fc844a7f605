"""Sweeps through Hydra's launchers end to end: every multirun ends in a report, failures included.

The real apps run through the joblib launcher in a subprocess (as a user runs them); a toy app that
uses normbench's `run_job` and `conf/common.yaml` checks the submitit local executor and a sweep whose
job exception escapes to Hydra (which then skips `on_multirun_end`).
"""

from __future__ import annotations

import importlib.resources
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest
import torch
from hydra import compose, initialize_config_dir, initialize_config_module

from normbench.app.callbacks import claim_gpu
from normbench.app.cli import CONFIGS
from normbench.device import resolve_device

CONF = importlib.resources.files("normbench.conf")
APPS = [name for name in ("speed", "accuracy") if (CONF / f"{name}.yaml").is_file()]

# The conf/ of the normbench under test (a checkout's, or the installed package's).
TOY_CONFIG = f"""
defaults:
  - common
  - _self_
x: 1
sleep: 0
hydra:
  searchpath:
    - {CONFIGS if CONFIGS.startswith("pkg://") else "file://" + CONFIGS}
"""

TOY_APP = """
import hydra
from omegaconf import DictConfig
from normbench.app.cli import run_job


def job(cfg, out):
    import os, time
    if cfg.x == 55:  # leaves the report unwritable
        from pathlib import Path
        from hydra.core.hydra_config import HydraConfig
        (Path(HydraConfig.get().sweep.dir) / "report.md").mkdir()
    if cfg.x == 7:
        raise ValueError("x=7 does not divide 64")
    start = time.time()
    time.sleep(cfg.sleep)
    return [{"kind": "accuracy", "norm": "gn", "impl": "native", "dataset": "toy", "model": "toy",
             "norm_batch": cfg.x, "seed": cfg.seed, "test_acc": 0.9 - 0.01 * cfg.seed,
             "gpu": os.environ.get("CUDA_VISIBLE_DEVICES", "none"), "pid": os.getpid(),
             "start": start, "end": time.time()}]


@hydra.main(config_path=".", config_name="app", version_base="1.3")
def main(cfg: DictConfig) -> None:
    if cfg.x == 13:
        raise RuntimeError("escaped the job")  # as a launcher or an interrupt can
    run_job(job, cfg)


if __name__ == "__main__":
    main()
"""


@pytest.fixture
def toy(tmp_path) -> Path:
    (tmp_path / "app.yaml").write_text(TOY_CONFIG)
    (tmp_path / "app.py").write_text(textwrap.dedent(TOY_APP))
    return tmp_path


def run(args: list[str], cwd: Path, timeout: int = 240) -> subprocess.CompletedProcess:
    env = {**os.environ, "HYDRA_FULL_ERROR": "1", "PYTHONWARNINGS": "ignore"}
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env, check=False)


def app_command(app: str) -> list[str]:
    exe = shutil.which(f"normbench-{app}")
    return [exe] if exe else [sys.executable, "-c", f"from normbench.app.cli import {app}; {app}()"]


def assert_report(sweep: Path) -> str:
    for name in ("summary.csv", "summary.parquet", "report.md", "report.html", "run.json"):
        assert (sweep / name).is_file(), name
    assert not [p for p in sweep.rglob("*") if p.name.endswith(".tmp")]  # nothing half-written
    return (sweep / "report.md").read_text()


def assert_job_log(job_dir: Path, name: str, says: str) -> None:
    """A job's log is named after its app (Hydra's job name; it was cli.log, after app/cli.py) and holds its lines."""
    assert [p.name for p in job_dir.glob("*.log")] == [name]
    assert says in (job_dir / name).read_text()


# ------------------------------------------------------------------------------------------ configs


@pytest.mark.parametrize("app", APPS)
@pytest.mark.parametrize("launcher", ["joblib", "parallel", "submitit_local", "submitit_slurm", "slurm"])
def test_apps_compose_with_every_launcher(app, launcher):
    """Each app switches launcher from the command line (launcher keys belong in conf/hydra/launcher)."""
    with initialize_config_module("normbench.conf", version_base="1.3"):
        cfg = compose(app, overrides=[f"hydra/launcher={launcher}"], return_hydra_config=True)
    assert cfg.hydra.callbacks.report._target_ == "normbench.app.callbacks.SweepReport"
    assert ("joblib" in cfg.hydra.launcher._target_) == (launcher in ("joblib", "parallel"))
    assert cfg.hydra.job.name == f"normbench-{app}"  # names the job log and, on SLURM, the job
    if "slurm" in launcher:
        assert cfg.hydra.launcher.name == f"normbench-{app}"


def test_normbench_launcher_configs(toy):
    with initialize_config_dir(str(toy), version_base="1.3"):
        slurm = compose(
            "app", overrides=["hydra/launcher=slurm", "hydra.launcher.partition=gpu"], return_hydra_config=True
        ).hydra.launcher
        parallel = compose("app", overrides=["hydra/launcher=parallel"], return_hydra_config=True).hydra.launcher
    assert slurm._target_.endswith("SlurmLauncher") and slurm.partition == "gpu"
    assert (slurm.tasks_per_node, slurm.gpus_per_node, slurm.nodes) == (1, 1, 1)  # one job per GPU
    assert parallel._target_.endswith("JoblibLauncher") and parallel.n_jobs == 2


def test_resolve_device_spreads_jobs_over_gpus(monkeypatch):
    """One job per GPU under joblib: job i on GPU i mod count, unless CUDA_VISIBLE_DEVICES pins one."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert [resolve_device("auto", i).index for i in range(6)] == [0, 1, 2, 3, 0, 1]
    assert resolve_device("cuda", None).index == 0
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2")  # SLURM or the user pinned the job: use what it sees
    assert resolve_device("auto", 5).index == 0


def test_claim_gpu_gives_each_process_its_own(tmp_path):
    first, second, third = {}, {}, {}  # three processes' claims (flock conflicts between open files)
    assert claim_gpu(tmp_path, ["2", "3"], start=1, claims=first) == "3"
    assert claim_gpu(tmp_path, ["2", "3"], start=1, claims=second) == "2"  # 3 is taken: the next free
    assert claim_gpu(tmp_path, ["2", "3"], start=0, claims=third) is None  # all taken: share
    assert claim_gpu(tmp_path, ["2", "3"], start=0, claims=first) == "3"  # a process keeps its GPU


# ------------------------------------------------------------------------------------- end to end


@pytest.mark.slow
def test_joblib_workers_never_share_a_gpu(toy):
    """Jobs of unequal length on 2 (pretend) GPUs: jobs that overlap in time never share a GPU."""
    sweep = toy / "sweep"
    proc = run(
        [
            sys.executable,
            "app.py",
            "-m",
            "hydra/launcher=joblib",
            "hydra.launcher.n_jobs=2",
            "hydra.callbacks.report.gpus=[0,1]",
            "x=1,2,3,4,5",
            "sleep=0.3,0.9",
            f"hydra.sweep.dir={sweep}",
        ],
        cwd=toy,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    jobs = pd.read_csv(sweep / "summary.csv", dtype={"gpu": str})
    assert len(jobs) == 10 and set(jobs["gpu"]) == {"0", "1"}
    assert not (sweep / ".gpu-locks").exists()  # cleaned up at the end
    assert (jobs.groupby("pid")["gpu"].nunique() == 1).all()  # a worker keeps its GPU
    for a in jobs.itertuples():
        for b in jobs.itertuples():
            if a.Index < b.Index and a.start < b.end and b.start < a.end:
                assert a.gpu != b.gpu, (a, b)


@pytest.mark.slow
@pytest.mark.skipif("accuracy" not in APPS, reason="needs normbench-accuracy")
def test_joblib_accuracy_sweep_with_a_failing_job(tmp_path):
    """`hydra/launcher=joblib` from a plain install; gn with 7 groups on 32 channels fails, the rest reports."""
    sweep = tmp_path / "sweep"
    proc = run(
        app_command("accuracy")
        + [
            "-m",
            "hydra/launcher=joblib",
            "hydra.launcher.n_jobs=2",
            "norm=gn",
            "norm.groups=8,7",
            "accuracy.batch_size=4",
            "seed=0",
            "accuracy.epochs=1",
            "dataset=synthetic",
            "device=cpu",
            "accuracy.progress=false",
            "accuracy.precise_bn_samples=64",
            f"hydra.sweep.dir={sweep}",
        ],
        cwd=tmp_path,
    )
    assert proc.returncode == 1 and "1 of 2 jobs failed" in proc.stderr, proc.stderr[-3000:]
    md = assert_report(sweep)
    frame = pd.read_csv(sweep / "summary.csv")
    assert frame.set_index("job")["status"].to_dict() == {0: "ok", 1: "failed"}
    assert frame.loc[0, "kind"] == "accuracy" and 0 <= frame.loc[0, "test_acc"] <= 1
    assert "failed" in md and "norm.groups=7" in md and "7 groups" in md
    assert (sweep / "accuracy_vs_batch.png").read_bytes()[:4] == b"\x89PNG"
    info = json.loads((sweep / "run.json").read_text())
    assert "hydra/launcher=joblib" in info["command"] and info["launcher"].endswith("JoblibLauncher")
    assert_job_log(sweep / "0", "normbench-accuracy.log", "wrote 1 row(s)")
    assert_job_log(sweep / "1", "normbench-accuracy.log", "failed")


@pytest.mark.slow
@pytest.mark.skipif("accuracy" not in APPS, reason="needs normbench-accuracy")
def test_parallel_accuracy_sweep_trains_a_k_invariant_norm_once(tmp_path):
    """Two jobs at a time, gn at three K: one training, two rows reusing it; bn trains at every K."""
    sweep = tmp_path / "sweep"
    proc = run(
        app_command("accuracy")
        + [
            "-m",
            "hydra/launcher=parallel",
            "norm=gn,bn",
            "accuracy.batch_size=2,4,8",
            "seed=0",
            "accuracy.global_batch=16",
            "dataset=synthetic",
            "dataset.train_size=128",
            "dataset.test_size=64",
            "accuracy.epochs=1",
            "accuracy.precise_bn_samples=32",
            "device=cpu",
            "accuracy.progress=false",
            f"hydra.sweep.dir={sweep}",
        ],
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    md = assert_report(sweep)
    rows = pd.read_csv(sweep / "summary.csv", dtype={"job": str, "reused_from": str})
    assert (rows.status == "ok").all() and len(rows) == 6
    gn, bn = rows[rows.norm == "gn"], rows[rows.norm == "bn"]
    trained = gn[gn.reused_from.isna()]
    assert len(trained) == 1 and set(gn.reused_from.dropna()) == set(trained.job)
    assert gn.test_acc.nunique() == 1 and gn.train_loss.nunique() == 1
    assert sorted(zip(gn.norm_batch, gn.workers)) == [(2, 8), (4, 4), (8, 2)]  # each row its own K and W
    assert bn.reused_from.isna().all() and bn.test_acc_precise_bn.notna().all()
    assert len(list((sweep / ".trained").iterdir())) == 1
    assert "2 of 6 rows (GroupNorm) reuse" in md and "identical by construction" in md


@pytest.mark.slow
@pytest.mark.skipif("speed" not in APPS, reason="needs normbench-speed")
def test_joblib_speed_sweep_with_a_failing_job(tmp_path):
    """The issue's fault sweep: gn with 7 groups on 8 channels fails; the report holds the rest."""
    sweep = tmp_path / "sweep"
    proc = run(
        app_command("speed")
        + [
            "-m",
            "hydra/launcher=joblib",
            "hydra.launcher.n_jobs=2",
            "norm=gn",
            "norm.groups=8,7",
            "speed.channels=8",
            "impl=reference,native",
            "speed.batch_size=2",
            "pass=fwd",
            "device=cpu",
            "speed.min_run_time=0.02",
            "speed.peak_gbps=10",
            f"hydra.sweep.dir={sweep}",
        ],
        cwd=tmp_path,
    )
    assert proc.returncode == 1 and "2 of 4 jobs failed" in proc.stderr, proc.stderr[-3000:]
    md = assert_report(sweep)
    frame = pd.read_csv(sweep / "summary.csv")
    ok, failed = frame[frame.status == "ok"], frame[frame.status == "failed"]
    assert (ok["pass"] == "wrapper").sum() == 1  # the native job's module wrapper, timed on its own
    ok = ok[ok["pass"] != "wrapper"]
    assert len(ok) == 2 and set(ok["impl"]) == {"reference", "native"} and (ok["median_ms"] > 0).all()
    assert len(failed) == 2 and failed["error"].str.contains("7 groups").all()
    assert "norm.groups=7" in md and "1.00x" in md  # native's own speedup in the table
    for png in ("speed_latency.png", "speed_roofline.png"):
        assert (sweep / png).read_bytes()[:4] == b"\x89PNG"
    assert_job_log(sweep / str(ok["job"].iloc[0]), "normbench-speed.log", "row(s)")


@pytest.mark.slow
def test_submitit_local_sweep(toy):
    sweep = toy / "sweep"
    proc = run(
        [
            sys.executable,
            "app.py",
            "-m",
            "hydra/launcher=submitit_local",
            "x=2,7",
            "seed=0,1",
            f"hydra.sweep.dir={sweep}",
        ],
        cwd=toy,
    )
    assert proc.returncode == 1 and "2 of 4 jobs failed" in proc.stderr, proc.stderr[-3000:]
    md = assert_report(sweep)
    frame = pd.read_csv(sweep / "summary.csv")
    assert sorted(frame["status"]) == ["failed", "failed", "ok", "ok"]
    assert "ValueError: x=7 does not divide 64" in md and "| 2 " in md


def test_report_survives_an_exception_that_escapes_hydra(toy):
    """Hydra re-raises a job's exception after the batch and skips on_multirun_end: the exit hook reports."""
    sweep = toy / "sweep"
    proc = run([sys.executable, "app.py", "-m", "x=2,13", f"hydra.sweep.dir={sweep}"], cwd=toy)
    assert proc.returncode != 0 and "escaped the job" in proc.stderr
    md = assert_report(sweep)
    assert "did not end normally" in md
    frame = pd.read_csv(sweep / "summary.csv").set_index("job")
    assert frame.loc[0, "status"] == "ok" and frame.loc[1, "status"] == "missing"


def test_report_failure_does_not_pass_silently(toy):
    sweep = toy / "sweep"
    proc = run([sys.executable, "app.py", "-m", "x=55", f"hydra.sweep.dir={sweep}"], cwd=toy)
    assert proc.returncode == 0  # the sweep's own outcome stands
    assert "the report of" in proc.stderr + proc.stdout and "normbench-report" in proc.stderr + proc.stdout
    assert "Traceback" in (sweep / "report-error.txt").read_text()
