#!/usr/bin/env bash
# The H100 speed reference (issue 18) in one device call, inside a fixed wall-time budget.
#
#   bash scripts/prepare_gpu_run.sh                                    # HERE first: fills .whl/
#   bash scripts/gpu_reference_run.sh                                  # THERE: the run tool's command (OUT is set)
#   TINY=1 OUT=/tmp/gpu_rehearsal bash scripts/gpu_reference_run.sh    # HERE: the same steps on the CPU, tiny sizes
#
# Speed only (accuracy runs on the CPU). Steps, in this order:
#   setup     install the carried wheels (normbench among them) into $SITE; env.txt (nvidia-smi, versions)
#   smoke     scripts/gpu_smoke_triton.py: impl=triton's dispatch (whatever layout.py picks) against
#             native at a small shape, in a short box: a kernel that hangs or fails costs this box, and
#             the steps that time triton are then dropped instead of each waiting out its own
#   warm      the triton and compiled jobs of the grid, 12 side by side with no timing (pass=fwd, 1 ms):
#             Triton's JIT and torch.compile fill their on-disk caches (~/.triton/cache,
#             /tmp/torchinductor_$USER), so the timed sweeps below load kernels instead of compiling
#   native    normbench-speed -m sweep=gpu impl=native   (48 jobs: 4 norms x 3 shapes x 2 dtypes x 2 layouts)
#   triton    the same grid, impl=triton
#   compiled  the same grid, impl=compiled
#   graph     the headline shape again, every impl, with speed.cuda_graph=true: replays of a captured
#             CUDA graph, the GPU work without Python, dispatch and launch costs (launch-bound calls)
#   rows      normbench-speed -m sweep=gpu_rows for ROWS_IMPLS: LayerNorm on (4096, 1024..16384) rows
#   check     scripts/gpu_check_triton.py: the timer's 4x cross-check, then triton vs float64 at the
#             sweep's shapes (after the sweeps, so it costs no JIT)
#   ab        scripts/gpu_path_ab.py: fwd+bwd of triton's cooperative kernels vs the split and looped
#             kernels they replace (forced), and native, at the headline shape, in one process
#   hbm       python -m normbench.kernels.hbm_bytes (not in the default STEPS: a call of its own, e.g.
#             STEPS="hbm"): each pass's DRAM bytes from ncu's counters beside the traffic model's plan
#   host      python -m normbench.kernels.host_cost: impl=triton's host (Python) time per pass on this
#             machine's CPU, launches stubbed (to set beside the CPU VM's numbers in docs/triton.md)
#   report    normbench-report over the three sweeps
# The three timed sweeps run one at a time (side by side they would share the bandwidth they
# measure), each in its own process: a kernel that wrecks the CUDA context takes one sweep down, not
# three. They share one copy-bandwidth measurement (the first sweep's, as speed.peak_gbps). Inside a
# sweep the shape varies slowest, the headline shape (resnet_c64, 205 MB in fp32) first: a box that
# cuts a sweep cuts its last shape.
#
# Every step runs under `timeout`. A step's deadline is its box plus the boxes before it, counted
# from the start, so time an early step saves goes to the later ones. Boxes (s, overridable by env):
# SETUP_S 40, WARM_S 100, NATIVE_S 60, TRITON_S 60, COMPILED_S 110, GRAPH_S 80, ROWS_S 60, CHECK_S 40,
# AB_S 60, HBM_S 240, HOST_S 30; the report
# gets what is left of BUDGET_S (560), at least REPORT_MIN_S 25. STEPS="check report" runs only those steps
# (setup always runs: a fresh machine has nothing installed).
set -uo pipefail   # no -e: a failed or cut step is logged, and the next step still runs
cd "$(dirname "$0")/.."

: "${OUT:?set OUT to the folder whose files come back (the run tool sets it)}"
export TINY=${TINY:-0}
BUDGET_S=${BUDGET_S:-$( ((TINY)) && echo 900 || echo 560 )}   # the 2-core CPU needs longer for tiny sizes
SETUP_S=${SETUP_S:-40} WARM_S=${WARM_S:-100} NATIVE_S=${NATIVE_S:-60} TRITON_S=${TRITON_S:-60}
SMOKE_S=${SMOKE_S:-90} COMPILED_S=${COMPILED_S:-110} GRAPH_S=${GRAPH_S:-80} CHECK_S=${CHECK_S:-40} AB_S=${AB_S:-60} HOST_S=${HOST_S:-30}
ROWS_S=${ROWS_S:-60} HBM_S=${HBM_S:-240}
REPORT_MIN_S=${REPORT_MIN_S:-25}
STEPS=${STEPS:-smoke warm native triton compiled graph rows check ab host report}
GRID_SHAPES=${GRID_SHAPES:-resnet_c64,sd_gn,resnet_c256}   # conf/shape names, headline first
WARM_JOBS=${WARM_JOBS:-12}            # processes compiling side by side (the GPU machine has 16 cores)
GRAPH_IMPLS=${GRAPH_IMPLS:-native,triton,compiled}   # what the graph step times
# what the rows step times (not warmed: compiled adds its compile time to the step, not to the rows)
ROWS_IMPLS=${ROWS_IMPLS:-$( ((TINY)) && echo native || echo native,triton )}
export WORK=${WORK:-results/gpu-reference}   # under results/: ignored by git
export SITE=${SITE:-$( ((TINY)) && echo /tmp/gpu_rehearsal_site || echo /tmp/site )}

