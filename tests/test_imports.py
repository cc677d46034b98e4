"""The package's import graph is acyclic, read statically from the source.

Every module of ``fpn_jax`` is parsed with ``ast``; every import statement counts, at module
level or inside a function (a back-edge hidden in a function still makes the modules one
tangle, and only runs by luck of the import order). An edge ``A -> B`` means that running
A's imports (now or later) executes module B:

* ``import fpn_jax.a.b`` and ``from fpn_jax.a import b`` (b a submodule) import
  ``fpn_jax.a.b``; ``from fpn_jax.a import name`` (name not a submodule) imports
  ``fpn_jax.a``; relative imports are resolved against the importing module's package;
  ``importlib.import_module("fpn_jax.x")`` with a literal name counts too.
* Importing ``fpn_jax.a.b`` also runs the packages above it (``fpn_jax/a/__init__.py``), so
  those get an edge as well, except (i) the root ``fpn_jax/__init__.py``, the composition
  root, which is checked separately: no other module may import the root package itself;
  and (ii) the packages above the importing module itself, which are already being
  initialised when it runs (Python imports a module's parents first). A module naming its
  own parent package directly (``from fpn_jax.nn import Linear`` inside ``fpn_jax.nn.x``)
  is still an edge: that reads a half-initialised package.
* Imports under ``if TYPE_CHECKING:`` never run and are left out; a module importing
  itself is not an edge.

``import_graph`` takes the package folder, so the same checker runs on a synthetic package
(``test_the_checker_finds_a_function_level_back_edge``).
"""

from __future__ import annotations

import ast
import dataclasses
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "fpn_jax"
LEAVES = ("validation", "registry", "errors", "typing")  # leaf modules: may import only each other's...
LEAF_IMPORTS_ALLOWED = ("typing", "errors")  # ...typing aliases and error types


@dataclasses.dataclass(frozen=True)
class Import:
    """One resolved import: ``source`` imports ``target`` at ``file:line`` (``implied``: a parent package)."""

    source: str
    target: str
    file: str
    line: int
    implied: bool = False

    def __str__(self) -> str:
        how = " (package above the imported module)" if self.implied else ""
        return f"{self.source} -> {self.target}  [{self.file}:{self.line}]{how}"


@dataclasses.dataclass
class ImportGraph:
    """Modules of a package, the imports among them, and where a module imports the root package."""

    root: str
    modules: dict[str, Path]
    imports: list[Import]

    @property
    def edges(self) -> dict[str, dict[str, Import]]:
        """source -> {target: the first import making that edge}, root package and self-edges left out."""
        edges: dict[str, dict[str, Import]] = {m: {} for m in self.modules}
        for imp in self.imports:
            if imp.target != self.root and imp.target != imp.source:
                edges[imp.source].setdefault(imp.target, imp)
        return edges

    def root_imports(self) -> list[Import]:
        """Imports of the root package itself by any module other than the root."""
        return [i for i in self.imports if i.target == self.root and i.source != self.root and not i.implied]

    def direct_targets(self, module: str) -> set[str]:
        return {i.target for i in self.imports if i.source == module and not i.implied}


def _module_names(package_dir: Path) -> dict[str, Path]:
    root = package_dir.name
    names = {}
    for path in sorted(package_dir.rglob("*.py")):
        parts = path.relative_to(package_dir).with_suffix("").parts
        if any(p == "__pycache__" or not p.isidentifier() for p in parts):
            continue
        if parts[-1] == "__init__":
            parts = parts[:-1]
        names[".".join((root, *parts))] = path
    return names


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _runtime_nodes(tree: ast.AST) -> Iterator[ast.AST]:
    """Every node of ``tree``, functions and classes included, except ``if TYPE_CHECKING:`` bodies."""
    stack = [tree]
    while stack:
        node = stack.pop()
        yield node
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            stack.extend(node.orelse)
            continue
        stack.extend(ast.iter_child_nodes(node))


def import_graph(package_dir: str | Path) -> ImportGraph:
    """Parses every module under ``package_dir`` and resolves its imports of the package's modules."""
    package_dir = Path(package_dir)
    modules = _module_names(package_dir)
    imports = [imp for source, path in modules.items() for imp in _imports_of(source, path, package_dir, modules)]
    return ImportGraph(package_dir.name, modules, imports)


