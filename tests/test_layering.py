"""The package keeps its floors: ``pipeline/`` (one module per stage) on top of libraries that
write no metrics files, DVCLive curves or timing files, no import cycle, and no arrow running back up.

Imports are read with ``ast`` (``av_grounding.sources``, function-level imports included), never
executed. A module's own enclosing packages are not counted as its dependencies: Python runs
their ``__init__`` first, but none of them imports anything.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from av_grounding.cli import STAGES
from av_grounding.sources import PACKAGE, SRC, imported_modules

PIPELINE = f"{PACKAGE}.pipeline"


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES: dict[str, Path] = {module_name(p): p for p in sorted((SRC / PACKAGE).rglob("*.py"))
                            if "__pycache__" not in p.parts}


def dependencies(module: str) -> set[str]:
    """The package modules ``module`` imports, less itself and its enclosing packages."""
    enclosing = {module.rsplit(".", n)[0] for n in range(1, module.count(".") + 1)}
    return imported_modules(MODULES[module], module) - enclosing - {module}


GRAPH: dict[str, set[str]] = {module: dependencies(module) for module in MODULES}


def package_of(module: str) -> str:
    """``av_grounding.models.inputs`` -> ``av_grounding.models``; a root module is its own."""
    parts = module.split(".")
    return ".".join(parts[:2])


def cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as a path that ends where it starts, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for after in sorted(graph.get(node, ())):
            if state.get(after) == 1:
                return path[path.index(after):] + [after]
            if after not in state and (found := visit(after)):
                return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_the_walk_sees_every_module_and_lazy_imports():
    assert f"{PIPELINE}.train" in MODULES and f"{PACKAGE}.models.inputs" in MODULES
    assert f"{PACKAGE}.training.hf" in GRAPH[f"{PIPELINE}.train"]  # imported inside train()
    assert cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle_between_modules():
    found = cycle(GRAPH)
    assert found is None, f"import cycle: {' -> '.join(found)}"


def test_no_import_cycle_between_packages():
    packages: dict[str, set[str]] = {}
    for module, imported in GRAPH.items():
        packages.setdefault(package_of(module), set()).update(
            package_of(other) for other in imported if package_of(other) != package_of(module))
    found = cycle(packages)
    assert found is None, f"import cycle between packages: {' -> '.join(found)}"


def test_only_the_cli_runs_the_pipeline_and_nothing_imports_it():
    """``cli.py`` names every stage's entry function in ``av_grounding.pipeline.<stage>`` (by
    string); no library module imports ``pipeline/`` (benchmarks and tests may)."""
    for stage, spec in STAGES.items():
        module, _, function = spec.entry.partition(":")
        assert module == f"{PIPELINE}.{stage}", f"STAGES[{stage!r}] runs {spec.entry}, not pipeline/{stage}.py"
        assert module in MODULES and function
    importers = sorted(f"{module} imports {other}" for module, imported in GRAPH.items()
                       if not module.startswith(PIPELINE) for other in imported if other.startswith(PIPELINE))
    assert not importers, importers


REPORTS = ("metrics", "timing", "live", "live_dir")  # the stages' report paths, as their parameters are named


def writes_reports(path: Path) -> list[str]:
    """Where a module takes or writes a stage's report: a parameter named as one of REPORTS and
    annotated as a path, ``write_json(<one of REPORTS>, ...)``, or an import of DVCLive."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for arg in [*node.args.posonlyargs, *node.args.args, *node.args.kwonlyargs]:
                if arg.arg in REPORTS and arg.annotation is not None and "Path" in ast.unparse(arg.annotation):
                    found.append(f"{path.name}:{node.lineno} {node.name}({arg.arg}: {ast.unparse(arg.annotation)})")
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "write_json"
                and node.args and isinstance(node.args[0], ast.Name) and node.args[0].id in REPORTS):
            found.append(f"{path.name}:{node.lineno} write_json({node.args[0].id}, ...)")
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [node.module or ""] if isinstance(node, ast.ImportFrom) else [a.name for a in node.names]
            found += [f"{path.name}:{node.lineno} import {name}" for name in names if name.split(".")[0] == "dvclive"]
    return found


def test_the_checker_sees_a_report_writer(tmp_path):
    source = tmp_path / "stage.py"
    source.write_text("def stage(params, metrics: Path | None = None, live_dir: Path = None):\n"
                      "    from dvclive import Live\n    write_json(metrics, {})\n    write_json(timing, {})\n")
    assert writes_reports(source) == ["stage.py:1 stage(metrics: Path | None)", "stage.py:1 stage(live_dir: Path)",
                                      "stage.py:2 import dvclive", "stage.py:3 write_json(metrics, ...)",
                                      "stage.py:4 write_json(timing, ...)"]


@pytest.mark.parametrize("module", sorted(m for m in MODULES if not m.startswith(PIPELINE)))
def test_no_library_module_writes_a_stage_report(module):
    """Metrics files, DVCLive curves and timing files are written by ``pipeline/`` alone."""
    found = writes_reports(MODULES[module])
    assert not found, f"{module} takes or writes a stage's report, which only pipeline/ does: {found}"


@pytest.mark.parametrize("lower, upper", [("models", "training"), ("dataset", "models"),
                                               ("dataset", "training"), ("training", "pipeline")])
def test_no_arrow_runs_back_up(lower, upper):
    """``models/`` (the input contract, generation) stands below ``training/``, ``dataset/`` below
    both (the format stage, not ``dataset/``, counts tokens with a model's tokenizer)."""
    arrows = sorted(f"{module} imports {other}" for module, imported in GRAPH.items()
                    if module.startswith(f"{PACKAGE}.{lower}.") for other in imported
                    if other == f"{PACKAGE}.{upper}" or other.startswith(f"{PACKAGE}.{upper}."))
    assert not arrows, arrows
