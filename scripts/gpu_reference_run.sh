#!/usr/bin/env bash
# Issue 7's one device call: the reference results on an H100, in a fixed wall-time budget.
#
#   bash scripts/prepare_gpu_run.sh                                    # HERE first: .whl/, the CIFAR subset
#   bash scripts/gpu_reference_run.sh                                  # THERE: the run tool's command (OUT is set)
#   TINY=1 OUT=/tmp/gpu_rehearsal bash scripts/gpu_reference_run.sh    # HERE: the same steps on CPU, tiny sizes
#
# Steps, in this order (docs/gpu_reference_run.md says what comes back and what to do with it):
#   setup     install the carried wheels and normbench itself into $SITE; env.txt (nvidia-smi, versions)
#   triton    scripts/gpu_check_triton.py: the Triton kernels vs float64 on the GPU, then a short timing
#   speed     the default GPU speed sweep (sweep=gpu) with impl=native,triton: 96 jobs
#   cifar     the GN paper's protocol on the carried CIFAR-10 subset: resnet20, bn/ln/in/gn x 2..32 per worker
#   compiled  the speed sweep with impl=compiled, as far as its box reaches (torch.compile costs ~5-30 s
#             a job, 48 jobs do not fit): last, so it takes whatever time the steps before it saved
#   report    normbench-report over the three sweeps into one report
# then the archives go to $OUT (at most 8 files come back: see the end).
#
# Every step runs under `timeout`, so one slow step cannot eat the rest. A step's deadline is the sum
# of its box and the boxes before it, counted from the start: time an early step saves goes to the
# later ones. Boxes (seconds, overridable by env): SETUP_S 60, TRITON_S 70, SPEED_S 140, CIFAR_S 170,
# COMPILED_S 60, and the report gets what is left of BUDGET_S (540 = 9 min, inside the run tool's 600 s),
# at least REPORT_MIN_S 30. Deadlines: setup +60 s, triton +130, speed +270, cifar +440, compiled +500.
# STEPS="cifar report" runs only those steps (setup always runs: a fresh machine has nothing installed).
set -uo pipefail   # no -e: a failed or cut step is logged, and the next step still runs
cd "$(dirname "$0")/.."

: "${OUT:?set OUT to the folder whose files come back (the run tool sets it)}"
export TINY=${TINY:-0}
BUDGET_S=${BUDGET_S:-$( ((TINY)) && echo 900 || echo 540 )}   # the 2-core CPU needs longer for tiny sizes
SETUP_S=${SETUP_S:-60} TRITON_S=${TRITON_S:-70} SPEED_S=${SPEED_S:-140} CIFAR_S=${CIFAR_S:-170}
COMPILED_S=${COMPILED_S:-60} REPORT_MIN_S=${REPORT_MIN_S:-30}
STEPS=${STEPS:-triton speed cifar compiled report}
# CIFAR: 3 epochs of the 25,000-image subset, one seed, is ~110 s on an H100 if a ResNet-20 step takes
# the ~5 ms that the experiment config estimates and 4 runs sharing the GPU go 2x faster than one at a
# time (12,100 steps per epoch over the 20 runs; the four K=2 runs, 4,700 steps each, are the long pole).
CIFAR_EPOCHS=${CIFAR_EPOCHS:-3}
CIFAR_SEEDS=${CIFAR_SEEDS:-0}           # e.g. 0,1
CIFAR_JOBS=${CIFAR_JOBS:-4}             # runs side by side on the one GPU: ResNet-20 is launch-bound
TRITON_TIMING_S=${TRITON_TIMING_S:-15}  # the check's own timing; the speed sweep times triton in full
export WORK=${WORK:-results/gpu-reference}   # under results/: ignored by git
export SITE=${SITE:-$( ((TINY)) && echo /tmp/gpu_rehearsal_site || echo /tmp/site )}

export PYTHONUNBUFFERED=1 MPLBACKEND=Agg
# normbench is installed into $SITE (setup) from the wheel built by the prepare script, so the run uses
# exactly the build whose commit gpu-run-source.txt records and the console scripts exist.
export PYTHONPATH=$SITE PATH=$SITE/bin:$PATH
((TINY)) && export CUDA_VISIBLE_DEVICES=""   # the rehearsal must take the CPU paths even on a GPU host

rm -rf "$WORK" && mkdir -p "$WORK/logs" "$OUT"
T0=$SECONDS
LOG=$OUT/run.log
say() { echo "[$(date -u +%H:%M:%S) +$((SECONDS - T0))s] $*" | tee -a "$LOG"; }

