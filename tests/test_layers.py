"""Layers point down and nothing imports in a circle, read from the source with ``ast`` (nothing is imported).

The graph has one node per project module (every .py under vstream/, memory/, eval/, and app.py) and an
edge for every ``import`` / ``from ... import`` of another project module, at the top of a file or inside a
function (lazy), relative or absolute. ``from pkg import name`` points at ``pkg.name`` when that is a
module, else at ``pkg``. Importing ``a.b.c`` is not counted as importing the packages ``a`` and ``a.b``
(Python runs their ``__init__`` first, but that is not a dependency the importer chose).

The rules (docs/architecture.md draws them):
(a) memory/ imports nothing from vstream/ or eval/ (it knows tensors, not models);
(b) vstream/ imports nothing from eval/, except the top-layer commands vstream/cli/main.py and vstream/bench/;
(c) no module imports app;
(d) no import cycles among project modules;
(e) no file over 500 lines unless its module docstring says why, with the word "long:".
"""
from __future__ import annotations

import ast
from pathlib import Path

from conftest import REPO

PACKAGES = ("vstream", "memory", "eval")
TOP_MODULES = ("app",)
MAX_LINES = 500


def project_files(root: Path) -> dict[str, Path]:
    """Module name -> file, for every .py under the project packages and the top-level modules."""
    out: dict[str, Path] = {}
    for pkg in PACKAGES:
        for path in sorted((root / pkg).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join(parts)] = path
    for name in TOP_MODULES:
        if (root / f"{name}.py").is_file():
            out[name] = root / f"{name}.py"
    return out


def _longest_known(dotted: str, known: set[str]) -> str | None:
    parts = dotted.split(".")
    for n in range(len(parts), 0, -1):
        cand = ".".join(parts[:n])
        if cand in known:
            return cand
    return None


