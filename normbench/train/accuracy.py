"""The accuracy job: train one model for one norm at one normalization batch size, and measure it.

K = `accuracy.batch_size` is the samples one normalization batch holds; one optimizer step holds
W such batches (W simulated data-parallel workers). BatchNorm takes its statistics per worker,
unsynchronized, as each GPU would: the norm's own `virtual_batch=K` option does that inside one kernel
call, not a Python loop over chunks. Two protocols (docs/accuracy.md):

- **fixed global batch** (default; Wu & Johnson 2021, "Rethinking 'Batch' in BatchNorm", Sec. 3;
  Hoffer et al. 2017's ghost BN): `accuracy.global_batch` samples per step, W = global_batch / K.
  Same steps and LR for every K: only the normalization batch changes.
- **fixed workers** (Wu & He 2018, "Group Normalization", Fig. 1): `accuracy.workers` = W, so the
  global batch is K x W and grows with K.

Either way the learning rate follows the linear scaling rule from a stated reference
(lr = lr_reference.lr x global_batch / lr_reference.batch; Goyal et al. 2017, Sec. 2.1) and every K
trains the same epochs. LN, IN and GN never look across samples, so at a fixed global batch K changes
nothing for them (tests/test_accuracy.py checks it bit for bit); a sweep trains them once
(`normbench.train.reuse`). Per run: test accuracy in eval mode and, for BatchNorm, with PreciseBN
population statistics and with batch statistics at K (`normbench.train.evaluation`); the train loss, a
per-epoch curve (`curve.csv` beside `rows.csv`), wall time and throughput.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import math
import os
import sys
import time
from pathlib import Path

import pandas as pd
import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import nn
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from normbench import data as datasets
from normbench import models, norms, specs
from normbench.device import device_name, resolve_device
from normbench.errors import UsageError
from normbench.io.results import atomic_write_bytes
from normbench.train import fastpath, lr_search, optim, reuse
from normbench.train.evaluation import (
    accuracy,
    accuracy_with_batch_stats,
    batch_norms,
    chunk_of,
    precise_bn,
)

log = logging.getLogger(__name__)

CURVE_FILE = "curve.csv"


# ------------------------------------------------------------------------------------------ protocol


def shown(score: float) -> str:
    """A score for the console: "n/a" where there is none (NaN: a norm without batch statistics, or
    PreciseBN skipped)."""
    return "n/a" if math.isnan(score) else f"{score:.4f}"


def scaled_lr(reference_lr: float, reference_batch: int, global_batch: int) -> float:
    """The linear scaling rule (Goyal et al. 2017, Sec. 2.1): the LR is proportional to samples per step."""
    return reference_lr * global_batch / reference_batch


def lr_schedule(optimizer: torch.optim.Optimizer, total: int, warmup: int) -> torch.optim.lr_scheduler.LRScheduler:
    """Linear warmup over `warmup` steps (Goyal et al. 2017, Sec. 2.2), then cosine decay to 0 at step
    `total` (Loshchilov & Hutter 2017), so every run ends annealed: the LR factor at step s is
    (s + 1) / warmup for s < warmup, then (1 + cos(pi (s - warmup) / max(1, total - warmup))) / 2."""
    cosine = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, total - warmup), eta_min=0.0)
    if warmup < 1:
        return cosine
    # start_factor must be > 0: the first step already takes 1/warmup of the LR, the last warmup step all of it.
    linear = torch.optim.lr_scheduler.LinearLR(
        optimizer, start_factor=1 / warmup, end_factor=1.0, total_iters=max(1, warmup - 1)
    )
    return torch.optim.lr_scheduler.SequentialLR(optimizer, [linear, cosine], milestones=[warmup])


def norm_factory(job: specs.TrainJob):
    """channels -> norm module, from the `norm` node (its `groups` the only groups key), the sweep's
    options for this norm (`norm_options.<norm>`), and for norms with statistics over samples (bn, brn,
    evonorm_b0) the per-worker statistics (virtual batch = K). Also returns those options, with groups."""
    name, options = job.norm, dict(job.norm_extra)
    if not norms.batch_independent(name):
        options["virtual_batch"] = job.norm_batch
    groups = job.norm_node.get("groups")

    def make(channels: int) -> nn.Module:
        if groups is not None and channels % groups:
            raise UsageError(
                f"{name} with {groups} groups (norm.groups) cannot normalize this model's {channels}-channel layers: "
                f"set norm.groups to a divisor of every width (e.g. 8 or 16)"
            )
        return norms.build_from_config(job.norm_node, channels, impl=job.impl, **options)

    return make, {**({"groups": groups} if groups is not None else {}), **options}


# ------------------------------------------------------------------------------------------ the job


def job_index() -> int | None:
    try:
        from hydra.core.hydra_config import HydraConfig

        return HydraConfig.get().job.get("num")
    except Exception:
        return None


def run(cfg: DictConfig, out_dir: Path, shared_dir: str | Path | None = None) -> list[dict]:
    """Train and evaluate one configuration; write `curve.csv` to `out_dir`; return the one row.

    `shared_dir` (a sweep's directory) lets jobs that differ only in K share one training where the
    norm cannot see K (`normbench.train.reuse`); None trains here whatever the norm.
    """
    job = specs.train_job(cfg)  # the config read once: everything below takes the job's plain values
    threads = torch.get_num_threads()
    try:
        with reproducible(job.deterministic):
            return measure(job, Path(out_dir), shared_dir)
    finally:  # accuracy.cpu_threads is per run: leave the process (a test session, a notebook) as it was
        torch.set_num_threads(threads)


@contextlib.contextmanager
def reproducible(on: bool):
    """PyTorch's reproducibility switches for one run (docs/accuracy.md, "Seeds and the nondeterminism
    floor"): deterministic algorithms (an op without one warns), cuDNN without autotuning, and the
    cuBLAS workspace setting those need on CUDA; the process's previous settings afterwards."""
    if not on:
        yield
        return
    saved = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled())
    cudnn = (torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic)
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # read when cuBLAS starts
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = False, True
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(saved[0], warn_only=saved[1])
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = cudnn


