"""How the code is layered: the core (influence_core) never imports the jobs, and no two of its
modules import each other, not even inside a function (an import cycle there still ties the two
together: neither can be read, tested or changed alone)."""

from __future__ import annotations

import ast
from pathlib import Path

CORE = Path(__file__).resolve().parent.parent / "influence_core"


def imports(path: Path) -> set[str]:
    """The project modules a file imports, at its top or anywhere inside it."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.module == "influence_core":  # from influence_core import settings
                found |= {f"influence_core.{alias.name}" for alias in node.names}
            else:
                found.add(node.module)
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
    return {name for name in found if name.split(".")[0] in ("influence_core", "jobs")}


def core_graph() -> dict[str, set[str]]:
    modules = {f"influence_core.{path.stem}": path for path in CORE.glob("*.py") if path.stem != "__init__"}
    return {name: imports(path) - {name} for name, path in modules.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every shortest cycle through each module (depth-first search from it), each named once."""
    found = {}
    for start in graph:
        paths = [[start]]
        while paths:
            path = paths.pop()
            for following in graph.get(path[-1], ()):
                if following == start:
                    found.setdefault(frozenset(path), path)
                elif following in graph and following not in path and len(path) < len(graph):
                    paths.append([*path, following])
    return sorted(found.values())


def test_the_core_never_imports_the_jobs():
    assert {name: sorted(deps) for name, deps in core_graph().items() if any(d.startswith("jobs") for d in deps)} == {}


def test_no_import_cycle_in_the_core():
    assert cycles(core_graph()) == []


def test_the_cycle_finder_finds_a_cycle_through_a_function_level_import(tmp_path):
    (tmp_path / "a.py").write_text("from influence_core import b\n")
    (tmp_path / "b.py").write_text("def f():\n    from influence_core.a import x\n")
    graph = {f"influence_core.{name}": imports(tmp_path / f"{name}.py") for name in "ab"}
    assert cycles(graph) == [["influence_core.a", "influence_core.b"]]
