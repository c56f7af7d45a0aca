"""3D boxes: the one corner order used everywhere (SPEC section 2).

Corners in the object frame are ``(+-l/2, +-w/2, +-h/2)`` ordered top face first:
0: +l+w+h, 1: +l-w+h, 2: -l-w+h, 3: -l+w+h, then 4..7 the same at -h. The heading face is 0, 1, 5, 4.
"""

from __future__ import annotations

import numpy as np

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
    """(8, 3) corners of a box of size (l, w, h) centred at the origin of its own frame."""
    return CORNER_SIGNS * (np.asarray(lwh, dtype=np.float64) / 2.0)


def corners(object_to_frame: np.ndarray, lwh: np.ndarray) -> np.ndarray:
    """(8, 3) corners of a box placed by a 4x4 object pose in some frame."""
    return apply(object_to_frame, body_corners(lwh))
