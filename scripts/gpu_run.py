"""One device call that measures what matters (issue 25): inside 480 s on one H100, steps by value.

    python3 scripts/gpu_run.py --dry-run          # HERE: the plan and each step's box; checks they fit
    python3 scripts/gpu_run.py                    # THERE (the run tool sets OUT): the default plan
    python3 scripts/gpu_run.py --full             # the longer plan: 3 shapes, rows for compiled too,
                                                  #   the float64 check, the path A/B, a report (> 600 s)
    python3 scripts/gpu_run.py --steps host,rows  # only these steps (setup always runs)
    OUT=/tmp/gpu_rehearsal python3 scripts/gpu_run.py --tiny   # HERE: the same steps on the CPU, tiny

Default steps, in order of value (each under `timeout`; a step's deadline is its box plus the boxes
before it, counted from the start, so time an early step saves goes to the later ones):
  setup      env.txt first (GPU name, clocks, driver, torch/triton versions, whether ncu exists), then
             the carried wheels (.whl/, scripts/prepare_gpu_run.sh) installed into SITE
  selfcheck  python -m normbench.app.selfcheck --out DIR: the harness timed against itself (a copy and a
             native LayerNorm, all three clocks)
  warm       the triton and compiled jobs of the grid side by side, untimed: Triton's JIT and
             torch.compile fill their on-disk caches, so the timed sweeps load kernels
  native, triton, compiled
             bn/ln/in/gn x fp32/bf16 x NCHW/channels_last at resnet_c64 and sd_gn (>= 64 MB in both
             dtypes), pass=fwdbwd, one sweep (process) per impl; the speed app gives every row its
             three clocks on CUDA (wall_ms, device_ms, host_us)
  coop       triton with the cooperative kernels on (triton.cooperative=true), the cases they take: rows of
             their own (sweep directory speed-triton-coop)
  rows       ln on transformer rows (sweep=gpu_rows), native and triton
  host       python -m normbench.tools.host_cost on this host's CPU (launches stubbed)
Each job writes its rows when it ends, and after every step the work folder is packed into
$OUT/reference.tar.gz again, so a cut run still brings back what it measured.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BUDGET_S = 480  # one H100 call: the device's 15 minutes also pay its start and the transfers
PACK_S = 10  # the final pack and listing, after the last box
SHAPES = "resnet_c64,sd_gn"  # 205/103 MB and 134/67 MB per tensor in fp32/bf16 (conf/shape)
FULL_SHAPES = "resnet_c64,sd_gn,resnet_c256"
GRID = "norm=bn,ln,in,gn dtype=float32,bfloat16 layout=contiguous,channels_last pass=fwdbwd"
ROWS = "norm=ln dtype=float32,bfloat16 speed.channels=1024,2048,4096,8192,16384 pass=fwdbwd"
TINY_GRID = (
    "device=cpu shape=cpu speed.batch_size=2 speed.min_run_time=0.01 speed.min_repeats=3 speed.peak_copy_mb=16 "
    "norm=gn,bn dtype=float32 layout=contiguous,channels_last pass=fwdbwd"
)
TINY_ROWS = (
    "device=cpu norm=ln dtype=float32 speed.batch_size=64 speed.channels=64,128 speed.min_run_time=0.01 "
    "speed.min_repeats=3 speed.peak_copy_mb=16 pass=fwdbwd"
)
# The cooperative kernels' own rows: bn (split path by default) and gn/ln in channels_last, where
# h200-speed-rev3 timed them against the kernels they replace.
COOP = "norm=bn,gn,ln dtype=float32 layout=contiguous,channels_last pass=fwdbwd"


@dataclass(frozen=True)
class Step:
    name: str
    box_s: int
    estimate: str  # where the box comes from
    command: str  # bash, run from the checkout with WORK, SITE and the grid's variables set


def _sweep(impl: str, grid: str, name: str, speed: str = "normbench-speed", shapes: str = "$SHAPES") -> str:
    """A sweep of the grid into $WORK/speed-NAME, divided by the first timed sweep's copy bandwidth."""
    return (
        f"{speed} -m sweep=gpu hydra.sweeper.params=null shape={shapes} {grid} impl={impl} $(peak_arg) "
        f"hydra.sweep.dir=$WORK/speed-{name}"
    )


def _warm(sweep: str, grid: str, impl: str, name: str, jobs: str | int = "$WARM_JOBS") -> str:
    """The grid's jobs side by side with next to no timing, into $WORK/NAME (not speed-*: no roofline)."""
    return (
        f"normbench-speed -m {sweep} hydra.sweeper.params=null {grid} impl={impl} hydra.sweep.dir=$WORK/{name} "
        "speed.warmup_ms=1 speed.rep_ms=1 speed.min_run_time=0.001 speed.min_repeats=1 speed.peak_gbps=1 "
        f"hydra/launcher=parallel hydra.launcher.n_jobs={jobs} hydra.callbacks.report.enabled=false"
    )


