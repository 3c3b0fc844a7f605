"""The architecture's layers: no module of normbench imports one that sits above it (lazy imports inside
functions included), no import cycle, and at most MAX_FLOORS floors. A layer is a package (every module
in it, present and future) or a list of top-level modules; a new top-level module must be placed here."""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "normbench"

# Bottom to top (docs/architecture.md); a module may import its own layer and those below.
LAYERS = [
    ("base", {"normbench", "errors", "device", "workers", "plugins", "specs"}),
    ("io", {"io.*"}),
    ("kernels", {"kernels.*"}),
    ("norms", {"norms.*"}),
    ("data and models", {"data", "models"}),
    ("bench", {"bench.*"}),
    ("train", {"train.*"}),
    ("report", {"report.*"}),
    ("app", {"app.*"}),
    ("developer tools", {"tools.*"}),
]
MAX_FLOORS = 8  # the most layers one chain of imports may pass through (issue 29)
# Import cycles allowed by name: none (a new one fails the test).
CYCLES_LEFT = []


def modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name or "normbench"] = path
    return found


def layer_of(name: str) -> int | None:
    for level, (_, members) in enumerate(LAYERS):
        for member in members:
            if name == member or (member.endswith(".*") and (name + ".").startswith(member[:-1])):
                return level
    return None


def imported(path: Path) -> set[str]:
    """The normbench modules `path` imports, as names relative to the package (`from normbench.x import y`
    is x.y where y is a module, else x). Imports under `if TYPE_CHECKING:` are for annotations only and
    never run, so they are not counted."""
    known = set(modules())
    names = set()
    tree = ast.parse(path.read_text())
    for block in ast.walk(tree):
        if isinstance(block, ast.If) and "TYPE_CHECKING" in ast.unparse(block.test):
            block.body = []  # the annotations' imports; an `else:` branch still runs and still counts
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names if a.name.startswith("normbench.")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "normbench":
            parent = node.module.removeprefix("normbench").removeprefix(".")
            for a in node.names:
                sub = f"{parent}.{a.name}" if parent else a.name
                names.add("normbench." + sub if sub in known else node.module)
        elif isinstance(node, ast.ImportFrom) and node.level:
            raise AssertionError(f"{path}: relative import; normbench imports absolutely")
    return {n.removeprefix("normbench").removeprefix(".") or "normbench" for n in names}


@cache
def graph() -> dict[str, frozenset[str]]:
    """Module -> the modules it imports (a name not a module: the module it is imported from)."""
    known = modules()
    out = {}
    for name, path in known.items():
        found = set()
        for target in imported(path):
            module = target
            while module not in known:
                module = module.rpartition(".")[0] or "normbench"
            found.add(module)
        out[name] = frozenset(found - {name})
    return out


def cycles(edges: dict[str, frozenset[str]]) -> list[set[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm, iteratively)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found = []
    for start in edges:
        if start in index:
            continue
        work = [(start, iter(sorted(edges[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        while work:
            node, rest = work[-1]
            nxt = next(rest, None)
            if nxt is not None:
                if nxt not in index:
                    index[nxt] = low[nxt] = len(index)
                    stack.append(nxt)
                    work.append((nxt, iter(sorted(edges[nxt]))))
                elif nxt in stack:
                    low[node] = min(low[node], index[nxt])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                comp = set()
                while True:
                    member = stack.pop()
                    comp.add(member)
                    if member == node:
                        break
                if len(comp) > 1:
                    found.append(comp)
    return found


def floors(edges: dict[str, frozenset[str]]) -> int:
    """The most layers one chain of imports passes through (a layer's floor: 1 + the highest floor of a
    layer below it that it imports)."""
    below: dict[int, set[int]] = {}
    for name, targets in edges.items():
        below.setdefault(layer_of(name), set()).update(layer_of(t) for t in targets if layer_of(t) != layer_of(name))

    @cache
    def floor(level: int) -> int:
        return 1 + max((floor(b) for b in below.get(level, ()) if b < level), default=0)

    return max(floor(level) for level in below)


def test_every_module_has_a_layer():
    unplaced = sorted(name for name in modules() if layer_of(name) is None)
    assert not unplaced, f"place these modules in a layer of tests/test_layering.py: {unplaced}"


def test_no_module_imports_one_above_it():
    upward = []
    for name, targets in graph().items():
        for target in targets:
            if layer_of(target) > layer_of(name):
                upward.append(f"{name} ({LAYERS[layer_of(name)][0]}) imports {target} ({LAYERS[layer_of(target)][0]})")
    assert not upward, "\n".join(sorted(upward))


def test_nothing_in_the_library_imports_the_developer_tools():
    users = sorted(
        n for n, t in graph().items() if not n.startswith("tools.") and any(x.startswith("tools.") for x in t)
    )
    assert not users, f"the library imports normbench.tools: {users}"


def test_no_new_import_cycle_and_at_most_max_floors():
    found = cycles(dict(graph()))
    assert sorted(map(sorted, found)) == sorted(map(sorted, CYCLES_LEFT)), f"import cycles: {found}"
    assert floors(graph()) <= MAX_FLOORS


def test_the_checks_see_an_upward_import_a_cycle_and_the_floors(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from normbench.report import plots\n")
    assert imported(bad) == {"report.plots"} and layer_of("report.plots") > layer_of("norms.core")
    assert cycles({"a": frozenset("b"), "b": frozenset("c"), "c": frozenset("a"), "d": frozenset("a")}) == [
        {"a", "b", "c"}
    ]
    chain = {"errors": frozenset(), "io.x": frozenset({"errors"}), "app.cli": frozenset({"io.x"})}
    assert floors(chain) == 3 and floors({**chain, "app.cli": frozenset({"errors"})}) == 2
