"""The package's imports run one way: no module of orchestrator/ imports, directly or through
others, a module that imports it. Read from the source, so an import inside a function or under
TYPE_CHECKING counts too."""

from __future__ import annotations

import ast
from pathlib import Path

import orchestrator

PACKAGE = Path(orchestrator.__file__).parent
# Parts of the package that are applications or data of their own, not the engine's layers.
APART = ("bench", "migrations", "demo/handlers", "demo/files")


def module_name(path: Path) -> str:
    parts = ["orchestrator", *path.relative_to(PACKAGE).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, known: set[str]) -> set[str]:
    """The modules of ours that ``path`` imports (a name imported from a package is the
    submodule when there is one)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{alias.name}" for alias in node.names]
            found |= {n for n in names if n in known} or {node.module}
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
    return {_owner(name, known) for name in found if name.startswith("orchestrator")}


def _owner(name: str, known: set[str]) -> str:
    while name not in known and "." in name:
        name = name.rpartition(".")[0]
    return name


def graph() -> dict[str, set[str]]:
    files = [p for p in PACKAGE.rglob("*.py")
             if not any(p.relative_to(PACKAGE).as_posix().startswith(a) for a in APART)]
    known = {module_name(p) for p in files}
    edges = {module_name(p): imports(p, known) - {module_name(p)} for p in files}
    edges["orchestrator"] = set()  # the public facade re-exports from every layer
    return edges


def cycle_from(start: str, edges: dict[str, set[str]]) -> list[str] | None:
    stack: list[tuple[str, list[str]]] = [(start, [start])]
    seen: set[str] = set()
    while stack:
        node, path = stack.pop()
        for dep in sorted(edges.get(node, ())):
            if dep == start:
                return [*path, dep]
            if dep not in seen:
                seen.add(dep)
                stack.append((dep, [*path, dep]))
    return None


def test_no_module_of_the_package_is_part_of_an_import_cycle() -> None:
    edges = graph()
    assert len(edges) > 30, "the walk found too few modules to mean anything"
    cycles = [c for m in sorted(edges) if (c := cycle_from(m, edges))]
    assert cycles == [], " ; ".join(" -> ".join(c) for c in cycles)


def test_the_lowest_layers_import_nothing_of_the_package() -> None:
    edges = graph()
    for module in ("orchestrator.errors", "orchestrator.backoff", "orchestrator.outcomes"):
        below = {"orchestrator.errors", "orchestrator.events"}
        assert edges[module] <= below, (module, edges[module])


def test_a_cycle_is_found_when_there_is_one() -> None:
    assert cycle_from("a", {"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert cycle_from("a", {"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_no_function_over_60_lines_and_no_class_over_300() -> None:
    too_long = []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            limit = (60 if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
                     else 300 if isinstance(node, ast.ClassDef) else None)
            if limit and (length := node.end_lineno - node.lineno + 1) > limit:  # type: ignore[operator]
                too_long.append(f"{path.relative_to(PACKAGE)}:{node.lineno} {node.name} "
                                f"({length} lines)")
    assert too_long == []
