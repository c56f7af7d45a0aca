"""The results table: one column per model version (zero-shot, each checkpoint by training
step, final), one row per metric, as the recipe publishes it, plus signals that move early in
training (valid answers, boxes per frame, near vehicles). Built with pandas from the serialized
metrics, so it always shows what ``metrics/eval.json`` holds."""

from __future__ import annotations

from typing import Any

import pandas as pd

# (row label, path of keys in a column's serialized metrics, short key in metrics/headline.json or
# None). The short keys are what DVC compares (``metrics/headline.json``, the only metrics file
# dvc.yaml declares besides the training curve): the final model's at the top level and every
# other column's under ``columns``, short so that `make exps` stays narrow, at 4 decimals.
HEADLINE: tuple[tuple[str, tuple[str, ...], str | None], ...] = (
    ("AP2D (COCO, IoU 0.50:0.95)", ("ap2d", "ap"), "ap2d"),
    ("AP2D50", ("ap2d", "ap50"), "ap2d50"),
    ("AP3D (IoU 0.05:0.50)", ("ap3d", "ap"), "ap3d"),
    ("AP3D25", ("ap3d", "ap25"), None),
    ("AP3D far", ("ap3d", "far"), None),
    ("centre-distance mAP", ("center_distance", "map"), "cd_map"),
    ("recall", ("matching", "recall"), "recall"),
    ("precision", ("matching", "precision"), "precision"),
    ("label accuracy", ("matching", "label_accuracy"), None),
    ("recipe Mean IoU", ("recipe", "mean_iou"), "r_miou"),
    ("recipe IoU Accuracy %", ("recipe", "iou_accuracy_pct"), "r_iou_acc"),
    ("recipe Label Accuracy %", ("recipe", "label_accuracy_pct"), "r_lbl_acc"),
    ('recipe "AP2D"', ("recipe", "ap2d"), "r_ap2d"),
    ('recipe "AP3D"', ("recipe", "ap3d"), "r_ap3d"),
)
HEADLINE_ROWS = tuple((label, path) for label, path, _ in HEADLINE)
HEADLINE_METRICS = tuple((key, path) for _, path, key in HEADLINE if key is not None)
SIGNAL_ROWS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("answers valid JSON as emitted (share)", ("answers", "valid_json")),
    ("answers failed (share)", ("answers", "failed")),
    ("boxes per frame", ("boxes_per_frame",)),
    ("AP3D near", ("ap3d", "near")),
    ("GRPO reward (mean, default weights)", ("reward", "total")),
)
ROWS = HEADLINE_ROWS + SIGNAL_ROWS
HEADLINE_DECIMALS = 4


def lookup(metrics: dict[str, Any], path: tuple[str, ...]) -> float | None:
    """The value at ``path`` in one column's serialized metrics (None when absent or null)."""
    value: Any = metrics
    for key in path:
        if not isinstance(value, dict) or key not in value:
            return None
        value = value[key]
    return value


def column_title(name: str, step: int) -> str:
    """``zero_shot`` -> ``zero-shot``, ``step_000040`` -> ``step 40``, ``final`` -> ``final (step N)``;
    the `rl` stage's ``rl_step_...`` -> ``RL step N`` and ``rl_final`` -> ``RL final (step N)``
    (N: SFT and RL steps together)."""
    if name == "zero_shot":
        return "zero-shot"
    if name in ("final", "rl_final"):
        return f"{'RL final' if name == 'rl_final' else 'final'} (step {step})"
    if name.startswith(("step_", "rl_step_")):
        return f"{'RL step' if name.startswith('rl_') else 'step'} {step}"
    return name


def results_frame(results: dict[str, dict[str, Any]], steps: dict[str, int]) -> pd.DataFrame:
    """Rows: metrics (``ROWS``); columns: the model versions in step order (zero-shot first,
    final last); cells: floats, NaN where the metric is null."""
    order = sorted(results, key=lambda name: (steps[name], name == "final"))
    data = {column_title(name, steps[name]): [lookup(results[name], path) for _, path in ROWS] for name in order}
    return pd.DataFrame(data, index=[label for label, _ in ROWS], dtype=float)


