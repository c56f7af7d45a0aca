"""Overlaps as pairwise matrices: axis-aligned 2D rectangles and exact oriented 3D boxes."""

from __future__ import annotations

import itertools

import numpy as np
from scipy.spatial import ConvexHull, QhullError

from ..geometry.boxes import EDGES, Box3D


def iou_2d_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of a Nx4 and a Mx4 matrix of ``[x0, y0, x1, y1]`` rectangles (pixels): an NxM
    matrix. COCO's convention: area = width * height, no +1; an empty union gives 0."""
    a, b = np.asarray(a, float).reshape(-1, 4), np.asarray(b, float).reshape(-1, 4)
    width = np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0])
    height = np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1])
    inter = np.clip(width, 0, None) * np.clip(height, 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a[:, None] + area_b[None, :] - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


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
    """Exact IoU of two oriented boxes (volumes in cubic metres); 0 when the union is empty."""
    inter = intersection_volume(a, b)
    union = float(np.prod(a.lwh) + np.prod(b.lwh)) - inter
    return inter / union if union > 0 else 0.0


def iou_3d_matrix(a: list[Box3D], b: list[Box3D]) -> np.ndarray:
    """Pairwise exact IoU of N and M oriented boxes: an NxM matrix. Pairs whose bounding spheres
    do not meet are 0 without computing the polytope."""
    out = np.zeros((len(a), len(b)))
    for i, box_a in enumerate(a):
        for j, box_b in enumerate(b):
            reach = (np.linalg.norm(box_a.lwh) + np.linalg.norm(box_b.lwh)) / 2
            if np.linalg.norm(box_a.center - box_b.center) <= reach:
                out[i, j] = iou_3d(box_a, box_b)
    return out
