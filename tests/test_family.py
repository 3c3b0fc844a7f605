"""The wider family (rms, ln2d, brn, frn, evonorm_b0, evonorm_s0) computes exactly its papers'
formulas: against independent float64 formulas, gradcheck, running statistics, eval mode, bad input,
the models' activation handling, and (when timm is installed) timm's modules."""

from __future__ import annotations

import math
import os

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from normbench import models, norms
from normbench.bench.speed import bytes_moved
from normbench.errors import UsageError
from tests import family64 as f64

FAMILY = ["rms", "ln2d", "brn", "frn", "evonorm_b0", "evonorm_s0"]
BATCH = {"brn", "evonorm_b0"}  # statistics over samples
SPATIAL = {"frn", "evonorm_b0"}  # need more than one position
BRN_ACTIVE = {"warmup_steps": 0, "rmax_steps": 0, "dmax_steps": 0, "rmax": 1.5, "dmax": 0.5}  # clips often


def impls(name):
    return [i for i in ("reference", "native") if i in norms.implementations(name)]


CASES = [(n, i) for n in FAMILY for i in impls(n)]


@st.composite
def problems(draw, name):
    rank = draw(st.integers(1 if name in SPATIAL else 0, 3))
    spatial = draw(st.lists(st.integers(1, 4), min_size=rank, max_size=rank))
    if name in SPATIAL and math.prod(spatial) < 2:
        spatial[0] = 2
    n, c = draw(st.integers(1, 4)), draw(st.integers(2, 8))
    options = {}
    if name == "evonorm_s0":
        options["groups"] = draw(st.sampled_from([g for g in range(1, c + 1) if c % g == 0]))
        if c // options["groups"] * math.prod(spatial) < 2:
            spatial = [2, *spatial[1:]] if spatial else [2]
    if name in BATCH:
        n = max(n, 2)
        options["virtual_batch"] = draw(st.sampled_from([k for k in range(2, n + 1) if n % k == 0]))
    if name == "brn":
        options.update(BRN_ACTIVE)
    return (n, c, *spatial), draw(st.integers(0, 2**31 - 1)), options


def randomized(name, c, impl="reference", seed=0, dtype=torch.float32, **options):
    """A layer with every parameter (and brn's running statistics) drawn away from its initial value."""
    g = torch.Generator().manual_seed(seed)
    layer = norms.build(name, c, impl=impl, dtype=dtype, **options)
    with torch.no_grad():
        for pname, p in layer.named_parameters():
            p.copy_(
                {
                    "weight": 1 + 0.5 * torch.randn(p.shape, generator=g),
                    "v": 1 + 0.5 * torch.randn(p.shape, generator=g),
                }.get(pname, 0.5 * torch.randn(p.shape, generator=g))
            )
        if name == "brn":
            layer.running_mean.copy_(torch.randn(c, generator=g))
            layer.running_var.copy_(0.5 + 2 * torch.rand(c, generator=g))
    return layer


def expected64(layer, x, training=True):
    """The float64 formula for `layer` (parameters and state as they are before the call)."""
    name, p = layer.name, dict(layer.named_parameters())
    w, b, eps = p.get("weight"), p.get("bias"), layer.eps
    if name == "rms":
        return f64.rms64(x, w, eps)
    if name == "ln2d":
        return f64.ln2d64(x, w, b, eps)
    if name == "frn":
        return f64.frn64(x, w, b, p["tau"], eps)
    if name == "evonorm_s0":
        return f64.evonorm_s0_64(x, w, b, p["v"], layer.groups(), eps)
    if name == "evonorm_b0":
        return f64.evonorm_b0_64(x, w, b, p["v"], eps, layer.virtual_batch, None if training else layer.running_var)
    if name == "brn":
        rmax, dmax = layer.clip_limits()
        mean, var = layer.running_mean.clone(), layer.running_var.clone()
        return f64.brn64(x, w, b, eps, mean, var, rmax, dmax, layer.virtual_batch)
    raise ValueError(name)


