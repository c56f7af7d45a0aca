"""Write benchmarks/learning/results/learning.md and its plots from the folders benchmarks/learning/learning.sh
fills.

    python benchmarks/learning/learning_report.py benchmarks/learning/results \\
        --out benchmarks/learning/results/learning.md

Each folder under the results root is one run (``<size>-<architecture>``) holding the run's
metrics (``eval.json``, or ``rescore/eval.json`` where the predictions were scored again by a newer
``evaluate``; ``train.json``, ``infer.json``, ``dataset.json``, ...), ``columns.json``
(training step of each evaluated model version), ``params.yaml`` as the experiment ran it,
``curves/*.tsv`` (DVCLive), ``notes.md`` (what happened, by hand), ``predictions.tar.gz`` and
``eval_truth.tar.gz`` (the evaluation split's truth; runs made before collect_run kept it lack it).
The per-run tables come from the evaluate stage's own table builder, so they read exactly like
``plots/eval/results_table.md``. Runs that kept their truth are scored again here for the tables
that compare runs: the mean over seeds with its interval (``bootstrap.mean_over_runs``), and paired
(``bootstrap.paired_change``) each lever of ``levers.sh`` against its base run, each run trained
longer against the same run of the next fewer steps, and each run against the run its
``against.txt`` names.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import itertools
import json
import os
import re
import sys
import tarfile
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: common.py
from common import HEADLINE_NAMES as NAMES
from common import interval_cell, rescore, seed_group

from av_grounding.cli import STAGES
from av_grounding.evaluation.bootstrap import HEADLINE, BootstrapResult, Interval, mean_over_runs, paired_change
from av_grounding.evaluation.frames import EvaluationError
from av_grounding.evaluation.table import lookup, results_markdown
from av_grounding.params import ParamsError, coerce, field_default
from av_grounding.storage import atomic_write_bytes

# The goal of issue 26 for each headline metric of the final model (at least this much; the
# mean of two seeds is what it asks for, one run is held against it here).
GOALS = {("ap2d", "ap50"): 0.6, ("ap3d", "ap"): 0.55, ("matching", "recall"): 0.7, ("center_distance", "map"): 0.35,
         ("ap3d", "far"): 0.15}
GOAL_NAMES = {("ap2d", "ap50"): "AP2D50", ("ap3d", "ap"): "AP3D (IoU 0.05:0.50)", ("matching", "recall"): "recall",
              ("center_distance", "map"): "centre-distance mAP", ("ap3d", "far"): "AP3D beyond 35 m"}
ARCHITECTURES = {"qwen2_5_vl": "Cosmos Reason 1 architecture (Qwen2.5-VL)",
                 "qwen3_vl": "Cosmos Reason 2 architecture (Qwen3-VL)"}


def read(folder: Path, name: str):
    path = folder / name
    return json.loads(path.read_text()) if path.suffix == ".json" else yaml.safe_load(path.read_text())


def scores(folder: Path) -> dict:
    """A run's metrics per column: ``rescore/eval.json`` where the run's predictions were scored
    again by a newer `evaluate` (its intervals and paired changes; the folder's notes say how),
    else the run's own ``eval.json``."""
    return read(folder / "rescore", "eval.json") if (folder / "rescore" / "eval.json").exists() \
        else read(folder, "eval.json")


def curve(folder: Path, metric: str) -> pd.DataFrame:
    return pd.read_csv(folder / "curves" / f"{metric}.tsv", sep="\t")


def goal_table(column: dict) -> str:
    rows = []
    for path, goal in GOALS.items():
        value = lookup(column, path)
        rows.append({"metric": GOAL_NAMES[path], "goal": goal, "value": value,
                     "reached": "yes" if value is not None and value >= goal else "no"})
    return pd.DataFrame(rows).to_markdown(index=False, floatfmt=".3f") + "\n"


def plot(folder: Path, results: dict, steps: dict, image: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    loss = curve(folder, "loss")
    figure, axes = plt.subplots(1, 2, figsize=(11, 4))
    axes[0].plot(loss["step"], loss["loss"], linewidth=0.6, alpha=0.4, label="per step")
    axes[0].plot(loss["step"], loss["loss"].rolling(50, min_periods=1).mean(), label="mean of 50 steps")
    axes[0].set(yscale="log", xlabel="optimizer step", ylabel="answer cross-entropy", title="Training loss")
    axes[0].legend()
    order = sorted(results, key=lambda name: (steps[name], name == "final"))
    for path, name in GOAL_NAMES.items():
        values = [lookup(results[column], path) for column in order]
        axes[1].plot([steps[c] for c in order], [np.nan if v is None else v for v in values], marker="o", label=name)
    axes[1].set(xlabel="training step (0: zero-shot)", ylabel="score", ylim=(0, 1),
                xlim=(-50, max(steps.values()) * 1.05), title="Held-out metrics by step")
    axes[1].legend(fontsize=8)
    figure.suptitle(folder.name)
    figure.tight_layout()
    figure.savefig(image, dpi=100, metadata={"Software": None})
    plt.close(figure)


def inference_line(folder: Path, params: dict) -> str:
    """Batch and speed per column from the run's ``timing/infer.json`` (``infer.json`` in runs
    made before timing left the metrics); a run stopped during `infer` has none."""
    name = next((n for n in ("timing/infer.json", "infer.json") if (folder / n).exists()), None)
    if name is None:
        return f"- Inference: greedy, batch {params['infer']['batch_size']} (speeds: see the notes)."
    speed = ", ".join(f"{c} {v['images_per_s']:.1f} images/s" for c, v in read(folder, name).items()
                      if v.get("images_per_s"))
    return f"- Inference: greedy, batch {params['infer']['batch_size']}, {speed}."


def image_tokens(folder: Path) -> float:
    """Mean image tokens a frame of the run's model family (``format``'s ``dataset.json``)."""
    family = read(folder, "params.yaml")["format"]["model_family"]
    return read(folder, "dataset.json")["tokens"]["image_per_frame"][family]["mean"]


def run_section(folder: Path, image: Path, link: str) -> str:
    results, steps = scores(folder), read(folder, "columns.json")
    train, dataset, params = (read(folder, n) for n in ("train.json", "dataset.json", "params.yaml"))
    samples_per_s = curve(folder, "samples_per_s")["samples_per_s"]
    plot(folder, results, steps, image)
    fmt, tp = params["format"], params["train"]
    architecture = fmt["model_family"]
    last = final_column(steps)  # the final model where evaluated
    model = "final model" if last == "final" else f"last evaluated model, step {steps[last]}"
    peak_memory = f"; peak GPU memory {train['peak_gpu_memory_gib']} GiB" if train["peak_gpu_memory_gib"] else ""
    lines = [
        f"## {ARCHITECTURES.get(architecture, architecture)}: `{folder.name}`\n",
        (f"- Data: {training_samples(dataset)} from {dataset['clips']['train']} clips, "
         f"{dataset['samples']['eval']:,} evaluation frames from {dataset['clips']['eval']} held-out clips; "
         f"{dataset['boxes']:,} boxes in all; rendered at "
         f"{params['synthesize']['width']}x{params['synthesize']['height']}, "
         f"seen by the model at up to {fmt['max_pixels']:,} pixels ({image_tokens(folder):.0f} image tokens a frame)."),
        (f"- Training: {train['trainable_parameters'] / 1e6:.1f}M parameters, all trained, random initialisation; "
         f"{train['steps']} steps of {tp['batch_size']} samples, AdamW lr {train['lr']:g}, {tp['schedule']} after "
         f"{tp['warmup_ratio']:.0%} warmup, on {train['device']}"
         f"{' with bf16 autocast' if train['device'] == 'cuda' and tp['bf16'] else ''}; "
         f"{samples_per_s.median():.0f} samples/s (median), "
         f"{train['steps'] * tp['batch_size'] / samples_per_s.median() / 60:.1f} minutes of steps"
         f"{peak_memory}; "
         f"final loss {curve(folder, 'loss')['loss'].iloc[-50:].mean():.3f} (mean of the last 50 steps)."),
        inference_line(folder, params),
        "",
        results_markdown(results, steps).replace("# Results by training step", "### Results by training step"),
        (f"### Against the goal of issue 26 ({model}; notes written before it quote the goal of their "
         "time)\n"),
        goal_table(results[last]),
        f"![{folder.name}]({link})\n",
    ]
    depth = folder / "depth_errors.md"
    if depth.exists():
        lines.append(depth_section(depth))
    notes = folder / "notes.md"
    if notes.exists():
        lines.append(notes.read_text())
    return "\n".join(lines)


def training_samples(dataset: dict) -> str:
    """``N training frames``, or ``N training samples (of them mirrored copies: up to M)`` where
    ``format.mirror_train`` made copies (``dataset`` is format's summary)."""
    samples, mirrored = dataset["samples"]["train"], dataset.get("mirrored_frames", 0)
    return f"{samples:,} training samples (of them mirrored copies: up to {mirrored:,})" if mirrored else \
        f"{samples:,} training frames"


def depth_section(path: Path) -> str:
    """The distance-band table of a run's ``depth_errors.md`` (benchmarks/learning/depth_errors.py)
    under a heading of this report, with a link to the whole file, and the table of how the
    vehicles not found in 2D were missed, how much nearer vehicles cover the true boxes, and what
    one repair of an overlapping box would pair, where the file has them. ValueError naming the
    file when it has no distance-band table."""
    text = path.read_text()
    column = text.splitlines()[0].rsplit(" ", 1)[-1]

    def section(heading: str) -> str | None:
        return text.split(heading, 1)[1].split("\n## ", 1)[0].strip() if heading in text else None

    band = section("## All cameras, per distance band (m)")
    if band is None:
        raise ValueError(f"{path}: no '## All cameras, per distance band (m)' table")
    lines = [f"### Found and depth by distance, column {column}\n",
             ("True vehicles by distance (m): how many were answered at all (a ground-plane centre within "
              "15 % of the range), found in 2D (image rectangles at IoU 0.5), and the depth of those found; "
              f"per camera in [{path.parent.name}/depth_errors.md]({path.parent.name}/depth_errors.md).\n"),
             band, ""]
    missed = section("## Missed in 2D, per distance band (m): how")
    if missed:  # written by depth_errors.py since 2026-12-07
        lines += [("Those not found in 2D, by how they were missed: a box overlapped it (IoU at least 0.1) but none "
                   "was paired with it at 0.5; else the answer ended before the vehicle's place in nearest-first "
                   "order; else nothing overlapped it.\n"), missed, ""]
    covered = section("## Covered by nearer vehicles, per distance band (m)")
    if covered:  # since 2026-12-07, evening
        lines += [("How much of the true boxes' image rectangles nearer true boxes cover (the `filter` stage's "
                   "occlusion measure), by outcome.\n"), covered, ""]
    repairs = section("## Overlapped but missed, per distance band (m): what one repair of the box would pair")
    if repairs:  # since 2026-12-07, evening
        lines += [("Those overlapped by a box under IoU 0.5: the share that the box would pair at 0.5 with one "
                   "property set to the truth's (depth along its ray, place in the image at its range, size, "
                   "orientation), projected again.\n"), repairs, ""]
    return "\n".join(lines)


# (column title, path in a column's metrics, key in its intervals_95) of the table of every run.
SUMMARY = (("AP2D50", ("ap2d", "ap50"), "ap2d50"), ("AP3D", ("ap3d", "ap"), "ap3d"),
           ("AP3D far", ("ap3d", "far"), "ap3d_far"),
           ("centre mAP", ("center_distance", "map"), "center_distance_map"),
           ("recall", ("matching", "recall"), "recall"), ("precision", ("matching", "precision"), "precision"))


def final_column(steps: dict) -> str:
    """The last evaluated model version: ``final`` where it was evaluated."""
    return max(steps, key=lambda column: (steps[column], column == "final"))


def with_interval(column: dict, path: tuple[str, ...], key: str) -> str:
    """``0.430 [0.350, 0.510]``: a metric and its clip-bootstrap interval (``intervals_95`` of runs
    evaluated since the bootstrap exists; the value alone before)."""
    bounds = column.get("intervals_95", {}).get(key) or (None, None)
    return interval_cell(Interval(lookup(column, path), *bounds))


def runs_table(folders: list[Path], scratch: Path) -> str:
    """One row per run (final model, with intervals), then the mean over the seeds of each group
    of runs that differ by seed only: with the 95 % interval of the mean
    (``bootstrap.mean_over_runs`` of each run's final model scored again on its own truth) where
    every run of the group kept its ``eval_truth.tar.gz``, the mean alone otherwise."""
    rows, groups = [], {}
    for folder in folders:
        results, steps, params = scores(folder), read(folder, "columns.json"), read(folder, "params.yaml")
        column = results[final_column(steps)]
        rows.append({"run": folder.name, "architecture": params["format"]["model_family"],
                     "seed": params["train"].get("seed", 0),
                     "camera input": params["format"].get("camera_input", "none"),
                     "rendered": f"{params['synthesize']['width']}x{params['synthesize']['height']}",
                     "max pixels": params["format"]["max_pixels"], "image tokens": image_tokens(folder),
                     "steps": steps[final_column(steps)],
                     **{name: with_interval(column, path, key) for name, path, key in SUMMARY}})
        groups.setdefault(seed_group(folder.name), []).append(folder)
    lines = ["## Every run\n", ("Final model of each run; brackets: clip-bootstrap 95 % intervals "
                                 "(docs/metrics.md#intervals-how-sure-a-number-is).\n"),
             pd.DataFrame(rows).to_markdown(index=False), ""]
    means = [seed_mean(group, runs, scratch) for group, runs in groups.items() if len(runs) > 1]
    if means:
        lines += [("Mean over seeds (brackets: 95 % interval of the mean over the runs' evaluation clips, "
                   "`bootstrap.mean_over_runs`; it does not cover the spread between training seeds). The means "
                   "come from scoring the runs again with today's evaluator; the rows above are each run's own "
                   "metrics, so the two differ where the evaluator changed since a run:\n"),
                  pd.DataFrame(means).to_markdown(index=False, disable_numparse=True), ""]
    return "\n".join(lines)


def seed_mean(group: str, runs: list[Path], scratch: Path) -> dict[str, object]:
    """A row of the seed means: each headline metric's mean over ``runs`` (final models), with
    its interval when every run's final model can be scored again (``rescored``), the mean of
    the runs' own metrics otherwise."""
    scored = [rescored(run, scratch) for run in runs]
    if all(isinstance(result, BootstrapResult) for result in scored):
        cells = {NAMES[name]: interval_cell(value) for name, value in mean_over_runs(scored).items()}
    else:
        reason = next(result for result in scored if isinstance(result, str))
        finals = [final_metrics(run) for run in runs]
        values = {name: [v for c in finals if (v := lookup(c, path)) is not None] for name, path, _ in SUMMARY}
        cells = {name: f"{np.mean(v):.3f} (no interval: {reason})" if len(v) == len(runs) else "-"
                 for name, v in values.items()}
    return {"runs": group, "seeds": len(runs), **cells}


def final_metrics(run: Path) -> dict:
    """The run's metrics of its last evaluated model version (``final_column``)."""
    results = scores(run)
    return results[final_column(read(run, "columns.json"))]


@functools.cache
def rescored(run: Path, scratch: Path) -> BootstrapResult | str:
    """The run's last evaluated model scored again on its own truth (``common.rescore``), once
    per run (cached: the seed means and the lever tables ask for the same runs); a string saying
    why not where it cannot be: no ``eval_truth.tar.gz``, a column or file the archives lack or
    cannot hold, or a run that asked for no intervals."""
    if not (run / "eval_truth.tar.gz").exists():
        return "no eval_truth.tar.gz"
    column = final_column(read(run, "columns.json"))
    try:
        return rescore(run / "params.yaml", run / "eval_truth.tar.gz", run / "predictions.tar.gz", column,
                       scratch / "rescored" / run.name)
    except (KeyError, ValueError, OSError, tarfile.TarError, EvaluationError) as exc:
        return f"not scored again: {exc}"


# params that change no output (workers: every stage writes the same bytes whatever their count)
NO_EFFECT = re.compile(r"\.workers$")
LEVER_RUN = r"{prefix}-(?!s\d+-)(?P<lever>[^/]+?)-{steps}"  # levers.sh: <size>-<arch>[-s<seed>]-<lever>-<steps>


def at_default(key: str, value: object) -> bool:
    """Whether ``value`` is the built-in default of the stage param ``key`` (``section.name``;
    False for a key that names no stage param)."""
    section, _, name = key.partition(".")
    spec = STAGES.get(section)
    field = next((f for f in dataclasses.fields(spec.params_cls) if f.name == name), None) if spec else None
    if field is None:
        return False
    try:
        return coerce(spec.params_cls, name, value, f"params.yaml:{section}") == field_default(field)
    except ParamsError:  # a value today's param does not take: not its default
        return False


def changes(base: Path, other: Path) -> str:
    """``section.key=value`` for every param of ``other``'s params.yaml that differs from
    ``base``'s, the worker counts left out; a list of more than three items by its length
    (``format.eval_clip_ids=[12 items]``). A param only one of the two files holds was added
    after the other run (a params.yaml lists every param of its day): at its default it is no
    change, since params are added with defaults that keep what the code did before."""
    before, after = (pd.json_normalize(read(f, "params.yaml")).iloc[0].to_dict() for f in (base, other))

    def shown(value: object) -> object:
        return f"[{len(value)} items]" if isinstance(value, list | tuple) and len(value) > 3 else value

    def changed(key: str) -> bool:
        if NO_EFFECT.search(key) or before.get(key) == after.get(key):
            return False
        if key in before and key in after:
            return True
        return not at_default(key, before[key] if key in before else after[key])

    return ", ".join(f"{key}={shown(after.get(key))}" for key in sorted(set(before) | set(after))
                     if changed(key)) or "none"


def seconds(folder: Path, stage: str) -> str:
    """Wall time of the run's training loop (``timing/train.json``) or of answering its
    evaluation frames with its trained models (``timing/infer.json``, every column but
    ``zero_shot``, which learning.sh has not answered since 2026-12-06: so runs before and after
    compare), ``-`` where the run has none."""
    path = folder / "timing" / f"{stage}.json"
    if not path.exists():
        return "-"
    timing = read(folder / "timing", f"{stage}.json")
    if stage == "train":
        return f"{timing['wall_s']:.0f}"
    return f"{sum(c.get('wall_s', 0) for name, c in timing.items() if name != 'zero_shot'):.0f}"


def paired_row(base: Path, run: Path, label: str, scratch: Path) -> tuple[dict, str]:
    """One row of a lever or steps table, ``run`` against ``base``: its params' changes, image
    tokens and times, and for each headline metric the change of the final model's score with
    its paired clip-bootstrap interval (both scored again on their own truth, ``rescored``, on
    the same frames and draws: ``bootstrap.paired_change``); and the reading of the row (what
    rises or falls, or why the run could not be compared: dashes then)."""
    row = {"run": label, "changes": changes(base, run), "image tokens": f"{image_tokens(run):.0f}",
           "train s": seconds(run, "train"), "infer s": seconds(run, "infer")}
    before, after = rescored(base, scratch), rescored(run, scratch)
    reason = next((r for r in (before, after) if isinstance(r, str)), None)
    if reason is None:
        try:
            change = paired_change(before, after)
        except ValueError as exc:
            reason = str(exc)
    if reason is not None:
        row.update({NAMES[n]: "-" for n in HEADLINE})
        return row, f"- `{label}`: {reason}"
    row.update({NAMES[n]: interval_cell(change[n], sign=True) for n in HEADLINE})
    moved = [f"{NAMES[n]} {'rises' if change[n].low > 0 else 'falls'}" for n in HEADLINE
             if change[n].low is not None and (change[n].low > 0 or change[n].high < 0)]
    return row, f"- `{label}`: " + (", ".join(moved) if moved else "no change outside its interval")


def paired_section(title: str, text: str, column: str, pairs: list[tuple[Path, Path, str]],
                   scratch: Path) -> list[str]:
    """A section of ``paired_row``s (their labels in a first column named ``column``) under
    ``title`` and ``text``, the readings below the table."""
    rows, readings = zip(*(paired_row(base, run, label, scratch) for base, run, label in pairs))
    table = pd.DataFrame(list(rows)).rename(columns={"run": column})
    return [f"## {title}\n", text, table.to_markdown(index=False, disable_numparse=True), "", *readings, ""]


PAIRED_NOTE = ("scored again on the same held-out frames: change against {against}, with its paired clip-bootstrap "
               "95 % interval (docs/metrics.md#intervals-how-sure-a-number-is). The intervals cover the evaluation "
               "clips, not the spread between training seeds, and with six metrics a row about one in twenty "
               "intervals clears 0 by chance. `train s`: wall time of the training loop (`timing/train.json`); "
               "`infer s`: of answering the evaluation frames with the trained models, zero-shot left out "
               "({times}).\n")


def base_times(bases: list[tuple[str, Path]]) -> str:
    """``name: <train> and <infer> s`` of each (name, folder) in ``bases``, joined: the wall
    times the paired tables' changes in `train s` and `infer s` start from."""
    return "; ".join(f"{name}: {seconds(folder, 'train')} and {seconds(folder, 'infer')} s" for name, folder in bases)


def lever_tables(folders: list[Path], scratch: Path) -> str:
    """For each base run of levers.sh (``<prefix>-base-<steps>``), its lever runs (same prefix
    and steps, no seed of their own) against it (``paired_row``)."""
    sections = []
    for base in folders:
        match = re.fullmatch(r"(?P<prefix>.+)-base-(?P<steps>\d+)", base.name)
        if not match:
            continue
        pattern = LEVER_RUN.format(prefix=re.escape(match["prefix"]), steps=match["steps"])
        levers = [(base, f, re.fullmatch(pattern, f.name)["lever"]) for f in folders
                  if f != base and re.fullmatch(pattern, f.name)]
        if levers:
            sections += paired_section(
                f"Levers against `{base.name}`",
                f"Each lever changes the base run's params as listed; the final models after {match['steps']} steps, "
                + PAIRED_NOTE.format(against="the base", times=base_times([("base", base)])),
                "lever", levers, scratch)
    return "\n".join(sections)


def step_tables(folders: list[Path], scratch: Path) -> str:
    """The steps lever: runs named alike but for their step count (``<name>-<steps>``), each
    against the run of the next fewer steps (``paired_row``): the same configuration trained
    longer (its own schedule, so not the shorter run's checkpoint), so a table shows where more
    steps stop paying."""
    groups: dict[str, list[tuple[int, Path]]] = {}
    for folder in folders:
        match = re.fullmatch(r"(?P<name>.+)-(?P<steps>\d+)", folder.name)
        if match:
            groups.setdefault(match["name"], []).append((int(match["steps"]), folder))
    sections = []
    for name, runs in sorted(groups.items()):
        if len(runs) < 2:
            continue
        ordered = [folder for _, folder in sorted(runs)]
        pairs = list(itertools.pairwise(ordered))
        sections += paired_section(
            f"More steps: `{name}`",
            "The same params but the step count (and what follows from it), the final models "
            + PAIRED_NOTE.format(against="the run of the next fewer steps (the row's `train.max_steps` is its own)",
                                 times=base_times([(base.name, base) for base, _ in pairs])),
            "run", [(base, run, run.name) for base, run in pairs], scratch)
    return "\n".join(sections)


def against_tables(folders: list[Path], scratch: Path) -> str:
    """Runs that name the run they change (``against.txt``, learning.sh's AGAINST: a folder
    beside them), each against it (``paired_row``), one table per named run. Raises
    ``SystemExit`` naming the file when the run it names is not among ``folders``."""
    by_name = {folder.name: folder for folder in folders}
    groups: dict[str, list[Path]] = {}
    for folder in folders:
        path = folder / "against.txt"
        if path.exists():
            name = path.read_text().strip()
            if name not in by_name or name == folder.name:
                raise SystemExit(f"{path}: names '{name}', which is not another run folder beside it")
            groups.setdefault(name, []).append(folder)
    sections = []
    for name, runs in sorted(groups.items()):
        base = by_name[name]
        sections += paired_section(
            f"Against `{name}`",
            "Runs that change its params as listed (learning.sh's `AGAINST`), the final models "
            + PAIRED_NOTE.format(against=f"`{name}`", times=base_times([(name, base)])),
            "run", [(base, run, run.name) for run in runs], scratch)
    return "\n".join(sections)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("root", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    header = (args.root / "README.md").read_text()
    folders = sorted(p for p in args.root.iterdir() if p.is_dir())
    with tempfile.TemporaryDirectory() as scratch:
        against = against_tables(folders, Path(scratch))  # first: a wrong against.txt stops before the rest
        sections = [runs_table(folders, Path(scratch)), lever_tables(folders, Path(scratch)),
                    step_tables(folders, Path(scratch)), against]
    for folder in folders:
        image = args.root / f"{folder.name}.png"
        sections.append(run_section(folder, image, os.path.relpath(image, args.out.parent)))
    atomic_write_bytes(args.out, (header + "\n" + "\n".join(sections)).encode())


if __name__ == "__main__":
    main()
