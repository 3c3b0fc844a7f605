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
(`normbench.reuse`). Per run: test accuracy in eval mode and, for BatchNorm, with PreciseBN
population statistics and with batch statistics at K (`normbench.evaluation`); the train loss, a
per-epoch curve (`curve.csv` beside `rows.csv`), wall time and throughput.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from torch import nn
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from normbench import data as datasets
from normbench import fastpath, lr_search, models, norms, optim, reuse, specs
from normbench.device import device_name, resolve_device
from normbench.errors import UsageError
from normbench.evaluation import (
    accuracy,
    accuracy_with_batch_stats,
    batch_norms,
    chunk_of,
    precise_bn,
)
from normbench.results import atomic_write_bytes

log = logging.getLogger(__name__)

CURVE_FILE = "curve.csv"


# ------------------------------------------------------------------------------------------ protocol


def positive_int(value, key: str, hint: str) -> int:
    """`value` (an int: the schema typed it) unless it is < 1."""
    return specs.positive(value, key, hint)


def real_number(value, key: str, rule: str, ok, hint: str) -> float:
    """`value` (a number: the schema typed it) as a float if it is finite with `ok(value)`."""
    if not math.isfinite(value) or not ok(value):
        raise UsageError(f"{key} must be a finite number {rule}, got {value!r}: {hint}")
    return float(value)


def check_accuracy_config(acc: DictConfig) -> None:
    """The accuracy.* values training reads, checked before anything is built or trained: one line
    naming the key that is wrong (K, the workers and PreciseBN's samples are checked where they are read)."""
    positive_int(acc.get("epochs"), "accuracy.epochs", "e.g. accuracy.epochs=10")
    positive_int(acc.get("eval_batch"), "accuracy.eval_batch", "the test batch in eval mode, e.g. 1000")
    ref = acc.get("lr_reference") or {}
    real_number(
        ref.get("lr"),
        "accuracy.lr_reference.lr",
        "> 0",
        lambda v: v > 0,
        "the LR per lr_reference.batch samples, e.g. 0.1",
    )
    positive_int(
        ref.get("batch"), "accuracy.lr_reference.batch", "the samples per step lr_reference.lr is for, e.g. 64"
    )
    real_number(acc.get("momentum"), "accuracy.momentum", "in [0, 1)", lambda v: 0 <= v < 1, "SGD's momentum, e.g. 0.9")
    real_number(acc.get("weight_decay"), "accuracy.weight_decay", ">= 0", lambda v: v >= 0, "e.g. 5e-4, or 0 for none")
    real_number(acc.get("warmup_epochs"), "accuracy.warmup_epochs", ">= 0", lambda v: v >= 0, "e.g. 1, or 0 for none")


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


def norm_factory(cfg: DictConfig, k: int):
    """channels -> norm module, from the `norm` node (its `groups` the only groups key), the sweep's
    options for this norm (`norm_options.<norm>`), and for norms with statistics over samples (bn, brn,
    evonorm_b0) the per-worker statistics (virtual batch = K). Also returns those options, with groups."""
    name = cfg.norm.name
    node = cfg.get("norm_options") or {}
    extra = dict(OmegaConf.to_container(node[name], resolve=True) if node.get(name) else {})
    if "groups" in extra:
        raise UsageError(
            f"norm_options.{name}.groups: a norm's groups have one key, norm.groups (a model's default is its "
            f"config's norm_groups): set norm.groups={extra['groups']} instead"
        )
    options = dict(extra)
    if not norms.batch_independent(name):
        options["virtual_batch"] = k
    groups = cfg.norm.get("groups")

    def make(channels: int) -> nn.Module:
        if groups is not None and channels % groups:
            raise UsageError(
                f"{name} with {groups} groups (norm.groups) cannot normalize this model's {channels}-channel layers: "
                f"set norm.groups to a divisor of every width (e.g. 8 or 16)"
            )
        return norms.build_from_config(cfg.norm, channels, impl=cfg.impl, **options)

    return make, {**({"groups": groups} if groups is not None else {}), **options}


# ------------------------------------------------------------------------------------------ the job


def job_index() -> int | None:
    try:
        from hydra.core.hydra_config import HydraConfig

        return HydraConfig.get().job.get("num")
    except Exception:
        return None


