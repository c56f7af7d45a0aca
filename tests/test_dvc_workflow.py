"""The DVC workflow as users run it, on the shrunk pipeline: `dvc exp run` interrupted with Ctrl-C
and run again continues from the newest checkpoint to the outputs of an uninterrupted run; a
second `dvc exp run` in the same workspace stops before it changes a file; a parameter the stage
refuses deletes nothing; params.yaml is written as DVC writes it."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from av_grounding.storage import folder_digest

from dvc_workspace import (
    REPO,
    SHRUNK_PARAMS,
    CommandFailed,
    copy_workspace,
    dvc,
    environment,
    git,
    lock_outputs,
)

pytestmark = pytest.mark.slow

# 16 steps with a checkpoint every 2: the run is interrupted after the first checkpoint that
# completes once the second `dvc exp run` was refused (a busy machine may be several steps on).
STEPS = 16
PARAMS = {**SHRUNK_PARAMS, "train": {**SHRUNK_PARAMS["train"], "max_steps": STEPS, "save_every": 2}}
MODEL_STAGES = ("train", "infer", "evaluate")
WAIT_S = 240


def resumable_step(checkpoints: Path) -> int:
    """The step of the newest checkpoint under ``checkpoints`` that holds the training state."""
    return max((int(state.parent.name.removeprefix("step_")) for state in checkpoints.glob("step_*/trainer_state.pt")),
               default=0)


def wait_for(path_glob: str, workspace: Path, process: subprocess.Popen, log: Path) -> None:
    """Poll until a file matching ``path_glob`` exists; fail with the run's log if it ended first."""
    deadline = time.monotonic() + WAIT_S
    while not list(workspace.glob(path_glob)):
        if process.poll() is not None or time.monotonic() > deadline:
            raise CommandFailed(f"no {path_glob} (exit {process.poll()}):\n{log.read_text()[-4000:]}")
        time.sleep(0.1)


