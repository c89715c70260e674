"""House rules that keep the codebase honest: import direction, no pickle on network paths."""

from __future__ import annotations

import ast
import re
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
