"""Box conventions: what the nine numbers ``[x, y, z, x_size, y_size, z_size, roll, pitch, yaw]``
of an answer mean (docs/conventions.md#box-codecs). Each convention is one codec between those numbers and a
physical ``Box3D`` in camera RDF; ``decode(encode(box))`` gives back the same 8 corners.

- ``cosmos`` (the recipe's data): centre in metres; sizes = (length, width, height); angles in
  radians about the camera's RDF axes, ``R = Ry(pitch) @ Rx(roll) @ Rz(yaw)`` applied to the
  object's FLU body box mapped into RDF (so a level car has roll = yaw = 0, pitch = heading).
- ``qwen3vl`` (Qwen3-VL pretraining): centre in metres; sizes are extents along the box's local
  axes, which are the camera's x, y, z at zero rotation (a car: length, height, width); angles in
  units of pi, ``R = Rz(a8*pi) @ Ry(a7*pi) @ Rx(a6*pi)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np

from .boxes import Box3D, mirrored_box
from .transforms import FLU_TO_RDF, rot_x, rot_y, rot_z, wrap_angle


def _smallest_outer(a: float, b: float, c: float) -> tuple[float, float, float]:
    """Of the two Euler triples of one rotation, (a, b, c) and (a + pi, pi - b, c + pi), the one
    whose outer angles are smaller: an upright vehicle then has a single non-zero angle at any
    heading, which makes training targets consistent."""
    other = (wrap_angle(a + np.pi), wrap_angle(np.pi - b), wrap_angle(c + np.pi))
    return other if abs(other[0]) + abs(other[2]) < abs(a) + abs(c) - 1e-12 else (a, b, c)


def _zyx_angles(matrix: np.ndarray) -> tuple[float, float, float]:
    """(a, b, c) with ``matrix = Rz(a) @ Ry(b) @ Rx(c)``, accurate up to and at gimbal lock.

    The middle angle comes from atan2 (not asin), the first from the first column, and the last
    from what remains after undoing the first two, so any error in the first angle near the lock
    is absorbed by the last and the composed rotation stays exact to rounding.
    """
    b = np.arctan2(-matrix[2, 0], np.hypot(matrix[0, 0], matrix[1, 0]))
    a = np.arctan2(matrix[1, 0], matrix[0, 0])
    rest = rot_y(b).T @ rot_z(a).T @ matrix
    return _smallest_outer(float(a), float(b), float(np.arctan2(rest[2, 1], rest[1, 1])))


def _yxz_angles(matrix: np.ndarray) -> tuple[float, float, float]:
    """(a, b, c) with ``matrix = Ry(a) @ Rx(b) @ Rz(c)``, built like ``_zyx_angles``; an upright
    vehicle comes out as (heading, 0, 0) directly, since the middle angle is the bounded one."""
    b = np.arctan2(-matrix[1, 2], np.hypot(matrix[0, 2], matrix[2, 2]))
    a = np.arctan2(matrix[0, 2], matrix[2, 2])
    rest = rot_x(b).T @ rot_y(a).T @ matrix
    return float(a), float(b), float(np.arctan2(rest[1, 0], rest[0, 0]))


class BoxCodec(Protocol):
    """One convention for the nine numbers of a box (the module docstring describes both)."""

    name: str

    def encode(self, box: Box3D) -> np.ndarray:
        """(9,) float64 numbers of a physical box in camera RDF."""
        ...

    def decode(self, values) -> Box3D:
        """The physical box of nine numbers (a sequence or (9,) array)."""
        ...


class CosmosCodec:
    """The recipe's convention (``cosmos``): centre and (length, width, height) in metres, then
    roll, pitch, yaw in radians, ``R = Ry(pitch) @ Rx(roll) @ Rz(yaw)`` on the FLU body box."""

    name = "cosmos"

    def encode(self, box: Box3D) -> np.ndarray:
        """(9,) float64 ``[x, y, z, length, width, height, roll, pitch, yaw]`` of ``box``
        (metres, radians in [-pi, pi]); no -0.0."""
        pitch, roll, yaw = _yxz_angles(box.rotation @ FLU_TO_RDF.T)
        return np.array([*box.center, *box.lwh, roll, pitch, yaw], dtype=np.float64) + 0.0  # no -0.0

    def decode(self, values) -> Box3D:
        """The ``Box3D`` of nine numbers in this convention (metres, radians); values past the
        ninth are ignored, fewer raise ``IndexError``."""
        v = np.asarray(values, dtype=np.float64)
        rotation = rot_y(v[7]) @ rot_x(v[6]) @ rot_z(v[8]) @ FLU_TO_RDF
        return Box3D(v[:3].copy(), rotation, v[3:6].copy())


# Columns: the qwen3vl local axes in the object's FLU body frame (x: length, y: down, z: left).
_QWEN_LOCAL_TO_BODY = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, -1.0, 0.0]])


class Qwen3VLCodec:
    """Qwen3-VL's pretraining convention (``qwen3vl``): centre in metres, extents along the box's
    local axes (a car: length, height, width) in metres, then three angles in units of pi,
    ``R = Rz(a8*pi) @ Ry(a7*pi) @ Rx(a6*pi)``."""

    name = "qwen3vl"

    def encode(self, box: Box3D) -> np.ndarray:
        """(9,) float64 ``[x, y, z, length, height, width, a6, a7, a8]`` of ``box`` (metres;
        angles in units of pi, in [-1, 1]); no -0.0."""
        z, y, x = np.array(_zyx_angles(box.rotation @ _QWEN_LOCAL_TO_BODY)) / np.pi
        length, width, height = box.lwh
        return np.array([*box.center, length, height, width, x, y, z], dtype=np.float64) + 0.0  # no -0.0

    def decode(self, values) -> Box3D:
        """The ``Box3D`` of nine numbers in this convention (metres, angles in units of pi); values
        past the ninth are ignored, fewer raise ``IndexError``."""
        v = np.asarray(values, dtype=np.float64)
        local = rot_z(v[8] * np.pi) @ rot_y(v[7] * np.pi) @ rot_x(v[6] * np.pi)
        return Box3D(v[:3].copy(), local @ _QWEN_LOCAL_TO_BODY.T, np.array([v[3], v[5], v[4]]))


CODECS: dict[str, BoxCodec] = {"cosmos": CosmosCodec(), "qwen3vl": Qwen3VLCodec()}


def get_codec(name: str) -> BoxCodec:
    """The codec called ``name`` (``CODECS``); ``ValueError`` naming the choices for another."""
    try:
        return CODECS[name]
    except KeyError:
        raise ValueError(f"unknown box codec {name!r}; choose from {sorted(CODECS)}") from None


def mirrored_values(values: Sequence[float] | np.ndarray, codec: BoxCodec) -> np.ndarray:
    """(9,) float64: the nine numbers, in ``codec``'s convention, of the box ``values`` mirrored
    through the camera's y-z plane (``boxes.mirrored_box``: an image flipped left to right), its
    heading mirrored too. In the ``cosmos`` codec that is x, pitch and yaw negated, roll kept (up
    to the angles' wrap at +-pi); in ``qwen3vl`` the same sign changes give the same eight corners
    with the heading turned half round, so the numbers come from the physical box for every codec
    (``tests/test_views.py``)."""
    return codec.encode(mirrored_box(codec.decode(values)))
