"""Report text names only paths inside the sweep or the repo: a command recorded with this machine's
directories is shown with those cut to their last part, and paths inside the repo relative to it."""

from __future__ import annotations

import json
import re

from test_results import accuracy_sweep

from normbench.report import document as report


def test_shown_paths_keeps_the_repo_and_cuts_the_rest():
    inside = report.REPO / "results" / "reference" / "x"
    text = f"normbench-accuracy -m dataset.root=/data/cifar10.zip hydra.sweep.dir=/scratch/runs/s1 out={inside} a/b"
    assert report.shown_paths(text) == (
        "normbench-accuracy -m dataset.root=.../cifar10.zip hydra.sweep.dir=.../s1 out=results/reference/x a/b"
    )


def test_a_report_names_no_directory_of_this_machine(tmp_path):
    sweep = accuracy_sweep(tmp_path / "acc")
    data = tmp_path / "elsewhere" / "cifar10-jpeg.zip"
    command = f"normbench-accuracy -m dataset.root={data} hydra.sweep.dir={sweep}"
    (sweep / "run.json").write_text(json.dumps({"command": command, "cwd": str(tmp_path)}))
    text = report.build_report([sweep], tmp_path / "out").read_text()
    assert str(data) not in text and f"hydra.sweep.dir={sweep}" not in text
    assert f"dataset.root=.../cifar10-jpeg.zip hydra.sweep.dir=.../{sweep.name}" in text
    assert {str(tmp_path / p) for p in re.findall(f"{tmp_path}/([^`\\s]*)", text)} == {str(sweep)}  # the input
