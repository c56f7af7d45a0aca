"""World-frame labels -> boxes in camera RDF, per record (docs/conventions.md#world-to-camera); the
`transform` stage runs it over every records file (``pipeline.transform``).

Two explicit steps, as the recipe describes them: world -> camera FLU (``P = R * P_world + t``),
then FLU -> RDF (``x = -y, y = -z, z = x``). Each object keeps its physical box (centre,
rotation, size) and the nine numbers of the chosen box codec.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..geometry.boxes import Box3D
from ..geometry.codecs import get_codec
from ..geometry.transforms import FLU_TO_RDF, RDF_TO_FLU, invert_pose, make_pose

FLU_TO_RDF_POSE = make_pose(FLU_TO_RDF, np.zeros(3))


def world_to_camera_flu(camera_to_world_rdf: np.ndarray) -> np.ndarray:
    """4x4 world -> camera FLU, from the RDS-HQ camera pose (camera RDF axes -> world)."""
    return make_pose(RDF_TO_FLU, np.zeros(3)) @ invert_pose(camera_to_world_rdf)


def camera_box(obj: dict[str, Any], world_to_flu: np.ndarray) -> Box3D:
    object_to_flu = world_to_flu @ np.asarray(obj["object_to_world"], dtype=np.float64)
    return Box3D.from_pose(FLU_TO_RDF_POSE @ object_to_flu, obj["object_lwh"])


def transform_record(record: dict[str, Any], codec_name: str) -> dict[str, Any]:
    codec = get_codec(codec_name)
    world_to_flu = world_to_camera_flu(np.asarray(record["camera_to_world"], dtype=np.float64))
    objects = []
    for obj in record["objects"]:
        box = camera_box(obj, world_to_flu)
        objects.append({
            "track_id": obj["track_id"],
            "object_type": obj["object_type"],
            "object_is_moving": obj.get("object_is_moving"),
            "object_to_world": obj["object_to_world"],
            "object_lwh": obj["object_lwh"],
            "center": box.center.tolist(),
            "rotation": box.rotation.tolist(),
            "distance_m": math.hypot(*box.center),  # not np.linalg.norm: its BLAS dot varies by CPU
            "bbox_3d": codec.encode(box).tolist(),
            "render_truth": obj.get("render_truth"),
        })
    return {**record, "box_codec": codec.name, "objects": objects}


def transform_file(codec: str, records: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], tuple[int, int]]:
    """One records file: its transformed records, and (frames, boxes)."""
    transformed = [transform_record(r, codec) for r in records]
    return transformed, (len(transformed), sum(len(r["objects"]) for r in transformed))