@pytest.mark.parametrize("name, impl", CASES)
@settings(max_examples=int(os.environ.get("NORMBENCH_EXAMPLES", "12")), deadline=None)
@given(data=st.data())
def test_forward_and_backward_match_float64(name, impl, data):
    shape, seed, options = data.draw(problems(name))
    layer = randomized(name, shape[1], impl, seed, **options)
    g = torch.Generator().manual_seed(seed)
    x = (0.2 + 2 * torch.rand((), generator=g)) * (torch.randn(shape, generator=g) + 0.5)
    x.requires_grad_()
    dy = torch.randn(shape, generator=g)
    x64 = x.detach().double().requires_grad_()
    params64 = {n: p.detach().double().requires_grad_() for n, p in layer.named_parameters()}
    twin = randomized(name, shape[1], "reference", seed, dtype=torch.float64, **options)
    with torch.no_grad():
        for n, p in twin.named_parameters():
            p.copy_(params64[n])
    if name == "brn":
        twin.num_batches_tracked.fill_(1)  # the step the layer's own forward counts
    y64 = expected64(twin, x64)

    y = layer(x)
    y.backward(dy)
    y64.backward(dy.double())
    torch.testing.assert_close(y.double(), y64, rtol=1e-4, atol=1e-4)
    scale = 1 + x64.grad.abs().max().item()
    torch.testing.assert_close(x.grad.double(), x64.grad, rtol=1e-3, atol=2e-4 * scale)
    twin_grads = {n: p.grad for n, p in twin.named_parameters()}
    for n, p in layer.named_parameters():
        if p.grad is not None or twin_grads[n] is not None:
            torch.testing.assert_close(
                p.grad.double(), twin_grads[n], rtol=1e-3, atol=1e-3 * (1 + twin_grads[n].abs().max().item())
            )


@pytest.mark.parametrize(
    "name, shape, options",
    [
        ("rms", (2, 4, 3), {}),
        ("ln2d", (2, 3, 2, 2), {}),
        ("frn", (2, 3, 4), {}),
        ("frn", (2, 2, 2, 3), {"learned_eps": True}),
        ("evonorm_s0", (2, 4, 3), {"groups": 2}),
        ("evonorm_b0", (4, 3, 3), {"virtual_batch": 2, "momentum": 0.0}),
        ("brn", (4, 3, 3), {"momentum": 0.0, **BRN_ACTIVE}),  # momentum 0: the running stats hold still
    ],
)
def test_reference_passes_gradcheck_in_float64(name, shape, options):
    layer = randomized(name, shape[1], "reference", 1, dtype=torch.float64, **options)
    if name == "brn":
        # Numerical differences would differentiate r and d, which Algorithm 1 holds constant: running
        # statistics far from the batch's saturate both clips (r = 1/rmax, d = -dmax), so they are.
        with torch.no_grad():
            layer.running_mean.fill_(100.0), layer.running_var.fill_(1e4)
    x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(layer, (x,))
    params = [p for _, p in layer.named_parameters()]

    def of_params(*values):
        saved = [p.data for p in params]
        for p, v in zip(params, values):
            p.data = v
        try:  # the module with its parameters replaced by `values`, differentiable in them
            return torch.func.functional_call(
                layer, dict(zip([n for n, _ in layer.named_parameters()], values)), (x.detach(),)
            )
        finally:
            for p, s in zip(params, saved):
                p.data = s

    assert torch.autograd.gradcheck(of_params, tuple(p.detach().clone().requires_grad_() for p in params))


@pytest.mark.parametrize("name, impl", [c for c in CASES if c[0] in BATCH])
def test_running_statistics_and_eval(name, impl):
    """brn and evonorm_b0 keep BatchNorm's running statistics (momentum, unbiased variance, virtual
    batches averaged) and use them in eval mode, grad enabled or not."""
    torch.manual_seed(2)
    layer = norms.build(name, 3, impl=impl, virtual_batch=2, momentum=0.3)
    bn = norms.build("bn", 3, impl="reference", virtual_batch=2, momentum=0.3)
    for step in range(4):
        x = torch.randn(4, 3, 5) * (step + 1) + step
        layer(x), bn(x)
    torch.testing.assert_close(layer.running_mean, bn.running_mean)
    torch.testing.assert_close(layer.running_var, bn.running_var)
    assert int(layer.num_batches_tracked) == 4
    layer.eval()
    x = torch.randn(3, 3, 5, requires_grad=True)
    before = layer.running_var.clone()
    expected = expected64(layer, x.detach(), training=False) if name == "evonorm_b0" else None
    if name == "brn":  # eval is BatchNorm's
        bn.eval()
        expected = bn(x).double()
    torch.testing.assert_close(layer(x).double(), expected, rtol=1e-5, atol=1e-5)
    assert torch.equal(layer.running_var, before) and int(layer.num_batches_tracked) == 4