def plan(full: bool = False, tiny: bool = False) -> list[Step]:
    """The steps and their boxes. Estimates from the committed runs' logs (run.log, logs/*.log):
    h100-speed-rev2 (48 jobs per sweep, pass=all, 3 shapes) and h200-speed-rev3 run1/run2 (32 per
    sweep, 2 shapes); per job about 1.5 s native and triton, 1.8 s compiled from a warm cache, plus
    ~10 s per sweep to start and measure the copy bandwidth once."""
    grid = TINY_GRID if tiny else GRID
    triton = "native" if tiny else "triton"  # no triton timing on a CPU (the interpreter is not timed)
    steps = [
        Step(
            "setup",
            30,
            "7-10 s in every logged run (pip install of 11 wheels, nvidia-smi), and env.txt's probe before it "
            "(importing torch and triton: a few s)",
            "step_setup",
        ),
        Step(
            "selfcheck",
            35,
            "new (issue 25): a copy and a native LayerNorm, three clocks, a few sizes; no log yet, so a box "
            "of 3x a CUDA start and ~10 s of timing",
            "python3 -m normbench.app.selfcheck --out $WORK/selfcheck",
        ),
        Step(
            "warm",
            75,
            "h200-speed-rev3 run1: 64 triton+compiled jobs at 2 shapes warmed in 63 s, 12 side by side; "
            "the rows' 10 triton jobs beside them on 4 more cores",
            f"{_warm('sweep=gpu', f'shape=$SHAPES {grid}', 'compiled' if tiny else 'triton,compiled', 'warm')} & "
            f"{_warm('sweep=gpu_rows', TINY_ROWS if tiny else ROWS, 'native' if tiny else 'triton', 'warm-rows', 4)}; "
            "wait",
        ),
        Step("native", 60, "32 jobs x ~1.5 s (h100-speed-rev2: 48 in 70 s) + 10 s", _sweep("native", grid, "native")),
        Step("triton", 60, "32 jobs x ~1.5 s (h100-speed-rev2: 48 in 69 s) + 10 s", _sweep(triton, grid, "triton")),
        Step(
            "compiled",
            70,
            "32 jobs x ~1.8 s (h200-speed-rev3 run1: 32 in 59 s) + 10 s",
            _sweep("compiled", grid, "compiled"),
        ),
        Step(
            "coop",
            35,
            "6 jobs; their JIT is not warmed: ~2 s per job of compile beside 1.5 s of timing (h200-speed-rev3 run2's "
            "smoke: 29 s for 8 configurations)",
            _sweep(
                triton,
                f"{grid if tiny else COOP} triton.cooperative=true",
                "triton-coop",
                shapes="$SHAPES" if tiny else "resnet_c64",
            ),
        ),
        Step(
            "rows",
            60,
            "20 jobs x ~1.5 s + 10 s (triton's row kernels warmed beside the grid's)",
            "normbench-speed -m sweep=gpu_rows hydra.sweeper.params=null "
            f"{TINY_ROWS if tiny else ROWS} impl=native,{'compiled' if full else triton} $(peak_arg) "
            "hydra.sweep.dir=$WORK/speed-rows",
        ),
        Step(
            "host",
            20,
            "13 s in h200-speed-rev3 run1 (16 cases at resnet_c64)",
            "lscpu | grep -E 'Model name|^CPU\\(s\\)|MHz' || true; "
            "python3 -m normbench.tools.host_cost --shape resnet_c64",
        ),
    ]
    if full:
        tiny_flag = " --tiny" if tiny else ""
        interp = "TRITON_INTERPRET=1 " if tiny else ""
        steps += [
            Step(
                "check",
                45,
                "13-42 s in the logged runs",
                f"{interp}python3 scripts/gpu_check_triton.py $WORK/triton_check.csv{tiny_flag}",
            ),
            Step(
                "ab",
                100,
                "73-84 s in h200-speed-rev3",
                f"{interp}python3 scripts/gpu_path_ab.py $WORK/path_ab.csv{tiny_flag or ' --tune'}",
            ),
            Step("report", 40, "25-37 s in the logged runs", "step_report"),
            Step(
                "hbm",
                240,
                "ncu replays each pass (28 cases); not yet run: its own budget inside the box",
                "python3 -m normbench.tools.hbm_bytes $WORK/hbm_bytes.csv --budget-s 200"
                + (" --dry-run" if tiny else ""),
            ),
        ]
    return steps


