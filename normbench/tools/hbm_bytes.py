"""HBM bytes each pass really moves, read from Nsight Compute's DRAM counters, beside the traffic model.

    python -m normbench.tools.hbm_bytes results/hbm_bytes.csv                # a CUDA GPU with ncu
    python -m normbench.tools.hbm_bytes out.csv --norm gn --impl triton      # fewer cases
    python -m normbench.tools.hbm_bytes out.csv --dry-run                    # no GPU: cases and plans

`kernels.traffic` predicts, without a GPU, the bytes each plan moves from HBM given the L2. This
measures them. Each case (norm, shape, dtype, layout, impl, path, pass) runs in a process of its own
under `ncu` (NCU_FLAGS). The process builds the layer and input as the speed app does, runs the pass
twice unprofiled (Triton's JIT, the caching allocator), writes a 256 MB buffer (so the L2 holds nothing
of the pass's tensors, as do_bench's flush) and runs the pass once more between
torch.cuda.profiler.start() and stop(). The DRAM bytes of every kernel in that window are summed.

- `--cache-control none` keeps the L2 as the pass leaves it from one kernel to the next. ncu's default
  flushes it before each kernel, which would send every re-read by a later kernel of the pass (the
  split path's normalize) to DRAM.
- `--replay-mode application` reruns the whole process if the metrics need more than one pass, so no
  kernel is replayed on an L2 that its first run warmed.
- `--clock-control none` leaves the clocks as they are.

Each row holds the measured bytes, what `traffic.pass_traffic` plans for the same launches on this
GPU's SMs and L2 (impl=triton), the byte model (`speed.bytes_moved`), their ratios, and the kernels.
`kernel_ms` is their summed duration under the profiler, which serializes them: not a timing to
report. A case that fails writes its error in its row, and the next case runs; rows are written as
they come, and no case starts after `--budget-s`.
"""

from __future__ import annotations

import argparse
import csv
import glob
import json
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

METRICS = ("dram__bytes_read.sum", "dram__bytes_write.sum", "gpu__time_duration.sum")
NCU_FLAGS = (
    "--profile-from-start",
    "off",
    "--cache-control",
    "none",
    "--clock-control",
    "none",
    "--replay-mode",
    "application",
    "--print-units",
    "base",
    "--csv",
    "--metrics",
    ",".join(METRICS),
)
FIELDS = [
    "norm",
    "shape",
    "dtype",
    "layout",
    "impl",
    "path",
    "pass",
    "input_mb",
    "measured_mb",
    "read_mb",
    "write_mb",
    "planned_mb",
    "model_mb",
    "measured_over_model",
    "planned_over_model",
    "kernels",
    "kernel_ms",
    "device",
    "error",
]


@dataclass(frozen=True)
class Case:
    norm: str
    shape: str  # a name in trace.GPU_SHAPES or trace.ROW_SHAPES
    dtype: str  # a name in trace.DTYPES
    layout: str
    impl: str  # native or triton
    path: str  # triton: "auto" (the default dispatch) or "coop" (KernelSettings.cooperative on); native: "-"
    pass_: str  # fwd or bwd


def shapes() -> dict[str, tuple[int, ...]]:
    from normbench.tools import trace

    return {**trace.GPU_SHAPES, **trace.ROW_SHAPES}


# (shape, dtype, layout) measured: the headline shape in float32, both layouts; transformer rows in bf16
GRID = [
    ("resnet_c64", "fp32", "contiguous"),
    ("resnet_c64", "fp32", "channels_last"),
    ("rows_4096", "bf16", "contiguous"),
]
IMAGE_NORMS = ("bn", "gn")  # by default: the split path (bn) and the fused/looped one (gn)
PATHS = [("triton", "auto"), ("triton", "coop"), ("native", "-")]  # the open question first


def default_cases(norms=None, names=None, impls=None) -> list[Case]:
    """GRID x norms (images: IMAGE_NORMS; rows: ln only) x PATHS (rows keep their slab plans with the
    cooperative kernels on: no coop case) x forward and backward, narrowed by the filters given."""
    cases = []
    for shape, dtype, layout in GRID:
        rows = shape.startswith("rows")
        if names and shape not in names:
            continue
        for norm in norms or (("ln",) if rows else IMAGE_NORMS):
            if rows and norm != "ln":
                continue
            for impl, path in PATHS:
                if (impls and impl not in impls) or (rows and path == "coop"):
                    continue
                cases += [Case(norm, shape, dtype, layout, impl, path, p) for p in ("fwd", "bwd")]
    return cases


