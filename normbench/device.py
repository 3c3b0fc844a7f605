"""Which device a job runs on: `auto`, `cpu` or `cuda` (optionally `cuda:N`)."""

from __future__ import annotations

import os

import torch

from normbench.errors import UsageError


def resolve_device(name: str = "auto", job_index: int | None = None) -> torch.device:
    """The torch.device for `name`; `auto` is CUDA when present, else the CPU.

    On a host with several GPUs, `auto` and `cuda` spread the jobs of a parallel sweep over them:
    job i runs on GPU i mod count (unless CUDA_VISIBLE_DEVICES already pins one), so that jobs do
    not pile onto GPU 0.
    """
    name = str(name).lower()
    if name not in {"auto", "cpu", "cuda"} and not name.startswith("cuda:"):
        raise UsageError(f"unknown device {name!r}: use device=auto, device=cpu, device=cuda or device=cuda:N")
    if name == "cpu" or (name == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise UsageError(
            f"device={name} asked for CUDA, but this torch ({torch.__version__}) sees no CUDA device: "
            "run with device=cpu (or device=auto), or install a CUDA build of torch on a GPU machine"
        )
    if name.startswith("cuda:"):
        index = int(name.split(":", 1)[1])
        if index >= torch.cuda.device_count():
            raise UsageError(f"device={name}, but only {torch.cuda.device_count()} CUDA device(s) are visible")
        return torch.device(name)
    count = torch.cuda.device_count()
    if (
        job_index is None
        or count == 1
        or ("CUDA_VISIBLE_DEVICES" in os.environ and "," not in os.environ["CUDA_VISIBLE_DEVICES"])
    ):
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cuda", job_index % count)


def device_name(device: torch.device) -> str:
    """A human name for the device: the GPU's model, or the CPU's."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()


def free_memory(device: torch.device) -> int | None:
    """Bytes the device can still allocate: CUDA's free memory, or the host's MemAvailable (Linux);
    None where neither can be read."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def cpu_cores() -> int:
    """The CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1
