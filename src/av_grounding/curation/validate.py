"""The checks of the `validate` stage (run by ``pipeline.validate``): every kept box checked
numerically, and the drawing of a frame's boxes for people to look at.

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
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from ..checks import intrinsics_problem, object_problem, pose_problem, size_problem
from ..errors import PipelineError
from ..geometry.boxes import corners, edge_segments, project_edges
from ..geometry.cameras import Camera, camera_from_record
from ..geometry.codecs import get_codec
from ..geometry.transforms import apply, invert_pose

HEADING_FACE = (0, 1, 5, 4)
COLOURS = {"Car": (60, 220, 60), "Automobile": (60, 220, 60), "Truck": (40, 160, 255), "Heavy_truck": (40, 160, 255),
           "Bus": (255, 200, 40), "Trailer": (200, 80, 255), "Other_vehicle": (255, 255, 80)}


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
            corner_0, corner_1, corner_2, corner_3 = np.round(pts * 4).astype(np.int32).tolist()
            cv2.line(canvas, corner_0, corner_2, colour, 1, cv2.LINE_AA, shift=2)
            cv2.line(canvas, corner_1, corner_3, colour, 1, cv2.LINE_AA, shift=2)
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
        field, wrong = found
        return f"{field} {wrong}"
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
