"""dvc.yaml is complete: a stage reruns whenever anything it reads changes.

For every stage the test follows the imports of its script and of its entry function (the
``STAGES`` registry of ``av_grounding.cli``) through ``av_grounding`` by reading the source with
``ast``, and requires each module file reached, every input path of the command and every params
section the stage reads to be declared in dvc.yaml.
"""

from __future__ import annotations

import shlex
from pathlib import Path, PurePosixPath

import pytest
import yaml

from av_grounding.cli import STAGES, reads_preset
from av_grounding.params import PRESET_KEY
from av_grounding.sources import imported_modules, reached_modules

REPO = Path(__file__).resolve().parents[1]
DVC_YAML: dict = yaml.safe_load((REPO / "dvc.yaml").read_text())
DVC_STAGES: dict = DVC_YAML["stages"]
# Where stages write their run's timing, which no stage declares (its hash must stay out of
# dvc.lock, its values out of `dvc metrics diff`).
TIMING = "metrics/timing"
PARAMS: dict = yaml.safe_load((REPO / "params.yaml").read_text())


def modules_used_by(stage: str) -> dict[str, Path]:
    """Every package module the stage's script and entry function reach, with its file."""
    entry_module = STAGES[stage].entry.partition(":")[0]
    return reached_modules(imported_modules(REPO / "stages" / f"{stage}.py", "__main__") | {entry_module})


def covers(declared: str, path: str) -> bool:
    """A declared path covers a file or folder equal to it or inside it."""
    declared_path, target = PurePosixPath(declared), PurePosixPath(path)
    return declared_path == target or declared_path in target.parents


def declared_paths(stage: dict, *sections: str) -> list[str]:
    """Paths listed in the stage's sections (entries are plain paths or {path: options})."""
    return [next(iter(entry)) if isinstance(entry, dict) else entry
            for section in sections for entry in stage.get(section, [])]


def command_paths(stage: str) -> dict[str, str]:
    """Path options the stage's command runs with: the CLI defaults overridden by the cmd's flags."""
    words = shlex.split(DVC_STAGES[stage]["cmd"])
    flags = dict(zip(words[2::2], words[3::2]))  # words: python stages/<stage>.py --flag value ...
    paths = {}
    for keyword, default in STAGES[stage].paths.items():
        value = flags.get("--" + keyword.replace("_", "-"), default)
        if value is not None:
            paths[keyword] = value
    return paths


def test_every_registered_stage_is_in_dvc_yaml():
    assert sorted(DVC_STAGES) == sorted(STAGES), "dvc.yaml stages differ from av_grounding.cli.STAGES"


@pytest.mark.parametrize("stage", sorted(DVC_STAGES))
def test_command_runs_the_stage_script_it_depends_on(stage):
    script = f"stages/{stage}.py"
    assert shlex.split(DVC_STAGES[stage]["cmd"])[:2] == ["python", script]
    assert script in declared_paths(DVC_STAGES[stage], "deps"), f"dvc.yaml stage {stage!r}: {script} is not a dep"


@pytest.mark.parametrize("stage", sorted(DVC_STAGES))
def test_every_module_the_stage_imports_is_a_dep(stage):
    deps = declared_paths(DVC_STAGES[stage], "deps")
    uncovered = sorted(str(source.relative_to(REPO)) for source in modules_used_by(stage).values()
                       if not any(covers(dep, str(source.relative_to(REPO))) for dep in deps))
    assert not uncovered, f"dvc.yaml stage {stage!r} imports these files without listing them in deps: {uncovered}"


@pytest.mark.parametrize("stage", sorted(DVC_STAGES))
def test_no_source_dep_is_stale(stage):
    """A dep on code the stage never imports makes edits there rerun it (and all after it)."""
    used = [str(source.relative_to(REPO)) for source in modules_used_by(stage).values()]
    stale = sorted(dep for dep in declared_paths(DVC_STAGES[stage], "deps")
                   if dep.startswith("src/") and not any(covers(dep, path) for path in used))
    assert not stale, f"dvc.yaml stage {stage!r} depends on source it does not use: {stale}"


@pytest.mark.parametrize("stage", sorted(DVC_STAGES))
def test_every_input_path_of_the_command_is_a_dep(stage):
    spec = DVC_STAGES[stage]
    outputs = declared_paths(spec, "outs", "metrics", "plots") + [TIMING]
    deps = declared_paths(spec, "deps")
    for keyword, path in command_paths(stage).items():
        if any(covers(path, out) or covers(out, path) for out in outputs):
            continue  # an output folder or file of this stage
        assert any(covers(path, dep) or covers(dep, path) for dep in deps), (
            f"dvc.yaml stage {stage!r} reads --{keyword} {path} but no dep covers it (deps: {deps})")


def _params_keys(stage: dict) -> list[str]:
    keys = []
    for entry in stage.get("params", []):
        if isinstance(entry, dict):  # {params_file: [keys]}
            for params_file, file_keys in entry.items():
                assert params_file == "params.yaml", f"unexpected params file {params_file!r}"
                keys.extend(file_keys)
        else:
            keys.append(entry)
    return keys


@pytest.mark.parametrize("stage", sorted(DVC_STAGES))
def test_params_the_stage_reads_exist_and_are_tracked(stage):
    keys = _params_keys(DVC_STAGES[stage])
    for key in keys:
        node = PARAMS
        for part in key.split("."):
            assert isinstance(node, dict) and part in node, f"dvc.yaml stage {stage!r}: params.yaml has no {key!r}"
            node = node[part]
    sections_read = {stage} | {section for section, _ in STAGES[stage].sections.values()}
    untracked = sorted(section for section in sections_read
                       if not any(key == section or key.startswith(section + ".") for key in keys))
    assert not untracked, f"dvc.yaml stage {stage!r} reads params sections {untracked} without tracking them"


@pytest.mark.parametrize("stage", sorted(DVC_STAGES))
def test_stages_a_preset_changes_track_it(stage):
    """A preset (params.yaml's top-level ``preset``) replaces keys of the format and train sections:
    every stage that reads one of them reruns when it changes, and no other stage does."""
    tracked = PRESET_KEY in _params_keys(DVC_STAGES[stage])
    assert tracked == reads_preset(stage), (
        f"dvc.yaml stage {stage!r} {'tracks' if tracked else 'does not track'} the top-level {PRESET_KEY!r}, but "
        f"it {'reads' if reads_preset(stage) else 'reads none of'} the sections a preset changes")


def test_the_import_walk_finds_lazy_relative_and_package_imports():
    """The checker itself: train reaches hf.py through an import inside a function, models/builtin.py
    reaches dataset/answers.py the same way, and every package's __init__ counts."""
    train = modules_used_by("train")
    assert {"av_grounding.training.hf", "av_grounding.dataset.answers", "av_grounding.training",
            "av_grounding"} <= train.keys()
    assert "av_grounding.synth.render" not in train
    assert covers("src/av_grounding/geometry", "src/av_grounding/geometry/boxes.py")
    assert not covers("src/av_grounding/geo", "src/av_grounding/geometry/boxes.py")
