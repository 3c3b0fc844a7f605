"""The fast training loop (normbench.train.fastpath): the same samples, trajectory and PreciseBN statistics
as the standard loop; augmentation against a plain-torch crop and flip; precision, compile and the
optimizer options; every bad input one clear line."""

from __future__ import annotations

import copy
import math

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_module

from normbench import data as datasets
from normbench import models, norms, specs
from normbench.app import plan
from normbench.errors import Unsupported, UsageError
from normbench.train import accuracy, fastpath, optim
from normbench.train.evaluation import precise_bn

RUN = [
    "dataset=synthetic",
    "device=cpu",
    "accuracy.batch_size=4",
    "accuracy.global_batch=16",
    "accuracy.epochs=4",
    "accuracy.progress=false",
    "accuracy.precise_bn_samples=16",
]
# One step per epoch (16 samples, 16 per step), so the per-epoch curve is the per-step trajectory.
IMAGES = [
    *RUN,
    "dataset.shape=[3,8,8]",
    "dataset.pixels=true",
    "dataset.train_size=16",
    "dataset.test_size=32",
    "model=resnet20",
    "+model.widths=[8,8,8]",
    "+model.blocks_per_stage=1",
]


def config(*overrides: str, base=IMAGES):
    with initialize_config_module("normbench.conf", version_base="1.3"):
        return compose(config_name="accuracy", overrides=base + list(overrides))


def train(tmp_path, *overrides: str) -> tuple[dict, pd.DataFrame]:
    [row] = accuracy.run(config(*overrides), tmp_path)
    return row, pd.read_csv(tmp_path / accuracy.CURVE_FILE)


def pixel_data(augment: bool, n: int = 24) -> datasets.Dataset:
    return datasets.synthetic(shape=(3, 8, 8), train_size=n, test_size=4, pixels=True, augment=augment)


@pytest.mark.parametrize("norm", ["bn", "gn"])
def test_fast_loop_follows_the_standard_loop_step_for_step(tmp_path, norm):
    standard, standard_curve = train(tmp_path / "a", f"norm={norm}")
    fast, fast_curve = train(tmp_path / "b", f"norm={norm}", "accuracy.fast_path=true")
    assert standard["train_loop"] == "standard" and fast["train_loop"] == "fast fp32 channels_last"
    # fp32 both, only the layout differs: convolutions sum in another order, so rounding, not drift.
    losses = torch.tensor(fast_curve["train_loss"].values), torch.tensor(standard_curve["train_loss"].values)
    torch.testing.assert_close(*losses, rtol=1e-4, atol=1e-5)
    assert fast_curve["train_loss"].iloc[-1] < fast_curve["train_loss"].iloc[0]  # it trains
    for key in ("test_acc", "test_acc_precise_bn", "test_acc_batch_stats", "train_acc"):
        assert fast[key] == standard[key] or (math.isnan(fast[key]) and math.isnan(standard[key])), key
    assert fast["samples_per_s"] > 0


def test_fast_batches_hold_the_standard_loops_samples_per_worker():
    for data in (pixel_data(False), datasets.synthetic(train_size=24)):  # uint8 images, and float (1-D) data
        fast = fastpath.DeviceBatches(data, channels_last=False).epoch(8, torch.Generator().manual_seed(3))
        standard = datasets.train_batches(data, 8, torch.Generator().manual_seed(3))
        pairs = list(zip(fast, standard, strict=True))
        assert len(pairs) == 3
        for (xf, yf), (xs, ys) in pairs:
            assert torch.equal(yf, ys)
            for chunk_f, chunk_s in zip(xf.split(4), xs.split(4)):  # K = 4: each worker's samples
                assert torch.equal(chunk_f, chunk_s)  # uint8 standardized per batch: the same values


