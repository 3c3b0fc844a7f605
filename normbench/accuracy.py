"""The accuracy job: train one model for one norm at one per-worker batch size, and measure it.

The protocol is the Group Normalization paper's (Wu & He 2018, Sec. 5.1 and Figure 1):

- `accuracy.batch_size` = K, the samples one normalization batch holds (the paper's images per GPU);
  `accuracy.workers` = W simulated data-parallel workers; one optimizer step sees K x W samples.
  BatchNorm takes its statistics per worker, unsynchronized, as each GPU would: the norm's own
  `virtual_batch=K` option does that inside one kernel call, not a Python loop over chunks.
- The learning rate scales linearly with the samples per step from a stated reference
  (lr = lr_reference.lr x K W / lr_reference.batch; Goyal et al. 2017, Sec. 2.1), and every batch
  size trains the same number of epochs.
- LN, IN and GN never look across samples, so for them the K x W split changes nothing: same seed and
  samples per step give the same model whatever the split (tests/test_accuracy.py checks it).

Per run it measures test accuracy in eval mode (BatchNorm on its running statistics), for BatchNorm
also with batch statistics at the per-worker batch size (the train/test inconsistency that Wu &
Johnson 2021, "Rethinking 'Batch' in BatchNorm", Sec. 4 measures), the train loss, a per-epoch curve
(`curve.csv` beside `rows.csv`), wall time and throughput.
"""

from __future__ import annotations

import contextlib
import logging
import math
import sys
import time
from pathlib import Path

import pandas as pd
import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from torch import nn
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from normbench import data as datasets
from normbench import models, norms
from normbench.device import device_name, resolve_device
from normbench.errors import UsageError
from normbench.results import atomic_write_bytes
from normbench.norms import BatchNorm

log = logging.getLogger(__name__)

CURVE_FILE = "curve.csv"


# ------------------------------------------------------------------------------------------ protocol