# run_step NAME DEADLINE_S FUNCTION: run FUNCTION under timeout until DEADLINE_S after the start,
# its output in $WORK/logs/NAME.log; on failure, the log's tail goes to run.log and stdout.
# Sets RC (skipped: 125).
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
        echo "source: $(cat .data/gpu-run-source.txt 2>/dev/null || echo unknown)"
        echo "TINY=$TINY BUDGET_S=$BUDGET_S STEPS=$STEPS CIFAR_EPOCHS=$CIFAR_EPOCHS CIFAR_SEEDS=$CIFAR_SEEDS CIFAR_JOBS=$CIFAR_JOBS"
        echo "subset: $(ls -l .data/cifar10-subset.zip 2>&1)"
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
    print("gpu:", p.name, f"{p.total_memory / 2**30:.1f} GiB, {p.multi_processor_count} SMs")
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

step_triton() {
    if [[ $TINY == 1 ]]; then
        # gpu_check_triton.py needs CUDA; on the CPU, check that the kernels run under Triton's
        # interpreter and match native on a tiny input (the test suite does this in full).
        TRITON_INTERPRET=1 python3 - "$WORK/triton_check.csv" <<'EOF'
import csv, sys, torch
from normbench import norms
rows = [("norm", "layout", "max_abs_err_y", "max_abs_err_dx", "ok")]
for name in ("bn", "ln", "in", "gn"):
    for layout in ("contiguous", "channels_last"):
        opts = {"groups": 4} if name == "gn" else {}
        x = torch.randn(4, 8, 3, 5)
        x = x.contiguous(memory_format=torch.channels_last) if layout == "channels_last" else x
        out = []
        for impl in ("triton", "native"):
            xi = x.clone().requires_grad_()
            y = norms.build(name, 8, impl=impl, **opts)(xi)
            y.backward(torch.ones_like(y) * torch.arange(y.numel()).reshape(y.shape) % 7)
            out.append((y.detach(), xi.grad))
        ey, edx = ((a - b).abs().max().item() for a, b in zip(*out))
        rows.append((name, layout, ey, edx, ey < 1e-4 and edx < 1e-4))
with open(sys.argv[1], "w", newline="") as f:
    csv.writer(f).writerows(rows)
for r in rows:
    print(*r)
sys.exit(0 if all(r[-1] for r in rows[1:]) else 1)
EOF
    else
        python3 scripts/gpu_check_triton.py "$WORK/triton_check.csv" --impls triton,native --budget-s "$TRITON_TIMING_S"
    fi
}

# The default GPU sweep (conf/sweep/gpu.yaml) with the norms listed gn first: if its box cuts it,
# what is lost is the end of the list (bn), not GroupNorm, the reason the triton kernels exist.
step_speed() {
    local tiny=()
    [[ $TINY == 1 ]] && tiny=(device=cpu shape=cpu speed.batch_size=2 speed.min_run_time=0.01
                             speed.min_repeats=3 speed.peak_copy_mb=16)
    local impls; impls=$([[ $TINY == 1 ]] && echo native || echo native,triton)
    normbench-speed -m sweep=gpu impl="$impls" norm=gn,in,ln,bn "${tiny[@]}" \
        hydra.sweep.dir="$WORK/speed-native-triton"
}

# impl=compiled in its own sweep, the last step: each job compiles anew (new shape, dtype or layout),
# so the whole grid (48 jobs) does not fit; the box keeps what it reached, in the order gn, in, ln, bn
# (dtype, then layout, then shape inside each norm). run.log counts the jobs measured.
step_compiled() {
    local tiny=()
    [[ $TINY == 1 ]] && tiny=(device=cpu shape=cpu speed.batch_size=2 speed.min_run_time=0.01
                             speed.min_repeats=3 speed.peak_copy_mb=16 dtype=float32 layout=contiguous)
    local norms_; norms_=$([[ $TINY == 1 ]] && echo gn,in || echo gn,in,ln,bn)
    normbench-speed -m sweep=gpu impl=compiled norm="$norms_" "${tiny[@]}" \
        hydra.sweep.dir="$WORK/speed-compiled"
}

