"""KernelSettings: the choices impl=triton's planning takes besides its input, passed as one value.

A layer gets them from the speed app's `triton` config node (`triton.cooperative`), a tool passes its
own (kernels.trace plans for an H100 anywhere); the plan caches key on the value, so two settings never
share a plan. Nothing here imports triton.
"""

from __future__ import annotations

from dataclasses import dataclass

from normbench.errors import UsageError

PATHS = ("looped", "coop", "split")  # what force_path may name


@dataclass(frozen=True)
class KernelSettings:
    cooperative: bool = False  # the one-read cooperative kernels where their plan fits the L2 (docs/triton.md)
    force_path: str | None = None  # one path for every shape that path can take (the tests' tiny shapes)
    # (SMs, L2 bytes): plan as if on that GPU whatever the tensors' device, so the traffic model, the
    # launch counts and the compile checks see a GPU's plans without one
    plan_for: tuple[int, int] | None = None

    def __post_init__(self):
        if self.force_path is not None and self.force_path not in PATHS:
            raise UsageError(f"force_path={self.force_path!r} is not a kernel path; choose one of: {', '.join(PATHS)}")
        if self.plan_for is not None and (len(self.plan_for) != 2 or min(self.plan_for) < 1):
            raise UsageError(f"plan_for={self.plan_for!r} must be (SMs, L2 bytes), both positive")
        # hashed once: every call's plan lookup hashes the settings
        object.__setattr__(self, "_hash", hash((self.cooperative, self.force_path, self.plan_for)))

    def __hash__(self) -> int:
        return self._hash


DEFAULT = KernelSettings()
