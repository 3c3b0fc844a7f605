"""The device and host clocks: the kineto parser on a real CPU trace, the rotation's size, and every
CUDA branch (graph capture and replay, a capture that fails, kineto, host, bound) reached on the CPU
with a fake in place of CUDA. The fake times nothing a test then asserts as a GPU measurement: the
tests check what was built, captured, cleared and restored, and how the columns follow each other."""

from __future__ import annotations

import math
import time
import weakref
from contextlib import contextmanager

import pandas as pd
import pytest
import torch
from omegaconf import OmegaConf
from omegaconf.errors import ValidationError

from normbench import norms, specs
from normbench.bench import clocks, speed, speed_job, timing
from normbench.errors import UsageError
from normbench.io import results, schema

CUDA = torch.device("cuda")  # only named: every primitive goes to the fake


class FakeEvent:
    def record(self):
        self.t = time.perf_counter()

    def elapsed_time(self, end) -> float:
        return (end.t - self.t) * 1e3


class FakeCuda(clocks.Cuda):
    """CUDA's primitives on the CPU: a capture runs the body once and its replay runs it again; the
    profiler sees CPU ops as the device's work. `fail` makes a capture raise from inside the body."""

    activities = (torch.profiler.ProfilerActivity.CPU,)
    categories = ("cpu_op",)

    def __init__(self, l2_bytes: int = 2**16):
        self.l2, self.capturing, self.captures, self.recovered = l2_bytes, False, 0, 0

    def l2_bytes(self, device):
        return self.l2

    def free_bytes(self, device):
        return 2**34

    def synchronize(self, device):
        pass

    def event(self):
        return FakeEvent()

    def stream(self, device):
        return None

    @contextmanager
    def side_stream(self, stream, device):
        yield

    def capture(self, body, stream):
        self.capturing = True
        try:
            body()
        except RuntimeError:
            # as torch.cuda.graph does when the body broke the capture: ending it fails too
            raise RuntimeError("CUDA error: operation failed due to a previous error during capture")  # noqa: B904
        finally:
            self.capturing = False
        self.captures += 1
        return body

    def recover(self, device):
        self.recovered += 1


@pytest.fixture
def fake(monkeypatch):
    cuda = FakeCuda()
    monkeypatch.setattr(clocks, "CUDA", cuda)
    monkeypatch.setattr(clocks, "REPLAY_MS", 0.5)  # a few calls per replay: the fake runs them on the CPU
    return cuda


def wall_of(fn, grads=()):
    return timing.time_cpu(fn, grad_to_none=grads, min_run_time=0.01, min_repeats=3)


# --------------------------------------------------------------------------------- the kineto parser


def test_busy_time_merges_overlapping_and_nested_events():
    events = [
        {"ph": "X", "cat": "kernel", "name": "a", "ts": 0.0, "dur": 10.0},
        {"ph": "X", "cat": "kernel", "name": "b", "ts": 5.0, "dur": 10.0},  # overlaps a: 0..15
        {"ph": "X", "cat": "kernel", "name": "c", "ts": 6.0, "dur": 2.0},  # inside both
        {"ph": "X", "cat": "gpu_memset", "name": "m", "ts": 20.0, "dur": 1.5},
        {"ph": "X", "cat": "cpu_op", "name": "aten::add", "ts": 0.0, "dur": 100.0},  # not device work
        {"ph": "i", "cat": "kernel", "name": "instant", "ts": 30.0},
    ]
    assert clocks.busy_time(events, clocks.KERNEL_EVENTS) == (15.0 + 1.5, 4)
    assert clocks.busy_time(events, ("kernel",), name=lambda n: n != "b") == (10.0, 2)


def test_busy_time_of_a_real_cpu_trace_matches_the_profilers_own_totals():
    """A real torch.profiler (kineto) trace of CPU ops, exported and parsed: aten::mm's busy time and
    count equal what the profiler itself aggregates (the calls do not overlap)."""
    torch.manual_seed(0)
    a = torch.randn(96, 96)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        for _ in range(6):
            (a @ a).relu_()
    events = clocks.trace_events(prof)
    busy, count = clocks.busy_time(events, ("cpu_op",), name=lambda n: n == "aten::mm")
    (mm,) = [e for e in prof.key_averages() if e.key == "aten::mm"]
    assert count == mm.count == 6
    assert busy == pytest.approx(mm.cpu_time_total, rel=1e-3)
    everything, _ = clocks.busy_time(events, ("cpu_op",))
    assert busy < everything  # relu_ and the rest add time that merging keeps


