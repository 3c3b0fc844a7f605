"""The console scripts, all of them: `normbench-speed` and `normbench-accuracy` (Hydra apps that compose
a config and hand it to a job) and `normbench-report` (argparse).

Each Hydra app also answers `--list` (what it can sweep, and which implementations run here:
normbench.app.catalog) and `--version` (normbench's, torch's, triton's and hydra's), read before Hydra
parses the command line: Hydra's own `--version` would print Hydra's.

A job that fails records `failure.json` in its output directory. In a multirun it then returns, so
the other jobs and the end-of-sweep report still run; a single run exits non-zero. Bad input
(`UsageError`) is reported as its one-line message; anything else keeps its traceback.
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import HydraException
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from normbench import plugins, specs  # specs: the configs' schemas, registered before Hydra composes
from normbench.app import catalog  # specs: the configs' schemas, registered before Hydra composes
from normbench.errors import Unsupported, UsageError
from normbench.io.provenance import versions
from normbench.io.results import planned_jobs, write_failure, write_rows

log = logging.getLogger("normbench")


def _configs() -> str:
    """conf/ of the checkout this file sits in (an editable install, or PYTHONPATH=checkout), else the
    copy an installed wheel carries as the package normbench.conf."""
    checkout = Path(__file__).resolve().parent.parent.parent / "conf"
    return str(checkout) if (checkout / "speed.yaml").is_file() else "pkg://normbench.conf"


CONFIGS = _configs()


def configs_for_compose():
    """Hydra's compose API initialized on CONFIGS, as a context (the tools that compose an app's config)."""
    from hydra import initialize_config_dir, initialize_config_module

    if CONFIGS.startswith("pkg://"):
        return initialize_config_module(CONFIGS.removeprefix("pkg://"), version_base="1.3")
    return initialize_config_dir(CONFIGS, version_base="1.3")


# Each app's help template (conf/hydra/help/<app>.yaml) lists its own config groups through this.
if not OmegaConf.has_resolver("normbench.config_groups"):
    OmegaConf.register_new_resolver("normbench.config_groups", lambda app: catalog.config_groups(CONFIGS, app))


def _norm_groups(*, _parent_, _root_):
    from normbench.norms.registry import model_groups  # torch, only once a config asks

    return model_groups(_parent_=_parent_, _root_=_root_)


# `groups: ${normbench.groups:}` in conf/norm/: registered with the apps, so every process that runs a
# job (a launcher's workers too) can resolve it before it imports the norms.
if not OmegaConf.has_resolver("normbench.groups"):
    OmegaConf.register_new_resolver("normbench.groups", _norm_groups)


def version_text(command: str) -> str:
    """What --version prints: the command, normbench's version, and those of what it measures with."""
    v = {name: version or "not installed" for name, version in versions().items()}
    return (
        f"{command} (normbench {v['normbench']})\n"
        f"torch {v['torch']}, triton {v['triton']}, hydra-core {v['hydra-core']}, python {v['python']}"
    )


def job_progress(sweep_dir: str | Path, num: int) -> str | None:
    """ "job 3 of 72: norm=gn accuracy.batch_size=4 seed=1", from the planned jobs the sweep recorded
    in run.json at its start (normbench.app.callbacks); None where it recorded none."""
    jobs = planned_jobs(Path(sweep_dir))
    if jobs is None or not 0 <= num < len(jobs):
        return None
    what = " ".join(map(str, jobs[num]))
    return f"job {num + 1} of {len(jobs)}" + (f": {what}" if what else "")


def run_job(job: Callable[[DictConfig, Path], list[dict]], cfg: DictConfig) -> None:
    hc = HydraConfig.get()
    out = Path(hc.runtime.output_dir)
    if hc.mode == RunMode.MULTIRUN:
        from normbench.workers import end_with_parent

        end_with_parent()  # a launcher's worker process ends with the sweep (kill -9 of the command)
        sweep_dir = OmegaConf.select(hc, "sweep.dir", throw_on_resolution_failure=False)
        progress = sweep_dir and job_progress(sweep_dir, int(hc.job.num))
        if progress:
            log.info("%s", progress)
    try:
        plugins.load(cfg.get("plugins"))  # before anything reads the registry (docs/extending.md)
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


def speed() -> None:
    """`normbench-speed`: time one norm x implementation at one shape (docs/speed.md)."""
    _app("speed", _speed)


def accuracy() -> None:
    """`normbench-accuracy`: train one model per norm per normalization batch size (docs/accuracy.md)."""
    _app("accuracy", _accuracy)


