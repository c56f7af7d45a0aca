"""Checks of label values: where they enter the pipeline (extract reads RDS-HQ tars) and again
in `validate`.

Each check returns ``None`` when the value is sound, else a ``Problem``: a fixed reason (what
stages count by) and a detail (the values that show it). The layouts checked are those of the
RDS-HQ tars: 4x4 rigid transforms, sizes as (length, width, height) in metres, pinhole
intrinsics ``[fx, fy, cx, cy, w, h]``, f-theta intrinsics ``[cx, cy, w, h, p0..p5, is_bw_poly]``
with an optional affine ``c, d, e`` (11 or 14 values).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

# Largest entry of |R^T R - I| and largest |det R - 1| a rotation may show. Poses stored as
# float32 carry errors near 1e-7; a scaled, sheared or mirrored matrix is off by far more.
ROTATION_TOLERANCE = 1e-3
INTRINSICS_LENGTHS = {"pinhole": (6,), "ftheta": (11, 14)}
IMAGE_SIZE_AT = {"pinhole": (4, 5), "ftheta": (2, 3)}  # where width and height sit in the array


@dataclass(frozen=True)
class Problem:
    """Why a value was refused: ``reason`` is one of a few fixed phrases, ``detail`` the values."""

    reason: str
    detail: str = ""

    def __str__(self) -> str:
        return f"{self.reason} ({self.detail})" if self.detail else self.reason


def _numbers(value: Any) -> np.ndarray | None:
    try:
        array = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        return None
    return array


def _non_finite(array: np.ndarray) -> Problem | None:
    if np.isfinite(array).all():
        return None
    return Problem("not finite", f"{int((~np.isfinite(array)).sum())} NaN or infinite value(s)")


def pose_problem(value: Any) -> Problem | None:
    """A 4x4 rigid transform: finite, last row ``0 0 0 1``, rotation orthonormal with
    determinant +1 (within ``ROTATION_TOLERANCE``)."""
    matrix = _numbers(value)
    if matrix is None or matrix.shape != (4, 4):
        return Problem("not a 4x4 matrix", f"shape {None if matrix is None else matrix.shape}")
    if (problem := _non_finite(matrix)) is not None:
        return problem
    if np.abs(matrix[3] - [0.0, 0.0, 0.0, 1.0]).max() > ROTATION_TOLERANCE:
        return Problem("not rigid", f"last row {matrix[3].tolist()}, expected [0, 0, 0, 1]")
    rotation = matrix[:3, :3]
    drift = float(np.abs(rotation.T @ rotation - np.eye(3)).max())
    if drift > ROTATION_TOLERANCE:
        return Problem("not rigid", f"rotation not orthonormal: |R^T R - I| up to {drift:.3g}")
    determinant = float(np.linalg.det(rotation))
    if abs(determinant - 1.0) > ROTATION_TOLERANCE:
        return Problem("not rigid", f"rotation determinant {determinant:.3g}, expected 1 (a reflection)")
    return None


def size_problem(value: Any) -> Problem | None:
    """Three finite, positive sizes (length, width, height in metres)."""
    sizes = _numbers(value)
    if sizes is None or sizes.shape != (3,):
        return Problem("not three numbers", repr(value))
    if (problem := _non_finite(sizes)) is not None:
        return problem
    if (sizes <= 0).any():
        return Problem("not positive", f"{sizes.tolist()}")
    return None


def intrinsics_problem(model: str, value: Any) -> Problem | None:
    """Intrinsics of camera ``model`` (pinhole or ftheta): the documented length, finite
    values, a positive image size (and positive focal lengths for pinhole)."""
    values = _numbers(value)
    lengths = INTRINSICS_LENGTHS[model]
    if values is None or values.ndim != 1 or len(values) not in lengths:
        shape = None if values is None else values.shape
        return Problem("wrong length",
                       f"shape {shape}; {model} intrinsics have {' or '.join(map(str, lengths))} values")
    if (problem := _non_finite(values)) is not None:
        return problem
    width, height = (values[i] for i in IMAGE_SIZE_AT[model])
    if width <= 0 or height <= 0:
        return Problem("not positive", f"image size {width} x {height}")
    if model == "pinhole" and (values[0] <= 0 or values[1] <= 0):
        return Problem("not positive", f"focal lengths fx={values[0]}, fy={values[1]}")
    return None


OBJECT_FIELDS = ("object_to_world", "object_lwh", "object_type")


def object_problem(info: Any) -> tuple[str, Problem] | None:
    """(field, problem) of the first unsound field of one ``all_object_info`` entry."""
    if not isinstance(info, dict):
        return "entry", Problem("not an object", type(info).__name__)
    missing = [key for key in OBJECT_FIELDS if key not in info]
    if missing:
        return "entry", Problem("missing fields", ", ".join(missing))
    if not isinstance(info["object_type"], str):
        return "object_type", Problem("not a string", repr(info["object_type"]))
    if (problem := pose_problem(info["object_to_world"])) is not None:
        return "object_to_world", problem
    if (problem := size_problem(info["object_lwh"])) is not None:
        return "object_lwh", problem
    return None