def test_chunks_split_the_calls_evenly():
    events = [{"ph": "X", "cat": "kernel", "ts": 10.0 * i, "dur": 1.0 + (i >= 4)} for i in range(8)]
    # 8 events of 4 calls (2 launches each) in 2 chunks of 2 calls: 4 us and 8 us busy, in ms per call
    assert clocks.chunk_times(events, ("kernel",), 2, 4) == [pytest.approx(2e-3), pytest.approx(4e-3)]
    assert clocks.chunk_times(events[:7], ("kernel",), 2, 4) == [pytest.approx(10e-3 / 4)]  # uneven: one chunk


# ------------------------------------------------------------------------------------- the rotation


def test_copies_exceed_three_l2_within_memory_and_the_cap():
    l2 = 50 * 2**20  # an H100's L2
    assert clocks.copies_for(64 * 2**20, "cold", l2, 2**36) == 4  # 3 x 50 / 64 -> 3, + 1
    assert clocks.copies_for(200 * 2**20, "cold", l2, 2**36) == 2
    k = clocks.copies_for(2**20, "cold", l2, 2**36)
    assert k * 2**20 > 3 * l2 and k == 151
    assert clocks.copies_for(2**10, "cold", l2, 2**36) == clocks.MAX_COPIES
    assert clocks.copies_for(64 * 2**20, "cold", l2, 128 * 2**20) == 1  # memory first
    assert clocks.copies_for(64 * 2**20, "warm", l2, 2**36) == 1
    assert clocks.copies_for(None, "cold", l2, 2**36) == 1  # a model's step


@pytest.mark.parametrize(
    "value, fix", [(["wall", "sundial"], "unknown clock 'sundial'"), (["graph"], "has no wall clock")]
)
def test_bad_clock_list_is_one_line_with_the_choices(value, fix):
    with pytest.raises(UsageError, match=fix) as err:
        clocks.parse_clocks(value)
    assert "\n" not in str(err.value)
    assert clocks.parse_clocks("all") == list(clocks.CLOCKS)


@pytest.mark.parametrize(
    "key, value, choices",
    [("l2", "lukewarm", r"\[cold, warm\]"), ("device_clock", "wall", r"\[graph, kineto\]")],
)
def test_the_schema_refuses_a_clock_choice_naming_the_key_and_the_choices(key, value, choices):
    with pytest.raises(ValidationError, match=f"Invalid value '{value}', expected one of {choices}") as err:
        OmegaConf.merge(OmegaConf.structured(specs.SpeedConfig), {"speed": {key: value}})
    assert f"full_key: speed.{key}" in str(err.value)


# ------------------------------------------------------------------------------ the CUDA branches


def _ln_pass(pass_: str, built: list):
    layer = norms.build("ln", 8, impl="native").train()
    x = torch.randn(4, 8, 4, 4, requires_grad=True)

    def make(i):
        fn, grads = speed._pass_copy(layer, x, pass_, i)
        built.append((i, weakref.ref(grads[0]) if grads else None))
        return fn, grads

    return layer, x, make


@pytest.mark.parametrize("pass_", ["fwd", "bwd", "fwdbwd"])
def test_cold_rotation_builds_copies_over_three_l2_and_captures_them_round_robin(fake, pass_):
    built = []
    layer, x, make = _ln_pass(pass_, built)
    nbytes = speed.bytes_moved(layer, x, pass_)
    fn, grads = make(0)
    cols = clocks.device_columns(make, CUDA, wall_of(fn, grads), nbytes=nbytes, clocks=clocks.CLOCKS)
    k = cols["l2_copies"]
    assert k == math.ceil(3 * fake.l2 / nbytes) + 1 and cols["rotated_mib"] * 2**20 > 3 * fake.l2
    # graph and kineto each build copies 0..k-1; host one more copy 0 (after the wall clock's)
    assert [i for i, _ in built[1:]] == [*range(k), *range(k), 0]
    assert fake.captures == 1 and cols["graph_calls"] % k == 0
    assert cols["device_clock"] == "graph" and cols["device_ms"] == cols["device_graph_ms"] > 0
    assert cols["device_p20_ms"] <= cols["device_ms"] <= cols["device_p80_ms"]
    assert cols["device_kineto_ms"] > 0 and cols["launches"] >= 1  # the CPU ops of a call, here
    differ = abs(cols["device_graph_ms"] - cols["device_kineto_ms"]) > 0.05 * min(
        cols["device_graph_ms"], cols["device_kineto_ms"]
    )
    assert cols["device_clocks_differ"] == differ
    assert cols["bound"] == ("host" if cols["host_us"] / 1e3 > cols["device_ms"] else "device")


