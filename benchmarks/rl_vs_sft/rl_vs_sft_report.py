"""Write benchmarks/rl_vs_sft/results/rl.md and one plot per run from the folders
benchmarks/rl_vs_sft/rl_vs_sft.sh fills.

    python benchmarks/rl_vs_sft/rl_vs_sft_report.py <root> --out benchmarks/rl_vs_sft/results/rl.md

Each folder under the root is one run (``<size>-<arch>[-s<seed>][-<tag>]``) with ``base/``,
``sft/`` and ``rl/`` (each a learning-benchmark run folder: metrics, params, curves, timing,
``predictions.tar.gz``, and ``eval_truth.tar.gz``; an arm whose run failed holds its log and
``failed.txt`` instead, and is listed with that reason) and ``plan.json``. The arms are scored
again here on the same held-out frames with the evaluator's own clip bootstrap, so every comparison is
paired (``evaluation.bootstrap.paired_change``), and the mean over seeds of each change gets its
interval from the runs' replicates (``bootstrap.mean_change``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: common.py
from common import HEADLINE_NAMES as NAMES
from common import interval_cell, rescore, seed_group

from av_grounding.evaluation.bootstrap import (
    HEADLINE,
    BootstrapResult,
    Interval,
    mean_change,
    paired_change,
)
from av_grounding.storage import atomic_write_bytes

# arm -> (folder of the run, prediction column of the model it compares)
ARMS = {"SFT model": ("base", "final"), "+ more SFT": ("sft", "final"), "+ RL": ("rl", "rl_final")}
# The goal: RL minus more SFT at equal GPU time, at least this much (precision: no lower).
GOAL = {"center_distance_map": 0.05, "ap2d50": 0.03, "precision": 0.0}
COMPARISONS = (("+ RL", "+ more SFT"), ("+ more SFT", "SFT model"), ("+ RL", "SFT model"))
TIME_TOLERANCE = 0.10  # the arms' step times may differ by this share and still count as equal
HEADER = """# Reinforcement learning against more supervised fine-tuning, at equal GPU time

