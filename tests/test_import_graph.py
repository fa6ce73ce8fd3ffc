"""The modules of ``src/biasloss`` import one another without cycles.

Every ``import`` statement counts, at module level and inside functions alike: a function-level
import defers a cycle to run time, it does not remove it. So do the command modules of
:data:`biasloss.cli.COMMANDS`, which the command line imports by name when their command is given.
Left out: imports under ``if TYPE_CHECKING:`` (they never run) and other modules named as strings
(``importlib``). An edge goes to the module an import names: ``import a.b`` and
``from a import b`` (``b`` a module) to ``a.b``, ``from a import name`` to ``a``; the parent
packages that Python imports on the way are not edges, else every package whose ``__init__``
gathers its submodules would be a cycle with each of them.
"""

from __future__ import annotations

import ast
from pathlib import Path

from biasloss.cli import COMMANDS

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = "biasloss"


def _modules() -> dict[str, Path]:
    """Every module of the package: dotted name -> file."""
    found = {}
    for path in sorted((SRC / PACKAGE).rglob("*.py")):
        parts = path.relative_to(SRC).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    """The import statements of ``tree``, at any depth, but not those under ``if TYPE_CHECKING:``."""
    found, todo = [], [tree]
    while todo:
        node = todo.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found.append(node)
        elif isinstance(node, ast.If) and _is_type_checking(node):
            todo.extend(node.orelse)
            continue
        todo.extend(ast.iter_child_nodes(node))
    return found


def import_graph() -> dict[str, set[str]]:
    """Module -> the modules of the package it imports (see the module doc for what counts)."""
    modules = _modules()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        edges = graph[name] = set()
        for node in _imports(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")
                    anchor = anchor[: len(anchor) - (node.level - 1)]
                    base = ".".join(anchor + ([base] if base else []))
                targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
                           for alias in node.names]
            edges.update(t for t in targets if t in modules and t != name)
    graph["biasloss.cli"].update(module for module, _ in COMMANDS.values())
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle through each strongly connected component of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[set[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.add(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(component)

    for node in sorted(graph):
        if node not in index:
            visit(node)
    cycles = []
    for component in components:  # a shortest way back to the component's first module
        start = min(component)
        paths = {start: [start]}
        frontier = [start]
        while frontier and start not in {n for f in frontier for n in graph[f]}:
            nxt = []
            for f in frontier:
                for n in sorted(graph[f] & component):
                    if n not in paths:
                        paths[n] = paths[f] + [n]
                        nxt.append(n)
            frontier = nxt
        last = next(f for f in frontier if start in graph[f])
        cycles.append(paths[last] + [start])
    return cycles


def test_the_graph_sees_the_imports():
    graph = import_graph()
    assert "biasloss.cli" in graph and "biasloss.models.cifar" in graph
    # module level, function level, relative and package imports are all edges
    assert "biasloss.models.cifar._base" in graph["biasloss.models.cifar.resnet"]
    assert "biasloss.models.skipblocknet" in graph["biasloss.models"]
    assert {"biasloss.train.runner", "biasloss.losses"} <= set().union(*graph.values())
    assert "biasloss.detection.detect_cli" in graph["biasloss.cli"]  # the command table


def test_finding_a_cycle():
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]
    assert find_cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles():
    cycles = find_cycles(import_graph())
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(cycle) for cycle in cycles)