def headline(results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """``HEADLINE_METRICS`` (short key -> value, None where nothing was measured) of the final
    model's column (``final``, else the last) at the top level, and of every other column under
    ``columns`` (by column name), from the serialized metrics of every column (``metrics/eval.json``)."""
    def short(metrics: dict[str, Any]) -> dict[str, float | None]:
        return {key: None if (value := lookup(metrics, path)) is None else round(value, HEADLINE_DECIMALS)
                for key, path in HEADLINE_METRICS}

    last = "final" if "final" in results else list(results)[-1]
    return {**short(results[last]),
            "columns": {name: short(metrics) for name, metrics in results.items() if name != last}}


def results_markdown(results: dict[str, dict[str, Any]], steps: dict[str, int]) -> str:
    """The table as markdown, with a heading saying what the columns and rows are."""
    frame = results_frame(results, steps)
    any_column = next(iter(results.values()))
    heading = (f"# Results by training step\n\n{any_column['frames']} evaluation frames, "
               f"{any_column['gt_boxes']} true boxes ({any_column['gt_boxes'] / any_column['frames']:.2f} per frame). "
               "Rows named \"recipe\" follow the recipe's "
               "definitions with two bugs removed; `AP3D far`: vehicles beyond the last depth limit "
               "(`evaluate.depth_bins_m`); the last rows are signals that move early in training "
               "(`AP3D near`: vehicles closer than the first depth limit). A dash: nothing to measure.\n\n")
    cells = frame.astype(object).where(frame.notna(), None)  # tabulate writes missingval for None only
    return (heading + cells.to_markdown(floatfmt=".4f", missingval="-") + "\n" + intervals_markdown(results, steps)
            + changes_markdown(results, steps))


# Rows of the intervals table: (row label, key in a column's ``intervals_95``).
INTERVAL_ROWS = (("AP2D50", "ap2d50"), ("AP3D (IoU 0.05:0.50)", "ap3d"), ("AP3D far", "ap3d_far"),
                 ("centre-distance mAP", "center_distance_map"), ("recall", "recall"), ("precision", "precision"))


def intervals_markdown(results: dict[str, dict[str, Any]], steps: dict[str, int]) -> str:
    """The columns' clip-bootstrap 95 % intervals (``intervals_95``, evaluation/bootstrap.py) as a
    second markdown table, "low-high" per cell; "" when no column has them."""
    order = [name for name in sorted(results, key=lambda name: (steps[name], name == "final"))
             if "intervals_95" in results[name]]
    if not order:
        return ""

    def cell(bounds: list[float | None] | None) -> str:
        return "-" if not bounds or None in bounds else f"{bounds[0]:.4f}-{bounds[1]:.4f}"

    first = results[order[0]]["intervals_95"]
    frame = pd.DataFrame({column_title(name, steps[name]): [cell(results[name]["intervals_95"].get(key))
                                                            for _, key in INTERVAL_ROWS] for name in order},
                         index=[label for label, _ in INTERVAL_ROWS])
    return (f"\n95 % intervals: clip bootstrap, {first['replicates']} resamplings of {first['clips']} clips "
            "(docs/metrics.md#intervals-how-sure-a-number-is). A dash: no interval (one clip, nothing to "
            "measure, or a column scored before the metric had one).\n\n" + frame.to_markdown() + "\n")


# Fewest clips for which the table calls a change "rises" or "falls": a bootstrap over fewer
# clusters has few distinct resamplings and too short intervals (with 2 clips, 3 distinct ones).
VERDICT_MIN_CLIPS = 10


def changes_markdown(results: dict[str, dict[str, Any]], steps: dict[str, int]) -> str:
    """Each column's change from the column before (``change_95``: the paired clip bootstrap,
    evaluation/bootstrap.py) as a third markdown table, "+change [low, high]" per cell with
    "rises" or "falls" where the interval excludes 0 and at least ``VERDICT_MIN_CLIPS`` clips
    were resampled; "" when no column has them."""
    order = [name for name in sorted(results, key=lambda name: (steps[name], name == "final"))
             if "change_95" in results[name]]
    if not order:
        return ""
    clips = results[order[0]]["intervals_95"]["clips"]

    def cell(change: dict[str, Any] | None) -> str:
        if not change or change["change"] is None or None in change["interval"]:
            return "-"
        low, high = change["interval"]
        verdict = "" if clips < VERDICT_MIN_CLIPS else " rises" if low > 0 else " falls" if high < 0 else ""
        return f"{change['change']:+.4f} [{low:+.4f}, {high:+.4f}]{verdict}"

    def title(name: str) -> str:
        earlier = results[name]["change_95"]["from"]
        return f"{column_title(name, steps[name])} vs {column_title(earlier, steps[earlier])}"

    frame = pd.DataFrame({title(name): [cell(results[name]["change_95"].get(key)) for _, key in INTERVAL_ROWS]
                          for name in order}, index=[label for label, _ in INTERVAL_ROWS])
    few = (f" ({clips} clips: too few for that; it takes {VERDICT_MIN_CLIPS})" if clips < VERDICT_MIN_CLIPS else "")
    return ("\nChange from the column before, with the 95 % interval of the paired difference (both columns "
            f"scored on the same clip resamplings); \"rises\" or \"falls\" only where the interval excludes 0{few}."
            "\n\n" + frame.to_markdown() + "\n")
