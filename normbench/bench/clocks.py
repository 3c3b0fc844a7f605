"""The device and host clocks of a speed row, beside the wall clock of `normbench.bench.timing`.

A call of a norm on a GPU costs host time (Python, dispatch, autograd, the launches) and device time
(the kernels). An eager loop sees the larger of the two; the roofline is about the device alone. So
every CUDA row takes, besides the wall clock (`timing.time_fn`, what an eager loop sees per call):

* graph:  N calls captured in one CUDA graph, round-robin over copies of the pass whose total bytes
          exceed 3x the L2 (QuACK's `quack/bench/bench_utils.py`, `_bench_cuda_graph_l2_rotate` and
          `_pick_l2_rotate_count`), timed with a pair of events around each replay; a replay issues
          the kernels back to back, with no host work between them. `device_graph_ms` = replay / N;
* kineto: the same round-robin calls run eagerly under `torch.profiler`, and the kernels' busy time
          (their intervals merged, so nothing counts twice) / calls: tritonbench's profiler mode
          (`tritonbench/components/do_bench/run.py`, `_do_bench_profiler`). `device_kineto_ms`;
          the kernels, memsets and memcopies counted per call are `launches`;
* host:   the host's time to issue one call (perf_counter around a burst of calls short enough that
          the launch queue never fills, so the host never waits for the device). `host_us`.

`speed.l2=warm` times one resident copy instead (every call finds its input in L2, as in a loop that
re-reads a small tensor). On the CPU there is no device apart from the host: device_ms is the wall
clock and these clocks are not taken. Every CUDA primitive goes through `CUDA` (a `Cuda`), so the
tests can reach each branch on a CPU with a fake in its place.
"""

from __future__ import annotations

import json
import math
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from normbench.bench.timing import Timing, clear_grads, quantiles
from normbench.errors import UsageError

CLOCKS = ("wall", "graph", "kineto", "host")
L2_RATIO = 3  # rotating copies hold more than 3x the L2 (QuACK's target_ratio)
MAX_COPIES = 256  # graph nodes and memory bound the rotation: inputs < 3 L2 / 256 rotate less
REPLAYS = 10  # graph replays (and kineto chunks) per row: device_p20 / device_p80 come from them
REPLAY_MS = 10.0  # device time one replay aims at
MAX_CALLS = 1000  # calls captured in one graph at most
WARMUP = 3  # calls per copy before a capture (lazy initialization cannot be captured)
# Launches per host burst at most: the launch queue blocks the host once on the order of a thousand
# launches are pending (an observed figure; CUDA does not document it), so half that never blocks.
HOST_LAUNCHES = 512
DIFFER = 0.05  # device_clocks_differ when graph and kineto disagree by more than this
KERNEL_EVENTS = ("kernel", "gpu_memcpy", "gpu_memset")  # kineto's categories of device work

Make = Callable[[int], tuple[Callable[[], object], Sequence[Tensor]]]


class CaptureFailed(RuntimeError):
    """A pass that cannot be captured in a CUDA graph: its row is skipped with this reason."""


def parse_clocks(value) -> list[str]:
    """speed.clocks: `all` or a list of clock names, the wall clock among them."""
    items = list(value) if isinstance(value, Iterable) and not isinstance(value, str) else [value]
    if items == ["all"]:
        return list(CLOCKS)
    bad = [c for c in items if c not in CLOCKS]
    if bad or "wall" not in items:
        what = f"unknown clock {', '.join(map(repr, bad))}" if bad else f"speed.clocks={items} has no wall clock"
        raise UsageError(
            f"{what}: speed.clocks takes all or a list of {', '.join(CLOCKS)} with wall in it, "
            "e.g. speed.clocks=[wall,kineto]"
        )
    return list(dict.fromkeys(items))


# ------------------------------------------------------------------------------------- the backend


