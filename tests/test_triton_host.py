"""impl=triton's host-side work per call, pinned by counts (never by time): plans computed once per input
geometry, no torch operator added to a pass, and the host-cost tool's stubbed passes (docs/triton.md)."""

from __future__ import annotations

import pytest
import torch

from normbench.kernels import availability, layout

needs_triton = pytest.mark.skipif(not availability.triton_installed(), reason="triton is not installed")

SHAPE = (256, 64, 56, 56)  # resnet_c64


@pytest.fixture
def counted_planning(monkeypatch):
    """Count the calls of the planning functions behind layout.plans, from an empty plan cache."""
    calls = {"slab_plan": 0, "split_plan": 0, "view_of": 0}
    for name in calls:
        original = getattr(layout, name)

        def counted(*args, _name=name, _original=original, **kwargs):
            calls[_name] += 1
            return _original(*args, **kwargs)

        monkeypatch.setattr(layout, name, counted)
    _clear_plans()
    yield calls
    _clear_plans()  # no plans made through the counting wrappers outlive the test


def _clear_plans():
    from normbench.kernels import launch_plan

    layout.plans_of.cache_clear()
    launch_plan._launch_plan.cache_clear()


@needs_triton
@pytest.mark.parametrize("norm", ["bn", "ln", "gn"])  # the split, split and fused paths at this shape
def test_plans_are_made_once_per_geometry(counted_planning, norm):
    from normbench.tools import trace

    trace.trace(norm, SHAPE, torch.float32, "contiguous")
    first = dict(counted_planning)
    assert first == {"slab_plan": 1, "split_plan": 1, "view_of": 1}  # forward and backward share one plan
    trace.trace(norm, SHAPE, torch.float32, "contiguous")
    assert counted_planning == first  # the second call plans nothing
    trace.trace(norm, SHAPE, torch.float32, "channels_last")  # another geometry: planned anew
    assert counted_planning["view_of"] == 2


@needs_triton
def test_changed_settings_are_not_served_a_stale_plan(monkeypatch):
    """The plan caches are keyed on the KernelSettings value and the heuristics: each takes effect."""
    from normbench.tools import trace

    def kernels(shape=SHAPE, **settings):
        passes = trace.trace("gn", shape, torch.float32, "contiguous", **settings)
        return [launch.name for launch in passes["fwd"].launches]

    assert kernels() == ["fused_forward"]
    assert kernels(force_path="split") == ["partial_moments", "combine_moments", "normalize"]
    assert kernels(force_path="looped") == ["looped_forward"]
    assert kernels(force_path="coop") == ["coop_forward"]
    assert kernels() == ["fused_forward"]
    sd_gn = trace.GPU_SHAPES["sd_gn"]  # 512 slabs: looped on 132 SMs, split where they cannot fill the GPU
    assert kernels(sd_gn) == ["looped_forward"]
    assert kernels(sd_gn, plan_for=(1000, trace.H100[1])) == ["partial_moments", "combine_moments", "normalize"]
    # With the cooperative kernels on: they take sd_gn, whose 1 MB backward slabs (x and dy) overflow the
    # L2 share at one per SM, and their grid follows the heuristic only they read
    assert kernels(sd_gn, cooperative=True) == ["coop_forward"]
    assert kernels(sd_gn, cooperative=True, plan_for=(132, 300 * 2**20)) == ["looped_forward"]  # 2 per SM fit
    assert kernels(sd_gn) == ["looped_forward"]

    def grid():
        return trace.trace("gn", sd_gn, torch.float32, "contiguous", cooperative=True)["fwd"].launches[0].grid

    assert grid() == (132 * layout.COOP_PROGRAMS_PER_SM,)
    monkeypatch.setattr(layout, "COOP_PROGRAMS_PER_SM", 1)
    assert grid() == (132,)


@needs_triton
def test_torch_operators_per_pass_do_not_grow():
    """Every torch operator is host time (and a launch) on a GPU: none forward; backward at most the one
    sum that gives dweight and dbias together (none where a group is one channel on the split path, as
    for bn: its combine kernel writes them)."""
    from normbench.tools import trace

    for norm, _, shape, dtype_name, layout_name in trace.sweep_cases():
        passes = trace.trace(norm, shape, trace.DTYPES[dtype_name], layout_name)
        case = (norm, shape, dtype_name, layout_name)
        assert passes["fwd"].torch_ops == [], case
        assert passes["bwd"].torch_ops in ([], ["sum"]), (case, passes["bwd"].torch_ops)
        assert norm != "bn" or passes["bwd"].torch_ops == [], case


