"""Drawing boxes into a z-buffer, in camera RDF coordinates, sampled at pixel centres.

Pinhole cameras: a rasteriser for convex polygons, clipped at the near plane before projection,
with depth interpolated perspective-correctly (1/z is linear in screen space). Any central camera
(f-theta): ray casting, one ray per pixel against the box, cut at the same near plane.
"""

from __future__ import annotations

import numpy as np

from ..geometry.boxes import Box3D, box_face_at, ray_box_entry
from ..geometry.cameras import PinholeCamera


def clip_near(polygon: np.ndarray, near: float) -> np.ndarray:
    """Sutherland-Hodgman clip of a (n, 3) polygon against z >= near."""
    out = []
    count = len(polygon)
    for i in range(count):
        a, b = polygon[i], polygon[(i + 1) % count]
        a_in, b_in = a[2] >= near, b[2] >= near
        if a_in:
            out.append(a)
        if a_in != b_in:
            s = (near - a[2]) / (b[2] - a[2])
            out.append(a + s * (b - a))
    return np.array(out).reshape(-1, 3)


def rasterize_polygon(polygon: np.ndarray, camera: PinholeCamera, depth: np.ndarray,
                      origin: tuple[int, int], near: float = 0.1) -> np.ndarray | None:
    """Rasterise a convex polygon (camera coordinates) into ``depth`` (a patch of the image whose
    top-left pixel is ``origin``), keeping the nearest depth. Returns the mask of pixels it won."""
    clipped = clip_near(polygon, near)
    if len(clipped) < 3:
        return None
    pixels = camera.project(clipped)
    inverse_z = 1.0 / clipped[:, 2]
    oy, ox = origin
    height, width = depth.shape
    won = np.zeros(depth.shape, dtype=bool)
    for k in range(1, len(clipped) - 1):
        tri = pixels[[0, k, k + 1]]
        iz = inverse_z[[0, k, k + 1]]
        area = (tri[1, 0] - tri[0, 0]) * (tri[2, 1] - tri[0, 1]) - (tri[2, 0] - tri[0, 0]) * (tri[1, 1] - tri[0, 1])
        if abs(area) < 1e-12:
            continue
        x0 = max(int(np.floor(tri[:, 0].min() - 0.5)), ox)
        x1 = min(int(np.ceil(tri[:, 0].max() + 0.5)), ox + width)
        y0 = max(int(np.floor(tri[:, 1].min() - 0.5)), oy)
        y1 = min(int(np.ceil(tri[:, 1].max() + 0.5)), oy + height)
        if x0 >= x1 or y0 >= y1:
            continue
        px, py = np.meshgrid(np.arange(x0, x1) + 0.5, np.arange(y0, y1) + 0.5)
        # Barycentric weights from edge functions, normalised by the signed area.
        w0 = ((tri[1, 0] - px) * (tri[2, 1] - py) - (tri[2, 0] - px) * (tri[1, 1] - py)) / area
        w1 = ((tri[2, 0] - px) * (tri[0, 1] - py) - (tri[0, 0] - px) * (tri[2, 1] - py)) / area
        w2 = 1.0 - w0 - w1
        inside = (w0 >= 0) & (w1 >= 0) & (w2 >= 0)
        if not inside.any():
            continue
        z = 1.0 / (w0 * iz[0] + w1 * iz[1] + w2 * iz[2])
        region = depth[y0 - oy: y1 - oy, x0 - ox: x1 - ox]
        closer = inside & (z < region)
        region[closer] = z[closer]
        won[y0 - oy: y1 - oy, x0 - ox: x1 - ox] |= closer
    return won


def raycast_box(box: Box3D, rays: np.ndarray, near: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """Where (h, w, 3) rays first meet ``box`` (camera RDF), cut at the plane ``z = near``: the
    distance along each ray in units of its length (``inf``: missed) and the index into
    ``FACES`` of the face met (-1: missed), both (h, w)."""
    flat = rays.reshape(-1, 3)
    distance = ray_box_entry(flat, box, near / np.maximum(flat[:, 2], 1e-9))
    hit = np.isfinite(distance)
    face = np.full(distance.shape, -1, dtype=np.int8)
    face[hit] = box_face_at(flat[hit] * distance[hit, None], box)
    return distance.reshape(rays.shape[:2]), face.reshape(rays.shape[:2])