def test_warm_l2_times_one_resident_copy_and_kineto_can_be_the_device_clock(fake):
    built = []
    _, _, make = _ln_pass("fwdbwd", built)
    fn, grads = make(0)
    cols = clocks.device_columns(
        make, CUDA, wall_of(fn, grads), nbytes=1000, clocks=["wall", "kineto"], device_clock="kineto", l2="warm"
    )
    assert cols["l2_copies"] == 1 and {i for i, _ in built} == {0}
    assert "device_graph_ms" not in cols and fake.captures == 0
    assert cols["device_clock"] == "kineto" and cols["device_ms"] == cols["device_kineto_ms"]
    assert "host_us" not in cols and "bound" not in cols  # host not asked for: bound unknown
    assert _job(l2="warm").timing.wall_options()["flush"] is False and _job().timing.wall_options()["flush"] is True


def test_every_captured_call_starts_from_no_gradient(fake):
    w = torch.ones(3, requires_grad=True)
    seen = []

    def make(i):
        def fn():
            seen.append(w.grad is None)
            (w * 2).sum().backward()

        return fn, [w]

    clocks.graph_clock(make, 2, CUDA, 1.0)
    assert len(seen) > clocks.WARMUP * 2 and all(seen)
    assert w.grad is not None and torch.equal(w.grad, torch.full((3,), 2.0))  # written, never accumulated


def test_a_replay_keeps_the_buffers_its_graph_uses_alive(fake):
    made = []

    def make(i):
        x = torch.randn(4, requires_grad=True)
        made.append(weakref.ref(x))
        return (lambda: (x * 2).sum().backward()), [x]

    replay = clocks.capture(make, 3, 2, CUDA)
    assert len(replay.copies) == 3 and all(ref() is not None for ref in made)
    replay()
    del replay
    assert all(ref() is None for ref in made)


@pytest.mark.parametrize("registered", [True, False])
def test_an_abandoned_capture_gives_back_its_stream_and_pool(monkeypatch, registered):
    """The real backend's cleanup, its torch calls stubbed (they need a GPU): the stream's capture is
    ended, the current stream restored, and the allocator's pool ended and released, unless
    capture_end got far enough to end it (then the graph releases it itself)."""
    calls = []

    class Graph:
        def capture_end(self):
            calls.append("capture_end")
            raise RuntimeError("operation failed due to a previous error during capture")

        def pool(self):
            return (0, 7)

    class Stream:
        device = torch.device("cuda", 0)

    @contextmanager
    def on(stream):
        calls.append("on capture stream")
        yield

    def end(index, pool):
        calls.append(("end", index, pool))
        if not registered:
            raise RuntimeError("endAllocatePool: not currently recording to mempool_id")

    monkeypatch.setattr(torch.cuda, "stream", on)
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: True)
    monkeypatch.setattr(torch.cuda, "set_stream", lambda s: calls.append(("set_stream", s)))
    monkeypatch.setattr(torch._C, "_cuda_endAllocateToPool", end, raising=False)
    monkeypatch.setattr(torch._C, "_cuda_releasePool", lambda i, p: calls.append(("release", i, p)), raising=False)
    clocks.Cuda._abandon(Graph(), Stream(), "the stream before")
    expected = ["on capture stream", "capture_end", ("set_stream", "the stream before"), ("end", 0, (0, 7))]
    assert calls == expected + ([("release", 0, (0, 7))] if registered else [])


