"""The filters of the `filter` stage (docs/formats.md#filter; run by ``pipeline.filter``): drop
boxes a model cannot or should not see.

Each box is dropped by the first filter that rejects it, and counted under that reason:
  category  its raw type is not in ``label_map`` (pedestrians, cyclists, ...; each such type is
            named with its count under ``removed_types``); kept boxes get the mapped ``label``;
  distance  centre farther than ``max_distance_m`` from the camera;
  fov       wholly behind the camera, or less than ``min_in_image_fraction`` of its projected
            2D rectangle inside the image;
  occlusion its in-image 2D rectangle covered by the rectangles of closer objects for at least
            ``occlusion_max_covered`` of its area (the recipe's rule, in 2D);
  depth     fewer than ``depth_min_visible`` of the lines of sight through it reach it before
            hitting a closer object's 3D box (exact ray casting against every labelled box).
Where the renderer's truth is present (synthetic clips), the occlusion and depth decisions are
scored against it: precision and recall of "kept" versus "truly visible".
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..geometry.boxes import Box3D, clip_rectangle, edge_segments, projected_rectangle, ray_box_entry, rectangle_area
from ..geometry.cameras import Camera, camera_from_record
from ..params import FilterParams

REASONS = ("category", "distance", "fov", "occlusion", "depth")


def covered_fraction(target: np.ndarray, others: list[np.ndarray]) -> float:
    """Exact fraction of rectangle ``target`` covered by the union of ``others`` (coordinate
    compression over the rectangle edges)."""
    area = rectangle_area(target)
    if area <= 0:
        return 1.0
    clipped = [np.array([max(o[0], target[0]), max(o[1], target[1]), min(o[2], target[2]), min(o[3], target[3])])
               for o in others]
    clipped = [c for c in clipped if c[2] > c[0] and c[3] > c[1]]
    if not clipped:
        return 0.0
    xs = np.unique(np.concatenate([[target[0], target[2]], *[c[[0, 2]] for c in clipped]]))
    ys = np.unique(np.concatenate([[target[1], target[3]], *[c[[1, 3]] for c in clipped]]))
    covered = np.zeros((len(ys) - 1, len(xs) - 1), dtype=bool)
    for c in clipped:
        rows = slice(np.searchsorted(ys, c[1]), np.searchsorted(ys, c[3]))
        covered[rows, np.searchsorted(xs, c[0]):np.searchsorted(xs, c[2])] = True
    cell_areas = np.outer(np.diff(ys), np.diff(xs))
    return float((cell_areas * covered).sum() / area)


def visible_fraction(index: int, boxes: list[Box3D], rect: np.ndarray, camera: Camera, samples: int) -> float:
    """Share of the lines of sight through box ``index`` (a grid over its in-image rectangle) that
    reach it before any other box."""
    xs = np.linspace(rect[0], rect[2], samples + 2)[1:-1]
    ys = np.linspace(rect[1], rect[3], samples + 2)[1:-1]
    pixels = np.stack(np.meshgrid(xs, ys), axis=-1).reshape(-1, 2)
    rays = camera.unproject(pixels)
    own = ray_box_entry(rays, boxes[index])
    hits = np.isfinite(own)
    if not hits.any():
        return 1.0  # too thin to sample: leave it to the other filters
    blocked = np.zeros(hits.sum(), dtype=bool)
    for other_index, other in enumerate(boxes):
        if other_index != index:
            blocked |= ray_box_entry(rays[hits], other) < own[hits]
    return float(1.0 - blocked.mean())


@dataclass
class Decision:
    reason: str | None  # None: kept
    in_image_fraction: float
    covered_fraction: float
    visible_fraction: float


def decide(record: dict[str, Any], params: FilterParams) -> list[Decision]:
    """The filter decision for every object of one frame record."""
    camera = camera_from_record(record["camera_model"], record["intrinsics"])
    segments = edge_segments(record["camera_model"])
    objects = record["objects"]
    boxes = [Box3D(np.array(o["center"]), np.array(o["rotation"]), np.array(o["object_lwh"])) for o in objects]
    rects: list[np.ndarray | None] = []
    in_image: list[float] = []
    for box in boxes:
        rect = projected_rectangle(box.corners(), camera, segments)
        if rect is None:
            rects.append(None)
            in_image.append(0.0)
            continue
        clipped = clip_rectangle(rect, camera.width, camera.height)
        rects.append(clipped)
        full = rectangle_area(rect)
        in_image.append(rectangle_area(clipped) / full if full > 0 else 0.0)
    decisions = []
    for i, obj in enumerate(objects):
        rect = rects[i]
        closer = [other for j, other in enumerate(rects)
                  if j != i and other is not None and objects[j]["distance_m"] < obj["distance_m"]]
        covered = covered_fraction(rect, closer) if rect is not None else 1.0
        visible = (visible_fraction(i, boxes, rect, camera, params.depth_rays_per_side)
                   if rect is not None and rectangle_area(rect) > 0 else 0.0)
        if obj["object_type"] not in params.label_map:
            reason = "category"
        elif obj["distance_m"] > params.max_distance_m:
            reason = "distance"
        elif rect is None or in_image[i] < params.min_in_image_fraction or rectangle_area(rect) <= 0:
            reason = "fov"
        elif covered >= params.occlusion_max_covered:
            reason = "occlusion"
        elif visible < params.depth_min_visible:
            reason = "depth"
        else:
            reason = None
        decisions.append(Decision(reason, in_image[i], covered, visible))
    return decisions


def precision_recall(kept: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    true_positive = float((kept & truth).sum())
    return {"precision": round(true_positive / float(kept.sum()), 6) if kept.sum() else 1.0,
            "recall": round(true_positive / float(truth.sum()), 6) if truth.sum() else 1.0}


def score_against_truth(rows: list[tuple[Decision, dict | None]], params: FilterParams) -> dict[str, Any]:
    """Occlusion and depth filters against the renderer's visible fraction, on the vehicle boxes
    that pass the distance and field-of-view filters."""
    candidates = [(d, t) for d, t in rows if d.reason not in ("category", "distance", "fov")]
    if not candidates:
        return {}
    truly_visible = np.array([t is not None and t["visible_fraction"] >= params.truth_min_visible_fraction
                              and t["visible_pixels"] >= params.truth_min_visible_pixels for _, t in candidates])
    by_occlusion = np.array([d.covered_fraction < params.occlusion_max_covered for d, _ in candidates])
    by_depth = np.array([d.visible_fraction >= params.depth_min_visible for d, _ in candidates])
    return {
        "boxes": len(candidates),
        "truly_visible": int(truly_visible.sum()),
        "keep_all": precision_recall(np.ones(len(candidates), dtype=bool), truly_visible),
        "occlusion": precision_recall(by_occlusion, truly_visible),
        "depth": precision_recall(by_depth, truly_visible),
        "occlusion_and_depth": precision_recall(by_occlusion & by_depth, truly_visible),
    }


@dataclass
class FileCounts:
    """What filtering one records file removed and kept, and every decision with its truth."""

    removed: dict[str, int]
    unmapped: dict[str, int]  # raw types the label map does not name, with their box counts
    frames: int = 0
    empty_frames: int = 0
    kept: int = 0
    scored: list[tuple[Decision, dict | None]] = field(default_factory=list)


def filter_file(params: FilterParams, records: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], FileCounts]:
    """One records file: its records with only the kept boxes (labelled, with their measured
    fractions), and the counts."""
    counts = FileCounts(dict.fromkeys(REASONS, 0), {})
    out_records = []
    for record in records:
        kept = []
        for obj, decision in zip(record["objects"], decide(record, params)):
            counts.scored.append((decision, obj.get("render_truth")))
            if decision.reason == "category":
                counts.unmapped[obj["object_type"]] = counts.unmapped.get(obj["object_type"], 0) + 1
            if decision.reason:
                counts.removed[decision.reason] += 1
                continue
            kept.append({**obj, "label": params.label_map[obj["object_type"]],
                         "in_image_fraction": round(decision.in_image_fraction, 4),
                         "covered_fraction": round(decision.covered_fraction, 4),
                         "visible_fraction": round(decision.visible_fraction, 4)})
        counts.kept += len(kept)
        counts.frames += 1
        counts.empty_frames += not kept
        out_records.append({**record, "objects": kept})
    return out_records, counts
