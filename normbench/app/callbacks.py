"""The Hydra callbacks normbench's sweeps run with (set in conf/common.yaml): a report at the end of
every multirun, and one GPU per worker process when the joblib launcher runs a sweep on several GPUs.

`on_multirun_start` claims the sweep directory: a sweep never writes where another sweep's results
are, so it refuses (exit status 2, one line) a directory that is not empty, and creates `run.json`
(command, date, git commit, host, versions, the planned jobs) exclusively, so of two sweeps started
into one directory at once only one runs. `on_multirun_end` builds the report there
(`normbench.report.document.build_report`) and exits 1 with a one-line summary when any job left no
measurement (`fail_on_error`). Hydra calls `on_multirun_end` only when the sweep returns: if a job's
exception escapes (normbench's jobs record theirs and return, but a launcher or an interrupt can still
raise), Hydra skips it. So the callback also registers an exit hook at multirun start that builds the
report of whatever finished when the sweep did not end normally, and turns SIGTERM (what SLURM sends
at a time limit) into that same exit. A report that fails to build is logged with its traceback, left
as `report-error.txt` in the sweep directory, and never hides the sweep's own outcome.

A single run (no -m) claims its directory the same way in `on_run_start`, before Hydra opens the job's
log there: `hydra.run.dir` may not hold another job's results, and a symbolic link where the run will
write (the log, `.hydra/`, the peak cache) is removed rather than written through.

One job per GPU: joblib hands the next job to whichever worker process is free, so a job number says
nothing about which GPUs are busy. Instead each worker process claims a GPU of its own for its
lifetime (an exclusive lock file in the sweep directory) and sets `CUDA_VISIBLE_DEVICES` to it before
the job touches CUDA; `normbench.device.resolve_device` then uses the one GPU the job sees. With
more workers than GPUs (`hydra.launcher.n_jobs`), the extra workers share, spread by job number.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import shutil
import signal
import sys
import traceback
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger("normbench")

ERROR_FILE = "report-error.txt"
GPU_LOCKS = ".gpu-locks"

_CLAIM: dict[str, Any] = {}  # this process's GPU: {"dir": lock dir, "gpu": id, "lock": the FileLock held}


def claim_gpu(lock_dir: str | Path, gpus: list[str], start: int = 0, claims: dict | None = None) -> str | None:
    """Lock one of `gpus` (CUDA_VISIBLE_DEVICES entries) for this process, trying `start` first (mod
    the count); the same GPU again on later calls; None when every one is taken. Each try does not
    wait: a taken GPU is skipped. The lock holds until the process exits (`claims` keeps it referenced)."""
    claims = _CLAIM if claims is None else claims
    if claims.get("dir") == str(lock_dir):
        return claims["gpu"]
    Path(lock_dir).mkdir(parents=True, exist_ok=True)
    for k in range(len(gpus)):
        gpu = str(gpus[(start + k) % len(gpus)])
        lock = FileLock(Path(lock_dir) / f"gpu{gpu}.lock", timeout=0)
        try:
            lock.acquire()
        except Timeout:
            continue
        claims.update(dir=str(lock_dir), gpu=gpu, lock=lock)
        return gpu
    return None


def visible_gpus() -> list[str]:
    """The GPUs this process may use, as CUDA_VISIBLE_DEVICES entries."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [g.strip() for g in env.split(",") if g.strip()]
    try:
        import torch

        return [str(i) for i in range(torch.cuda.device_count())]
    except Exception:
        return []


class SweepDirTaken(Exception):
    """The sweep directory holds another sweep's results."""


def claim_sweep_dir(sweep: Path, run_json: bytes) -> None:
    """Make `sweep` this sweep's own, or raise SweepDirTaken: it must be empty or absent, and `run.json`
    is created with a hard link, which fails if the file exists, so two sweeps cannot both claim it."""
    from normbench.io.provenance import RUN_FILE

    taken = sorted(p.name for p in sweep.iterdir())[:5] if sweep.is_dir() else []
    if sweep.exists() and not sweep.is_dir():
        taken = [sweep.name]
    how = "pick a new hydra.sweep.dir (the default is stamped to the microsecond), or move the old results away first"
    if taken:
        raise SweepDirTaken(
            f"hydra.sweep.dir={sweep} already holds results ({', '.join(taken)}, ...): a sweep never "
            f"writes over another one's; {how}"
        )
    sweep.mkdir(parents=True, exist_ok=True)
    tmp = sweep / f".{RUN_FILE}.{os.getpid()}.tmp"
    tmp.write_bytes(run_json)
    try:
        os.link(tmp, sweep / RUN_FILE)
    except FileExistsError:
        raise SweepDirTaken(f"another sweep started in hydra.sweep.dir={sweep} at the same time; {how}") from None
    finally:
        tmp.unlink(missing_ok=True)