def reuse_key(job: specs.TrainJob) -> dict:
    """Everything that decides a batch-independent norm's training: the job but K and how the step was
    specified (the global batch it comes to stays), and the progress bar."""
    fields = dataclasses.asdict(job)
    for key in ("split", "progress"):
        fields.pop(key)
    fields["samples_per_step"] = job.split.global_batch
    return fields


def job_name(out_dir: Path, shared_dir) -> str:
    """A job's directory relative to its sweep's (what a reused row names in `reused_from`)."""
    try:
        return Path(out_dir).resolve().relative_to(Path(shared_dir).resolve()).as_posix()
    except (TypeError, ValueError):
        return str(out_dir)


def measure(job: specs.TrainJob, out_dir: Path, shared_dir: str | Path | None) -> list[dict]:
    split = job.split
    device = resolve_device(job.device, job_index())
    if job.cpu_threads:
        # Tiny models gain nothing from intra-op threads, and on a shared or oversubscribed CPU their
        # spin-waiting costs up to 10x; a sweep runs jobs side by side instead (hydra/launcher: parallel).
        torch.set_num_threads(job.cpu_threads)
    _, norm_options = norm_factory(job)

    lr, found = None, None
    if job.lr_search is not None:
        found = choose_lr(job, device, out_dir, shared_dir)
        lr = scaled_lr(found["chosen"], job.schedule.reference_batch, split.global_batch)

    def train_here() -> dict:
        return train(job, device, lr=lr)

    reused_from = None
    if shared_dir is not None and job.reuse and norms.batch_independent(job.norm):
        result, reused_from = reuse.train_once(shared_dir, reuse_key(job), job_name(out_dir, shared_dir), train_here)
    else:
        result = train_here()

    curve = result["curve"]
    row = {
        "kind": "accuracy",
        "norm": job.norm,
        "impl": job.impl,
        "dataset": result["dataset"],
        "model": models.name_of(job.model),
        "norm_position": job.model.get("norm_position", "before"),
        "norm_options": " ".join(f"{key}={v}" for key, v in sorted(norm_options.items()) if key != "virtual_batch"),
        "protocol": split.protocol,
        "norm_batch": split.norm_batch,
        "workers": split.workers,
        "global_batch": split.global_batch,
        "lr": result["lr"],
        "lr_chosen": found["chosen"] if found else math.nan,  # per lr_reference.batch samples, as the grid
        "lr_grid": lr_search.grid_text(found) if found else None,
        "epochs": job.schedule.epochs,
        "steps": result["steps"],
        "seed": job.seed,
        "test_acc": curve[-1]["test_acc"],
        "test_acc_precise_bn": result["test_acc_precise_bn"],
        "test_acc_batch_stats": result["test_acc_batch_stats"],
        "precise_bn_samples": result["precise_bn_samples"],
        "train_loss": curve[-1]["train_loss"],
        "train_acc": curve[-1]["train_acc"],
        "train_eval_acc": result.get("train_eval_acc", math.nan),
        # A reused row keeps the wall time and throughput of the training it reports.
        "wall_s": result["wall_s"],
        "samples_per_s": result["samples_per_s"],
        "train_loop": result["train_loop"],
        "reused_from": reused_from,
        "device": str(device),
        "device_name": device_name(device),
        "torch_version": torch.__version__,
    }
    ids = {key: row[key] for key in ("norm", "impl", "dataset", "model", "norm_batch", "workers", "seed")}
    write_curve(out_dir, [{**ids, **point} for point in curve])
    log.info(
        "%s K=%d W=%d: test acc %.4f (PreciseBN %s, batch stats %s)%s",
        job.norm,
        split.norm_batch,
        split.workers,
        row["test_acc"],
        shown(row["test_acc_precise_bn"]),
        shown(row["test_acc_batch_stats"]),
        f", reused from job {reused_from}" if reused_from else "",
    )
    return [row]