def positive_int(value, key: str, hint: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise UsageError(f"{key} must be a positive int, got {value!r}: {hint}")
    return value


def scaled_lr(reference_lr: float, reference_batch: int, global_batch: int) -> float:
    """The linear scaling rule (Goyal et al. 2017, Sec. 2.1): the LR is proportional to samples per step."""
    return reference_lr * global_batch / reference_batch


def lr_at(step: int, total: int, warmup: int) -> float:
    """The schedule's factor at `step`: linear warmup over `warmup` steps (Goyal et al. 2017, Sec. 2.2),
    then cosine decay to 0 at `total` (Loshchilov & Hutter 2017), so every run ends annealed."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1 + math.cos(math.pi * progress))


def norm_factory(cfg: DictConfig, batch_size: int):
    """channels -> norm module: the `norm` node, the model's per-norm options, and for BatchNorm the
    per-worker statistics (virtual batch = K)."""
    name = cfg.norm.name
    per_norm = cfg.model.get("norm_options") or {}
    options = dict(OmegaConf.to_container(per_norm[name], resolve=True) if per_norm.get(name) else {})
    if name == "bn":
        options["virtual_batch"] = batch_size

    def make(channels: int) -> nn.Module:
        if name == "gn":
            groups = options.get("groups", cfg.norm.get("groups", 32))
            if channels % groups:
                raise UsageError(
                    f"gn with {groups} groups cannot normalize this model's {channels}-channel layers: "
                    f"set model.norm_options.gn.groups to a divisor of every width (e.g. 8 or 16)"
                )
        return norms.build_from_config(cfg.norm, channels, impl=cfg.impl, **options)

    return make, options


# ------------------------------------------------------------------------------------------ measuring


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int) -> float:
    """Top-1 accuracy of `model` as it is (train or eval mode) over chunks of `batch` samples."""
    correct = torch.zeros((), dtype=torch.long, device=x.device)
    for start in range(0, x.shape[0], batch):
        correct += (model(x[start : start + batch]).argmax(1) == y[start : start + batch]).sum()
    return correct.item() / x.shape[0]


def batch_norms(model: nn.Module) -> list[BatchNorm]:
    return [m for m in model.modules() if isinstance(m, BatchNorm)]


@torch.no_grad()
def accuracy_with_batch_stats(model: nn.Module, x: torch.Tensor, y: torch.Tensor, k: int, seed: int) -> float:
    """Test accuracy with BatchNorm normalizing each group of K test samples by its own statistics,
    as in training, instead of by the running averages; the running statistics are left untouched.

    The test set is shuffled first (seeded): in class order, a group of K would hold one class only.
    Chunks of several K are evaluated at once (the virtual batch keeps them apart); a last group
    smaller than K is normalized on its own.
    """
    bns = batch_norms(model)
    saved = [{k_: b.clone() for k_, b in m.named_buffers()} for m in bns]
    order = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(seed)).to(x.device)
    x, y = x[order], y[order]
    chunk = k * max(1, 1024 // k)
    full = (x.shape[0] // k) * k
    try:
        for m in bns:
            m.train()
        correct = accuracy(model, x[:full], y[:full], chunk) * full if full else 0.0
        if full < x.shape[0]:
            for m in bns:
                m.virtual_batch = x.shape[0] - full
            correct += accuracy(model, x[full:], y[full:], x.shape[0] - full) * (x.shape[0] - full)
    finally:
        for m, buffers in zip(bns, saved):
            m.eval()
            m.virtual_batch = k
            for name, value in buffers.items():
                getattr(m, name).copy_(value)
    return correct / x.shape[0]


# ------------------------------------------------------------------------------------------ the job


def job_index() -> int | None:
    try:
        from hydra.core.hydra_config import HydraConfig

        return HydraConfig.get().job.get("num")
    except Exception:  # noqa: BLE001 - called outside a Hydra app (tests, notebooks)
        return None


def run(cfg: DictConfig, out_dir: Path) -> list[dict]:
    """Train and evaluate one configuration; write `curve.csv` to `out_dir`; return the one row."""
    threads = torch.get_num_threads()
    try:
        return train_and_measure(cfg, Path(out_dir))
    finally:  # accuracy.cpu_threads is per run: leave the process (a test session, a notebook) as it was
        torch.set_num_threads(threads)


def train_and_measure(cfg: DictConfig, out_dir: Path) -> list[dict]:
    acc = cfg.accuracy
    k = positive_int(acc.batch_size, "accuracy.batch_size", "the samples per normalization batch, e.g. accuracy.batch_size=16")
    workers = positive_int(acc.workers, "accuracy.workers", "the simulated data-parallel workers, e.g. accuracy.workers=1")
    epochs = positive_int(acc.epochs, "accuracy.epochs", "e.g. accuracy.epochs=10")
    global_batch = k * workers
    device = resolve_device(cfg.device, job_index())
    if acc.get("cpu_threads"):
        # Tiny models gain nothing from intra-op threads, and on a shared or oversubscribed CPU their
        # spin-waiting costs up to 10x; a sweep runs jobs side by side instead (hydra/launcher: parallel).
        torch.set_num_threads(positive_int(acc.cpu_threads, "accuracy.cpu_threads", "or null for torch's default"))

    data = datasets.load(cfg.dataset, device)
    n_train = data.x_train.shape[0]
    steps_per_epoch = n_train // global_batch
    if steps_per_epoch < 1:
        raise UsageError(
            f"one step takes accuracy.batch_size x accuracy.workers = {k} x {workers} = {global_batch} samples, "
            f"more than the {n_train} training samples of {data.name}: lower the batch size or the workers"
        )

    torch.manual_seed(cfg.seed)  # model initialization
    make_norm, norm_options = norm_factory(cfg, k)
    model_options = {key: v for key, v in OmegaConf.to_container(cfg.model, resolve=True).items()
                     if key not in ("name", "norm_options")}
    model = models.build(
        cfg.model.name, input_shape=tuple(data.x_train.shape[1:]), num_classes=data.num_classes,
        norm=make_norm, **model_options,
    ).to(device)

    lr = scaled_lr(float(acc.lr_reference.lr), int(acc.lr_reference.batch), global_batch)
    optimizer = torch.optim.SGD(
        model.parameters(), lr=lr, momentum=float(acc.momentum), weight_decay=float(acc.weight_decay)
    )
    total_steps = epochs * steps_per_epoch
    warmup = round(float(acc.warmup_epochs) * steps_per_epoch)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_at(s, total_steps, warmup))
    order = torch.Generator().manual_seed(cfg.seed)  # shuffling and augmentation, on the CPU for any device
    eval_batch = int(acc.eval_batch)

    label = f"{cfg.norm.name}/{cfg.impl} K={k} W={workers}"
    model_name = cfg.model.name
    log.info("%s: %s on %s, lr %.4g, %d steps of %d samples, %s", label, cfg.model.name, data.name, lr,
             total_steps, global_batch, device_name(device))
    curve, train_s, seen = [], 0.0, 0
    start = time.perf_counter()
    bar = tqdm(total=total_steps, desc=label, file=sys.stderr, disable=None if acc.progress else True,
               leave=False, dynamic_ncols=True)
    with logging_redirect_tqdm(), contextlib.closing(bar):
        for epoch in range(1, epochs + 1):
            model.train()
            t0 = time.perf_counter()
            loss_sum = torch.zeros((), device=device)  # summed on the device: no sync per step
            correct = torch.zeros((), dtype=torch.long, device=device)
            for x, y in datasets.train_batches(data, global_batch, order):
                try:
                    logits = model(x)
                except UsageError as exc:  # e.g. a per-worker batch that leaves bn one value per channel
                    raise UsageError(f"accuracy.batch_size={k} x accuracy.workers={workers}, {model_name}: {exc}") from None
                loss = F.cross_entropy(logits, y)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                schedule.step()
                loss_sum += loss.detach()
                correct += (logits.detach().argmax(1) == y).sum()
                bar.update()
            train_loss = loss_sum.item() / steps_per_epoch
            if not math.isfinite(train_loss):
                raise RuntimeError(f"{label}: train loss diverged to {train_loss} in epoch {epoch} (lr {lr:.4g})")
            train_s += time.perf_counter() - t0
            seen += steps_per_epoch * global_batch
            model.eval()
            test_acc = accuracy(model, data.x_test, data.y_test, eval_batch)
            curve.append({
                "epoch": epoch, "train_loss": train_loss,
                "train_acc": correct.item() / (steps_per_epoch * global_batch),
                "test_acc": test_acc, "lr": schedule.get_last_lr()[0],
                "wall_s": time.perf_counter() - start,
            })
            bar.set_postfix(loss=f"{train_loss:.3f}", test_acc=f"{test_acc:.3f}")
            log.info("%s epoch %d/%d: train loss %.4f, test acc %.4f", label, epoch, epochs, train_loss, test_acc)

    model.eval()
    test_acc_bs = (
        accuracy_with_batch_stats(model, data.x_test, data.y_test, k, cfg.seed)
        if batch_norms(model) and all(m.track_running_stats for m in batch_norms(model)) else float("nan")
    )
    wall_s = time.perf_counter() - start
    row = {
        "kind": "accuracy",
        "norm": cfg.norm.name,
        "impl": cfg.impl,
        "dataset": data.name,
        "model": cfg.model.name,
        "norm_position": model_options.get("norm_position", "before"),
        "norm_options": " ".join(f"{key}={v}" for key, v in sorted(norm_options.items()) if key != "virtual_batch"),
        "batch_size": k,
        "workers": workers,
        "global_batch": global_batch,
        "lr": lr,
        "epochs": epochs,
        "steps": total_steps,
        "seed": int(cfg.seed),
        "test_acc": curve[-1]["test_acc"],
        "test_acc_batch_stats": test_acc_bs,
        "train_loss": curve[-1]["train_loss"],
        "train_acc": curve[-1]["train_acc"],
        "wall_s": wall_s,
        "samples_per_s": seen / train_s,
        "device": str(device),
        "device_name": device_name(device),
        "torch_version": torch.__version__,
    }
    ids = {key: row[key] for key in ("norm", "impl", "dataset", "model", "batch_size", "workers", "seed")}
    write_curve(out_dir, [{**ids, **point} for point in curve])
    log.info("%s: test acc %.4f (batch stats %.4f), %.1f s", label, row["test_acc"], test_acc_bs, wall_s)
    return [row]


def write_curve(out_dir: Path, points: list[dict]) -> Path:
    # Written whole, then renamed, like rows.csv.
    return atomic_write_bytes(Path(out_dir) / CURVE_FILE, pd.DataFrame(points).to_csv(index=False).encode())
