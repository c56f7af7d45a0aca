"""Rigid transforms and the FLU <-> RDF axis map (docs/conventions.md#flu-to-rdf)."""

from __future__ import annotations

import numpy as np

# Rows give RDF axes in FLU terms: x_rdf = -y_flu, y_rdf = -z_flu, z_rdf = x_flu.
FLU_TO_RDF = np.array([[0.0, -1.0, 0.0], [0.0, 0.0, -1.0], [1.0, 0.0, 0.0]])
RDF_TO_FLU = FLU_TO_RDF.T


def make_pose(rotation: np.ndarray, translation: np.ndarray) -> np.ndarray:
    """The (4, 4) rigid transform ``[[R, t], [0, 0, 0, 1]]`` of a (3, 3) rotation ``R`` and a (3,)
    translation ``t`` (metres): it maps points of the source frame into the target frame
    (``apply``), and its last column is the source frame's origin in the target frame. ``R`` is
    not checked to be orthonormal."""
    pose = np.eye(4)
    pose[:3, :3] = rotation
    pose[:3, 3] = translation
    return pose


def invert_pose(pose: np.ndarray) -> np.ndarray:
    """The (4, 4) inverse ``[[R.T, -R.T t], [0, 1]]`` of a rigid (4, 4) transform, without a
    general matrix inverse: exact only when the rotation block is orthonormal (not checked)."""
    rotation, translation = pose[:3, :3], pose[:3, 3]
    return make_pose(rotation.T, -rotation.T @ translation)


def apply(pose: np.ndarray, points: np.ndarray) -> np.ndarray:
    """(..., 3) points (metres) mapped by a (4, 4) pose: ``R p + t`` for each point ``p``."""
    return points @ pose[:3, :3].T + pose[:3, 3]


def wrap_angle(angle):
    """An angle (radians, scalar or array) brought into [-pi, pi); ``abs(wrap_angle(a - b))`` is
    the smallest rotation between two headings, in [0, pi]."""
    wrapped = (np.asarray(angle, dtype=np.float64) + np.pi) % (2 * np.pi) - np.pi
    return float(wrapped) if wrapped.ndim == 0 else wrapped


def rot_z(angle: float) -> np.ndarray:
    """(3, 3) right-handed rotation by ``angle`` radians about the z axis (x turns towards y)."""
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def rot_y(angle: float) -> np.ndarray:
    """(3, 3) right-handed rotation by ``angle`` radians about the y axis (z turns towards x)."""
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])


def rot_x(angle: float) -> np.ndarray:
    """(3, 3) right-handed rotation by ``angle`` radians about the x axis (y turns towards z)."""
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])
