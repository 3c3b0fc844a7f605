"""torch.compile of a user's model holding normbench norms: for each implementation, a small conv
model with every norm that has it gives eager's outputs, gradients and running statistics.

reference, native and compiled are traced into the user's graph (compiled runs the reference's ops
there: a compile cannot call another); triton is a graph break and runs eagerly. Batch Renormalization
and BatchNorm with momentum=None read a step count on the host, a graph break too. One model per
implementation keeps this to a few compiles (aot_eager: no code generation, for a 2-core CI).
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from normbench import norms
from normbench.kernels import availability
from normbench.norms.impl import compiled as compiled_impl

C = 4
OPTIONS = {"gn": {"groups": 2}, "evonorm_s0": {"groups": 2}, "bn": {"momentum": None}}
TOL = {"atol": 2e-5, "rtol": 2e-4}  # float32; the compiled graph may fuse and reorder the reductions


def model_with_every_norm(impl: str) -> nn.Sequential:
    torch.manual_seed(0)
    layers = []
    for name in norms.available():
        if name != "none" and impl in norms.implementations(name):
            layers += [nn.Conv2d(C, C, 3, padding=1), norms.build(name, C, impl=impl, **OPTIONS.get(name, {}))]
    model = nn.Sequential(*layers)
    with torch.no_grad():  # parameters away from 1 and 0, so their gradients matter
        for name, p in model.named_parameters():
            if not name.endswith(("0.weight", "0.bias")) and p.dim() == 1:
                p.uniform_(0.5, 1.5)
    return model


def step(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    x = x.clone().requires_grad_()
    y = model(x)
    y.backward(torch.linspace(-1, 1, y.numel()).view_as(y))
    return y.detach(), x.grad


@pytest.mark.parametrize("impl", ["reference", "native", "compiled", "triton"])
def test_compiled_model_matches_eager(impl):
    if impl == "triton" and availability.unsupported(torch.device("cpu"), torch.float32):
        pytest.skip(availability.unsupported(torch.device("cpu"), torch.float32))
    torch._dynamo.reset()
    eager = model_with_every_norm(impl)
    user = copy.deepcopy(eager)
    compiled_model = torch.compile(user, backend="aot_eager")
    gen = torch.Generator().manual_seed(1)
    # two training steps: the second sees updated running statistics; then eval mode. Eager first, so
    # that impl=compiled's own graphs exist before the user's compile runs.
    xs = [torch.randn(4, C, 5, 5, generator=gen) * 2 + 1 for _ in range(2)]
    expected = [step(eager, x) for x in xs]
    eager.eval()
    with torch.no_grad():
        expected_eval = eager(xs[-1])
    graphs = compiled_impl.configurations()
    for x, (y_eager, dx_eager) in zip(xs, expected, strict=True):
        y_user, dx_user = step(compiled_model, x)
        torch.testing.assert_close(y_user, y_eager, **TOL)
        torch.testing.assert_close(dx_user, dx_eager, **TOL)
    for (name, p_eager), p_user in zip(eager.named_parameters(), user.parameters(), strict=True):
        torch.testing.assert_close(p_user.grad, p_eager.grad, **TOL, msg=lambda m, name=name: f"{name}: {m}")
    for (name, b_eager), b_user in zip(eager.named_buffers(), user.buffers(), strict=True):
        torch.testing.assert_close(b_user, b_eager, **TOL, msg=lambda m, name=name: f"{name}: {m}")
    user.eval()
    with torch.no_grad():
        torch.testing.assert_close(compiled_model(xs[-1]), expected_eval, **TOL)
    assert compiled_impl.configurations() == graphs  # impl=compiled compiled no graph of its own