def _app(app: str, hydra_main: Callable[[], None]) -> None:
    flags = sys.argv[1:]
    if "--version" in flags:
        print(version_text(f"normbench-{app}"))
    elif "--list" in flags:
        try:
            plugins.load(plugins.from_overrides(flags))
        except UsageError as exc:
            sys.exit(f"error: {exc}")
        print(catalog.listing(CONFIGS, app))
    else:
        # Hydra reports a config it cannot compose (a key the schema does not know, a value of the wrong
        # type or outside a choice) in several lines; with HYDRA_FULL_ERROR it raises instead, and this
        # prints it as one. A user who set HYDRA_FULL_ERROR gets Hydra's full trace.
        full = os.environ.get("HYDRA_FULL_ERROR")
        os.environ["HYDRA_FULL_ERROR"] = "1"
        try:
            hydra_main()
        except HydraException as exc:
            if full:
                raise
            print(f"error: {specs.one_line(exc)}", file=sys.stderr)
            sys.exit(2)
        except KeyboardInterrupt:
            # Ctrl-C: no traceback. A sweep's exit hook (normbench.app.callbacks) still reports what finished
            # and prints its one line; a single run says it here.
            if not ({"-m", "--multirun"} & set(flags) or "hydra.mode=MULTIRUN" in flags):
                print(f"error: normbench-{app} was interrupted (Ctrl-C)", file=sys.stderr)
            sys.exit(130)
        finally:
            if full is None:
                del os.environ["HYDRA_FULL_ERROR"]
            else:
                os.environ["HYDRA_FULL_ERROR"] = full


@hydra.main(config_path=CONFIGS, config_name="speed", version_base="1.3")
def _speed(cfg: DictConfig) -> None:
    from normbench.bench import speed_job

    run_job(speed_job.run, cfg)


@hydra.main(config_path=CONFIGS, config_name="accuracy", version_base="1.3")
def _accuracy(cfg: DictConfig) -> None:
    from functools import partial

    from normbench.train import accuracy as accuracy_job

    # A multirun's jobs may share trainings through files in its sweep directory (normbench.train.reuse).
    hc = HydraConfig.get()
    shared = Path(hc.sweep.dir) if hc.mode == RunMode.MULTIRUN else None
    run_job(partial(accuracy_job.run, shared_dir=shared), cfg)


def report(argv: list[str] | None = None) -> int:
    """`normbench-report`: a report from sweep, run or report directories or pytest-benchmark JSON files
    (normbench.report.document.build_report), or with --compare A B, B against A (normbench.report.compare)."""
    parser = argparse.ArgumentParser(
        prog="normbench-report",
        description="Build report.md, report.html, plots and summary.csv from sweep directories\n"
        "(normbench-speed/-accuracy -m ...), run or report directories, or pytest-benchmark JSON files.\n"
        "With --compare A B: B against A per configuration (compare.md, .html, .csv, .png).",
        formatter_class=argparse.RawDescriptionHelpFormatter,  # and --version's two lines stay two
    )
    parser.add_argument("paths", nargs="+", type=Path, metavar="PATH", help="sweep/run/report directory or JSON file")
    parser.add_argument(
        "--out",
        type=Path,
        help="output directory (default: the one directory given, "
        "else results/report/<date>; --compare: results/compare/<date>)",
    )
    parser.add_argument("--title", help="the report's title")
    parser.add_argument("--compare", action="store_true", help="compare two inputs, A B: B/A per configuration")
    parser.add_argument(
        "--noise",
        type=_factor,
        metavar="FACTOR",
        help="--compare: the smallest change in time a verdict names, e.g. 1.2 (default: from the runs' spreads)",
    )
    parser.add_argument("--version", action="version", version=version_text("normbench-report"))
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    from normbench.report import compare  # after parsing: --help and --version need neither
    from normbench.report import document as report_job

    missing = [p for p in args.paths if not p.exists()]
    if missing:
        print(f"error: no such file or directory: {', '.join(map(str, missing))}", file=sys.stderr)
        return 2
    if args.compare and len(args.paths) != 2:
        print(f"error: --compare takes two inputs, A B; got {len(args.paths)}", file=sys.stderr)
        return 2
    try:
        if args.compare:
            md = compare.write(*args.paths, args.out or _stamped("compare"), noise=args.noise)
            print(f"wrote {md}, {md.with_name(compare.COMPARE_HTML)} and {md.with_name(compare.COMPARE_CSV)}")
            return 0
        md = report_job.build_report(args.paths, args.out or default_out(args.paths), title=args.title)
    except ValueError as exc:  # bad input (UsageError), e.g. a JSON file that is not pytest-benchmark's
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {md} and {md.with_name(report_job.REPORT_HTML)}")
    return 0


def _factor(text: str) -> float:
    """--noise: a finite factor >= 1 (argparse prints the error as one line)."""
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 1 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a factor >= 1, e.g. 1.2 (B/A over 1.2 or under 1/1.2), not {text!r}")
    return value


def default_out(paths: list[Path]) -> Path:
    """Where a report goes without --out: into the one directory given; else a new results/report/ dir."""
    if len(paths) == 1 and paths[0].is_dir():
        return paths[0]
    return _stamped("report")


def _stamped(name: str) -> Path:
    return Path("results") / name / dt.datetime.now().strftime("%Y-%m-%d_%H-%M-%S-%f")
