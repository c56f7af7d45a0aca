"""The metrics of the recipe's published evaluator (cosmos-cookbook, ``av_3d_grounding``
``bbox_3d_evaluator.py``), computed by its definitions so that numbers compare with its published
table, with only its two bugs removed:

- per-frame counts are summed as integers (the evaluator rebuilt them as
  ``int(percentage / 100 * n)`` and lost matches to floating truncation);
- a frame whose prediction is missing or unparsable counts with zero predictions (the evaluator
  skipped it).

Its definitions, which differ from the standard metrics of this package: labels are normalised
(lower case, stripped, the part before the first ``_``); 3D IoU is axis-aligned (the first six
numbers as a centre and extents along the camera's x, y, z; rotation ignored); per frame one
Hungarian assignment on ``1 - IoU`` with different labels forbidden, where any assigned pair of
the same label is "matched", even at IoU 0; Mean IoU over matched pairs; IoU Accuracy and Label
Accuracy over ground truth; its "AP" is, per frame and label, the share of that label's
predictions kept by a Hungarian assignment at each IoU threshold, averaged over labels, then
thresholds, then frames; "AP2D" projects boxes by its own convention (``recipe_rectangles``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import linear_sum_assignment

from ..geometry.boxes import CORNER_SIGNS
from ..geometry.transforms import rot_x, rot_y, rot_z
from .iou import iou_2d_matrix

FORBIDDEN = 1e6  # the evaluator's cost of an impossible pair
DEFINITIONS = ("the recipe's definitions (cosmos-cookbook bbox_3d_evaluator.py) with two bugs removed: "
               "counts summed as integers, missing or unparsable answers counted as zero predictions")


def normalise_label(label: str) -> str:
    """``"Car_5"`` -> ``"car"``: lower case, stripped, the part before the first underscore."""
    return label.lower().strip().split("_")[0]


def aligned_iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The recipe's 3D IoU of a Nx9 and a Mx9 matrix of boxes: an NxM matrix. The first six
    numbers are a centre and extents along the camera's x, y, z (metres), rotation is ignored;
    a negative extent gives an empty box, as in the evaluator; an empty union gives 0."""
    a, b = np.asarray(a, float).reshape(-1, 9), np.asarray(b, float).reshape(-1, 9)
    lo_a, hi_a = a[:, :3] - a[:, 3:6] / 2, a[:, :3] + a[:, 3:6] / 2
    lo_b, hi_b = b[:, :3] - b[:, 3:6] / 2, b[:, :3] + b[:, 3:6] / 2
    overlap = np.minimum(hi_a[:, None], hi_b[None]) - np.maximum(lo_a[:, None], lo_b[None])
    inter = np.prod(np.clip(overlap, 0, None), axis=2)
    union = np.prod(hi_a - lo_a, axis=1)[:, None] + np.prod(hi_b - lo_b, axis=1)[None] - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def recipe_rectangles(values: np.ndarray, camera: dict[str, float]) -> np.ndarray:
    """The evaluator's image rectangles of a Nx9 matrix of boxes: an Nx4 matrix ``[x0, y0, x1,
    y1]`` in pixels, NaN for a box with no corner in front of the camera. Its convention: corners
    ``(+-x_size/2, +-y_size/2, +-z_size/2)`` along the camera axes, rotated by
    ``Rz(roll) @ Ry(yaw) @ Rx(pitch)`` (angles 6, 8, 7 of the nine), shifted by the centre;
    corners with z > 0 projected through ``fx, fy, cx, cy``; no clipping to the image."""
    values = np.asarray(values, float).reshape(-1, 9)
    out = np.full((len(values), 4), np.nan)
    for i, v in enumerate(values):
        rotation = rot_z(v[6]) @ rot_y(v[8]) @ rot_x(v[7])
        corners = (CORNER_SIGNS * (v[3:6] / 2)) @ rotation.T + v[:3]
        front = corners[corners[:, 2] > 0]
        if len(front):
            u = camera["fx"] * front[:, 0] / front[:, 2] + camera["cx"]
            w = camera["fy"] * front[:, 1] / front[:, 2] + camera["cy"]
            out[i] = [u.min(), w.min(), u.max(), w.max()]
    return out


