"""What tells the model which lens took the image (``format.camera_input``; docs/formats.md).

- ``none``: nothing; the model must infer the lens from the picture.
- ``prompt``: the intrinsics as a sentence after the user prompt, numbers written as the answers
  write theirs (Seed1.5-VL gives the intrinsics in the prompt; field-notes section 3).
- ``virtual_camera``: the answer's box centres in a virtual camera of ``format.virtual_focal``
  image heights (``geometry.virtual``; Omni3D's virtual depth); the record keeps the boxes in the
  real camera and says the scale, and every reader of an answer converts back before scoring.
- ``image_centre``: each centre as its pixel in the frame and its distance from the camera in
  that virtual camera (Omni3D's projected centre and virtual depth); the record's block also
  holds the frame's intrinsics, which turn the pixel back into a ray.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..geometry.cameras import FThetaCamera, PinholeCamera, camera_from_record
from ..geometry.virtual import AnswerCamera, focal_length_px, virtual_scale
from .answers import AnswerStyle, format_number


def horizontal_fov_deg(camera: FThetaCamera | PinholeCamera) -> float:
    """Degrees between the rays through the left and right image edges on the principal point's row."""
    rays = camera.unproject(np.array([[0.0, camera.cy], [float(camera.width), camera.cy]]))
    return float(np.degrees(np.arccos(np.clip(rays[:, 2], -1.0, 1.0)).sum()))


def camera_sentence(record: dict[str, Any], style: AnswerStyle) -> str:
    """The frame's intrinsics as one sentence, numbers in the answers' style (decimals, trimmed
    zeros): pinhole focal lengths and principal point; f-theta focal length at the principal
    point (pixels per radian) and horizontal field of view; the image size. ``ValueError`` for
    intrinsics ``camera_from_record`` refuses."""
    camera = camera_from_record(record["camera_model"], record["intrinsics"])

    def number(value: float) -> str:
        return format_number(value, style.decimals, style.trim_zeros)

    size = f"{camera.width}x{camera.height}"
    if isinstance(camera, FThetaCamera):
        return (f"The camera is an f-theta fisheye with a focal length of {number(focal_length_px(camera))} pixels per "
                f"radian at its principal point ({number(camera.cx)}, {number(camera.cy)}) and a horizontal field of "
                f"view of {number(horizontal_fov_deg(camera))} degrees; the image is {size} pixels.")
    assert isinstance(camera, PinholeCamera)
    return (f"The camera is a pinhole camera with focal lengths fx {number(camera.fx)} and fy {number(camera.fy)} "
            f"pixels and principal point ({number(camera.cx)}, {number(camera.cy)}); the image is {size} pixels.")


def user_prompt(user: str, record: dict[str, Any], kind: str, style: AnswerStyle) -> str:
    """The user prompt of a frame: ``user``, then with ``kind`` ``prompt`` the camera sentence on a
    line of its own."""
    return f"{user}\n{camera_sentence(record, style)}" if kind == "prompt" else user


def frame_scale(record: dict[str, Any], focal_per_height: float) -> float:
    """The frame's ``geometry.virtual.virtual_scale`` from its record's camera."""
    return virtual_scale(camera_from_record(record["camera_model"], record["intrinsics"]), focal_per_height)


def answer_camera(record: dict[str, Any], kind: str, focal_per_height: float) -> AnswerCamera | None:
    """The camera a frame's answer is written in for ``format.camera_input`` ``kind``: None (the
    real camera) for ``none`` and ``prompt``. The scale is rounded to 6 decimals, as the record
    stores it, so that the stored block inverts the answer exactly."""
    if kind not in ("virtual_camera", "image_centre"):
        return None
    scale = round(frame_scale(record, focal_per_height), 6)
    if kind == "virtual_camera":
        return AnswerCamera(focal_per_height, scale)
    return AnswerCamera(focal_per_height, scale, record["camera_model"], tuple(record["intrinsics"]))
