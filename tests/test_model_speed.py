"""Speed on a real model (shape=model) and fair timing: the rows a model job writes, the norm layers
found and swapped, and that no timed callable runs normbench's module wrapper."""

from __future__ import annotations

import math

import pytest
import torch
from test_speed import TINY, configure, hydra_configs, run  # noqa: F401 - hydra_configs: fixture
from torch import nn

from normbench import norms
from normbench.bench import model_speed, speed, speed_job
from normbench.errors import UsageError

# resnet20 on 8x8 images: 19 norm layers over three inputs (16x8x8, 32x4x4, 64x2x2), a step of ~20 ms.
MODEL = ["shape=model", "shape.input=[3,8,8]"]


@pytest.fixture
def checks(monkeypatch):
    """Counts calls of the wrapper's input check (every norm's, BatchNorm's own included)."""
    calls = {"n": 0}
    for cls in (norms.Norm, norms.BatchNorm):
        original = cls.check_input

        def counted(self, x, _original=original):
            calls["n"] += 1
            return _original(self, x)

        monkeypatch.setattr(cls, "check_input", counted)
    return calls


@pytest.fixture
def timed_checks(monkeypatch, checks):
    """The check calls made inside each timed callable (one entry per speed.time_fn call)."""
    inside = []
    real = speed.time_fn

    def recording(fn, device, **options):
        before = checks["n"]
        result = real(fn, device, **options)
        inside.append(checks["n"] - before)
        return result

    monkeypatch.setattr(speed, "time_fn", recording)
    return inside


def test_native_rows_time_the_implementation_not_the_wrapper(hydra_configs, tmp_path, checks, timed_checks):  # noqa: F811
    rows = run(["norm=bn", "impl=native"], tmp_path)
    assert len(timed_checks) == 3 and timed_checks == [0, 0, 0]  # fwd, bwd, fwdbwd: never the check
    assert checks["n"] > 0  # the patch is live: the first call (and the wrapper's own timing) checked
    wrapper = [r for r in rows if r["pass"] == "wrapper"]
    assert len(wrapper) == 1 and "host clock" in wrapper[0]["timer"]
    assert 0 < wrapper[0]["wall_ms"] < min(r["wall_ms"] for r in rows if r["pass"] == "fwdbwd")


def test_the_wrapper_timing_runs_the_checks_and_computes_nothing(checks):
    layer = norms.build("bn", 8, impl="native").train()
    x = torch.randn(4, 8, 3, 3)
    before = layer.num_batches_tracked.item()
    t = speed.wrapper_overhead(layer, x, min_run_time=0.01, min_repeats=3)
    assert t.median_ms > 0 and checks["n"] >= t.repeats  # each timed call ran the checks
    assert layer.num_batches_tracked.item() == before  # timed on a copy: the layer's state is untouched
    assert speed.wrapper_overhead(norms.build("none", 8), x) is None


def test_model_job_writes_layer_rows_and_a_step_row(hydra_configs, tmp_path, timed_checks):  # noqa: F811
    rows = run([*MODEL, "norm=gn", "impl=native"], tmp_path)
    layer_rows = [r for r in rows if r["pass"] in speed.PASSES]
    assert {r["shape"] for r in layer_rows} == {"2x16x8x8", "2x32x4x4", "2x64x2x2"}
    per_shape = {r["shape"]: r["layers"] for r in layer_rows}
    assert sorted(per_shape.values()) == [6, 6, 7] and sum(per_shape.values()) == 19  # stem + 9 blocks x 2
    names = " ".join(r["layer_names"] for r in layer_rows if r["pass"] == "fwd").split()
    assert len(names) == len(set(names)) == 19 and "stem.1" in names
    assert all(r["model"] == "resnet20" and r["groups"] == 8 for r in rows)  # the model's gn options
    (step,) = [r for r in rows if r["pass"] == "step"]
    assert step["shape"] == "2x3x8x8" and step["layers"] == 19 and step["device_ms"] > 0
    fwdbwd = sum(r["device_ms"] * r["layers"] for r in layer_rows if r["pass"] == "fwdbwd")
    assert step["norm_ms"] == pytest.approx(fwdbwd)
    assert step["norm_share"] == pytest.approx(100 * fwdbwd / step["device_ms"])
    assert math.isnan(step.get("gbps", math.nan))  # a step is not one memory-bound pass
    assert len([r for r in rows if r["pass"] == "wrapper"]) == 1
    assert timed_checks == [0] * len(timed_checks) and len(timed_checks) == 9 + 1  # the step too