def imports_of(module: str, path: Path, known: set[str]) -> set[str]:
    """The project modules ``module`` (at ``path``) imports anywhere in its file."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    is_pkg = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                hit = _longest_known(alias.name, known)
                if hit:
                    found.add(hit)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".") if is_pkg else module.split(".")[:-1]
                base = base[:len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:
                sub = f"{target}.{alias.name}" if target else alias.name
                hit = sub if sub in known else _longest_known(target, known)
                if hit:
                    found.add(hit)
    found.discard(module)
    return found


def import_graph(root: Path) -> dict[str, set[str]]:
    """Module -> the project modules it imports."""
    files = project_files(root)
    known = set(files)
    return {m: imports_of(m, p, known) for m, p in files.items()}


def _in(module: str, pkg: str) -> bool:
    return module == pkg or module.startswith(pkg + ".")


def upward_imports(graph: dict[str, set[str]]) -> dict[str, list[str]]:
    """Rule -> the offending edges ("a -> b"), for rules (a), (b) and (c)."""
    bad: dict[str, list[str]] = {"memory": [], "vstream": [], "app": []}
    for src, dsts in sorted(graph.items()):
        for dst in sorted(dsts):
            edge = f"{src} -> {dst}"
            if _in(src, "memory") and (_in(dst, "vstream") or _in(dst, "eval")):
                bad["memory"].append(edge)
            if (_in(src, "vstream") and _in(dst, "eval") and src != "vstream.cli.main"
                    and not _in(src, "vstream.bench")):
                bad["vstream"].append(edge)
            if dst == "app":
                bad["app"].append(edge)
    return bad


def import_knots(graph: dict[str, set[str]]) -> list[set[str]]:
    """Groups of two or more modules that all reach each other through imports (strongly connected)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[set[str]] = []

    def visit(v: str) -> None:  # Tarjan's algorithm, recursive (the graph has ~100 nodes)
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.add(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(group)

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(groups, key=min)


def shortest_cycle(graph: dict[str, set[str]], group: set[str]) -> list[str]:
    """A shortest way round ``[a, b, ..., a]`` from the group's first module (by name) back to itself."""
    start = min(group)
    prev: dict[str, str] = {}
    frontier, seen = [start], {start}
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(graph[v] & group):
                if w == start:
                    path = [v]
                    while path[-1] != start:
                        path.append(prev[path[-1]])
                    return path[::-1] + [start]
                if w not in seen:
                    seen.add(w)
                    prev[w] = v
                    nxt.append(w)
        frontier = nxt
    raise ValueError(f"{sorted(group)} is not strongly connected")


def long_files(root: Path, limit: int = MAX_LINES) -> list[str]:
    """Files over ``limit`` lines whose module docstring gives no reason (no "long:")."""
    out = []
    for module, path in sorted(project_files(root).items()):
        text = path.read_text(encoding="utf-8")
        n = len(text.splitlines())
        doc = ast.get_docstring(ast.parse(text)) or ""
        if n > limit and "long:" not in doc.lower():
            out.append(f"{path.relative_to(root)} ({n} lines)")
    return out


# --- the checker itself, on a planted tree whose graph is written out by hand ---------------------------

def _plant(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)


def test_checker_on_a_planted_tree(tmp_path):
    _plant(tmp_path, {
        "memory/__init__.py": "",
        "memory/a.py": "def f():\n    from vstream import b  # lazy\n",
        "memory/sub/__init__.py": "from .. import a\n",
        "memory/sub/deep.py": "from ..a import f\nfrom . import other\nimport numpy\n",
        "memory/sub/other.py": "",
        "vstream/__init__.py": "",
        "vstream/b.py": "from . import c\nfrom .c import NAME\n",
        "vstream/c.py": "import memory.a\nfrom eval.x import y\nNAME = 1\n",
        "vstream/cli/main.py": "from eval import x\n",
        "vstream/bench/__init__.py": "from vstream.bench import ingest\n",
        "vstream/bench/ingest.py": "import eval.x\n",
        "vstream/d.py": "try:\n    import app\nexcept ImportError:\n    pass\n",
        "vstream/e.py": '"""Why this is long: a table."""\n' + "x = 1\n" * 20,
        "vstream/f.py": '"""Short."""\n' + "x = 1\n" * 20,
        "eval/__init__.py": "",
        "eval/x.py": "import vstream.d\ny = 1\n",
        "app.py": "import vstream.b.c.nothing\n",
    })
    graph = import_graph(tmp_path)
    assert graph == {
        "memory": set(), "memory.a": {"vstream.b"}, "memory.sub": {"memory.a"},
        "memory.sub.deep": {"memory.a", "memory.sub.other"}, "memory.sub.other": set(),
        "vstream": set(), "vstream.b": {"vstream.c"}, "vstream.c": {"memory.a", "eval.x"},
        "vstream.cli.main": {"eval.x"}, "vstream.bench": {"vstream.bench.ingest"}, "vstream.bench.ingest": {"eval.x"},
        "vstream.d": {"app"}, "vstream.e": set(), "vstream.f": set(), "eval": set(), "eval.x": {"vstream.d"},
        "app": {"vstream.b"},
    }
    assert upward_imports(graph) == {"memory": ["memory.a -> vstream.b"], "vstream": ["vstream.c -> eval.x"],
                                     "app": ["vstream.d -> app"]}
    knots = import_knots(graph)
    assert knots == [{"app", "vstream.b", "vstream.c", "eval.x", "vstream.d", "memory.a"}]
    assert shortest_cycle(graph, knots[0]) == ["app", "vstream.b", "vstream.c", "eval.x", "vstream.d", "app"]
    assert long_files(tmp_path, limit=10) == ["vstream/f.py (21 lines)"]


# --- the project ----------------------------------------------------------------------------------------

def test_memory_imports_nothing_from_vstream_or_eval():
    bad = upward_imports(import_graph(REPO))["memory"]
    assert not bad, "memory/ knows tensors, not models; these point up:\n" + "\n".join(bad)


def test_vstream_imports_eval_only_from_the_top_layer_commands():
    bad = upward_imports(import_graph(REPO))["vstream"]
    assert not bad, "only vstream/cli/main.py and vstream/bench/ may import eval:\n" + "\n".join(bad)


def test_nothing_imports_app():
    bad = upward_imports(import_graph(REPO))["app"]
    assert not bad, "app.py is the top; nothing imports it:\n" + "\n".join(bad)


def test_no_import_cycles():
    graph = import_graph(REPO)
    knots = import_knots(graph)
    assert not knots, "import cycles:\n" + "\n".join(
        " -> ".join(shortest_cycle(graph, k)) + f"  (modules in this knot: {', '.join(sorted(k))})" for k in knots)


def test_no_long_file_without_a_reason():
    bad = long_files(REPO)
    assert not bad, (f"over {MAX_LINES} lines without a reason (a module docstring with 'long: ...'):\n"
                     + "\n".join(bad))
