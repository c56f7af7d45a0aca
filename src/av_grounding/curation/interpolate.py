"""Object labels between the 10 Hz label frames (docs/formats.md#pose-and-label-rates).

Translation and size are interpolated linearly, rotation by slerp; only tracks present in both
neighbouring label frames survive.
"""

from __future__ import annotations

import bisect
from typing import Any

import numpy as np
from scipy.spatial.transform import Rotation, Slerp


def _blend(a: dict[str, Any], b: dict[str, Any], alpha: float) -> dict[str, Any]:
    pose_a, pose_b = np.asarray(a["object_to_world"], float), np.asarray(b["object_to_world"], float)
    rotations = Rotation.from_matrix(np.stack([pose_a[:3, :3], pose_b[:3, :3]]))
    pose = np.eye(4)
    pose[:3, :3] = Slerp([0.0, 1.0], rotations)(alpha).as_matrix()
    pose[:3, 3] = (1 - alpha) * pose_a[:3, 3] + alpha * pose_b[:3, 3]
    lwh = (1 - alpha) * np.asarray(a["object_lwh"], float) + alpha * np.asarray(b["object_lwh"], float)
    return {**a, "object_to_world": pose.tolist(), "object_lwh": lwh.tolist()}


def objects_at(labels: dict[int, dict[str, dict[str, Any]]], frame: int) -> dict[str, dict[str, Any]] | None:
    """Objects at video frame ``frame``; ``None`` when the frame lies outside the labelled span."""
    if frame in labels:
        return labels[frame]
    frames = sorted(labels)
    position = bisect.bisect_left(frames, frame)
    if position == 0 or position == len(frames):
        return None
    before, after = frames[position - 1], frames[position]
    alpha = (frame - before) / (after - before)
    return {track: _blend(info, labels[after][track], alpha)
            for track, info in labels[before].items() if track in labels[after]}