def precise_bn_batches(data: datasets.Dataset, samples: int, norm_batch: int, seed: int):
    """The training samples PreciseBN averages over: the first `samples` (rounded down to a multiple
    of K) of a seeded shuffle, augmented as in training, in chunks of several K."""
    gen = torch.Generator().manual_seed(seed + 1)  # not the training order's stream: a fresh draw
    idx = torch.randperm(data.x_train.shape[0], generator=gen)[: samples // norm_batch * norm_batch].to(
        data.x_train.device
    )
    for start in range(0, idx.numel(), chunk_of(norm_batch)):
        x = data.x_train[idx[start : start + chunk_of(norm_batch)]]
        yield datasets.augment(x, gen) if data.augment else x


def choose_lr(job: specs.TrainJob, device: torch.device, out_dir: Path, shared_dir) -> dict:
    """`accuracy.lr_search`: the grid tried on a validation split of the training data (normbench.train.lr_search),
    once per configuration: the seed (and K, for a norm that cannot see it) left out of the sharing key."""
    search = job.lr_search
    # as the search trains: no PreciseBN (it picks nothing), seeded from the search's first seed
    search_job = specs.replace(job, precise_bn_samples=None, seed=search.seeds[0])
    data = datasets.load(job.dataset, device)

    def train_at(lr: float, split_data: datasets.Dataset, seed: int) -> dict:
        lr = scaled_lr(lr, job.schedule.reference_batch, job.split.global_batch)
        return train(specs.replace(search_job, seed=seed), device, data=split_data, lr=lr)

    key = reuse_key(search_job)
    key["lr_search_of"] = job.norm_batch if not norms.batch_independent(job.norm) else "any K"
    found, _ = reuse.train_once(
        shared_dir, key, job_name(out_dir, shared_dir), lambda: lr_search.search(search, train_at, data)
    )
    log.info(
        "%s K=%d: lr %g per %d samples chosen from %s",
        job.norm,
        job.norm_batch,
        found["chosen"],
        job.schedule.reference_batch,
        lr_search.grid_text(found),
    )
    return found