class Cuda:
    """The CUDA primitives the clocks use (tests replace `CUDA` with a fake)."""

    activities = (torch.profiler.ProfilerActivity.CUDA,)
    categories = KERNEL_EVENTS

    def l2_bytes(self, device) -> int:
        return int(torch.cuda.get_device_properties(device).L2_cache_size)

    def free_bytes(self, device) -> int:
        return int(torch.cuda.mem_get_info(device)[0])

    def synchronize(self, device) -> None:
        torch.cuda.synchronize(device)

    def event(self):
        return torch.cuda.Event(enable_timing=True)

    def stream(self, device):
        return torch.cuda.Stream(device)

    @contextmanager
    def side_stream(self, stream, device):
        """Work on `stream`, ordered after what the current stream queued, and before what follows."""
        stream.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(stream):
            yield
        torch.cuda.current_stream(device).wait_stream(stream)

    def capture(self, body: Callable[[], None], stream) -> Callable[[], None]:
        """body's GPU work as a CUDA graph on `stream`; its replay."""
        graph = torch.cuda.CUDAGraph()
        before = torch.cuda.current_stream(stream.device)
        try:
            with torch.cuda.graph(graph, stream=stream):
                body()
        except BaseException:
            self._abandon(graph, stream, before)
            raise
        return graph.replay

    @staticmethod
    def _abandon(graph, stream, before) -> None:
        """Undo what a failed capture leaves behind. torch.cuda.graph ends the capture on the way out,
        but when ending raises (a capture the body invalidated) it skips the rest: the current stream
        stays the capture's, and torch's CUDAGraph::capture_end, which ends the stream's capture
        before it tells the caching allocator, leaves the allocator routing to the graph's pool as if
        a capture were still underway (after which empty_cache, run by every later capture, refuses).
        So: end the stream's capture, restore the current stream, end the allocation to the pool and
        release it. Written from torch 2.x's CUDAGraph.cpp; not yet run on a GPU."""
        with torch.cuda.stream(stream):
            if torch.cuda.is_current_stream_capturing():
                try:
                    graph.capture_end()
                except RuntimeError:
                    pass
        torch.cuda.set_stream(before)
        index, pool = stream.device.index, graph.pool()
        try:
            torch._C._cuda_endAllocateToPool(index, pool)
        except (AttributeError, RuntimeError, TypeError):
            return  # capture_end got past it: the graph releases its pool when it is freed
        torch._C._cuda_releasePool(index, pool)

    def recover(self, device) -> None:
        """After a failed capture: surface any deferred error now, hand the graph's pool back."""
        for step in (lambda: torch.cuda.synchronize(device), torch.cuda.empty_cache):
            try:
                step()
            except RuntimeError:
                pass  # the row is skipped either way; the next capture's own checks say more


CUDA = Cuda()