def budget(full: bool) -> int:
    return BUDGET_S if not full else 1200


def show(steps: list[Step], budget_s: int) -> str:
    lines = [f"{'step':<10} {'box s':>5} {'deadline':>8}  estimate"]
    deadline = 0
    for s in steps:
        deadline += s.box_s
        lines.append(f"{s.name:<10} {s.box_s:>5} {deadline:>7}s  {s.estimate}")
    lines.append(f"{'pack':<10} {PACK_S:>5} {deadline + PACK_S:>7}s  tar of the work folder into $OUT")
    total = deadline + PACK_S
    lines.append(f"total {total} s of a {budget_s} s budget ({budget_s - total} s margin)")
    return "\n".join(lines)


SHELL_FUNCTIONS = r"""
peak_arg() {   # the first timed sweep's copy bandwidth, so every row is divided by the same roofline
    local first
    first=$(ls "$WORK"/speed-*/peak_bandwidth.json 2>/dev/null | head -n 1)
    [[ -n $first ]] && echo "speed.peak_gbps=$(python3 -c 'import json,sys
print(next(iter(json.load(open(sys.argv[1])).values()))["peak_gbps"])' "$first")"
}
step_setup() {
    set -e
    rm -rf "$SITE"
    python3 -m pip install -q --no-index --no-deps --no-compile --target "$SITE" .whl/*.whl
    # normbench's wheel is built by prepare_gpu_run.sh: refuse to measure a copy older than the checkout
    if ! diff -rq -x __pycache__ -x conf normbench "$SITE/normbench" >/dev/null ||
       ! diff -rq -x __pycache__ conf "$SITE/normbench/conf" >/dev/null; then
        echo "error: .whl/normbench-*.whl differs from this checkout: rerun scripts/prepare_gpu_run.sh" >&2
        exit 4
    fi
}
step_report() {
    local dirs=() d
    for d in "$WORK"/speed-*; do [[ -d $d ]] && dirs+=("$d"); done
    ((${#dirs[@]})) || { echo "no sweep to report"; exit 1; }
    normbench-report "${dirs[@]}" --out "$WORK/report" --title "normbench speed reference"
}
"""


def write_env(path: Path, tiny: bool) -> None:
    """env.txt, before anything is installed: torch and triton are the image's."""
    probe = (
        "import platform, torch\n"
        "print('python', platform.python_version()); print('torch', torch.__version__, 'cuda', torch.version.cuda)\n"
        "try:\n import triton; print('triton', triton.__version__)\nexcept ImportError: print('triton -')\n"
        "if torch.cuda.is_available():\n"
        " p = torch.cuda.get_device_properties(0)\n"
        " print('gpu:', p.name, f'{p.total_memory / 2**30:.1f} GiB, {p.multi_processor_count} SMs, '"
        " f'L2 {getattr(p, \"L2_cache_size\", 0) / 2**20:.0f} MiB')\n"
        "else: print('gpu: none (cuda available: False)')\n"
    )
    lines = [f"date: {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}", f"host: {os.uname().nodename}"]
    source = ROOT / ".whl" / "gpu-run-source.txt"
    lines.append(f"source: {source.read_text().strip() if source.exists() else 'unknown'}")
    lines.append(f"tiny: {tiny}")
    lines.append(_output([sys.executable, "-c", probe]))
    query = "name,driver_version,clocks.sm,clocks.mem,clocks.max.sm,clocks.max.mem,power.limit,memory.total"
    smi = shutil.which("nvidia-smi")
    lines.append(_output([smi, f"--query-gpu={query}", "--format=csv"]) if smi else "nvidia-smi: not available")
    ncu = shutil.which("ncu") or next((p for p in ("/usr/local/cuda/bin/ncu",) if Path(p).exists()), None)
    lines.append(f"ncu: {ncu or 'not found'}")
    path.write_text("\n".join(lines) + "\n")


def _output(cmd: list[str]) -> str:
    try:
        done = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=60)
        return (done.stdout + done.stderr).strip()
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"{cmd[0]}: {e}"