def test_augmentation_is_a_plain_torch_padded_crop_and_flip_drawn_per_seed():
    data = pixel_data(True)
    batches = fastpath.DeviceBatches(data, channels_last=True)
    [(x, _)] = list(batches.epoch(24, torch.Generator().manual_seed(5)))
    assert x.is_contiguous(memory_format=torch.channels_last)
    # The draws, repeated on the same generator: the permutation, then offsets and flips.
    g = torch.Generator().manual_seed(5)
    order = torch.randperm(24, generator=g)
    offsets = torch.randint(0, 9, (2, 24), generator=g)
    flips = torch.rand(24, generator=g) < 0.5
    for i in range(24):
        padded = F.pad(data.x_train[order[i]], (4, 4, 4, 4))  # zeros after standardization
        r, c = offsets[:, i].tolist()
        crop = padded[:, r : r + 8, c : c + 8]
        assert torch.equal(x[i], crop.flip(-1) if flips[i] else crop), i
    assert 0 < flips.sum() < 24 and (offsets != 4).any()  # both kinds of flip, and real shifts
    again = next(batches.epoch(24, torch.Generator().manual_seed(5)))[0]
    other = next(batches.epoch(24, torch.Generator().manual_seed(6)))[0]
    assert torch.equal(x, again) and not torch.equal(x, other)


def tiny_bn_resnet(k: int) -> torch.nn.Module:
    torch.manual_seed(0)
    return models.build(
        "resnet20",
        input_shape=(3, 8, 8),
        num_classes=4,
        norm=lambda c: norms.build("bn", c, virtual_batch=k),
        widths=[8, 8, 8],
        blocks_per_stage=1,
    )


def test_precise_bn_statistics_are_the_same_for_the_fast_loops_model():
    data = pixel_data(False)
    model = tiny_bn_resnet(4)
    fast_model = copy.deepcopy(model)
    fastpath.prepare(fast_model, specs.FastPath(True, "bf16", True, False), 4)  # layout + float32 hooks
    plain = precise_bn(model, data.x_train.split(8), 4)
    fast = precise_bn(fast_model, [x.contiguous(memory_format=torch.channels_last) for x in data.x_train.split(8)], 4)
    pairs = [(a, b) for a, b in zip(plain.modules(), fast.modules()) if isinstance(a, norms.BatchNorm)]
    assert len(pairs) == 7
    for a, b in pairs:
        torch.testing.assert_close(b.running_mean, a.running_mean, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(b.running_var, a.running_var, rtol=1e-5, atol=1e-6)


def test_bf16_runs_convolutions_in_bf16_and_every_norm_in_float32():
    model = tiny_bn_resnet(4)
    forward, hooks = fastpath.prepare(model, specs.FastPath(True, "bf16", True, False), 4)
    seen = {}

    def record(module, args, out):
        seen[module] = (args[0].dtype, out.dtype)  # args: as the pre-hooks left them

    for m in model.modules():
        if isinstance(m, norms.BatchNorm | torch.nn.Conv2d):
            m.register_forward_hook(record)
    with fastpath.autocast(specs.FastPath(True, "bf16"), torch.device("cpu")):
        forward(torch.randn(8, 3, 8, 8).contiguous(memory_format=torch.channels_last))
    norm_dtypes = {v for m, v in seen.items() if isinstance(m, norms.BatchNorm)}
    conv_out = {v[1] for m, v in seen.items() if isinstance(m, torch.nn.Conv2d)}
    assert len(hooks) == 7 and norm_dtypes == {(torch.float32, torch.float32)} and conv_out == {torch.bfloat16}


@pytest.mark.skipif(not torch.ops.mkldnn._is_mkldnn_bf16_supported(), reason="this CPU has no bfloat16")
def test_a_bf16_fast_run_trains_and_says_so(tmp_path):
    row, curve = train(tmp_path, "accuracy.fast_path=true", "accuracy.precision=bf16", "dataset.augment=true")
    assert row["train_loop"] == "fast bf16 channels_last" and curve["train_loss"].iloc[-1] < curve["train_loss"].iloc[0]


def test_bf16_where_the_cpu_has_none_is_a_skip_with_the_reason(tmp_path, monkeypatch):
    # No CPU here lacks bfloat16 in oneDNN's eyes: the check is made to say so.
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: False)
    with pytest.raises(Unsupported, match="precision=bf16: this CPU has no bfloat16"):
        train(tmp_path, "accuracy.fast_path=true", "accuracy.precision=bf16")