def _imports_of(source: str, path: Path, package_dir: Path, modules: dict[str, Path]) -> list[Import]:
    """The imports of package modules that the module ``source`` (file ``path``) makes."""
    root = package_dir.name
    own_package = source if path.name == "__init__.py" else source.rpartition(".")[0]
    ancestors = {".".join(source.split(".")[:k]) for k in range(1, source.count(".") + 1)}
    file = f"{root}/{path.relative_to(package_dir).as_posix()}"
    imports: list[Import] = []

    def add(target: str, line: int) -> None:
        imports.append(Import(source, target, file, line))
        # Importing a.b.c runs a.b's __init__ (and a's, the root, left out) unless already running.
        parts = target.split(".")
        for k in range(2, len(parts)):
            parent = ".".join(parts[:k])
            if parent in modules and parent not in ancestors and parent != source:
                imports.append(Import(source, parent, file, line, implied=True))

    def resolve_module(name: str, line: int) -> None:
        """``import name`` (and ``import name as x``): the longest prefix that is a module."""
        parts = name.split(".")
        if parts[0] != root:
            return
        for k in range(len(parts), 0, -1):
            if ".".join(parts[:k]) in modules:
                add(".".join(parts[:k]), line)
                return

    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    for node in _runtime_nodes(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                resolve_module(alias.name, node.lineno)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base_parts = own_package.split(".")
                base_parts = base_parts[: len(base_parts) - (node.level - 1)]
                base = ".".join(base_parts + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            if base.split(".")[0] != root:
                continue
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                if alias.name != "*" and sub in modules:
                    add(sub, node.lineno)
                else:
                    resolve_module(base, node.lineno)
        elif isinstance(node, ast.Call) and _imports_by_name(node):
            resolve_module(node.args[0].value, node.lineno)
    return imports


def _imports_by_name(call: ast.Call) -> bool:
    """``importlib.import_module("literal")`` or ``__import__("literal")``."""
    func = call.func
    name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else None
    return (
        name in ("import_module", "__import__")
        and bool(call.args)
        and isinstance(call.args[0], ast.Constant)
        and isinstance(call.args[0].value, str)
    )


def strongly_connected(graph: ImportGraph) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    edges = graph.edges
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    components: list[list[str]] = []

    def strongconnect(v: str) -> None:  # the graph has ~60 nodes: recursion is fine
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges[v]:
            if w not in index:
                strongconnect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            strongconnect(v)
    return sorted(components)


def _shortest_cycle(edges: dict[str, dict[str, Import]], start: str, members: set[str]) -> list[Import]:
    """A shortest cycle start -> ... -> start inside ``members`` (breadth first), as its imports."""
    previous: dict[str, Import] = {}
    frontier = [start]
    while start not in previous:
        following = []
        for v in frontier:
            for w, imp in sorted(edges[v].items()):
                if w in members and w not in previous and (w == start or w not in frontier):
                    previous[w] = imp
                    following.append(w)
        frontier = following
    path, node = [], start
    while True:
        imp = previous[node]
        path.append(imp)
        node = imp.source
        if node == start:
            return path[::-1]


def find_cycles(graph: ImportGraph) -> list[list[Import]]:
    """Import cycles: for every module in a strongly connected component, a shortest cycle through it.

    Duplicates (the same cycle found from another of its modules) are dropped; each cycle
    starts at its alphabetically first module.
    """
    edges = graph.edges
    cycles: dict[frozenset, list[Import]] = {}
    for component in strongly_connected(graph):
        for start in component:
            cycle = _shortest_cycle(edges, start, set(component))
            first = min(range(len(cycle)), key=lambda i: cycle[i].source)
            cycle = cycle[first:] + cycle[:first]
            cycles.setdefault(frozenset((i.source, i.target) for i in cycle), cycle)
    return list(cycles.values())


def describe(graph: ImportGraph) -> str:
    """The strongly connected components, and the cycles through their modules with file:line."""
    lines = []
    for component in strongly_connected(graph):
        lines.append(f"{len(component)} modules import each other (directly or not): {', '.join(component)}")
    for cycle in find_cycles(graph):
        lines.append("cycle: " + " -> ".join([cycle[0].source] + [i.target for i in cycle]))
        lines.extend(f"    {imp}" for imp in cycle)
    return "\n".join(lines)


# --------------------------------------------------------------------------- the package


@pytest.fixture(scope="module")
def graph() -> ImportGraph:
    return import_graph(PACKAGE)


def test_the_graph_sees_the_whole_package(graph):
    assert len(graph.modules) > 40
    for name in ("fpn_jax", "fpn_jax.validation", "fpn_jax.registry", "fpn_jax.checkpoint", "fpn_jax.train.loop",
                 "fpn_jax.nn.made", "fpn_jax.flows.maf", "fpn_jax.evaluation.judge", "fpn_jax.convert.__main__"):
        assert name in graph.modules, name
    # A few edges known from the source, as a check of the resolution rules.
    edges = graph.edges
    assert "fpn_jax.registry" in edges["fpn_jax.checkpoint"]  # from fpn_jax.registry import ...
    assert "fpn_jax.train.loop" in edges["fpn_jax.evaluation.judge"]  # from fpn_jax.train.loop import fit_model
    assert "fpn_jax.train" in edges["fpn_jax.evaluation.judge"]  # ... which runs fpn_jax/train/__init__.py
    assert "fpn_jax.validation" in edges["fpn_jax.data.base"]  # from fpn_jax import validation as checks
    assert "fpn_jax.data" not in edges["fpn_jax.data.base"]  # its own package is already initialising


def test_the_package_import_graph_has_no_cycle(graph):
    cycles = find_cycles(graph)
    assert not cycles, "the fpn_jax import graph has cycles:\n" + describe(graph)


def test_only_the_composition_root_imports_the_root_package(graph):
    offenders = graph.root_imports()
    assert not offenders, (
        "these modules import the root package `fpn_jax` (its __init__, the composition root); import the "
        "submodule instead:\n" + "\n".join(f"    {i}" for i in offenders)
    )


@pytest.mark.parametrize("leaf", LEAVES)
def test_leaf_modules_import_nothing_above_them(graph, leaf):
    name = f"{graph.root}.{leaf}"
    allowed = {f"{graph.root}.{a}" for a in LEAF_IMPORTS_ALLOWED} - {name}
    above = sorted(graph.direct_targets(name) - allowed - {name})
    assert not above, f"{name} is a leaf module but imports {above}"


# --------------------------------------------------------------------------- the checker itself


def _write(root: Path, files: dict[str, str]) -> Path:
    for relative, text in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    return root


def test_the_checker_finds_a_function_level_back_edge(tmp_path):
    package = _write(tmp_path / "pkg", {
        "__init__.py": "from pkg import store, models\n",
        "store.py": """
            import json
            from pkg.registry import register

            def load(path):
                from pkg import models  # the back-edge, hidden in a function
                return models.build(json.loads(path))
        """,
        "registry.py": "REGISTRY = {}\n",
        "models/__init__.py": "from pkg.models.net import Net\n",
        "models/net.py": """
            from typing import TYPE_CHECKING
            from .. import store
            from ..registry import REGISTRY

            if TYPE_CHECKING:
                from pkg.models import Net  # never runs: no edge
        """,
    })
    graph = import_graph(package)
    assert set(graph.modules) == {"pkg", "pkg.store", "pkg.registry", "pkg.models", "pkg.models.net"}
    edges = graph.edges
    assert set(edges["pkg.store"]) == {"pkg.registry", "pkg.models"}
    assert set(edges["pkg.models.net"]) == {"pkg.store", "pkg.registry"}  # relative imports resolved
    assert edges["pkg.store"]["pkg.models"].line == 6
    cycles = find_cycles(graph)
    assert len(cycles) == 1
    cycle = cycles[0]
    assert [i.source for i in cycle] == ["pkg.models", "pkg.models.net", "pkg.store"]
    assert [i.target for i in cycle] == ["pkg.models.net", "pkg.store", "pkg.models"]
    text = describe(graph)
    assert "3 modules import each other (directly or not): pkg.models, pkg.models.net, pkg.store" in text
    assert "cycle: pkg.models -> pkg.models.net -> pkg.store -> pkg.models" in text
    assert "pkg/store.py:6" in text


def test_the_checker_resolves_each_import_form(tmp_path):
    package = _write(tmp_path / "pkg", {
        "__init__.py": "from pkg.a import f\n",
        "a/__init__.py": "",
        "a/b.py": """
            import importlib
            import pkg.c as c_module
            from pkg.a import helper_name  # not a submodule: the package a itself (own parent: kept)
            from pkg import c, d  # submodules
            from pkg import THING  # the root package itself

            def late():
                importlib.import_module("pkg.e")
        """,
        "c.py": "import pkg\n",
        "d/__init__.py": "",
        "d/x.py": "from pkg.a.b import late\n",
        "e.py": "from . import c\nfrom .d.x import late\n",
    })
    graph = import_graph(package)
    edges = graph.edges
    assert set(edges["pkg.a.b"]) == {"pkg.c", "pkg.a", "pkg.d", "pkg.e"}
    # from pkg.a.b import late: pkg.a.b, and the package pkg.a above it; the root is left out.
    assert set(edges["pkg.d.x"]) == {"pkg.a.b", "pkg.a"}
    assert edges["pkg.d.x"]["pkg.a"].implied
    assert set(edges["pkg.e"]) == {"pkg.c", "pkg.d.x", "pkg.d"}
    offenders = {(i.source, i.line) for i in graph.root_imports()}
    assert offenders == {("pkg.a.b", 6), ("pkg.c", 1)}
    # pkg.a.b -> pkg.e -> pkg.d.x -> pkg.a.b
    cycles = find_cycles(graph)
    assert len(cycles) == 1 and {i.source for i in cycles[0]} == {"pkg.a.b", "pkg.e", "pkg.d.x"}


def test_an_acyclic_package_passes(tmp_path):
    package = _write(tmp_path / "pkg", {
        "__init__.py": "from pkg import a, b\n",
        "a.py": "def f():\n    from pkg import b\n",
        "b.py": "from pkg.c import x\n",
        "c.py": "x = 1\n",
    })
    assert find_cycles(import_graph(package)) == []
    assert import_graph(package).root_imports() == []
