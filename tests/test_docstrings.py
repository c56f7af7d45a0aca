"""Every public function and method of the stage entry points (``pipeline/``) and of
``geometry/`` has a docstring (read with ``ast``: nothing is imported)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "av_grounding"
DOCUMENTED = ("pipeline", "geometry")


def public(name: str) -> bool:
    """A name without a leading underscore (dunders such as ``__init__`` are not public API)."""
    return not name.startswith("_")


def undocumented(path: Path) -> list[str]:
    """``module:qualified.name`` (line) of each public function, and public method of a public
    class, at the top level of ``path`` that has no docstring."""
    tree = ast.parse(path.read_text(), filename=str(path))
    missing = []
    functions = (ast.FunctionDef, ast.AsyncFunctionDef)
    for node in tree.body:
        if isinstance(node, functions) and public(node.name) and ast.get_docstring(node) is None:
            missing.append(f"{path.stem}:{node.name} (line {node.lineno})")
        if isinstance(node, ast.ClassDef) and public(node.name):
            for member in node.body:
                if isinstance(member, functions) and public(member.name) and ast.get_docstring(member) is None:
                    missing.append(f"{path.stem}:{node.name}.{member.name} (line {member.lineno})")
    return missing


@pytest.mark.parametrize("package", DOCUMENTED)
def test_every_public_function_has_a_docstring(package):
    modules = sorted((PACKAGE / package).glob("*.py"))
    assert modules, f"no modules under {PACKAGE / package}"
    missing = [name for path in modules for name in undocumented(path)]
    assert not missing, f"public functions of {package}/ without a docstring: " + ", ".join(missing)
