"""`compiled` computes what `reference` computes (outputs, gradients, running statistics), and a new
batch size reuses the compiled graph instead of compiling again."""

from __future__ import annotations

import pytest
import torch
from torch._dynamo.utils import counters
from torch._functorch import config as functorch_config

from normbench import norms
from normbench.bench import speed
from normbench.norms.impl import compiled as compiled_impl

# One small shape per norm, shared by the tests below so that each norm compiles once per session.
C, SPATIAL = 8, (5, 5)
OPTIONS = {"bn": {"momentum": None}, "ln": {}, "in": {}, "gn": {"groups": 4}}
TOL = {"atol": 1e-5, "rtol": 1e-5}  # float32: both compute the same two-pass formula


def _pair(name: str, **extra):
    torch.manual_seed(0)
    options = {**OPTIONS[name], **extra}
    ref = norms.build(name, C, impl="reference", **options)
    with torch.no_grad():  # parameters away from 1 and 0, so their gradients matter
        ref.weight.uniform_(0.5, 1.5)
        ref.bias.uniform_(-0.5, 0.5)
    comp = norms.build(name, C, impl="compiled", **options)
    comp.load_state_dict(ref.state_dict())
    return ref, comp


def _step(layer, x, dy):
    x = x.clone().requires_grad_()
    y = layer(x)
    y.backward(dy)
    return y, x.grad


@pytest.mark.parametrize("name", ["bn", "ln", "in", "gn"])
def test_compiled_matches_reference(name):
    ref, comp = _pair(name)
    for n in (4, 6):  # two steps: BatchNorm's factor is 1, then 1/2 (momentum=None)
        x = torch.randn(n, C, *SPATIAL) * 3 + 1
        dy = torch.randn_like(x)
        y_ref, dx_ref = _step(ref, x, dy)
        y_comp, dx_comp = _step(comp, x, dy)
        torch.testing.assert_close(y_comp, y_ref, **TOL)
        torch.testing.assert_close(dx_comp, dx_ref, **TOL)
    torch.testing.assert_close(comp.weight.grad, ref.weight.grad, **TOL)
    torch.testing.assert_close(comp.bias.grad, ref.bias.grad, **TOL)
    if name == "bn":
        assert int(comp.num_batches_tracked) == 2
        torch.testing.assert_close(comp.running_mean, ref.running_mean, **TOL)
        torch.testing.assert_close(comp.running_var, ref.running_var, **TOL)


def test_batchnorm_eval_uses_running_statistics():
    ref, comp = _pair("bn", momentum=0.1)
    x = torch.randn(4, C, *SPATIAL) * 2 + 3
    ref(x), comp(x)  # one training step moves the running statistics away from (0, 1)
    ref.eval(), comp.eval()
    with torch.no_grad():
        torch.testing.assert_close(comp(x), ref(x), **TOL)


def test_new_batch_size_does_not_recompile():
    _, comp = _pair("gn")
    comp(torch.randn(4, C, *SPATIAL))  # compiled here, or already by the test above
    before = counters["frames"]["ok"]
    graphs = compiled_impl.configurations()
    for n in (2, 3, 7, 16):
        y = comp(torch.randn(n, C, *SPATIAL))
        assert y.shape == (n, C, *SPATIAL)
    assert counters["frames"]["ok"] == before, "a new batch size compiled a new graph"
    assert compiled_impl.configurations() == graphs


def test_channels_last_gets_its_own_graph_and_matches():
    ref, comp = _pair("gn")
    x = (torch.randn(4, C, *SPATIAL) * 3).contiguous(memory_format=torch.channels_last)
    dy = torch.randn_like(x)
    y_ref, dx_ref = _step(ref, x, dy)
    y_comp, dx_comp = _step(comp, x, dy)
    torch.testing.assert_close(y_comp, y_ref, **TOL)
    torch.testing.assert_close(dx_comp, dx_ref, **TOL)
    assert y_comp.is_contiguous(memory_format=torch.channels_last)


def test_backward_on_a_retained_graph_twice():
    """The speed job's bwd pass: backward repeated on one graph (donated buffers would forbid it), in
    the job's scope, which leaves the process's setting as it was."""
    donated = functorch_config.donated_buffer
    _, comp = _pair("ln")
    x = torch.randn(4, C, *SPATIAL, requires_grad=True)
    with speed.retained_backward():
        y = comp(x)
        dy = torch.randn_like(y)
        y.backward(dy, retain_graph=True)
        first = x.grad.clone()
        x.grad = None
        y.backward(dy, retain_graph=True)
    torch.testing.assert_close(x.grad, first)
    assert functorch_config.donated_buffer == donated


def test_graphs_never_donate_buffers_whatever_torch_is_set_to(monkeypatch):
    """compiled.py compiles every graph with donated buffers off, its own explicit choice, not a reading
    of torch's setting: a graph first compiled for training under donated_buffer=True is the one the
    speed job's scope reuses for backward on a retained graph, twice, with the same gradients."""
    from torch._inductor import compile_fx as inductor

    seen = []
    real = inductor.compile_fx

    def spy(gm, example_inputs, **kwargs):
        seen.append(functorch_config.donated_buffer)
        return real(gm, example_inputs, **kwargs)

    monkeypatch.setattr(inductor, "compile_fx", spy)
    ref, comp = _pair("gn", eps=1e-3)  # an eps of its own: a configuration no other test compiled
    x = torch.randn(4, C, *SPATIAL)
    dy = torch.randn_like(x)
    with functorch_config.patch(donated_buffer=True):
        _step(comp, x, dy)  # a training step compiles the graph
    assert seen and not any(seen)
    graphs, frames = compiled_impl.configurations(), counters["frames"]["ok"]
    with speed.retained_backward():  # torch's runtime check of retained graphs: the speed job's scope
        xc = x.clone().requires_grad_()
        y = comp(xc)
        y.backward(dy, retain_graph=True)
        first = xc.grad.clone()
        xc.grad = None
        y.backward(dy, retain_graph=True)
    assert (compiled_impl.configurations(), counters["frames"]["ok"]) == (graphs, frames)  # the same graph
    torch.testing.assert_close(xc.grad, first)
    torch.testing.assert_close(first, _step(ref, x, dy)[1], **TOL)
