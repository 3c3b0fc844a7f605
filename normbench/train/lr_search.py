"""The learning rate per arm: a small grid tried on a validation split of the training data.

`accuracy.lr_search` (conf/accuracy.yaml; docs/accuracy.md): each LR of `grid` (per
`accuracy.lr_reference.batch` samples, scaled linearly to the run's samples per step, as the fixed LR
is) trains the run's configuration on the training split minus a held-out `validation` fraction, with
`seeds` seeds from `seed` on, and is scored by its mean error on that held-out part. The lowest error
wins (ties: the smaller LR; a diverged run scores 100%), and the reported runs, on the whole training
split and each with its own seed, train at that LR. The test split is never read: the search sees a Dataset whose test
tensors are the held-out training samples.

The search is one per configuration, not per seed: jobs of a sweep that differ only in the seed (and,
for a norm that cannot see K, in K) share it through `normbench.train.reuse`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import replace

import torch

from normbench import data as datasets
from normbench.specs import LrSearch

log = logging.getLogger(__name__)


def validation_split(data: datasets.Dataset, fraction: float, seed: int) -> datasets.Dataset:
    """The training split cut in two by a seeded permutation: a Dataset that trains on one part and
    whose "test" tensors are the held-out other part. Nothing of the test split goes in."""
    n = data.x_train.shape[0]
    held = max(1, round(n * fraction))
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).to(data.x_train.device)
    val, fit = order[:held], order[held:]
    return replace(
        data,
        name=f"{data.name} (validation split)",
        x_train=data.x_train[fit],
        y_train=data.y_train[fit],
        x_test=data.x_train[val],
        y_test=data.y_train[val],
        # the fast loop trains from the stored images: the same cut, or it would train on held-out ones
        pixels=None if data.pixels is None else replace(data.pixels, train=data.pixels.train[fit]),
    )


def search(spec: LrSearch, train_at: Callable[[float, datasets.Dataset, int], dict], data: datasets.Dataset) -> dict:
    """Try every LR of `spec.grid` with `train_at(lr per reference batch, validation dataset, seed)`, which
    returns the train job's result, for each seed of `spec.seeds`; returns the chosen LR and each grid
    LR's validation error (%), the mean over the seeds (a diverged seed counts 100%; NaN if all did)."""
    grid, seeds = list(spec.grid), spec.seeds
    split = validation_split(data, spec.validation, seeds[0])
    errors = []
    for lr in grid:
        per_seed = []
        for seed in seeds:
            try:
                per_seed.append(100.0 * (1.0 - train_at(lr, split, seed)["curve"][-1]["test_acc"]))
            except RuntimeError as exc:  # the train loss diverged at this LR
                log.info("lr search: %g diverged with seed %d (%s)", lr, seed, exc)
                per_seed.append(math.nan)
        finite = [e for e in per_seed if not math.isnan(e)]
        errors.append(sum(100.0 if math.isnan(e) else e for e in per_seed) / len(seeds) if finite else math.nan)
        log.info("lr search: lr %g -> validation error %.2f%%", lr, errors[-1])
    scored = [100.0 if math.isnan(e) else e for e in errors]
    best = min(range(len(grid)), key=lambda i: (scored[i], grid[i]))
    return {"grid": grid, "val_error": errors, "chosen": grid[best], "edge": best in (0, len(grid) - 1)}


def grid_text(found: dict) -> str:
    """The grid as one cell: `lr:validation error%` per LR, e.g. `0.05:7.40 0.1:6.90 0.2:nan`."""
    return " ".join(f"{lr:g}:{e:.2f}" for lr, e in zip(found["grid"], found["val_error"]))


def parse_grid(text) -> list[tuple[float, float]]:
    """`grid_text`'s cell back as (lr, validation error %) pairs; [] for an empty cell."""
    if not isinstance(text, str) or not text.strip():
        return []
    return [(float(lr), float(e)) for lr, e in (pair.split(":") for pair in text.split())]
