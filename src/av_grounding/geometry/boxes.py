"""3D boxes: the one corner order used everywhere (docs/conventions.md#corner-order).

Corners in the object frame are ``(+-l/2, +-w/2, +-h/2)`` ordered top face first:
0: +l+w+h, 1: +l-w+h, 2: -l-w+h, 3: -l+w+h, then 4..7 the same at -h. The heading face is 0, 1, 5, 4.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .cameras import NEAR_M, Camera
from .transforms import apply

CORNER_SIGNS = np.array([
    [1, 1, 1], [1, -1, 1], [-1, -1, 1], [-1, 1, 1],
    [1, 1, -1], [1, -1, -1], [-1, -1, -1], [-1, 1, -1],
], dtype=np.float64)
# The six faces as corner-index quads, each counter-clockwise seen from outside the box.
FACES = np.array([
    [0, 3, 2, 1],  # top (+z)
    [4, 5, 6, 7],  # bottom (-z)
    [0, 1, 5, 4],  # front (+x), the heading face
    [2, 3, 7, 6],  # back (-x)
    [0, 4, 7, 3],  # left (+y)
    [1, 2, 6, 5],  # right (-y)
])
EDGES = np.array([[0, 1], [1, 2], [2, 3], [3, 0], [4, 5], [5, 6], [6, 7], [7, 4],
                  [0, 4], [1, 5], [2, 6], [3, 7]])


def body_corners(lwh: np.ndarray) -> np.ndarray:
    """(8, 3) corners, in the module's corner order, of a box of size ``lwh`` = (length, width,
    height) in metres, centred at the origin of its own FLU body frame."""
    return CORNER_SIGNS * (np.asarray(lwh, dtype=np.float64) / 2.0)


def corners(object_to_frame: np.ndarray, lwh: np.ndarray) -> np.ndarray:
    """(8, 3) corners (metres, the module's corner order) of a box of size ``lwh`` (length, width,
    height) placed by the (4, 4) pose ``object_to_frame``, in that frame's coordinates."""
    return apply(object_to_frame, body_corners(lwh))


@dataclass(frozen=True)
class Box3D:
    """A physical box in camera RDF: centre, rotation (object FLU body -> camera RDF), size."""

    center: np.ndarray
    rotation: np.ndarray
    lwh: np.ndarray

    @classmethod
    def from_pose(cls, object_to_camera: np.ndarray, lwh) -> Box3D:
        """The box at the (4, 4) pose ``object_to_camera`` (centre: its translation in metres;
        rotation: its (3, 3) block) with size ``lwh`` (length, width, height in metres)."""
        return cls(object_to_camera[:3, 3].copy(), object_to_camera[:3, :3].copy(), np.asarray(lwh, float))

    def corners(self) -> np.ndarray:
        """(8, 3) corners in camera RDF (metres), in the module's corner order."""
        return self.center + body_corners(self.lwh) @ self.rotation.T


# The reflection x -> -x of camera RDF (an image flipped left to right), and of the FLU body frame
# y -> -y (left to right): a box mirrored keeps a proper rotation from the two together.
MIRROR_RDF = np.diag([-1.0, 1.0, 1.0])
MIRROR_BODY = np.diag([1.0, -1.0, 1.0])


def mirrored_box(box: Box3D) -> Box3D:
    """``box`` reflected through the camera's y-z plane (``x -> -x``, what flipping the image left
    to right does to the scene, ``Camera.mirrored``): centre ``(-x, y, z)``, rotation
    ``MIRROR_RDF @ R @ MIRROR_BODY`` (a proper rotation again: the heading is mirrored, the body's
    left becomes its right), size unchanged. Its corners are the reflected corners, each corner
    traded with its left-right partner (0 <-> 1, 2 <-> 3, 4 <-> 5, 6 <-> 7): the order stays the
    module's. Mirroring twice gives ``box`` back."""
    return Box3D(MIRROR_RDF @ box.center, MIRROR_RDF @ box.rotation @ MIRROR_BODY, np.array(box.lwh, dtype=np.float64))


def ray_box_entry(rays: np.ndarray, box: Box3D, min_distance: float | np.ndarray = 0.0) -> np.ndarray:
    """Distance along each of the (n, 3) rays from the camera centre to where it enters ``box``,
    at least ``min_distance`` (a scalar or one per ray: the camera inside the box, or a ray cut by
    the near plane, meets it at that distance); ``inf`` where it misses. Returns (n,) distances in
    units of each ray's length (metres for unit rays; depth for ``PinholeCamera.rays``), from a
    slab test in the box frame."""
    local = rays @ box.rotation  # ray directions in the box frame
    start = -box.rotation.T @ box.center  # camera centre in the box frame
    half = box.lwh / 2.0
    with np.errstate(divide="ignore", invalid="ignore"):
        t1 = (-half - start) / local
        t2 = (half - start) / local
    t1 = np.where(np.isnan(t1), -np.inf, t1)
    t2 = np.where(np.isnan(t2), np.inf, t2)
    near = np.maximum(np.minimum(t1, t2).max(axis=1), min_distance)
    far = np.maximum(t1, t2).min(axis=1)
    return np.where(far >= near, near, np.inf)


