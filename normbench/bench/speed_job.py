"""The speed job (`normbench-speed`): its config turned into a SpeedJob once, then one norm x
implementation timed at one shape (normbench.bench.speed) or at a model's shapes (normbench.bench.model_speed)."""

from __future__ import annotations

from pathlib import Path

import torch
from omegaconf import DictConfig

from normbench import norms, specs
from normbench.bench import clocks, model_speed, speed
from normbench.device import resolve_device
from normbench.kernels.settings import KernelSettings
from normbench.norms.impl.triton import use_kernel_settings


def spec(cfg: DictConfig) -> specs.SpeedJob:
    """The composed config as the job's frozen spec; `pass` and `speed.clocks` parsed."""
    return specs.speed_job(cfg, speed.parse_passes(cfg["pass"]), clocks.parse_clocks(cfg.speed.clocks))


def _hydra():
    from hydra.core.hydra_config import HydraConfig

    return HydraConfig.get() if HydraConfig.initialized() else None


def run(cfg: DictConfig, out_dir: Path) -> list[dict]:
    """Time the job's norm with its impl at one shape for each pass; one row per pass. With
    `shape=model`, at every input shape of a model's norm layers, and the model's whole step."""
    from hydra.types import RunMode

    job = spec(cfg)
    hc = _hydra()
    multirun = hc is not None and hc.mode == RunMode.MULTIRUN
    device = resolve_device(job.device, hc.job.num if multirun else None)
    speed.check_speed_config(job, device)
    dtype = speed.DTYPES[job.dtype]
    shape = None if job.model else speed.input_shape(job)
    speed.check_support(job, dtype, device)
    # The peak is measured once per sweep: in the sweep directory, or in a single run's own.
    peak_dir = Path(hc.sweep.dir) if multirun else Path(out_dir)
    threads = torch.get_num_threads()
    if device.type == "cpu" and job.threads:
        torch.set_num_threads(job.threads)
    try:
        with speed.retained_backward():
            if job.model:
                return model_speed.time_model(job, dtype, device, peak_dir)
            torch.manual_seed(job.seed)
            layer = norms.build_from_config(job.norm_node, shape[1], impl=job.impl, device=device, dtype=dtype)
            layer = layer.train()
            if job.impl == "triton":
                use_kernel_settings(layer, KernelSettings(cooperative=job.triton_cooperative))
            x = speed.make_input(shape, dtype, job.layout, device)
            first_call_s = speed.first_call(layer, x)  # before the peak: a bad combination fails fast
            pk = speed.peak(job, device, peak_dir)
            return speed.time_layer(job, layer, x, job.passes, pk, first_call_s, wrapper=job.impl == "native")
    finally:
        torch.set_num_threads(threads)  # the next job of a sweep in this process starts from the default
