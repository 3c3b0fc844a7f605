"""Whether the Triton kernels can run here (`unsupported`: None or the reason), and the one clear error
when they cannot (`require_runnable`: `Unsupported` with that reason).

They run on a CUDA GPU, or on the CPU under Triton's interpreter (`TRITON_INTERPRET=1`, slow: for
tests). Nothing here imports triton at module level, so `import normbench` works without it.
"""

from __future__ import annotations

import importlib.util

import torch
from torch import Tensor

from normbench.errors import Unsupported


def triton_installed() -> bool:
    return importlib.util.find_spec("triton") is not None


def interpreter_on() -> bool:
    """Triton's own switch; it is read when a kernel is decorated, so it must be set before import."""
    from triton import knobs

    return bool(knobs.runtime.interpret)


def cuda_available() -> bool:
    return torch.cuda.is_available()


DTYPES = (torch.float32, torch.float16, torch.bfloat16)  # the kernels compute in float32 and store these


def unsupported(device: torch.device | None, dtype: torch.dtype | None, *, timing: bool = False) -> str | None:
    """Why the Triton kernels cannot run on `device` with `dtype` input, or None if they can. None for
    device or dtype: not known yet. `timing`: refuse the interpreter, a correctness tool."""
    if not triton_installed():
        return "impl=triton needs the triton package: pip install triton (or pip install 'normbench[triton]')"
    if dtype is not None and dtype not in DTYPES:
        return (
            f"impl=triton computes in float32 and takes float32, float16 or bfloat16 input, got {dtype}: "
            "use impl=reference or impl=native for it"
        )
    if device is None or device.type == "cuda":
        return None
    if not interpreter_on():
        if not cuda_available():
            return (
                "impl=triton runs on a CUDA GPU, and this machine has none: use a CUDA GPU, or set "
                "TRITON_INTERPRET=1 before starting Python to run the kernels on the CPU (slow; for tests)"
            )
        return (
            f"impl=triton runs on the GPU but the input is on {device}: move the module and the "
            "input there, e.g. layer.cuda() and x.cuda() (or device=cuda)"
        )
    if timing:
        return (
            f"impl=triton on {device} runs under Triton's interpreter, a correctness tool thousands of times "
            "slower than the kernels: time it on a GPU (device=cuda), or pick impl=reference, native or compiled"
        )
    return None  # the interpreter runs every program on the host, whatever the tensors' device


def require_runnable(x: Tensor) -> None:
    """Raise Unsupported unless the Triton kernels can run on x (its device and dtype)."""
    reason = unsupported(x.device, x.dtype)
    if reason:
        raise Unsupported(reason)
