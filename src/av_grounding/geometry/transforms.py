"""Rigid transforms and the FLU <-> RDF axis map (docs/conventions.md#flu-to-rdf)."""

from __future__ import annotations

import numpy as np

# Rows give RDF axes in FLU terms: x_rdf = -y_flu, y_rdf = -z_flu, z_rdf = x_flu.
FLU_TO_RDF = np.array([[0.0, -1.0, 0.0], [0.0, 0.0, -1.0], [1.0, 0.0, 0.0]])
RDF_TO_FLU = FLU_TO_RDF.T


def make_pose(rotation: np.ndarray, translation: np.ndarray) -> np.ndarray:
    pose = np.eye(4)
    pose[:3, :3] = rotation
    pose[:3, 3] = translation
    return pose


def invert_pose(pose: np.ndarray) -> np.ndarray:
    """Inverse of a rigid 4x4 transform without a general matrix inverse."""
    rotation, translation = pose[:3, :3], pose[:3, 3]
    return make_pose(rotation.T, -rotation.T @ translation)


def apply(pose: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Transform (..., 3) points by a 4x4 pose."""
    return points @ pose[:3, :3].T + pose[:3, 3]


def wrap_angle(angle):
    """An angle (radians, scalar or array) brought into [-pi, pi); ``abs(wrap_angle(a - b))`` is
    the smallest rotation between two headings, in [0, pi]."""
    wrapped = (np.asarray(angle, dtype=np.float64) + np.pi) % (2 * np.pi) - np.pi
    return float(wrapped) if wrapped.ndim == 0 else wrapped


def rot_z(angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def rot_y(angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])


def rot_x(angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])