@pytest.mark.parametrize(
    ("shape", "make"),
    [
        ((4, 6, 3, 5), lambda t: t.to(memory_format=torch.channels_last)),
        ((4, 6, 2, 3, 5), lambda t: t.to(memory_format=torch.channels_last_3d)),
        ((4, 6, 7), lambda t: t.transpose(1, 2).contiguous().transpose(1, 2)),
        ((4, 1, 3, 5), lambda t: t.to(memory_format=torch.channels_last)),  # size-1 dims: strides ignored
        ((4, 6, 1, 1), lambda t: t.to(memory_format=torch.channels_last)),
        ((4, 6, 3, 5), lambda t: t.transpose(2, 3)),  # neither layout
        ((4, 6, 3, 10), lambda t: t.to(memory_format=torch.channels_last)[..., ::2]),  # not dense
    ],
)
def test_cached_layout_check_agrees_with_torch(shape, make):
    x = make(torch.empty(shape))
    expected = x.is_contiguous() or x.permute(0, *range(2, x.dim()), 1).is_contiguous()
    dense, channels_last = layout.dense_layout(x)
    assert (dense is x) == expected
    assert channels_last == (expected and not x.is_contiguous())


@needs_triton
def test_host_cost_stubs_every_launch_and_counts_like_trace():
    """The tool's stubbed passes run the Function end to end on CPU tensors without launching a kernel,
    and its counts are the trace's (run once each: no timing is asserted)."""
    from normbench.tools import host_cost, trace

    cost = host_cost.measure("ln", SHAPE, torch.bfloat16, "channels_last", repeat=1, number=1, warmup=0)
    passes = trace.trace("ln", SHAPE, torch.bfloat16, "channels_last")
    assert cost.kernels == {name: len(p.launches) for name, p in passes.items()} == {"fwd": 3, "bwd": 3}
    assert cost.torch_ops == {"fwd": 0, "bwd": 1}
    assert set(cost.us) == set(host_cost.PASSES)
    host_cost._Stub.launches = 0
    calls = host_cost.pass_calls("ln", SHAPE, torch.bfloat16, "channels_last")
    calls["fwdbwd"]()
    assert host_cost._Stub.launches == 3 + 3 + 3  # the kept graph's forward, then forward and backward
    calls["layer"]()  # the registry's layer, as a user calls it, launches the same stubs
    assert host_cost._Stub.launches == 3 + 3 + 3 + 3 + 3


def _launches(passes) -> list:
    """Each traced launch as plain values: kernel, grid, scalar arguments, tensors' shapes and strides,
    constexprs."""

    def value(a):
        return (tuple(a.shape), a.stride(), a.dtype) if isinstance(a, torch.Tensor) else a

    return [
        (launch.name, launch.grid, tuple(map(value, launch.args)), launch.meta)
        for p in passes.values()
        for launch in p.launches
    ]


@needs_triton
@pytest.mark.parametrize("norm", ["bn", "ln", "gn"])
def test_cached_launch_plan_launches_what_a_cold_plan_does(norm):
    """A call served from the launch-plan cache makes the same launches (grids, scalars, constexprs,
    buffers) as one planned cold, and gives the same y, dx, dweight and dbias, bit for bit."""
    from normbench import norms
    from normbench.kernels import launch_plan
    from normbench.tools import trace

    _clear_plans()
    cold = _launches(trace.trace(norm, SHAPE, torch.bfloat16, "channels_last"))
    hits = launch_plan._launch_plan.cache_info().hits
    warm = _launches(trace.trace(norm, SHAPE, torch.bfloat16, "channels_last"))
    assert launch_plan._launch_plan.cache_info().hits == hits + 1
    assert warm == cold and len(cold) >= 2

    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 6, 3, 5, generator=g) * 2 + 3
    dy = torch.randn(x.shape, generator=g)
    layer = norms.build(norm, 6, impl="triton", **({"groups": 3} if norm == "gn" else {}))
    with torch.no_grad():
        layer.weight.copy_(torch.randn(6, generator=g))

    def step():
        xr = x.clone().requires_grad_()
        layer.zero_grad()
        layer(xr).backward(dy)  # bn: each step updates the running statistics too
        return xr.grad, layer.weight.grad.clone(), layer.bias.grad.clone()

    _clear_plans()
    first = step()
    assert launch_plan._launch_plan.cache_info().misses == 1
    second = step()
    assert launch_plan._launch_plan.cache_info().hits == 1
    for a, b in zip(first, second, strict=True):
        assert torch.equal(a, b)