def copies_for(nbytes: int | None, l2: str, l2_bytes: int, free_bytes: int) -> int:
    """How many copies of a pass the rotation takes: their bytes over L2_RATIO x the L2 (cold), within
    half the free memory and MAX_COPIES; one for speed.l2=warm or a pass of unknown size (a model's
    step, whose working set dwarfs any L2)."""
    if l2 == "warm" or not nbytes:
        return 1
    by_l2 = math.ceil(L2_RATIO * l2_bytes / nbytes) + 1  # + 1: a call never meets its own bytes in L2
    by_memory = max(1, free_bytes // 2 // nbytes)
    return max(1, min(by_l2, by_memory, MAX_COPIES))


# ------------------------------------------------------------------------------------- the clocks


@dataclass
class Replay:
    """A captured graph's replay, holding the copies whose buffers the graph reads and writes: freed
    while the graph lives, their memory could go to other tensors, which each replay would then
    read (and the captured backward's inputs with it)."""

    launch: Callable[[], None]
    copies: list

    def __call__(self) -> None:
        self.launch()


def _reason(exc: BaseException) -> str:
    """One line for a skipped row, from the error its chain started with: a capture the body broke
    fails again when it is ended, and the row should say why it broke."""
    for _ in range(8):
        if exc.__context__ is None:
            break
        exc = exc.__context__
    return f"CUDA-graph capture failed: {type(exc).__name__}: {(str(exc).splitlines() or [''])[0]}"


def capture(make: Make, k: int, rounds: int, device, cuda: Cuda | None = None) -> Replay:
    """`rounds` x `k` calls, round-robin over copies 0..k-1 of a pass, captured in one CUDA graph; its
    replay. The copies are built on the capture's own stream, so a forward made ahead of time (`bwd`)
    records its autograd nodes there and the captured backward never waits on another stream, which
    capture forbids; each runs WARMUP times first. Every captured call sets its gradients to None
    first, so each replay writes fresh gradients, as the eager timing's grad_to_none does (an
    accumulating gradient would be read as well). Raises CaptureFailed, after dropping everything
    the broken capture allocated, when the capture fails: the process goes on to its next job."""
    cuda = cuda or CUDA
    copies = []

    def body():
        for _ in range(rounds):
            for fn, grads in copies:
                clear_grads(grads)
                fn()

    stream = cuda.stream(device)
    failure = None
    try:
        with cuda.side_stream(stream, device):
            copies += [make(i) for i in range(k)]
            for fn, grads in copies:
                for _ in range(WARMUP):
                    clear_grads(grads)
                    fn()
        replay = cuda.capture(body, stream)
    except Exception as exc:
        failure = _reason(exc)
    if failure is not None:  # raised out here, so no traceback of the capture keeps its copies alive
        for _, grads in copies:
            clear_grads(grads)
        copies.clear()
        fn = grads = None  # this frame goes with the exception's traceback: it keeps no copy alive
        cuda.recover(device)
        raise CaptureFailed(failure)
    cuda.synchronize(device)
    return Replay(replay, copies)


def graph_clock(make: Make, k: int, device, estimate_ms: float, cuda: Cuda | None = None) -> tuple[Timing, int]:
    """Per-call device time of a pass replayed from one graph of calls round-robin over k copies:
    (quantiles over REPLAYS replays, calls per replay)."""
    cuda = cuda or CUDA
    rounds = max(1, min(MAX_CALLS // k, math.ceil(REPLAY_MS / max(estimate_ms, 1e-3) / k)))
    calls = rounds * k
    replay = capture(make, k, rounds, device, cuda)
    times = []
    for _ in range(REPLAYS):
        start, end = cuda.event(), cuda.event()
        start.record()
        replay()
        end.record()
        cuda.synchronize(device)
        times.append(start.elapsed_time(end) / calls)
    return Timing(*quantiles(times), repeats=REPLAYS * calls, timer="cuda events around a CUDA-graph replay"), calls


def busy_time(events: Iterable[dict], categories: Sequence[str], name: Callable[[str], bool] | None = None):
    """(busy microseconds, events counted) of a chrome trace's complete events in `categories`:
    their [ts, ts + dur] intervals merged, so overlapping or nested events count once."""
    spans = sorted(
        (float(e["ts"]), float(e["ts"]) + float(e.get("dur", 0)))
        for e in events
        if e.get("ph") == "X" and e.get("cat") in categories and (name is None or name(e.get("name", "")))
    )
    busy, end = 0.0, -math.inf
    for s, e in spans:
        if s > end:
            busy += e - s
            end = e
        elif e > end:
            busy += e - end
            end = e
    return busy, len(spans)


def trace_events(prof) -> list[dict]:
    """The complete events of a finished torch.profiler run, from its exported (kineto) chrome trace."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "trace.json"
        prof.export_chrome_trace(str(path))
        trace = json.loads(path.read_text())
    return trace["traceEvents"] if isinstance(trace, dict) else trace


def chunk_times(events: list[dict], categories, chunks: int, calls: int) -> list[float]:
    """Per-call busy ms of each of `chunks` equal runs of consecutive device events (every call issues
    the same launches, so equal counts are equal numbers of calls); one chunk where they do not split."""
    device = sorted((e for e in events if e.get("ph") == "X" and e.get("cat") in categories), key=lambda e: e["ts"])
    if not device:
        return []
    if len(device) % chunks or calls % chunks:
        chunks = 1
    size = len(device) // chunks
    return [busy_time(device[i * size : (i + 1) * size], categories)[0] / 1e3 / (calls / chunks) for i in range(chunks)]


def kineto_clock(
    make: Make, k: int, device, estimate_ms: float, cuda: Cuda | None = None
) -> tuple[Timing | None, float]:
    """Per-call device busy time under torch.profiler, the calls eager and round-robin over k copies
    (quantiles over REPLAYS chunks of calls), and the device events (launches) per call."""
    cuda = cuda or CUDA
    wanted = min(MAX_CALLS, max(REPLAYS, math.ceil(REPLAYS * REPLAY_MS / max(estimate_ms, 1e-3))))
    rounds = REPLAYS * math.ceil(wanted / (k * REPLAYS))  # calls split into REPLAYS equal chunks
    calls = rounds * k
    copies = [make(i) for i in range(k)]
    for fn, grads in copies:
        clear_grads(grads)
        fn()
    cuda.synchronize(device)
    with torch.profiler.profile(activities=list(cuda.activities)) as prof:
        for _ in range(rounds):
            for fn, grads in copies:
                clear_grads(grads)
                fn()
        cuda.synchronize(device)
    del copies
    events = trace_events(prof)
    times = chunk_times(events, cuda.categories, REPLAYS, calls)
    launches = busy_time(events, cuda.categories)[1] / calls
    if not times:
        return None, launches
    return Timing(*quantiles(times), repeats=calls, timer="torch.profiler (kineto) kernel busy time"), launches


def host_clock(fn, grads, device, launches: float | None, cuda: Cuda | None = None) -> float:
    """Median host microseconds to issue one call, over bursts that never fill the launch queue."""
    cuda = cuda or CUDA
    calls = max(1, min(20, int(HOST_LAUNCHES // max(launches or 1, 1))))
    times = []
    for _ in range(7):
        cuda.synchronize(device)  # an empty queue: the burst never waits for the device
        start = time.perf_counter()
        for _ in range(calls):
            clear_grads(grads)
            fn()
        times.append((time.perf_counter() - start) / calls * 1e6)
    cuda.synchronize(device)
    return quantiles(times)[0]


def device_columns(
    make: Make,
    device: torch.device,
    wall: Timing,
    *,
    nbytes: int | None,
    clocks: Sequence[str],
    device_clock: str = "graph",
    l2: str = "cold",
    cuda: Cuda | None = None,
) -> dict:
    """The device and host columns of a row whose wall clock was `wall`. `make(i)` builds copy i of
    the pass, (fn, gradients to set to None before each call), over buffers of its own. Raises
    CaptureFailed when the graph clock cannot capture the pass."""
    if device.type != "cuda":
        # The CPU issues and runs the work itself: the device clock is the wall clock, no host apart.
        return {
            "device_ms": wall.median_ms,
            "device_p20_ms": wall.p20_ms,
            "device_p80_ms": wall.p80_ms,
            "device_clock": "wall",
            "bound": "device",
            "l2": l2,
        }
    cuda = cuda or CUDA
    k = copies_for(nbytes, l2, cuda.l2_bytes(device), cuda.free_bytes(device))
    out: dict = {"l2": l2, "l2_copies": k, "rotated_mib": nbytes * k / 2**20 if nbytes else None}
    taken: dict[str, Timing] = {}
    if "graph" in clocks:
        taken["graph"], out["graph_calls"] = graph_clock(make, k, device, wall.median_ms, cuda)
        out["device_graph_ms"] = taken["graph"].median_ms
    if "kineto" in clocks:
        kineto, out["launches"] = kineto_clock(make, k, device, wall.median_ms, cuda)
        if kineto is not None:
            taken["kineto"] = kineto
            out["device_kineto_ms"] = kineto.median_ms
    if len(taken) == 2:
        g, kt = taken["graph"].median_ms, taken["kineto"].median_ms
        out["device_clocks_differ"] = abs(g - kt) > DIFFER * min(g, kt)
    name = device_clock if device_clock in taken else next(iter(taken), "wall")
    chosen = taken.get(name, wall)
    out.update(device_ms=chosen.median_ms, device_p20_ms=chosen.p20_ms, device_p80_ms=chosen.p80_ms, device_clock=name)
    if "host" in clocks:
        fn, grads = make(0)
        out["host_us"] = host_clock(fn, grads, device, out.get("launches"), cuda)
        out["bound"] = bound(out["host_us"], chosen.median_ms)
    return out


def bound(host_us: float, device_ms: float) -> str:
    """`host` where issuing a call takes longer than the device's work on it, else `device`."""
    return "host" if host_us * 1e-3 > device_ms else "device"


@contextmanager
def preserved_buffers(module: torch.nn.Module):
    """Run the block, then put every buffer of `module` back as it was: a timed BatchNorm updates its
    running statistics on every call (and a graph replay N times), which must not leak into a result."""
    saved = {name: b.detach().clone() for name, b in module.named_buffers()}
    try:
        yield
    finally:
        with torch.no_grad():
            for name, b in module.named_buffers():
                if name in saved:
                    b.copy_(saved[name])