@pytest.mark.parametrize("impl", impls("brn"))
def test_batch_renorm_is_batchnorm_during_warmup_and_clips_after(impl):
    torch.manual_seed(3)
    brn = norms.build("brn", 3, impl=impl, warmup_steps=2, rmax_steps=6, dmax_steps=4, rmax=3.0, dmax=2.0)
    bn = norms.build("bn", 3, impl="reference")
    for _ in range(2):  # warm-up: r = 1, d = 0, exactly BatchNorm
        x = torch.randn(6, 3, 4) * 3 + 2
        torch.testing.assert_close(brn(x), bn(x), rtol=1e-5, atol=1e-5)
    assert brn.clip_limits() == (1.0, 0.0)
    brn.num_batches_tracked.fill_(4)  # halfway to rmax, dmax reached
    assert brn.clip_limits() == (2.0, 2.0)
    brn.num_batches_tracked.fill_(100)
    assert brn.clip_limits() == (3.0, 2.0)
    x = torch.randn(6, 3, 4) * 3 + 2
    expected = expected64(brn, x)  # before the forward, which counts step 101 (past the schedule)
    torch.testing.assert_close(brn(x).double(), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", FAMILY)
def test_compiled_matches_reference(name):
    options = {"groups": 2} if name == "evonorm_s0" else {"virtual_batch": 2, "momentum": None} if name in BATCH else {}
    options.update(BRN_ACTIVE if name == "brn" else {})
    ref = randomized(name, 4, "reference", 5, **options)
    comp = norms.build(name, 4, impl="compiled", **options)
    comp.load_state_dict(ref.state_dict())
    for n in (4, 6):  # a second batch size reuses the graph; momentum=None changes the factor
        x = torch.randn(n, 4, 5) * 2 + 1
        dy = torch.randn_like(x)
        xr, xc = x.clone().requires_grad_(), x.clone().requires_grad_()
        yr, yc = ref(xr), comp(xc)
        torch.testing.assert_close(yc, yr, rtol=1e-5, atol=1e-5)
        yr.backward(dy), yc.backward(dy)
        torch.testing.assert_close(xc.grad, xr.grad, rtol=1e-4, atol=1e-5)
    for (n, p), (_, q) in zip(ref.named_parameters(), comp.named_parameters()):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-4, atol=1e-5, msg=n)
    for (n, b), (_, c) in zip(ref.named_buffers(), comp.named_buffers()):
        torch.testing.assert_close(c, b, rtol=1e-5, atol=1e-5, msg=n)
    ref.eval(), comp.eval()
    x = torch.randn(3, 4, 5)
    torch.testing.assert_close(comp(x), ref(x), rtol=1e-5, atol=1e-5)


def test_registry_and_batch_dependence():
    assert set(FAMILY) <= set(norms.available())
    for name in FAMILY:
        assert {"reference", "compiled"} <= set(norms.implementations(name))
        assert norms.batch_independent(name) == (name not in BATCH)
    assert {n for n in FAMILY if "native" in norms.implementations(n)} == {"rms", "ln2d", "brn", "frn"}
    assert norms.build("rms", 4).bias is None  # RMSNorm: a gain only
    assert norms.build("evonorm_s0", 4, groups=2).impl == "reference"  # the default where there is no native
    # Per-position norms on (N, C) input are the transformer ones.
    rows = torch.randn(5, 8)
    torch.testing.assert_close(norms.build("ln2d", 8, eps=1e-5)(rows), nn.LayerNorm(8)(rows), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(
        norms.build("rms", 8, eps=1e-6)(rows), nn.RMSNorm(8, eps=1e-6)(rows), rtol=1e-5, atol=1e-5
    )


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: norms.build("frn", 4)(torch.randn(3, 4)), r"frn normalizes over spatial positions"),
        (
            lambda: norms.build("evonorm_b0", 4, impl="reference")(torch.randn(3, 4)),
            r"evonorm_b0 normalizes over spatial positions",
        ),
        (lambda: norms.build("rms", 1)(torch.randn(3, 1, 4)), r"rms takes each mean and variance over 1 value"),
        (lambda: norms.build("ln2d", 1, impl="reference")(torch.randn(3, 1)), r"more than one channel"),
        (lambda: norms.build("brn", 4)(torch.randn(1, 4)), r"brn takes each mean and variance over 1 value"),
        (lambda: norms.build("brn", 4, track_running_stats=False), r"track_running_stats must be true"),
        (lambda: norms.build("brn", 4, rmax=0.5), r"rmax must be a number >= 1"),
        (lambda: norms.build("brn", 4, warmup_steps=1.5), r"warmup_steps must be an int"),
        (lambda: norms.build("evonorm_s0", 6, groups=4), r"evonorm_s0: 6 channels do not split into 4 groups"),
        (lambda: norms.build("frn", 4, learned_eps="yes"), r"learned_eps must be true or false"),
        (
            lambda: norms.build("frn", 4, learned_eps=True)(torch.randn(2, 4, 3)),
            r"impl=native \(F.rms_norm\) takes a fixed eps",
        ),
        (lambda: norms.build("evonorm_s0", 4, impl="native"), r"evonorm_s0 has no implementation 'native'"),
        (lambda: norms.build("evonorm_s0", 4, impl="triton"), r"choose one of: reference, compiled"),
        (lambda: norms.build("rms", 4, groups=2), r"rms takes no option 'groups'"),
    ],
)
def test_bad_input(call, message):
    with pytest.raises(UsageError, match=message):
        call()


