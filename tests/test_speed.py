"""The speed job: a timer that measures something, the byte model against hand counts, the Hydra app
composed and swept through Hydra's compose API, and every bad input as a one-line UsageError."""

from __future__ import annotations

import json
import math
import re
import weakref
from pathlib import Path

import pandas as pd
import pytest
import torch
from hydra import compose, initialize_config_module
from hydra.core.hydra_config import HydraConfig
from hydra.errors import ConfigCompositionException
from hydra.types import RunMode
from omegaconf import open_dict

from normbench import norms, specs
from normbench.app.cli import run_job
from normbench.bench import clocks, speed, speed_job, timing
from normbench.errors import UsageError
from normbench.io import results
from normbench.io.results import FAILURE_FILE, ROWS_FILE

# A shape and timing budget small enough for CI: each pass is timed for ~10 ms.
TINY = [
    "device=cpu",
    "speed.batch_size=2",
    "speed.channels=32",
    "speed.spatial=[4,4]",
    "speed.min_run_time=0.01",
    "speed.min_repeats=3",
    "speed.peak_copy_mb=16",
    "speed.threads=1",
]
COLUMNS = [
    "kind",
    "norm",
    "impl",
    "pass",
    "batch_size",
    "shape",
    "dtype",
    "layout",
    "device",
    "device_name",
    "wall_ms",
    "wall_p20_ms",
    "wall_p80_ms",
    "device_ms",
    "device_p20_ms",
    "device_p80_ms",
    "device_clock",
    "bound",
    "l2",
    "bytes",
    "gbps",
    "peak_gbps",
    "pct_of_peak",
    "peak_mem_mib",
    "torch_version",
    "triton_version",
    "compile_s",
]


@pytest.fixture(scope="module")
def hydra_configs():
    with initialize_config_module("normbench.conf", version_base="1.3"):
        yield


