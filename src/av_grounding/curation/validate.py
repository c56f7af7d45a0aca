"""The `validate` stage: draw every kept box on a sample of frames, and check numerically that
the encoded boxes re-project where the reference says.

The pipeline's path is ``bbox_3d -> codec.decode -> corners -> camera model``. The reference is
the renderer's own projection where the clip is synthetic (``render_truth.corners_px``), and
otherwise an independent projection of the raw world-frame label through the RDS-HQ camera pose,
which uses neither the FLU/RDF map nor the codec.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import cv2
import numpy as np

from ..errors import PipelineError
from ..geometry.boxes import corners, edge_segments, project_edges
from ..geometry.cameras import Camera, camera_from_record
from ..geometry.codecs import get_codec
from ..geometry.transforms import apply, invert_pose
from ..params import ValidateParams
from ..shards import ShardError, ShardReader
from ..storage import atomic_write_bytes, write_json
from .records import iter_records

HEADING_FACE = (0, 1, 5, 4)
COLOURS = {"Car": (60, 220, 60), "Automobile": (60, 220, 60), "Truck": (40, 160, 255), "Heavy_truck": (40, 160, 255),
           "Bus": (255, 200, 40), "Trailer": (200, 80, 255), "Other_vehicle": (255, 255, 80)}


class ValidationError(PipelineError, ValueError):
    """Boxes re-project too far from where they should."""


def reference_corners(obj: dict[str, Any], record: dict[str, Any], camera: Camera) -> tuple[np.ndarray, str] | None:
    truth = obj.get("render_truth")
    if truth and truth.get("corners_px") is not None:
        return np.asarray(truth["corners_px"], dtype=np.float64), "render_truth"
    world = corners(np.asarray(obj["object_to_world"], dtype=np.float64), np.asarray(obj["object_lwh"]))
    in_camera = apply(invert_pose(np.asarray(record["camera_to_world"], dtype=np.float64)), world)
    if not camera.valid(in_camera).all():
        return None
    return camera.project(in_camera), "raw_labels"


def encoded_corners(obj: dict[str, Any], codec_name: str) -> np.ndarray:
    return get_codec(codec_name).decode(obj["bbox_3d"]).corners()


def draw_boxes(image: np.ndarray, record: dict[str, Any]) -> np.ndarray:
    """The 12 edges of every box (heading face brighter), clipped at the near plane."""
    camera = camera_from_record(record["camera_model"], record["intrinsics"])
    segments = edge_segments(record["camera_model"])
    canvas = image.copy()
    for obj in record["objects"]:
        box = encoded_corners(obj, record["box_codec"])
        colour = COLOURS.get(obj["object_type"], (255, 255, 255))
        for line in project_edges(box, camera, segments):
            cv2.polylines(canvas, [np.round(line * 4).astype(np.int32)], False, colour, 1, cv2.LINE_AA, shift=2)
        face = box[list(HEADING_FACE)]
        if camera.valid(face).all():
            pts = camera.project(face)
            cv2.line(canvas, *(np.round(pts[[0, 2]] * 4).astype(np.int32)), colour, 1, cv2.LINE_AA, shift=2)
            cv2.line(canvas, *(np.round(pts[[1, 3]] * 4).astype(np.int32)), colour, 1, cv2.LINE_AA, shift=2)
    return canvas


def validate(params: ValidateParams, input: Path, images: Path, plots: Path, metrics: Path | None = None) -> dict[str, Any]:
    residuals: dict[str, list[float]] = {"render_truth": [], "raw_labels": []}
    drawable: list[dict[str, Any]] = []
    for _, _, records in iter_records(input):
        for record in records:
            if record["objects"]:
                drawable.append(record)
            camera = camera_from_record(record["camera_model"], record["intrinsics"])
            for obj in record["objects"]:
                reference = reference_corners(obj, record, camera)
                box = encoded_corners(obj, record["box_codec"])
                if reference is None or not camera.valid(box).all():
                    continue
                pixels, source = reference
                residuals[source].append(float(np.linalg.norm(camera.project(box) - pixels, axis=1).max()))
    rng = np.random.default_rng(params.seed)
    chosen = sorted(rng.choice(len(drawable), size=min(params.sample_count, len(drawable)), replace=False)) if drawable else []
    plots.mkdir(parents=True, exist_ok=True)
    for stale in plots.glob("*.jpg"):
        stale.unlink()
    shards = ShardReader(images)
    for index in chosen:
        record = drawable[index]
        stored = shards.read(record["image_shard"], record["image_member"])
        image = cv2.imdecode(np.frombuffer(stored, np.uint8), cv2.IMREAD_COLOR)
        if image is None:
            raise ShardError(f"{images / record['image_shard']}: member {record['image_member']} is not an image")
        ok, jpeg = cv2.imencode(".jpg", draw_boxes(image, record), [cv2.IMWRITE_JPEG_QUALITY, 90])
        atomic_write_bytes(plots / f"{record['clip_id'][:8]}_{record['camera']}_{record['frame_index']:06d}.jpg", jpeg.tobytes())
    every = residuals["render_truth"] + residuals["raw_labels"]
    summary = {
        "boxes_checked": len(every),
        "mean_residual_px": round(float(np.mean(every)), 6) if every else 0.0,
        "max_residual_px": round(float(np.max(every)), 6) if every else 0.0,
        "by_reference": {source: {"boxes": len(values),
                                  "mean_residual_px": round(float(np.mean(values)), 6) if values else 0.0,
                                  "max_residual_px": round(float(np.max(values)), 6) if values else 0.0}
                         for source, values in residuals.items()},
        "images_drawn": len(chosen),
    }
    if metrics:
        write_json(metrics, summary)
    if summary["max_residual_px"] > params.max_residual_px:
        raise ValidationError(f"boxes re-project up to {summary['max_residual_px']:.3f} px from their reference "
                              f"(limit validate.max_residual_px = {params.max_residual_px}); see {metrics}")
    return summary
