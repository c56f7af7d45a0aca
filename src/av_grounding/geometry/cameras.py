"""Camera models. Points are in the camera's RDF (OpenCV) frame."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class PinholeCamera:
    """``u = fx*x/z + cx, v = fy*y/z + cy``; stored in RDS-HQ as ``[fx, fy, cx, cy, w, h]``."""

    fx: float
    fy: float
    cx: float
    cy: float
    width: int
    height: int

    @classmethod
    def from_array(cls, values: np.ndarray) -> "PinholeCamera":
        fx, fy, cx, cy, w, h = (float(v) for v in np.asarray(values)[:6])
        return cls(fx, fy, cx, cy, int(round(w)), int(round(h)))

    def to_array(self) -> np.ndarray:
        return np.array([self.fx, self.fy, self.cx, self.cy, self.width, self.height], dtype=np.float64)

    def resized(self, width: int, height: int) -> "PinholeCamera":
        """The same camera for an image scaled to ``width`` x ``height`` (pixel-corner convention)."""
        sx, sy = width / self.width, height / self.height
        return PinholeCamera(self.fx * sx, self.fy * sy, self.cx * sx, self.cy * sy, width, height)

    def project(self, points: np.ndarray) -> np.ndarray:
        """Pixels of (..., 3) points; only meaningful where z > 0."""
        z = points[..., 2]
        return np.stack([self.fx * points[..., 0] / z + self.cx,
                         self.fy * points[..., 1] / z + self.cy], axis=-1)

    def rays(self) -> np.ndarray:
        """(h, w, 3) ray directions with z = 1 through every pixel centre."""
        u = np.arange(self.width) + 0.5
        v = np.arange(self.height) + 0.5
        uu, vv = np.meshgrid(u, v)
        return np.stack([(uu - self.cx) / self.fx, (vv - self.cy) / self.fy, np.ones_like(uu)], axis=-1)