def test_compile_traces_the_same_training_and_a_compile_failure_is_a_skip(tmp_path, monkeypatch):
    one_d = [*RUN, "dataset.train_size=32", "accuracy.epochs=2", "accuracy.fast_path=true"]  # MNIST-1D-shaped
    monkeypatch.setattr(fastpath, "BACKEND", "eager")  # dynamo's real tracing, without inductor's slow codegen
    [eager] = accuracy.run(config(base=one_d), tmp_path / "a")
    [compiled] = accuracy.run(config("accuracy.compile=true", base=one_d), tmp_path / "b")
    assert compiled["train_loop"] == "fast fp32 compile"  # channels_last is for images only
    assert math.isclose(compiled["train_loss"], eager["train_loss"], rel_tol=1e-5)

    def broken(gm, example_inputs):
        raise RuntimeError("no code for this graph")

    monkeypatch.setattr(fastpath, "BACKEND", broken)
    torch._dynamo.reset()
    with pytest.raises(Unsupported, match=r"accuracy.compile=true: torch.compile failed \(BackendCompilerFailed"):
        accuracy.run(config("accuracy.compile=true", base=one_d), tmp_path / "c")


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["accuracy.compile=true"], "take effect in the fast loop only: add accuracy.fast_path=true"),
        (["dataset.shape=[1,40]", "model=cnn1d", "dataset.pixels=false", "dataset.augment=true"], "be augmented"),
        (["dataset.shape=[1,40]", "model=cnn1d"], "pixels=true makes images, which need shape"),
        (["accuracy.label_smoothing=1.5"], "label_smoothing must be a finite number in"),
        (["accuracy.nesterov=true", "accuracy.momentum=0"], "nesterov=true needs accuracy.momentum > 0"),
    ],
)
def test_bad_input_is_one_clear_line(tmp_path, overrides, message):
    # A choice outside accuracy.precision's or weight_decay_on's, or a flag that is not a bool, is the
    # schema's: tests/test_hostile_inputs.py, test_the_accuracy_schema_refuses_...
    with pytest.raises(UsageError, match=message) as info:
        train(tmp_path, *overrides)
    assert "\n" not in str(info.value)


def schedule(*overrides: str) -> specs.Schedule:
    return specs.train_job(config(*overrides)).schedule


def test_weight_decay_on_weights_spares_norm_parameters_and_biases():
    model = tiny_bn_resnet(4)
    decayed, spared = optim.param_groups(model, 5e-4, "weights")
    layers = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d | torch.nn.Linear)]
    assert {id(p) for p in decayed["params"]} == {id(m.weight) for m in layers}
    assert {id(p) for p in spared["params"]} == {id(p) for p in model.parameters()} - {id(m.weight) for m in layers}
    assert spared["weight_decay"] == 0.0 and decayed["weight_decay"] == 5e-4
    # One SGD step on zero gradients: only the decayed weights move. Nesterov's first step with
    # momentum 0.9 takes g + 0.9 g where g = wd x w.
    sgd = optim.sgd(model, schedule("accuracy.weight_decay_on=weights", "accuracy.nesterov=true"), lr=0.1)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    sgd.step()
    for n, p in model.named_parameters():
        expected = before[n] * (1 - 0.1 * 5e-4 * 1.9) if p.dim() > 1 else before[n]
        torch.testing.assert_close(p.detach(), expected, rtol=1e-6, atol=1e-9)