@pytest.fixture
def capture_fails(fake):
    """An implementation that, like some kernels' host code, does what a capture cannot."""

    @norms.register("bn", "capture_fails")
    def capture_fails(layer, x):
        if fake.capturing:
            raise RuntimeError("operation not permitted when stream is capturing\nmore detail")
        return norms.BatchNorm.implementations["native"](layer, x)

    yield fake
    del norms.BatchNorm.implementations["capture_fails"]


def _job(impl="native", **speed_keys):
    """A bn speed job's spec with quick timing options."""
    sp = {"min_run_time": 0.01, "min_repeats": 3, "warmup_ms": 1, "rep_ms": 1, "clocks": "all", **speed_keys}
    cfg = OmegaConf.merge(OmegaConf.structured(specs.SpeedConfig), {"speed": sp, "impl": impl, "norm": {"name": "bn"}})
    return speed_job.spec(cfg)


def test_a_failed_capture_skips_its_row_and_the_next_capture_in_the_process_works(capture_fails, monkeypatch):
    # The job's tensors stay on the CPU, its clocks are told the device is CUDA (and reach the fake);
    # the wall clock, do_bench on a GPU, is the CPU timer's.
    real_time_pass = speed.time_pass
    monkeypatch.setattr(speed, "time_pass", lambda cfg, make, device, *a: real_time_pass(cfg, make, CUDA, *a))
    monkeypatch.setattr(speed, "time_fn", lambda fn, device, grad_to_none=(), **kw: wall_of(fn, grad_to_none))
    monkeypatch.setattr(speed, "peak_memory_mib", lambda *a: math.nan)
    peak = {"peak_gbps": 10.0, "peak_method": "given"}
    torch.manual_seed(0)
    bad = norms.build("bn", 8, impl="capture_fails").train()
    x = torch.randn(4, 8, 3, 3, requires_grad=True)
    speed.first_call(bad, x)
    before = {n: b.clone() for n, b in bad.named_buffers()}
    built = []
    real_copy = speed._pass_copy

    def tracked(layer, x, pass_, i):
        fn, grads = real_copy(layer, x, pass_, i)
        built.append(weakref.ref(fn))
        return fn, grads

    monkeypatch.setattr(speed, "_pass_copy", tracked)
    cfg = _job(impl="capture_fails")
    rows = speed.time_layer(cfg, bad, x, ["fwd", "fwdbwd"], peak, 0.0)
    assert [r["status"] for r in rows] == ["skipped", "skipped"]
    reason = "CUDA-graph capture failed: RuntimeError: operation not permitted when stream is capturing"
    assert rows[0]["error"] == reason  # its first line
    assert "device_ms" not in rows[0] and capture_fails.recovered == 2 and not capture_fails.capturing
    assert all(ref() is None for ref in built)  # nothing of the failed captures is kept alive
    assert x.grad is None and all(p.grad is None for p in bad.parameters())
    for name, b in bad.named_buffers():  # the wall clock's forwards updated them; restored
        assert torch.equal(b, before[name]), name
    good = norms.build("bn", 8, impl="native").train()
    cfg = _job()
    (row,) = speed.time_layer(cfg, good, x, ["fwdbwd"], peak, 0.0)
    assert "status" not in row and row["device_clock"] == "graph" and row["device_ms"] > 0
    assert row["gbps"] == pytest.approx(row["bytes"] / (row["device_ms"] * 1e-3) / 1e9)
    assert capture_fails.captures == 1


def test_a_skipped_row_is_read_as_skipped_beside_its_jobs_measurements(tmp_path):
    job = tmp_path / "0"
    job.mkdir()
    rows = [
        {"kind": "speed", "norm": "bn", "pass": "fwd", "wall_ms": 2.0, "device_ms": 1.5},
        {"kind": "speed", "norm": "bn", "pass": "bwd", "status": "skipped", "error": "CUDA-graph capture failed: x"},
    ]
    results.write_rows(job, rows)
    frame = results.read_sweep(tmp_path)
    assert frame["status"].tolist() == ["ok", "skipped"]
    assert pd.isna(frame["error"].iloc[0]) and frame["error"].iloc[1].startswith("CUDA-graph capture failed")


# ----------------------------------------------------------------------- running statistics, schema


