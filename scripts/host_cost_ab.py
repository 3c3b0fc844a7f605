"""Host cost of impl=triton, this tree against an older commit, interleaved in one process (docs/triton.md).

    python scripts/host_cost_ab.py --old 5820992 --shape resnet_c64 --rounds 15

The older commit's normbench is unpacked (`git archive`) into a temporary directory as `normbench_old`
and imported beside this tree's. Per case, each round times fwd+bwd through autograd, the host
functions alone, and the empty `Floor` Function (this tree's) once each for the old and the new code,
alternating, `number` calls per timing, process CPU time (`kernels.host_cost`'s clock, allocations as
on a GPU host). A case's figure is the median over rounds; the launches are stubbed in both (the
stubs' own calls, the same in both, are not subtracted here). The load average is printed with them:
on a shared machine absolute numbers inflate, the new/old ratio per round is what carries.
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
import timeit
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def unpack_old(rev: str, into: Path) -> None:
    """normbench at `rev` as the package normbench_old under `into`, its imports renamed."""
    data = subprocess.run(["git", "archive", rev, "normbench"], cwd=ROOT, capture_output=True, check=True).stdout
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        tar.extractall(into, filter="data")
    (into / "normbench").rename(into / "normbench_old")
    for path in (into / "normbench_old").rglob("*.py"):
        text = path.read_text()
        for name in ("from normbench.", "from normbench import", "import normbench."):
            text = text.replace(name, name.replace("normbench", "normbench_old"))
        path.write_text(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--old", required=True, help="the commit to compare against (e.g. main)")
    parser.add_argument("--shape", default="resnet_c64")
    parser.add_argument("--norm", action="append", help="only these norms (repeatable)")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--number", type=int, default=20)
    opts = parser.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="host_cost_ab_"))
    unpack_old(opts.old, tmp)
    sys.path[:0] = [str(tmp), str(ROOT)]
    os.environ.setdefault("TRITON_INTERPRET", "1")
    import torch  # noqa: F401  (after the path is set)
    from normbench_old.kernels import host_cost as old

    from normbench.tools import host_cost as new
    from normbench.tools import trace

    new.caching_allocator()
    cases = [c for c in trace.sweep_cases() if c[1] == opts.shape and (not opts.norm or c[0] in opts.norm)]
    print(f"load average before: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    print(
        "| layout | dtype | norm | floor us | old fwd+bwd us | new fwd+bwd us | new/old | old host functions us "
        "| new host functions us | new/old |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    with old.stubbed():
        for norm, _, shape, dtype_name, layout_name in cases:
            dtype = trace.DTYPES[dtype_name]
            calls = {
                "old": old.pass_calls(norm, shape, dtype, layout_name),
                "new": new.pass_calls(norm, shape, dtype, layout_name),
                "floor": new.pass_calls(norm, shape, dtype, layout_name, function=new.Floor),
            }
            timed = {(v, p): [] for v in ("old", "new") for p in ("fwdbwd", "impl")}
            timed["floor", "fwdbwd"] = []
            for key in timed:  # warm-up
                for _ in range(3):
                    calls[key[0]][key[1]]()
            for _ in range(opts.rounds):
                for key in timed:
                    t = timeit.Timer(calls[key[0]][key[1]], timer=time.process_time).timeit(opts.number)
                    timed[key].append(t / opts.number * 1e6)
            ratio = {
                p: statistics.median(n / o for n, o in zip(timed["new", p], timed["old", p], strict=True))
                for p in ("fwdbwd", "impl")
            }
            med = {k: statistics.median(v) for k, v in timed.items()}
            print(
                f"| {layout_name} | {dtype_name} | {norm} | {med['floor', 'fwdbwd']:.0f} | {med['old', 'fwdbwd']:.0f} "
                f"| {med['new', 'fwdbwd']:.0f} | {ratio['fwdbwd']:.2f} | {med['old', 'impl']:.0f} "
                f"| {med['new', 'impl']:.0f} | {ratio['impl']:.2f} |",
                flush=True,
            )
    print(f"load average after: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