def test_sgd_is_torchs_multi_tensor_update_with_the_for_loops_values():
    """optim.sgd takes torch's foreach update; three steps of it equal the per-parameter loop's, bit for bit."""
    sched = schedule("accuracy.weight_decay_on=weights", "accuracy.nesterov=true", "accuracy.momentum=0.9")
    runs = []
    for make in (
        lambda m: optim.sgd(m, sched, lr=0.1),
        lambda m: torch.optim.SGD(
            optim.param_groups(m, sched.weight_decay, "weights"),
            lr=0.1,
            momentum=0.9,
            nesterov=True,
            foreach=False,
        ),
    ):
        model = tiny_bn_resnet(4)
        sgd = make(model)
        gen = torch.Generator().manual_seed(0)
        for _ in range(3):
            for p in model.parameters():
                p.grad = torch.randn(p.shape, generator=gen)
            sgd.step()
        runs.append([p.detach() for p in model.parameters()])
    assert optim.sgd(tiny_bn_resnet(4), sched, lr=0.1).defaults["foreach"] is True
    assert all(torch.equal(a, b) for a, b in zip(*runs))


def resnet20_training_flops_per_image() -> int:
    """He et al. 2016's ResNet-20 on 32x32, by hand: 2 FLOPs per multiply-add of each 3x3 conv and
    the classifier; a training step is the forward, the gradient of every conv's weight, and of
    every conv's input but the stem's (the images need none): 3 forwards less the stem's once."""
    conv = lambda cin, cout, hw: 2 * cin * cout * 9 * hw * hw  # noqa: E731
    stem = conv(3, 16, 32)
    body = 6 * conv(16, 16, 32) + conv(16, 32, 16) + 5 * conv(32, 32, 16) + conv(32, 64, 8) + 5 * conv(64, 64, 8)
    forward = stem + body + 2 * 64 * 10
    return 3 * forward - stem


def test_plan_counts_the_sweeps_trainings_steps_and_flops_without_a_gpu():
    lines = plan.plan(["+experiment=cifar10_resnet20_gpu", "norm=bn,gn", "accuracy.batch_size=2,4", "seed=0,1"])
    text = "\n".join(lines)
    assert "jobs 8, trainings 6" in text  # gn trains once per seed; bn once per K and seed
    rows = {tuple(line.split()[:2]): line.split() for line in lines if line.split()[:1] in (["bn"], ["gn"])}
    assert set(rows) == {("bn", "2"), ("bn", "4"), ("gn", "-")}
    for _norm, _k, trainings, steps, _ops, gflop, _s in rows.values():
        assert int(steps) == 5 * (50_000 // 128) and int(trainings) == 2
        assert float(gflop) == round(128 * resnet20_training_flops_per_image() / 1e9, 2)
    assert "6 trainings x 5 epochs of 50000 images: 1.5 M images" in text
    assert "budget 540 s: fits" in text and "ESTIMATE" in text and "He 2022" in text
    tight = "\n".join(
        plan.plan(["+experiment=cifar10_resnet20_gpu", "norm=bn", "accuracy.batch_size=2", "plan.budget_s=1"])
    )
    assert "jobs 5, trainings 5" in tight and "budget 1 s: DOES NOT FIT" in tight  # the command line wins


def test_the_gpu_experiment_is_the_issues_grid():
    with initialize_config_module("normbench.conf", version_base="1.3"):
        cfg = compose(config_name="accuracy", overrides=["+experiment=cifar10_resnet20_gpu"], return_hydra_config=True)
    params = cfg.hydra.sweeper.params
    assert sorted(params.norm.split(",")) == ["bn", "brn", "gn", "in", "ln"]
    assert sorted(map(int, params["accuracy.batch_size"].split(","))) == [2, 4, 8, 16, 32]
    assert len(params.seed.split(",")) == 5 and cfg.accuracy.global_batch == 128
    assert cfg.dataset.train_per_class is None and cfg.dataset.augment and cfg.accuracy.fast_path
    assert cfg.accuracy.nesterov and cfg.accuracy.weight_decay_on == "weights"