def test_models_drop_their_activation_after_norms_that_include_one():
    cnn = models.build("cnn1d", input_shape=(1, 40), num_classes=10, norm=lambda c: norms.build("frn", c))
    assert not any(isinstance(m, nn.ReLU) for m in cnn.modules())
    assert all(m.apply_act for m in cnn.modules() if isinstance(m, norms.Norm))
    resnet = models.build(
        "resnet20", input_shape=(3, 8, 8), num_classes=10, norm=lambda c: norms.build("evonorm_s0", c, groups=8)
    )
    block = resnet.blocks[0]
    assert block.unit1[1].apply_act and not block.unit2[1].apply_act  # no ReLU followed unit2's norm
    assert not any(isinstance(m, nn.ReLU) for m in resnet.modules())
    resnet(torch.randn(2, 3, 8, 8)).sum().backward()
    bn_model = models.build("cnn1d", input_shape=(1, 40), num_classes=10, norm=lambda c: norms.build("bn", c))
    assert sum(isinstance(m, nn.ReLU) for m in bn_model.modules()) == 3


def test_byte_model_counts_each_norms_parameters_and_statistics():
    x = torch.randn(8, 16, 10, 10)
    tensor = x.numel() * 4
    rms, ln2d = norms.build("rms", 16), norms.build("ln2d", 16)
    assert bytes_moved(rms, x, "fwd") == 2 * tensor + 16 * 4 + 8 * 100 * 4  # weight; one rstd per position
    assert bytes_moved(ln2d, x, "fwd") == 2 * tensor + 32 * 4 + 2 * 8 * 100 * 4
    frn = norms.build("frn", 16)
    assert bytes_moved(frn, x, "fwd") == 2 * tensor + 48 * 4 + 8 * 16 * 4  # weight, bias, tau
    brn = norms.build("brn", 16)
    bn = norms.build("bn", 16)
    assert bytes_moved(brn, x, "fwd") - bytes_moved(bn, x, "fwd") == 2 * 16 * 4  # r and d
    b0 = norms.build("evonorm_b0", 16, virtual_batch=2)
    assert bytes_moved(b0, x, "fwd") == 2 * tensor + 48 * 4 + 2 * 2 * 16 * 4 + (4 * 16 + 8 * 16) * 4


def _timm_layers():
    try:
        from timm import layers
    except Exception as exc:
        pytest.skip(f"timm is not importable here ({type(exc).__name__}: {exc}); pip install timm to cross-check")
    return layers


