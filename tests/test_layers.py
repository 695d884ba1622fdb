"""Layers point down and nothing imports in a circle, read from the source with ``ast`` (nothing is imported).

The graph has one node per project module (every .py under vstream/, memory/, eval/, and app.py) and an
edge for every ``import`` / ``from ... import`` of another project module, at the top of a file or inside a
function (lazy), relative or absolute. ``from pkg import name`` points at ``pkg.name`` when that is a
module, at the module that defines ``name`` when ``pkg`` exports it lazily (its ``_EXPORTS`` table, see
``vstream.lazy_exports``), else at ``pkg``. Importing ``a.b.c`` is not counted as importing the packages
``a`` and ``a.b`` (Python runs their ``__init__`` first, but that is not a dependency the importer chose).

The rules (docs/architecture.md draws them):
(a) memory/ imports nothing from vstream/ or eval/ (it knows tensors, not models);
(b) vstream/ imports nothing from eval/, except the top-layer commands vstream/cli/main.py and vstream/bench/;
(c) no module imports app;
(d) no import cycles among project modules;
(e) no file over 500 lines;
(f) between units (memory, eval, app.py, the vstream package root, and each sub-package or top-level module
    of vstream/) only the arrows of the table ``ALLOWED`` below; every unit is in it, and it has no cycle.
"""
from __future__ import annotations

import ast
from pathlib import Path

from conftest import REPO

PACKAGES = ("vstream", "memory", "eval")
TOP_MODULES = ("app",)
MAX_LINES = 500

#: Who may import whom, between units: "A": {B, ...} reads "A may import B". Units inside vstream/ go by their
#: name there ("engine" is vstream/engine/, "api" is vstream/api.py, "vstream" the package root, which holds
#: only ``lazy_exports``: its public names resolve to the modules that define them). Lowest layers first.
ALLOWED: dict[str, set[str]] = {
    "memory": set(),
    "vstream": set(),
    "types": set(),
    "config": set(),
    "clock": set(),
    "sources": {"clock"},
    "models": {"vstream", "clock"},
    "speech": {"vstream", "config", "clock", "sources"},
    "engine": {"vstream", "memory", "config", "types", "clock", "models", "sources"},
    "session": {"vstream", "memory", "config", "types", "clock", "sources", "engine"},
    "api": {"config", "types", "clock", "models", "sources", "speech", "engine", "session"},
    "fleet": {"vstream", "memory", "config", "types", "clock", "sources", "engine", "session"},
    "serve": {"vstream", "memory", "types", "clock", "models", "sources", "speech", "session", "api", "fleet"},
    "app": {"vstream", "memory", "config", "types", "clock", "models", "sources", "session", "api", "fleet"},
    "eval": {"memory", "sources", "api"},
    "bench": {"eval", "memory", "config", "models", "sources", "speech", "engine", "session", "api", "fleet",
              "serve"},
    "cli": {"eval", "memory", "vstream", "config", "clock", "models", "sources", "engine", "session", "api",
            "fleet", "serve", "bench"},
    "__main__": {"cli"},
    "app.py": {"config", "models", "sources", "api", "app"},
}


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


def lazy_exports_of(path: Path) -> dict[str, str]:
    """A package ``__init__``'s lazy exports: the ``_EXPORTS = {name: submodule}`` literal ({} when none)."""
    for node in ast.parse(path.read_text(encoding="utf-8"), filename=str(path)).body:
        if (isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "_EXPORTS" for t in node.targets)
                and isinstance(node.value, ast.Dict)):
            return {str(k): str(v) for k, v in ast.literal_eval(node.value).items()}
    return {}


def imports_of(module: str, path: Path, known: set[str], exports: dict[str, dict[str, str]] | None = None
               ) -> set[str]:
    """The project modules ``module`` (at ``path``) imports anywhere in its file.

    ``exports``: package -> its lazy exports (name -> submodule); ``from pkg import name`` of a lazily
    exported name points at the module that defines it (that module is imported when the name is used)."""
    exports = exports or {}
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
                lazy = exports.get(target, {}).get(alias.name)
                if sub not in known and lazy is not None and f"{target}.{lazy}" in known:
                    sub = f"{target}.{lazy}"
                hit = sub if sub in known else _longest_known(target, known)
                if hit:
                    found.add(hit)
    found.discard(module)
    return found


def import_graph(root: Path) -> dict[str, set[str]]:
    """Module -> the project modules it imports."""
    files = project_files(root)
    known = set(files)
    exports = {m: lazy_exports_of(p) for m, p in files.items() if p.name == "__init__.py"}
    return {m: imports_of(m, p, known, exports) for m, p in files.items()}


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
    """Files over ``limit`` lines."""
    out = []
    for module, path in sorted(project_files(root).items()):
        n = len(path.read_text(encoding="utf-8").splitlines())
        if n > limit:
            out.append(f"{path.relative_to(root)} ({n} lines)")
    return out


def unit_of(module: str) -> str:
    """The unit a module belongs to: memory, eval, app.py, vstream (the root) or a name inside vstream/."""
    parts = module.split(".")
    if parts[0] == "app":
        return "app.py"
    if parts[0] != "vstream":
        return parts[0]
    return parts[1] if len(parts) > 1 else "vstream"


