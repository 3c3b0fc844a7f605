"""CI runs every README command (scripts/readme_commands.py): each one the README shows has a tiny
config there, and the script knows no command the README no longer shows."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("readme_commands", ROOT / "scripts" / "readme_commands.py")
readme = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(readme)


def test_every_readme_command_has_a_tiny_config_and_no_other():
    commands = readme.readme_commands((ROOT / "README.md").read_text())
    assert sorted(commands) == sorted(readme.TINY)


def test_commands_are_read_from_blocks_and_prose_with_placeholders_filled():
    text = """
```bash
pip install -e . && normbench-accuracy -m         # main job
pytest                                             # the tests
normbench-report results/accuracy-sweep/<stamp>    # a comment
```
Run `normbench-accuracy -m
+experiment=seed_claims` and see `normbench-report PATH... [--out DIR]`.
"""
    assert readme.readme_commands(text) == [
        "normbench-accuracy -m",
        "normbench-report {accuracy_sweep}",
        "normbench-accuracy -m +experiment=seed_claims",
    ]


def test_placeholders_are_filled_and_a_hydra_dicts_braces_kept():
    values = {"accuracy_sweep": "results/accuracy-sweep/tiny"}
    arg = "accuracy.lr_search={grid:[0.1,0.2],seeds:3}"
    assert readme.fill(arg, values) == arg
    assert readme.fill("{accuracy_sweep}/0", values) == "results/accuracy-sweep/tiny/0"