def test_timing_a_batchnorm_leaves_its_running_statistics_as_they_were():
    """For real on the CPU: every timed forward updates them; the job puts them back."""
    torch.manual_seed(0)
    layer = norms.build("bn", 8, impl="native").train()
    x = (torch.randn(4, 8, 3, 3) * 3 + 1).requires_grad_()
    speed.first_call(layer, x)  # as the job does: the module's forward sets BatchNorm's update factor
    before = {n: b.clone() for n, b in layer.named_buffers()}
    with clocks.preserved_buffers(layer):
        layer.impl_fn(layer, x)
        assert not torch.equal(layer.running_mean, before["running_mean"])
    for n, b in layer.named_buffers():
        assert torch.equal(b, before[n]), n
    cfg = _job(clocks=["wall"])
    rows = speed.time_layer(cfg, layer, x, ["fwd", "fwdbwd"], {"peak_gbps": 10.0}, 0.0)
    assert all(r["device_ms"] == r["wall_ms"] > 0 for r in rows)
    for n, b in layer.named_buffers():
        assert torch.equal(b, before[n]), n


def test_ranked_times_come_from_the_device_clock_else_the_wall_clock():
    frame = pd.DataFrame(
        [
            {"pass": "fwd", "wall_ms": 2.0, "wall_p20_ms": 1.9, "wall_p80_ms": 2.2, "device_ms": 1.0},
            {"pass": "wrapper", "wall_ms": 0.01, "wall_p20_ms": 0.009, "wall_p80_ms": 0.012},
        ]
    )
    out = schema.with_clocks(frame.copy())
    assert out["median_ms"].tolist() == [1.0, 0.01] and out["p20_ms"].tolist() == [1.9, 0.009]
    old = schema.with_clocks(pd.DataFrame([{"median_ms": 3.0, "p20_ms": 2.5, "p80_ms": 3.5}]))
    assert old.loc[0, ["wall_ms", "wall_p20_ms", "wall_p80_ms", "median_ms"]].tolist() == [3.0, 2.5, 3.5, 3.0]


def test_the_report_ranks_by_the_device_clock_and_shows_wall_host_and_bound():
    from normbench.report import document as report

    base = {"kind": "speed", "status": "ok", "norm": "ln", "pass": "fwd", "batch_size": 8, "shape": "8x64"}
    frame = schema.concat(
        [
            pd.DataFrame(
                [
                    {**base, "impl": "native", "wall_ms": 0.05, "device_ms": 0.04, "host_us": 20.0},
                    {**base, "impl": "triton", "wall_ms": 0.10, "device_ms": 0.02, "host_us": 95.0},
                ]
            )
        ]
    )
    table = report.speed_table(report.speed_stats(frame)).set_index("impl")
    assert table.loc["triton", "median ms"] == "0.02" and table.loc["triton", "wall ms"] == "0.1"
    assert table.loc["triton", "speedup vs native"] == "2.00x"  # by the device clock, not 0.5x by the wall
    assert table["bound"].to_dict() == {"native": "device", "triton": "host"}
    assert table.loc["triton", "host us"] == "95"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_on_a_gpu_a_capture_that_syncs_fails_alone_and_the_clocks_agree_on_a_large_pass():
    device = torch.device("cuda")
    x = torch.randn(1 << 20, device=device)

    def syncs(i):
        return (lambda: float(x.sum())), []  # reads a value back: capture refuses it

    with pytest.raises(clocks.CaptureFailed, match="CUDA-graph capture failed"):
        clocks.capture(syncs, 1, 1, device)
    assert torch.cuda.current_stream(device) == torch.cuda.default_stream(device)
    layer = norms.build("ln", 256, impl="native", device=device).train()
    big = torch.randn(32, 256, 56, 56, device=device, requires_grad=True)
    speed.first_call(layer, big)

    def make(i):
        return speed._pass_copy(layer, big, "fwdbwd", i)

    fn, grads = make(0)
    wall = timing.time_fn(fn, device, grad_to_none=grads)
    del fn, grads
    nbytes = speed.bytes_moved(layer, big, "fwdbwd")
    cols = clocks.device_columns(make, device, wall, nbytes=nbytes, clocks=clocks.CLOCKS)
    assert cols["device_clock"] == "graph" and cols["launches"] >= 2
    assert cols["device_graph_ms"] == pytest.approx(cols["device_kineto_ms"], rel=0.1)
    assert cols["bound"] == "device" and cols["device_p80_ms"] <= 1.03 * cols["device_p20_ms"]
