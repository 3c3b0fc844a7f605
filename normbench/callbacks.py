"""The Hydra callback that ends every multirun in a report (set in conf/common.yaml).

`on_multirun_start` records what ran (`run.json`: command, date, git commit, host, versions) in the
sweep directory; `on_multirun_end` builds the report there (`normbench.report.build_report`). Hydra
calls `on_multirun_end` only when the sweep returns: if a job's exception escapes (normbench's jobs
record theirs and return, but a launcher or an interrupt can still raise), Hydra skips it. So the
callback also registers an exit hook at multirun start that builds the report of whatever finished
when the sweep did not end normally. A report that fails to build is logged with its traceback, left
as `report-error.txt` in the sweep directory, and never hides the sweep's own outcome.
"""

from __future__ import annotations

import atexit
import json
import logging
import traceback
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger("normbench")

ERROR_FILE = "report-error.txt"


class SweepReport(Callback):
    """Write `summary.csv`, plots, `report.md` and `report.html` into the sweep directory."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self.sweep_dir: str | None = None
        self.done = False

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        if not self.enabled:
            return
        from normbench import results

        # Resolving the sweep dir here fixes its `${now:...}` stamp (Hydra caches the resolver) for
        # the launcher that creates it next.
        sweep = Path(str(config.hydra.sweep.dir))
        self.sweep_dir = str(sweep)
        try:
            sweep.mkdir(parents=True, exist_ok=True)
            hydra = config.hydra
            info = results.run_info(
                app=hydra.job.config_name,
                overrides=OmegaConf.to_container(hydra.overrides.task),
                hydra_overrides=[o for o in OmegaConf.to_container(hydra.overrides.hydra)
                                 if not str(o).startswith("hydra.mode=")],  # fmt: skip
                launcher=OmegaConf.select(config, "hydra.launcher._target_"),
            )
            results.atomic_write_bytes(sweep / results.RUN_FILE, json.dumps(info, indent=2).encode())
        except Exception:  # noqa: BLE001 - provenance is worth a warning, never the sweep
            log.warning("could not record %s in %s:\n%s", results.RUN_FILE, sweep, traceback.format_exc())
        atexit.register(self._at_exit)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if not self.enabled:
            return
        self.sweep_dir = self.sweep_dir or str(config.hydra.sweep.dir)
        self.write_report()

    def _at_exit(self) -> None:
        if self.sweep_dir and not self.done:
            log.warning("the sweep did not end normally: reporting what finished in %s", self.sweep_dir)
            self.write_report()

    def write_report(self) -> Path | None:
        """Build the report; on failure, log it and leave `report-error.txt` (never raise)."""
        self.done = True
        sweep = Path(self.sweep_dir or ".")
        error = sweep / ERROR_FILE
        try:
            from normbench.report import build_report

            md = build_report([sweep], sweep)
        except Exception:  # noqa: BLE001 - Hydra would turn a raise into a one-line warning
            text = traceback.format_exc()
            log.error(
                "the report of %s failed; rebuild it with `normbench-report %s` once fixed:\n%s", sweep, sweep, text
            )
            try:
                from normbench.results import atomic_write_bytes

                atomic_write_bytes(error, text.encode())
            except OSError:
                pass
            return None
        error.unlink(missing_ok=True)
        log.info("report: %s (and %s)", md, md.with_name("report.html"))
        return md
