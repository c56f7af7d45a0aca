"""Views of a frame that ``format`` writes in place of, or beside, the frame as extracted: its sky
cut off (``format.crop_above_deg``) and the frame flipped left to right (``format.mirror_train``).
Each view changes the image and the record's camera together, so the record's boxes (in camera
RDF, unchanged by a crop) project onto the view's pixels as they did onto the frame's.

- Sky crop: the rows more than ``crop_above_deg`` degrees above the optical axis (in the
  principal point's column: the horizon of a level camera and everything above it that is no
  road) are dropped, train and eval frames alike. Vehicles lie below; the image budget
  (``format.max_pixels``) then covers them at a higher resolution for the same image tokens. The
  camera is ``Camera.cropped`` (principal point ``cy - top``).
- Mirror: a training frame flipped left to right, as the monocular 3D detectors augment their
  training images (FCOS3D, SMOKE, Cube R-CNN flip at random), written once as a sample of its
  own, so every reader of the dataset (this project's training, cosmos-rl, qwen-vl-finetune)
  trains on it alike. The flipped image is what ``Camera.mirrored`` (principal point
  ``width - cx``) sees of the scene mirrored through the camera's y-z plane (``x -> -x``): each
  box becomes ``boxes.mirrored_box`` of itself, written in the record's own codec
  (``codecs.mirrored_values``), its distance unchanged. Evaluation frames are never mirrored.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..geometry.boxes import MIRROR_RDF
from ..geometry.cameras import Camera, camera_from_record
from ..geometry.codecs import get_codec, mirrored_values
from .formats import DatasetError

MIRRORED = "mirrored"  # a mirrored record's flag, and its sample id's suffix
CROP_TOP = "crop_top"  # a cropped record's key: the rows cut off the top of the frame as extracted
# Quality of a view's JPEG (the image is decoded, cropped or flipped and encoded again): high, so
# the second encoding adds little beside extract's own.
JPEG_QUALITY = 95


def sky_rows(camera: Camera, degrees: float) -> int:
    """Rows of ``camera``'s image lying wholly above the ray ``degrees`` above the optical axis in
    the principal point's column (``floor`` of that ray's row, at least 0, at most height - 1):
    what ``format.crop_above_deg`` cuts off. ``ValueError`` for ``degrees`` outside (0, 90)."""
    if not 0.0 < degrees < 90.0:
        raise ValueError(f"crop_above_deg = {degrees}: give an angle between 0 and 90 degrees")
    angle = math.radians(degrees)
    _, row = camera.project(np.array([0.0, -math.sin(angle), math.cos(angle)]))
    return int(min(max(math.floor(row), 0), camera.height - 1))


def _camera(record: dict[str, Any]) -> Camera:
    return camera_from_record(record["camera_model"], record["intrinsics"])


def cropped_record(record: dict[str, Any], degrees: float) -> dict[str, Any]:
    """The frame record (filter's output) of the frame without its sky (``sky_rows``): the cropped
    camera's intrinsics, ``height`` and ``crop_top`` (the rows cut, 0 where none lie above the
    angle); the boxes unchanged. ``ValueError`` for intrinsics ``camera_from_record`` refuses or
    an angle ``sky_rows`` refuses."""
    camera = _camera(record)
    top = sky_rows(camera, degrees)
    cropped = camera.cropped(top)
    return {**record, "intrinsics": cropped.to_array().tolist(), "height": cropped.height, CROP_TOP: top}


def mirror_record(record: dict[str, Any]) -> dict[str, Any]:
    """The frame record (filter's output: ``camera_model``, ``intrinsics``, ``box_codec``,
    ``objects`` with ``bbox_3d``, ``center``, ``distance_m``, ``track_id``, ``label``) of the
    frame flipped left to right: the mirrored camera's intrinsics, each object's box and centre
    mirrored, ``mirrored`` set. The objects keep only those fields, the ones ``format`` reads;
    the record's other keys (its pose in the world, the image's place in extract's shards) are
    the unflipped frame's, and ``format`` reads only the shard place. ``ValueError`` for
    intrinsics ``camera_from_record`` refuses or an unknown codec."""
    camera = _camera(record).mirrored()
    codec = get_codec(record["box_codec"])
    objects = [{"track_id": o["track_id"], "label": o["label"], "distance_m": o["distance_m"],
                "center": (MIRROR_RDF @ np.asarray(o["center"], dtype=np.float64) + 0.0).tolist(),
                "bbox_3d": mirrored_values(o["bbox_3d"], codec).tolist()} for o in record["objects"]]
    return {**record, "intrinsics": camera.to_array().tolist(), "objects": objects, MIRRORED: True}


def view_jpeg(data: bytes, source: str, top: int = 0, mirrored: bool = False) -> bytes:
    """The JPEG ``data`` without its first ``top`` rows, then flipped left to right where
    ``mirrored``, encoded at ``JPEG_QUALITY`` (the bytes as given when neither applies).
    ``DatasetError`` (a ``ValueError``; the stage reports it in one line) naming ``source`` for
    bytes that are not an image or an image of at most ``top`` rows."""
    if not top and not mirrored:
        return data
    import cv2  # here: every format run imports this module, few make views

    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise DatasetError(f"{source}: not a JPEG image")
    if image.shape[0] <= top:
        raise DatasetError(f"{source}: {image.shape[0]} rows, fewer than the {top} to crop and one to keep")
    view = cv2.flip(image[top:], 1) if mirrored else image[top:]
    ok, encoded = cv2.imencode(".jpg", view, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:
        raise DatasetError(f"{source}: the view could not be encoded")
    return encoded.tobytes()