def configure(overrides, out: Path, *, job: int | None = None):
    """The config a job gets, with the Hydra runtime fields a launcher would fill in."""
    cfg = compose(config_name="speed", overrides=list(overrides), return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(out / (str(job) if job is not None else "run"))
        cfg.hydra.sweep.dir = str(out)
        cfg.hydra.mode = RunMode.MULTIRUN if job is not None else RunMode.RUN
        cfg.hydra.job.num = job if job is not None else 0
    HydraConfig.instance().set_config(cfg)
    return cfg


def run(overrides, tmp_path: Path) -> list[dict]:
    cfg = configure([*TINY, *overrides], tmp_path)
    return speed_job.run(cfg, Path(cfg.hydra.runtime.output_dir))


# ------------------------------------------------------------------------------------------ harness


def test_timer_sees_an_eight_times_larger_workload():
    layer = norms.build("ln", 64, impl="native")
    small, large = torch.randn(2, 64, 32, 32), torch.randn(16, 64, 32, 32)
    t_small = timing.time_cpu(lambda: layer(small), min_run_time=0.1, min_repeats=5, threads=1)
    t_large = timing.time_cpu(lambda: layer(large), min_run_time=0.1, min_repeats=5, threads=1)
    for t in (t_small, t_large):
        assert 0 < t.p20_ms <= t.median_ms <= t.p80_ms
        assert t.repeats >= 5
    assert t_large.median_ms > 3 * t_small.median_ms, (t_small, t_large)


def test_copy_bandwidth_is_measured_once_per_sweep_directory(tmp_path):
    device = torch.device("cpu")
    first = timing.peak_bandwidth(device, "test-cpu", tmp_path, 8, min_repeats=3, min_run_time=0.01)
    assert first["peak_gbps"] > 0 and math.isfinite(first["peak_gbps"])
    (tmp_path / "other").mkdir()
    again = timing.peak_bandwidth(device, "test-cpu", tmp_path / "other", 8)
    assert again == first  # from this process's cache, and now written there too
    assert (tmp_path / "other" / timing.PEAK_FILE).exists()


# --------------------------------------------------------------------------------------- byte model


def test_bytes_hand_counted_layernorm_float32():
    layer = norms.build("ln", 8, impl="reference")
    x = torch.randn(4, 8, 2, 2)
    # E = 128 values x 4 B = 512; weight + bias = 2 x 8 x 4 = 64; mean + rstd per sample = 4 x 2 x 4 = 32
    assert speed.bytes_moved(layer, x, "fwd") == 2 * 512 + 64 + 32
    assert speed.bytes_moved(layer, x, "bwd") == 3 * 512 + 96 + 32  # read w; write dw, db
    assert speed.bytes_moved(layer, x, "fwdbwd") == 1120 + 1664


def test_bytes_hand_counted_batchnorm_bfloat16_training():
    layer = norms.build("bn", 8, impl="reference", dtype=torch.bfloat16).train()
    x = torch.randn(4, 8, 2, 2, dtype=torch.bfloat16)
    # E = 128 x 2 = 256; params 2 x 8 x 2 = 32; running mean + var read and written 2 x (2 x 8 x 2) = 64;
    # one statistic per channel: 8 x 2 x 4 = 64
    assert speed.bytes_moved(layer, x, "fwd") == 512 + 32 + 64 + 64
    assert speed.bytes_moved(layer, x, "bwd") == 768 + 48 + 64
    layer.eval()  # eval: the running statistics are read instead of computed, not updated
    assert speed.byte_terms(layer, x)["running"] == 0


def test_bytes_hand_counted_groupnorm_float16_no_affine():
    layer = norms.build("gn", 8, impl="reference", groups=4, affine=False)
    x = torch.randn(2, 8, 3, dtype=torch.float16)
    # E = 48 x 2 = 96; no parameters; 2 samples x 4 groups = 8 statistics x 2 x 4 B = 64
    assert speed.bytes_moved(layer, x, "fwd") == 192 + 64
    assert speed.bytes_moved(layer, x, "bwd") == 288 + 64


def test_bytes_approach_tritonbench_convention_for_large_rows():
    layer = norms.build("ln", 4096, impl="native")
    x = torch.randn(256, 4096)
    e = x.numel() * x.element_size()
    for pass_, factor in (("fwd", 2), ("bwd", 3), ("fwdbwd", 5)):
        assert factor * e <= speed.bytes_moved(layer, x, pass_) <= factor * e * 1.01


# ------------------------------------------------------------------------------------ the Hydra app


def test_tiny_sweep_writes_the_rows(hydra_configs, tmp_path):
    """Four jobs and a broken one, run one after another as Hydra's basic launcher does."""
    jobs = [[f"norm={n}", f"impl={i}"] for n in ("bn", "gn") for i in ("reference", "native")]
    jobs.append(["norm=gn", "norm.groups=3"])  # 32 channels into 3 groups: this job fails alone
    for num, overrides in enumerate(jobs):
        run_job(speed_job.run, configure([*TINY, *overrides], tmp_path, job=num))
    failure = (tmp_path / "4" / FAILURE_FILE).read_text()
    assert "groups" in failure and "divisors of 32" in failure
    rows = pd.concat(pd.read_csv(tmp_path / str(num) / ROWS_FILE) for num in range(4))
    wrapper = rows[rows["pass"] == "wrapper"]  # the module's own cost, once per native job
    assert sorted(wrapper.norm) == ["bn", "gn"] and (wrapper.impl == "native").all()
    assert (wrapper.wall_ms > 0).all() and wrapper.gbps.isna().all()
    rows = rows[rows["pass"] != "wrapper"]
    assert len(rows) == 4 * 3
    assert set(COLUMNS) <= set(rows.columns)
    assert set(zip(rows.norm, rows.impl)) == {(n, i) for n in ("bn", "gn") for i in ("reference", "native")}
    assert sorted(rows["pass"].unique()) == ["bwd", "fwd", "fwdbwd"]
    for col in ("wall_ms", "wall_p20_ms", "wall_p80_ms", "gbps", "pct_of_peak", "peak_gbps", "bytes"):
        assert (rows[col] > 0).all() and rows[col].map(math.isfinite).all(), col
    # On the CPU the device clock is the wall clock, and the bandwidth comes from it.
    assert (rows.device_ms == rows.wall_ms).all() and (rows.device_clock == "wall").all()
    assert (rows.bound == "device").all() and (rows.l2 == "cold").all()
    assert "host_us" not in rows and "launches" not in rows  # no host apart from the device on a CPU
    assert ((rows.gbps - rows.bytes / (rows.device_ms * 1e-3) / 1e9).abs() < 1e-9 * rows.gbps).all()
    assert (rows["shape"] == "2x32x4x4").all() and (rows.kind == "speed").all()
    assert rows.loc[rows.norm == "gn", "groups"].eq(32).all()  # the norm's options travel with the rows
    assert rows.peak_gbps.nunique() == 1  # measured once for the sweep
    assert (tmp_path / timing.PEAK_FILE).exists()
    assert rows.torch_version.eq(torch.__version__).all()


def test_compiled_job_records_compile_time_outside_the_timings(hydra_configs, tmp_path):
    rows = run(["norm=ln", "impl=compiled", "pass=[fwd,bwd]"], tmp_path)
    assert [r["pass"] for r in rows] == ["fwd", "bwd"]
    assert all(r["compile_s"] > 0 for r in rows)
    assert all(r["wall_ms"] < 1e3 * r["compile_s"] for r in rows)
    assert run(["norm=ln", "impl=native", "pass=fwd"], tmp_path)[0]["compile_s"] is None


def test_a_compile_inside_a_timing_fails_the_job(hydra_configs, tmp_path, monkeypatch):
    counts = iter(range(100))
    monkeypatch.setattr(speed, "_dynamo_compiles", lambda: next(counts))  # as if each call compiled
    with pytest.raises(RuntimeError, match="includes compilation"):
        run(["norm=ln", "impl=native", "pass=fwd"], tmp_path)


def test_default_sweep_and_gpu_shapes_compose(hydra_configs, tmp_path):
    cfg = configure([], tmp_path)
    params = cfg.hydra.sweeper.params
    assert params.norm == "bn,ln,in,gn" and params.impl == "reference,native,compiled"
    assert len(params["speed.batch_size"].split(",")) >= 3
    gpu = configure(["sweep=gpu"], tmp_path)
    assert gpu.device == "cuda" and "speed.batch_size" not in gpu.hydra.sweeper.params
    sd = configure(["shape=sd_gn", "norm=gn"], tmp_path)
    sd_shape = (sd.speed.batch_size, sd.speed.channels, *sd.speed.spatial)
    assert sd_shape == (16, 512, 64, 64) and sd.norm.groups == 32
    rows = configure(["sweep=gpu_rows"], tmp_path)
    assert (rows.speed.batch_size, list(rows.speed.spatial)) == (4096, [])


# -------------------------------------------------------------------------------------- bad input


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_asked_for_but_absent(hydra_configs, tmp_path):
    with pytest.raises(UsageError, match="device=cpu"):
        run(["device=cuda"], tmp_path)


@pytest.mark.parametrize(
    "overrides, fix",
    [
        (["pass=sideways"], "pass=fwd"),
        (["pass=[fwd,back]"], "pass=fwd"),
        (["layout=channels_last", "speed.spatial=[]"], "layout=contiguous"),
        (["norm=gn", "norm.groups=3"], "divisors of 32"),
        (["norm=in", "speed.spatial=[]"], "use ln"),
        (["impl=fastest"], "choose one of"),
        (["speed.batch_size=0"], "speed.batch_size must be > 0"),
        (["impl=triton"], "device=cuda"),
        (["speed.cuda_graph=true"], "device=cuda"),
        (["speed.clocks=[wall,sundial]"], "unknown clock 'sundial'.*wall, graph, kineto, host"),
        (["speed.clocks=[kineto]"], "has no wall clock"),
    ],
)
def test_bad_input_is_one_line_naming_the_fix(hydra_configs, tmp_path, overrides, fix):
    if {"impl=triton", "speed.cuda_graph=true"} & set(overrides) and torch.cuda.is_available():
        pytest.skip("this runs here")
    with pytest.raises(UsageError, match=fix) as err:
        run(overrides, tmp_path)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    "override, says",
    [
        ("dtype=float8", r"dtype=float8: Invalid value 'float8', expected one of \[float32, float16, bfloat16\]"),
        ("layout=diagonal", r"expected one of \[contiguous, channels_last\] \(key layout\)"),
        ("speed.cuda_graph=sometimes", r"'sometimes' is not a valid bool.* \(key speed.cuda_graph\)"),
        ("speed.l2=lukewarm", r"expected one of \[cold, warm\] \(key speed.l2\)"),
        ("speed.device_clock=sundial", r"expected one of \[graph, kineto\] \(key speed.device_clock\)"),
        ("speed.batch_size=eight", r"could not be converted to Integer \(key speed.batch_size\)"),
        ("speed.bogus=1", r"Key 'bogus' not in 'SpeedSettings' \(key speed.bogus\)"),
    ],
)
def test_the_schema_refuses_a_bad_key_or_value_in_one_line_naming_it(hydra_configs, tmp_path, override, says):
    with pytest.raises(ConfigCompositionException) as err:
        configure([*TINY, override], tmp_path)
    line = specs.one_line(err.value)
    assert re.search(says, line) and "\n" not in line, line


