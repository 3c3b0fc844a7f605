"""The registry's norms compute exactly their functions: against float64 and against torch.nn."""

from __future__ import annotations

import math
import os

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from normbench import norms
from normbench.errors import Unsupported, UsageError
from tests.float64_reference import batch_moments64, min_std64, norm64

IMPLS = ["reference", "native"]  # compiled and triton are proven in their own test files
NORMS = ["bn", "ln", "in", "gn"]


@st.composite
def problems(draw, name):
    """A shape the norm accepts, a seed for its values, and its options."""
    spatial_rank = draw(st.integers(1 if name == "in" else 0, 3))
    spatial = draw(st.lists(st.integers(1, 5), min_size=spatial_rank, max_size=spatial_rank))
    n = draw(st.integers(1, 4))
    c = draw(st.integers(1, 8))
    if name == "in" and math.prod(spatial) < 2:
        spatial[0] = 2
    if name == "bn" and n * math.prod(spatial) < 2:
        n = 2
    options = {}
    if name == "gn":
        options["groups"] = draw(st.sampled_from([g for g in range(1, c + 1) if c % g == 0]))
    if name in ("ln", "gn") and c // options.get("groups", 1) * math.prod(spatial) < 2:
        spatial = [2, *spatial[1:]]  # one value per statistic is rejected: see test_bad_input
    if name == "bn" and draw(st.booleans()):
        k = draw(st.sampled_from([k for k in range(1, n + 1) if n % k == 0]))
        if k * math.prod(spatial) >= 2:
            options["virtual_batch"] = k
    return (n, c, *spatial), draw(st.integers(0, 2**31 - 1)), options