def _assigned(cost: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows and columns of the Hungarian assignment whose cost is below FORBIDDEN."""
    rows, cols = linear_sum_assignment(cost)
    keep = cost[rows, cols] < FORBIDDEN
    return rows[keep], cols[keep]


def frame_ap(iou: np.ndarray, gt_labels: list[str], pred_labels: list[str],
             thresholds: tuple[float, ...]) -> np.ndarray:
    """The evaluator's "AP" of one frame at each threshold: for each normalised label of the
    ground truth, Hungarian on ``1 - IoU`` with pairs below the threshold forbidden, pairs kept /
    predictions of that label (0 without any); the mean over labels. ``iou``: a GxP matrix
    (truth x prediction). A frame without ground truth gives zeros."""
    per_label = []
    for label in sorted(set(gt_labels)):
        g = [i for i, name in enumerate(gt_labels) if name == label]
        p = [j for j, name in enumerate(pred_labels) if name == label]
        if not p:
            per_label.append(np.zeros(len(thresholds)))
            continue
        overlap = iou[np.ix_(g, p)]
        row = []
        for threshold in thresholds:
            cost = 1.0 - overlap
            cost[(cost < 0) | (overlap < threshold)] = FORBIDDEN
            row.append(len(_assigned(cost)[0]) / len(p))
        per_label.append(np.array(row))
    return np.mean(per_label, axis=0) if per_label else np.zeros(len(thresholds))


@dataclass
class RecipeFrame:
    """One frame's counts and values by the evaluator's definitions. ``ap3d``/``ap2d``: the
    frame's "AP" at each threshold (``ap2d`` None without pinhole camera parameters)."""

    gt: int
    pred: int
    matched_ious: list[float] = field(default_factory=list)
    correct: int = 0
    ap3d: np.ndarray | None = None
    ap2d: np.ndarray | None = None


def recipe_frame(gt_labels: list[str], gt_values: np.ndarray, pred_labels: list[str], pred_values: np.ndarray,
                 camera: dict[str, float] | None, thresholds: tuple[float, ...], iou_threshold: float) -> RecipeFrame:
    """Score one frame. ``gt_values`` Gx9, ``pred_values`` Px9 (the nine numbers as written);
    ``camera``: ``fx, fy, cx, cy`` when the frame has pinhole parameters, else None."""
    gt_norm, pred_norm = [normalise_label(name) for name in gt_labels], [normalise_label(name) for name in pred_labels]
    frame = RecipeFrame(len(gt_labels), len(pred_labels))
    if not gt_labels:
        frame.ap3d = np.zeros(len(thresholds))
        frame.ap2d = np.zeros(len(thresholds)) if camera else None
        return frame
    iou = aligned_iou_matrix(gt_values, pred_values)
    same = np.array([[g == p for p in pred_norm] for g in gt_norm], dtype=bool).reshape(iou.shape)
    cost = np.where(same, 1.0 - iou, FORBIDDEN)
    rows, cols = _assigned(cost)
    frame.matched_ious = [float(1.0 - cost[r, c]) for r, c in zip(rows, cols)]
    frame.correct = sum(value >= iou_threshold for value in frame.matched_ious)
    frame.ap3d = frame_ap(iou, gt_norm, pred_norm, thresholds)
    if camera:
        rect_gt, rect_pred = recipe_rectangles(gt_values, camera), recipe_rectangles(pred_values, camera)
        iou_2d = iou_2d_matrix(rect_gt, rect_pred)
        iou_2d[np.isnan(rect_gt[:, 0])] = 0.0
        iou_2d[:, np.isnan(rect_pred[:, 0])] = 0.0
        frame.ap2d = frame_ap(iou_2d, gt_norm, pred_norm, thresholds)
    return frame
