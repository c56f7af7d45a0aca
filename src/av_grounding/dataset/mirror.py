"""Mirrored training frames (``format.mirror_train``): a frame flipped left to right, as the
monocular 3D detectors augment their training images (FCOS3D, SMOKE, Cube R-CNN flip at random),
written here once as a sample of its own, so every reader of the dataset (this project's
training, cosmos-rl, qwen-vl-finetune) trains on it alike.

The flipped image is what the camera of ``Camera.mirrored`` (principal point ``width - cx``)
sees of the scene mirrored through the camera's y-z plane (``x -> -x``): each box becomes
``boxes.mirrored_box`` of itself, written in the record's own codec (``codecs.mirrored_values``),
its distance unchanged. Evaluation frames are never mirrored.
"""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np

from ..geometry.boxes import MIRROR_RDF
from ..geometry.cameras import camera_from_record
from ..geometry.codecs import get_codec, mirrored_values
from .formats import DatasetError

MIRRORED = "mirrored"  # a mirrored record's flag, and its sample id's suffix
# Quality of the flipped frames' JPEG (the image is decoded, flipped and encoded again): high, so
# the second encoding adds little beside extract's own.
JPEG_QUALITY = 95


def mirror_record(record: dict[str, Any]) -> dict[str, Any]:
    """The frame record (filter's output: ``camera_model``, ``intrinsics``, ``box_codec``,
    ``objects`` with ``bbox_3d``, ``center``, ``distance_m``, ``track_id``, ``label``) of the
    frame flipped left to right: the mirrored camera's intrinsics, each object's box and centre
    mirrored, ``mirrored`` set. The objects keep only those fields (the others, poses in the
    world and render references, describe the unflipped scene). ``ValueError`` for intrinsics
    ``camera_from_record`` refuses or an unknown codec."""
    camera = camera_from_record(record["camera_model"], record["intrinsics"]).mirrored()
    codec = get_codec(record["box_codec"])
    objects = [{"track_id": o["track_id"], "label": o["label"], "distance_m": o["distance_m"],
                "center": (MIRROR_RDF @ np.asarray(o["center"], dtype=np.float64) + 0.0).tolist(),
                "bbox_3d": mirrored_values(o["bbox_3d"], codec).tolist()} for o in record["objects"]]
    return {**record, "intrinsics": camera.to_array().tolist(), "objects": objects, MIRRORED: True}


def mirrored_jpeg(data: bytes, source: str) -> bytes:
    """The JPEG ``data`` flipped left to right (decoded, flipped, encoded at ``JPEG_QUALITY``).
    ``DatasetError`` (a ``ValueError``; the stage reports it in one line) naming ``source`` for
    bytes that are not an image."""
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise DatasetError(f"{source}: not a JPEG image")
    ok, flipped = cv2.imencode(".jpg", cv2.flip(image, 1), [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:
        raise DatasetError(f"{source}: the flipped image could not be encoded")
    return flipped.tobytes()
