"""The CIFAR-10 subset that travels to the lent GPU, and the check that the call's payload fits.

Only the checkout travels to the GPU machine, carried paths included, at most 64 MiB; the tracked
tree alone is tens of MiB and the full ../shared/data/cifar10-jpeg.zip 61 MiB. So the lent-GPU
accuracy run (`+experiment=cifar10_resnet20_gpu_subset`) trains on the first `train_per_class`
training and the first `test_per_class` test images of each class, in file-name order, which is the
order `dataset.train_per_class` keeps (normbench.data sorts each class's files). This script copies
exactly those JPEGs, bytes unchanged, into a zip of their own, reading the counts and the zip's path
from that experiment's config, so the config is the one place that says which images the run uses.

    python3 scripts/gpu_data.py                       # build the subset (skipped if it is up to date)
    python3 scripts/gpu_data.py --check .whl .gpu-data  # what travels with these carried paths, or an error

Standard library and PyYAML only (omegaconf's dependency): scripts/prepare_gpu_run.sh runs it with
the system python3.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import zipfile
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EXPERIMENT = ROOT / "conf" / "experiment" / "cifar10_resnet20_gpu_subset.yaml"
SOURCE = ROOT.parent / "shared" / "data" / "cifar10-jpeg.zip"
LIMIT_MIB = 64  # the run tool's limit: working tree and carried paths together
MARGIN_MIB = 8  # room for the tree to grow (new results) between this check and the call
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")  # as normbench.data reads


def subset_spec(experiment: Path = EXPERIMENT) -> tuple[Path, int, int]:
    """(the subset zip, training images per class, test images per class) from the experiment config."""
    import yaml

    dataset = yaml.safe_load(experiment.read_text())["dataset"]
    return ROOT / dataset["root"], int(dataset["train_per_class"]), int(dataset["test_per_class"])


def first_per_class(names: list[str], train_per_class: int, test_per_class: int) -> list[str]:
    """The images `dataset.train_per_class` / `test_per_class` keep: per split and class
    (<top>/<split>/<class>/<file>), the first ones in sorted order."""
    by_class: dict[tuple[str, str], list[str]] = defaultdict(list)
    for name in names:
        parts = Path(name).parts
        if len(parts) >= 3 and parts[-3] in ("train", "test") and name.lower().endswith(IMAGE_SUFFIXES):
            by_class[parts[-3], parts[-2]].append(name)
    limit = {"train": train_per_class, "test": test_per_class}
    return [n for (split, _), files in sorted(by_class.items()) for n in sorted(files)[: limit[split]]]


def write_subset(source: Path, target: Path, train_per_class: int, test_per_class: int) -> int:
    """Copy the kept images of `source` (a zip in the ImageFolder layout) into the zip `target`,
    stored (JPEG is compressed already); written whole, then renamed. Returns the images written."""
    with zipfile.ZipFile(source) as src:
        kept = first_per_class(src.namelist(), train_per_class, test_per_class)
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(target.name + ".partial")
        with zipfile.ZipFile(partial, "w", zipfile.ZIP_STORED) as out:
            for name in kept:
                out.writestr(name, src.read(name))
    partial.replace(target)
    return len(kept)


def travelling_bytes(repo: Path, carried: list[str]) -> tuple[int, int]:
    """(checkout, carried) bytes of what the run tool sends: tracked and untracked-but-not-ignored
    files, and the carried paths (files or folders)."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=repo,
        check=True,
        capture_output=True,
    ).stdout.split(b"\0")
    tree = sum(p.stat().st_size for p in (repo / n.decode() for n in listed if n) if p.is_file())
    carry = 0
    for path in (repo / c for c in carried):
        files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
        carry += sum(p.stat().st_size for p in files)
    return tree, carry


def over_limit(tree: int, carry: int, limit_mib: int = LIMIT_MIB, margin_mib: int = MARGIN_MIB) -> str | None:
    """None if `tree` + `carry` bytes fit under the limit with the margin, else the one-line error."""
    total = (tree + carry) / 2**20
    if total <= limit_mib - margin_mib:
        return None
    return (
        f"error: checkout {tree / 2**20:.1f} MiB + carried {carry / 2**20:.1f} MiB = {total:.1f} MiB, over the "
        f"{limit_mib} MiB a device call takes less {margin_mib} MiB of margin: lower dataset.train_per_class / "
        f"test_per_class in {EXPERIMENT.relative_to(ROOT)} (or carry less), then rerun scripts/prepare_gpu_run.sh"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=SOURCE, help="the full CIFAR-10 JPEG zip")
    parser.add_argument("--check", nargs="*", metavar="CARRIED", help="only check what travels with these paths")
    args = parser.parse_args(argv)
    if args.check is not None:
        tree, carry = travelling_bytes(ROOT, args.check)
        error = over_limit(tree, carry)
        if error:
            print(error, file=sys.stderr)
            return 1
        print(
            f"travels: checkout {tree / 2**20:.1f} MiB + carried {carry / 2**20:.1f} MiB = "
            f"{(tree + carry) / 2**20:.1f} MiB of the {LIMIT_MIB} MiB limit ({MARGIN_MIB} MiB kept as margin)"
        )
        return 0
    target, train_per_class, test_per_class = subset_spec()
    if not args.source.is_file():
        print(f"error: {args.source} does not exist: pass the full CIFAR-10 JPEG zip with --source", file=sys.stderr)
        return 1
    stamp = target.with_suffix(".txt")  # what the zip holds, so an up-to-date one is not rebuilt
    want = f"{args.source.resolve()} {args.source.stat().st_size} train {train_per_class} test {test_per_class}\n"
    if not (target.is_file() and stamp.is_file() and stamp.read_text() == want):
        images = write_subset(args.source, target, train_per_class, test_per_class)
        stamp.write_text(want)
        print(f"subset: {images} images ({train_per_class} train + {test_per_class} test per class) in {target}")
    print(f"subset: {target.relative_to(ROOT)}, {target.stat().st_size / 2**20:.1f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
