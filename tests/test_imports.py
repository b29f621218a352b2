"""The package's import graph, built from the source's AST (module-level and function-level
imports): no cycles, and no library module imports the command line."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
ROOT = SRC / "mobilenets"


def _modules() -> dict[str, tuple[Path, list[str]]]:
    """``{dotted name: (file, package parts)}`` for every module of the package."""
    mods = {}
    for path in ROOT.rglob("*.py"):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
            pkg = parts
        else:
            pkg = parts[:-1]
        mods[".".join(parts)] = (path, pkg)
    return mods


def _targets(node: ast.AST, pkg: list[str], mods: dict) -> list[str]:
    """The package modules one import statement loads (``from . import x`` is module ``x``)."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names if a.name in mods]
    if not isinstance(node, ast.ImportFrom):
        return []
    if node.level:
        base = pkg[: len(pkg) - node.level + 1]
        target = ".".join(base + ([node.module] if node.module else []))
    else:
        target = node.module or ""
    subs = [f"{target}.{a.name}" for a in node.names if f"{target}.{a.name}" in mods]
    found = subs if len(subs) == len(node.names) else [target, *subs]
    return [m for m in found if m in mods]


def import_graph() -> dict[str, set[str]]:
    """``{module: modules it imports}`` within the package."""
    mods = _modules()
    graph = {}
    for name, (path, pkg) in mods.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        deps = {t for node in ast.walk(tree) for t in _targets(node, pkg, mods)}
        graph[name] = deps - {name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as a path ``[a, b, ..., a]``, or None (iterative DFS)."""
    state: dict[str, int] = {}  # 1: on the stack, 2: done
    for start in sorted(graph):
        if start in state:
            continue
        stack = [(start, iter(sorted(graph[start])))]
        path = [start]
        state[start] = 1
        while stack:
            node, children = stack[-1]
            child = next(children, None)
            if child is None:
                state[node] = 2
                stack.pop()
                path.pop()
            elif state.get(child) == 1:
                return path[path.index(child) :] + [child]
            elif child not in state:
                state[child] = 1
                stack.append((child, iter(sorted(graph.get(child, ())))))
                path.append(child)
    return None


def test_the_cycle_finder_finds_a_planted_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_the_graph_sees_function_level_and_relative_imports():
    graph = import_graph()
    # factory imports weights at module level; the cli imports its commands lazily by name,
    # but cli.export imports the exporter at module level
    assert "mobilenets.weights" in graph["mobilenets.factory"]
    assert "mobilenets.export" in graph["mobilenets.cli.export"]


def test_no_import_cycle_in_the_package():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_no_library_module_imports_the_command_line():
    graph = import_graph()
    offenders = {
        m: sorted(d for d in deps if d == "mobilenets.cli" or d.startswith("mobilenets.cli."))
        for m, deps in graph.items()
        if not (m == "mobilenets.cli" or m.startswith("mobilenets.cli."))
        and m != "mobilenets.__main__"
    }
    assert not {m: d for m, d in offenders.items() if d}
