"""`make report`: markdown of metric and param changes against a base revision, and the CI
workflow that posts it on pull requests."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import yaml

from av_grounding.evaluation.table import headline
from av_grounding.report import main

from dvc_workspace import REPO, commit_all, git, make_workspace, run, write_params

BASE_EVAL = {"final": {"ap3d": {"ap": 0.125, "ap25": 0.5}, "frames": 30}}
CHANGED_EVAL = {"final": {"ap3d": {"ap": 0.25, "ap25": 0.5}, "frames": 30}}


def write_eval_metrics(workspace: Path, metrics: dict) -> None:
    """metrics/eval.json and the headline DVC compares (metrics/headline.json), as evaluate writes them."""
    (workspace / "metrics").mkdir(exist_ok=True)
    (workspace / "metrics" / "eval.json").write_text(json.dumps(metrics))
    (workspace / "metrics" / "headline.json").write_text(json.dumps(headline(metrics)))


@pytest.fixture
def branch_with_changes(tmp_path) -> Path:
    """A copy of the project whose main holds one lr and eval result and whose checked-out
    branch a newer lr and a better AP3D (written directly: the report only reads them)."""
    workspace = make_workspace(tmp_path / "repo")
    write_eval_metrics(workspace, BASE_EVAL)
    commit_all(workspace, "Results on main")
    git(workspace, "checkout", "--quiet", "-b", "feature")
    write_params(workspace, {"train": {"lr": 0.01}})
    write_eval_metrics(workspace, CHANGED_EVAL)
    commit_all(workspace, "Higher learning rate")
    return workspace


def _rows(markdown: str) -> set[tuple[str, ...]]:
    return {tuple(cell.strip() for cell in line.strip().strip("|").split("|"))
            for line in markdown.splitlines() if line.startswith("|")}


def test_make_report_lists_the_changed_metric_and_param_against_main(branch_with_changes):
    workspace = branch_with_changes
    venv = Path(sys.executable).parent.parent
    # `-o` keeps make from (re)installing the environment the tests already run in.
    run(workspace, "make", "--no-print-directory", "-o", f"{venv}/.installed", "report", f"VENV={venv}",
        "OUT=report.md")
    report = (workspace / "report.md").read_text()
    assert report.startswith("# Pipeline report: workspace against `main`\n"), report
    assert "## Metrics" in report and "## Parameters" in report, report
    rows = _rows(report)
    assert ("metrics/headline.json", "ap3d", "0.125", "0.25", "0.125") in rows, report
    assert ("params.yaml", "train.lr", "-", "0.01") in rows, report  # null on main (the model size's rate): "-"
    assert not any("ap2d" in row for row in rows), f"an unchanged metric is listed:\n{report}"
    assert max(len(line) for line in report.splitlines()) <= 120, f"lines wider than 120 characters:\n{report}"


def test_report_says_so_when_nothing_changed(branch_with_changes, capsys):
    assert main(["--base", "HEAD", "--repo", str(branch_with_changes)]) == 0
    report = capsys.readouterr().out
    assert "No metrics changed." in report and "No params changed." in report, report


def test_report_names_an_unknown_base(branch_with_changes, capsys):
    assert main(["--base", "no-such-branch", "--repo", str(branch_with_changes)]) == 2
    error = capsys.readouterr().err
    assert "dvc metrics diff no-such-branch" in error and "no-such-branch" in error.split("):", 1)[1], error


def full_eval(ap3d: float) -> dict:
    """A final column with every headline metric (AP3D varied, the rest fixed)."""
    final = {"ap2d": {"ap": 0.1, "ap50": 0.2}, "ap3d": {"ap": ap3d, "ap25": 0.3}, "center_distance": {"map": 0.05},
             "matching": {"recall": 0.4, "label_accuracy": None},
             "recipe": {"mean_iou": 0.2, "iou_accuracy_pct": 5.0, "label_accuracy_pct": 60.0, "ap2d": 0.1,
                        "ap3d": 0.02}}
    return {"final": final, "zero_shot": {"ap3d": {"ap": 0.0}}}


def test_report_leads_with_the_final_headline_and_folds_timing_away(tmp_path, capsys):
    workspace = make_workspace(tmp_path / "repo")
    write_eval_metrics(workspace, full_eval(0.125))
    commit_all(workspace, "Results on main")
    write_eval_metrics(workspace, full_eval(0.25))
    (workspace / "metrics" / "timing").mkdir()
    (workspace / "metrics" / "timing" / "infer.json").write_text(json.dumps({"final": {"tokens_per_s": 650.0}}))
    (workspace / "metrics" / "timing" / "train.json").write_text(json.dumps(
        {"wall_s": 12.5, "per_step": {"step": [1, 2], "seconds": [0.1, 0.2]}}))
    assert main(["--base", "main", "--repo", str(workspace)]) == 0
    report = capsys.readouterr().out
    headline, rest = report.split("## Metrics", 1)
    assert "## Headline: final model" in headline, report
    assert "| AP3D (IoU 0.05:0.50) | 0.125 | 0.25 | +0.125 |" in headline, report
    assert "| label accuracy | - | - | - |" in headline and "| recipe IoU Accuracy % | 5 | 5 | +0 |" in headline
    metrics, timing = rest.split("## Timing of the last run", 1)
    assert "| metrics/headline.json | ap3d " in metrics and "tokens_per_s" not in metrics, report
    assert "<details>" in timing and timing.count("| metrics/timing/") == 2, report
    assert "| metrics/timing/infer.json | final.tokens_per_s | 650.0 |" in timing, report
    assert "| metrics/timing/train.json | wall_s | 12.5 |" in timing and "per_step" not in timing, report


def test_pr_workflow_reproduces_then_comments_the_report():
    workflow_file = REPO / ".github" / "workflows" / "pr-report.yml"
    workflow = yaml.safe_load(workflow_file.read_text())
    triggers = workflow.get("on", workflow.get(True))  # YAML 1.1 reads a bare `on` as true
    assert "pull_request" in triggers, f"{workflow_file}: not run on pull requests"
    assert workflow["permissions"]["pull-requests"] == "write", f"{workflow_file}: cannot comment"
    (job,) = workflow["jobs"].values()
    steps = job["steps"]
    uses = [step.get("uses", "").split("@")[0] for step in steps]
    assert uses[:3] == ["actions/checkout", "actions/setup-python", "iterative/setup-cml"], uses
    assert steps[0]["with"]["fetch-depth"] == 0, "the base branch must be fetched for the diff"
    commands = [step.get("run", "") for step in steps]
    repro, comment = (index for index, command in enumerate(commands)
                      if "make repro" in command or "cml comment" in command)
    assert repro < comment, f"{workflow_file}: the report must come after `make repro`"
    assert "make report" in commands[comment] and "cml comment create" in commands[comment], commands[comment]
    assert steps[comment]["env"]["REPO_TOKEN"] == "${{ secrets.GITHUB_TOKEN }}"
