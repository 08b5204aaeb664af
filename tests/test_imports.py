"""The package's import graph: no cycles, and modules import each other at the top.

A cycle makes the import order matter (a name is missing when the other module is half-loaded)
and pushes imports into functions to dodge it; both hide what depends on what. The walk reads
the sources with ``ast``, so it sees every import, including those inside functions.
"""

from __future__ import annotations

import ast
from pathlib import Path

import medalist

ROOT = Path(medalist.__file__).parent

# Modules allowed to import other medalist modules inside functions, and why.
DEFERRED = {
    # `medalist --help`, `medalist config` and `medalist validate` answer without loading torch:
    # each command's module is imported when that command runs.
    "medalist.cli",
}


def module_name(path: Path) -> str:
    parts = ["medalist", *path.relative_to(ROOT).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def sources() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(ROOT.rglob("*.py"))}


def _targets(node: ast.AST, here: str, is_package: bool, known: set[str]) -> list[str]:
    """The medalist modules an import statement loads (a submodule when it names one)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names if alias.name.split(".")[0] == "medalist"]
    if node.level:  # relative: from the package this module is in (or is)
        base = here.split(".")
        base = base[: len(base) - node.level + (1 if is_package else 0)]
        module = ".".join([*base, *([node.module] if node.module else [])])
    else:
        module = node.module or ""
    if module.split(".")[0] != "medalist":
        return []
    return [f"{module}.{a.name}" if f"{module}.{a.name}" in known else module for a in node.names]


def imports(known: dict[str, Path]) -> dict[str, list[tuple[str, int, bool]]]:
    """For each module: (imported medalist module, line, inside a function) for every import."""
    found: dict[str, list[tuple[str, int, bool]]] = {}
    for name, path in known.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        in_function = {
            id(sub)
            for node in ast.walk(tree)
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            for sub in ast.walk(node)
        }
        is_package = path.name == "__init__.py"
        found[name] = [
            (target, node.lineno, id(node) in in_function)
            for node in ast.walk(tree)
            if isinstance(node, (ast.Import, ast.ImportFrom))
            for target in _targets(node, name, is_package, set(known))
            if target != name
        ]
    return found


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the directed graph as a path that returns to its start, or None."""
    state: dict[str, str] = {}  # "open" while on the current path, "done" after
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = "open"
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_cycle_finder_finds_cycles_and_only_cycles():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"a"}}) == ["a", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set(), "d": {"a", "b"}}) is None


def test_the_walk_sees_imports_inside_functions_and_relative_ones(tmp_path, monkeypatch):
    package = tmp_path / "medalist"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("def f():\n    from medalist.sub import b\n")
    (package / "sub" / "__init__.py").write_text("from . import b\n")
    (package / "sub" / "b.py").write_text("from ..a import f\n")
    monkeypatch.setattr(f"{__name__}.ROOT", package)
    found = imports(sources())
    assert found["medalist.a"] == [("medalist.sub.b", 2, True)]
    assert found["medalist.sub"] == [("medalist.sub.b", 1, False)]
    assert found["medalist.sub.b"] == [("medalist.a", 1, False)]
    graph = {name: {target for target, _, _ in edges} for name, edges in found.items()}
    assert find_cycle(graph) == ["medalist.a", "medalist.sub.b", "medalist.a"]


def test_the_package_has_no_import_cycle():
    graph = {name: {t for t, _, _ in edges} for name, edges in imports(sources()).items()}
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_modules_import_each_other_at_the_top():
    inside = [
        f"{name}:{line} imports {target}"
        for name, edges in imports(sources()).items()
        if name not in DEFERRED
        for target, line, in_function in edges
        if in_function
    ]
    assert not inside, "imports inside functions:\n" + "\n".join(inside)