# What a single run writes into its directory besides its log (Hydra's .hydra/ files, normbench's).
RUN_FILES = (
    ".hydra",
    ".hydra/config.yaml",
    ".hydra/hydra.yaml",
    ".hydra/overrides.yaml",
    "peak_bandwidth.json",
    "peak_bandwidth.json.lock",
)


def claim_run_dir(run: Path, job_name: str) -> list[str]:
    """Make `run` (hydra.run.dir) a single run's own, or raise SweepDirTaken: it may not hold a job's
    results (`rows.csv`, `failure.json`: another run's, of either app) or a sweep. A symbolic link where
    the run will write (its log, `.hydra/`, the peak cache) is removed, so nothing is written through it
    to a file elsewhere; returns a note per link removed."""
    from normbench.io.provenance import RUN_FILE
    from normbench.io.results import FAILURE_FILE, ROWS_FILE

    how = "pick a fresh hydra.run.dir (the default is stamped to the microsecond)"
    held = [n for n in (ROWS_FILE, FAILURE_FILE, RUN_FILE, "multirun.yaml") if os.path.lexists(run / n)]
    if held:
        raise SweepDirTaken(
            f"hydra.run.dir={run} already holds results ({', '.join(held)}): a run never writes over another "
            f"job's or sweep's; {how}"
        )
    notes = []
    for name in (f"{job_name}.log", *RUN_FILES):
        path = run / name
        if path.is_symlink():
            target = os.readlink(path)
            path.unlink()  # the link only: its target is not ours to touch
            notes.append(f"removed the symbolic link {path} (to {target}): a run writes only in its own directory")
    return notes


def planned_jobs(config: DictConfig) -> list[list[str]] | None:
    """The overrides of every job the sweep will launch, as Hydra's basic sweeper splits them (None
    for another sweeper, or a sweep it cannot expand without its config loader)."""
    target = str(OmegaConf.select(config, "hydra.sweeper._target_") or "")
    if not target.endswith("BasicSweeper"):
        return None
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    params = OmegaConf.select(config, "hydra.sweeper.params") or {}
    arguments = [f"{k}={v}" for k, v in params.items()] + list(config.hydra.overrides.task)
    try:
        overrides = OverridesParser.create().parse_overrides(arguments)
        batches = BasicSweeper.split_arguments(overrides, None)
    except Exception:
        return None
    return [list(job) for batch in batches for job in batch]


def failed_jobs(sweep: Path) -> str | None:
    """ "3 of 24 jobs failed: see .../report.md", or None when every job left its measurements."""
    from normbench.io.results import read_sweep

    try:
        frame = read_sweep(sweep)
    except Exception:
        return None
    if frame.empty:
        return None
    jobs = frame.drop_duplicates(["job", "overrides"] if "overrides" in frame else ["job"])
    bad = jobs[~jobs["status"].isin(["ok", "skipped"])]  # skipped: a combination the impl cannot run
    if bad.empty:
        return None
    kinds = ", ".join(f"{n} {status}" for status, n in bad["status"].value_counts().items())
    return f"{len(bad)} of {len(jobs)} jobs failed ({kinds}): see {sweep / 'report.md'}"


