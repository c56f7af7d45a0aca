"""Typed results of one evaluated column (one model version on the evaluation frames), in the
manner of nuscenes-devkit's ``DetectionMetrics``: each block is a dataclass whose ``serialize()``
gives the strict-JSON dict written to the metrics file. A metric with nothing to measure is
``None`` (JSON ``null``), never 0 or -1; floats are rounded to 6 decimals."""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Any

from .parse import DROP_REASONS
from .recipe import DEFINITIONS

STATUSES = ("ok", "repaired", "failed", "missing")
SCORE_SOURCES = ("box", "list", "order")


def rounded(value: Any) -> Any:
    """Floats rounded to 6 decimals inside nested dicts and lists; None stays None. ValueError
    for NaN or infinity, which strict JSON cannot hold."""
    if isinstance(value, dict):
        return {str(k): rounded(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [rounded(v) for v in value]
    if isinstance(value, (bool, str)) or value is None:
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(f"a metric is {number}: undefined metrics must be None")
    return round(number, 6)


def ratio(numerator: float, denominator: float) -> float | None:
    """numerator / denominator, or None when there is nothing to divide by."""
    return numerator / denominator if denominator else None


@dataclass(frozen=True)
class AnswerAccounting:
    """How the answers of a column parsed. Counts over frames: ``valid_json`` (the answer's JSON
    was valid as emitted), ``statuses`` (ok / repaired / failed / missing); over boxes:
    ``boxes_emitted`` (items found, including dropped ones), ``boxes_kept``, ``dropped`` (reason
    -> count); ``scores_from``: frames with boxes, by where their scores came from."""

    frames: int
    valid_json: int
    statuses: dict[str, int]
    boxes_emitted: int
    boxes_kept: int
    dropped: dict[str, int]
    scores_from: dict[str, int]

    def serialize(self) -> dict[str, Any]:
        """Shares of frames for ``valid_json`` and each status, counts for the rest."""
        return rounded({"valid_json": ratio(self.valid_json, self.frames),
                        **{status: ratio(self.statuses.get(status, 0), self.frames) for status in STATUSES},
                        "boxes_emitted": self.boxes_emitted, "boxes_kept": self.boxes_kept,
                        "boxes_dropped": {reason: self.dropped.get(reason, 0) for reason in DROP_REASONS},
                        "scores_from": {source: self.scores_from.get(source, 0) for source in SCORE_SOURCES}})


@dataclass(frozen=True)
class AP2DMetrics:
    """COCO AP of the image rectangles: IoU 0.50:0.95 (``ap``), 0.50, 0.75, and per class."""

    ap: float | None
    ap50: float | None
    ap75: float | None
    per_class: dict[str, float]

    def serialize(self) -> dict[str, Any]:
        return rounded({"ap": self.ap, "ap50": self.ap50, "ap75": self.ap75, "per_class": self.per_class})


@dataclass(frozen=True)
class AP3DMetrics:
    """AP with exact oriented 3D IoU: 0.05:0.50 (``ap``), 0.25, 0.50, per depth bin (truth
    outside the bin ignored; None for a bin without truth) and per class."""

    ap: float | None
    ap25: float | None
    ap50: float | None
    by_depth: dict[str, float | None]
    per_class: dict[str, float]

    def serialize(self) -> dict[str, Any]:
        return rounded({"ap": self.ap, "ap25": self.ap25, "ap50": self.ap50, **self.by_depth,
                        "per_class": self.per_class})


@dataclass(frozen=True)
class CenterDistanceMetrics:
    """nuScenes' detection metrics on ground-plane centre distance: ``map`` the mean AP over
    classes with truth and distance thresholds (metres), ``ap_at_m`` per threshold;
    ``true_positives`` at ``tp_distance_m``, and there nuScenes' true-positive errors (the
    devkit's ``calc_tp`` per class, then the mean over classes): translation (m, ground plane),
    scale (1 - IoU of the sizes, centres and orientations aligned), orientation (rad). A class
    whose recall never passes 10 % counts 1 on each, as in nuScenes; None without truth."""

    map: float | None
    ap_at_m: dict[float, float | None]
    tp_distance_m: float
    true_positives: int
    trans_err_m: float | None
    scale_err: float | None
    orient_err_rad: float | None

    def serialize(self) -> dict[str, Any]:
        return rounded({"map": self.map, "ap_at_m": {str(k): v for k, v in self.ap_at_m.items()},
                        "tp_distance_m": self.tp_distance_m, "true_positives": self.true_positives,
                        "trans_err_m": self.trans_err_m, "scale_err": self.scale_err,
                        "orient_err_rad": self.orient_err_rad})


@dataclass(frozen=True)
class MatchingMetrics:
    """Per frame, predictions matched to truth on ground-plane centre distance (label-agnostic,
    at most ``max_distance_m``): precision (matched / predictions), recall (matched / truth),
    label accuracy (same label / matched), mean 3D centre error (m) and heading error (deg)."""

    max_distance_m: float
    matched: int
    precision: float | None
    recall: float | None
    label_accuracy: float | None
    position_error_m: float | None
    orientation_error_deg: float | None

    def serialize(self) -> dict[str, Any]:
        return rounded(dict(vars(self)))


@dataclass(frozen=True)
class RecipeMetrics:
    """The recipe evaluator's metrics by its definitions with two bugs removed (``recipe.py``).
    Percentages in %, IoUs unitless; ``frames_ap2d``: frames with pinhole camera parameters,
    over which "AP2D" is averaged (None when there are none)."""

    frames: int
    frames_ap2d: int
    gt_boxes: int
    pred_boxes: int
    matched_pairs: int
    correct: int
    mean_iou: float | None
    iou_accuracy_pct: float | None
    label_accuracy_pct: float | None
    ap2d: float | None
    ap2d50: float | None
    ap2d75: float | None
    ap3d: float | None
    ap3d50: float | None
    ap3d75: float | None

    def serialize(self) -> dict[str, Any]:
        return rounded({"definitions": DEFINITIONS, **vars(self)})


@dataclass(frozen=True)
class ColumnResult:
    """Every metric of one column."""

    frames: int
    gt_boxes: int
    pred_boxes: int
    answers: AnswerAccounting
    ap2d: AP2DMetrics
    ap3d: AP3DMetrics
    center_distance: CenterDistanceMetrics
    matching: MatchingMetrics
    recipe: RecipeMetrics

    def serialize(self) -> dict[str, Any]:
        return rounded({"frames": self.frames, "gt_boxes": self.gt_boxes, "pred_boxes": self.pred_boxes,
                        "boxes_per_frame": ratio(self.pred_boxes, self.frames),
                        "answers": self.answers.serialize(), "ap2d": self.ap2d.serialize(),
                        "ap3d": self.ap3d.serialize(),
                        "center_distance": self.center_distance.serialize(), "matching": self.matching.serialize(),
                        "recipe": self.recipe.serialize()})
