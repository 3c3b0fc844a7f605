#!/usr/bin/env bash
# Run HERE (the CPU machine) before the device call (scripts/gpu_run.py, docs/gpu_reference_run.md).
# Only the checkout travels to the GPU machine (64 MiB in all), so this fills the git-ignored folder
# .whl/ that the `run` call names in `carry`: the pure-Python wheels the GPU image lacks (hydra-core,
# omegaconf, ...), normbench itself built from this checkout (rerun after any change), and
# gpu-run-source.txt, the commit measured. It prints the device command.
#
#   bash scripts/prepare_gpu_run.sh
set -euo pipefail
cd "$(dirname "$0")/.."

WHEELS=${WHEELS:-../shared/wheels/device}
LIMIT_MIB=64           # the working tree that travels, carried paths included

# .whl/ must be ignored by git, or it would travel twice (once as untracked files) and could be
# committed by accident.
git check-ignore -q .whl/x || { echo "error: .whl/ is not ignored by git; add /.whl/ to .gitignore" >&2; exit 1; }

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

# 3. what travels: tracked files + untracked-not-ignored files + the carried folders
tree_bytes=$( { git ls-files -z --cached --others --exclude-standard | xargs -0 -r du -cb 2>/dev/null | awk '$2=="total"{s+=$1} END{print s+0}'; } )
carry_bytes=$(du -cb .whl | awk '$2=="total"{print $1}')
total_mib=$(( (tree_bytes + carry_bytes) / 1048576 ))
printf 'travels: checkout %.1f MiB + carry %.1f MiB = ~%d MiB of the %d MiB limit\n' \
    "$(echo "$tree_bytes/1048576" | bc -l)" "$(echo "$carry_bytes/1048576" | bc -l)" "$total_mib" "$LIMIT_MIB"
if (( total_mib > LIMIT_MIB - 8 )); then
    echo "error: too close to the ${LIMIT_MIB} MiB limit" >&2
    exit 1
fi

cat <<EOF

The device call (the run tool; see docs/gpu_reference_run.md):
  carry:     [".whl"]
  timeout_s: 540
  command:   python3 scripts/gpu_run.py
It stops itself after 480 s (python3 scripts/gpu_run.py --dry-run prints the boxes). To rerun some
steps on the still-warm machine, e.g.:
  python3 scripts/gpu_run.py --steps host,rows
Rehearse it here first: OUT=/tmp/gpu_rehearsal python3 scripts/gpu_run.py --tiny
EOF
