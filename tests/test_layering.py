"""The package's import graph: no circle, and the store apart from everything else (docs/layout.md)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "keypatch"


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The package's modules that ``name`` imports anywhere in its file (functions, TYPE_CHECKING too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                here = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
                base = ".".join(here[: len(here) - node.level + 1] + ([base] if base else []))
            targets = [f"{base}.{a.name}" for a in node.names] + [base]
        else:
            continue
        for t in targets:
            while t and t not in modules:
                t = t.rpartition(".")[0]
            if t and t != name and not name.startswith(t + "."):  # a module importing its own package: no edge
                found.add(t)
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {m: _imports(m, p, modules) for m, p in modules.items()}


def _circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), package re-exports left out."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    modules = _modules()
    return [c for c in out if not all(modules[m].name == "__init__.py" for m in c)]


def test_no_import_circle():
    assert _circles(_graph()) == []


def test_the_store_imports_nothing_of_keypatch_outside_it():
    graph = _graph()
    outside = {t for m, ts in graph.items() if m.startswith("keypatch.store") for t in ts
               if not t.startswith("keypatch.store")}
    assert outside == set()


def test_the_check_sees_a_circle_when_there_is_one():
    graph = _graph()
    graph["keypatch.geometry.grid"] = graph["keypatch.geometry.grid"] | {"keypatch.objective"}
    assert any("keypatch.objective" in c and "keypatch.geometry.grid" in c for c in _circles(graph))


def test_the_objective_scores_through_two_public_methods():
    """The strategy layer's one door: Objective's public callables are score and step, and no module
    of the package but objective.py scores chosen + each candidate itself (with_each)."""
    import inspect

    from keypatch.objective import Objective

    public = {n for n, v in inspect.getmembers(Objective) if not n.startswith("_") and callable(v)}
    assert public == {"score", "step"}
    users = sorted(n for n, p in _modules().items() if "with_each(" in p.read_text() and n != "keypatch.objective")
    assert users == []
