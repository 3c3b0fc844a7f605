"""Images/s of a ResNet-20 training step, the standard loop against the fast one (issue 28).

One step = drawing the batch (crop + flip on), forward, backward and the SGD update, at 32 samples per
step (the CIFAR-10 CPU experiment's) with BatchNorm per worker at K = 2 and 32. The standard loop
indexes the float copy of the images and augments it; the fast loop serves the uint8 images standardized
per batch, in channels_last, and `compiled` adds torch.compile (inductor; its first steps compile and are
not timed). On a CPU each step is timed with time.perf_counter around the whole step.

    pytest tests/benchmarks/test_bench_train.py --benchmark-only     # pytest-benchmark, each case apart
    python -m tests.benchmarks.test_bench_train                      # both loops alternating in one process
"""

from __future__ import annotations

import itertools
import statistics
import sys
import time

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from normbench import data as datasets
from normbench import fastpath, models, norms, optim

SAMPLES_PER_STEP = 32
# The standard schedule's optimizer (conf/experiment/cifar10_resnet20_gpu.yaml), through the app's optim.sgd.
SCHEDULE = OmegaConf.create({"momentum": 0.9, "nesterov": True, "weight_decay": 5e-4, "weight_decay_on": "weights"})
LOOPS = ("standard", "fast", "fast compiled")


def images(n: int = 256) -> datasets.Dataset:
    return datasets.synthetic(num_classes=10, shape=(3, 32, 32), train_size=n, test_size=1, pixels=True, augment=True)


def train_step(loop: str, k: int, data: datasets.Dataset):
    """A function that runs one training step of `loop` and returns the samples it took."""
    torch.manual_seed(0)
    model = models.build(
        "resnet20", input_shape=(3, 32, 32), num_classes=10, norm=lambda c: norms.build("bn", c, virtual_batch=k)
    )
    opts = fastpath.Options(loop != "standard", compile=loop == "fast compiled")
    forward, _ = fastpath.prepare(model, opts, 4) if opts.enabled else (model, [])
    optimizer = optim.sgd(model, SCHEDULE, lr=0.01)
    order = torch.Generator().manual_seed(0)
    if opts.enabled:
        epochs = (fastpath.DeviceBatches(data).epoch(SAMPLES_PER_STEP, order) for _ in itertools.count())
    else:
        epochs = (datasets.train_batches(data, SAMPLES_PER_STEP, order) for _ in itertools.count())
    batches = itertools.chain.from_iterable(epochs)

    def step() -> int:
        x, y = next(batches)
        loss = F.cross_entropy(forward(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return x.shape[0]

    step()
    step()  # warm: oneDNN's first calls, and the compile of a compiled forward and backward
    return step


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One intra-op thread, as the accuracy job trains on CPU (accuracy.cpu_threads)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.benchmark(group="resnet20 training step, 32 samples (images/s = 32 / time)")
@pytest.mark.parametrize("k", [2, 32])
@pytest.mark.parametrize("loop", LOOPS)
def test_train_step(benchmark, loop, k):
    step = train_step(loop, k, images())
    benchmark.extra_info["images_per_step"] = SAMPLES_PER_STEP
    benchmark.pedantic(step, rounds=5, iterations=1)


def alternating(ks=(32, 2), repeats: int = 7, steps: int = 6) -> None:
    """Every loop's images/s, the loops taking turns `repeats` times (a shared machine drifts; turns
    spread the drift over all of them): the raw numbers, and each loop's median ratio to standard."""
    torch.set_num_threads(1)
    data = images()
    for k in ks:
        compiled_at = time.perf_counter()
        runs = {loop: train_step(loop, k, data) for loop in LOOPS}
        print(f"K={k}: built and warmed in {time.perf_counter() - compiled_at:.0f} s (includes inductor's compile)")
        rates: dict[str, list[float]] = {loop: [] for loop in LOOPS}
        for _ in range(repeats):
            for loop, step in runs.items():
                t0 = time.perf_counter()
                n = sum(step() for _ in range(steps))
                rates[loop].append(n / (time.perf_counter() - t0))
        for loop in LOOPS:
            ratios = [r / s for r, s in zip(rates[loop], rates["standard"])]
            raw = " ".join(f"{r:.0f}" for r in rates[loop])
            print(f"K={k} {loop:14s} images/s {raw}; median ratio to standard {statistics.median(ratios):.2f}")
        sys.stdout.flush()


if __name__ == "__main__":
    alternating()