def random_problem(shape, seed):
    g = torch.Generator().manual_seed(seed)
    # Off zero and off unit scale, like activations; the offset stays within a few standard deviations,
    # since float32 rounding grows with offset / deviation in every implementation.
    scale = 0.1 + 3 * torch.rand((), generator=g)
    x = (scale * (torch.randn(shape, generator=g) + 2 * torch.rand((), generator=g) - 1)).requires_grad_()
    c = shape[1]
    weight = 1 + 0.5 * torch.randn(c, generator=g)
    bias = 0.5 * torch.randn(c, generator=g)
    grad_out = torch.randn(shape, generator=g)
    return x, weight, bias, grad_out


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("name", NORMS)
@settings(max_examples=int(os.environ.get("NORMBENCH_EXAMPLES", "25")), deadline=None)
@given(data=st.data())
def test_forward_and_backward_match_float64(name, impl, data):
    shape, seed, options = data.draw(problems(name))
    x, weight, bias, grad_out = random_problem(shape, seed)
    layer = norms.build(name, shape[1], impl=impl, **options)
    with torch.no_grad():
        layer.weight.copy_(weight)
        layer.bias.copy_(bias)
    y = layer(x)
    y.backward(grad_out)

    x64 = x.detach().double().requires_grad_()
    w64 = weight.double().requires_grad_()
    b64 = bias.double().requires_grad_()
    y64 = norm64(x64, name, w64, b64, eps=layer.eps, **options)
    y64.backward(grad_out.double())

    assert y.dtype == torch.float32 and y.shape == x.shape
    # xhat carries a float32 rounding error of about eps32 * |x| / sigma (x - mean cancels when the values
    # of a slice lie close together: two samples of bn, say), y that times |w|; and dx = w * (g - mean(g) -
    # xhat * mean(g * xhat)) / sigma cancels terms of size |w g| / sigma. The tolerances follow that
    # condition number of the narrowest slice instead of one fixed number.
    sigma = min_std64(x, name, eps=layer.eps, **options)
    eps32 = torch.finfo(torch.float32).eps
    xhat_error = 4 * eps32 * x.abs().max().item() / sigma
    torch.testing.assert_close(y.double(), y64, rtol=1e-5, atol=2e-5 + weight.abs().max().item() * xhat_error)
    cancelled = grad_out.abs().max().item() * weight.abs().max().item() / sigma
    atol = 1e-5 * (1 + x64.grad.abs().max().item()) + 4 * eps32 * cancelled * (1 + x.abs().max().item() / sigma)
    torch.testing.assert_close(x.grad.double(), x64.grad, rtol=1e-4, atol=atol)
    torch.testing.assert_close(layer.weight.grad.double(), w64.grad, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(layer.bias.grad.double(), b64.grad, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    "name, shape, options",
    [
        ("bn", (4, 3, 5), {}),
        ("bn", (4, 2, 3, 2), {"virtual_batch": 2}),
        ("ln", (3, 4), {}),
        ("ln", (2, 3, 2, 2), {}),
        ("in", (2, 3, 4), {}),
        ("in", (2, 2, 2, 2, 2), {}),
        ("gn", (2, 4, 3), {"groups": 2}),
        ("gn", (2, 6, 2, 2), {"groups": 3}),
    ],
)
def test_reference_passes_gradcheck_in_float64(name, shape, options):
    torch.manual_seed(0)
    layer = norms.build(name, shape[1], impl="reference", dtype=torch.float64, **options)
    with torch.no_grad():
        layer.weight.normal_(1, 0.5)
        layer.bias.normal_(0, 0.5)
    x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(layer, (x,))
    assert torch.autograd.gradcheck(
        lambda w, b: norms.core.norm_forward(
            x.detach(), w, b, samples=layer.samples(shape[0]), groups=layer.groups(), eps=layer.eps
        ),
        (layer.weight, layer.bias),
    )
    assert torch.autograd.gradgradcheck(layer, (x,))


TORCH_BN = {2: nn.BatchNorm1d, 3: nn.BatchNorm1d, 4: nn.BatchNorm2d, 5: nn.BatchNorm3d}


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("momentum", [0.1, None])
@pytest.mark.parametrize("shape", [(8, 3), (4, 3, 5), (4, 3, 4, 4), (2, 3, 2, 3, 2)])
def test_running_stats_follow_torch_nn(impl, momentum, shape):
    torch.manual_seed(1)
    ours = norms.build("bn", shape[1], impl=impl, momentum=momentum)
    theirs = TORCH_BN[len(shape)](shape[1], momentum=momentum)
    for step in range(5):
        x = torch.randn(shape) * (step + 1) + step
        torch.testing.assert_close(ours(x), theirs(x), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ours.running_mean, theirs.running_mean, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(ours.running_var, theirs.running_var, rtol=1e-6, atol=1e-6)
    assert ours.num_batches_tracked.item() == theirs.num_batches_tracked.item() == 5
    ours.eval()
    theirs.eval()
    x = torch.randn(shape)
    torch.testing.assert_close(ours(x), theirs(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("impl", IMPLS)
def test_virtual_batches_take_statistics_per_batch_and_average_running_stats(impl):
    torch.manual_seed(2)
    x = torch.randn(8, 3, 4, 4) * 2 + 1
    layer = norms.build("bn", 3, impl=impl, virtual_batch=2, momentum=0.5)
    y = layer(x)
    torch.testing.assert_close(
        y.double(), norm64(x, "bn", layer.weight, layer.bias, virtual_batch=2), rtol=1e-5, atol=1e-5
    )
    mean, var = batch_moments64(x, virtual_batch=2)
    torch.testing.assert_close(layer.running_mean.double(), 0.5 * mean, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(layer.running_var.double(), 0.5 + 0.5 * var, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("impl", IMPLS)
def test_eval_mode_uses_running_stats_even_with_grad_enabled(impl):
    """The seed notebook chose by torch.is_grad_enabled(); the module's mode is what counts."""
    layer = norms.build("bn", 2, impl=impl)
    with torch.no_grad():
        layer.running_mean.copy_(torch.tensor([1.0, -2.0]))
        layer.running_var.copy_(torch.tensor([4.0, 0.25]))
    layer.eval()
    x = torch.randn(3, 2, 5, requires_grad=True)
    expected = (x - layer.running_mean.view(1, 2, 1)) / torch.sqrt(layer.running_var.view(1, 2, 1) + layer.eps)
    torch.testing.assert_close(layer(x), expected)
    assert layer.num_batches_tracked.item() == 0
    # ... and training mode uses batch statistics (and updates the running ones) under no_grad.
    layer.train()
    with torch.no_grad():
        y = layer(x)
    torch.testing.assert_close(y.double(), norm64(x, "bn"), rtol=1e-5, atol=1e-5)
    assert layer.num_batches_tracked.item() == 1


@pytest.mark.parametrize("impl", IMPLS)
def test_seed_notebook_worked_example(impl):
    """The notebook's nn.BatchNorm2d printout: arange(27) as (1, 3, 3, 3), one training step."""
    x = torch.arange(0, 27, dtype=torch.float32).reshape(1, 3, 3, 3)
    layer = norms.build("bn", 3, impl=impl)
    y = layer(x)
    first_channel = torch.tensor([[-1.5492, -1.1619, -0.7746], [-0.3873, 0.0000, 0.3873], [0.7746, 1.1619, 1.5492]])
    for c in range(3):
        torch.testing.assert_close(y[0, c], first_channel, rtol=0, atol=1e-4)
    torch.testing.assert_close(layer.running_mean, torch.tensor([0.4, 1.3, 2.2]))
    # PyTorch stores the unbiased variance (7.5), not the biased one (6.67) the notebook used:
    # 0.9 * 1 + 0.1 * 7.5 = 1.65.
    torch.testing.assert_close(layer.running_var, torch.full((3,), 1.65))


def test_matches_torch_nn_modules():
    torch.manual_seed(3)
    x = torch.randn(4, 6, 5, 5)
    pairs = [
        (norms.build("gn", 6, groups=3, impl="reference"), nn.GroupNorm(3, 6)),
        (norms.build("ln", 6, impl="reference"), nn.GroupNorm(1, 6)),
        (norms.build("in", 6, impl="reference"), nn.InstanceNorm2d(6, affine=True)),
        (norms.build("bn", 6, impl="reference"), nn.BatchNorm2d(6)),
    ]
    for ours, theirs in pairs:
        torch.testing.assert_close(ours(x), theirs(x), rtol=1e-5, atol=1e-5)
    rows = torch.randn(5, 16)
    torch.testing.assert_close(
        norms.build("ln", 16, impl="reference")(rows), nn.LayerNorm(16)(rows), rtol=1e-5, atol=1e-5
    )


@pytest.mark.parametrize("dtype, tol", [(torch.bfloat16, 2e-2), (torch.float16, 2e-3), (torch.float64, 1e-12)])
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("name, options", [("bn", {}), ("ln", {}), ("in", {}), ("gn", {"groups": 2})])
def test_other_dtypes(name, options, impl, dtype, tol):
    torch.manual_seed(4)
    x = (torch.randn(4, 4, 6, 6) * 3 + 1).to(dtype)
    layer = norms.build(name, 4, impl=impl, dtype=dtype, **options)
    y = layer(x)
    assert y.dtype == dtype
    torch.testing.assert_close(y.double(), norm64(x, name, **options), rtol=tol, atol=tol)


@pytest.mark.parametrize("name, options", [("bn", {}), ("ln", {}), ("in", {}), ("gn", {"groups": 2})])
def test_state_dict_moves_between_implementations(name, options):
    torch.manual_seed(5)
    source = norms.build(name, 4, impl="reference", **options)
    with torch.no_grad():
        source.weight.normal_()
        source.bias.normal_()
    for _ in range(3):
        source(torch.randn(4, 4, 3, 3))
    target = norms.build(name, 4, impl="native", **options)
    target.load_state_dict(source.state_dict())
    source.eval()
    target.eval()
    x = torch.randn(2, 4, 3, 3)
    torch.testing.assert_close(target(x), source(x), rtol=1e-5, atol=1e-5)
    expected_keys = {"weight", "bias"} | (
        {"running_mean", "running_var", "num_batches_tracked"} if name == "bn" else set()
    )
    assert set(source.state_dict()) == expected_keys
    # Switching the implementation in place keeps parameters and buffers too.
    target.impl = "reference"
    torch.testing.assert_close(target(x), source(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("impl", IMPLS)
def test_without_affine_or_running_stats(impl):
    x = torch.randn(4, 3, 5)
    layer = norms.build("bn", 3, impl=impl, affine=False, track_running_stats=False)
    assert layer.weight is None and layer.running_mean is None
    layer.eval()  # without running statistics, eval still normalizes with the batch's
    torch.testing.assert_close(layer(x).double(), norm64(x, "bn"), rtol=1e-5, atol=1e-5)


def test_none_is_the_identity_for_any_implementation():
    x = torch.randn(2, 3, 4)
    for impl in norms.implementations("none"):
        layer = norms.build("none", 3, impl=impl)
        assert layer(x) is x and not list(layer.parameters())


def test_registry_lists_norms_and_accepts_new_implementations():
    assert set(norms.available()) >= {"bn", "ln", "in", "gn", "none"}
    for name in NORMS:
        assert {"reference", "native"} <= set(norms.implementations(name))

    @norms.register("ln", "doubled-for-test")
    def doubled(layer, x):
        return 2 * norms.native.layer_norm(layer, x)

    try:
        x = torch.randn(2, 3, 4)
        out = norms.build("ln", 3, impl="doubled-for-test")(x)
        torch.testing.assert_close(out, 2 * norms.build("ln", 3)(x))
    finally:
        del norms.LayerNorm.implementations["doubled-for-test"]


# Bad input: one clear error each, naming the fix.
@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: norms.build("batchnorm", 4), r"unknown norm 'batchnorm'; available: bn, ln, in, gn, none"),
        (
            lambda: norms.build("gn", 4, impl="cuda-magic"),
            r"gn has no implementation 'cuda-magic'; choose one of: reference, native",
        ),
        (lambda: norms.build("bn", 0), r"num_features must be a positive int"),
        (lambda: norms.build("ln", 2.5), r"num_features must be a positive int"),
        (
            lambda: norms.build("gn", 6, groups=4),
            r"6 channels do not split into 4 groups; choose groups from the divisors of 6: \[1, 2, 3, 6\]",
        ),
        (lambda: norms.build("ln", 4, groups=2), r"ln takes no option 'groups'; its options are: .*eps"),
        (lambda: norms.build("bn", 4, momentum=1.5), r"momentum must be in \[0, 1\] or None"),
    ],
)
def test_bad_configuration(call, message):
    with pytest.raises(UsageError, match=message):
        call()


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize(
    "name, x, message",
    [
        ("bn", torch.randn(4, 5, 3), r"built for 4 channels but the input has 5 .* build it with num_features=5"),
        ("ln", torch.randn(4), r"takes \(N, C, \*spatial\) with 0 to 3 spatial dimensions, got shape \(4,\)"),
        ("gn", torch.randn(1, 4, 2, 2, 2, 2), r"0 to 3 spatial dimensions"),
        ("in", torch.randn(3, 4), r"needs more than one of them; got shape \(3, 4\): use ln"),
        ("bn", torch.randn(1, 4), r"bn takes each mean and variance over 1 value .* call \.eval\(\)"),
        ("bn", torch.randn(1, 4, 1, 1), r"bn takes each mean and variance over 1 value"),
        ("gn", torch.randint(0, 5, (2, 4, 3)), r"takes a floating-point tensor, got torch.int64: convert it first"),
    ],
)
def test_bad_input(name, x, message, impl):
    layer = norms.build(name, 4, impl=impl, **({"groups": 2} if name == "gn" else {}))
    with pytest.raises(UsageError, match=message):
        layer(x)
    if name == "bn":
        assert layer.num_batches_tracked.item() == 0  # a rejected batch leaves no trace


@pytest.mark.parametrize("impl", IMPLS)
def test_one_value_per_statistic_is_rejected_for_every_norm(impl):
    with pytest.raises(UsageError, match=r"gn takes each mean and variance over 1 value .* fewer groups"):
        norms.build("gn", 4, groups=4, impl=impl)(torch.randn(3, 4))
    with pytest.raises(UsageError, match=r"ln takes each mean and variance over 1 value"):
        norms.build("ln", 1, impl=impl)(torch.randn(3, 1))


def test_virtual_batch_must_divide_the_batch():
    layer = norms.build("bn", 4, virtual_batch=3)
    with pytest.raises(UsageError, match=r"a batch of 8 does not split into virtual batches of 3"):
        layer(torch.randn(8, 4, 2))


# ------------------------------------------------------------------------------------ support contract


def test_supports_answers_none_or_the_reason():
    assert norms.supports("gn", "native") is None
    assert norms.supports("gn", "reference", dtype=torch.float64) is None
    assert "no implementation 'native'" in norms.supports("evonorm_s0", "native")
    assert "fixed eps" in norms.supports("frn", "native", learned_eps=True)
    assert norms.supports("frn", "native", learned_eps=False) is None
    with pytest.raises(UsageError, match="choose one of"):
        norms.supports("gn", "natve")  # a typo is bad input, not a reason
    with pytest.raises(UsageError, match="unknown norm"):
        norms.supports("groupnorm", "native")


def test_build_and_call_raise_unsupported_with_the_same_reason():
    reason = norms.supports("frn", "native", learned_eps=True)
    with pytest.raises(Unsupported) as err:
        norms.build("frn", 4, impl="native", learned_eps=True)
    assert str(err.value) == reason
    layer = norms.build("frn", 4, impl="reference", learned_eps=True)
    layer.impl = "native"  # switched after it was built: the call says the same
    with pytest.raises(Unsupported) as err:
        layer(torch.randn(2, 4, 3, 3))
    assert str(err.value) == reason


@pytest.mark.parametrize(
    "name, options",
    [("bn", {"virtual_batch": 2}), ("bn", {"virtual_batch": 3}), ("brn", {"virtual_batch": 2}), ("in", {})],
)
def test_native_keeps_channels_last_with_the_same_values(name, options):
    """The fast loop's layout: bn's and brn's virtual batches and in, given channels_last input, return
    channels_last output and gradient (through an in-place ReLU), equal to the contiguous path's within
    float32 rounding (the two layouts' batch_norm kernels sum in other orders), and the same running
    statistics."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(12, 5, 4, 3, generator=gen) * 3 + 1
    grad = torch.randn(12, 5, 4, 3, generator=gen)
    runs = []
    for layout in (torch.contiguous_format, torch.channels_last):
        layer = norms.build(name, 5, impl="native", **options).train()
        with torch.no_grad():
            layer.weight.uniform_(0.5, 1.5, generator=torch.Generator().manual_seed(1))
            layer.bias.uniform_(-0.5, 0.5, generator=torch.Generator().manual_seed(2))
        xl = x.clone(memory_format=layout).requires_grad_()
        y = torch.relu_(layer(xl))  # in place, as the models' ReLU after a norm
        y.backward(grad.contiguous(memory_format=layout))
        stats = [getattr(layer, key, None) for key in ("running_mean", "running_var")]  # in has none
        runs.append((y.detach(), xl.grad, layer.weight.grad, layer.bias.grad, stats))
    (y0, gx0, gw0, gb0, stats0), (y1, gx1, gw1, gb1, stats1) = runs
    assert y1.is_contiguous(memory_format=torch.channels_last) and not y1.is_contiguous()
    assert gx1.is_contiguous(memory_format=torch.channels_last) and not gx1.is_contiguous()
    for a, b in [(y0, y1), (gx0, gx1), (gw0, gw1), (gb0, gb1)]:
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)
    for a, b in zip(stats0, stats1):
        if a is not None:
            torch.testing.assert_close(b, a, rtol=1e-6, atol=1e-6)


def test_virtual_batches_side_by_side_are_the_same_values_in_either_layout():
    """The rearrangement itself is exact: the same (k, b c, ...) values from either layout, and back."""
    from normbench.norms.impl.native import one_behind_another, side_by_side

    x = torch.randn(12, 5, 4, 3, generator=torch.Generator().manual_seed(0))
    xl = x.contiguous(memory_format=torch.channels_last)
    plain, last = side_by_side(x, 4, 3), side_by_side(xl, 4, 3)
    assert torch.equal(last.reshape(plain.shape), plain)
    assert torch.equal(plain[1, 2 * 5 + 3], x[2 * 3 + 1, 3].flatten())  # virtual batch 2's sample 1, channel 3
    back = one_behind_another(last, xl)
    assert torch.equal(back, x) and back.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_virtual_batches_back_in_place_pass_gradcheck(layout):
    """one_behind_another (a tensor of its own, not a view) has the exact gradient in float64."""
    from normbench.norms.impl.native import one_behind_another, side_by_side

    x = torch.randn(6, 2, 3, 2, dtype=torch.float64).contiguous(memory_format=layout)
    y = side_by_side(x, 3, 2).detach().requires_grad_()
    out = one_behind_another(y, x)
    assert out._base is None and torch.equal(out, x) and out.is_contiguous(memory_format=layout)
    assert torch.autograd.gradcheck(lambda t: one_behind_another(t, x), (y,))