@pytest.mark.parametrize(
    "name, options, theirs",
    [
        ("ln2d", {"eps": 1e-6}, lambda t, c: t.LayerNorm2d(c, eps=1e-6)),
        ("rms", {"eps": 1e-6}, lambda t, c: t.RmsNorm2d(c, eps=1e-6)),
        ("frn", {"eps": 1e-6}, lambda t, c: t.FilterResponseNormTlu2d(c, eps=1e-6)),
        ("evonorm_s0", {"groups": 4, "eps": 1e-5}, lambda t, c: t.EvoNorm2dS0(c, groups=4, eps=1e-5)),
        ("evonorm_b0", {"eps": 1e-3, "momentum": 0.1}, lambda t, c: t.EvoNorm2dB0(c, eps=1e-3, momentum=0.1)),
    ],
)
@pytest.mark.parametrize("impl", ["reference", "native"])
def test_matches_timm(name, options, theirs, impl):
    layers = _timm_layers()
    if impl not in norms.implementations(name):
        pytest.skip(f"{name} has no {impl}")
    ours = randomized(name, 8, impl, 7, **options)
    other = theirs(layers, 8)
    state = {k: v for k, v in ours.state_dict().items() if k in other.state_dict()}
    other.load_state_dict(state, strict=False)
    assert set(other.state_dict()) <= set(ours.state_dict())  # timm's names, all present here
    for step in range(3):
        x = torch.randn(4, 8, 6, 6) * 2 + step
        torch.testing.assert_close(ours(x), other(x), rtol=1e-5, atol=1e-5)
    for k, v in other.state_dict().items():
        torch.testing.assert_close(ours.state_dict()[k], v, rtol=1e-5, atol=1e-5)
    ours.eval(), other.eval()
    x = torch.randn(2, 8, 6, 6)
    torch.testing.assert_close(ours(x), other(x), rtol=1e-5, atol=1e-5)


def test_family_experiment_sweeps_every_norm_and_gives_batch_norms_their_k():
    from hydra import compose, initialize_config_module

    from normbench import specs
    from normbench.app import cli  # noqa: F401  (registers the configs' resolvers, as the apps do)
    from normbench.train.accuracy import norm_factory

    with initialize_config_module("normbench.conf", version_base="1.3"):
        cfg = compose(config_name="accuracy", overrides=["+experiment=norm_family"], return_hydra_config=True)
    swept = cfg.hydra.sweeper.params
    assert (
        swept.norm.split(",") == ["bn", "ln", "in", "gn", *FAMILY]
        and "seed" in swept
        and "accuracy.batch_size" in swept
    )
    for name in FAMILY:
        with initialize_config_module("normbench.conf", version_base="1.3"):
            cfg = compose(
                config_name="accuracy", overrides=["+experiment=norm_family", f"norm={name}", "accuracy.batch_size=4"]
            )
        make, options = norm_factory(specs.train_job(cfg))
        layer = make(32)
        assert layer.impl == "reference" and layer.name == name
        assert (options.get("virtual_batch") == 4) == (name in BATCH)
    assert layer.num_groups == 8  # evonorm_s0 takes the model's groups, as gn does


@pytest.mark.parametrize("name", ["brn", "frn"])
def test_a_tiny_training_evaluates_batch_norms_three_ways(tmp_path, name):
    from tests.test_accuracy import train

    brn_schedule = ["+norm_options.brn={warmup_steps:1,rmax_steps:3,dmax_steps:2}"] if name == "brn" else []
    row, _ = train(tmp_path, f"norm={name}", "impl=reference", "accuracy.batch_size=4", *brn_schedule)
    assert 0 <= row["test_acc"] <= 1
    # PreciseBN and batch statistics exist for the norms with running statistics only.
    assert math.isnan(row["test_acc_precise_bn"]) == (name not in BATCH)
    assert math.isnan(row["test_acc_batch_stats"]) == (name not in BATCH)


def test_a_sweep_skips_a_norm_without_the_implementation(tmp_path):
    """EvoNorm has no `native`: the default speed sweep's native job is skipped with the reason, not failed."""
    from normbench.app.callbacks import failed_jobs
    from normbench.io import results

    with pytest.raises(norms.registry.Unsupported):
        norms.build("evonorm_b0", 4, impl="native")
    with pytest.raises(UsageError) as typo:
        norms.build("evonorm_b0", 4, impl="natve")
    assert not isinstance(typo.value, norms.registry.Unsupported)  # a typo stays a failure
    job = tmp_path / "0"
    try:
        norms.build("evonorm_s0", 4, impl="native")
    except UsageError as exc:
        results.write_failure(job, exc, ["norm=evonorm_s0", "impl=native"])
    frame = results.read_sweep(tmp_path)
    assert list(frame["status"]) == ["skipped"] and "no implementation 'native'" in frame["error"].iloc[0]
    assert failed_jobs(tmp_path) is None
