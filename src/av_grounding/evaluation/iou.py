"""Overlaps: axis-aligned 2D rectangles, exact oriented 3D boxes, the recipe's aligned 3D boxes."""

from __future__ import annotations

import itertools

import numpy as np
from scipy.spatial import ConvexHull, QhullError

from ..geometry.boxes import EDGES, Box3D



def iou_2d(a: np.ndarray, b: np.ndarray) -> float:
    """``[x0, y0, x1, y1]`` rectangles (COCO's convention: area = width * height)."""
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    if w <= 0 or h <= 0:
        return 0.0
    inter = w * h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


def _inside(points: np.ndarray, box: Box3D, tol: float = 1e-9) -> np.ndarray:
    local = (points - box.center) @ box.rotation
    return (np.abs(local) <= box.lwh / 2 + tol).all(axis=1)


def _edge_face_hits(edges_of: Box3D, faces_of: Box3D) -> list[np.ndarray]:
    """Points where the edges of one box cross the faces of the other."""
    corners = edges_of.corners()
    a, b = corners[EDGES[:, 0]], corners[EDGES[:, 1]]
    la, lb = (a - faces_of.center) @ faces_of.rotation, (b - faces_of.center) @ faces_of.rotation
    half = faces_of.lwh / 2
    hits = []
    for axis, sign in itertools.product(range(3), (-1.0, 1.0)):
        da, db = la[:, axis] - sign * half[axis], lb[:, axis] - sign * half[axis]
        crossing = (da * db < 0) | (da == 0) | (db == 0)
        with np.errstate(divide="ignore", invalid="ignore"):
            t = np.where(da != db, da / (da - db), 0.0)
        points = a + t[:, None] * (b - a)
        hits.extend(points[crossing & (t >= 0) & (t <= 1)])
    return hits


def intersection_volume(a: Box3D, b: Box3D) -> float:
    """Exact volume of the intersection of two oriented boxes: the intersection is a convex
    polytope whose vertices are corners of one box inside the other or edge-face crossings."""
    ca, cb = a.corners(), b.corners()
    candidates = [ca[_inside(ca, b)], cb[_inside(cb, a)]]
    hits = _edge_face_hits(a, b) + _edge_face_hits(b, a)
    if hits:
        candidates.append(np.array(hits))
    points = np.concatenate([c for c in candidates if len(c)]) if any(len(c) for c in candidates) else np.empty((0, 3))
    if len(points):
        points = points[_inside(points, a, 1e-7) & _inside(points, b, 1e-7)]
    if len(points) < 4:
        return 0.0
    try:
        return float(ConvexHull(points).volume)
    except QhullError:  # flat (touching faces): no volume
        return 0.0


def iou_3d(a: Box3D, b: Box3D) -> float:
    inter = intersection_volume(a, b)
    union = float(np.prod(a.lwh) + np.prod(b.lwh)) - inter
    return inter / union if union > 0 else 0.0


def iou_aligned(a_values, b_values) -> float:
    """The recipe's 3D IoU: centres and sizes as extents along the camera axes, rotation ignored."""
    a, b = np.asarray(a_values, float), np.asarray(b_values, float)
    lo = np.maximum(a[:3] - np.abs(a[3:6]) / 2, b[:3] - np.abs(b[3:6]) / 2)
    hi = np.minimum(a[:3] + np.abs(a[3:6]) / 2, b[:3] + np.abs(b[3:6]) / 2)
    inter = float(np.prod(np.clip(hi - lo, 0, None)))
    union = float(np.prod(np.abs(a[3:6])) + np.prod(np.abs(b[3:6]))) - inter
    return inter / union if union > 0 else 0.0