export PYTHONUNBUFFERED=1 MPLBACKEND=Agg
export PYTHONPATH=$SITE PATH=$SITE/bin:$PATH
((TINY)) && export CUDA_VISIBLE_DEVICES=""   # the rehearsal must take the CPU paths even on a GPU host

rm -rf "$WORK" && mkdir -p "$WORK/logs" "$OUT"
T0=$SECONDS
LOG=$OUT/run.log
say() { echo "[$(date -u +%H:%M:%S) +$((SECONDS - T0))s] $*" | tee -a "$LOG"; }

# run_step NAME DEADLINE_S FUNCTION: FUNCTION under timeout until DEADLINE_S after the start, its
# output in $WORK/logs/NAME.log; on failure the log's tail goes to run.log. Sets RC (skipped: 125).
run_step() {
    local name=$1 deadline=$2 fn=$3 left t
    left=$((deadline - (SECONDS - T0)))
    if ((left < 10)); then say "SKIP $name: ${left}s left of its box"; RC=125; return; fi
    say "START $name (until +${deadline}s: ${left}s)"
    t=$SECONDS
    timeout -k 10 "$left" bash -c "$fn" >"$WORK/logs/$name.log" 2>&1
    RC=$?
    if ((RC == 124 || RC == 137)); then
        say "CUT $name at its box after $((SECONDS - t))s (rc $RC): what it finished is kept"
    else
        say "END $name rc=$RC after $((SECONDS - t))s"
    fi
    if ((RC != 0)); then tail -n 12 "$WORK/logs/$name.log" | sed 's/^/    | /' | tee -a "$LOG"; fi
    if ((RC != 0 && RC != 124 && RC != 137)); then FAILED+=("$name"); fi   # a cut is expected, a failure not
}
FAILED=()
wants() { [[ " $STEPS " == *" $1 "* ]]; }

# ------------------------------------------------------------------------------------------- steps
# Each is a function run in a child bash (export -f), so `timeout` can stop it and all it started.

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
    {
        echo "date: $(date -u +%FT%TZ)"
        echo "host: $(uname -n)"
        echo "source: $(cat .whl/gpu-run-source.txt 2>/dev/null || echo unknown)"
        echo "TINY=$TINY BUDGET_S=$BUDGET_S STEPS=$STEPS WARM_JOBS=$WARM_JOBS"
        python3 - <<'EOF'
import platform, torch
from importlib import metadata
print("python", platform.python_version())
for d in ("torch", "triton", "hydra-core", "omegaconf", "hydra-joblib-launcher", "normbench", "pandas", "seaborn"):
    try:
        print(d, metadata.version(d))
    except metadata.PackageNotFoundError:
        print(d, "-")
print("cuda available:", torch.cuda.is_available(), torch.version.cuda)
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print("gpu:", p.name, f"{p.total_memory / 2**30:.1f} GiB, {p.multi_processor_count} SMs, "
          f"L2 {getattr(p, 'L2_cache_size', 0) / 2**20:.0f} MiB")
EOF
        nvidia-smi || echo "nvidia-smi: not available"
        nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.max.mem,power.limit --format=csv 2>/dev/null || true
    } >"$WORK/env.txt" 2>&1
    cat "$WORK/env.txt"
    if [[ $TINY == 0 ]] && ! grep -q "cuda available: True" "$WORK/env.txt"; then
        echo "error: no CUDA GPU here; rehearse on a CPU with TINY=1" >&2
        exit 3
    fi
}