def _float32_only(query: norms.Query) -> str | None:
    if query.dtype in (None, torch.float32):
        return None
    return f"impl=float32_only takes float32 input, got {query.dtype}: use impl=native for it"


@pytest.fixture
def float32_only_impl():
    """An implementation that, like many fused kernels, takes float32 only, and says so in its check."""

    @norms.register("ln", "float32_only", supports=_float32_only)
    def float32_only(layer, x):
        return norms.LayerNorm.implementations["native"](layer, x)

    yield
    del norms.LayerNorm.implementations["float32_only"], norms.registry.CHECKS["ln", "float32_only"]


def test_a_dtype_an_impl_cannot_take_is_skipped_with_its_reason(hydra_configs, tmp_path, float32_only_impl):
    assert norms.supports("ln", "float32_only", dtype=torch.bfloat16).startswith("impl=float32_only takes float32")
    for num, dtype in enumerate(("bfloat16", "float32")):
        run_job(
            speed_job.run,
            configure([*TINY, "norm=ln", "impl=float32_only", "pass=fwd", f"dtype={dtype}"], tmp_path, job=num),
        )
    frame = results.read_sweep(tmp_path)
    assert sorted(frame.status.unique()) == ["ok", "skipped"]
    skipped = frame[frame.status == "skipped"]
    assert len(skipped) == 1 and skipped.overrides.str.contains("dtype=bfloat16").all()
    assert skipped.error.str.contains("takes float32 input, got torch.bfloat16").all()
    assert (frame[frame.status == "ok"].dtype == "float32").all()


