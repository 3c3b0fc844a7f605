"""pytest-benchmark suite: every registered implementation of bn, ln, in and gn, per pass and size.

    pytest tests/benchmarks --benchmark-only                          # ~1 minute on a CPU
    pytest tests/benchmarks --benchmark-only --benchmark-json=bench.json
    pytest tests/benchmarks --benchmark-only -k "gn and fwdbwd"       # one norm and pass
    NORMBENCH_BENCH_SIZE=tiny pytest tests/benchmarks --benchmark-only   # CI: one tiny size, few rounds

Each benchmark's group is "<norm> <pass> <size>", so the default `--benchmark-group-by=group` puts
the implementations of one norm side by side; `extra_info` carries the shape, the bytes of the
byte model (normbench.bench.speed.bytes_moved), GB/s from the median and the device's copy bandwidth
(`normbench-report bench.json` reads it as speed rows). On CUDA the timer synchronizes before it
reads the clock, so a round's time covers the kernels it launched, not just their launch; on the
CPU it runs on one thread, as normbench-speed does by default. These are
quick side-by-side numbers; the careful ones (L2 flush, percentiles, peak memory) come from
`normbench-speed`. The compile of impl=compiled happens in a warm-up call before timing, and the
`bwd` pass calls backward on one retained graph, under the speed job's `retained_backward()`.
NORMBENCH_BENCH_SIZE=tiny (CI's) runs every case once at one tiny size, to show it works, not to time it.
"""

from __future__ import annotations

import os
import time

import pytest
import torch

from normbench import norms
from normbench.bench.speed import PASSES, bytes_moved, pass_callable, retained_backward
from normbench.bench.timing import peak_bandwidth
from normbench.device import device_name

CUDA = torch.cuda.is_available()
DEVICE = torch.device("cuda" if CUDA else "cpu")
NORMS = ["bn", "ln", "in", "gn"]
# L is S with an 8x batch: compiled reuses its graph (batch is its one dynamic dimension). CPU sizes
# keep the suite near a minute; on a GPU, L (205 MB in float32) is far larger than the L2 cache.
SIZES = {"S": (32, 64, 56, 56), "L": (256, 64, 56, 56)} if CUDA else {"S": (4, 32, 16, 16), "L": (32, 32, 16, 16)}
TINY = os.environ.get("NORMBENCH_BENCH_SIZE") == "tiny"
if TINY:
    SIZES = {"tiny": (2, 8, 4, 4)}


def runnable(impl: str) -> bool:
    # Triton's CPU interpreter is a correctness tool, far too slow to time.
    return CUDA or impl != "triton"


CASES = [
    pytest.param(norm, impl, pass_, size, id=f"{norm}-{impl}-{pass_}-{size}")
    for norm in NORMS
    for impl in norms.implementations(norm)
    if runnable(impl)
    for pass_ in PASSES
    for size in SIZES
]


def synchronized_clock() -> float:
    torch.cuda.synchronize()
    return time.perf_counter()


pytestmark = pytest.mark.benchmark(
    timer=synchronized_clock if CUDA else time.perf_counter,
    max_time=0.001 if TINY else 0.1,
    min_rounds=2 if TINY else 5,
    warmup=True,
    warmup_iterations=1 if TINY else 3,
)


@pytest.fixture(scope="module", autouse=True)
def one_cpu_thread():
    """One CPU thread, as normbench-speed's default: busy cores stall multi-threaded norms."""
    threads = torch.get_num_threads()
    if not CUDA:
        torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def peak(one_cpu_thread):
    # A smaller copy than the speed job's 512 MiB: the suite's numbers are relative anyway.
    copy_mb = 8 if TINY else 128
    return peak_bandwidth(DEVICE, device_name(DEVICE), None, copy_mb, min_repeats=3, min_run_time=0.05)


@pytest.fixture
def retained():
    """As the speed job times: compiled graphs built with AOTAutograd's donated buffers off, so the
    `bwd` pass can call backward on one retained graph again and again."""
    with retained_backward():
        yield


@pytest.mark.parametrize("norm, impl, pass_, size", CASES)
def test_norm(benchmark, peak, retained, norm, impl, pass_, size):
    shape = SIZES[size]
    torch.manual_seed(0)
    options = {"groups": 8} if norm == "gn" else {}
    layer = norms.build(norm, shape[1], impl=impl, device=DEVICE, **options).train()
    x = torch.randn(shape, device=DEVICE, requires_grad=True)
    layer(x).sum().backward()  # warm-up: compiles impl=compiled outside the timing
    fn, grads = pass_callable(layer, x, pass_)

    def call():
        for t in grads:
            t.grad = None
        fn()

    nbytes = bytes_moved(layer, x, pass_)
    benchmark.group = f"{norm} {pass_} {size}"
    benchmark.extra_info.update(
        norm=norm,
        impl=impl,
        **{"pass": pass_},
        shape="x".join(map(str, shape)),
        batch_size=shape[0],
        dtype="float32",
        layout="contiguous",
        device=str(DEVICE),
        device_name=device_name(DEVICE),
        bytes=nbytes,
        peak_gbps=peak["peak_gbps"],
        torch_version=torch.__version__,
        threads=None if CUDA else torch.get_num_threads(),
    )
    benchmark(call)
    median = benchmark.stats.stats.median
    benchmark.extra_info["gbps"] = nbytes / median / 1e9
    benchmark.extra_info["pct_of_peak"] = 100 * benchmark.extra_info["gbps"] / peak["peak_gbps"]
