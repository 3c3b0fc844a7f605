"""The harness checked against itself: a pure copy and a native LayerNorm timed with every clock.

    python -m normbench.app.selfcheck --out DIR [--device auto|cpu|cuda|cuda:N] [speed.KEY=VALUE ...]

writes DIR/rows.csv (speed rows, as a job's: `normbench-report DIR` reads them) and prints one line
per check. On a GPU it exits 1 when a check fails:

* spread: a row's device clock over its repeats (graph replays) has p80 / p20 <= 1.03, for rows of
  at least 50 us (shorter ones are launch-dominated and are not held to it);
* consistency: per shape whose fwdbwd takes 50 us or more, the fwdbwd device time is within 5% of
  fwd + bwd timed apart (the wall clock of the H100 and H200 runs broke this by up to 2.2x for
  host-bound rows). The launch-bound shape's ratio is printed, not held to it.

On the CPU the same code runs (device_ms is the wall clock, bound is `device`) and the checks are
printed, not enforced: a shared CPU's times spread far more than a GPU's device clock, and nothing
in them is at stake. The overrides are the speed app's (`speed.l2=warm`, `speed.clocks=[wall,graph]`).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from normbench import norms, specs
from normbench.bench import speed, speed_job
from normbench.bench.clocks import CaptureFailed
from normbench.device import resolve_device
from normbench.errors import UsageError
from normbench.io import results

SPREAD_MAX = 1.03  # device p80 / p20, issue 25
CHECK_FROM_MS = 0.05  # rows (and fwdbwd's of a shape) this long or longer are held to the checks
SUM_TOLERANCE = 0.05  # fwdbwd within 5% of fwd + bwd
# (N, C, H, W) of the LayerNorms and MiB per copy buffer: on a GPU a row of each kind >= 50 us (102 MB
# of float32 for the large LayerNorm; an H100 reads and writes it in ~70 us) and one launch-bound row;
# on the CPU small enough to run in a second.
SHAPES = {"cuda": [(32, 256, 56, 56), (8, 64, 14, 14)], "cpu": [(4, 32, 16, 16), (2, 16, 8, 8)]}
COPY_MIB = {"cuda": 256, "cpu": 4}


def config(device: torch.device, overrides: list[str]):
    """The speed app's config for norm=ln impl=native on `device`, with the user's overrides."""
    from hydra import compose
    from hydra.errors import HydraException

    from normbench.app.cli import configs_for_compose  # the conf/ the apps compose from

    try:
        with configs_for_compose():
            cfg = compose(config_name="speed", overrides=["norm=ln", "impl=native", f"device={device}", *overrides])
    except HydraException as exc:  # an unknown key, a malformed override
        raise UsageError(f"bad override in {overrides}: {specs.one_line(exc)}") from None
    job = speed_job.spec(cfg)
    speed.check_speed_config(job, device)
    return job


def copy_row(job, device: torch.device) -> dict:
    """A copy of COPY_MIB into a buffer of its own, through the same clocks: the device's roofline."""
    shape = (COPY_MIB[device.type] * 2**20 // 4 // 1024, 1024)
    nbytes = 2 * shape[0] * shape[1] * 4  # read + write

    def make(i):
        src = torch.ones(shape, device=device)
        dst = torch.empty_like(src)
        dst.copy_(src)  # first touch: page faults are not bandwidth
        return (lambda: dst.copy_(src)), []

    timed = speed.time_pass(job.timing, make, device, "the copy", nbytes)
    gbps = nbytes / (timed["device_ms"] * 1e-3) / 1e9
    base = {k: v for k, v in speed.base_row(job, shape, device).items() if k not in job.norm_options}  # no eps
    return {
        **base,
        "norm": "copy",
        "impl": "torch",
        "pass": "copy",
        **timed,
        "bytes": nbytes,
        "gbps": gbps,
        "peak_gbps": gbps,
        "peak_method": "the self-check's copy, device clock",
        "pct_of_peak": 100.0,
    }


def measure(job, device: torch.device) -> list[dict]:
    """The copy row, then fwd, bwd and fwdbwd of a native LayerNorm at each of SHAPES."""
    copy = copy_row(job, device)
    peak = {k: copy[k] for k in ("peak_gbps", "peak_method")}
    rows = [copy]
    with speed.retained_backward():
        for shape in SHAPES[device.type]:
            torch.manual_seed(job.seed)
            layer = norms.build_from_config(job.norm_node, shape[1], impl="native", device=device).train()
            x = speed.make_input(shape, torch.float32, "contiguous", device)
            first = speed.first_call(layer, x)
            rows += speed.time_layer(job, layer, x, list(speed.PASSES), peak, first)
    return rows


def _name(r: dict) -> str:
    return f"{r['norm']} {r['pass']} {r['shape']}"


def pass_times(rows: list[dict]) -> dict[str, dict[str, float]]:
    """shape -> pass -> device ms, of the measured LayerNorm rows."""
    out: dict[str, dict[str, float]] = {}
    for r in rows:
        if r.get("status", "ok") == "ok" and r["pass"] in speed.PASSES:
            out.setdefault(r["shape"], {})[r["pass"]] = r["device_ms"]
    return out


def problems(rows: list[dict]) -> list[str]:
    """What fails the checks, one line each (empty: all pass)."""
    out = []
    for r in rows:
        if r.get("status", "ok") != "ok":
            out.append(f"{_name(r)} was not measured: {r.get('error')}")
        elif r["device_ms"] >= CHECK_FROM_MS and r["device_p80_ms"] > SPREAD_MAX * r["device_p20_ms"]:
            out.append(
                f"{_name(r)}: device p80/p20 = {r['device_p80_ms'] / r['device_p20_ms']:.3f} > {SPREAD_MAX} "
                f"({r['device_p20_ms']:.4f}-{r['device_p80_ms']:.4f} ms, clock {r['device_clock']})"
            )
    for shape, t in pass_times(rows).items():
        if len(t) == 3 and t["fwdbwd"] >= CHECK_FROM_MS:
            ratio = t["fwdbwd"] / (t["fwd"] + t["bwd"])
            if abs(ratio - 1) > SUM_TOLERANCE:
                out.append(
                    f"ln {shape}: fwdbwd {t['fwdbwd']:.4f} ms is {ratio:.3f}x fwd + bwd "
                    f"({t['fwd']:.4f} + {t['bwd']:.4f} ms), outside 1 +- {SUM_TOLERANCE}"
                )
    return out


def summary(rows: list[dict]) -> list[str]:
    """One line per row (the three clocks), then fwdbwd / (fwd + bwd) per shape."""
    lines = []
    for r in rows:
        if r.get("status", "ok") != "ok":
            continue
        h = r.get("host_us")
        host = "no host clock" if h is None or h != h else f"{h:.1f} us host"  # h != h: NaN
        lines.append(
            f"{_name(r):<28} device {r['device_ms']:.4f} ms ({r['device_clock']}, "
            f"p80/p20 {r['device_p80_ms'] / r['device_p20_ms']:.3f}), wall {r['wall_ms']:.4f} ms, {host}, "
            f"bound {r.get('bound')}"
        )
    for shape, t in pass_times(rows).items():
        if len(t) == 3:
            lines.append(f"ln {shape}: device fwdbwd / (fwd + bwd) = {t['fwdbwd'] / (t['fwd'] + t['bwd']):.3f}")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m normbench.app.selfcheck", description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, type=Path, help="directory for rows.csv")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto)")
    parser.add_argument("overrides", nargs="*", help="speed app overrides, e.g. speed.l2=warm")
    args = parser.parse_args(argv)
    try:
        device = resolve_device(args.device)
        job = config(device, args.overrides)
        start = time.perf_counter()
        rows = measure(job, device)
    except (UsageError, CaptureFailed) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    path = results.write_rows(args.out, rows)
    for line in summary(rows):
        print(line)
    found = problems(rows)
    enforced = device.type == "cuda"
    print(f"{len(rows)} rows in {time.perf_counter() - start:.1f} s -> {path}")
    if not found:
        print("self-check: all checks pass" + ("" if enforced else " (printed, not enforced, on the CPU)"))
        return 0
    for line in found:
        print(f"self-check: {line}", file=sys.stderr)
    if not enforced:
        print(f"self-check: {len(found)} check(s) off on the CPU (not enforced there)")
        return 0
    print(f"self-check FAILED: {len(found)} check(s) on {device}; rows in {path}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
