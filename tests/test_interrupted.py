"""Runs killed with SIGKILL in the middle of a stage, then rerun: the output equals an
uninterrupted run's, and no half-written file stays under an output path.

Each stage script runs in a subprocess that kills itself with SIGKILL at the n-th file it is about
to move into place (``os.replace``, which every atomic writer uses), after cutting that file to
half its size: the state a kill in the middle of writing leaves, at a point that does not depend
on timing. The `train` stage is killed from outside once its first checkpoint is complete
(tests/test_training.py::test_killed_run_resumes_to_the_same_weights).
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import SMALL, TRAINING_FORMAT

from av_grounding.dataset.formats import conversation, read_cosmos, write_cosmos
from av_grounding.params import TrainParams
from av_grounding.pipeline.train import train
from av_grounding.storage import is_partial

from test_extract import tree_digest

REPO = Path(__file__).resolve().parents[1]

KILL_AT_NTH_REPLACE = """
import os, runpy, signal, sys
calls, real = 0, os.replace
def replace(source, target, *args, **kwargs):
    global calls
    calls += 1
    if calls == {n}:
        if os.path.isfile(source):
            os.truncate(source, os.path.getsize(source) // 2)
        os.kill(os.getpid(), signal.SIGKILL)
    return real(source, target, *args, **kwargs)
os.replace = replace
sys.argv = {argv!r}
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def stage(name: str, *args: str) -> list[str]:
    return [str(REPO / "stages" / f"{name}.py"), *args]


def run(argv: list[str]) -> None:
    result = subprocess.run([sys.executable, *argv], check=False, capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stderr[-3000:]


def run_killed(argv: list[str], n: int) -> None:
    """Run the stage script, killed with SIGKILL at its n-th ``os.replace``."""
    result = subprocess.run([sys.executable, "-c", KILL_AT_NTH_REPLACE.format(n=n, argv=argv)],
                            check=False, capture_output=True, text=True, cwd=REPO)
    assert result.returncode == -signal.SIGKILL, f"not killed (exit {result.returncode}): {result.stderr[-3000:]}"


def partial_files(folder: Path) -> list[Path]:
    """Half-written files and folders at or under ``folder`` (and the staging sibling beside it)."""
    staging = folder.with_name(f".{folder.name}.tmp")
    return sorted(p for root in (folder, staging) if root.exists()
                  for p in [root, *root.rglob("*")] if is_partial(p) or p == staging)


def without(metrics: Path, *keys: str) -> dict:
    return {k: v for k, v in json.loads(metrics.read_text()).items() if k not in keys}


def assert_like_uninterrupted(killed: Path, clean: Path) -> None:
    assert not partial_files(killed), partial_files(killed)
    assert tree_digest(killed) == tree_digest(clean)


def test_killed_synthesize_keeps_the_earlier_output_and_reruns_to_the_same_bytes(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text("synthesize:\n  num_clips: 2\n  cameras: [camera_front_wide_120fov]\n  duration_s: 0.5\n"
                      "  width: 160\n  height: 90\n  num_vehicles: 3\n  num_pedestrians: 1\n  workers: 1\n")
    argv = stage("synthesize", "--params", str(params))
    run(argv + ["--output", str(tmp_path / "clean"), "--metrics", str(tmp_path / "clean.json")])
    out = tmp_path / "out"
    shutil.copytree(tmp_path / "clean", out)  # an earlier complete output
    run_killed(argv + ["--seed", "1", "--output", str(out), "--metrics", str(tmp_path / "m.json")], n=8)
    assert partial_files(out), "killed before it wrote anything"
    assert tree_digest(out) == tree_digest(tmp_path / "clean")  # the earlier output, whole
    run(argv + ["--output", str(out), "--metrics", str(tmp_path / "m.json")])
    assert_like_uninterrupted(out, tmp_path / "clean")
    assert without(tmp_path / "m.json") == without(tmp_path / "clean.json")


def test_killed_extract_resumes_to_the_same_bytes(synthetic_root, tmp_path):
    argv = stage("extract", "--params", str(tmp_path / "none.yaml"), "--input-root", str(synthetic_root),
                 "--cameras", ",".join(SMALL.cameras), "--skip-frames", "3", "--workers", "1")
    run(argv + ["--output", str(tmp_path / "clean"), "--metrics", str(tmp_path / "clean.json"),
                "--timing", str(tmp_path / "clean-timing.json")])
    out = tmp_path / "out"
    # Each item moves its shard, records and manifest into place: the 5th move is the second item's records.
    run_killed(argv + ["--output", str(out), "--metrics", str(tmp_path / "m.json"),
                       "--timing", str(tmp_path / "t.json")], n=5)
    assert [p.name.split(".")[1:3] for p in partial_files(out)] == [[SMALL.cameras[1], "json"]]
    run(argv + ["--output", str(out), "--metrics", str(tmp_path / "m.json"), "--timing", str(tmp_path / "t.json")])
    assert_like_uninterrupted(out, tmp_path / "clean")
    assert json.loads((tmp_path / "t.json").read_text())["items_resumed"] == 1
    # The metrics describe the output, not the run: a resumed run's equal an uninterrupted one's.
    assert (tmp_path / "m.json").read_bytes() == (tmp_path / "clean.json").read_bytes()


def test_killed_format_reruns_to_the_same_bytes(curated, tmp_path):
    work, _ = curated
    argv = stage("format", "--params", str(tmp_path / "none.yaml"), "--prompts", TRAINING_FORMAT.prompts,
                 "--eval-clips", "1", "--input", str(work / "filtered"), "--images", str(work / "extracted"))
    run(argv + ["--output", str(tmp_path / "clean"), "--metrics", str(tmp_path / "clean.json"),
                "--plots", str(tmp_path / "clean_plots")])
    out = tmp_path / "out"
    run_killed(argv + ["--output", str(out), "--metrics", str(tmp_path / "m.json"),
                       "--plots", str(tmp_path / "plots")], n=10)
    assert not out.exists() and partial_files(out), "nothing under the output path until it is complete"
    run(argv + ["--output", str(out), "--metrics", str(tmp_path / "m.json"), "--plots", str(tmp_path / "plots")])
    assert_like_uninterrupted(out, tmp_path / "clean")
    assert without(tmp_path / "m.json") == without(tmp_path / "clean.json")


def small_copy(dataset: Path, folder: Path, counts: dict[str, int]) -> Path:
    """The first ``counts[split]`` samples of each split of ``dataset``, in the Cosmos-RL layout."""
    for split, count in counts.items():
        chosen = read_cosmos(dataset / split)[:count]
        (folder / split / "images").mkdir(parents=True)
        for sample in chosen:
            shutil.copy(sample.image, folder / split / "images" / f"{sample.id}.jpg")
        write_cosmos(folder / split, [(s.id, {}, conversation(f"images/{s.id}.jpg", s.system, s.user, s.answer))
                                      for s in chosen])
    return folder


@pytest.mark.slow
def test_killed_infer_resumes_to_the_same_answers(dataset, tmp_path):
    small = small_copy(dataset, tmp_path / "dataset", {"train": 2, "eval": 5})
    train(TrainParams(max_steps=1, save_every=0, batch_size=2), TRAINING_FORMAT, small, tmp_path / "train", None,
          tmp_path / "live")
    params = tmp_path / "params.yaml"
    params.write_text(f"format:\n  prompts: {TRAINING_FORMAT.prompts}\n")
    # --rl names a folder that does not exist: the default, data/rl, is the workspace's, which
    # `make repro` fills (its RL policy would add a column).
    argv = stage("infer", "--params", str(params), "--dataset", str(small), "--train", str(tmp_path / "train"),
                 "--rl", str(tmp_path / "no_rl"), "--max-new-tokens", "12", "--batch-size", "2")
    run(argv + ["--output", str(tmp_path / "clean"), "--metrics", str(tmp_path / "clean.json"),
                "--timing", str(tmp_path / "clean-timing.json")])
    out, written = tmp_path / "out", ["--metrics", str(tmp_path / "m.json"), "--timing", str(tmp_path / "t.json")]
    # columns.json, the trained model's manifest (the longest-trained model answers first, so a
    # run stopped part way has its answers), then answers: the 4th move is in the second batch.
    run_killed(argv + ["--output", str(out), *written], n=6)
    assert len(list((out / "final").glob("*.json"))) == 3 and partial_files(out)
    assert not (out / "zero_shot").exists() or not list((out / "zero_shot").glob("*.json"))
    run(argv + ["--output", str(out), *written])
    assert_like_uninterrupted(out, tmp_path / "clean")
    resumed = json.loads((tmp_path / "t.json").read_text())
    assert {c: v["frames_resumed"] for c, v in resumed.items()} == {"final": 2, "zero_shot": 0}
    assert (tmp_path / "m.json").read_bytes() == (tmp_path / "clean.json").read_bytes()
