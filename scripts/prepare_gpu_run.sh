#!/usr/bin/env bash
# Run HERE (the CPU machine) before the device call of issue 7 (scripts/gpu_reference_run.sh).
# Only the checkout travels to the GPU machine (64 MiB in all), so this puts what the run needs into
# two git-ignored folders that the `run` call names in `carry`:
#   .whl/                        the pure-Python wheels the GPU image lacks (hydra-core, omegaconf, ...)
#                                and normbench itself, built from this checkout (rerun after any change)
#   .data/cifar10-subset.zip     a CIFAR-10 subset: the full zip (61 MiB) cannot travel
# and prints the carry list and the device command.
#
#   bash scripts/prepare_gpu_run.sh            # TRAIN_PER_CLASS=2500 TEST_PER_CLASS=1000 by default
set -euo pipefail
cd "$(dirname "$0")/.."

WHEELS=${WHEELS:-../shared/wheels/device}
SOURCE_ZIP=${SOURCE_ZIP:-../shared/data/cifar10-jpeg.zip}
# The subset: the first TRAIN_PER_CLASS train and TEST_PER_CLASS test images of each class, file names
# in sorted order -- exactly what `dataset.root=cifar10-jpeg.zip dataset.train_per_class=2500` keeps,
# so the subset can be rebuilt from the full zip anywhere. 2,500 train (half of CIFAR-10's training
# set) and all 1,000 test per class: 35,000 JPEGs, ~36 MiB stored; the full test set keeps the error
# estimates comparable with the literature's (10,000 images, ~0.5% standard error).
TRAIN_PER_CLASS=${TRAIN_PER_CLASS:-2500}
TEST_PER_CLASS=${TEST_PER_CLASS:-1000}
SUBSET=.data/cifar10-subset.zip
LIMIT_MIB=64           # the working tree that travels, carried paths included

# Both folders must be ignored by git, or they would travel twice (once as untracked files) and the
# lead could commit them by accident.
for d in .whl .data; do
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

# 2. the CIFAR-10 subset, stored uncompressed (JPEG is compressed already; stored members read fastest)
mkdir -p .data
python3 - "$SOURCE_ZIP" "$SUBSET" "$TRAIN_PER_CLASS" "$TEST_PER_CLASS" <<'EOF'
import sys, zipfile
from collections import defaultdict
from pathlib import PurePosixPath

src, dst, n_train, n_test = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
limits = {"train": n_train, "test": n_test}
with zipfile.ZipFile(src) as z:
    # <top>/<split>/<class>/<file>.jpg, as normbench.data reads it
    groups = defaultdict(list)
    for name in z.namelist():
        parts = PurePosixPath(name).parts
        if len(parts) == 4 and parts[1] in limits and name.lower().endswith(".jpg"):
            groups[parts[1], parts[2]].append(name)
    classes = sorted({c for _, c in groups})
    assert len(classes) == 10, f"expected CIFAR-10's 10 classes, found {classes}"
    tmp = dst + ".tmp"
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as out:
        for split in ("train", "test"):
            for c in classes:
                files = sorted(groups[split, c])
                assert len(files) >= limits[split], f"{split}/{c} has only {len(files)} images"
                for name in files[: limits[split]]:
                    out.writestr(z.getinfo(name), z.read(name))  # same name, date and (stored) method
import os
os.replace(tmp, dst)
print(f"subset: {dst}: first {n_train} train + {n_test} test images per class of {src} "
      f"({10 * (n_train + n_test)} images, {os.path.getsize(dst) / 2**20:.1f} MiB)")
EOF

# 3. which commit the run measures: the copy on the GPU machine may have no .git, so run.json there
#    cannot say (commit the scripts first, then prepare, so this reads clean)
echo "$(git rev-parse HEAD)$(git diff --quiet HEAD -- . ':!results' || echo +dirty)" >.data/gpu-run-source.txt
echo "source: $(cat .data/gpu-run-source.txt)"

# 4. what travels: tracked files + untracked-not-ignored files + the carried folders
tree_bytes=$( { git ls-files -z --cached --others --exclude-standard | xargs -0 -r du -cb 2>/dev/null | awk '$2=="total"{s+=$1} END{print s+0}'; } )
carry_bytes=$(du -cb .whl "$SUBSET" .data/gpu-run-source.txt | awk '$2=="total"{print $1}')
total_mib=$(( (tree_bytes + carry_bytes) / 1048576 ))
printf 'travels: checkout %.1f MiB + carry %.1f MiB = ~%d MiB of the %d MiB limit\n' \
    "$(echo "$tree_bytes/1048576" | bc -l)" "$(echo "$carry_bytes/1048576" | bc -l)" "$total_mib" "$LIMIT_MIB"
if (( total_mib > LIMIT_MIB - 8 )); then
    echo "error: too close to the ${LIMIT_MIB} MiB limit; lower TRAIN_PER_CLASS" >&2
    exit 1
fi

cat <<EOF

The device call (the run tool; see docs/gpu_reference_run.md):
  carry:     [".whl", ".data/cifar10-subset.zip", ".data/gpu-run-source.txt"]
  timeout_s: 600
  command:   bash scripts/gpu_reference_run.sh
It stops itself after BUDGET_S=540 s. To rerun some steps on the still-warm machine, e.g.:
  STEPS='cifar report' CIFAR_EPOCHS=2 bash scripts/gpu_reference_run.sh
Rehearse it here first: TINY=1 OUT=/tmp/gpu_rehearsal bash scripts/gpu_reference_run.sh
EOF
