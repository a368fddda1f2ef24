"""The import graph of the four packages, read with `ast`: no circles, and only the imports that
ARCHITECTURE.md's layering allows (pipeline -> reports -> explainers -> tiling).

Every import counts, those inside functions too; imports under `if TYPE_CHECKING:` do not (they
never run). A package's `__init__` counts as the module named by the package.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
LAYERS = ("tiling", "explainers", "reports", "pipeline")  # each may import only itself and those before it


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_names(tree: ast.Module) -> list[str]:
    """Dotted names each import of `tree` reaches (`from a import b` gives a and a.b)."""
    skipped = {id(node) for n in ast.walk(tree) if isinstance(n, ast.If) and "TYPE_CHECKING" in ast.unparse(n.test)
               for child in n.body for node in ast.walk(child)}
    names = []
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names += [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
    return names


def import_graph(root: Path = ROOT) -> dict[str, set[str]]:
    """{module: the package modules it imports} over the four packages."""
    modules = {module_name(p, root): p for layer in LAYERS for p in (root / layer).rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets = set()
        for dotted in imported_names(ast.parse(path.read_text(), str(path))):
            while dotted and dotted not in modules:
                dotted = dotted.rpartition(".")[0]
            if dotted and dotted != name:
                targets.add(dotted)
        graph[name] = targets
    return graph


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each a circle."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while (w := stack.pop()) != v:
                component.append(w)
            if component:
                found.append(sorted([v, *component]))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def layering_breaks(graph: dict[str, set[str]]) -> list[str]:
    """Imports from a package to one after it in LAYERS."""
    rank = {layer: i for i, layer in enumerate(LAYERS)}
    return sorted(f"{a} -> {b}" for a, targets in graph.items() for b in targets
                  if rank[b.split(".")[0]] > rank[a.split(".")[0]])


def test_the_four_packages_import_without_circles() -> None:
    assert circles(import_graph()) == []


def test_imports_follow_the_layering() -> None:
    graph = import_graph()
    assert len(graph) > 100 and layering_breaks(graph) == []


def test_the_checks_catch_a_circle_and_an_upward_import(tmp_path: Path) -> None:
    for layer in LAYERS:
        (tmp_path / layer).mkdir()
        (tmp_path / layer / "__init__.py").write_text("")
    (tmp_path / "tiling" / "a.py").write_text("from tiling.b import x\n")
    (tmp_path / "tiling" / "b.py").write_text("def f():\n    from tiling import a\n")
    (tmp_path / "explainers" / "c.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pipeline import d\nimport reports.e\n")
    (tmp_path / "reports" / "e.py").write_text("")
    graph = import_graph(tmp_path)
    assert circles(graph) == [["tiling.a", "tiling.b"]]
    assert layering_breaks(graph) == ["explainers.c -> reports.e"]


@pytest.mark.parametrize("name", ["explainers.methods.registry", "tiling.store.stamps", "tiling.store.names"])
def test_registries_and_the_store_contract_import_nothing_that_imports_them(name: str) -> None:
    graph = import_graph()
    assert not any(target.startswith(name.rpartition(".")[0] + ".") for target in graph[name]
                   if target != "tiling.store.names")
