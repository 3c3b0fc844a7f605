"""GPU check of impl=triton at the speed sweep's own shapes, and a cross-check of the timer.

    python scripts/gpu_check_triton.py results/triton_check.csv            # on a CUDA GPU
    TRITON_INTERPRET=1 python scripts/gpu_check_triton.py out.csv --tiny   # rehearsal on the CPU

1. Correctness: every norm x {contiguous, channels_last} x {float32, bfloat16} at the GPU sweep's
   shapes (conf/shape: resnet_c64, resnet_c256, sd_gn): y, dx, dweight, dbias (and BatchNorm's running
   statistics) against float64 torch.nn.functional, with the tolerances of tests/test_triton.py. The
   speed sweep has compiled these kernels already, so this costs little JIT. Each configuration is
   checked on its own: an exception is a failed row, and the next configuration still runs.
2. Timer cross-check: a copy and native BatchNorm's forward, each timed by normbench.bench.timing at one
   size and at 4x that size. Memory-bound work must take ~4x as long; a ratio far from 4 means the
   timer measures launch overhead, caching or something other than the kernel.

Rows are written as they come, so a run cut short keeps what it checked. Exit status 1 if any check
failed.
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing
from normbench import norms  # noqa: E402
from normbench.bench.timing import time_fn  # noqa: E402

EPS = 1e-5
OPTIONS = {"bn": {}, "ln": {}, "in": {}, "gn": {"groups": 32}}
TOL = {torch.float32: 1e-4, torch.bfloat16: 1e-2}  # as in tests/test_triton.py
SHAPE_CONFIGS = ["resnet_c64", "resnet_c256", "sd_gn"]  # conf/sweep/gpu.yaml's
TINY_SHAPES = [(4, 64, 6, 6)]
FIELDS = ["section", "norm", "shape", "layout", "dtype", "quantity", "value", "ok", "note"]
SCALING_OK = (3.0, 5.0)  # a 4x larger memory-bound call must take 3x to 5x as long


def sweep_shapes():
    for name in SHAPE_CONFIGS:
        cfg = OmegaConf.load(ROOT / "conf" / "shape" / f"{name}.yaml")
        yield (cfg.batch_size, cfg.channels, *cfg.spatial)


def make_check_input(shape, dtype, layout, device, seed=0):
    g = torch.Generator(device=device).manual_seed(seed)
    x = torch.randn(shape, generator=g, device=device, dtype=torch.float32).mul_(2).add_(3).to(dtype)
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


def check_one(name, shape, layout, dtype, device):
    """{quantity: max relative error} of impl=triton against float64 for one configuration."""
    layer = norms.build(name, shape[1], impl="triton", device=device, dtype=dtype, **OPTIONS[name])
    with torch.no_grad():
        layer.weight.normal_(1.0, 0.5)
        layer.bias.normal_()
    x = make_check_input(shape, dtype, layout, device).requires_grad_()
    y = layer(x)
    dy = torch.randn_like(y)
    dx, dw, db = torch.autograd.grad(y, (x, layer.weight, layer.bias), dy)
    x64, w64, b64 = (t.detach().double().requires_grad_() for t in (x, layer.weight, layer.bias))
    y64 = reference64(name, x64, w64, b64)
    dx64, dw64, db64 = torch.autograd.grad(y64, (x64, w64, b64), dy.double())
    found = {"y": (y, y64), "dx": (dx, dx64), "dweight": (dw, dw64), "dbias": (db, db64)}
    if name == "bn":
        dims = [0, *range(2, x.dim())]
        found["running_mean"] = (layer.running_mean, 0.1 * x64.detach().mean(dims))
        found["running_var"] = (layer.running_var, 0.9 + 0.1 * x64.detach().var(dims))
    return {q: max_rel_error(a, e) for q, (a, e) in found.items()}


def check(write, shapes, device):
    for shape in shapes:
        for name in OPTIONS:
            for dtype in TOL:
                for layout in ("contiguous", "channels_last"):
                    where = (name, "x".join(map(str, shape)), layout, str(dtype).replace("torch.", ""))
                    try:
                        errors = check_one(name, shape, layout, dtype, device)
                    except Exception as exc:
                        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
                        write("check", *where, "error", float("nan"), False, f"{type(exc).__name__}: {first}")
                        if device.type == "cuda":
                            torch.cuda.empty_cache()
                        continue
                    for quantity, err in errors.items():
                        write("check", *where, f"max_rel_error_{quantity}", err, err <= TOL[dtype], "")


def _copy(n, device):
    src, dst = torch.ones(n, device=device), torch.empty(n, device=device)
    return lambda: dst.copy_(src)


def _bn_forward(n, device):
    layer = norms.build("bn", 64, impl="native", device=device).train()
    x = torch.randn(max(1, n // (64 * 56 * 56)), 64, 56, 56, device=device)
    return lambda: layer(x)


def scaling(write, device, tiny):
    """Time a copy and bn's native forward at 1x and 4x their size: memory-bound, so ~4x the time."""
    timing = {"min_run_time": 0.05, "min_repeats": 5} if device.type == "cpu" else {}
    base = 2**20 if tiny else 64 * 2**20  # float32 elements: 4 MiB / 256 MiB per buffer
    for label, make in (("copy", _copy), ("bn_native_fwd", _bn_forward)):
        ms = []
        for n in (base, 4 * base):
            fn = make(n, device)
            fn()
            ms.append(time_fn(fn, device, **timing).median_ms)
            del fn
        ratio = ms[1] / ms[0]
        ok = SCALING_OK[0] <= ratio <= SCALING_OK[1]
        note = f"{ms[0]:.4f} ms at {base} floats, {ms[1]:.4f} ms at 4x"
        write("timer", label, f"{base}->{4 * base}", "contiguous", "float32", "time_ratio_4x", ratio, ok, note)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("csv", type=Path)
    parser.add_argument("--tiny", action="store_true", help="CPU rehearsal (TRITON_INTERPRET=1): a tiny shape")
    args = parser.parse_args()
    device = torch.device("cpu" if args.tiny else "cuda")
    if not args.tiny and not torch.cuda.is_available():
        print("error: this check needs a CUDA GPU; rehearse on the CPU with TRITON_INTERPRET=1 ... --tiny")
        return 2
    args.csv.parent.mkdir(parents=True, exist_ok=True)
    failures = 0
    start = time.time()
    with args.csv.open("w", newline="") as f:
        out = csv.writer(f)
        out.writerow(FIELDS)

        def write(section, name, shape, layout, dtype, quantity, value, ok, note):
            nonlocal failures
            failures += not ok
            out.writerow([section, name, shape, layout, dtype, quantity, f"{value:.6g}", ok, note])
            f.flush()
            print(
                f"{'ok  ' if ok else 'FAIL'} {section} {name} {shape} {layout} {dtype} {quantity} = {value:.3g} {note}",
                flush=True,
            )

        scaling(write, device, args.tiny)
        check(write, TINY_SHAPES if args.tiny else list(sweep_shapes()), device)
    print(f"{failures} failed checks in {time.time() - start:.0f} s; rows in {args.csv}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