def test_changed_shape_stride_dtype_or_mode_misses_the_launch_plan_cache():
    from normbench.kernels import launch_plan

    _clear_plans()
    x = torch.empty(4, 6, 3, 5)
    info = launch_plan._launch_plan.cache_info

    def plan(t, channels_last=False, mode=launch_plan.TRAIN, samples=1):
        return launch_plan.launch_plan(t, channels_last, True, samples, 3, 1e-5, mode)

    first = plan(x)
    assert plan(torch.empty(4, 6, 3, 5)) is first and info().hits == 1  # same geometry, another tensor
    assert plan(torch.empty(4, 6, 5, 3)) is not first  # shape
    cl = plan(x.to(memory_format=torch.channels_last), channels_last=True)  # strides
    assert cl.view.sc == 1 and first.view.sl == 1
    assert plan(x.bfloat16()).plans is not first.plans  # dtype: another element size
    assert plan(x, mode=launch_plan.EVAL, samples=4).path == "eval"  # running statistics as constants
    assert info().misses == 5 and info().hits == 1


def test_kernel_settings_refuse_bad_values_in_one_line():
    from normbench.errors import UsageError
    from normbench.kernels import settings

    with pytest.raises(UsageError, match="choose one of: looped, coop, split"):
        settings.KernelSettings(force_path="fused")
    with pytest.raises(UsageError, match=r"\(SMs, L2 bytes\)"):
        settings.KernelSettings(plan_for=(132, 0))


def test_the_speed_schema_takes_triton_cooperative_and_refuses_a_bad_value_naming_it():
    from hydra import compose as hydra_compose
    from hydra.errors import ConfigCompositionException

    from normbench.app import cli
    from normbench.bench import speed_job

    def compose(app, overrides):
        with cli.configs_for_compose():
            return hydra_compose(app, overrides=overrides)

    cfg = compose("speed", ["impl=triton", "triton.cooperative=true"])
    assert speed_job.spec(cfg).triton_cooperative is True
    with pytest.raises(ConfigCompositionException, match="triton.coop"):
        compose("speed", ["triton.coop=true"])
    with pytest.raises(ConfigCompositionException, match="triton.cooperative"):
        compose("speed", ["triton.cooperative=maybe"])


def test_the_launch_plan_cache_keys_on_the_settings_value():
    """Equal settings share a plan whichever object carries them; another value is planned anew."""
    from normbench.kernels import launch_plan
    from normbench.kernels.settings import KernelSettings

    _clear_plans()
    x = torch.empty(4, 6, 3, 5)

    def plan(settings):
        return launch_plan.launch_plan(x, False, True, 1, 3, 1e-5, launch_plan.TRAIN, settings)

    auto = plan(KernelSettings())
    assert plan(KernelSettings()) is auto and auto.path == "slab"
    assert plan(KernelSettings(force_path="split")).path == "split"
    assert plan(KernelSettings(force_path="coop")).path == "coop"
    h100 = plan(KernelSettings(plan_for=(132, 50 * 2**20)))
    assert h100 is not auto and h100 is plan(KernelSettings(plan_for=(132, 50 * 2**20)))
    assert launch_plan._launch_plan.cache_info().misses == 4


class _Allocations(torch.utils._python_dispatch.TorchDispatchMode):
    """Counts the tensors each pass allocates."""

    def __init__(self):
        super().__init__()
        self.passes = [[]]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if name in {"empty", "empty_like", "empty_strided", "new_empty", "zeros", "zeros_like"}:
            self.passes[-1].append(name)
        return func(*args, **(kwargs or {}))


