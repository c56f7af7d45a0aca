"""The `validate` stage: check every kept box numerically, and draw the boxes of a sample of
frames for people to look at.

Checks that need no renderer (they hold on real data too), per frame record and box:
  - every number finite (the records reader refuses NaN and infinity, naming where they sit);
  - the intrinsics of their documented length, the camera pose and the raw ``object_to_world``
    rigid, the raw sizes positive, and the sizes the codec decodes from the nine numbers positive;
  - no track twice in one frame;
  - the re-projection residual: the pipeline's path ``bbox_3d -> codec.decode -> corners ->
    camera model`` against a reference, the renderer's own projection where the clip is
    synthetic (``render_truth.corners_px``), and otherwise an independent projection of the raw
    world-frame label through the RDS-HQ camera pose, which uses neither the FLU/RDF map nor the
    codec; a box fails when a corner lands more than ``max_residual_px`` from its reference.
    Only corners whose reference lies within one image size of the image count: a corner a few
    centimetres in front of the camera plane projects tens of thousands of pixels off the image,
    where the 1e-6 rounding of the stored numbers alone moves it by a pixel.
The metrics summarise per frame (boxes, worst residual, frames with a problem) and name the worst
frames and boxes; when any box fails the stage fails, naming the worst clips, frames and boxes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from ..checks import intrinsics_problem, object_problem, pose_problem, size_problem
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


SHOWN_WORST = 5  # clips, and frames or boxes, named in metrics and messages
RESIDUAL_MARGIN = 1.0  # corners whose reference lies farther off the image than this many image sizes are not measured


def near_image(pixels: np.ndarray, width: int, height: int, margin: float = RESIDUAL_MARGIN) -> np.ndarray:
    """(N,) mask of the (N, 2) pixel positions within ``margin`` image sizes of a ``width`` x
    ``height`` image: there a pixel distance is well conditioned."""
    u, v = pixels[:, 0], pixels[:, 1]
    return ((u >= -margin * width) & (u <= (1 + margin) * width)
            & (v >= -margin * height) & (v <= (1 + margin) * height))


class ValidationError(PipelineError, ValueError):
    """Some boxes or frames failed a check; the message names the worst clips, frames and boxes."""


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


@dataclass(frozen=True)
class Finding:
    """One checked box (or, with ``track_id`` None, a frame): its problem and its residual."""

    clip_id: str
    camera: str
    frame_index: int
    track_id: str | None
    problem: str | None  # None: passed
    residual_px: float | None = None
    reference: str | None = None

    def where(self) -> str:
        box = f", box {self.track_id}" if self.track_id is not None else ""
        return f"clip {self.clip_id}, {self.camera}, frame {self.frame_index}{box}"

    def severity(self) -> float:
        """Sort key of the worst first: a problem other than the residual outranks any residual."""
        if self.problem is not None and self.residual_px is None:
            return float("inf")
        return self.residual_px or 0.0


def frame_problem(record: dict[str, Any]) -> str | None:
    """What makes a whole frame record unusable: its intrinsics or its camera pose."""
    if (problem := intrinsics_problem(record["camera_model"], record["intrinsics"])) is not None:
        return f"intrinsics {problem}"
    if (problem := pose_problem(record["camera_to_world"])) is not None:
        return f"camera_to_world {problem}"
    return None


def box_problem(obj: dict[str, Any], codec_name: str) -> str | None:
    """What is wrong with one box's numbers, before any projection (the records reader has
    refused NaN and infinity already)."""
    if (found := object_problem(obj)) is not None:
        field, problem = found
        return f"{field} {problem}"
    if (problem := size_problem(get_codec(codec_name).decode(obj["bbox_3d"]).lwh)) is not None:
        return f"bbox_3d sizes {problem}"
    return None


def check_record(record: dict[str, Any], max_residual_px: float) -> list[Finding]:
    """One finding per box of the record (one for the frame when the frame itself is unusable)."""
    at = (record["clip_id"], record["camera"], record["frame_index"])
    if (problem := frame_problem(record)) is not None:
        return [Finding(*at, None, problem)]
    camera = camera_from_record(record["camera_model"], record["intrinsics"])
    findings, seen = [], set()
    for obj in record["objects"]:
        track = str(obj["track_id"])
        problem = "duplicate track in this frame" if track in seen else box_problem(obj, record["box_codec"])
        seen.add(track)
        if problem is not None:
            findings.append(Finding(*at, track, problem))
            continue
        reference = reference_corners(obj, record, camera)
        box = encoded_corners(obj, record["box_codec"])
        if reference is None or not camera.valid(box).all():
            findings.append(Finding(*at, track, None))
            continue
        pixels, source = reference
        measured = near_image(pixels, record["width"], record["height"])
        if not measured.any():
            findings.append(Finding(*at, track, None))
            continue
        residual = float(np.linalg.norm(camera.project(box[measured]) - pixels[measured], axis=1).max())
        too_far = f"re-projects {residual:.3f} px from its {source} reference" if residual > max_residual_px else None
        findings.append(Finding(*at, track, too_far, residual, source))
    return findings


def residual_summary(values: list[float]) -> dict[str, Any]:
    return {"boxes": len(values),
            "mean_residual_px": round(float(np.mean(values)), 6) if values else None,
            "max_residual_px": round(float(np.max(values)), 6) if values else None}


def summarise(frames: list[list[Finding]], images_drawn: int) -> dict[str, Any]:
    """Stage metrics: residuals overall and by reference, per-frame sanity, the worst findings."""
    every = [f for frame in frames for f in frame]
    measured = [f for f in every if f.residual_px is not None]
    failing = [f for f in every if f.problem is not None]
    problems: dict[str, int] = {}
    for finding in failing:
        kind = "residual" if finding.residual_px is not None else finding.problem.split(" (")[0]
        problems[kind] = problems.get(kind, 0) + 1
    worst_per_frame = [max((f.residual_px for f in frame if f.residual_px is not None), default=None) for frame in frames]
    residuals = [r for r in worst_per_frame if r is not None]
    overall = residual_summary([f.residual_px for f in measured])
    return {
        "boxes_checked": len(measured),
        "mean_residual_px": overall["mean_residual_px"],
        "max_residual_px": overall["max_residual_px"],
        "by_reference": {source: residual_summary([f.residual_px for f in measured if f.reference == source])
                         for source in ("render_truth", "raw_labels")},
        "boxes_failed": len(failing),
        "problems": dict(sorted(problems.items())),
        "per_frame": {
            "frames": len(frames),
            "frames_without_boxes": sum(1 for frame in frames if all(f.track_id is None for f in frame)),
            "frames_with_problems": sum(1 for frame in frames if any(f.problem is not None for f in frame)),
            "boxes": {"mean": round(float(np.mean([len(frame) for frame in frames])), 3) if frames else None,
                      "max": max((len(frame) for frame in frames), default=None)},
            "worst_residual_px": {"p50": round(float(np.percentile(residuals, 50)), 6) if residuals else None,
                                  "p95": round(float(np.percentile(residuals, 95)), 6) if residuals else None},
        },
        "worst": [{"clip_id": f.clip_id, "camera": f.camera, "frame_index": f.frame_index, "track_id": f.track_id,
                   "problem": f.problem, "residual_px": None if f.residual_px is None else round(f.residual_px, 6)}
                  for f in sorted(failing, key=lambda f: (-f.severity(), f.where()))[:SHOWN_WORST]],
        "images_drawn": images_drawn,
    }


def failure_message(failing: list[Finding], total: int, metrics: Path | None) -> str:
    """Names the clips with the most failing boxes and the worst frames and boxes."""
    per_clip: dict[str, int] = {}
    for finding in failing:
        per_clip[finding.clip_id] = per_clip.get(finding.clip_id, 0) + 1
    clips = ", ".join(f"{clip} ({count})" for clip, count in
                      sorted(per_clip.items(), key=lambda item: (-item[1], item[0]))[:SHOWN_WORST])
    worst = "\n  ".join(f"{f.where()}: {f.problem}" for f in sorted(failing, key=lambda f: (-f.severity(), f.where()))
                        [:SHOWN_WORST])
    where = f"; every check is summarised in {metrics}" if metrics else ""
    return (f"{len(failing)} of {total} checked boxes or frames failed{where}\n"
            f"worst clips (failing boxes): {clips}\nworst boxes:\n  {worst}")


def draw_sample(records: list[dict[str, Any]], params: ValidateParams, images: Path, plots: Path) -> int:
    """Draw ``sample_count`` frames (seeded choice) with their boxes into ``plots``."""
    rng = np.random.default_rng(params.seed)
    chosen = sorted(rng.choice(len(records), size=min(params.sample_count, len(records)), replace=False)) if records else []
    plots.mkdir(parents=True, exist_ok=True)
    for stale in plots.glob("*.jpg"):
        stale.unlink()
    shards = ShardReader(images)
    for index in chosen:
        record = records[index]
        stored = shards.read(record["image_shard"], record["image_member"])
        image = cv2.imdecode(np.frombuffer(stored, np.uint8), cv2.IMREAD_COLOR)
        if image is None:
            raise ShardError(f"{images / record['image_shard']}: member {record['image_member']} is not an image")
        ok, jpeg = cv2.imencode(".jpg", draw_boxes(image, record), [cv2.IMWRITE_JPEG_QUALITY, 90])
        atomic_write_bytes(plots / f"{record['clip_id'][:8]}_{record['camera']}_{record['frame_index']:06d}.jpg",
                           jpeg.tobytes())
    return len(chosen)


def validate(params: ValidateParams, input: Path, images: Path, plots: Path, metrics: Path | None = None) -> dict[str, Any]:
    """The `validate` stage: metrics of every check, drawings of a sample of sound frames with
    boxes; ``ValidationError`` naming the worst clips, frames and boxes when any check failed."""
    frames: list[list[Finding]] = []
    drawable: list[dict[str, Any]] = []
    for _, _, records in iter_records(input):
        for record in records:
            findings = check_record(record, params.max_residual_px)
            frames.append(findings)
            if record["objects"] and not any(f.problem and f.residual_px is None for f in findings):
                drawable.append(record)
    summary = summarise(frames, draw_sample(drawable, params, images, plots))
    if metrics:
        write_json(metrics, summary)
    failing = [f for frame in frames for f in frame if f.problem is not None]
    if failing:
        raise ValidationError(failure_message(failing, sum(len(frame) for frame in frames), metrics)
                              + f"\n(limit of the residual: validate.max_residual_px = {params.max_residual_px})")
    return summary