class SweepReport(Callback):
    """Write `summary.csv`, plots, `report.md` and `report.html` into the sweep directory (unless
    `enabled` is false); pin joblib workers to GPUs of their own (`gpus`: the CUDA_VISIBLE_DEVICES
    entries to spread over; None: every visible GPU)."""

    def __init__(self, enabled: bool = True, gpus: list | None = None, fail_on_error: bool = True) -> None:
        self.enabled = enabled
        self.gpus = [str(g) for g in gpus] if gpus is not None else None  # None: every visible GPU
        self.fail_on_error = fail_on_error
        self.sweep_dir: str | None = None
        self.main_pid: int | None = None
        self.done = False
        self.stopped_by: str | None = None

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        from normbench.io import provenance

        # Resolving the sweep dir here fixes its `${now:...}` stamp (Hydra caches the resolver) for
        # the launcher that creates it next.
        sweep = Path(str(config.hydra.sweep.dir))
        self.sweep_dir = str(sweep)
        self.main_pid = os.getpid()
        launcher = str(OmegaConf.select(config, "hydra.launcher._target_") or "")
        # Only joblib runs jobs in local worker processes; elsewhere a job sees the GPUs it was given.
        self.gpus = (self.gpus if self.gpus is not None else visible_gpus()) if "Joblib" in launcher else []
        hydra = config.hydra
        info = {"command": None}
        try:
            info = provenance.run_info(
                app=hydra.job.config_name,
                overrides=OmegaConf.to_container(hydra.overrides.task),
                hydra_overrides=[
                    o for o in OmegaConf.to_container(hydra.overrides.hydra) if not str(o).startswith("hydra.mode=")
                ],
                launcher=OmegaConf.select(config, "hydra.launcher._target_"),
                jobs=planned_jobs(config),
            )
        except Exception:
            log.warning("could not record what ran in %s:\n%s", provenance.RUN_FILE, traceback.format_exc())
        # Hydra raises nothing out of a callback (it warns), so a refusal is an exit of its own.
        try:
            claim_sweep_dir(sweep, json.dumps(info, indent=2).encode())
        except SweepDirTaken as exc:
            print(f"error: {exc}", file=sys.stderr)
            sys.exit(2)
        atexit.register(self._at_exit)
        try:
            signal.signal(signal.SIGTERM, self._on_sigterm)
        except ValueError:  # not the main thread: SIGTERM keeps its default
            pass

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        """A single run (no -m): claim hydra.run.dir before Hydra opens the job's log there."""
        try:
            notes = claim_run_dir(Path(str(config.hydra.run.dir)), str(config.hydra.job.name))
        except SweepDirTaken as exc:
            print(f"error: {exc}", file=sys.stderr)
            sys.exit(2)
        for note in notes:
            print(f"note: {note}", file=sys.stderr)

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        """In a joblib worker on a multi-GPU host: pin this worker to a GPU of its own."""
        if not self.gpus or len(self.gpus) < 2 or os.getpid() == self.main_pid or not self.sweep_dir:
            return
        num = OmegaConf.select(config, "hydra.job.num") or 0
        gpu = claim_gpu(Path(self.sweep_dir) / GPU_LOCKS, self.gpus, start=int(num))
        if gpu is None:
            if not _CLAIM.get("warned"):
                _CLAIM["warned"] = True
                log.warning(
                    "more parallel jobs than GPUs (%d): set hydra.launcher.n_jobs=%d so that jobs do not share a GPU",
                    len(self.gpus),
                    len(self.gpus),
                )
            return
        os.environ["CUDA_VISIBLE_DEVICES"] = gpu

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        from normbench import plugins
        from normbench.errors import UsageError

        self.sweep_dir = self.sweep_dir or str(config.hydra.sweep.dir)
        try:  # the report reads the registry: a plug-in norm's traits too
            plugins.load(config.get("plugins"))
        except UsageError as exc:  # every job has said so already; the report still shows their rows
            log.warning("%s", exc)
        shutil.rmtree(Path(self.sweep_dir) / GPU_LOCKS, ignore_errors=True)  # every job is done
        if self.enabled:
            self.write_report()
        self.done = True
        summary = failed_jobs(Path(self.sweep_dir))
        if summary and self.fail_on_error:
            # One line for CI and scripts; hydra.callbacks.report.fail_on_error=false keeps exit status 0.
            print(f"error: {summary}", file=sys.stderr)
            sys.exit(1)

    def _on_sigterm(self, signum: int, frame: Any) -> None:
        # As Ctrl-C does: unwind, so the exit hook reports what finished; 128 + 15 as the shell says.
        self.stopped_by = "SIGTERM"
        signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a second SIGTERM ends it at once
        sys.exit(128 + signal.SIGTERM)

    def _at_exit(self) -> None:
        if self.sweep_dir and not self.done:
            why = (
                f"it was stopped by {self.stopped_by}"
                if self.stopped_by
                else ("an exception escaped Hydra, or it was interrupted")
            )
            log.warning("the sweep did not end normally (%s): reporting what finished in %s", why, self.sweep_dir)
            self.write_report(
                notes=[
                    (
                        f"the sweep did not end normally ({why}): this report holds the jobs that finished; "
                        "the jobs that never started are listed as `not_started`; see the console or the jobs' logs."
                    )
                ]
            )
            summary = failed_jobs(Path(self.sweep_dir))
            if summary:
                print(f"error: {summary}", file=sys.stderr)

    def write_report(self, notes: list[str] | None = None) -> Path | None:
        """Build the report; on failure, log it and leave `report-error.txt` (never raise)."""
        self.done = True
        sweep = Path(self.sweep_dir or ".")
        error = sweep / ERROR_FILE
        try:
            from normbench.report.document import build_report

            md = build_report([sweep], sweep, notes=notes)
        except Exception:
            text = traceback.format_exc()
            log.error(
                "the report of %s failed; rebuild it with `normbench-report %s` once fixed:\n%s", sweep, sweep, text
            )
            try:
                from normbench.io.results import atomic_write_bytes

                atomic_write_bytes(error, text.encode())
            except OSError:
                pass
            return None
        error.unlink(missing_ok=True)
        log.info("report: %s (and %s)", md, md.with_name("report.html"))
        return md
