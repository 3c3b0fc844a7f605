"""A sweep's worker processes (the joblib launcher's loky workers) end with the process that started them.

A worker killed with its parent (`kill -9`, the OOM killer) would otherwise run its current job to
the end, writing into the sweep directory for seconds or minutes with nobody left to report it. So
every job that runs in a worker process starts, once per process, a daemon thread that checks the
parent's pid and ends the worker at once when the parent is gone (the worker is re-parented, so
`os.getppid()` changes). Results are written whole and renamed (normbench.io.results), so a job cut
off here leaves nothing half-written.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
import threading
import time

EXIT_STATUS = 1
_WATCHING: dict[str, int] = {}  # {"pid": this process's pid} once its watcher runs


def end_with_parent(interval: float = 0.2) -> bool:
    """In a process started by multiprocessing (or loky), watch the parent; True if a watcher runs.

    A no-op in a main process (the basic launcher runs jobs in the command's own process, whose
    parent is the shell: a sweep under nohup must outlive it)."""
    parent = multiprocessing.parent_process()
    if parent is None or parent.pid is None:
        return False
    if _WATCHING.get("pid") == os.getpid():
        return True
    _WATCHING["pid"] = os.getpid()
    threading.Thread(target=_watch, args=(parent.pid, interval), name="normbench-end-with-parent", daemon=True).start()
    return True


def _watch(parent_pid: int, interval: float) -> None:
    while os.getppid() == parent_pid:
        time.sleep(interval)
    print(f"normbench worker {os.getpid()}: its sweep (pid {parent_pid}) is gone; stopping", file=sys.stderr)
    os._exit(EXIT_STATUS)