def start_exp_run(workspace: Path, log: Path, *args: str) -> subprocess.Popen:
    """`dvc exp run` in its own process group (as a terminal runs it), its output into ``log``."""
    with open(log, "w") as stream:
        # SIGINT as a terminal's command has it: a suite started in the background (`cmd &` in a
        # script) ignores SIGINT, and an ignored signal stays ignored in every child it starts.
        return subprocess.Popen([sys.executable, "-m", "dvc", "exp", "run", *args], cwd=workspace,
                                env=environment(workspace), stdout=stream, stderr=subprocess.STDOUT,
                                start_new_session=True,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # noqa: PLW1509


@pytest.fixture(scope="module")
def runs(data_baseline, tmp_path_factory) -> dict:
    """One workspace: the data stages committed; an uninterrupted `dvc exp run` (its dvc.lock
    outputs kept); the workspace reset to the baseline; the same experiment interrupted with
    Ctrl-C after a checkpoint (while it trained, a second `dvc exp run` was tried); the same
    command again."""
    workspace = copy_workspace(data_baseline, tmp_path_factory.mktemp("workflow") / "repo", {"train": PARAMS["train"]})
    dvc(workspace, "exp", "run", "--name", "whole")
    whole = lock_outputs(workspace, MODEL_STAGES)
    whole_headline = (workspace / "metrics" / "headline.json").read_bytes()
    git(workspace, "checkout", "--", ".")  # back to the baseline: dvc.lock without the model stages
    for finished in ("train", "predictions"):  # so that only the next run's checkpoints are waited for
        shutil.rmtree(workspace / "data" / finished)

    log = workspace.parent / "interrupted.log"
    process = start_exp_run(workspace, log, "--name", "cut")
    try:
        wait_for("data/train/checkpoints/step_000002/trainer_state.pt", workspace, process, log)
        params_before, status_before = (workspace / "params.yaml").read_bytes(), git(workspace, "status", "--short")
        # Paused while the second run tries: on a loaded machine DVC's start-up outlasts the
        # rest of this short training, which would finish before it could be interrupted.
        os.killpg(process.pid, signal.SIGSTOP)
        try:
            second = subprocess.run([sys.executable, "-m", "dvc", "exp", "run", "-S", "train.lr=0.001"],
                                    cwd=workspace, env=environment(workspace), check=False, capture_output=True,
                                    text=True, timeout=120)
        finally:
            os.killpg(process.pid, signal.SIGCONT)
        concurrent = {"second": second, "params_unchanged": (workspace / "params.yaml").read_bytes() == params_before,
                      "status_before": status_before, "status_after": git(workspace, "status", "--short")}
        following = resumable_step(workspace / "data" / "train" / "checkpoints") + 2
        assert following < STEPS, f"training reached step {following - 2} of {STEPS} before it could be interrupted"
        wait_for(f"data/train/checkpoints/step_{following:06d}/trainer_state.pt", workspace, process, log)
        os.killpg(process.pid, signal.SIGINT)
        process.wait(timeout=120)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    interrupted_log = log.read_text()
    interrupted_at = resumable_step(workspace / "data" / ".train.interrupted" / "checkpoints")
    resumed_log = dvc(workspace, "exp", "run", "--name", "cut")
    timing = json.loads((workspace / "metrics" / "timing" / "train.json").read_text())
    return {"workspace": workspace, "whole": whole, "whole_headline": whole_headline, "concurrent": concurrent,
            "interrupted_log": interrupted_log, "interrupted_at": interrupted_at, "resumed_log": resumed_log,
            "resumed_steps": timing["per_step"]["step"]}


def test_an_interrupted_exp_run_continues_to_the_outputs_of_an_uninterrupted_one(runs):
    assert "set aside in data/.train.interrupted" in runs["interrupted_log"], runs["interrupted_log"][-3000:]
    assert 2 <= runs["interrupted_at"] < STEPS
    assert runs["resumed_steps"] == list(range(runs["interrupted_at"] + 1, STEPS + 1)), (
        f"interrupted with step {runs['interrupted_at']}'s checkpoint, the rerun trained steps {runs['resumed_steps']}")
    workspace = runs["workspace"]
    assert lock_outputs(workspace, MODEL_STAGES) == runs["whole"]
    assert (workspace / "metrics" / "headline.json").read_bytes() == runs["whole_headline"]
    assert not (workspace / "data" / ".train.interrupted").exists()


def test_a_second_exp_run_in_the_workspace_stops_before_changing_anything(runs):
    concurrent = runs["concurrent"]
    second = concurrent["second"]
    assert second.returncode != 0
    assert "'workspace' is busy" in second.stderr + second.stdout and "stages/train.py" in second.stderr + second.stdout
    assert concurrent["params_unchanged"], "the refused run rewrote params.yaml"
    assert concurrent["status_after"] == concurrent["status_before"]


def test_a_refused_parameter_deletes_nothing(runs):
    workspace = runs["workspace"]
    kept = {path: folder_digest(workspace / path) if (workspace / path).is_dir() else (workspace / path).read_bytes()
            for path in ("data/train", "data/predictions", "metrics/train.json", "dvclive/train", "metrics/infer.json")}
    with pytest.raises(CommandFailed) as refused:
        dvc(workspace, "exp", "run", "-S", "train.max_steps=0")
    assert "train.max_steps" in str(refused.value)
    git(workspace, "checkout", "--", "params.yaml")
    after = {path: folder_digest(workspace / path) if (workspace / path).is_dir() else (workspace / path).read_bytes()
             for path in kept}
    assert after == kept


def test_params_yaml_is_written_as_dvc_writes_it():
    """`dvc exp run -S key=value` rewrites params.yaml through DVC's YAML writer: the committed
    file is already in that form, so an experiment's diff is the changed value alone."""
    from dvc.utils.serialize import modify_yaml

    copy = REPO / "params.yaml"
    text = copy.read_text()
    scratch = Path(os.environ.get("TMPDIR", "/tmp")) / f"params-roundtrip-{os.getpid()}.yaml"
    scratch.write_text(text)
    try:
        with modify_yaml(str(scratch)) as data:
            data["train"]["lr"] = 0.001
        changed = [(old, new) for old, new in zip(text.splitlines(), scratch.read_text().splitlines()) if old != new]
        assert len(text.splitlines()) == len(scratch.read_text().splitlines())
        assert changed == [("  lr:", "  lr: 0.001")], changed
        assert yaml.safe_load(scratch.read_text())["train"]["lr"] == 0.001
    finally:
        scratch.unlink(missing_ok=True)


def test_params_changed_while_a_stage_ran_fail_it_before_dvc_records_them(tmp_path, monkeypatch, capsys):
    """An edit of params.yaml while a stage that DVC runs is working: the stage fails naming the
    key and both values, so DVC records neither the stage nor the new value in dvc.lock."""
    from av_grounding import cli
    from av_grounding.pipeline import synthesize

    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"synthesize": {"num_clips": 1}}))

    def edited_during_the_run(stage_params, **paths):
        params.write_text(yaml.safe_dump({"synthesize": {"num_clips": 2}}))
        return {"clips": stage_params.num_clips}

    monkeypatch.setattr(synthesize, "synthesize", edited_during_the_run)
    monkeypatch.setenv("DVC_STAGE", "synthesize")
    monkeypatch.chdir(tmp_path)
    assert cli.main(["synthesize", "--params", str(params), "--output", "out", "--metrics", "m.json"]) == 2
    assert "synthesize.num_clips changed from 1 to 2 while the stage ran" in capsys.readouterr().err
    monkeypatch.delenv("DVC_STAGE")  # by hand, the stage's own business
    params.write_text(yaml.safe_dump({"synthesize": {"num_clips": 1}}))
    assert cli.main(["synthesize", "--params", str(params), "--output", "out", "--metrics", "m.json"]) == 0