Written by `python benchmarks/rl_vs_sft/rl_vs_sft_report.py <root> --out <this file>` from the run
folders `benchmarks/rl_vs_sft/rl_vs_sft.sh` fills (one architecture and seed per run; the script's
header gives the protocol). From the learning benchmark's SFT model, on its held-out clips:
`+ more SFT` trains further steps (1,000 by default; each run says how many), `+ RL` runs GRPO
(the `rl` stage) until its steps have taken the time those SFT steps are planned to take. Every
model is scored again here on the same frames with the evaluator's clip bootstrap, so the changes
are paired (docs/metrics.md, "Intervals"). Goal (issue
27): RL minus more SFT at least +0.05 centre-distance mAP and +0.03 AP2D50, precision no lower.
"""


def read_json(path: Path) -> dict:
    return json.loads(path.read_text())


def reason(failed: Path) -> str:
    """A ``failed.txt`` on one line: its lines, spaces squeezed, joined by semicolons."""
    return "; ".join(" ".join(line.split()) for line in failed.read_text().splitlines() if line.strip())


def failure(run: Path, arm: str) -> str | None:
    """Why ``arm`` of ``run`` has no model to score (its ``failed.txt``, which rl_vs_sft.sh writes
    when the arm's ``dvc exp run`` fails, or its column missing), or None when it has one."""
    folder, column = ARMS[arm]
    failed = run / folder / "failed.txt"
    if failed.exists():
        return reason(failed)
    for needed in (run / folder / "columns.json", run / folder / "eval.json", run / folder / "predictions.tar.gz",
                   run / "base" / "eval_truth.tar.gz", run / "base" / "params.yaml"):
        if not needed.exists():
            return f"no {needed.relative_to(run)}"
    if column not in read_json(run / folder / "columns.json"):
        return f"no column {column!r} in {folder}/columns.json"
    return None


def bootstraps(run: Path, scratch: Path) -> dict[str, BootstrapResult]:
    """Each arm's model that exists scored again on the run's evaluation truth
    (``base/eval_truth.tar.gz``) with the evaluator's clip bootstrap under the run's ``evaluate``
    params: the same draws for all (``common.rescore``)."""
    truth = run / "base" / "eval_truth.tar.gz"
    return {arm: rescore(run / "base" / "params.yaml", truth, run / folder / "predictions.tar.gz", column,
                         scratch / folder) for arm, (folder, column) in ARMS.items() if failure(run, arm) is None}


def arm_table(run: Path, scored: dict[str, BootstrapResult]) -> str:
    """Per arm: the headline metrics with intervals, the duplicate share of its boxes and its mean
    reward (the evaluate stage's ``reward`` of that column), its steps and step time; an arm that
    failed, a line under the table with the reason."""
    rows, notes = [], []
    for arm, (folder, column) in ARMS.items():
        if arm not in scored:
            rows.append({"model": arm, "steps": "-", **{NAMES[name]: "-" for name in HEADLINE}})
            notes.append(f"`{arm}` has no model: {failure(run, arm)} ({folder}/dvc-exp-run.log).\n")
            continue
        metrics = read_json(run / folder / "eval.json")[column]
        reward = metrics.get("reward", {})
        predicted = reward.get("predicted") or 0
        timing = run / folder / "timing" / ("rl.json" if folder == "rl" else "train.json")
        seconds = read_json(timing).get("step_seconds") if timing.exists() and folder != "base" else None
        steps = read_json(run / folder / "columns.json")[column]
        if folder == "sft" and "SFT model" in scored:  # counted from the SFT model's steps
            steps += read_json(run / "base" / "columns.json")["final"]
        rows.append({"model": arm, "steps": steps,
                     **{NAMES[name]: interval_cell(scored[arm].intervals[name]) for name in HEADLINE},
                     "duplicate share": "-" if not predicted else f"{reward.get('duplicates', 0) / predicted:.3f}",
                     "mean reward": "-" if reward.get("total") is None else f"{reward['total']:.3f}",
                     "time of its steps (s)": "-" if seconds is None else f"{seconds:.0f}"})
    table = pd.DataFrame(rows).fillna("-").to_markdown(index=False, disable_numparse=True) + "\n"
    return "\n".join([table, *notes])


def change_table(changes: dict[tuple[str, str], dict[str, Interval]]) -> str:
    rows = [{"change": f"{after} minus {before}",
             **{NAMES[name]: interval_cell(change[name], sign=True) for name in HEADLINE}}
            for (after, before), change in changes.items()]
    return pd.DataFrame(rows).to_markdown(index=False, disable_numparse=True) + "\n"


def goal_lines(change: dict[str, Interval], runs: list[dict[str, Interval]] | None = None) -> list[str]:
    """The goal per metric: reached by the value, whether the interval's low end clears it, and
    (a mean over seeds) whether every run's own change reaches it too: the mean's interval covers
    the evaluation clips, not the spread between training seeds (``bootstrap.mean_change``)."""
    lines = []
    for name, least in GOAL.items():
        interval = change[name]
        if interval.value is None:
            lines.append(f"- {NAMES[name]}: not measured")
            continue
        reached = interval.value >= least
        sure = interval.low is not None and interval.low >= least
        every = "" if runs is None else (
            "; every seed's own change reaches it" if all((r[name].value or -1.0) >= least for r in runs)
            else "; not every seed's own change reaches it")
        lines.append(f"- {NAMES[name]}: RL minus more SFT {interval.value:+.3f} against the goal of at least "
                     f"{least:+.2f}: {'reached' if reached else f'missed by {least - interval.value:.3f}'}"
                     f"{' (the interval clears it' if sure else ' (the interval does not clear it'}{every})")
    return lines


def timing_line(run: Path) -> str:
    """The card, the equal-time plan and what each arm's steps took (a difference of more than
    ``TIME_TOLERANCE`` between the arms is flagged)."""
    plan = read_json(run / "plan.json")
    gpu = (run / "gpu.txt").read_text().strip() if (run / "gpu.txt").exists() else ""
    recorded = run / "versions.txt"
    versions = (", ".join(recorded.read_text().splitlines()) if recorded.exists()
                else "not recorded (versions.txt: runs after 2026-12-06)")
    line = (f"Card: {gpu or 'none (nvidia-smi found no GPU)'}. Versions: {versions}. "
            f"Plan: {plan['more_sft_steps']} more SFT steps at {plan['sft_step_s']:.3f} s each (the mean step of "
            f"the SFT model's own training, its first left out) = a GRPO budget of {plan['rl_time_budget_s']:.0f} s "
            f"of steps; learning rates: more SFT {plan['sft_lr']}, GRPO {plan.get('rl_lr', 'not recorded')}.")
    timings = {arm: read_json(run / folder / "timing" / name) for arm, folder, name in
               (("+ more SFT", "sft", "train.json"), ("+ RL", "rl", "rl.json"))
               if failure(run, arm) is None and (run / folder / "timing" / name).exists()}
    measured = [f"{'more SFT' if arm == '+ more SFT' else 'GRPO'} {t['step_seconds']:.0f} s of steps "
                f"({t['steps_run']} steps of {t['step_seconds'] / max(t['steps_run'], 1):.2f} s)"
                for arm, t in timings.items()]
    if len(timings) < 2:
        return f"{line} Measured: {', '.join(measured) or 'no arm ran'}; no equal-time comparison.\n"
    sft_s, rl_s = (timings[arm]["step_seconds"] for arm in ("+ more SFT", "+ RL"))
    apart = abs(rl_s - sft_s) / max(sft_s, 1e-9)
    flag = (f" **The arms' step times differ by {apart:.0%}: not equal GPU time.**" if apart > TIME_TOLERANCE
            else f" The arms' step times agree within {TIME_TOLERANCE:.0%}.")
    return f"{line} Measured: {', '.join(measured)}.{flag}\n"


def plot(run: Path, image: Path) -> None:
    """GRPO's mean reward, KL and duplicates per answer against steps, and the more-SFT arm's loss."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = run / "rl" / "curves" / "rl" / "rl"
    figure, axes = plt.subplots(1, 4, figsize=(16, 3.6))
    for axis, (path, title) in zip(axes, ((curves / "reward.tsv", "GRPO mean reward"), (curves / "kl.tsv", "KL"),
                                          (curves / "grounding" / "duplicates.tsv", "duplicates per answer"),
                                          (run / "sft" / "curves" / "loss.tsv", "more SFT: loss"))):
        if path.exists():
            table = pd.read_csv(path, sep="\t")
            axis.plot(table["step"], table.iloc[:, -1])
        axis.set_title(title)
        axis.set_xlabel("step")
    figure.tight_layout()
    figure.savefig(image, dpi=100)
    plt.close(figure)


def command_line(run: Path) -> str:
    """The command that made ``run`` and its tree, from ``command.txt`` (runs after 2026-12-06
    write it; earlier folders got it by hand from their logs)."""
    recorded = run / "command.txt"
    if not recorded.exists():
        return "Command: not recorded (command.txt).\n"
    lines = recorded.read_text().splitlines()
    if not lines or not lines[0].strip():
        raise SystemExit(f"{recorded}: empty; its first line must be the command rl_vs_sft.sh ran")
    command, *rest = lines
    tree = next((line.split(" ", 1)[1] for line in rest if line.startswith("tree ")), "not recorded")
    return f"Command, from the repository root on the GPU machine (tree {tree}): `OUT=FOLDER {command}`\n"


def run_section(run: Path, scored: dict[str, BootstrapResult], image: Path, link: str) -> str:
    plot(run, image)
    changes = {(a, b): paired_change(scored[b], scored[a]) for a, b in COMPARISONS if a in scored and b in scored}
    goal = (goal_lines(changes[COMPARISONS[0]]) if COMPARISONS[0] in changes
            else ["- The goal is not measured: the run has no `+ RL` and `+ more SFT` pair."])
    return "\n".join([
        f"## {run.name}\n", command_line(run), timing_line(run),
        arm_table(run, scored), "Paired changes (the same clip resamplings for every model):\n",
        change_table(changes) if changes else "none: fewer than two models to compare.\n",
        *goal, "", f"![curves]({link})\n"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("root", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    runs = sorted(p for p in args.root.iterdir() if (p / "plan.json").exists())
    if not runs:
        raise SystemExit(f"{args.root}: no run folder (one with plan.json) under it")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    sections, groups = [HEADER], {}
    with tempfile.TemporaryDirectory() as scratch:
        for run in runs:
            scored = bootstraps(run, Path(scratch) / run.name)
            image = args.out.parent / f"{run.name}.png"
            sections.append(run_section(run, scored, image, os.path.relpath(image, args.out.parent)))
            if "+ more SFT" in scored and "+ RL" in scored:
                groups.setdefault(seed_group(run.name), []).append((scored["+ more SFT"], scored["+ RL"]))
    for group, pairs in groups.items():
        if len(pairs) > 1:
            change = mean_change(pairs)
            sections += [f"## {group}: mean over {len(pairs)} seeds, RL minus more SFT\n",
                         change_table({("+ RL", "+ more SFT"): change}),
                         *goal_lines(change, [paired_change(sft, rl) for sft, rl in pairs]), ""]
    atomic_write_bytes(args.out, ("\n".join(sections) + "\n").encode())


if __name__ == "__main__":
    main()
