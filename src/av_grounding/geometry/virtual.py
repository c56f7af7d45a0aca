"""A virtual camera of one reference focal length, so that a box's depth means the same apparent
size whichever lens took the image (docs/conventions.md#virtual-camera).

Omni3D / Cube R-CNN (Brazil et al., CVPR 2023, section 3.2) train monocular depth in a virtual
camera: depth is scaled by ``f_virtual / f``, with focal lengths measured relative to the image
height, so an object of a given size in image heights has one virtual depth for every lens and
every image resolution. Here the whole centre is scaled (``x, y, z`` alike), which keeps its ray
and so its pixel under any central camera model; sizes and angles stay metric and unchanged. The
inverse divides by the same factor. Or the centre is written as its pixel and its distance
times that factor (Omni3D's projected centre and virtual depth). ``AnswerCamera`` holds either
and moves boxes both ways; a dataset record or prediction file whose answer is written so says
which under ``VIRTUAL_CAMERA`` (``AnswerCamera.serialize``).

The focal length of a lens is taken at its principal point: pinhole ``sqrt(fx * fy)``; f-theta
``dr/dtheta`` at ``theta = 0`` (pixels per radian: the pinhole's ``f`` to first order, since
``f tan(theta) ~ f theta``) times ``sqrt(det)`` of its affine (its geometric-mean scale, as the
pinhole's ``sqrt(fx * fy)``).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from .cameras import Camera, FThetaCamera, PinholeCamera, camera_from_record

# A record's or prediction file's key: {"focal_per_height", "scale"} and, for pixel centres,
# {"centre": "pixel", "camera_model", "intrinsics"} (AnswerCamera.serialize)
VIRTUAL_CAMERA = "virtual_camera"


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


PIXEL = "pixel"  # an ``AnswerCamera`` block's ``centre`` when the centre is (u, v, virtual distance)


@dataclass(frozen=True)
class AnswerCamera:
    """The camera an answer's box centres are written in, and the way back to the real camera.

    ``scale`` (``virtual_scale``) takes a real centre into the virtual camera of
    ``focal_per_height``. Without ``camera`` the answer's first three numbers are that virtual
    centre, ``scale * (x, y, z)`` (``format.camera_input: virtual_camera``). With ``camera`` (the
    frame's ``camera_model`` and ``intrinsics``, as records store them) they are the centre's
    pixel ``(u, v)`` in the frame's image and its distance from the camera centre times ``scale``
    (``image_centre``: Omni3D / Cube R-CNN's projected centre and virtual depth, Brazil et al.,
    CVPR 2023, section 3.2, with the distance along the ray in place of z so that every ray of a
    wide f-theta lens has one). The distance is negative for a centre on the far side of the ray
    ``camera.unproject`` gives for its pixel: a pinhole's centre behind the camera (a long vehicle
    beside it whose front is in view). Sizes and angles stay metric either way.

    ``to_real(to_answer(v))`` gives ``v`` back: exactly, up to rounding, for the virtual centre;
    for the pixel to within the lens's unprojection (f-theta inverts its polynomial numerically;
    ``tests/test_virtual_camera.py`` bounds both).
    """

    focal_per_height: float | None
    scale: float
    camera_model: str | None = None
    intrinsics: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        if _positive(self.scale) is None:
            raise ValueError(f"an answer camera's scale must be a positive number, got {self.scale!r}")
        if (self.camera_model is None) != (self.intrinsics is None):
            raise ValueError("an answer camera with pixel centres needs both camera_model and intrinsics")

    @functools.cached_property
    def camera(self) -> Camera | None:
        """The lens whose pixels the centres are given in, or None for virtual centres."""
        if self.camera_model is None or self.intrinsics is None:
            return None
        return camera_from_record(self.camera_model, list(self.intrinsics))

    def to_answer(self, values: np.ndarray) -> np.ndarray:
        """Nx9 boxes (any codec: the first three numbers are the centre in camera RDF metres) as
        the answer writes them. A new float64 array."""
        moved = np.array(values, dtype=np.float64).reshape(-1, 9)
        camera = self.camera
        if camera is None:
            moved[:, :3] *= self.scale
        elif len(moved):
            centres = moved[:, :3].copy()
            pixels = camera.project(centres)
            side = np.sign(np.einsum("ij,ij->i", camera.unproject(pixels), centres))
            moved[:, :2] = pixels
            moved[:, 2] = np.where(side < 0, -1.0, 1.0) * np.linalg.norm(centres, axis=-1) * self.scale
        return moved

    def to_real(self, values: np.ndarray) -> np.ndarray:
        """The inverse of ``to_answer``: Nx9 boxes as an answer wrote them, centres back in the
        real camera's metres. A new float64 array (non-finite where an answer's numbers are)."""
        moved = np.array(values, dtype=np.float64).reshape(-1, 9)
        camera = self.camera
        if camera is None:
            moved[:, :3] /= self.scale
        elif len(moved):
            rays = camera.unproject(moved[:, :2])  # unit rays
            moved[:, :3] = rays * (moved[:, 2:3] / self.scale)
        return moved

    def boxes_to_answer(self, boxes: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Boxes (``bbox_3d`` of nine numbers, ``label``, ...) with their centres as the answer writes them."""
        return _moved(boxes, self.to_answer)

    def boxes_to_real(self, boxes: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The inverse of ``boxes_to_answer``: boxes read from an answer, back in the real camera."""
        return _moved(boxes, self.to_real)

    def serialize(self) -> dict[str, Any]:
        """What a record or prediction file says about its answer's camera (under ``VIRTUAL_CAMERA``)."""
        block: dict[str, Any] = {"focal_per_height": self.focal_per_height, "scale": self.scale}
        if self.focal_per_height is None:
            del block["focal_per_height"]
        if self.camera_model is not None and self.intrinsics is not None:
            block.update(centre=PIXEL, camera_model=self.camera_model, intrinsics=list(self.intrinsics))
        return block

    @classmethod
    def deserialize(cls, block: Any, source: str) -> AnswerCamera:
        """The answer camera a ``VIRTUAL_CAMERA`` block describes (``serialize``); ``ValueError``
        naming ``source`` unless it is an object whose ``scale`` is a positive finite number and,
        when ``centre`` says ``pixel``, whose ``camera_model`` and ``intrinsics`` (finite numbers)
        ``camera_from_record`` reads into a camera of positive size and focal length."""
        scale = _positive(block.get("scale")) if isinstance(block, dict) else None
        if scale is None:
            raise ValueError(f"{source}: '{VIRTUAL_CAMERA}' must be an object with a positive 'scale' (the answer's "
                             f"centres are the real ones times it); found {block!r:.300}")
        assert isinstance(block, dict)
        focal = _positive(block.get("focal_per_height"))  # informative only: the scale already holds it
        centre = block.get("centre", "xyz")
        if centre == "xyz":
            return cls(focal, scale)
        if centre != PIXEL:
            raise ValueError(f"{source}: '{VIRTUAL_CAMERA}' centre must be 'xyz' or {PIXEL!r}, found {centre!r}")
        model, intrinsics = block.get("camera_model"), block.get("intrinsics")
        try:
            if not isinstance(model, str) or not isinstance(intrinsics, list):
                raise ValueError("needs a 'camera_model' string and an 'intrinsics' list")
            if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                       for v in intrinsics):
                raise ValueError(f"intrinsics must be finite numbers, found {intrinsics!r:.200}")
            camera = camera_from_record(model, intrinsics)
            if camera.width <= 0 or camera.height <= 0:
                raise ValueError(f"image size {camera.width}x{camera.height} is not positive")
            focal_length_px(camera)  # ValueError unless positive
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{source}: '{VIRTUAL_CAMERA}' with pixel centres: {exc}") from None
        return cls(focal, scale, model, tuple(float(v) for v in intrinsics))


def _positive(value: Any) -> float | None:
    """``value`` as a float if it is a positive finite number (not a bool), else None."""
    ok = not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value) and value > 0
    return float(value) if ok else None


def _moved(boxes: list[dict[str, Any]], move) -> list[dict[str, Any]]:
    if not boxes:
        return []
    moved = move(np.array([b["bbox_3d"] for b in boxes], dtype=np.float64))
    return [{**box, "bbox_3d": values.tolist()} for box, values in zip(boxes, moved)]