def box_face_at(points: np.ndarray, box: Box3D) -> np.ndarray:
    """(n,) indices into ``FACES``: the face nearest to each of the (n, 3) points (camera RDF,
    metres) on ``box``'s surface."""
    local = (points - box.center) @ box.rotation / (box.lwh / 2.0)
    axis = np.abs(local).argmax(axis=1)
    positive = np.take_along_axis(local, axis[:, None], axis=1)[:, 0] > 0
    # FACES order: top (+z), bottom (-z), front (+x), back (-x), left (+y), right (-y).
    return np.array([[3, 2], [5, 4], [1, 0]])[axis, positive.astype(int)]


def edge_segments(camera_model: str) -> int:
    """Pieces per edge so that projected edges follow the model's curvature: 1 for ``pinhole``
    (straight), 16 for any other model (f-theta edges bend)."""
    return 1 if camera_model == "pinhole" else 16


def clipped_edges(box_corners: np.ndarray, segments: int = 1) -> list[np.ndarray]:
    """The 12 edges of (8, 3) ``box_corners`` (camera RDF, metres) as (2, 3) segments, each edge
    split into ``segments`` pieces (f-theta edges bend in the image) and cut at the near plane
    z = NEAR_M; pieces wholly behind it are left out, so the list has up to ``12 * segments``."""
    steps = np.linspace(0.0, 1.0, segments + 1)
    polylines = []
    for a, b in EDGES:
        points = box_corners[a] + steps[:, None] * (box_corners[b] - box_corners[a])
        for start in range(segments):
            piece = _clip_segment(points[start], points[start + 1])
            if piece is not None:
                polylines.append(piece)
    return polylines


def _clip_segment(a: np.ndarray, b: np.ndarray) -> np.ndarray | None:
    """The part of segment a-b in front of the near plane (z >= NEAR_M)."""
    za, zb = a[2] - NEAR_M, b[2] - NEAR_M
    if za < 0 and zb < 0:
        return None
    if za < 0:
        a = a + (za / (za - zb)) * (b - a)
    elif zb < 0:
        b = a + (za / (za - zb)) * (b - a)
    return np.stack([a, b])


def project_edges(box_corners: np.ndarray, camera: Camera, segments: int = 1) -> list[np.ndarray]:
    """The pieces of ``clipped_edges`` in front of the near plane, projected: (2, 2) pixel
    segments (u, v), not clipped to the image; empty when the box lies wholly behind the plane."""
    pieces = clipped_edges(box_corners, segments)
    return list(camera.project(np.stack(pieces))) if pieces else []


def projected_rectangle(box_corners: np.ndarray, camera: Camera, segments: int = 1) -> np.ndarray | None:
    """(4,) axis-aligned ``[x0, y0, x1, y1]`` (pixels, x0 <= x1, y0 <= y1) around the projection
    of the (8, 3) ``box_corners`` (camera RDF, metres), not clipped to the image; ``None`` when
    the box lies wholly behind the near plane."""
    edges = project_edges(box_corners, camera, segments)
    if not edges:
        return None
    points = np.concatenate(edges)
    return np.array([points[:, 0].min(), points[:, 1].min(), points[:, 0].max(), points[:, 1].max()])


def clip_rectangle(rect: np.ndarray, width: int, height: int) -> np.ndarray:
    """(4,) ``rect`` = ``[x0, y0, x1, y1]`` (pixels) clipped to the image ``[0, width] x [0,
    height]``: x0 and x1 to [0, width], y0 and y1 to [0, height]. A rectangle wholly outside the
    image comes out with zero width or height (``rectangle_area`` 0); the order is kept, not fixed."""
    return np.array([np.clip(rect[0], 0, width), np.clip(rect[1], 0, height),
                     np.clip(rect[2], 0, width), np.clip(rect[3], 0, height)])


def rectangle_area(rect: np.ndarray) -> float:
    """Area in square pixels of an ``[x0, y0, x1, y1]`` rectangle; 0 when x1 <= x0 or y1 <= y0."""
    return float(max(rect[2] - rect[0], 0.0) * max(rect[3] - rect[1], 0.0))
