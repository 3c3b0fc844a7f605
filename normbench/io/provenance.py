"""What made a result: the command, date, git commit, host and versions of the run now (`run_info`,
written as a sweep's `run.json`), and of results already on disk (`read_run_info`: a sweep, a run
directory or a pytest-benchmark JSON file).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

RUN_FILE = "run.json"  # what ran: written by the sweep callback at multirun start


def load_yaml(path: Path) -> Any:
    """A YAML file Hydra wrote (its config, its overrides), or None where it is missing or broken."""
    import yaml

    try:
        return yaml.safe_load(path.read_text())
    except (OSError, ValueError, yaml.YAMLError):
        return None


def git_commit(where: str | Path | None = None) -> str | None:
    """`git rev-parse HEAD` of the checkout holding `where` (default: this package), `+dirty` when
    it has uncommitted changes to tracked files outside results/ (what normbench writes is no change to
    the code that wrote it); None where there is no git or no repository."""
    import subprocess

    cwd = Path(where) if where else Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10, check=False
        )
        if head.returncode != 0:
            return None
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "--", ":/", ":!/results"],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return head.stdout.strip() + ("+dirty" if dirty.returncode == 0 and dirty.stdout.strip() else "")


def versions() -> dict[str, str | None]:
    """Versions of what measures: python, normbench, torch, triton, hydra."""
    import platform
    from importlib import metadata

    out: dict[str, str | None] = {"python": platform.python_version()}
    for dist in ("normbench", "torch", "triton", "hydra-core"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = None
    return out


def run_info(argv: list[str] | None = None, **fields: Any) -> dict[str, Any]:
    """What is running now: the command, the date (UTC), the git commit, the host and the versions."""
    import datetime as dt
    import shlex
    import socket
    import sys

    argv = list(sys.argv if argv is None else argv)
    command = shlex.join([Path(argv[0]).name, *argv[1:]]) if argv else None
    return {
        "command": command,
        "cwd": os.getcwd(),
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "git_commit": git_commit(),
        "host": socket.gethostname(),
        "versions": versions(),
        **fields,
    }


# What a report shows of run.json, each as the type run_info writes it.
RUN_FIELDS = {"command": str, "cwd": str, "date": str, "git_commit": str, "host": str, "versions": dict}


def _run_json(path: Path) -> dict[str, Any] | None:
    """The fields of a run.json a report shows, where each has the type run_info writes (a hand-edited
    or broken field is left out: "not recorded"); None where the file is not a JSON object."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError, RecursionError):
        return None
    if not isinstance(data, dict):
        return None
    out = {k: data[k] for k, kind in RUN_FIELDS.items() if isinstance(data.get(k), kind)}
    if "versions" in out:
        out["versions"] = {str(k): v for k, v in out["versions"].items() if isinstance(v, str)}
    if isinstance(data.get("jobs"), list):
        out["jobs"] = data["jobs"]
    return out


def read_run_info(path: str | Path) -> dict[str, Any]:
    """What made the results at `path` (a sweep or run directory, or a pytest-benchmark JSON file).

    A sweep that normbench's callback saw has `run.json`; otherwise the command is rebuilt from the
    overrides Hydra recorded, and the rest is marked unknown.
    """
    import datetime as dt

    path = Path(path)
    info: dict[str, Any] = {"path": str(path), "name": path.stem if path.is_file() else path.name}
    if path.is_file():
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError, RecursionError):
            return info
        if not isinstance(data, dict):
            return info
        commit, machine = (data[k] if isinstance(data.get(k), dict) else {} for k in ("commit_info", "machine_info"))
        info.update(
            command=f"pytest --benchmark-json {path.name} ...  (pytest-benchmark {data.get('version', '?')})",
            date=data.get("datetime"),
            git_commit=(commit.get("id") or None) and f"{commit['id']}" + ("+dirty" if commit.get("dirty") else ""),
            host=machine.get("node"),
            versions={"python": machine.get("python_version")},
        )
        return info
    if (path / RUN_FILE).is_file():
        recorded = _run_json(path / RUN_FILE)
        if recorded is not None:
            return {**info, **recorded}
    for name in ("multirun.yaml", ".hydra/hydra.yaml"):
        cfg = load_yaml(path / name) if (path / name).is_file() else None
        if isinstance(cfg, dict) and isinstance(cfg.get("hydra"), dict):
            hydra = cfg["hydra"]
            app = (hydra.get("job") or {}).get("config_name")
            ov = hydra.get("overrides") or {}
            args = [*(ov.get("hydra") or []), *(ov.get("task") or [])]
            args = [a for a in args if not str(a).startswith("hydra.mode=")]
            multirun = name == "multirun.yaml"
            info["command"] = " ".join([f"normbench-{app}", *(["-m"] if multirun else []), *map(str, args)])
            info["date"] = dt.datetime.fromtimestamp((path / name).stat().st_mtime, dt.timezone.utc).isoformat(
                timespec="seconds"
            )
            break
    return info
