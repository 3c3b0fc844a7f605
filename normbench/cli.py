"""The console scripts: thin Hydra entry points that compose a config and hand it to a job.

A job that fails records `failure.json` in its output directory. In a multirun it then returns, so
the other jobs and the end-of-sweep report still run; a single run exits non-zero. Bad input
(`UsageError`) is reported as its one-line message; anything else keeps its traceback.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from normbench.errors import Unsupported, UsageError
from normbench.results import write_failure, write_rows

log = logging.getLogger("normbench")


def _configs() -> str:
    """conf/ of the checkout this file sits in (an editable install, or PYTHONPATH=checkout), else the
    copy an installed wheel carries as the package normbench.conf."""
    checkout = Path(__file__).resolve().parent.parent / "conf"
    return str(checkout) if (checkout / "speed.yaml").is_file() else "pkg://normbench.conf"


CONFIGS = _configs()


def check_common(cfg: DictConfig) -> None:
    """The keys every app shares, checked before the job starts: `seed` is an int (Hydra reads
    `seed=1.5` as a float and `seed=x` as a string; neither may run as something else)."""
    seed = cfg.get("seed")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise UsageError(f"seed must be an int, got {seed!r}: e.g. seed=0, or seed=0,1,2 in a sweep")


def run_job(job: Callable[[DictConfig, Path], list[dict]], cfg: DictConfig) -> None:
    hc = HydraConfig.get()
    out = Path(hc.runtime.output_dir)
    try:
        check_common(cfg)
        rows = job(cfg, out)
    except Exception as exc:
        write_failure(out, exc, list(hc.overrides.task))
        if hc.mode == RunMode.MULTIRUN and isinstance(exc, Unsupported):
            log.warning("job %s skipped: %s", hc.job.num, str(exc).splitlines()[0])
            return
        if hc.mode == RunMode.MULTIRUN:
            log.error("job %s failed: %s", hc.job.num, str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
            return
        if isinstance(exc, UsageError):
            print(f"error: {exc}", file=sys.stderr)
            sys.exit(2)
        raise
    write_rows(out, rows)
    log.info("wrote %d row(s) to %s", len(rows), out / "rows.csv")


@hydra.main(config_path=CONFIGS, config_name="speed", version_base="1.3")
def speed(cfg: DictConfig) -> None:
    from normbench import speed as speed_job

    run_job(speed_job.run, cfg)


@hydra.main(config_path=CONFIGS, config_name="accuracy", version_base="1.3")
def accuracy(cfg: DictConfig) -> None:
    from functools import partial

    from normbench import accuracy as accuracy_job

    # A multirun's jobs may share trainings through files in its sweep directory (normbench.reuse).
    hc = HydraConfig.get()
    shared = Path(hc.sweep.dir) if hc.mode == RunMode.MULTIRUN else None
    run_job(partial(accuracy_job.run, shared_dir=shared), cfg)


def report(argv: list[str] | None = None) -> None:
    from normbench import report as report_job

    sys.exit(report_job.main(sys.argv[1:] if argv is None else argv))
