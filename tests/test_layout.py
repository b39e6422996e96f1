"""The layout's rules, checked on the source: imports run one way, from the top floor down
(orchestrator -> results -> experiments -> encoders.visual -> encoders.lm -> encoders.weights),
no module imports itself back through others, no private helper crosses a module, and
modules stay small. Read with ``ast``, so lazy imports inside functions count too."""

from __future__ import annotations

import ast
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("encoders", "experiments", "orchestrator", "results")
# Lower floors never import higher ones; a floor may import itself and anything below.
FLOORS = ("encoders.weights", "encoders.lm", "encoders.visual", "experiments", "results",
          "orchestrator")
MAX_LINES = 400


def modules() -> dict[str, Path]:
    out = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


MODULES = modules()


def floor(module: str) -> int:
    for rank in range(len(FLOORS) - 1, -1, -1):
        if module == FLOORS[rank] or module.startswith(FLOORS[rank] + "."):
            return rank
    if module == "encoders":  # the package docstring's module
        return 0
    raise AssertionError(f"{module} is on no floor: add it to FLOORS")


def _type_checking(node: ast.If) -> bool:
    return isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"


def imports(path: Path) -> list[tuple[str, list[str], bool]]:
    """(module, imported names, only for type checking) for every project import in a file."""
    out = []

    def visit(node: ast.AST, typing_only: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _type_checking(child):
                for stmt in child.body:
                    visit_stmt(stmt, True)
                for stmt in child.orelse:
                    visit_stmt(stmt, typing_only)
            else:
                visit_stmt(child, typing_only)

    def visit_stmt(node: ast.AST, typing_only: bool) -> None:
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module.split(".")[0] in PACKAGES:
                names = [a.name for a in node.names]
                # ``from experiments.tasks import digits``: the submodule is what is imported
                subs = [f"{node.module}.{n}" for n in names if f"{node.module}.{n}" in MODULES]
                out.extend((s, [], typing_only) for s in subs)
                if len(subs) < len(names):
                    out.append((node.module, [n for n in names if f"{node.module}.{n}"
                                              not in MODULES], typing_only))
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] in PACKAGES:
                    out.append((alias.name, [], typing_only))
        visit(node, typing_only)

    visit(ast.parse(path.read_text()), False)
    return out


def cross_package_imports() -> set[tuple[str, str]]:
    """(importer's floor, imported floor) pairs across floors: the graph shown in docs/development.md."""
    return {(FLOORS[floor(m)], FLOORS[floor(target)])
            for m, path in MODULES.items() for target, _, _ in imports(path)
            if floor(target) != floor(m)}


def test_imports_run_one_way_and_keep_private_names_private():
    wrong = []
    for module, path in MODULES.items():
        for target, names, _ in imports(path):
            if target not in MODULES:
                wrong.append(f"{module} imports {target}, which does not exist")
            elif floor(target) > floor(module):
                wrong.append(f"{module} ({FLOORS[floor(module)]}) imports {target} "
                             f"({FLOORS[floor(target)]}): upward")
            if private := [n for n in names if n.startswith("_")]:
                wrong.append(f"{module} imports private {private} from {target}")
    assert wrong == []


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """A cycle of the graph (module -> the modules it imports), or None (stdlib graphlib)."""
    try:
        TopologicalSorter(graph).prepare()
    except CycleError as e:
        return e.args[1]
    return None


def test_no_import_cycles():
    """The runtime import graph (type-checking imports left out: they never run) is acyclic."""
    graph = {m: {t for t, _, typing_only in imports(p) if not typing_only} - {m}
             for m, p in MODULES.items()}
    assert find_cycle(graph) is None


def test_the_checker_catches_what_this_layout_removed():
    """An upward import (training -> the probe in results) and the reader <-> zip cycle."""
    assert floor("results.filtering") > floor("experiments.training")
    assert floor("orchestrator.tracking") > floor("results.build")
    old = {"encoders.weights.safetensors_reader": {"encoders.weights.torch_zip"},
           "encoders.weights.torch_zip": {"encoders.weights.safetensors_reader"},
           "encoders.weights.tensors": set()}
    assert set(find_cycle(old)) == {"encoders.weights.safetensors_reader",
                                    "encoders.weights.torch_zip"}
    edges = cross_package_imports()
    assert ("experiments", "encoders.lm") in edges and ("results", "experiments") in edges
    assert all(FLOORS.index(b) < FLOORS.index(a) for a, b in edges)


def test_modules_hold_one_concept_in_a_few_hundred_lines():
    long = {m: n for m, p in MODULES.items() if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert long == {}