@dataclass(frozen=True)
class Split:
    """How one optimizer step's samples are split: K per normalization batch, W workers, K x W in all."""

    k: int
    workers: int
    global_batch: int
    protocol: str  # which one is fixed across a sweep over K: "global_batch" or "workers"


def step_split(acc: DictConfig) -> Split:
    """K, W and the global batch from `accuracy.batch_size` and either `accuracy.global_batch` (the
    default protocol: W = global_batch / K) or `accuracy.workers` (the GN paper's: global = K x W)."""
    k = positive_int(
        acc.batch_size, "accuracy.batch_size", "the samples per normalization batch, e.g. accuracy.batch_size=16"
    )
    global_batch, workers = acc.get("global_batch"), acc.get("workers")
    if global_batch is not None and workers is not None:
        raise UsageError(
            f"accuracy.global_batch={global_batch} and accuracy.workers={workers} both fix the samples per step: "
            f"keep one (accuracy.workers=null for a fixed global batch, W = global_batch / K; "
            f"accuracy.global_batch=null for fixed workers, the GN paper's protocol)"
        )
    if global_batch is None and workers is None:
        raise UsageError(
            "set accuracy.global_batch (samples per step, e.g. 64) or accuracy.workers "
            "(fixed workers, e.g. 8): both are null"
        )
    if workers is not None:
        workers = positive_int(
            workers, "accuracy.workers", "the simulated data-parallel workers, e.g. accuracy.workers=8"
        )
        return Split(k, workers, k * workers, "workers")
    global_batch = positive_int(global_batch, "accuracy.global_batch", "the samples per optimizer step, e.g. 64")
    if global_batch % k:
        divisors = [d for d in range(1, global_batch + 1) if global_batch % d == 0]
        raise UsageError(
            f"accuracy.global_batch={global_batch} does not split into normalization batches of "
            f"accuracy.batch_size={k}: choose K from the divisors of {global_batch}: "
            f"{', '.join(map(str, divisors))} (or change accuracy.global_batch)"
        )
    return Split(k, global_batch // k, global_batch, "global_batch")


def run(cfg: DictConfig, out_dir: Path, shared_dir: str | Path | None = None) -> list[dict]:
    """Train and evaluate one configuration; write `curve.csv` to `out_dir`; return the one row.

    `shared_dir` (a sweep's directory) lets jobs that differ only in K share one training where the
    norm cannot see K (`normbench.reuse`); None trains here whatever the norm.
    """
    threads = torch.get_num_threads()
    try:
        with reproducible(cfg.accuracy.deterministic):
            return measure(cfg, Path(out_dir), shared_dir)
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


def reuse_key(cfg: DictConfig, split: Split) -> dict:
    """Everything that decides a batch-independent norm's training: the resolved config but K and how
    the step was specified (the global batch it comes to stays), and the progress bar."""
    fields = OmegaConf.to_container(cfg, resolve=True)
    for key in ("batch_size", "workers", "global_batch", "progress"):
        fields["accuracy"].pop(key, None)
    fields["accuracy"]["samples_per_step"] = split.global_batch
    return fields


def job_name(out_dir: Path, shared_dir) -> str:
    """A job's directory relative to its sweep's (what a reused row names in `reused_from`)."""
    try:
        return Path(out_dir).resolve().relative_to(Path(shared_dir).resolve()).as_posix()
    except (TypeError, ValueError):
        return str(out_dir)


def measure(cfg: DictConfig, out_dir: Path, shared_dir: str | Path | None) -> list[dict]:
    acc = cfg.accuracy
    check_accuracy_config(acc)
    split = step_split(acc)
    device = resolve_device(cfg.device, job_index())
    if acc.get("cpu_threads"):
        # Tiny models gain nothing from intra-op threads, and on a shared or oversubscribed CPU their
        # spin-waiting costs up to 10x; a sweep runs jobs side by side instead (hydra/launcher: parallel).
        torch.set_num_threads(positive_int(acc.cpu_threads, "accuracy.cpu_threads", "or null for torch's default"))
    _, norm_options = norm_factory(cfg, split.k)

    lr, found = None, None
    if acc.get("lr_search") is not None:
        found = choose_lr(cfg, split, device, out_dir, shared_dir)
        lr = scaled_lr(found["chosen"], int(acc.lr_reference.batch), split.global_batch)

    def train_here() -> dict:
        return train(cfg, split, device, lr=lr)

    reused_from = None
    if shared_dir is not None and acc.get("reuse", True) and norms.batch_independent(cfg.norm.name):
        result, reused_from = reuse.train_once(
            shared_dir, reuse_key(cfg, split), job_name(out_dir, shared_dir), train_here
        )
    else:
        result = train_here()

    curve = result["curve"]
    row = {
        "kind": "accuracy",
        "norm": cfg.norm.name,
        "impl": cfg.impl,
        "dataset": result["dataset"],
        "model": models.name_of(cfg.model),
        "norm_position": cfg.model.get("norm_position", "before"),
        "norm_options": " ".join(f"{key}={v}" for key, v in sorted(norm_options.items()) if key != "virtual_batch"),
        "protocol": split.protocol,
        "norm_batch": split.k,
        "workers": split.workers,
        "global_batch": split.global_batch,
        "lr": result["lr"],
        "lr_chosen": found["chosen"] if found else math.nan,  # per lr_reference.batch samples, as the grid
        "lr_grid": lr_search.grid_text(found) if found else None,
        "epochs": int(acc.epochs),
        "steps": result["steps"],
        "seed": int(cfg.seed),
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
        cfg.norm.name,
        split.k,
        split.workers,
        row["test_acc"],
        shown(row["test_acc_precise_bn"]),
        shown(row["test_acc_batch_stats"]),
        f", reused from job {reused_from}" if reused_from else "",
    )
    return [row]


def precise_bn_batches(data: datasets.Dataset, samples: int, k: int, seed: int):
    """The training samples PreciseBN averages over: the first `samples` (rounded down to a multiple
    of K) of a seeded shuffle, augmented as in training, in chunks of several K."""
    gen = torch.Generator().manual_seed(seed + 1)  # not the training order's stream: a fresh draw
    idx = torch.randperm(data.x_train.shape[0], generator=gen)[: samples // k * k].to(data.x_train.device)
    for start in range(0, idx.numel(), chunk_of(k)):
        x = data.x_train[idx[start : start + chunk_of(k)]]
        yield datasets.augment(x, gen) if data.augment else x


def choose_lr(cfg: DictConfig, split: Split, device: torch.device, out_dir: Path, shared_dir) -> dict:
    """`accuracy.lr_search`: the grid tried on a validation split of the training data (normbench.lr_search),
    once per configuration: the seed (and K, for a norm that cannot see it) left out of the sharing key."""
    node = cfg.accuracy.lr_search
    lr_search.grid_of(node)  # a bad grid fails here, before any training
    lr_search.search_seeds(node)
    search_cfg = lr_search.search_config(cfg)
    search_cfg.seed = int(node.get("seed", 0))
    data = datasets.load(cfg.dataset, device)

    def train_at(lr: float, split_data: datasets.Dataset, seed: int) -> dict:
        seeded = search_cfg.copy()
        seeded.seed = seed
        return train(
            seeded,
            split,
            device,
            data=split_data,
            lr=scaled_lr(lr, int(cfg.accuracy.lr_reference.batch), split.global_batch),
        )

    key = reuse_key(search_cfg, split)
    key["lr_search_of"] = split.k if not norms.batch_independent(cfg.norm.name) else "any K"
    found, _ = reuse.train_once(
        shared_dir, key, job_name(out_dir, shared_dir), lambda: lr_search.search(node, train_at, data)
    )
    log.info(
        "%s K=%d: lr %g per %d samples chosen from %s",
        cfg.norm.name,
        split.k,
        found["chosen"],
        int(cfg.accuracy.lr_reference.batch),
        lr_search.grid_text(found),
    )
    return found


def train(
    cfg: DictConfig, split: Split, device: torch.device, data: datasets.Dataset | None = None, lr: float | None = None
) -> dict:
    """Train one model and evaluate it; everything measured, as JSON data (a job may share it). `data`
    replaces the configured dataset (the LR search's validation split), `lr` the linearly scaled fixed LR."""
    acc = cfg.accuracy
    k, workers, global_batch = split.k, split.workers, split.global_batch
    epochs = int(acc.epochs)
    data = datasets.load(cfg.dataset, device) if data is None else data
    n_train = data.x_train.shape[0]
    steps_per_epoch = n_train // global_batch
    if steps_per_epoch < 1:
        raise UsageError(
            f"one step takes accuracy.batch_size x workers = {k} x {workers} = {global_batch} samples, "
            f"more than the {n_train} training samples of {data.name}: lower accuracy.global_batch or the workers"
        )
    torch.manual_seed(cfg.seed)  # model initialization
    make_norm, _ = norm_factory(cfg, k)
    model = models.from_config(
        cfg.model, input_shape=tuple(data.x_train.shape[1:]), num_classes=data.num_classes, norm=make_norm
    ).to(device)
    # BatchNorm's other two evaluations (see normbench.evaluation); NaN where there is no BatchNorm.
    bn = bool(batch_norms(model)) and all(m.track_running_stats for m in batch_norms(model))
    precise_samples = acc.get("precise_bn_samples") if bn else None
    if precise_samples is not None:
        precise_samples = positive_int(
            precise_samples, "accuracy.precise_bn_samples", "the training samples PreciseBN averages over, e.g. 2048"
        )
        if not k <= precise_samples <= n_train:
            raise UsageError(
                f"accuracy.precise_bn_samples={precise_samples} must lie between K={k} and the {n_train} "
                f"training samples of {data.name}: set it in that range (or null to skip PreciseBN)"
            )

    if lr is None:
        lr = scaled_lr(float(acc.lr_reference.lr), int(acc.lr_reference.batch), global_batch)
    clip = acc.get("grad_clip")
    optimizer = optim.sgd(model, acc, lr)
    smoothing = optim.label_smoothing(acc)
    loop = fastpath.options(acc, images=data.x_train.dim() == 4)
    fastpath.check_device(loop, device)
    if loop.enabled:  # data on the device by index, layout, precision, compile: normbench.fastpath
        batches = fastpath.DeviceBatches(data, loop.channels_last).epoch
        forward, _ = fastpath.prepare(model, loop, data.x_train.dim())
    else:
        batches, forward = functools.partial(datasets.train_batches, data), model
    total_steps = epochs * steps_per_epoch
    warmup = round(float(acc.warmup_epochs) * steps_per_epoch)
    schedule = lr_schedule(optimizer, total_steps, warmup)
    order = torch.Generator().manual_seed(cfg.seed)  # shuffling and augmentation, on the CPU for any device
    eval_batch = int(acc.eval_batch)

    label = f"{cfg.norm.name}/{cfg.impl} K={k} W={workers}"
    model_name = models.name_of(cfg.model)
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
        disable=None if acc.progress else True,
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
                        raise UsageError(f"accuracy.batch_size={k} x workers={workers}, {model_name}: {exc}") from None
                    loss = F.cross_entropy(logits, y, label_smoothing=smoothing)
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                if clip is not None:  # global gradient norm clipping (docs/accuracy.md: the no-norm baseline)
                    torch.nn.utils.clip_grad_norm_(model.parameters(), float(clip))
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
    by_batch = accuracy_with_batch_stats(model, data.x_test, data.y_test, k, cfg.seed) if bn else math.nan
    precise, used = math.nan, None
    if precise_samples is not None:
        used = precise_samples // k * k
        population = precise_bn(model, precise_bn_batches(data, precise_samples, k, cfg.seed), k)
        precise = accuracy(population, data.x_test, data.y_test, eval_batch)
    return {
        "dataset": data.name,
        "lr": lr,
        "steps": total_steps,
        "curve": curve,
        "test_acc_precise_bn": precise,
        "test_acc_batch_stats": by_batch,
        "precise_bn_samples": used,
        "train_eval_acc": train_eval_accuracy(model, data, acc.get("train_eval_samples"), eval_batch),
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
    n = positive_int(samples, "accuracy.train_eval_samples", "the training samples scored in eval mode, e.g. 1024")
    subset = torch.randperm(data.x_train.shape[0], generator=torch.Generator().manual_seed(0))[:n]
    subset = subset.to(data.x_train.device)
    model.eval()
    return accuracy(model, data.x_train[subset], data.y_train[subset], batch)


def write_curve(out_dir: Path, points: list[dict]) -> Path:
    # Written whole, then renamed, like rows.csv.
    return atomic_write_bytes(Path(out_dir) / CURVE_FILE, pd.DataFrame(points).to_csv(index=False).encode())