@dataclass
class Kernel:
    name: str
    read: float
    write: float
    ns: float


def parse_ncu_csv(text: str) -> list[Kernel]:
    """ncu --csv --print-units base output (one row per kernel and metric) as one Kernel per kernel ID,
    in launch order. Lines that are not CSV rows (==PROF== messages, the program's own) are skipped."""
    rows = list(csv.DictReader(line for line in text.splitlines() if line.startswith('"')))
    kernels: dict[str, Kernel] = {}
    for row in rows:
        key = {k.lower(): k for k in row}
        kid, name = row[key["id"]], row[key["kernel name"]]
        metric, value = row[key["metric name"]], float(row[key["metric value"]].replace(",", "") or "nan")
        k = kernels.setdefault(kid, Kernel(name, 0.0, 0.0, 0.0))
        if metric == METRICS[0]:
            k.read = value
        elif metric == METRICS[1]:
            k.write = value
        elif metric == METRICS[2]:
            k.ns = value
    return list(kernels.values())


def plan(case: Case, sms: int, l2_bytes: int) -> tuple[float, float, float]:
    """(input bytes, bytes traffic.pass_traffic plans for impl=triton on (sms, l2_bytes) or NaN, the
    byte model's bytes)."""
    import torch

    from normbench.kernels import layout
    from normbench.tools import trace, traffic

    shape, dtype = shapes()[case.shape], trace.DTYPES[case.dtype]
    planned = float("nan")
    if case.impl == "triton":
        coop = case.path == "coop"
        p = trace.trace(case.norm, shape, dtype, case.layout, plan_for=(sms, l2_bytes), cooperative=coop)[case.pass_]
        planned = traffic.pass_traffic(p, l2_bytes, layout.L2_SHARE).hbm
    size = torch.Size(shape).numel() * dtype.itemsize
    return size, planned, traffic.model_bytes(case.norm, shape, dtype, case.pass_)


