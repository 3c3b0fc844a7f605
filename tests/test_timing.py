"""The CPU timer: torch.utils.benchmark's blocked_autorange, topped up to min_repeats blocks."""

from __future__ import annotations

import time

from normbench.bench import timing


def test_cpu_timing_measures_a_known_duration_in_enough_blocks():
    # A 2 ms sleep: blocked_autorange gives it blocks of one call, so 0.01 s of run time alone
    # would be 5 blocks; min_repeats asks for 8.
    t = timing.time_cpu(lambda: time.sleep(2e-3), min_run_time=0.01, min_repeats=8)
    assert 2.0 <= t.median_ms < 6.0  # a sleep never ends early; a busy machine may wake it late
    assert t.p20_ms <= t.median_ms <= t.p80_ms
    assert t.repeats >= 8
    assert t.timer == "torch.utils.benchmark.Timer.blocked_autorange"


def test_cpu_timing_clears_gradients_before_every_call():
    import torch

    w = torch.ones(3, requires_grad=True)
    seen = []

    def step():
        seen.append(w.grad is None)
        (w * 2).sum().backward()

    timing.time_cpu(step, grad_to_none=[w], min_run_time=0.01, min_repeats=3)
    assert seen and all(seen)  # every call started from no gradient, as set_to_none does
