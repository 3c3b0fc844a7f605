"""Train once, report for every K: sharing one training between the jobs of a sweep.

For a norm whose statistics never span samples (LN, IN, GN, none; `normbench.norms.batch_independent`),
K only says how a step's samples are split into normalization batches, so at a fixed global batch every
K trains the same model, bit for bit (tests/test_accuracy.py proves it). A sweep over K would train it
again for each K; instead the jobs that share everything but K share one training.

How, under any launcher that runs jobs as processes on one file system (joblib, submitit): the
training is keyed by a hash of every setting but K, in `<sweep>/.trained/<key>/`. A job takes that
key's lock (`filelock.FileLock`), finds the result if an earlier job left one, and otherwise trains, writes
`result.json` (whole, then renamed) and lets go. A second job with the same key waits on the lock
while the first trains. Nothing can deadlock (a job holding a lock trains; it never waits), and no
result is lost: a job that fails or dies lets go of the lock without a result, and the next job
trains itself. Which job trains is first come, first served; the result is the same whichever it is.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from filelock import FileLock

from normbench.io.results import atomic_write_bytes

log = logging.getLogger(__name__)

TRAINED_DIR = ".trained"
RESULT_FILE = "result.json"


def key_of(fields: dict[str, Any]) -> str:
    """A short stable hash of `fields` (plain JSON data: a job spec as a dict)."""
    text = json.dumps(fields, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _stored(path: Path, fields: dict[str, Any]) -> dict | None:
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    # The whole key is stored and compared: a hash prefix that collided would share a wrong model.
    same = json.loads(json.dumps(fields, default=str))
    return record if record.get("key") == same else None


def train_once(
    shared_dir: str | Path | None, fields: dict[str, Any], job: str, train: Callable[[], dict]
) -> tuple[dict, str | None]:
    """`train()`'s result for the key `fields`, trained by this job or by an earlier one of the sweep
    in `shared_dir`; returns (result, the job that trained it, or None when this one did).

    `result` must be JSON data (NaN allowed); `shared_dir=None` trains without sharing.
    """
    if shared_dir is None:
        return train(), None
    slot = Path(shared_dir) / TRAINED_DIR / key_of(fields)
    slot.mkdir(parents=True, exist_ok=True)
    result_path = slot / RESULT_FILE
    with FileLock(slot / "lock"):  # waits while another job trains this model
        record = _stored(result_path, fields)
        if record is not None:
            log.info("reusing the training of job %s (%s)", record["job"], slot)
            return record["result"], str(record["job"])
        result = train()
        record = {"job": job, "key": fields, "result": result}
        atomic_write_bytes(result_path, json.dumps(record, default=str).encode())
        return result, None
