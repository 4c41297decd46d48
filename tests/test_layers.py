"""The package's architecture, checked from its imports: layers that only import downward, no cycles.

``LAYERS`` is the map in README's "How it is built", top to bottom. A module
may import modules of its own subpackage and of any layer below its own;
never one above, and never a sibling marked independent (``store`` and
``compute`` know nothing of each other). Imports inside functions count too:
a lazy import hides a dependency from the reader, not from the design.
Only ``if TYPE_CHECKING:`` blocks are left out.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "cbir"

#: Top to bottom. Within a tuple: siblings of one layer that must not import each other.
LAYERS: list[tuple[str, ...]] = [
    ("cbir.cli",),
    ("cbir.server", "cbir.demo"),
    ("cbir.render",),
    ("cbir.evaluation",),
    ("cbir.indexing", "cbir.retrieval"),
    ("cbir.store", "cbir.compute"),
    ("cbir.features", "cbir.ann"),
    ("cbir.images",),
    ("cbir.errors", "cbir.progress", "cbir.extras", "cbir.fileio", "cbir.cpus", "cbir.display", "cbir.timing", "cbir._version"),
]
#: Siblings that may import each other, as (importer, imported).
SIBLING_IMPORTS: set[tuple[str, str]] = {("cbir.extras", "cbir.errors"), ("cbir.fileio", "cbir.errors")}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _all_modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(path: Path, name: str, modules: set[str]) -> set[str]:
    """The cbir modules ``path`` imports (a ``from pkg import sub`` names the submodule)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    is_package = path.name == "__init__.py"
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.split(".")[0] == "cbir")
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = name.split(".") if is_package else name.split(".")[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, *([node.module] if node.module else [])])
            if base.split(".")[0] == "cbir":
                for alias in node.names:
                    sub = f"{base}.{alias.name}"
                    found.add(sub if sub in modules else base)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    found.discard(name)
    return found


def _graph() -> dict[str, set[str]]:
    modules = _all_modules()
    names = set(modules)
    return {name: _imports(path, name, names) for name, path in modules.items()}


def _group(module: str) -> tuple[int, str] | None:
    """(layer index, top-level group) of a module; None for the package root."""
    for index, layer in enumerate(LAYERS):
        for group in layer:
            if module == group or module.startswith(group + "."):
                return index, group
    return None


def test_every_module_has_a_layer():
    unplaced = [m for m in _all_modules() if m not in ("cbir", "cbir.__main__") and _group(m) is None]
    assert unplaced == [], f"add these to LAYERS (and to README's map): {unplaced}"


def test_imports_only_go_down():
    wrong = []
    for importer, imported in sorted((a, b) for a, targets in _graph().items() for b in targets):
        if importer in ("cbir", "cbir.__main__") or imported == "cbir":
            if imported == "cbir" and importer not in ("cbir", "cbir.__main__"):
                wrong.append(f"{importer} imports the package root (import from the module itself)")
            continue
        (low, low_group), (high, high_group) = _group(importer), _group(imported)
        if low_group == high_group:
            continue
        if high < low:
            wrong.append(f"{importer} -> {imported} (upward)")
        elif high == low and (low_group, high_group) not in SIBLING_IMPORTS:
            wrong.append(f"{importer} -> {imported} (independent siblings)")
    assert wrong == [], "\n".join(wrong)


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def strongconnect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph.get(node, ()):
            if target not in graph:
                continue
            if target not in index:
                strongconnect(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            strongconnect(node)
    return found


def test_no_import_cycles():
    # A package's __init__ importing its own modules for re-export is no cycle of design.
    graph = {
        name: {t for t in targets if not (name.count(".") and t.startswith(name + "."))}
        for name, targets in _graph().items()
        if name != "cbir"
    }
    assert _cycles(graph) == []


@pytest.mark.parametrize(
    "graph, expected",
    [
        ({"a": {"b"}, "b": {"a"}}, [["a", "b"]]),
        ({"a": {"b"}, "b": {"c"}, "c": set()}, []),
        ({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}, [["a", "b", "c"]]),
    ],
)
def test_the_cycle_finder_finds_cycles(graph, expected):
    assert _cycles(graph) == expected


def test_the_import_reader_sees_lazy_and_relative_imports(tmp_path):
    module = tmp_path / "m.py"
    module.write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    import cbir.cli\n"
        "def f():\n    from cbir.store import catalogue\n    import cbir.errors\n"
    )
    found = _imports(module, "cbir.x.m", {"cbir.store.catalogue", "cbir.errors", "cbir.cli"})
    assert found == {"cbir.store.catalogue", "cbir.errors"}
