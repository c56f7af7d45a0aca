"""The `evaluate` stage: every prediction column (zero-shot, checkpoints, final) against the
evaluation split, into ``metrics/eval.json`` and plots; or, standalone, one folder of
predictions against one folder of ground truth (``--gt DIR --pred DIR --out FILE``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from scipy.optimize import linear_sum_assignment

from ..params import EvaluateParams, ParamsError
from ..storage import write_json
from .evaluate import EvaluationError, evaluate_frames, load_frames
from .render import plot_against_steps, plot_error_against_distance, plot_pr_curves, write_overlays

def _rounded(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    if isinstance(value, (float, np.floating)):
        return round(float(value), 6)
    if isinstance(value, np.integer):
        return int(value)
    return value


def distance_errors(frames, max_distance: float) -> list[tuple[float, float]]:
    pairs = []
    for frame in frames:
        gts, preds = frame.boxes("gt"), frame.boxes("pred")
        if not gts or not preds:
            continue
        cost = np.array([[np.linalg.norm(p.center - g.center) for g in gts] for p in preds])
        for r, c in zip(*linear_sum_assignment(cost)):
            if cost[r, c] <= max_distance:
                pairs.append((float(np.linalg.norm(gts[c].center)), float(cost[r, c])))
    return pairs


def evaluate(params: EvaluateParams, dataset: Path | None = None, predictions: Path | None = None,
             metrics: Path | None = None, plots: Path | None = None, gt: Path | None = None,
             pred: Path | None = None, out: Path | None = None) -> dict[str, Any]:
    if gt or pred or out:
        if not (gt and pred and out):
            raise ParamsError("standalone use needs all of --gt, --pred and --out")
        result, _ = evaluate_frames(load_frames(gt, pred, params.codec), params)
        write_json(out, _rounded(result))
        return _rounded(result)
    listing = predictions / "columns.json"
    if not listing.exists():
        raise EvaluationError(f"{listing}: missing; run infer first")
    steps = json.loads(listing.read_text())
    names = sorted(steps, key=lambda n: steps[n])
    results, curves, final_frames = {}, {}, None
    for name in names:
        frames = load_frames(dataset / "eval" / "text", predictions / name, params.codec)
        results[name], curves[name] = evaluate_frames(frames, params)
        final_frames = frames
    if metrics:
        write_json(metrics, _rounded(results))
    if plots:
        last = names[-1]
        plot_pr_curves({f"AP2D @0.5 ({last})": curves[last]["pr_ap2d"], f"AP3D @0.05 ({last})": curves[last]["pr_ap3d"]}, plots)
        plot_against_steps(results, steps, plots)
        plot_error_against_distance(distance_errors(final_frames, params.match_distance_m), plots)
        write_overlays(final_frames, dataset / "eval" / "images", plots / "overlays", params.overlays)
    return _rounded(results)