# The grid of conf/sweep/gpu.yaml, spelled out so the order is ours: shape slowest, headline first.
grid() {
    if [[ $TINY == 1 ]]; then
        echo "hydra.sweeper.params=null device=cpu shape=cpu speed.batch_size=2 speed.min_run_time=0.01" \
             "speed.min_repeats=3 speed.peak_copy_mb=16 norm=gn,bn dtype=float32,bfloat16 layout=contiguous,channels_last"
    else
        echo "hydra.sweeper.params=null shape=$GRID_SHAPES norm=gn,in,ln,bn" \
             "dtype=float32,bfloat16 layout=contiguous,channels_last"
    fi
}
impls_to_warm() {   # no triton timing on a CPU; compiled only when a step times it
    local impls=()
    [[ $TINY == 0 ]] && impls+=(triton)
    [[ " $STEPS " == *" compiled "* || (" $STEPS " == *" graph "* && $GRAPH_IMPLS == *compiled*) ]] && impls+=(compiled)
    (IFS=,; echo "${impls[*]}")
}

step_smoke() {
    if [[ $TINY == 1 ]]; then TRITON_INTERPRET=1 python3 scripts/gpu_smoke_triton.py; else python3 scripts/gpu_smoke_triton.py; fi
}

step_warm() {
    # shellcheck disable=SC2046
    normbench-speed -m sweep=gpu $(grid) impl="$(impls_to_warm)" pass=fwd speed.warmup_ms=1 speed.rep_ms=1 \
        speed.min_run_time=0.001 speed.min_repeats=1 speed.peak_gbps=1 hydra/launcher=parallel \
        hydra.launcher.n_jobs="$WARM_JOBS" hydra.callbacks.report.enabled=false hydra.sweep.dir="$WORK/warm"
}

# sweep IMPL [OVERRIDES...]: one timed sweep of the grid. The first one measures the copy bandwidth; the later ones
# take its value as speed.peak_gbps (a sweep directory must be new, so its cache file cannot be copied
# in), so every row is divided by the same roofline.
peak_arg() {
    local first
    first=$(ls "$WORK"/speed-*/peak_bandwidth.json 2>/dev/null | head -n 1)
    [[ -n $first ]] && echo "speed.peak_gbps=$(python3 -c 'import json,sys; print(next(iter(json.load(open(sys.argv[1])).values()))["peak_gbps"])' "$first")"
}
sweep() {
    # shellcheck disable=SC2046
    normbench-speed -m sweep=gpu $(grid) impl="$1" $(peak_arg) "${@:2}" hydra.sweep.dir="$WORK/speed-${SWEEP_NAME:-$1}"
}
step_native() { sweep native; }
step_triton() { [[ $TINY == 1 ]] && { echo "TINY: no triton timing on a CPU"; return 0; }; sweep triton; }
step_compiled() { sweep compiled; }
step_graph() {   # on a CPU there is no CUDA graph: the rehearsal only checks that the step is wired
    [[ $TINY == 1 ]] && { echo "TINY: no CUDA graphs on a CPU"; return 0; }
    SWEEP_NAME=graph sweep "$GRAPH_IMPLS" speed.cuda_graph=true shape=resnet_c64
}

step_rows() {   # conf/sweep/gpu_rows.yaml's grid, for ROWS_IMPLS
    local grid=(hydra.sweeper.params=null norm=ln dtype=float32,bfloat16 speed.channels=1024,2048,4096,8192,16384)
    ((TINY)) && grid=(hydra.sweeper.params=null device=cpu norm=ln dtype=float32,bfloat16 speed.batch_size=64
        speed.channels=64,128 speed.min_run_time=0.01 speed.min_repeats=3 speed.peak_copy_mb=16)
    # shellcheck disable=SC2046
    normbench-speed -m sweep=gpu_rows "${grid[@]}" impl="$ROWS_IMPLS" $(peak_arg) hydra.sweep.dir="$WORK/speed-rows"
}

step_check() {
    if [[ $TINY == 1 ]]; then
        TRITON_INTERPRET=1 python3 scripts/gpu_check_triton.py "$WORK/triton_check.csv" --tiny
    else
        python3 scripts/gpu_check_triton.py "$WORK/triton_check.csv"
    fi
}

step_ab() {
    if [[ $TINY == 1 ]]; then
        TRITON_INTERPRET=1 python3 scripts/gpu_path_ab.py "$WORK/path_ab.csv" --tiny
    else
        python3 scripts/gpu_path_ab.py "$WORK/path_ab.csv" --tune
    fi
}

step_hbm() {   # its own budget inside the box: no case starts in the box's last 40 s
    local dry=()
    ((TINY)) && dry=(--dry-run)
    python3 -m normbench.kernels.hbm_bytes "$WORK/hbm_bytes.csv" --budget-s $((HBM_S - 40)) "${dry[@]}"
}

step_host() {
    lscpu | grep -E "Model name|^CPU\(s\)|MHz" || true
    python3 -m normbench.kernels.host_cost --shape resnet_c64
}