# The GN paper's Figure 1 protocol (conf/experiment/gn_figure1_cifar10.yaml: 8 workers, LR scaled
# from 0.1 per 128, zero-init residuals) on the carried subset. hydra.sweeper.params=null drops the
# experiment's grid so that the one given here sets the order: the per-worker batch first, so the
# four long K=2 runs start at once and the short K=32 ones fill in at the end.
step_cifar() {
    local tiny=()
    [[ $TINY == 1 ]] && tiny=(device=cpu dataset.train_per_class=30 dataset.test_per_class=10
                             accuracy.cpu_threads=1 accuracy.precise_bn_samples=256)
    local jobs; jobs=$([[ $TINY == 1 ]] && echo 2 || echo "$CIFAR_JOBS")
    local epochs; epochs=$([[ $TINY == 1 ]] && echo 1 || echo "$CIFAR_EPOCHS")
    normbench-accuracy -m +experiment=gn_figure1_cifar10 dataset.root=.data/cifar10-subset.zip \
        hydra.sweeper.params=null accuracy.batch_size=2,4,8,16,32 norm=bn,ln,in,gn seed="$CIFAR_SEEDS" \
        accuracy.epochs="$epochs" hydra.launcher.n_jobs="$jobs" "${tiny[@]}" \
        hydra.sweep.dir="$WORK/accuracy-cifar10"
}

step_report() {
    local dirs=() d
    for d in speed-native-triton speed-compiled accuracy-cifar10; do
        [[ -d $WORK/$d ]] && dirs+=("$WORK/$d")
    done
    ((${#dirs[@]})) || { echo "no sweep to report"; exit 1; }
    local dev; dev=$([[ $TINY == 1 ]] && echo "CPU rehearsal (TINY=1)" || python3 -c "import torch; print(torch.cuda.get_device_name())")
    normbench-report "${dirs[@]}" --out "$WORK/report" --title "normbench reference: $dev"
}

export -f step_setup step_triton step_speed step_compiled step_cifar step_report
export BUDGET_S STEPS CIFAR_EPOCHS CIFAR_SEEDS CIFAR_JOBS TRITON_TIMING_S

# ------------------------------------------------------------------------------------------- run
say "gpu_reference_run: TINY=$TINY BUDGET_S=$BUDGET_S STEPS='$STEPS' WORK=$WORK OUT=$OUT"
run_step setup "$SETUP_S" step_setup    # always: a fresh machine has nothing installed
if ((RC != 0)); then
    say "setup failed: nothing else can run (see above)"
else
    last=$((BUDGET_S - REPORT_MIN_S))   # no step but the report may run past this
    deadline=$SETUP_S
    for step in triton:$TRITON_S speed:$SPEED_S cifar:$CIFAR_S compiled:$COMPILED_S; do
        name=${step%%:*}
        deadline=$((deadline + ${step#*:}))
        ((deadline > last)) && deadline=$last
        wants "$name" && run_step "$name" "$deadline" "step_$name"
    done
    wants report && run_step report "$BUDGET_S" step_report
fi

# How much of each sweep ran: a job its box stopped is `missing` in the report, but one it never
# reached is not there at all, so count them here against what Hydra launched.
for s in speed:speed-native-triton compiled:speed-compiled cifar:accuracy-cifar10; do
    dir=$WORK/${s#*:}
    [[ -d $dir ]] || continue
    launched=$(grep -oE "aunching [0-9]+ jobs" "$WORK/logs/${s%%:*}.log" | grep -oE "[0-9]+" | head -n 1)
    ok=$(find "$dir" -mindepth 2 -maxdepth 2 -name rows.csv | wc -l)
    failed=$(find "$dir" -mindepth 2 -maxdepth 2 -name failure.json | wc -l)
    say "${s#*:}: $ok of ${launched:-?} jobs measured, $failed failed"
done

# ------------------------------------------------------------------------------------------- pack
# At most 8 files come back, 16 MiB each, no deeper than $OUT/a/b/file: the sweeps go as archives
# that unpack side by side (tar -xzf X -C results/reference/<name>), plus a few files to read at once.
pack() {  # pack ARCHIVE PATH... (paths under $WORK; missing ones skipped)
    local archive=$1 have=() p; shift
    for p in "$@"; do [[ -e $WORK/$p ]] && have+=("$p"); done
    ((${#have[@]})) && tar -czf "$OUT/$archive" -C "$WORK" "${have[@]}"
}
pack speed.tar.gz speed-native-triton speed-compiled
pack accuracy.tar.gz accuracy-cifar10
pack report.tar.gz report env.txt triton_check.csv logs
for f in report/report.md env.txt triton_check.csv; do [[ -f $WORK/$f ]] && cp "$WORK/$f" "$OUT/"; done
for f in "$OUT"/*; do   # a file over 16 MiB does not come back
    (($(stat -c %s "$f") > 16 * 1048576)) && say "WARNING: $(basename "$f") is over 16 MiB and will not come back"
done
say "done in $((SECONDS - T0))s; failed steps: ${FAILED[*]:-none}; in \$OUT:"
ls -l "$OUT" | tee -a "$LOG"
((${#FAILED[@]} == 0))