def test_a_change_of_the_code_a_stage_reaches_changes_its_digest(tmp_path, monkeypatch):
    """The resumable stages keep earlier work only under the same code digest: it covers every
    file the stage's module reaches through its imports (and no other), so an edit of any of
    them, even in a function-level import, starts the stage over."""
    from av_grounding import sources

    train = sources.reached_modules({"av_grounding.pipeline.train"})
    assert {"av_grounding.training.hf", "av_grounding.models.builtin", "av_grounding.sources"} <= train.keys()
    assert "av_grounding.synth.render" not in train
    copy = tmp_path / "src"
    shutil.copytree(sources.SRC / "av_grounding", copy / "av_grounding", ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(sources, "SRC", copy)
    before = {module: sources.code_digest.__wrapped__(module) for module in ("av_grounding.pipeline.train",
                                                                               "av_grounding.pipeline.extract")}
    hf = copy / "av_grounding" / "training" / "hf.py"
    hf.write_text(hf.read_text() + "\n# an edit\n")
    after = {module: sources.code_digest.__wrapped__(module) for module in before}
    assert after["av_grounding.pipeline.train"] != before["av_grounding.pipeline.train"]
    assert after["av_grounding.pipeline.extract"] == before["av_grounding.pipeline.extract"]


def test_sigterm_sets_the_output_aside_and_a_failed_rerun_keeps_it(tmp_path, monkeypatch, capsys):
    """SIGTERM (a scheduler stopping the job) during a resumable stage: exit 143, the output moved
    to ``.<name>.interrupted`` (a rename); the next run gets it back as hard links, and keeps the
    set-aside folder when it fails again, dropping it only once it completes."""
    from av_grounding import cli
    from av_grounding.params import ParamsError
    from av_grounding.pipeline import infer as infer_module

    output = tmp_path / "predictions"
    calls = []

    def stage(params, fmt, dataset, train, output, metrics, timing, rl):
        calls.append(sorted(p.name for p in output.glob("*")) if output.is_dir() else None)
        output.mkdir(exist_ok=True)
        (output / f"batch{len(calls)}.json").write_text("{}")
        if len(calls) == 1:
            os.kill(os.getpid(), signal.SIGTERM)
        if len(calls) == 2:
            raise ParamsError("refused this time")
        return {"done": True}

    monkeypatch.setattr(infer_module, "infer", stage)
    monkeypatch.chdir(tmp_path)
    argv = ["infer", "--params", str(tmp_path / "none.yaml"), "--output", str(output), "--metrics", "m.json"]
    assert cli.main(argv) == 143
    kept = tmp_path / ".predictions.interrupted"
    assert not output.exists() and sorted(p.name for p in kept.iterdir()) == ["batch1.json"]
    assert "set aside in" in capsys.readouterr().err
    inode = (kept / "batch1.json").stat().st_ino
    assert cli.main(argv) == 2  # put back, then the stage failed: the set-aside work is still there
    assert calls[1] == ["batch1.json"] and (output / "batch1.json").stat().st_ino == inode
    assert sorted(p.name for p in kept.iterdir()) == ["batch1.json"]
    assert cli.main(argv) == 0
    assert calls[2] == ["batch1.json"] and not kept.exists()
    from av_grounding import workspace
    assert signal.getsignal(signal.SIGTERM) is not workspace._raise_interrupted  # the earlier handler is back
