"""Score one folder of predictions against ground truth (definitions: docs/metrics.md).

Ground truth: recipe-format annotation files (``text/<id>.json`` of a dataset, or any folder of
``{"annotations": [{"label", "bbox_3d"}], "camera_params" | "intrinsics", ...}``). Predictions:
``<id>.json`` with ``annotations`` and, from `infer`, ``raw_text`` and per-box ``scores``. A
missing or unparsable prediction counts as zero boxes for its frame, never as a skipped frame.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy.optimize import linear_sum_assignment

from ..geometry.boxes import Box3D, clip_rectangle, edge_segments, projected_rectangle
from ..geometry.cameras import Camera, PinholeCamera, camera_from_record
from ..geometry.codecs import get_codec
from ..errors import PipelineError
from ..params import EvaluateParams
from .ap import DistanceImage, ImageBoxes, coco_ap, distance_ap
from .iou import iou_2d, iou_3d, iou_aligned
from .parse import box_scores, parse_answer

COCO_THRESHOLDS = [round(t, 2) for t in np.linspace(0.5, 0.95, 10)]
AP3D_THRESHOLDS = [round(t, 2) for t in np.linspace(0.05, 0.5, 10)]
DISTANCE_THRESHOLDS = [0.5, 1.0, 2.0, 4.0]


class EvaluationError(PipelineError, ValueError):
    """Ground truth is missing or malformed; the message names the file."""


@dataclass
class Frame:
    id: str
    camera: Camera
    width: int
    height: int
    codec: str
    gt: list[dict[str, Any]]
    pred: list[dict[str, Any]] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)
    status: str = "missing"  # ok | repaired | failed | missing

    def boxes(self, which: str) -> list[Box3D]:
        codec = get_codec(self.codec)
        return [codec.decode(b["bbox_3d"]) for b in (self.gt if which == "gt" else self.pred)]


def camera_of(record: dict[str, Any], source: Path) -> tuple[Camera, int, int]:
    if "intrinsics" in record and "camera_model" in record:
        camera = camera_from_record(record["camera_model"], record["intrinsics"])
        return camera, camera.width, camera.height
    params = record.get("camera_params")
    if not isinstance(params, dict) or not {"fx", "fy", "cx", "cy"} <= set(params):
        raise EvaluationError(f"{source}: needs 'intrinsics' + 'camera_model' or 'camera_params' {{fx, fy, cx, cy}}")
    # Recipe files carry no image size: the principal point is taken as the image centre.
    width = int(record.get("width", round(2 * params["cx"])))
    height = int(record.get("height", round(2 * params["cy"])))
    return PinholeCamera(params["fx"], params["fy"], params["cx"], params["cy"], width, height), width, height


def load_frames(gt_dir: Path, pred_dir: Path, default_codec: str) -> list[Frame]:
    files = sorted(Path(gt_dir).glob("*.json"))
    if not files:
        raise EvaluationError(f"{gt_dir}: no ground-truth JSON files")
    frames = []
    for path in files:
        try:
            record = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise EvaluationError(f"{path}: malformed JSON: {exc}") from exc
        if not isinstance(record.get("annotations"), list):
            raise EvaluationError(f"{path}: no 'annotations' list")
        camera, width, height = camera_of(record, path)
        frame = Frame(path.stem, camera, width, height, record.get("box_codec", default_codec), record["annotations"])
        prediction = Path(pred_dir) / path.name
        if prediction.exists():
            read_prediction(frame, prediction)
        frames.append(frame)
    return frames


def read_prediction(frame: Frame, path: Path) -> None:
    """Boxes and scores of one prediction file; `infer` writes ``raw_text`` and ``scores``,
    other tools may write only ``annotations`` (then boxes rank by order of appearance)."""
    try:
        document = json.loads(path.read_text())
    except json.JSONDecodeError:
        frame.status = "failed"
        return
    text = document.get("raw_text") if isinstance(document.get("raw_text"), str) else json.dumps(document.get("annotations", []))
    parsed = parse_answer(text)
    frame.pred = [{"label": b["label"], "bbox_3d": b["bbox_3d"]} for b in parsed.boxes]
    frame.status = parsed.status
    scores = document.get("scores")
    frame.scores = (scores if isinstance(scores, list) and len(scores) == len(frame.pred)
                    else box_scores(parsed, text, None, None))


def rectangles(frame: Frame, which: str) -> list[np.ndarray]:
    """Image-clipped rectangles of the projected boxes (empty rectangle when behind the camera)."""
    segments = edge_segments("pinhole" if isinstance(frame.camera, PinholeCamera) else "ftheta")
    out = []
    for box in frame.boxes(which):
        rect = projected_rectangle(box.corners(), frame.camera, segments)
        out.append(np.zeros(4) if rect is None else clip_rectangle(rect, frame.width, frame.height))
    return out


def heading(box: Box3D) -> float:
    """Yaw of the box's forward axis in the camera's ground plane (x right, z forward)."""
    forward = box.rotation[:, 0]
    return float(np.arctan2(forward[0], forward[2]))


def angle_difference(a: float, b: float) -> float:
    return float(abs((a - b + np.pi) % (2 * np.pi) - np.pi))


def summary_matching(frames: list[Frame], max_distance: float) -> dict[str, float]:
    """Per frame, label-agnostic Hungarian matching on ground-plane centre distance (<= max)."""
    tp = labels_right = 0
    position, orientation = [], []
    n_gt = sum(len(f.gt) for f in frames)
    n_pred = sum(len(f.pred) for f in frames)
    for frame in frames:
        gts, preds = frame.boxes("gt"), frame.boxes("pred")
        if not gts or not preds:
            continue
        cost = np.array([[np.linalg.norm(p.center[[0, 2]] - g.center[[0, 2]]) for g in gts] for p in preds])
        rows, cols = linear_sum_assignment(cost)
        for r, c in zip(rows, cols):
            if cost[r, c] <= max_distance:
                tp += 1
                labels_right += frame.pred[r]["label"] == frame.gt[c]["label"]
                position.append(float(np.linalg.norm(preds[r].center - gts[c].center)))
                orientation.append(np.degrees(angle_difference(heading(preds[r]), heading(gts[c]))))
    return {"precision": tp / n_pred if n_pred else 0.0, "recall": tp / n_gt if n_gt else 0.0,
            "detection_rate": tp / n_gt if n_gt else 0.0, "label_accuracy": labels_right / tp if tp else 0.0,
            "position_error_m": float(np.mean(position)) if position else -1.0,
            "orientation_error_deg": float(np.mean(orientation)) if orientation else -1.0, "matched": tp}


def recipe_metrics(frames: list[Frame]) -> dict[str, float]:
    """The recipe's metrics by their definitions, without its two bugs: counts are summed as
    integers (never rebuilt from rounded percentages) and unparsable frames count (all missed)."""
    n_gt = sum(len(f.gt) for f in frames)
    n_pred = sum(len(f.pred) for f in frames)
    iou_sum, accurate, label_pairs, label_right = 0.0, 0, 0, 0
    tp2d = {t: 0 for t in COCO_THRESHOLDS}
    tp3d = {t: 0 for t in COCO_THRESHOLDS}
    for frame in frames:
        if not frame.gt or not frame.pred:
            continue
        aligned = np.array([[iou_aligned(p["bbox_3d"], g["bbox_3d"]) for g in frame.gt] for p in frame.pred])
        same = np.array([[p["label"] == g["label"] for g in frame.gt] for p in frame.pred])
        rows, cols = linear_sum_assignment(np.where(same, 1.0 - aligned, 1e6))
        pairs = [(r, c) for r, c in zip(rows, cols) if same[r, c] and aligned[r, c] > 0]
        iou_sum += sum(aligned[r, c] for r, c in pairs)
        accurate += sum(aligned[r, c] >= 0.5 for r, c in pairs)
        any_rows, any_cols = linear_sum_assignment(1.0 - aligned)
        overlapping = [(r, c) for r, c in zip(any_rows, any_cols) if aligned[r, c] > 0]
        label_pairs += len(overlapping)
        label_right += sum(same[r, c] for r, c in overlapping)
        rect_gt, rect_pred = rectangles(frame, "gt"), rectangles(frame, "pred")
        for t in COCO_THRESHOLDS:
            tp3d[t] += sum(aligned[r, c] >= t for r, c in pairs)
            tp2d[t] += sum(iou_2d(rect_pred[r], rect_gt[c]) >= t for r, c in pairs)
    return {"mean_iou": iou_sum / n_gt if n_gt else 0.0,
            "iou_accuracy_pct": 100.0 * accurate / n_gt if n_gt else 0.0,
            "label_accuracy_pct": 100.0 * label_right / label_pairs if label_pairs else 0.0,
            "ap2d": float(np.mean([tp2d[t] / n_pred for t in COCO_THRESHOLDS])) if n_pred else 0.0,
            "ap3d": float(np.mean([tp3d[t] / n_pred for t in COCO_THRESHOLDS])) if n_pred else 0.0}


def evaluate_frames(frames: list[Frame], params: EvaluateParams) -> tuple[dict[str, Any], dict[str, Any]]:
    """Metrics of one prediction set, and the curves the plots need."""
    labels = sorted({b["label"] for f in frames for b in f.gt})
    images_2d, images_3d, distance_images = [], [], []
    for frame in frames:
        rg, rp = rectangles(frame, "gt"), rectangles(frame, "pred")
        gts, preds = frame.boxes("gt"), frame.boxes("pred")
        gt_labels, dt_labels = [b["label"] for b in frame.gt], [b["label"] for b in frame.pred]
        images_2d.append(ImageBoxes(gt_labels, dt_labels, frame.scores,
                                    np.array([[iou_2d(p, g) for g in rg] for p in rp]).reshape(len(rp), len(rg))))
        images_3d.append(ImageBoxes(gt_labels, dt_labels, frame.scores,
                                    np.array([[iou_3d(p, g) for g in gts] for p in preds]).reshape(len(preds), len(gts))))
        distance_images.append(DistanceImage(gt_labels, np.array([g.center[[0, 2]] for g in gts]).reshape(-1, 2),
                                             dt_labels, frame.scores,
                                             np.array([p.center[[0, 2]] for p in preds]).reshape(-1, 2)))
    ap2d = coco_ap(images_2d, labels, COCO_THRESHOLDS)
    ap3d = coco_ap(images_3d, labels, AP3D_THRESHOLDS)
    bins = {"near": (0.0, params.depth_bins_m[0]), "medium": tuple(params.depth_bins_m),
            "far": (params.depth_bins_m[1], float("inf"))}
    by_depth = {}
    for name, (lo, hi) in bins.items():
        ranged = []
        for frame, image in zip(frames, images_3d):
            gt_depth = np.array([b.center[2] for b in frame.boxes("gt")])
            dt_depth = np.array([b.center[2] for b in frame.boxes("pred")])
            ranged.append(ImageBoxes(image.gt_labels, image.dt_labels, image.dt_scores, image.overlap,
                                     (gt_depth < lo) | (gt_depth >= hi), (dt_depth < lo) | (dt_depth >= hi)))
        by_depth[name] = coco_ap(ranged, labels, AP3D_THRESHOLDS).ap
    distance_table, errors = {}, {"trans": [], "scale": [], "orient": []}
    for threshold in DISTANCE_THRESHOLDS:
        aps = []
        for label in labels:
            ap, matches = distance_ap(distance_images, label, threshold)
            if ap >= 0:
                aps.append(ap)
            if threshold == 2.0:
                for i, d, g in matches:
                    p, t = frames[i].boxes("pred")[d], frames[i].boxes("gt")[g]
                    errors["trans"].append(float(np.linalg.norm(p.center[[0, 2]] - t.center[[0, 2]])))
                    smaller = np.minimum(np.abs(p.lwh), np.abs(t.lwh)).prod()
                    errors["scale"].append(float(1 - smaller / (np.abs(p.lwh).prod() + np.abs(t.lwh).prod() - smaller)))
                    errors["orient"].append(angle_difference(heading(p), heading(t)))
        distance_table[str(threshold)] = float(np.mean(aps)) if aps else 0.0
    statuses = [f.status for f in frames]
    metrics = {
        "frames": len(frames),
        "gt_boxes": sum(len(f.gt) for f in frames),
        "pred_boxes": sum(len(f.pred) for f in frames),
        "parse_failure_rate": (statuses.count("failed") + statuses.count("missing")) / len(frames),
        "repaired_answers": statuses.count("repaired"),
        "ap2d": {"ap": max(ap2d.ap, 0.0), "ap50": max(ap2d.per_threshold.get(0.5, 0.0), 0.0),
                 "ap75": max(ap2d.per_threshold.get(0.75, 0.0), 0.0), "per_class": ap2d.per_class},
        "ap3d": {"ap": max(ap3d.ap, 0.0), "ap25": max(ap3d.per_threshold.get(0.25, 0.0), 0.0),
                 "ap50": max(ap3d.per_threshold.get(0.5, 0.0), 0.0),
                 **{name: max(value, 0.0) for name, value in by_depth.items()}, "per_class": ap3d.per_class},
        "center_distance": {"map": float(np.mean(list(distance_table.values()))), "ap_at_m": distance_table,
                            "trans_err_m": float(np.mean(errors["trans"])) if errors["trans"] else -1.0,
                            "scale_err": float(np.mean(errors["scale"])) if errors["scale"] else -1.0,
                            "orient_err_rad": float(np.mean(errors["orient"])) if errors["orient"] else -1.0},
        "matching": summary_matching(frames, params.match_distance_m),
        "recipe": recipe_metrics(frames),
    }
    return metrics, {"pr_ap2d": ap2d.curves, "pr_ap3d": ap3d.curves}
