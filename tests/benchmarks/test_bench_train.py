"""Images/s of a ResNet-20 training step, the standard loop against the fast one (issue 28).

One step = drawing the batch (crop + flip on), forward, backward and the SGD update, at 32 samples per
step (the CIFAR-10 CPU experiment's) with BatchNorm per worker at K = 2 and 32. The standard loop
indexes the float copy of the images and augments it; the fast loop serves the uint8 images standardized
per batch, in channels_last, and `compiled` adds torch.compile (inductor; its first steps compile and are
not timed). On a CPU each step is timed with time.perf_counter around the whole step; the alternating
run also takes the main thread's CPU time (time.thread_time: with one intra-op thread all of a step's
work runs there), which a VM shared with other work inflates far less than the wall time, and prints
the load average (docs/accuracy.md, "Throughput").

    pytest tests/benchmarks/test_bench_train.py --benchmark-only     # pytest-benchmark, each case apart
    python -m tests.benchmarks.test_bench_train                      # both loops alternating in one process
"""

from __future__ import annotations

import itertools
import os
import statistics
import sys
import time

import pytest
import torch
import torch.nn.functional as F

from normbench import data as datasets
from normbench import models, norms, specs
from normbench.train import fastpath, optim

SAMPLES_PER_STEP = 32
# The standard schedule's optimizer (conf/experiment/cifar10_resnet20_gpu.yaml), through the app's optim.sgd.
SCHEDULE = specs.Schedule(
    epochs=1,
    reference_lr=0.01,
    reference_batch=SAMPLES_PER_STEP,
    momentum=0.9,
    nesterov=True,
    weight_decay=5e-4,
    weight_decay_on="weights",
    label_smoothing=0.0,
    warmup_epochs=0.0,
    grad_clip=None,
)
LOOPS = ("standard", "fast", "fast compiled")


def images(n: int = 256) -> datasets.Dataset:
    return datasets.synthetic(num_classes=10, shape=(3, 32, 32), train_size=n, test_size=1, pixels=True, augment=True)


def train_step(loop: str, k: int, data: datasets.Dataset):
    """A function that runs one training step of `loop` and returns the samples it took."""
    torch.manual_seed(0)
    model = models.build(
        "resnet20", input_shape=(3, 32, 32), num_classes=10, norm=lambda c: norms.build("bn", c, virtual_batch=k)
    )
    opts = specs.FastPath(loop != "standard", compile=loop == "fast compiled")
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
    spread the drift over all of them): per loop the median images/s of wall time and of the thread's
    CPU time, and the median of each turn's ratio to standard's, with the load average around it."""
    torch.set_num_threads(1)
    data = images()
    for k in ks:
        compiled_at = time.perf_counter()
        runs = {loop: train_step(loop, k, data) for loop in LOOPS}
        print(f"K={k}: built and warmed in {time.perf_counter() - compiled_at:.0f} s (includes inductor's compile)")
        load = os.getloadavg()[0]
        rates: dict[str, dict[str, list[float]]] = {loop: {"wall": [], "cpu": []} for loop in LOOPS}
        for _ in range(repeats):
            for loop, step in runs.items():
                t0, c0 = time.perf_counter(), time.thread_time()
                n = sum(step() for _ in range(steps))
                rates[loop]["wall"].append(n / (time.perf_counter() - t0))
                rates[loop]["cpu"].append(n / (time.thread_time() - c0))
        for loop in LOOPS:
            shown = []
            for clock, rate in rates[loop].items():
                ratio = statistics.median(r / s for r, s in zip(rate, rates["standard"][clock]))
                shown.append(f"{clock} {statistics.median(rate):4.0f} images/s (x{ratio:.2f})")
            print(f"K={k} {loop:14s} " + ", ".join(shown))
        print(f"K={k} load average (1 min) {load:.1f} before, {os.getloadavg()[0]:.1f} after, on {os.cpu_count()} CPUs")
        sys.stdout.flush()


if __name__ == "__main__":
    alternating()
