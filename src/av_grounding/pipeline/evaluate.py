"""The `evaluate` stage: every prediction column (zero-shot, checkpoints, final) against the
evaluation split, into ``metrics/eval.json`` (strict JSON), the results table and plots; or,
standalone, one folder of predictions against one folder of ground truth
(``--gt DIR --pred DIR --out FILE``)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ..evaluation.bootstrap import BootstrapResult, Interval, clip_bootstrap, paired_change
from ..evaluation.config import EvaluationConfig
from ..evaluation.evaluate import PlotData, evaluate_frames
from ..evaluation.frames import EvaluationError, Frame, load_frames
from ..evaluation.render import plot_against_steps, plot_error_against_distance, plot_pr_curves, write_overlays
from ..evaluation.results import rounded
from ..evaluation.reward import column_reward
from ..evaluation.table import headline as headline_metrics
from ..evaluation.table import results_markdown
from ..params import EvaluateParams
from ..storage import atomic_write_bytes, write_json
from .outputs import write_report


def _columns(predictions: Path) -> dict[str, int]:
    listing = predictions / "columns.json"
    if not listing.exists():
        raise EvaluationError(f"{listing}: missing; run infer first (it lists the prediction columns and their steps)")
    return json.loads(listing.read_text())


def check_output_file(path: Path) -> None:
    """EvaluationError naming ``path`` when no file can be written there, checked before scoring:
    a folder, a path under a file, a folder that is not writable (a read-only file system,
    permissions)."""
    path = Path(path)
    if path.is_dir():
        raise EvaluationError(f"{path}: is a folder; --out needs a file name, e.g. {path / 'scores.json'}")
    folder = path.parent
    while not folder.exists() and folder != folder.parent:  # the folders the write will create
        folder = folder.parent
    if not folder.is_dir():
        raise EvaluationError(f"{path}: cannot be written: {folder} is a file, not a folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise EvaluationError(f"{path}: cannot be written: {folder} is not writable (read-only file system or "
                              "permissions)")


def write_plots(results: dict[str, dict[str, Any]], steps: dict[str, int], final: tuple[str, list[Frame], PlotData],
                images: Path, plots: Path, overlays: int) -> None:
    """The results table, curves of the last column, metrics against steps and overlays."""
    name, frames, data = final
    atomic_write_bytes(plots / "results_table.md", results_markdown(results, steps).encode())
    plot_pr_curves({f"AP2D @0.5 ({name})": data.pr_ap2d, f"AP3D @0.05 ({name})": data.pr_ap3d}, plots)
    plot_against_steps(results, steps, plots)
    plot_error_against_distance(data.errors_by_distance, name, plots)
    write_overlays(frames, images, plots / "overlays", overlays, name)


def bootstrap(frames: list[Frame], config: EvaluationConfig, params: EvaluateParams) -> BootstrapResult | None:
    """The clip bootstrap of the headline metrics (``evaluation.bootstrap``) with
    ``params.bootstrap`` replicates; None when that is 0."""
    return clip_bootstrap(frames, config, params.bootstrap, params.bootstrap_seed) if params.bootstrap else None


def change_record(earlier: str, changes: dict[str, Interval]) -> dict[str, Any]:
    """``change_95`` of a column: the column it is compared with, and per headline metric the
    change and the 95 % interval of the paired difference (``bootstrap.paired_change``)."""
    return {"from": earlier, **{name: {"change": c.value, "interval": c.serialize()} for name, c in changes.items()}}


def evaluate(params: EvaluateParams, dataset: Path | None = None, predictions: Path | None = None,
             metrics: Path | None = None, plots: Path | None = None, gt: Path | None = None,
             pred: Path | None = None, out: Path | None = None, headline: Path | None = None) -> dict[str, Any]:
    """The stage's entry point (what ``cli.py`` calls with every path option): with ``gt``,
    ``pred`` and ``out``, ``evaluate_folder``; otherwise ``evaluate_columns``. Returns what
    that returns.

    Raises:
        EvaluationError: some but not all of ``gt``/``pred``/``out`` given, or neither ``dataset``
            and ``predictions`` nor the three; and whatever the mode raises.
    """
    if gt or pred or out:
        if not (gt and pred and out):
            raise EvaluationError("standalone use needs all of --gt, --pred and --out")
        return evaluate_folder(params, gt, pred, out)
    if dataset is None or predictions is None:
        raise EvaluationError("scoring prediction columns needs --dataset and --predictions")
    return evaluate_columns(params, dataset, predictions, metrics, plots, headline)


def evaluate_folder(params: EvaluateParams, gt: Path, pred: Path, out: Path) -> dict[str, Any]:
    """Standalone scoring: the prediction files of ``pred`` against the ground-truth files of
    ``gt`` (one JSON file per frame, matched by name; docs/formats.md), all metrics of one column
    written to ``out`` (strict JSON) and returned.

    Raises:
        EvaluationError: ``out`` cannot be written (checked before scoring), or an input file is
            missing or malformed (the message names it).
        ConfigError: ``params`` are inconsistent (``EvaluationConfig``).
    """
    config = EvaluationConfig.from_params(params)
    check_output_file(out)
    frames = load_frames(gt, pred, config.codec)
    result, _ = evaluate_frames(frames, config)
    sampled = bootstrap(frames, config, params)
    serialized = {**result.serialize(), **({"intervals_95": rounded(sampled.serialize())} if sampled else {})}
    try:
        write_json(out, serialized)
    except OSError as exc:  # what the check before scoring cannot see (a full disk, a race)
        raise EvaluationError(f"{out}: scores not written ({exc.strerror or exc})") from None
    return serialized


def evaluate_columns(params: EvaluateParams, dataset: Path, predictions: Path, metrics: Path | None = None,
                     plots: Path | None = None, headline: Path | None = None) -> dict[str, Any]:
    """The pipeline's scoring: every column of ``predictions`` (``columns.json``: zero-shot, each
    checkpoint, final, with their training steps) against ``dataset``'s evaluation split
    (``eval/text``), in step order. Writes the full metrics per column to ``metrics``, the
    headline per column (``table.HEADLINE_METRICS``) to ``headline``, and to ``plots`` the
    results table, the curves of the last column, metrics against steps and ``params.overlays``
    overlay images; each only when its path is given. Each column's metrics also hold
    ``reward``: the mean GRPO reward of its answers and of every term (``column_reward``), and
    with ``params.bootstrap`` its clip-bootstrap intervals (``intervals_95``) and, after the
    first column, the change from the column before with the interval of the paired difference
    (``change_95``).
    Returns column name -> serialized metrics (scores in 0..1, distances in metres, percentages
    where the name says ``_pct``).

    Raises:
        EvaluationError: ``columns.json`` is missing (infer has not run) or a prediction or
            ground-truth file is malformed (the message names it).
        ConfigError: ``params`` are inconsistent (``EvaluationConfig``).
    """
    config = EvaluationConfig.from_params(params)
    steps = _columns(predictions)
    results, final, previous = {}, None, None
    for name in sorted(steps, key=lambda n: (steps[n], n == "final")):
        frames = load_frames(dataset / "eval" / "text", predictions / name, config.codec)
        result, data = evaluate_frames(frames, config)
        results[name] = {**result.serialize(),
                         "reward": rounded(column_reward(dataset / "eval" / "text", predictions / name,
                                                         config.codec))}
        sampled = bootstrap(frames, config, params)
        if sampled is not None:
            results[name]["intervals_95"] = rounded(sampled.serialize())
            if previous is not None:
                results[name]["change_95"] = rounded(change_record(previous[0], paired_change(previous[1], sampled)))
            previous = (name, sampled)
        final = (name, frames, data)
    write_report(metrics, results)
    write_report(headline, headline_metrics(results))
    if plots and final:
        write_plots(results, steps, final, dataset / "eval" / "images", plots, params.overlays)
    return results