step_report() {
    local dirs=() d
    for d in native triton compiled graph rows; do [[ -d $WORK/speed-$d ]] && dirs+=("$WORK/speed-$d"); done
    ((${#dirs[@]})) || { echo "no sweep to report"; exit 1; }
    local dev; dev=$([[ $TINY == 1 ]] && echo "CPU rehearsal (TINY=1)" || python3 -c "import torch; print(torch.cuda.get_device_name())")
    normbench-report "${dirs[@]}" --out "$WORK/report" --title "normbench speed reference: $dev"
}

export -f step_setup step_smoke step_warm step_native step_triton step_compiled step_graph step_rows step_check step_ab step_hbm step_host step_report grid impls_to_warm peak_arg sweep
export BUDGET_S STEPS WARM_JOBS GRAPH_IMPLS GRID_SHAPES ROWS_IMPLS HBM_S

# ------------------------------------------------------------------------------------------- run
say "gpu_reference_run: TINY=$TINY BUDGET_S=$BUDGET_S STEPS='$STEPS' WORK=$WORK OUT=$OUT"
run_step setup "$SETUP_S" step_setup    # always: a fresh machine has nothing installed
if ((RC != 0)); then
    say "setup failed: nothing else can run (see above)"
else
    last=$((BUDGET_S - REPORT_MIN_S))   # no step but the report may run past this
    deadline=$SETUP_S
    for step in smoke:$SMOKE_S warm:$WARM_S native:$NATIVE_S triton:$TRITON_S compiled:$COMPILED_S graph:$GRAPH_S rows:$ROWS_S \
        check:$CHECK_S ab:$AB_S hbm:$HBM_S host:$HOST_S; do
        name=${step%%:*}
        wants "$name" || continue
        deadline=$((deadline + ${step#*:}))
        ((deadline > last)) && deadline=$last
        run_step "$name" "$deadline" "step_$name"
        if [[ $name == smoke ]] && ((RC != 0)); then   # triton fails or hangs: time the rest without it
            STEPS=$(echo " $STEPS " | sed 's/ warm / /; s/ triton / /; s/ check / /; s/ ab / /')
            GRAPH_IMPLS=native,compiled ROWS_IMPLS=native
            export STEPS GRAPH_IMPLS ROWS_IMPLS
            say "smoke failed: dropped the triton steps; STEPS='$STEPS'"
        fi
    done
    wants report && run_step report "$BUDGET_S" step_report
fi

# How much of each sweep ran: a job its box stopped is `missing` in the report, but one it never
# reached is not there at all, so count them here against what Hydra launched.
for s in warm speed-native speed-triton speed-compiled speed-graph speed-rows; do
    dir=$WORK/$s
    [[ -d $dir ]] || continue
    log=$WORK/logs/${s#speed-}.log
    launched=$(grep -oE "aunching [0-9]+ jobs" "$log" 2>/dev/null | grep -oE "[0-9]+" | head -n 1)
    ok=$(find "$dir" -mindepth 2 -maxdepth 2 -name rows.csv | wc -l)
    failed=$(find "$dir" -mindepth 2 -maxdepth 2 -name failure.json | wc -l)
    say "$s: $ok of ${launched:-?} jobs measured, $failed failed"
    find "$dir" -mindepth 2 -maxdepth 2 -name failure.json | head -n 3 | while read -r f; do
        say "    $(python3 -c "import json,sys; d=json.load(open(sys.argv[1])); print(d.get('overrides'), '|', str(d.get('error') or d.get('message'))[:200])" "$f" 2>/dev/null)"
    done
done

# ------------------------------------------------------------------------------------------- pack
# At most 8 files come back, 16 MiB each, no deeper than $OUT/a/b/file: the sweeps go as one archive
# that unpacks into results/reference/<name>/, plus a few files to read at once.
have=()
for p in speed-native speed-triton speed-compiled speed-graph speed-rows report env.txt triton_check.csv path_ab.csv hbm_bytes.csv logs; do
    [[ -e $WORK/$p ]] && have+=("$p")
done
((${#have[@]})) && tar -czf "$OUT/reference.tar.gz" -C "$WORK" "${have[@]}"
for f in report/report.md report/summary.csv env.txt hbm_bytes.csv triton_check.csv path_ab.csv logs/host.log; do
    [[ -f $WORK/$f ]] || continue
    if (($(ls "$OUT" | wc -l) >= 8)); then say "$f: only in reference.tar.gz (8 files come back at most)"; continue; fi
    cp "$WORK/$f" "$OUT/"
done
for f in "$OUT"/*; do   # a file over 16 MiB does not come back
    (($(stat -c %s "$f") > 16 * 1048576)) && say "WARNING: $(basename "$f") is over 16 MiB and will not come back"
done
say "done in $((SECONDS - T0))s; failed steps: ${FAILED[*]:-none}; in \$OUT:"
ls -l "$OUT" | tee -a "$LOG"
((${#FAILED[@]} == 0))
