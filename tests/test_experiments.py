"""DVC experiments on the shrunk pipeline: one run with `-S`, a queued sweep, `exp show` and
`metrics diff` between experiments. Earlier stages come from the DVC cache, so each experiment
reruns only train, infer and evaluate."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest

from av_grounding.evaluation.table import HEADLINE_METRICS

from dvc_workspace import DATA_STAGES, REPO, CommandFailed, copy_workspace, dvc, environment, run

pytestmark = pytest.mark.slow

FOREGROUND = "lr-high"
QUEUED = ("lr-low",)  # one through the queue: the queue's path; a second one cost 30 s of the suite
LEARNING_RATES = {"lr-high": 0.02, "lr-low": 0.0005}
RERUN_STAGES = ("train", "infer")  # evaluate may come from the run cache when predictions repeat
QUEUE_TIMEOUT_S = 240


def wait_for_queue(workspace: Path, names: tuple[str, ...]) -> None:
    """Poll `dvc queue status` until every named experiment has finished; fail with its logs
    when one failed or the queue ran over QUEUE_TIMEOUT_S."""
    deadline = time.monotonic() + QUEUE_TIMEOUT_S
    while True:
        status = dvc(workspace, "queue", "status")
        rows = [line.split() for line in status.splitlines()]  # Task  Name  Created  Status
        states = {row[1]: row[-1] for row in rows if len(row) >= 4 and row[1] in names}
        if all(states.get(name) in ("Success", "Failed") for name in names):
            break
        if time.monotonic() > deadline:
            raise CommandFailed(f"queue not done after {QUEUE_TIMEOUT_S} s:\n{status}")
        time.sleep(2)
    failed = [name for name in names if states[name] != "Success"]
    if failed:
        logs = "\n".join(f"--- dvc queue logs {name}\n{dvc(workspace, 'queue', 'logs', name)}" for name in failed)
        raise CommandFailed(f"queued experiments {failed} failed:\n{status}\n{logs}")


@pytest.fixture(scope="module")
def experiments(data_baseline, tmp_path_factory) -> dict:
    """A baseline with the data stages run and committed, one experiment run in the workspace and
    one run through the queue."""
    workspace = copy_workspace(data_baseline, tmp_path_factory.mktemp("experiments") / "repo")
    logs = {FOREGROUND: dvc(workspace, "exp", "run", "--name", FOREGROUND, "-S",
                            f"train.lr={LEARNING_RATES[FOREGROUND]}")}
    for name in QUEUED:
        dvc(workspace, "exp", "run", "--queue", "--name", name, "-S", f"train.lr={LEARNING_RATES[name]}")
    # The worker outlives `queue start` and keeps its output streams: give it a file, not a pipe.
    with open(workspace.parent / "queue-worker.log", "w") as worker_log:
        started = subprocess.run([sys.executable, "-m", "dvc", "queue", "start"], cwd=workspace,
                                 env=environment(workspace), check=False, stdout=worker_log, stderr=subprocess.STDOUT,
                                 timeout=120)
    assert started.returncode == 0, (workspace.parent / "queue-worker.log").read_text()
    try:
        wait_for_queue(workspace, QUEUED)
        logs.update({name: dvc(workspace, "queue", "logs", name) for name in QUEUED})
        shown = json.loads(dvc(workspace, "exp", "show", "--json"))
        yield {"workspace": workspace, "logs": logs, "shown": shown}
    finally:
        dvc(workspace, "queue", "stop")


def _baseline(shown: list) -> dict:
    (baseline,) = [entry for entry in shown if entry["rev"] != "workspace"]
    return baseline


def _experiment_data(shown: list) -> dict[str, dict]:
    return {run["revs"][0]["name"]: run["revs"][0]["data"] for run in _baseline(shown)["experiments"]}


def _params(data: dict) -> dict:
    return data["params"]["params.yaml"]["data"]


def _metric(data: dict, path: str) -> dict:
    return data["metrics"][path]["data"]


def test_each_experiment_reruns_only_the_stages_after_its_change(experiments):
    for name, log in experiments["logs"].items():
        for stage in DATA_STAGES:
            assert f"Stage '{stage}' didn't change, skipping" in log, f"{name} reran {stage}:\n{log}"
        for stage in RERUN_STAGES:
            assert f"Running stage '{stage}'" in log, f"{name} did not rerun {stage}:\n{log}"


def test_exp_show_lists_every_experiment_with_its_params_and_metrics(experiments):
    shown = experiments["shown"]
    runs = _experiment_data(shown)
    assert sorted(runs) == sorted(LEARNING_RATES), json.dumps(shown)[:2000]
    baseline = _baseline(shown)["data"]
    for name, data in runs.items():
        assert _params(data)["train"]["lr"] == LEARNING_RATES[name]
        # DVC leaves out nulls (precision and the recipe's mean IoU when no box matched) and empty columns
        expected = {key for key, _ in HEADLINE_METRICS} - {"precision", "r_miou"}
        assert expected <= set(_metric(data, "metrics/headline.json"))
        assert set(data["metrics"]) == {"metrics/headline.json", "dvclive/train/metrics.json",
                                        "dvclive/rl/metrics.json"}, "only headline metrics and the curves' summaries"
        assert data["outs"]["data/dataset"]["hash"] == baseline["outs"]["data/dataset"]["hash"], name
    losses = {name: _metric(data, "dvclive/train/metrics.json")["train"]["loss"] for name, data in runs.items()}
    assert len(set(losses.values())) == len(losses), f"learning rates gave equal final losses: {losses}"
    trained = {data["outs"]["data/train"]["hash"] for data in runs.values()}
    assert len(trained) == len(runs), "experiments with different learning rates saved the same model"


def _numeric_leaves(tree: dict, prefix: str = "") -> list[str]:
    keys = []
    for key, value in tree.items():
        if isinstance(value, dict):
            keys += _numeric_leaves(value, f"{prefix}{key}.")
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            keys.append(f"{prefix}{key}")
    return keys


def test_metrics_diff_shows_the_headline_metrics_of_two_experiments_side_by_side(experiments):
    workspace = experiments["workspace"]
    first, second = FOREGROUND, QUEUED[0]
    table = dvc(workspace, "metrics", "diff", first, second, "--all", "--md")
    header = table.splitlines()[0]
    assert [cell.strip() for cell in header.strip("|").split("|")] == ["Path", "Metric", first, second, "Change"], table
    rows = {tuple(cell.strip() for cell in line.strip("|").split("|"))[:2] for line in table.splitlines()[2:]}
    headline = _numeric_leaves(_metric(_experiment_data(experiments["shown"])[first], "metrics/headline.json"))
    assert {key for key, _ in HEADLINE_METRICS} - {"precision", "r_miou"} <= set(headline)  # null when no box matched
    missing = [key for key in headline if ("metrics/headline.json", key) not in rows]
    assert not missing, f"dvc metrics diff {first} {second} lacks headline metrics {missing}:\n{table}"
    assert len(table.splitlines()) < 40, f"dvc metrics diff runs to {len(table.splitlines())} lines"
    changed = dvc(workspace, "metrics", "diff", first, second, "--md")
    assert "| dvclive/train/metrics.json | train.loss" in changed, changed


def make_variable(name: str) -> list[str]:
    """The words of a ``NAME := value`` line of the Makefile (``$$`` read as ``$``)."""
    return shlex.split(re.search(rf"^{name} := (.*)$", (REPO / "Makefile").read_text(), re.M)[1].replace("$$", "$"))


@pytest.mark.parametrize("view, metrics", [("EXP_SHOW_HEADLINE", {"ap2d", "ap3d", "recall"}),
                                           ("EXP_SHOW_RECIPE", {"r_ap2d", "r_ap3d", "r_lbl_acc"})])
def test_make_exps_fits_120_columns_with_the_headline_metrics(experiments, view, metrics):
    """`make exps` / `make exps-recipe` (the README's views of experiments) in a 120-column
    terminal: no column folded to an ellipsis, every line within 120 characters, the changed
    parameter, the final loss and headline metrics in it."""
    flags = make_variable("EXP_SHOW_FLAGS") + make_variable(view)
    workspace = experiments["workspace"]
    table = run(workspace, sys.executable, "-m", "dvc", "exp", "show", "--no-pager", *flags, env={"COLUMNS": "120"})
    lines = table.splitlines()
    assert max(len(line) for line in lines) <= 120 and "\u2026" not in table, table
    header = set(lines[1].split())
    assert {"Experiment", "params.yaml:train.lr", "train.loss"} <= header and metrics & header, table
    assert all(name in table for name in LEARNING_RATES), table
