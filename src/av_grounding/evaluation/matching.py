"""The one centre-distance matcher: per frame, a Hungarian assignment of predictions to ground
truth on ground-plane centre distance, label-agnostic, pairs farther than a limit forbidden."""

from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment

_FORBIDDEN = 1e12  # cost of a pair beyond the limit: any assignment avoids it if it can


def match_centres(pred_xy: np.ndarray, gt_xy: np.ndarray, max_distance: float) -> list[tuple[int, int, float]]:
    """(prediction, truth, distance) pairs of the assignment with the most pairs within
    ``max_distance`` and, among those, the least total distance. ``pred_xy`` a Px2 and ``gt_xy``
    a Gx2 matrix of ground-plane positions (metres); non-finite positions never match."""
    if not len(pred_xy) or not len(gt_xy):
        return []
    distance = np.linalg.norm(np.asarray(pred_xy, float)[:, None] - np.asarray(gt_xy, float)[None], axis=2)
    within = distance <= max_distance  # False for NaN and infinity
    rows, cols = linear_sum_assignment(np.where(within, distance, _FORBIDDEN))
    return [(int(r), int(c), float(distance[r, c])) for r, c in zip(rows, cols) if within[r, c]]
