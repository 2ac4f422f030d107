"""The service uses its dependencies through their documented interfaces only: no
private module of psycopg, psycopg_pool, uvicorn or Starlette is imported, and no
private attribute (`obj._name`) of anything but the service's own objects is touched."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SERVICE = Path(__file__).resolve().parent.parent / "service"
LIBRARIES = ("psycopg", "psycopg_pool", "uvicorn", "starlette", "aiosql", "jwt")


def _modules() -> list[Path]:
    return sorted(SERVICE.glob("*.py"))


@pytest.mark.parametrize("path", _modules(), ids=lambda p: p.name)
def test_no_private_module_of_a_dependency_is_imported(path: Path):
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        for name in names:
            parts = name.split(".")
            if parts[0] in LIBRARIES:
                assert not any(p.startswith("_") for p in parts[1:]), f"{path.name}: {name}"


@pytest.mark.parametrize("path", _modules(), ids=lambda p: p.name)
def test_no_private_attribute_of_a_foreign_object_is_used(path: Path):
    """`self._x` and `cls._x` are the service's own; any other `x._y` is a finding
    unless `x` is a name the module itself defines (its own private helpers)."""
    tree = ast.parse(path.read_text())
    own = {
        node.name
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)
    } | {
        target.id
        for node in ast.walk(tree)
        if isinstance(node, ast.Assign)
        for target in node.targets
        if isinstance(target, ast.Name)
    }
    for node in ast.walk(tree):
        if not isinstance(node, ast.Attribute):
            continue
        if not node.attr.startswith("_") or node.attr.startswith("__"):
            continue
        base = node.value
        if isinstance(base, ast.Name) and (base.id in {"self", "cls"} or base.id in own):
            continue
        pytest.fail(f"{path.name}:{node.lineno}: {ast.unparse(node)}")
