#!/usr/bin/env bash
# Run HERE (the CPU machine) before the device call (scripts/gpu_run.py, docs/gpu_reference_run.md).
# Only the checkout travels to the GPU machine (64 MiB in all), so this fills the git-ignored folders
# that the `run` call names in `carry`: .whl/, the pure-Python wheels the GPU image lacks (hydra-core,
# omegaconf, ...), normbench itself built from this checkout (rerun after any change) and
# gpu-run-source.txt, the commit measured; and .gpu-data/, the CIFAR-10 subset of
# conf/experiment/cifar10_resnet20_gpu_subset.yaml (scripts/gpu_data.py). It checks that both fit
# beside the checkout and prints the device commands.
#
#   bash scripts/prepare_gpu_run.sh
set -euo pipefail
cd "$(dirname "$0")/.."

WHEELS=${WHEELS:-../shared/wheels/device}
CIFAR=${CIFAR:-../shared/data/cifar10-jpeg.zip}   # the full set the subset is cut from

# .whl/ and .gpu-data/ must be ignored by git, or they would travel twice (once as untracked files)
# and could be committed by accident.
for d in .whl .gpu-data; do
    git check-ignore -q "$d/x" || { echo "error: $d/ is not ignored by git; add /$d/ to .gitignore" >&2; exit 1; }
done

# 1. wheels: a fresh copy, so no stale version sits beside the right one (two versions stop pip)
rm -rf .whl && mkdir -p .whl
cp "$WHEELS"/*.whl .whl/
# normbench itself as a wheel: installed there beside the others, it gives the console scripts and a
# build tied to the recorded commit, and the GPU machine needs no build tools. Built from a copy, so the checkout gets no build/.
src=$(mktemp -d)
cp -r pyproject.toml README.md normbench conf "$src/"
find "$src" -name __pycache__ -prune -exec rm -rf {} +
python3 -m pip wheel -q --no-deps --no-build-isolation --no-index -w .whl "$src"
rm -rf "$src"
echo "wheels: $(ls .whl | wc -l) files in .whl/ ($(cd .whl && ls normbench-*.whl))"

# 2. which commit the run measures: the copy on the GPU machine may have no .git, so run.json there
#    cannot say (commit the scripts first, then prepare, so this reads clean)
echo "$(git rev-parse HEAD)$(git diff --quiet HEAD -- . ':!results' || echo +dirty)" >.whl/gpu-run-source.txt
echo "source: $(cat .whl/gpu-run-source.txt)"

# 3. the accuracy run's images: the first N per class of the full zip, as the experiment says
python3 scripts/gpu_data.py --source "$CIFAR"

# 4. what travels: tracked files + untracked-not-ignored files + the carried folders, with margin
python3 scripts/gpu_data.py --check .whl .gpu-data

cat <<EOF

The speed call (the run tool; see docs/gpu_reference_run.md):
  carry:     [".whl"]
  timeout_s: 540
  command:   python3 scripts/gpu_run.py
It stops itself after 480 s (python3 scripts/gpu_run.py --dry-run prints the boxes). To rerun some
steps on the still-warm machine, e.g.:
  python3 scripts/gpu_run.py --steps host,rows
Rehearse it here first: OUT=/tmp/gpu_rehearsal python3 scripts/gpu_run.py --tiny
The accuracy call (carry [".whl", ".gpu-data"]) is in docs/accuracy.md, "On the GPU machine".
EOF