def profiled_pass(case: Case, device: str = "cuda") -> None:
    """The child's work: the pass as the speed app times it, once in the profiler's window."""
    import torch

    from normbench import norms
    from normbench.bench import speed, timing
    from normbench.kernels.settings import KernelSettings
    from normbench.norms.impl.triton import use_kernel_settings
    from normbench.tools import trace

    shape, dtype = shapes()[case.shape], trace.DTYPES[case.dtype]
    options = {"groups": trace.GN_GROUPS} if case.norm == "gn" else {}
    torch.manual_seed(0)
    with speed.retained_backward():
        layer = norms.build(case.norm, shape[1], impl=case.impl, device=device, dtype=dtype, **options).train()
        if case.impl == "triton":
            use_kernel_settings(layer, KernelSettings(cooperative=case.path == "coop"))
        x = speed.make_input(shape, dtype, case.layout, torch.device(device))
        fn, grads = speed.pass_callable(layer, x, case.pass_)
        for _ in range(2):
            timing.clear_grads(grads)
            fn()
        flush = torch.empty(timing.FLUSH_BYTES // 4, dtype=torch.int32, device=device)
        flush.zero_()
        timing.clear_grads(grads)
        cuda = device.startswith("cuda")
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.profiler.start()
        fn()
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.profiler.stop()


def find_ncu(given: str | None) -> str | None:
    if given:
        return given
    installed = sorted(glob.glob("/opt/nvidia/nsight-compute/*/ncu"))  # the newest last
    return shutil.which("ncu") or (installed[-1] if installed else None)


def ncu_command(ncu: str, case: Case) -> list[str]:
    child = json.dumps(asdict(case))
    return [ncu, *NCU_FLAGS, sys.executable, "-m", "normbench.tools.hbm_bytes", "--child", child]


def measure(ncu: str, case: Case, timeout_s: float) -> tuple[list[Kernel], str]:
    """(the window's kernels, an error or "") of one case, in its own process under ncu."""
    try:
        done = subprocess.run(ncu_command(ncu, case), check=False, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return [], f"timed out after {timeout_s:.0f} s"
    kernels = parse_ncu_csv(done.stdout)
    if done.returncode != 0 or not kernels:
        tail = (done.stderr.strip() or done.stdout.strip()).splitlines()[-3:]
        return kernels, f"ncu rc {done.returncode}, {len(kernels)} kernels: {' | '.join(tail)}"[:500]
    return kernels, ""


def row(case: Case, sizes: tuple[float, float, float], kernels: list[Kernel], device: str, error: str) -> dict:
    size, planned, model = sizes
    read, write = sum(k.read for k in kernels), sum(k.write for k in kernels)
    measured = read + write if kernels and not error else float("nan")
    return {
        **{k: v for k, v in asdict(case).items() if k != "pass_"},
        "pass": case.pass_,
        "input_mb": size / 1e6,
        "measured_mb": measured / 1e6,
        "read_mb": read / 1e6,
        "write_mb": write / 1e6,
        "planned_mb": planned / 1e6,
        "model_mb": model / 1e6,
        "measured_over_model": measured / model,
        "planned_over_model": planned / model,
        "kernels": "+".join(k.name.split("(")[0] for k in kernels),
        "kernel_ms": sum(k.ns for k in kernels) / 1e6,
        "device": device,
        "error": error,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out", nargs="?", help="CSV to write (rows are appended as they come)")
    parser.add_argument("--norm", action="append", choices=("bn", "ln", "in", "gn"), help="only these norms")
    parser.add_argument("--shape", action="append", help="only these shapes (trace.GPU_SHAPES, ROW_SHAPES)")
    parser.add_argument("--impl", action="append", choices=("native", "triton"), help="only these impls")
    parser.add_argument("--ncu", help="the ncu executable (default: on the PATH, or /opt/nvidia/nsight-compute)")
    parser.add_argument("--budget-s", type=float, default=240.0, help="start no case after this many seconds")
    parser.add_argument("--case-timeout-s", type=float, default=90.0)
    parser.add_argument("--dry-run", action="store_true", help="the cases, their plans and commands; no GPU")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    opts = parser.parse_args(argv)
    if opts.child:
        fields = json.loads(opts.child)
        profiled_pass(Case(**fields))
        return 0
    if not opts.out:
        parser.error("give the CSV to write")
    cases = default_cases(opts.norm, opts.shape, opts.impl)
    if not cases:
        parser.error("no case matches these filters")
    import torch

    from normbench.kernels import layout
    from normbench.tools import trace

    dry = opts.dry_run or not torch.cuda.is_available()
    if dry:
        if not opts.dry_run:
            print("no CUDA GPU here: a dry run (plans for an H100, nothing measured)", file=sys.stderr)
        sms, l2, device, ncu = *trace.H100, "H100 (planned only)", "ncu"
    else:
        cuda = torch.device("cuda")
        sms, l2, device = layout.sm_count(cuda), layout.l2_bytes(cuda), torch.cuda.get_device_name()
        ncu = find_ncu(opts.ncu)
        if ncu is None:
            print("error: ncu (Nsight Compute) not found: give --ncu PATH", file=sys.stderr)
            return 2
    out = Path(opts.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    with out.open("w", newline="") as f:
        writer = csv.DictWriter(f, FIELDS)
        writer.writeheader()
        for case in cases:
            if time.monotonic() - start > opts.budget_s:
                print(f"budget of {opts.budget_s:.0f} s spent: {case} and later not run", file=sys.stderr)
                break
            sizes = plan(case, sms, l2)
            if dry:
                kernels, error = [], "dry run: " + " ".join(ncu_command(ncu, case)[1:])
            else:
                kernels, error = measure(ncu, case, opts.case_timeout_s)
            r = row(case, sizes, kernels, device, error)
            writer.writerow(r)
            f.flush()
            print(
                f"{case.norm} {case.shape} {case.dtype} {case.layout} {case.impl}/{case.path} {case.pass_}: "
                f"measured {r['measured_mb']:.0f} MB, planned {r['planned_mb']:.0f}, model {r['model_mb']:.0f}"
                + (f" ({error[:120]})" if error and not dry else ""),
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
