"""House rules that keep the codebase honest: import direction, no import circles, no pickle on network paths."""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ORDER = {"streamproc": 0, "trainer": 1, "serving": 2}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module.split(".")[0])
    return out


@pytest.mark.parametrize("package", sorted(ORDER))
def test_imports_run_one_way(package: str) -> None:
    for path in (ROOT / package).rglob("*.py"):
        for mod in _imports(path) & set(ORDER):
            assert ORDER[mod] <= ORDER[package], f"{path.relative_to(ROOT)} imports {mod}: imports run streamproc <- trainer <- serving"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _import_graph(package: str) -> dict[str, set[str]]:
    """Module -> the modules of the same package it imports, anywhere in the file (function-level
    imports included: they close a circle at run time just the same); ``if TYPE_CHECKING:`` blocks
    are left out (never executed)."""
    mods = {_module_name(p): p for p in (ROOT / package).rglob("*.py")}
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for mod, path in mods.items():
        tree = ast.parse(path.read_text())
        typing_only = {id(n) for node in ast.walk(tree)
                       if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
                       for stmt in node.body for n in ast.walk(stmt)}
        here = mod.split(".") if path.name == "__init__.py" else mod.split(".")[:-1]
        for node in ast.walk(tree):
            if id(node) in typing_only:
                continue
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(here[: len(here) - node.level + 1] + ([node.module] if node.module else []))
                targets = [base] + [f"{base}.{a.name}" for a in node.names]  # `from pkg import module` too
            else:
                continue
            for t in targets:
                while t and t not in mods:
                    t = t.rpartition(".")[0]
                if t and t != mod:
                    graph[mod].add(t)
    return graph


def _circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The import circles: strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = [stack.pop()]
            while comp[-1] != v:
                comp.append(stack.pop())
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(out)


def test_circle_finder_sees_function_level_and_relative_imports(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from pkg.b import f\n")
    (pkg / "b.py").write_text("def f():\n    from . import a\n")
    (pkg / "c.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg import a\n")
    (pkg / "d.py").write_text("import pkg.c\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    graph = _import_graph("pkg")
    assert graph["pkg.d"] == {"pkg.c"} and graph["pkg.c"] == set()
    assert _circles(graph) == [["pkg.a", "pkg.b"]]


@pytest.mark.parametrize("package", sorted(ORDER))
def test_no_import_circles_inside_a_package(package: str) -> None:
    circles = _circles(_import_graph(package))
    assert not circles, f"import circles in {package}: {circles}"


# Tooling subpackages: benchmarks and whole-loop operation. Only the ``reco.commands`` entry points
# (pyproject.toml) and each other import them; the product never does.
TOOLING = ("bench", "ops")


def _is_tooling(module: str) -> bool:
    parts = module.split(".")
    return len(parts) > 1 and parts[1] in TOOLING


def _all_imports(path: Path) -> set[str]:
    """Every absolute module name ``path`` imports (function-level too), ``from a import b`` as a.b too."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
    return out


@pytest.mark.parametrize("package", sorted(ORDER))
def test_product_never_imports_tooling_or_tests(package: str) -> None:
    bad = []
    for path in (ROOT / package).rglob("*.py"):
        mod = _module_name(path)
        for target in _all_imports(path):
            if target.split(".")[0] in ("tests", "support", "conftest"):
                bad.append(f"{mod} imports {target} (test helpers stay in tests/)")
            elif target.split(".")[0] in ORDER and _is_tooling(target) and not _is_tooling(mod):
                bad.append(f"{mod} imports {target} (bench/ops are registered through the reco.commands entry points)")
    assert not bad, bad


def test_tooling_checks_see_function_level_imports(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pkg = tmp_path / "serving"
    (pkg / "bench").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "bench" / "__init__.py").write_text("")
    (pkg / "bench" / "http.py").write_text("from serving import app\n")
    (pkg / "app.py").write_text("def f():\n    from serving.bench import http\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    with pytest.raises(AssertionError, match=r"serving.app imports serving.bench.http"):
        test_product_never_imports_tooling_or_tests("serving")


def test_entry_points_name_the_command_modules() -> None:
    """Every ``reco.commands`` entry point in pyproject.toml names a module with ``register``, and
    every tooling subpackage is registered there (else its commands would silently vanish)."""
    import importlib
    import tomllib

    eps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["entry-points"]["reco.commands"]
    for name, target in eps.items():
        module, _, attr = target.partition(":")
        assert callable(getattr(importlib.import_module(module), attr, None)), f"entry point {name} = {target}: no such function"
    tooling = {".".join(p.relative_to(ROOT).parts[:2]) for pkg in ORDER for sub in TOOLING for p in [ROOT / pkg / sub] if p.is_dir()}
    registered = {t.partition(":")[0] for t in eps.values()}
    assert tooling <= registered, f"tooling subpackages without an entry point: {sorted(tooling - registered)}"


def test_no_pickle_on_any_code_path() -> None:
    pattern = re.compile(r"import (cloud)?pickle|(cloud)?pickle\.|from (cloud)?pickle|torch\.load\(|np\.load\([^)]*allow_pickle=True")
    hits = [
        f"{p.relative_to(ROOT)}:{n}"
        for pkg in ORDER
        for p in (ROOT / pkg).rglob("*.py")
        for n, line in enumerate(p.read_text().splitlines(), 1)
        if pattern.search(line) and "noqa: pickle-ok" not in line
    ]
    assert not hits, f"pickle on a code path: {hits}"