def run_step(step: Step, left_s: float, work: Path) -> int:
    """The step's command under a deadline; its output in logs/NAME.log. 124: cut at its box."""
    out = (work / "logs" / f"{step.name}.log").open("w")
    script = SHELL_FUNCTIONS + step.command
    proc = subprocess.Popen(
        ["bash", "-c", script], cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
    )
    try:
        return proc.wait(timeout=left_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        return 124
    finally:
        out.close()


def pack(work: Path, out: Path) -> None:
    """The work folder as one archive in OUT (that unpacks into results/reference/<name>/), and env.txt."""
    tmp = out / "reference.tar.gz.part"
    with tarfile.open(tmp, "w:gz") as tar:
        for p in sorted(work.iterdir()):
            if not p.name.startswith("warm"):  # untimed: its rows are no measurement
                tar.add(p, arcname=p.name)
    tmp.replace(out / "reference.tar.gz")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="print the plan and its time boxes, run nothing")
    parser.add_argument("--full", action="store_true", help="the longer plan (needs more than one call's 600 s)")
    parser.add_argument("--tiny", action="store_true", help="rehearse on the CPU at tiny sizes")
    parser.add_argument("--steps", help="comma-separated steps to run (setup always runs)")
    parser.add_argument("--budget-s", type=int, help="seconds for the whole run (default: the plan's budget)")
    opts = parser.parse_args(argv)
    steps = plan(opts.full, opts.tiny)
    names = [s.name for s in steps]
    if opts.steps:
        wanted = opts.steps.split(",")
        unknown = sorted(set(wanted) - set(names))
        if unknown:
            print(f"error: unknown step(s) {', '.join(unknown)}: choose from {', '.join(names)}", file=sys.stderr)
            return 2
        steps = [s for s in steps if s.name == "setup" or s.name in wanted]
    budget_s = opts.budget_s or (budget(opts.full) if not opts.tiny else 1200)  # 2 CPU cores need longer
    total = sum(s.box_s for s in steps) + PACK_S
    print(show(steps, budget_s))
    if total > budget_s:
        print(f"error: the boxes add up to {total} s, over the {budget_s} s budget", file=sys.stderr)
        return 1
    if opts.dry_run:
        return 0
    if "OUT" not in os.environ:
        print("error: set OUT to the folder whose files come back (the run tool sets it)", file=sys.stderr)
        return 2
    out = Path(os.environ["OUT"])
    work = ROOT / "results" / "gpu-reference"  # under results/: ignored by git
    shutil.rmtree(work, ignore_errors=True)
    (work / "logs").mkdir(parents=True)
    out.mkdir(parents=True, exist_ok=True)
    site = os.environ.get("SITE", "/tmp/gpu_rehearsal_site" if opts.tiny else "/tmp/site")
    env = {
        **os.environ,
        "WORK": str(work),
        "SITE": site,
        "SHAPES": "cpu" if opts.tiny else FULL_SHAPES if opts.full else SHAPES,
        "WARM_JOBS": os.environ.get("WARM_JOBS", "2" if opts.tiny else "12"),
        "PYTHONPATH": site,
        "PATH": f"{site}/bin:{os.environ['PATH']}",
        "PYTHONUNBUFFERED": "1",
        "MPLBACKEND": "Agg",
    }
    if opts.tiny:
        env["CUDA_VISIBLE_DEVICES"] = ""  # the rehearsal must take the CPU paths even on a GPU host
    os.environ.update(env)
    t0 = time.monotonic()
    log = (out / "run.log").open("a")

    def say(msg: str) -> None:
        line = f"[{time.strftime('%H:%M:%S', time.gmtime())} +{time.monotonic() - t0:.0f}s] {msg}"
        print(line, flush=True)
        log.write(line + "\n")
        log.flush()

    write_env(work / "env.txt", opts.tiny)
    shutil.copy(work / "env.txt", out / "env.txt")
    say(f"gpu_run: budget {budget_s} s, steps {' '.join(s.name for s in steps)}; env.txt written")
    deadline, failed = 0, []
    for step in steps:
        deadline += step.box_s
        left = min(deadline, budget_s - PACK_S) - (time.monotonic() - t0)
        if left < 5:
            say(f"SKIP {step.name}: {left:.0f} s left of its box")
            continue
        say(f"START {step.name} ({left:.0f} s: box {step.box_s} s)")
        start = time.monotonic()
        rc = run_step(step, left, work)
        took = time.monotonic() - start
        say(f"{'CUT' if rc == 124 else 'END'} {step.name} rc={rc} after {took:.0f} s")
        if rc not in (0, 124) or (rc and step.name == "setup"):  # a cut is expected, but not of setup
            failed.append(step.name)
            for line in (work / "logs" / f"{step.name}.log").read_text().splitlines()[-12:]:
                say(f"    | {line}")
        if "setup" in failed:
            say("setup failed: nothing else can run")
            break
        pack(work, out)  # what this step measured comes back even if the call is cut later
    pack(work, out)
    say(f"done in {time.monotonic() - t0:.0f} s; failed steps: {', '.join(failed) or 'none'}")
    log.close()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
