"""The README's install makes every way of using vstream work (issue 10, item 7).

Every third-party module that app.py, vstream/, memory/ and eval/ import (at module level or inside a
function: ``python app.py`` imports gradio when it builds the UI) must belong to a distribution named in
pyproject.toml's ``[project].dependencies`` (not only in an extra). Import names are mapped to
distributions with ``importlib.metadata.packages_distributions()``; imports guarded by
``except ImportError`` are optional and skipped.
"""
from __future__ import annotations

import ast
import importlib.metadata as md
import re
import sys
import tomllib

from conftest import REPO

OWN = {"vstream", "memory", "eval", "app", "conftest"}


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _guarded_lines(tree: ast.AST) -> set[int]:
    """Line numbers inside ``try:`` bodies whose handlers catch ImportError (optional imports)."""
    out: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Try):
            names = set()
            for h in node.handlers:
                for n in ([h.type] if not isinstance(h.type, ast.Tuple) else h.type.elts):
                    if isinstance(n, ast.Name):
                        names.add(n.id)
            if names & {"ImportError", "ModuleNotFoundError", "Exception"}:
                for stmt in node.body:
                    out.update(range(stmt.lineno, (stmt.end_lineno or stmt.lineno) + 1))
    return out


def imported_modules() -> dict[str, list[str]]:
    """Top-level module name -> files importing it (relative imports and our own packages excluded)."""
    files = [REPO / "app.py"] + sorted(p for d in ("vstream", "memory", "eval") for p in (REPO / d).rglob("*.py"))
    found: dict[str, list[str]] = {}
    for path in files:
        tree = ast.parse(path.read_text(), str(path))
        guarded = _guarded_lines(tree)
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
                names = [node.module]
            else:
                continue
            if node.lineno in guarded:
                continue
            for name in names:
                top = name.split(".")[0]
                if top not in OWN and top not in sys.stdlib_module_names and top != "__future__":
                    found.setdefault(top, []).append(str(path.relative_to(REPO)))
    return found


def core_dependencies() -> set[str]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    return {_norm(re.split(r"[\s<>=!~;\[(]", req, maxsplit=1)[0]) for req in project["dependencies"]}


def test_every_imported_module_is_a_core_dependency():
    deps = core_dependencies()
    dists = md.packages_distributions()
    missing = {}
    for module, where in sorted(imported_modules().items()):
        owners = {_norm(d) for d in dists.get(module, [])}
        if not owners:
            missing[module] = f"not installed (imported by {where[0]})"
        elif not owners & deps:
            missing[module] = f"from {sorted(owners)}, not in [project].dependencies (imported by {where[0]})"
    assert not missing, missing


def test_the_app_and_its_ui_library_are_covered():
    """The check above sees the app's gradio import (inside a function) and gradio is a core dependency."""
    mods = imported_modules()
    assert "gradio" in mods and "app.py" in mods["gradio"]
    assert "gradio" in core_dependencies()
