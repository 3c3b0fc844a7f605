"""Whether the Triton kernels can run here, and the one clear error when they cannot.

They run on a CUDA GPU, or on the CPU under Triton's interpreter (`TRITON_INTERPRET=1`, slow: for
tests). Nothing here imports triton at module level, so `import normbench` works without it.
"""

from __future__ import annotations

import importlib.util

import torch
from torch import Tensor

from normbench.errors import UsageError


def triton_installed() -> bool:
    return importlib.util.find_spec("triton") is not None


def interpreter_on() -> bool:
    """Triton's own switch; it is read when a kernel is decorated, so it must be set before import."""
    from triton import knobs

    return bool(knobs.runtime.interpret)


def cuda_available() -> bool:
    return torch.cuda.is_available()


def require_runnable(x: Tensor) -> None:
    """Raise UsageError unless a Triton kernel can run on x's device."""
    if not triton_installed():
        raise UsageError(
            "impl=triton needs the triton package: pip install triton (or pip install 'normbench[triton]')"
        )
    if interpreter_on():
        return  # the interpreter runs every program on the host, whatever the tensors' device
    if not cuda_available():
        raise UsageError(
            "impl=triton runs on a CUDA GPU, and this machine has none: use a CUDA GPU, or set "
            "TRITON_INTERPRET=1 before starting Python to run the kernels on the CPU (slow; for tests)"
        )
    if x.device.type != "cuda":
        raise UsageError(
            f"impl=triton runs on the GPU but the input is on {x.device}: move the module and the "
            "input there, e.g. layer.cuda() and x.cuda() (or device=cuda)"
        )
