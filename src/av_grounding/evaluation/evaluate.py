"""Every metric of one column (one model version's predictions on the evaluation frames):
COCO AP2D, oriented AP3D with depth bins, nuScenes-style centre-distance mAP with true-positive
errors, a centre-distance matching summary, the recipe's metrics, and how the answers parsed.
Definitions: docs/metrics.md."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np

from ..geometry.transforms import wrap_angle
from .ap import TP_ERRORS, APResult, DistanceImage, ImageBoxes, coco_ap, distance_ap
from .config import EvaluationConfig
from .frames import Frame
from .iou import iou_2d_matrix, iou_3d_matrix
from .matching import match_centres
from .recipe import recipe_frame
from .results import (
    AnswerAccounting,
    AP2DMetrics,
    AP3DMetrics,
    CenterDistanceMetrics,
    ColumnResult,
    MatchingMetrics,
    RecipeMetrics,
    ratio,
)


@dataclass
class PlotData:
    """What the plots of a column need: (recall, precision) curves per class at the first
    threshold of AP2D and AP3D, and (distance of the true box from the camera, centre error) in
    metres of each matched pair."""

    pr_ap2d: dict[str, tuple[np.ndarray, np.ndarray]]
    pr_ap3d: dict[str, tuple[np.ndarray, np.ndarray]]
    errors_by_distance: list[tuple[float, float]]


def _mean(values: list[float]) -> float | None:
    return float(np.mean(values)) if values else None


def _at(result: APResult, threshold: float) -> float | None:
    """The AP at the configured threshold nearest ``threshold`` (None without truth)."""
    if not result.per_threshold:
        return None
    nearest = min(result.per_threshold, key=lambda t: abs(t - threshold))
    assert abs(nearest - threshold) < 1e-9, f"{threshold} is not an evaluated threshold"
    return result.per_threshold[nearest]


def _images(frames: list[Frame], overlaps: list[np.ndarray]) -> list[ImageBoxes]:
    return [ImageBoxes(f.gt.labels, f.pred.labels, f.pred.scores, o) for f, o in zip(frames, overlaps)]


def _unseen(rectangles: np.ndarray) -> np.ndarray:
    """Rectangles with no area once clipped to the image: boxes wholly outside it or behind the
    camera (their rectangles are all zero)."""
    return (rectangles[:, 2] <= rectangles[:, 0]) | (rectangles[:, 3] <= rectangles[:, 1])


def images_2d(frames: list[Frame]) -> list[ImageBoxes]:
    """The frames' boxes for AP2D. A box whose rectangle has no area in the image has nothing to
    compare there: as truth it is ignored (neither found nor missed; like COCO's crowd regions,
    a prediction matched to it would be ignored too, but none can match an empty rectangle), as
    a prediction it is ignored unless matched (COCO's area ranges), which it never is. So a
    vehicle behind the camera or beside the image costs a perfect model nothing in AP2D, and AP3D
    and the centre-distance metrics still score it."""
    return [ImageBoxes(f.gt.labels, f.pred.labels, f.pred.scores, iou_2d_matrix(f.pred.rectangles, f.gt.rectangles),
                       _unseen(f.gt.rectangles), _unseen(f.pred.rectangles)) for f in frames]


def in_depth_range(frames: list[Frame], images: list[ImageBoxes], low: float, high: float) -> list[ImageBoxes]:
    """``images`` (one per frame, ``images_3d``) restricted to the depth range [low, high)
    (camera z of the box centre, metres): truth outside it is ignored, and predictions outside
    it are ignored unless matched (COCO's area ranges)."""
    ranged = []
    for frame, image in zip(frames, images):
        gt_depth, dt_depth = frame.gt.centres[:, 2], frame.pred.centres[:, 2]
        ranged.append(ImageBoxes(image.gt_labels, image.dt_labels, image.dt_scores, image.overlap,
                                 (gt_depth < low) | (gt_depth >= high), (dt_depth < low) | (dt_depth >= high)))
    return ranged


def ap3d_by_depth(frames: list[Frame], images: list[ImageBoxes], labels: list[str],
                  config: EvaluationConfig) -> dict[str, float | None]:
    """AP3D per depth bin (``config.depth_ranges``, ``in_depth_range``). None for an empty bin."""
    return {name: coco_ap(in_depth_range(frames, images, low, high), labels, list(config.ap3d_thresholds),
                          config.max_detections).ap
            for name, (low, high) in config.depth_ranges.items()}


def distance_images(frames: list[Frame]) -> list[DistanceImage]:
    """The frames' boxes for the centre-distance AP: ground-plane (x-z) centres, sizes and headings."""
    return [DistanceImage(f.gt.labels, f.gt.centres[:, [0, 2]], np.array([b.lwh for b in f.gt.boxes]).reshape(-1, 3),
                          f.gt.headings, f.pred.labels, f.pred.scores, f.pred.centres[:, [0, 2]],
                          np.array([b.lwh for b in f.pred.boxes]).reshape(-1, 3), f.pred.headings)
            for f in frames]


def images_3d(frames: list[Frame]) -> list[ImageBoxes]:
    """The frames' boxes for AP3D: a PxG matrix of exact 3D IoU per frame."""
    return _images(frames, [iou_3d_matrix(f.pred.boxes, f.gt.boxes) for f in frames])


def center_distance_metrics(frames: list[Frame], labels: list[str], config: EvaluationConfig) -> CenterDistanceMetrics:
    """Centre-distance AP per class and threshold (ground plane x-z), its mean over classes with
    truth, and nuScenes' true-positive errors at ``config.tp_distance_m``: per class as the
    devkit's ``calc_tp``, then the mean over classes with truth."""
    images = distance_images(frames)
    class_errors: dict[str, list[float]] = {name: [] for name in TP_ERRORS}
    table, true_positives = {}, 0
    for threshold in config.distance_thresholds_m:
        results = [distance_ap(images, label, threshold, config.min_recall, config.min_precision) for label in labels]
        table[threshold] = _mean([r.ap for r in results if r.ap is not None])
        if threshold == config.tp_distance_m:
            true_positives = sum(len(r.matches) for r in results)
            for name in TP_ERRORS:
                class_errors[name] = [error for r in results if (error := r.errors[name]) is not None]
    defined = [v for v in table.values() if v is not None]
    return CenterDistanceMetrics(_mean(defined), table, config.tp_distance_m, true_positives,
                                 _mean(class_errors["trans_err"]), _mean(class_errors["scale_err"]),
                                 _mean(class_errors["orient_err"]))


def matching_metrics(frames: list[Frame], max_distance: float) -> tuple[MatchingMetrics, list[tuple[float, float]]]:
    """The matching summary (``MatchingMetrics``) and, per matched pair, (distance of the true
    box from the camera, 3D centre error), both in metres."""
    right, position, orientation, by_distance = 0, [], [], []
    for frame in frames:
        for p, g, _ in match_centres(frame.pred.centres[:, [0, 2]], frame.gt.centres[:, [0, 2]], max_distance):
            right += frame.pred.labels[p] == frame.gt.labels[g]
            error = float(np.linalg.norm(frame.pred.centres[p] - frame.gt.centres[g]))
            position.append(error)
            orientation.append(np.degrees(abs(wrap_angle(frame.pred.headings[p] - frame.gt.headings[g]))))
            by_distance.append((float(np.linalg.norm(frame.gt.centres[g])), error))
    matched = len(position)
    n_pred, n_gt = sum(len(f.pred) for f in frames), sum(len(f.gt) for f in frames)
    return MatchingMetrics(max_distance, matched, ratio(matched, n_pred), ratio(matched, n_gt), ratio(right, matched),
                           _mean(position), _mean(orientation)), by_distance


def recipe_metrics(frames: list[Frame], config: EvaluationConfig) -> RecipeMetrics:
    """The recipe's metrics over all frames (``recipe.py``): integer counts summed over frames,
    frames without a usable answer counted with zero predictions."""
    per_frame = [recipe_frame(f.gt.labels, f.gt.values, f.pred.labels, f.pred.values, f.recipe_camera,
                              config.recipe_thresholds, config.recipe_iou_threshold) for f in frames]
    n_gt = sum(r.gt for r in per_frame)
    ious = [v for r in per_frame for v in r.matched_ious]
    correct = sum(r.correct for r in per_frame)
    ap3d = np.array([r.ap3d for r in per_frame])
    ap2d = np.array([r.ap2d for r in per_frame if r.ap2d is not None]).reshape(-1, len(config.recipe_thresholds))
    five = config.recipe_thresholds.index(0.5 + 0.05 * 5)  # its AP75

    def summary(table: np.ndarray) -> tuple[float | None, float | None, float | None]:
        if not len(table):
            return None, None, None
        return float(table.mean(axis=1).mean()), float(table[:, 0].mean()), float(table[:, five].mean())

    return RecipeMetrics(len(frames), len(ap2d), n_gt, sum(r.pred for r in per_frame), len(ious), correct,
                         _mean(ious), ratio(100.0 * correct, n_gt), ratio(100.0 * len(ious), n_gt),
                         *summary(ap2d), *summary(ap3d))


def answer_accounting(frames: list[Frame]) -> AnswerAccounting:
    """Parse outcomes of the column's answers (``AnswerAccounting``)."""
    dropped = Counter[str]()
    for frame in frames:
        dropped.update(frame.dropped)
    return AnswerAccounting(len(frames), sum(f.valid_json for f in frames), dict(Counter(f.status for f in frames)),
                            sum(f.emitted for f in frames), sum(len(f.pred) for f in frames), dict(dropped),
                            dict(Counter(f.score_source for f in frames if len(f.pred) and f.score_source is not None)))


def evaluate_frames(frames: list[Frame], config: EvaluationConfig) -> tuple[ColumnResult, PlotData]:
    """Every metric of one column, and the data of its plots. Pairwise overlaps are computed
    once per frame: a PxG matrix of 2D IoU and one of exact 3D IoU."""
    labels = sorted({label for f in frames for label in f.gt.labels})
    boxes_3d = images_3d(frames)
    ap2d = coco_ap(images_2d(frames), labels, list(config.coco_thresholds), config.max_detections)
    ap3d = coco_ap(boxes_3d, labels, list(config.ap3d_thresholds), config.max_detections)
    matching, errors_by_distance = matching_metrics(frames, config.match_distance_m)
    result = ColumnResult(
        frames=len(frames), gt_boxes=sum(len(f.gt) for f in frames), pred_boxes=sum(len(f.pred) for f in frames),
        answers=answer_accounting(frames),
        ap2d=AP2DMetrics(ap2d.ap, _at(ap2d, 0.5), _at(ap2d, 0.75), ap2d.per_class),
        ap3d=AP3DMetrics(ap3d.ap, _at(ap3d, 0.25), _at(ap3d, 0.5), ap3d_by_depth(frames, boxes_3d, labels, config),
                         ap3d.per_class),
        center_distance=center_distance_metrics(frames, labels, config),
        matching=matching, recipe=recipe_metrics(frames, config))
    return result, PlotData(ap2d.curves, ap3d.curves, errors_by_distance)
