"""Throwaway git + DVC copies of this repository with a shrunk pipeline, for tests that run DVC.

DVC commands (repro, exp run, queue) must never run in the developer's checkout, so each test gets
its own copy: the repository's files (tracked and new, without results or tests), `params.yaml`
shrunk to a few tiny frames and a few training steps, a fresh git history, and DVC configuration
isolated from the user's.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path, PurePosixPath

import yaml

REPO = Path(__file__).resolve().parents[1]

# Top-level paths a pipeline copy leaves out: earlier results and what no stage reads.
LEFT_OUT = ("dvc.lock", "data", "metrics", "dvclive", "tests", "benchmarks")

# Overrides that make the whole pipeline take seconds: 2 clips of 1 s from one small camera,
# 2 frames per clip, 4 training steps, inference with the final model only.
SHRUNK_PARAMS = {
    "synthesize": {"num_clips": 2, "cameras": ["camera_front_wide_120fov"], "duration_s": 1.0,
                   "width": 160, "height": 90, "num_vehicles": 6, "num_pedestrians": 1, "workers": 1},
    "extract": {"cameras": ["camera_front_wide_120fov"], "skip_frames": 15, "workers": 1},
    "validate": {"sample_count": 1},
    "format": {"eval_clips": 1, "max_pixels": 12544},
    "train": {"max_steps": 4, "batch_size": 2, "save_every": 0},
    "rl": {"steps": 0},  # GRPO on a CPU takes about a minute a step: tests/test_rl.py runs it
    "infer": {"max_new_tokens": 24, "zero_shot": False, "checkpoints": "none"},
    "evaluate": {"overlays": 1},
}
DATA_STAGES = ("synthesize", "extract", "transform", "filter", "validate", "format")

COMMAND_TIMEOUT_S = 300


class CommandFailed(AssertionError):
    """A command in a pipeline copy failed; the message holds its full output."""


def environment(workspace: Path) -> dict[str, str]:
    """The test's interpreter first on PATH (dvc.yaml runs `python`), DVC's user, system and
    site folders inside the workspace's parent, and no analytics."""
    sandbox = workspace.parent / f"{workspace.name}-dvc-home"
    env = dict(os.environ)
    env.update({
        "PATH": os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")]),
        "DVC_NO_ANALYTICS": "1",
        "DVC_GLOBAL_CONFIG_DIR": str(sandbox / "global"),
        "DVC_SYSTEM_CONFIG_DIR": str(sandbox / "system"),
        "DVC_SITE_CACHE_DIR": str(sandbox / "site"),
    })
    return env


def run(workspace: Path, *command: str, timeout: float = COMMAND_TIMEOUT_S, env: dict[str, str] | None = None) -> str:
    """Run a command in the workspace (``env``: variables added to ``environment``); its stdout,
    or CommandFailed with everything it printed."""
    try:
        result = subprocess.run(command, cwd=workspace, env={**environment(workspace), **(env or {})}, check=False,
                                capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        raise CommandFailed(f"{' '.join(command)} ran over {timeout} s in {workspace}\n"
                            f"stdout:\n{exc.stdout}\nstderr:\n{exc.stderr}") from exc
    if result.returncode != 0:
        raise CommandFailed(f"{' '.join(command)} exited {result.returncode} in {workspace}\n"
                            f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}")
    return result.stdout


def dvc(workspace: Path, *args: str, timeout: float = COMMAND_TIMEOUT_S) -> str:
    """Run the DVC that is installed beside the test's interpreter."""
    return run(workspace, sys.executable, "-m", "dvc", *args, timeout=timeout)


def git(workspace: Path, *args: str) -> str:
    return run(workspace, "git", *args, timeout=60)


def repository_files() -> list[PurePosixPath]:
    """Tracked and new (not ignored) files of the checkout, minus LEFT_OUT."""
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
                            cwd=REPO, check=False, capture_output=True, text=True, timeout=60)
    if listed.returncode != 0:
        raise CommandFailed(f"git ls-files failed in {REPO}: pipeline tests need a git checkout\n{listed.stderr}")
    files = {PurePosixPath(name) for name in listed.stdout.split("\0") if name}
    return sorted(path for path in files if path.parts[0] not in LEFT_OUT and (REPO / path).is_file())


def write_params(workspace: Path, overrides: dict[str, dict]) -> None:
    """Update sections of the workspace's params.yaml key by key."""
    params_file = workspace / "params.yaml"
    params = yaml.safe_load(params_file.read_text())
    for section, values in overrides.items():
        unknown = set(values) - set(params[section])
        assert not unknown, f"params.yaml section {section!r} has no {sorted(unknown)}: update SHRUNK_PARAMS"
        params[section].update(values)
    params_file.write_text(yaml.safe_dump(params, sort_keys=False))


def make_workspace(destination: Path, overrides: dict[str, dict] = SHRUNK_PARAMS) -> Path:
    """A git repository at ``destination`` holding a copy of this one with shrunk params, committed."""
    destination.mkdir(parents=True)
    for path in repository_files():
        target = destination / path
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / path, target)
    (destination / "data").mkdir(exist_ok=True)
    write_params(destination, overrides)
    git(destination, "init", "--quiet", "--initial-branch", "main")
    git(destination, "config", "user.name", "av-grounding tests")
    git(destination, "config", "user.email", "tests@av-grounding.invalid")
    git(destination, "config", "commit.gpgsign", "false")
    commit_all(destination, "Pipeline copy with shrunk params")
    return destination


def copy_workspace(source: Path, destination: Path, overrides: dict[str, dict] | None = None) -> Path:
    """A copy of the pipeline copy ``source`` (its git history, DVC cache and outputs, all held
    inside it) at ``destination``, with ``overrides`` written into its params.yaml and committed:
    tests that need the data stages start from one run of them (``data_baseline``)."""
    shutil.copytree(source, destination, symlinks=True)
    if overrides:
        write_params(destination, overrides)
        commit_all(destination, "Params of the test")
    return destination


def commit_all(workspace: Path, message: str) -> None:
    git(workspace, "add", "--all")
    git(workspace, "commit", "--quiet", "--no-verify", "-m", message)


def lock_outputs(workspace: Path, stages: tuple[str, ...]) -> dict[str, dict[str, str]]:
    """Output path -> md5 recorded in dvc.lock, per stage."""
    lock = yaml.safe_load((workspace / "dvc.lock").read_text())["stages"]
    return {stage: {out["path"]: out["md5"] for out in lock[stage].get("outs", [])} for stage in stages}
