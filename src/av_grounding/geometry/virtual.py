"""A virtual camera of one reference focal length, so that a box's depth means the same apparent
size whichever lens took the image (docs/conventions.md#virtual-camera).

Omni3D / Cube R-CNN (Brazil et al., CVPR 2023, section 3.2) train monocular depth in a virtual
camera: depth is scaled by ``f_virtual / f``, with focal lengths measured relative to the image
height, so an object of a given size in image heights has one virtual depth for every lens and
every image resolution. Here the whole centre is scaled (``x, y, z`` alike), which keeps its ray
and so its pixel under any central camera model; sizes and angles stay metric and unchanged. The
inverse divides by the same factor: ``from_virtual(to_virtual(v, s), s) == v`` to rounding. A
dataset record or prediction file whose answer is in a virtual camera says so under
``VIRTUAL_CAMERA`` (``virtual_record``); ``boxes_to_virtual`` / ``boxes_from_virtual`` move the
answer boxes (dicts with ``bbox_3d``) of such a file.

The focal length of a lens is taken at its principal point: pinhole ``sqrt(fx * fy)``; f-theta
``dr/dtheta`` at ``theta = 0`` (pixels per radian: the pinhole's ``f`` to first order, since
``f tan(theta) ~ f theta``) times ``sqrt(det)`` of its affine (its geometric-mean scale, as the
pinhole's ``sqrt(fx * fy)``).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .cameras import Camera, FThetaCamera, PinholeCamera

VIRTUAL_CAMERA = "virtual_camera"  # a record's or prediction file's key: {"focal_per_height", "scale"}


def focal_length_px(camera: Camera) -> float:
    """The lens's focal length at the principal point in pixels (module docstring); ``ValueError``
    for a camera model without one or a focal length that is not a positive finite number."""
    if isinstance(camera, PinholeCamera):
        focal = math.sqrt(camera.fx * camera.fy) if camera.fx * camera.fy > 0 else math.nan
    elif isinstance(camera, FThetaCamera):
        if camera.stored_backward:  # theta(r) = b1 r + ...: dr/dtheta = 1 / b1 (no focal length where b1 <= 0)
            slope = 1.0 / camera.backward[1] if camera.backward[1] > 0 else math.nan
        else:
            slope = camera.forward[1]
        c, d, e = camera.affine
        focal = slope * math.sqrt(abs(c - d * e))
    else:
        raise ValueError(f"no focal length for a {type(camera).__name__}")
    if not (math.isfinite(focal) and focal > 0):
        raise ValueError(f"the camera's focal length at its principal point is {focal} px, not a positive number")
    return focal


def virtual_scale(camera: Camera, focal_per_height: float) -> float:
    """``s = focal_per_height * height / f``: the factor that takes a centre from ``camera`` into
    the virtual camera whose focal length is ``focal_per_height`` image heights (dimensionless).
    The same for ``camera.resized(...)`` at any resolution of the same aspect ratio.
    ``ValueError`` for a non-positive ``focal_per_height`` or a camera without a focal length."""
    if not (math.isfinite(focal_per_height) and focal_per_height > 0):
        raise ValueError(f"virtual focal length {focal_per_height} image heights is not a positive number")
    return focal_per_height * camera.height / focal_length_px(camera)


def to_virtual(values: np.ndarray, scale: float) -> np.ndarray:
    """Nx9 boxes (any codec: the first three numbers are the centre in metres) with their centres
    multiplied by ``scale`` (``virtual_scale``); sizes and angles unchanged. A new array."""
    moved = np.array(values, dtype=np.float64).reshape(-1, 9)
    moved[:, :3] *= scale
    return moved


def from_virtual(values: np.ndarray, scale: float) -> np.ndarray:
    """The inverse of ``to_virtual``: Nx9 boxes with their centres divided by ``scale``. A new array."""
    moved = np.array(values, dtype=np.float64).reshape(-1, 9)
    moved[:, :3] /= scale
    return moved


def boxes_to_virtual(boxes: list[dict[str, Any]], scale: float) -> list[dict[str, Any]]:
    """Answer boxes (``bbox_3d`` of nine numbers, ``label``) with their centres in the virtual camera."""
    if not boxes:
        return []
    moved = to_virtual(np.array([b["bbox_3d"] for b in boxes], dtype=np.float64), scale)
    return [{**box, "bbox_3d": values.tolist()} for box, values in zip(boxes, moved)]


def boxes_from_virtual(boxes: list[dict[str, Any]], scale: float) -> list[dict[str, Any]]:
    """The inverse of ``boxes_to_virtual``: boxes read from an answer, back in the real camera."""
    if not boxes:
        return []
    moved = from_virtual(np.array([b["bbox_3d"] for b in boxes], dtype=np.float64), scale)
    return [{**box, "bbox_3d": values.tolist()} for box, values in zip(boxes, moved)]


def virtual_record(focal_per_height: float, scale: float) -> dict[str, float]:
    """What a record or prediction file says about its answer's camera (under ``VIRTUAL_CAMERA``)."""
    return {"focal_per_height": focal_per_height, "scale": scale}


def scale_of(block: Any, source: str) -> float:
    """The scale of a ``VIRTUAL_CAMERA`` block; ``ValueError`` naming ``source`` unless it is an
    object whose ``scale`` is a positive finite number."""
    scale = block.get("scale") if isinstance(block, dict) else None
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not (math.isfinite(scale) and scale > 0):
        raise ValueError(f"{source}: '{VIRTUAL_CAMERA}' must be an object with a positive 'scale' (the answer's "
                         f"centres are the real ones times it); found {block!r}")
    return float(scale)