def test_the_same_weights_and_input_for_every_norm(hydra_configs, tmp_path):  # noqa: F811
    cfg = configure([*TINY, *MODEL, "norm=bn"], tmp_path)
    cfg_gn = configure([*TINY, *MODEL, "norm=gn"], tmp_path)
    built = []
    for c in (cfg, cfg_gn):
        torch.manual_seed(c.seed)
        job = speed_job.spec(c)
        model, _ = model_speed.build_model(job, torch.float32, torch.device("cpu"))
        built.append((model, model_speed.model_input(job, torch.float32, torch.device("cpu"))))
    (a, xa), (b, xb) = built
    torch.testing.assert_close(xa, xb)
    torch.testing.assert_close(a.stem[0].weight, b.stem[0].weight)
    assert isinstance(a.stem[1], norms.BatchNorm) and isinstance(b.stem[1], norms.GroupNorm)


def test_torch_nn_norms_are_found_swapped_and_captured():
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1),
        nn.GroupNorm(2, 8),
        nn.Conv2d(8, 4, 1),
        nn.InstanceNorm2d(4),
        nn.Flatten(),
        nn.LayerNorm(4 * 5 * 5),  # over the last dimension: not a norm over C, left alone
    )
    names = model_speed.swap_norms(model, lambda c: norms.build("gn", c, groups=2))
    assert names == ["1", "4", "6"]
    assert all(isinstance(model[int(n)], norms.GroupNorm) for n in names)
    assert [model[int(n)].num_features for n in names] == [8, 8, 4]
    x = torch.randn(2, 3, 5, 5).contiguous(memory_format=torch.channels_last)
    seen = model_speed.capture_inputs(model, x, names)
    shapes = {(i.shape, i.layout): layers for i, layers in seen.items()}
    assert shapes[((2, 8, 5, 5), "channels_last")] == ["1", "4"]  # conv keeps the channels_last input's layout
    assert list(seen.values())[-1] == ["6"] and sum(len(v) for v in seen.values()) == 3


def test_norm_share_takes_fwdbwd_else_fwd_plus_bwd():
    rows = [
        {"pass": "fwd", "shape": "a", "device_ms": 1.0, "layers": 2},
        {"pass": "bwd", "shape": "a", "device_ms": 2.0, "layers": 2},
        {"pass": "fwd", "shape": "b", "device_ms": 0.5, "layers": 4},
        {"pass": "bwd", "shape": "b", "device_ms": 1.0, "layers": 4},
        {"pass": "wrapper", "shape": "a", "device_ms": 9.0, "layers": 2},
    ]
    assert model_speed.norm_ms(rows) == 2 * 3.0 + 4 * 1.5
    rows += [{"pass": "fwdbwd", "shape": s, "device_ms": 10.0, "layers": n} for s, n in (("a", 2), ("b", 4))]
    assert model_speed.norm_ms(rows) == 60.0
    assert model_speed.norm_ms(rows[:1]) is None  # fwd alone does not make a step's share


@pytest.mark.parametrize(
    "overrides, fix",
    [
        (["shape.model._target_=no_such_package.resnet"], "could not be built.*shape.model._target_="),
        (["shape.model._target_=torch.nn.Identity"], "no norm layer"),
        (["shape.input=[3,0,8]"], "shape.input"),
        (["norm=gn", "norm.groups=32"], "divisors of 16"),
        (["shape.model._target_=normbench.models.resnet20", "+shape.model.depth=3"], "model resnet20: .*depth"),
    ],
)
def test_bad_model_input_is_one_line(hydra_configs, tmp_path, overrides, fix):  # noqa: F811
    with pytest.raises(UsageError, match=fix) as err:
        run([*MODEL, "pass=fwd", *overrides], tmp_path)
    assert "\n" not in str(err.value)


def test_torchvision_model(hydra_configs, tmp_path):  # noqa: F811
    try:
        import torchvision  # noqa: F401
    except Exception as exc:
        pytest.skip(f"torchvision cannot be imported: {type(exc).__name__}")
    rows = run(
        [
            "shape=model",
            "shape.model._target_=torchvision.models.resnet18",
            "shape.input=[3,16,16]",
            "norm=bn",
            "impl=native",
            "pass=fwdbwd",
        ],
        tmp_path,
    )
    (step,) = [r for r in rows if r["pass"] == "step"]
    assert step["model"] == "resnet18" and step["layers"] == 20  # 1 stem + 8 blocks x 2 + 3 downsample
    assert sum(r["layers"] for r in rows if r["pass"] == "fwdbwd") == 20
    assert 0 < step["norm_share"] < 100


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_model_step_as_a_cuda_graph(hydra_configs, tmp_path):  # noqa: F811
    rows = run([*MODEL, "device=cuda", "speed.cuda_graph=true", "norm=bn", "impl=native"], tmp_path)
    (step,) = [r for r in rows if r["pass"] == "step"]
    assert step["cuda_graph"] and step["wall_ms"] > 0 and "graph" in step["timer"]
    assert step["peak_mem_mib"] > 0 and 0 < step["norm_share"]
