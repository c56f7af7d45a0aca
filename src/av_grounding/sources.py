"""The package's own source files that a module reaches through its imports, read with ``ast``
(never executed), and their digest.

The resumable stages (extract, train, infer) put ``code_digest`` of their entry module into their
manifests: a rerun keeps earlier work only when the code that made it is the code that runs now.
Their outputs are ``persist: true`` in dvc.yaml (DVC leaves them in place so a killed
``dvc exp run`` can resume), so after a change of their code it is this digest, not DVC, that
makes them start over. The same walk tells tests/test_dvc_yaml.py which files each stage must
declare as deps: the files that decide a rerun in DVC and in the manifests are one set.
"""

from __future__ import annotations

import ast
import functools
import hashlib
from pathlib import Path

PACKAGE = "av_grounding"
SRC = Path(__file__).resolve().parents[1]  # the folder holding the package


def module_file(module: str) -> Path | None:
    """The source file of a module of the package (``a.b`` -> ``a/b.py`` or ``a/b/__init__.py``
    under SRC), or None when no such module exists."""
    base = SRC.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def imported_modules(source: Path, module: str) -> set[str]:
    """Package modules that ``source`` (the file of ``module``; ``"__main__"`` for a script)
    imports anywhere in its body, function-level imports included, with the packages above
    them, whose ``__init__`` runs first."""
    package = module if source.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(source.read_text(), filename=str(source))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0]  # each extra dot: one package up
                base = f"{anchor}.{node.module}" if node.module else anchor
            else:
                base = node.module or ""
            found.add(base)
            # `from pkg import name` imports the submodule pkg.name when there is one.
            found.update(f"{base}.{alias.name}" for alias in node.names if module_file(f"{base}.{alias.name}"))
    ours = {name for name in found if name == PACKAGE or name.startswith(PACKAGE + ".")}
    with_parents = set(ours)
    for name in ours:
        parts = name.split(".")
        with_parents.update(".".join(parts[:end]) for end in range(1, len(parts)))
    return with_parents


def reached_modules(modules: set[str]) -> dict[str, Path]:
    """Every package module reached from ``modules`` through imports, with its file.

    Raises:
        ModuleNotFoundError: a module imported has no file under SRC.
    """
    pending, reached = set(modules), {}
    while pending:
        module = pending.pop()
        if module in reached:
            continue
        source = module_file(module)
        if source is None:
            raise ModuleNotFoundError(f"{module!r} is imported but has no file under {SRC}")
        reached[module] = source
        pending |= imported_modules(source, module) - reached.keys()
    return reached


@functools.cache
def code_digest(*modules: str) -> str:
    """sha256 over the files ``modules`` reach (``reached_modules``; a module that is read as a
    file rather than imported, such as a script handed to another program, is named here too):
    each file's path relative to SRC (POSIX form) and its bytes, in path order. The same on every
    machine and checkout."""
    digest = hashlib.sha256()
    for path in sorted(path.relative_to(SRC).as_posix() for path in reached_modules(set(modules)).values()):
        digest.update(path.encode() + b"\0" + (SRC / path).read_bytes() + b"\0")
    return digest.hexdigest()