@pytest.fixture
def buggy_impl():
    @norms.register("ln", "buggy")
    def buggy(layer, x):
        raise RuntimeError("index out of range in the kernel")  # a bug, not an unsupported input

    yield
    del norms.LayerNorm.implementations["buggy"]


def test_a_bug_in_an_impl_keeps_its_traceback(hydra_configs, tmp_path, buggy_impl):
    with pytest.raises(RuntimeError, match="index out of range") as err:
        run(["norm=ln", "impl=buggy", "pass=fwd"], tmp_path)
    assert not isinstance(err.value, UsageError)  # not turned into bad input: a single run shows the traceback
    assert any(entry.name == "buggy" for entry in err.traceback)
    run_job(speed_job.run, configure([*TINY, "norm=ln", "impl=buggy", "pass=fwd"], tmp_path, job=0))
    failure = json.loads((tmp_path / "0" / FAILURE_FILE).read_text())
    assert failure["status"] == "failed" and "index out of range" in failure["traceback"]


def test_single_run_prints_one_line_and_exits_2(hydra_configs, tmp_path, capsys):
    cfg = configure([*TINY, "pass=sideways"], tmp_path)
    with pytest.raises(SystemExit) as exit_:
        run_job(speed_job.run, cfg)
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: unknown pass 'sideways'") and "\n" not in err


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA GPU")
@pytest.mark.parametrize("pass_", ["fwdbwd", "bwd"])
def test_a_graph_replay_computes_what_the_call_does(pass_):
    """Both ways a pass holds a backward: with its forward (fwdbwd), and after a forward made ahead of
    time (bwd), whose autograd nodes must live on the capture stream."""
    device = torch.device("cuda")
    layer = norms.build("bn", 8, impl="native", device=device).train()
    x = torch.randn(4, 8, 5, 5, device=device, requires_grad=True)
    made = {}

    def make(i):
        made["fn"], made["grads"] = speed.pass_callable(layer, x, pass_)
        return made["fn"], made["grads"]

    replay = clocks.capture(make, 1, 1, device)
    replay()
    replay()  # a second replay rewrites the gradient; it does not add to the first
    torch.cuda.synchronize()
    graphed = x.grad.clone()
    x.grad = None
    made["fn"]()  # the same pass, called as usual
    torch.testing.assert_close(graphed, x.grad)


def test_the_capture_starts_after_the_eager_pass_is_freed(monkeypatch):
    """A leaf's AccumulateGrad node lives as long as some autograd graph holds it, on the stream it was
    made on. The eager `bwd` pass (timed for its memory first) holds one made on the default stream;
    were it alive at capture, the captured backward would make the default stream wait on the capture,
    which CUDA refuses: what failed every bwd capture of the H200 run
    (results/reference/h200-speed-rev3/run1/speed-graph). Checked on the CPU with the capture faked."""
    layer = norms.build("bn", 8, impl="native")
    x = torch.randn(4, 8, 5, 5, requires_grad=True)
    made = []

    def make(i):
        fn, grads = speed.pass_callable(layer, x, "bwd")
        made.append(weakref.ref(fn))
        return fn, grads

    def capture(make_pass, k, rounds, device):
        assert [ref() for ref in made] == [None], "the eager pass (and its autograd graph) is still alive"
        return make_pass(0)[0]

    monkeypatch.setattr(clocks, "capture", capture)
    timing = specs.PassTiming(0.01, 2, 1, 1, clocks.CLOCKS, "graph", "cold", cuda_graph=True)
    row = speed.time_pass(timing, make, torch.device("cpu"), "bwd")
    assert len(made) == 2 and row["cuda_graph"] and row["wall_ms"] > 0
