"""No import circle anywhere in lib/, analysis/ or experiments/: the module graph, built statically from
every import statement (the lazy ones inside functions too, which hide a circle from a plain import
of the module), has no cycle. A circle means two modules each need the other, i.e. one idea in two rooms.
"""

from __future__ import annotations

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGES = ("lib", "analysis", "experiments")


def module_name(rel: str) -> str:
    parts = [p for p in pathlib.PurePosixPath(rel).with_suffix("").parts if p != "__init__"]
    return ".".join(parts)


def statements(tree: ast.AST):
    """Every statement, nested ones included (imports are statements: expressions need no visit)."""
    stack = [tree]
    while stack:
        node = stack.pop()
        yield node
        for field in ("body", "orelse", "finalbody", "handlers", "cases"):
            stack.extend(getattr(node, field, None) or [])


def import_graph(sources: dict[str, str]) -> dict[str, set[str]]:
    """{module: the project modules it imports}; `sources` maps a path relative to the root to its text.
    `from P import x` is an edge to P.x when that is a module, else to P; `import a.b.c` to the
    longest project module it names."""
    modules = {module_name(rel): rel for rel in sources}
    graph: dict[str, set[str]] = {m: set() for m in modules}

    def known(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    for me, rel in modules.items():
        package = me if rel.endswith("__init__.py") else me.rpartition(".")[0]
        for node in statements(ast.parse(sources[rel])):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: from the package, up level - 1
                    up = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                    base = ".".join(up + ([node.module] if node.module else []))
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            for t in targets:
                target = known(t)
                if target and target != me:
                    graph[me].add(target)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected component of more than one module (Tarjan), as a path."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
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
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def project_sources() -> dict[str, str]:
    files = sorted(p for d in PACKAGES for p in (ROOT / d).rglob("*.py"))
    return {p.relative_to(ROOT).as_posix(): p.read_text() for p in files}


def test_there_is_no_import_circle_in_the_project():
    graph = import_graph(project_sources())
    assert len(graph) > 50 and sum(map(len, graph.values())) > 100  # the graph really was built
    assert cycles(graph) == []


@pytest.mark.parametrize(
    "sources, circle",
    [
        ({"experiments/a_cmd.py": "from experiments.b_cmd import f\n",
          "experiments/b_cmd.py": "def f():\n    from experiments.a_cmd import g\n"}, ["experiments.a_cmd", "experiments.b_cmd"]),
        ({"lib/x/__init__.py": "", "lib/x/a.py": "from . import b\n", "lib/x/b.py": "from .c import y\n",
          "lib/x/c.py": "def y():\n    import lib.x.a.something\n"}, ["lib.x.a", "lib.x.b", "lib.x.c"]),
        ({"analysis/p.py": "from analysis import q\n", "analysis/q.py": "import analysis.p\n"}, ["analysis.p", "analysis.q"]),
    ],
)
def test_a_circle_is_found_even_through_imports_inside_functions(sources, circle):
    assert cycles(import_graph(sources)) == [circle]


def test_imports_that_only_point_one_way_are_no_circle():
    sources = {"lib/x/__init__.py": "from lib.x.a import f\n", "lib/x/a.py": "from lib.x.b import g\n", "lib/x/b.py": "import numpy\n"}
    assert import_graph(sources) == {"lib.x": {"lib.x.a"}, "lib.x.a": {"lib.x.b"}, "lib.x.b": set()}
    assert cycles(import_graph(sources)) == []