def train(
    job: specs.TrainJob, device: torch.device, data: datasets.Dataset | None = None, lr: float | None = None
) -> dict:
    """Train one model and evaluate it; everything measured, as JSON data (a job may share it). `data`
    replaces the configured dataset (the LR search's validation split), `lr` the linearly scaled fixed LR."""
    sched = job.schedule
    norm_batch, workers, global_batch = job.norm_batch, job.split.workers, job.split.global_batch
    epochs = sched.epochs
    data = datasets.load(job.dataset, device) if data is None else data
    n_train = data.x_train.shape[0]
    steps_per_epoch = n_train // global_batch
    if steps_per_epoch < 1:
        raise UsageError(
            f"one step takes accuracy.batch_size x workers = {norm_batch} x {workers} = {global_batch} samples, "
            f"more than the {n_train} training samples of {data.name}: lower accuracy.global_batch or the workers"
        )
    torch.manual_seed(job.seed)  # model initialization
    make_norm, _ = norm_factory(job)
    model = models.from_config(
        job.model, input_shape=tuple(data.x_train.shape[1:]), num_classes=data.num_classes, norm=make_norm
    ).to(device)
    # BatchNorm's other two evaluations (see normbench.train.evaluation); NaN where there is no BatchNorm.
    bn = bool(batch_norms(model)) and all(m.track_running_stats for m in batch_norms(model))
    precise_samples = job.precise_bn_samples if bn else None
    if precise_samples is not None:
        if not norm_batch <= precise_samples <= n_train:
            raise UsageError(
                f"accuracy.precise_bn_samples={precise_samples} must lie between K={norm_batch} and the {n_train} "
                f"training samples of {data.name}: set it in that range (or null to skip PreciseBN)"
            )

    if lr is None:
        lr = scaled_lr(sched.reference_lr, sched.reference_batch, global_batch)
    optimizer = optim.sgd(model, sched, lr)
    loop = fastpath.for_data(job.loop, images=data.x_train.dim() == 4)
    fastpath.check_device(loop, device)
    if loop.enabled:  # data on the device by index, layout, precision, compile: normbench.train.fastpath
        batches = fastpath.DeviceBatches(data, loop.channels_last).epoch
        forward, _ = fastpath.prepare(model, loop, data.x_train.dim())
    else:
        batches, forward = functools.partial(datasets.train_batches, data), model
    total_steps = epochs * steps_per_epoch
    warmup = round(sched.warmup_epochs * steps_per_epoch)
    schedule = lr_schedule(optimizer, total_steps, warmup)
    order = torch.Generator().manual_seed(job.seed)  # shuffling and augmentation, on the CPU for any device
    eval_batch = job.eval_batch

    label = f"{job.norm}/{job.impl} K={norm_batch} W={workers}"
    model_name = models.name_of(job.model)
    log.info(
        "%s: %s on %s, lr %.4g, %d steps of %d samples, %s",
        label,
        model_name,
        data.name,
        lr,
        total_steps,
        global_batch,
        device_name(device),
    )
    curve, train_s, seen, first_step_s = [], 0.0, 0, None
    start = time.perf_counter()
    bar = tqdm(
        total=total_steps,
        desc=label,
        file=sys.stderr,
        disable=None if job.progress else True,
        leave=False,
        dynamic_ncols=True,
    )
    with logging_redirect_tqdm(), contextlib.closing(bar):
        for epoch in range(1, epochs + 1):
            model.train()
            t0 = time.perf_counter()
            loss_sum = torch.zeros((), device=device)  # summed on the device: no sync per step
            correct = torch.zeros((), dtype=torch.long, device=device)
            for x, y in batches(global_batch, order):
                with fastpath.compile_errors(loop), fastpath.autocast(loop, device):
                    try:
                        logits = forward(x)
                    except UsageError as exc:  # e.g. a per-worker batch that leaves bn one value per channel
                        raise UsageError(
                            f"accuracy.batch_size={norm_batch} x workers={workers}, {model_name}: {exc}"
                        ) from None
                    loss = F.cross_entropy(logits, y, label_smoothing=sched.label_smoothing)
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                if (
                    sched.grad_clip is not None
                ):  # global gradient norm clipping (docs/accuracy.md: the no-norm baseline)
                    torch.nn.utils.clip_grad_norm_(model.parameters(), sched.grad_clip)
                optimizer.step()
                if first_step_s is None and loop.compile:  # it compiled: not training throughput
                    first_step_s = fastpath.synchronized_time(device) - t0
                schedule.step()
                loss_sum += loss.detach()
                correct += (logits.detach().argmax(1) == y).sum()
                bar.update()
            train_loss = loss_sum.item() / steps_per_epoch
            if not math.isfinite(train_loss):
                raise RuntimeError(f"{label}: train loss diverged to {train_loss} in epoch {epoch} (lr {lr:.4g})")
            train_s += time.perf_counter() - t0
            seen += steps_per_epoch * global_batch
            if epoch == 1 and first_step_s is not None:
                train_s, seen = train_s - first_step_s, seen - global_batch
            model.eval()
            test_acc = accuracy(model, data.x_test, data.y_test, eval_batch)
            curve.append(
                {
                    "epoch": epoch,
                    "train_loss": train_loss,
                    "train_acc": correct.item() / (steps_per_epoch * global_batch),
                    "test_acc": test_acc,
                    "lr": schedule.get_last_lr()[0],
                    "wall_s": time.perf_counter() - start,
                }
            )
            bar.set_postfix(loss=f"{train_loss:.3f}", test_acc=f"{test_acc:.3f}")
            log.info("%s epoch %d/%d: train loss %.4f, test acc %.4f", label, epoch, epochs, train_loss, test_acc)

    model.eval()
    by_batch = accuracy_with_batch_stats(model, data.x_test, data.y_test, norm_batch, job.seed) if bn else math.nan
    precise, used = math.nan, None
    if precise_samples is not None:
        used = precise_samples // norm_batch * norm_batch
        population = precise_bn(model, precise_bn_batches(data, precise_samples, norm_batch, job.seed), norm_batch)
        precise = accuracy(population, data.x_test, data.y_test, eval_batch)
    return {
        "dataset": data.name,
        "lr": lr,
        "steps": total_steps,
        "curve": curve,
        "test_acc_precise_bn": precise,
        "test_acc_batch_stats": by_batch,
        "precise_bn_samples": used,
        "train_eval_acc": train_eval_accuracy(model, data, job.train_eval_samples, eval_batch),
        "wall_s": time.perf_counter() - start,
        "samples_per_s": seen / train_s if seen else math.nan,
        "train_loop": loop.describe(),
    }


def train_eval_accuracy(model: nn.Module, data: datasets.Dataset, samples, batch: int) -> float:
    """Train accuracy after training in eval mode (BatchNorm on its running statistics), on the first
    `samples` training samples of a fixed draw (seed 0, unaugmented: the same subset for every run): the train side of a
    train/test gap that the noise of train-mode batch statistics does not enter. NaN for samples=null."""
    if samples is None:
        return math.nan
    subset = torch.randperm(data.x_train.shape[0], generator=torch.Generator().manual_seed(0))[:samples]
    subset = subset.to(data.x_train.device)
    model.eval()
    return accuracy(model, data.x_train[subset], data.y_train[subset], batch)


def write_curve(out_dir: Path, points: list[dict]) -> Path:
    # Written whole, then renamed, like rows.csv.
    return atomic_write_bytes(Path(out_dir) / CURVE_FILE, pd.DataFrame(points).to_csv(index=False).encode())
