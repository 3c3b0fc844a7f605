"""A/B of impl=triton's kernel paths on one GPU, in one process: the default dispatch, and each of the
split, looped and cooperative (one-read) kernels forced, plus native.

    python scripts/gpu_path_ab.py results/path_ab.csv                       # on a CUDA GPU
    TRITON_INTERPRET=1 python scripts/gpu_path_ab.py out.csv --tiny         # rehearsal on the CPU

For each norm x dtype x layout at the headline shape (conf/shape/resnet_c64.yaml; --shape for
others): the fwd+bwd time of one training step (forward, then backward of a fixed dy), timed by
normbench.bench.timing.time_fn (CUDA: triton.testing.do_bench, L2 flushed before each repeat, median of
event-timed repeats), its % of the measured copy bandwidth over speed.bytes_moved, and the max
error of y and dx against native, path by path. `auto` is what the dispatch picks; `split`, `looped`
and `coop` are forced with KernelSettings.force_path (a path that cannot take a case is skipped). Then
--tune: the cooperative plan's settings (programs per SM, steps per claim, L2 share) over a small
grid, for BatchNorm float32 NCHW and LayerNorm bfloat16 channels_last. Rows are written as they come.
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing
from normbench import norms  # noqa: E402
from normbench.bench import speed  # noqa: E402
from normbench.bench.timing import measure_copy_bandwidth, time_fn  # noqa: E402
from normbench.kernels import layout  # noqa: E402
from normbench.kernels.settings import KernelSettings  # noqa: E402
from normbench.norms.impl.triton import kernel_settings, use_kernel_settings  # noqa: E402

OPTIONS = {"bn": {}, "ln": {}, "in": {}, "gn": {"groups": 32}}
TUNE_CASES = [("bn", torch.float32, "contiguous"), ("ln", torch.bfloat16, "channels_last")]
# (programs per SM, steps per claim, L2 share): the plan shrinks items, then batches, until the work in
# flight fits the L2 share, so a share over 1 lets the larger settings through to be timed
TUNE_SETTINGS = [(p, b, share) for p in (1, 2, 4) for b in (1, 4, 16) for share in (0.5, 2.0)]
TUNE_NAMES = ("COOP_PROGRAMS_PER_SM", "COOP_BATCH", "L2_SHARE")
FIELDS = ["norm", "shape", "layout", "dtype", "impl", "path", "kernels", "fwdbwd_ms", "pct_of_copy", "err_y", "err_dx"]


def step(layer, x, dy):
    def fn():
        layer(x).backward(dy)

    return fn


def max_rel(a, b):
    a, b = a.detach().float(), b.detach().float()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


def layout_of(x) -> str:
    return "contiguous" if x.is_contiguous() else "channels_last"


def kernels_of(layer, x, dy) -> str:
    """The Triton kernels one step launches (names, in order)."""
    from normbench.tools import trace

    settings = kernel_settings(layer)
    with trace.recording(run=True) as (passes, kernels):
        use_kernel_settings(layer, settings, kernels)
        layer(x).backward(dy)
    use_kernel_settings(layer, settings)
    x.grad = None
    return "+".join(dict.fromkeys(launch.name for p in passes for launch in p.launches))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("csv", type=Path)
    parser.add_argument("--shape", default="resnet_c64")
    parser.add_argument("--tiny", action="store_true", help="CPU rehearsal (TRITON_INTERPRET=1): a tiny shape")
    parser.add_argument("--tune", action="store_true", help="also time the coop plan's TUNE_SETTINGS")
    parser.add_argument("--norm", action="append", choices=list(OPTIONS), help="only these norms (repeatable)")
    args = parser.parse_args()
    device = torch.device("cpu" if args.tiny else "cuda")
    if args.tiny:
        shape = (4, 64, 6, 6)
        peak = 1.0
    else:
        cfg = OmegaConf.load(ROOT / "conf" / "shape" / f"{args.shape}.yaml")
        shape = (cfg.batch_size, cfg.channels, *cfg.spatial)
        peak = measure_copy_bandwidth(device)["peak_gbps"]
        print(f"copy bandwidth {peak:.0f} GB/s on {torch.cuda.get_device_name()}", flush=True)
    timing = {"min_run_time": 0.01, "min_repeats": 1} if args.tiny else {}
    args.csv.parent.mkdir(parents=True, exist_ok=True)
    start = time.time()
    with args.csv.open("w", newline="") as f:
        out = csv.writer(f)
        out.writerow(FIELDS)

        def emit(row):
            out.writerow(row)
            f.flush()
            print(" ".join(row), flush=True)

        def inputs(dtype, layout_name):
            g = torch.Generator(device=device).manual_seed(0)
            x = torch.randn(shape, generator=g, device=device).mul_(2).add_(3).to(dtype)
            dy = torch.randn(shape, generator=g, device=device).to(dtype)
            if layout_name == "channels_last":  # dy too, as a model's backward would hand it over
                x, dy = (t.to(memory_format=torch.channels_last) for t in (x, dy))
            return x.requires_grad_(), dy

        def reference(norm, x, dy):
            native = norms.build(norm, shape[1], impl="native", device=device, dtype=x.dtype, **OPTIONS[norm])
            x.grad = None
            y = native(x)
            y.backward(dy)
            dx, x.grad = x.grad, None
            return y.detach(), dx

        def measure(norm, x, dy, ref, impl, path, label):
            where = [norm, "x".join(map(str, shape)), layout_of(x), str(x.dtype).removeprefix("torch.")]
            try:
                layer = norms.build(norm, shape[1], impl=impl, device=device, dtype=x.dtype, **OPTIONS[norm])
                if impl == "triton":
                    use_kernel_settings(layer, KernelSettings(force_path=None if path in (None, "auto") else path))
                kernels = kernels_of(layer, x, dy) if impl == "triton" else ""
                if path in ("looped", "coop") and path not in kernels:
                    return  # those kernels cannot take this case
                y = layer(x)
                y.backward(dy)
                err_y, err_dx = max_rel(y, ref[0]), max_rel(x.grad, ref[1])
                x.grad = None
                ms = time_fn(step(layer, x, dy), device, grad_to_none=[x, *layer.parameters()], **timing).median_ms
                pct = 100 * speed.bytes_moved(layer, x, "fwdbwd") / (ms * 1e-3) / 1e9 / peak
                row = [*where, impl, label, kernels, f"{ms:.4f}", f"{pct:.1f}", f"{err_y:.2e}", f"{err_dx:.2e}"]
            except Exception as e:  # one failing path is a row, the next still runs
                row = [*where, impl, label, f"ERROR {type(e).__name__}: {str(e)[:200]}", "", "", "", ""]
            finally:
                x.grad = None
            emit(row)
            if device.type == "cuda":
                torch.cuda.empty_cache()

        for dtype in (torch.float32, torch.bfloat16):
            for layout_name in ("contiguous", "channels_last"):
                x, dy = inputs(dtype, layout_name)
                for norm in args.norm or OPTIONS:
                    ref = reference(norm, x, dy)
                    for impl, path in [("native", None)] + [("triton", p) for p in ("auto", "split", "looped", "coop")]:
                        measure(norm, x, dy, ref, impl, path, path or "")
        if args.tune:
            for norm, dtype, layout_name in TUNE_CASES:
                if args.norm and norm not in args.norm:
                    continue
                x, dy = inputs(dtype, layout_name)
                ref = reference(norm, x, dy)
                for values in TUNE_SETTINGS:
                    saved = {k: getattr(layout, k) for k in TUNE_NAMES}
                    for k, v in zip(TUNE_NAMES, values):
                        setattr(layout, k, v)
                    label = f"coop:{values[0]}/sm,batch{values[1]},share{values[2]}"
                    try:
                        measure(norm, x, dy, ref, "triton", "coop", label)
                    finally:
                        for k, v in saved.items():
                            setattr(layout, k, v)
    print(f"done in {time.time() - start:.0f} s; rows in {args.csv}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
