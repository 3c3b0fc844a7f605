"""The architecture's layers: no module of normbench imports one that sits above it (lazy imports inside
functions included). A new module must be placed in a layer here, which is the point: say where it sits."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "normbench"

# Bottom to top (DESIGN.md, "Shape of the code"); a module may import its own layer and those below.
LAYERS = [
    ("base", {"errors", "schema", "specs", "provenance", "plugins", "device", "workers", "stats"}),
    (
        "kernels",
        {
            "kernels",
            "kernels.split",
            "kernels.fused",
            "kernels.coop",
            "kernels.layout",
            "kernels.settings",
            "kernels.availability",
            "kernels.launch_plan",
            "kernels.norm_function",
        },
    ),
    (
        "norms",
        {
            "norms",
            "norms.core",
            "norms.equations",
            "norms.layers",
            "norms.family",
            "norms.registry",
            "norms.reference",
            "norms.native",
            "norms.compiled",
            "norms.triton_impl",
        },
    ),
    ("data, models, rows", {"data", "models", "results", "benchmark_json", "evaluation", "swept"}),
    ("job helpers", {"timing", "clocks", "reuse", "fastpath", "optim", "lr_search"}),
    ("jobs", {"speed", "model_speed", "speed_job", "accuracy"}),
    ("reports", {"plots", "accuracy_tables", "speed_tables", "claims", "report", "compare", "callbacks"}),
    (
        "entry points and developer tools",
        {
            "cli",
            "catalog",
            "selfcheck",
            "plan",
            "kernels.trace",
            "kernels.traffic",
            "kernels.compile_check",
            "kernels.host_cost",
            "kernels.hbm_bytes",
        },
    ),
]
LEVEL = {module: level for level, (_, modules) in enumerate(LAYERS) for module in modules}


def modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        if name:
            found[name] = path
    return found


def imported(path: Path) -> set[str]:
    """The normbench modules `path` imports, as names relative to the package."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names if a.name.startswith("normbench.")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("normbench"):
            if node.module == "normbench":  # from normbench import speed, results
                names |= {f"normbench.{a.name}" for a in node.names}
            else:
                names.add(node.module)
        elif isinstance(node, ast.ImportFrom) and node.level:
            raise AssertionError(f"{path}: relative import; normbench imports absolutely")
    return {n.removeprefix("normbench.") for n in names}


def test_every_module_has_a_layer():
    unplaced = sorted(set(modules()) - set(LEVEL))
    assert not unplaced, f"place these modules in a layer of tests/test_layering.py: {unplaced}"


def test_no_module_imports_one_above_it():
    upward = []
    for name, path in modules().items():
        for found in imported(path):
            target = found if found in LEVEL else found.rsplit(".", 1)[0]  # a name imported from a module
            if LEVEL.get(target, -1) > LEVEL[name]:
                upward.append(f"{name} ({LAYERS[LEVEL[name]][0]}) imports {target} ({LAYERS[LEVEL[target]][0]})")
    assert not upward, "\n".join(upward)


def test_the_check_sees_an_upward_import(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from normbench import report\n")
    assert imported(bad) == {"report"} and LEVEL["report"] > LEVEL["norms"]