def unit_arrows(graph: dict[str, set[str]]) -> dict[tuple[str, str], str]:
    """(unit, unit it imports) -> one module edge that draws the arrow ("a.b -> c.d", the first by name)."""
    out: dict[tuple[str, str], str] = {}
    for src, dsts in sorted(graph.items()):
        for dst in sorted(dsts):
            a, b = unit_of(src), unit_of(dst)
            if a != b:
                out.setdefault((a, b), f"{src} -> {dst}")
    return out


def forbidden_arrows(graph: dict[str, set[str]], allowed: dict[str, set[str]]) -> list[str]:
    """Arrows between units that ``allowed`` does not list, each with a module edge that draws it; units
    missing from ``allowed`` are reported as such."""
    units = sorted({unit_of(m) for m in graph})
    bad = [f"{u}: not in the table (add its row and draw it in docs/architecture.md)" for u in units
           if u not in allowed]
    for (a, b), edge in sorted(unit_arrows(graph).items()):
        if a in allowed and b not in allowed[a]:
            bad.append(f"{a} -> {b} ({edge})")
    return bad


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
        "vstream/e.py": '"""Why this is long: a table (no longer a way out)."""\n' + "x = 1\n" * 20,
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
    assert long_files(tmp_path, limit=10) == ["vstream/e.py (21 lines)", "vstream/f.py (21 lines)"]


def test_package_arrows_on_a_planted_tree(tmp_path):
    """A forbidden arrow is caught, also when it hides behind a lazy export of the package root or a lazy
    import inside a function; a unit missing from the table is named."""
    lazy = "from vstream import lazy_exports\n"
    _plant(tmp_path, {
        "memory/__init__.py": "",
        "memory/store.py": "",
        "vstream/__init__.py": 'def lazy_exports(p, e):\n    pass\n_EXPORTS = {"Agent": "api"}\n',
        "vstream/api.py": "from vstream.engine import Engine\n",
        "vstream/engine/__init__.py": lazy + '_EXPORTS = {"Engine": "core"}\n',
        "vstream/engine/core.py": "import memory.store\n",
        "vstream/models/__init__.py": lazy,
        "vstream/models/x.py": "def f():\n    from vstream import Agent  # lazy, through the root's export\n",
        "vstream/newpkg/__init__.py": "",
        "vstream/newpkg/a.py": "from ..engine import core\n",
    })
    graph = import_graph(tmp_path)
    assert graph["vstream.api"] == {"vstream.engine.core"}  # resolved through the engine's _EXPORTS
    assert graph["vstream.models.x"] == {"vstream.api"}  # through the root's _EXPORTS, not to the root
    assert graph["vstream.engine"] == {"vstream"} and graph["vstream.newpkg.a"] == {"vstream.engine.core"}
    allowed = {"memory": set(), "vstream": set(), "api": {"engine"}, "engine": {"vstream", "memory"},
               "models": {"vstream"}}
    assert forbidden_arrows(graph, allowed) == [
        "newpkg: not in the table (add its row and draw it in docs/architecture.md)",
        "models -> api (vstream.models.x -> vstream.api)"]
    allowed["models"].add("api")
    allowed["newpkg"] = {"engine"}
    assert forbidden_arrows(graph, allowed) == []


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


def test_no_long_file():
    bad = long_files(REPO)
    assert not bad, f"over {MAX_LINES} lines (split the file by job):\n" + "\n".join(bad)


def test_package_arrows_follow_the_table():
    bad = forbidden_arrows(import_graph(REPO), ALLOWED)
    assert not bad, "arrows between units that ALLOWED (tests/test_layers.py) does not list:\n" + "\n".join(bad)


def test_the_table_draws_layers():
    """ALLOWED itself has no cycle and names only units it has rows for (so it can be drawn bottom-up)."""
    assert all(b in ALLOWED for bs in ALLOWED.values() for b in bs), "an arrow to a unit without a row"
    assert not import_knots(ALLOWED), f"ALLOWED has a cycle: {import_knots(ALLOWED)}"


def drawn_arrows(text: str) -> dict[str, set[str]]:
    """The arrows docs/architecture.md draws in its section "Which way imports go": each line
    "<layer> <unit> ─► a, b, ..." ("root" is vstream)."""
    section = text.split("## Which way imports go", 1)[-1].split("\n## ", 1)[0]
    out: dict[str, set[str]] = {}
    for line in section.splitlines():
        if "─►" not in line or "may import" in line:
            continue
        left, right = line.split("─►", 1)
        name = lambda w: "vstream" if w == "root" else w  # noqa: E731
        out[name(left.split()[-1])] = {name(w.strip()) for w in right.split(",") if w.strip()}
    return out


def test_the_drawing_matches_the_table():
    drawn = drawn_arrows((REPO / "docs" / "architecture.md").read_text(encoding="utf-8"))
    want = {unit: targets for unit, targets in ALLOWED.items() if targets}
    assert drawn == want, "docs/architecture.md draws other arrows than ALLOWED: redraw it from the table"

