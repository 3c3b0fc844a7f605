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

    layout._plans.cache_clear()
    launch_plan._launch_plan.cache_clear()


@needs_triton
@pytest.mark.parametrize("norm", ["bn", "ln", "gn"])  # the split, split and fused paths at this shape
def test_plans_are_made_once_per_geometry(counted_planning, norm):
    from normbench.kernels import trace

    trace.trace(norm, SHAPE, torch.float32, "contiguous")
    first = dict(counted_planning)
    assert first == {"slab_plan": 1, "split_plan": 1, "view_of": 1}  # forward and backward share one plan
    trace.trace(norm, SHAPE, torch.float32, "contiguous")
    assert counted_planning == first  # the second call plans nothing
    trace.trace(norm, SHAPE, torch.float32, "channels_last")  # another geometry: planned anew
    assert counted_planning["view_of"] == 2


@needs_triton
def test_changed_settings_are_not_served_a_stale_plan(monkeypatch):
    """The plan cache is keyed on the heuristics' settings: forcing a path (as the tests do) takes effect."""
    from normbench.kernels import trace

    def kernels(shape=SHAPE, plan_for=trace.H100):
        passes = trace.trace("gn", shape, torch.float32, "contiguous", plan_for=plan_for)
        return [launch.name for launch in passes["fwd"].launches]

    assert kernels() == ["fused_forward"]
    monkeypatch.setattr(layout, "FORCE_PATH", "split")
    assert kernels() == ["partial_moments", "combine_moments", "normalize"]
    monkeypatch.setattr(layout, "FORCE_PATH", "looped")
    assert kernels() == ["looped_forward"]
    monkeypatch.setattr(layout, "FORCE_PATH", "coop")
    assert kernels() == ["coop_forward"]
    monkeypatch.setattr(layout, "FORCE_PATH", None)
    sd_gn = trace.GPU_SHAPES["sd_gn"]  # 512 slabs: looped on 132 SMs, split where they cannot fill the GPU
    assert kernels(sd_gn) == ["looped_forward"]
    assert kernels(sd_gn, plan_for=(1000, trace.H100[1])) == ["partial_moments", "combine_moments", "normalize"]
    # With the cooperative kernels on: they take sd_gn, whose 1 MB backward slabs (x and dy) overflow the
    # L2 share at one per SM, and their grid follows the setting only they read
    monkeypatch.setattr(layout, "COOPERATIVE", True)
    assert kernels(sd_gn) == ["coop_forward"]
    assert kernels(sd_gn, plan_for=(132, 300 * 2**20)) == ["looped_forward"]  # 2 slabs per SM fit 300 MB

    def grid():
        return trace.trace("gn", sd_gn, torch.float32, "contiguous")["fwd"].launches[0].grid

    assert grid() == (132 * layout.COOP_PROGRAMS_PER_SM,)
    monkeypatch.setattr(layout, "COOP_PROGRAMS_PER_SM", 1)
    assert grid() == (132,)


@needs_triton
def test_torch_operators_per_pass_do_not_grow():
    """Every torch operator is host time (and a launch) on a GPU: none forward; backward at most the one
    sum that gives dweight and dbias together (none where a group is one channel on the split path, as
    for bn: its combine kernel writes them)."""
    from normbench.kernels import trace

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
    from normbench.kernels import host_cost, trace

    cost = host_cost.measure("ln", SHAPE, torch.bfloat16, "channels_last", repeat=1, number=1, warmup=0)
    passes = trace.trace("ln", SHAPE, torch.bfloat16, "channels_last")
    assert cost.kernels == {name: len(p.launches) for name, p in passes.items()} == {"fwd": 3, "bwd": 3}
    assert cost.torch_ops == {"fwd": 0, "bwd": 1}
    assert set(cost.us) == set(host_cost.PASSES)
    host_cost._Stub.launches = 0
    with host_cost.stubbed():
        host_cost.pass_calls("ln", SHAPE, torch.bfloat16, "channels_last")["fwdbwd"]()
    assert host_cost._Stub.launches == 3 + 3 + 3  # the kept graph's forward, then forward and backward


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
    from normbench.kernels import launch_plan, trace

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