@needs_triton
@pytest.mark.parametrize("cooperative", [False, True])
def test_a_forward_allocates_y_and_one_float32_workspace(cooperative):
    """Forward: y and one float32 workspace (statistics and scratch), plus the cooperative kernels'
    counters; backward: dx, the partial sums, the group means but on the slab path, and dweight and
    dbias where a kernel writes them, plus the counters. Every sweep case, planned for an H100."""
    from normbench.kernels.norm_function import _TritonNorm
    from normbench.kernels.settings import KernelSettings
    from normbench.tools import trace

    settings = KernelSettings(cooperative=cooperative, plan_for=trace.H100)
    for norm, _, shape, dtype_name, layout_name in trace.sweep_cases():
        dtype = trace.DTYPES[dtype_name]
        x, weight, bias, args = trace.function_inputs(norm, shape, dtype, layout_name, settings=settings)
        with trace.recording() as (launches, kernels), _Allocations() as counted:
            y = _TritonNorm.apply(x, weight, bias, (*args[:-1], kernels))
            counted.passes.append([])
            launches.append(trace.Pass())
            torch.autograd.grad(y, (x, weight, bias), torch.empty_like(y))
        coop = any(launch.name.startswith("coop") for launch in launches[0].launches)
        fwd, bwd = counted.passes[0], counted.passes[1][1:]  # the backward's first: the test's dy
        case = (norm, shape, dtype_name, layout_name, fwd, bwd)
        assert sorted(fwd) == sorted(["empty_like", "empty", *(["zeros"] if coop else [])]), case
        means = [] if launches[1].launches[0].name.endswith("d_backward") else ["empty"]  # fused_, looped_
        base = ["empty_like", "empty", *means, *(["zeros"] if coop else [])]  # dx, partials, means, counters
        grads = ["empty_like", "empty_like"]  # dweight and dbias, where a kernel writes them
        assert sorted(bwd) in (sorted(base), sorted(base + grads)), case


@needs_triton
@pytest.mark.parametrize(("norm", "path"), [("bn", "auto"), ("gn", "auto"), ("gn", "split"), ("ln", "coop")])
def test_two_forwards_before_their_backwards_keep_their_own_buffers(norm, path):
    """y1 = f(x1); y2 = f(x2); then both backwards, in reverse order: every output and gradient is that of
    its own input (against torch.nn.functional in float64), so no call reuses another's statistics,
    scratch or outputs."""
    from normbench import norms
    from normbench.kernels.settings import KernelSettings
    from normbench.norms.impl.triton import use_kernel_settings

    g = torch.Generator().manual_seed(3)
    options = {"groups": 3} if norm == "gn" else {}
    layer = norms.build(norm, 6, impl="triton", **options)
    use_kernel_settings(layer, KernelSettings(force_path=None if path == "auto" else path))
    with torch.no_grad():
        layer.weight.copy_(torch.randn(6, generator=g))
    xs = [(torch.randn(4, 6, 3, 5, generator=g) * (i + 1) + i).requires_grad_() for i in range(2)]
    dys = [torch.randn(4, 6, 3, 5, generator=g) for _ in range(2)]
    ys = [layer(x) for x in xs]
    for y, dy in reversed(list(zip(ys, dys, strict=True))):
        y.backward(dy)
    groups = {"bn": None, "ln": 1, "gn": 3}[norm]
    for x, y, dy in zip(xs, ys, dys, strict=True):
        x64 = x.detach().double().requires_grad_()
        w64, b64 = layer.weight.detach().double(), layer.bias.detach().double()
        if groups is None:
            y64 = torch.nn.functional.batch_norm(x64, None, None, w64, b64, training=True, eps=layer.eps)
        else:
            y64 = torch.nn.functional.group_norm(x64, groups, w64, b64, eps=layer.eps)
        y64.backward(dy.double())
        torch.testing.assert_close(y.double(), y64.detach(), atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(x.grad.double(), x64.grad, atol=1e-4, rtol=1e-4)


@needs_triton
def test_the_backward_cannot_be_differentiated_again():
    from normbench import norms

    layer = norms.build("gn", 6, impl="triton", groups=3)
    x = torch.randn(2, 6, 3, 5, requires_grad=True)
    with pytest.raises(RuntimeError, match="differentiable once"):
        torch.autograd.grad(layer(x).sum(), x, create_graph=True)
