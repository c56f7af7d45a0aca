"""Labels between 10 Hz label frames: linear translation and size, slerp rotation."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from av_grounding.curation.interpolate import objects_at
from av_grounding.geometry.transforms import make_pose, rot_z


def label(yaw: float, xyz, lwh, moving=True, kind="Car"):
    return {"object_to_world": make_pose(rot_z(yaw), np.array(xyz, float)).tolist(),
            "object_lwh": list(lwh), "object_is_moving": moving, "object_type": kind}


LABELS = {
    0: {"a": label(0.0, [0, 0, 0.8], [4, 2, 1.6]), "gone": label(0.0, [9, 9, 1], [1, 1, 1])},
    3: {"a": label(np.pi / 2, [3, 6, 0.8], [4.3, 2, 1.6]), "new": label(0.0, [5, 5, 1], [1, 1, 1])},
}


def test_label_frames_are_returned_unchanged():
    assert objects_at(LABELS, 0) == LABELS[0]
    assert objects_at(LABELS, 3) == LABELS[3]


@pytest.mark.parametrize("frame, alpha", [(1, 1 / 3), (2, 2 / 3)])
def test_between_label_frames(frame, alpha):
    objects = objects_at(LABELS, frame)
    assert set(objects) == {"a"}  # only tracks present in both neighbours
    pose = np.asarray(objects["a"]["object_to_world"])
    np.testing.assert_allclose(pose[:3, 3], [3 * alpha, 6 * alpha, 0.8], atol=1e-12)
    np.testing.assert_allclose(objects["a"]["object_lwh"], [4 + 0.3 * alpha, 2, 1.6], atol=1e-12)
    yaw = Rotation.from_matrix(pose[:3, :3]).as_euler("zyx")[0]
    assert yaw == pytest.approx(alpha * np.pi / 2, abs=1e-9)  # slerp: constant angular rate
    np.testing.assert_allclose(pose[:3, :3] @ pose[:3, :3].T, np.eye(3), atol=1e-12)
    assert objects["a"]["object_type"] == "Car"


def test_outside_the_labelled_span():
    assert objects_at(LABELS, 4) is None
    assert objects_at({3: {}}, 1) is None
