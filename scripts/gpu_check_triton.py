"""GPU check of impl=triton (issue 6): correctness vs float64, then triton vs native vs compiled timings.

    python scripts/gpu_check_triton.py results/triton_h100.csv [--impls triton,native,compiled] [--budget-s 420]

1. Correctness: every norm x {contiguous, channels_last} x {float32, float16, bfloat16}, at a small
   shape (the slab kernels) and a large one (the streamed / split kernels as the heuristics pick them
   on this GPU): y, dx, dweight, dbias (and BatchNorm's running stats) against float64
   torch.nn.functional, with the tolerances of tests/test_triton.py.
2. Timing: triton, native and compiled at the GPU sweep's shapes (conf/shape: resnet_c64,
   resnet_c256, sd_gn, rows), float32 and bfloat16, both layouts, passes fwd, bwd and fwdbwd, with
   the speed job's own callables, byte model and timer (normbench.speed, normbench.timing: median of
   triton.testing.do_bench); GB/s and the fraction of the measured copy bandwidth. The first call of
   each configuration (torch.compile's compile, Triton's JIT) is made before timing, untimed.

Rows are appended to the CSV as they come, so a run cut short keeps what it measured; --budget-s
stops the timing part early (torch.compile costs ~10-30 s per configuration, see conf/sweep/gpu.yaml).
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import triton
from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing
from normbench import norms  # noqa: E402
from normbench.speed import bytes_moved, make_input, pass_callable  # noqa: E402
from normbench.timing import measure_copy_bandwidth, time_fn  # noqa: E402

EPS = 1e-5
OPTIONS = {"bn": {}, "ln": {}, "in": {}, "gn": {"groups": 32}}
TOL = {torch.float32: 1e-4, torch.bfloat16: 1e-2, torch.float16: 2e-3}  # as in tests/test_triton.py
CHECK_SHAPES = [(4, 64, 10, 10), (32, 128, 56, 56)]
SHAPE_CONFIGS = ["resnet_c64", "resnet_c256", "sd_gn", "rows"]  # the GPU sweep's (conf/sweep/gpu*.yaml)
FIELDS = ["section", "norm", "shape", "layout", "dtype", "impl", "quantity", "value", "ok"]


def make_check_input(shape, dtype, layout, seed=0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    x = torch.randn(shape, generator=g, device="cuda", dtype=torch.float32).mul_(2).add_(3).to(dtype)
    return x.to(memory_format=torch.channels_last) if layout == "channels_last" else x


def reference64(name, x, w, b):
    if name == "bn":
        return F.batch_norm(x, None, None, w, b, training=True, eps=EPS)
    if name == "ln":
        return F.group_norm(x, 1, w, b, EPS)
    if name == "in":
        return F.instance_norm(x, weight=w, bias=b, eps=EPS)
    return F.group_norm(x, OPTIONS["gn"]["groups"], w, b, EPS)


def max_rel_error(actual, expected):
    """max |a - e| / (max|e| + |e|): the test suite passes when this is <= its tolerance."""
    expected = expected.double()
    return ((actual.double() - expected).abs() / (expected.abs().max() + expected.abs())).max().item()


def check(write):
    for name in OPTIONS:
        for shape in CHECK_SHAPES:
            for layout in ("contiguous", "channels_last"):
                for dtype in TOL:
                    layer = norms.build(name, shape[1], impl="triton", device="cuda", dtype=dtype, **OPTIONS[name])
                    with torch.no_grad():
                        layer.weight.normal_(1.0, 0.5)
                        layer.bias.normal_()
                    x = make_check_input(shape, dtype, layout).requires_grad_()
                    y = layer(x)
                    dy = torch.randn_like(y)
                    dx, dw, db = torch.autograd.grad(y, (x, layer.weight, layer.bias), dy)
                    x64, w64, b64 = (t.detach().double().requires_grad_() for t in (x, layer.weight, layer.bias))
                    y64 = reference64(name, x64, w64, b64)
                    dx64, dw64, db64 = torch.autograd.grad(y64, (x64, w64, b64), dy.double())
                    found = {"y": (y, y64), "dx": (dx, dx64), "dweight": (dw, dw64), "dbias": (db, db64)}
                    if name == "bn":
                        dims = [0, 2, 3]
                        found["running_mean"] = (layer.running_mean, 0.1 * x64.detach().mean(dims))
                        found["running_var"] = (layer.running_var, 0.9 + 0.1 * x64.detach().var(dims))
                    for quantity, (a, e) in found.items():
                        err = max_rel_error(a, e)
                        write("check", name, shape, layout, dtype, "triton", f"max_rel_error_{quantity}", err,
                              err <= TOL[dtype])


def default_shapes():
    """The GPU sweep's shapes (conf/shape/*.yaml): ResNet stages, Stable Diffusion's GroupNorm, rows."""
    for name in SHAPE_CONFIGS:
        cfg = OmegaConf.load(ROOT / "conf" / "shape" / f"{name}.yaml")
        yield name, (cfg.batch_size, cfg.channels, *cfg.spatial)


def timing(write, impls, budget_s):
    """The speed job's own passes, byte model and timer (normbench.speed, normbench.timing)."""
    device = torch.device("cuda")
    copy_gbps = measure_copy_bandwidth(device)["peak_gbps"]
    write("time", "-", (512 * 2**20 // 4,), "contiguous", torch.float32, "copy", "GB/s", copy_gbps, True)
    start = time.time()
    for shape_name, shape in default_shapes():
        for dtype in (torch.float32, torch.bfloat16):
            for layout in ("contiguous", "channels_last") if len(shape) > 2 else ("contiguous",):
                for name in OPTIONS:
                    if name == "in" and len(shape) == 2:
                        continue  # InstanceNorm needs spatial positions
                    for impl in impls:
                        if time.time() - start > budget_s:
                            print(f"time budget of {budget_s} s spent: stopping", flush=True)
                            return
                        layer = norms.build(name, shape[1], impl=impl, device=device, dtype=dtype, **OPTIONS[name])
                        x = make_input(shape, dtype, layout, device)
                        for pass_ in ("fwd", "bwd", "fwdbwd"):
                            fn, grads = pass_callable(layer, x, pass_)
                            fn()  # torch.compile's compile and Triton's JIT happen here, untimed
                            ms = time_fn(fn, device, grad_to_none=grads).median_ms
                            gbps = bytes_moved(layer, x, pass_) / ms / 1e6
                            row = ("time", name, shape, layout, dtype, impl)
                            write(*row, f"{pass_}_ms", ms, True)
                            write(*row, f"{pass_}_GB/s", gbps, True)
                            write(*row, f"{pass_}_of_copy", gbps / copy_gbps, True)
                        del layer, x, fn, grads


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("csv", type=Path)
    parser.add_argument("--impls", default="triton,native,compiled")
    parser.add_argument("--budget-s", type=float, default=420.0, help="stop timing new configurations after this")
    parser.add_argument("--skip-check", action="store_true")
    args = parser.parse_args()
    assert torch.cuda.is_available(), "this check needs a CUDA GPU"
    args.csv.parent.mkdir(parents=True, exist_ok=True)
    failures = 0
    with args.csv.open("w", newline="") as f:
        out = csv.writer(f)
        out.writerow(FIELDS)
        out.writerow(["env", torch.cuda.get_device_name(), "", "", "", "", f"torch {torch.__version__}",
                      f"triton {triton.__version__}", True])

        def write(section, name, shape, layout, dtype, impl, quantity, value, ok):
            nonlocal failures
            failures += not ok
            out.writerow([section, name, "x".join(map(str, shape)), layout, str(dtype).replace("torch.", ""),
                          impl, quantity, f"{value:.6g}", ok])
            f.flush()
            if not ok:
                print(f"FAIL {name} {shape} {layout} {dtype} {quantity} = {value:.3g}", flush=True)

        if not args.skip_check:
            check(write)
        timing(write, args.impls.split(","), args.budget_s)
    print(f"{failures} failed checks; rows in {args.csv}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
