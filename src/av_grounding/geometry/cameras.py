"""Camera models (docs/conventions.md#camera-models). Points are in the camera's RDF (OpenCV) frame.

Both models share one interface: ``project`` (points -> pixels), ``unproject`` (pixels -> unit
rays), ``valid`` (which points the model can image), ``width`` / ``height``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

NEAR_M = 0.1  # points closer than this along the optical axis are not projected


class Camera(Protocol):
    width: int
    height: int

    def project(self, points: np.ndarray) -> np.ndarray: ...

    def unproject(self, pixels: np.ndarray) -> np.ndarray: ...

    def valid(self, points: np.ndarray) -> np.ndarray: ...


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
        """Pixels of (..., 3) points; only meaningful where ``valid``."""
        z = points[..., 2]
        return np.stack([self.fx * points[..., 0] / z + self.cx,
                         self.fy * points[..., 1] / z + self.cy], axis=-1)

    def unproject(self, pixels: np.ndarray) -> np.ndarray:
        rays = np.stack([(pixels[..., 0] - self.cx) / self.fx, (pixels[..., 1] - self.cy) / self.fy,
                         np.ones(pixels.shape[:-1])], axis=-1)
        return rays / np.linalg.norm(rays, axis=-1, keepdims=True)

    def valid(self, points: np.ndarray) -> np.ndarray:
        return points[..., 2] >= NEAR_M

    def rays(self) -> np.ndarray:
        """(h, w, 3) ray directions with z = 1 through every pixel centre."""
        u = np.arange(self.width) + 0.5
        v = np.arange(self.height) + 0.5
        uu, vv = np.meshgrid(u, v)
        return np.stack([(uu - self.cx) / self.fx, (vv - self.cy) / self.fy, np.ones_like(uu)], axis=-1)


def _poly(coefficients: np.ndarray, x: np.ndarray) -> np.ndarray:
    return np.polynomial.polynomial.polyval(x, coefficients)


def _fit_inverse(coefficients: np.ndarray, x_max: float, degree: int = 5) -> np.ndarray:
    """Least-squares inverse of ``y = poly(x)`` on [0, x_max]: ``x = sum_k a_k y^k``, k = 1..degree."""
    x = np.linspace(0.0, x_max, 2000)
    y = _poly(coefficients, x)
    design = np.stack([y**k for k in range(1, degree + 1)], axis=1)
    solution, *_ = np.linalg.lstsq(design, x, rcond=None)
    return np.concatenate([[0.0], solution])


def _newton_inverse(coefficients: np.ndarray, target: np.ndarray, start: np.ndarray,
                    iterations: int = 4) -> np.ndarray:
    """Refine ``x`` so that ``poly(x) = target``, starting from a fitted inverse's guess."""
    derivative = np.polynomial.polynomial.polyder(coefficients)
    x = start
    for _ in range(iterations):
        slope = _poly(derivative, x)
        x = x - (_poly(coefficients, x) - target) / np.where(np.abs(slope) > 1e-12, slope, 1e-12)
    return x


@dataclass(frozen=True)
class FThetaCamera:
    """Fisheye model: ``theta = angle to the optical axis``, ``r = fw(theta)`` pixels from the
    principal point along the point's azimuth, then the affine ``A = [[c, d], [e, 1]]``.

    RDS-HQ stores ``[cx, cy, w, h, p0..p5, is_bw_poly, (c, d, e)]``; a backward polynomial maps
    radius to angle. The missing direction is fitted (degree 5, no constant term) over the valid
    radius and refined by Newton steps, so ``project`` and ``unproject`` invert each other exactly.
    """

    cx: float
    cy: float
    width: int
    height: int
    forward: tuple[float, ...]  # r(theta)
    backward: tuple[float, ...]  # theta(r)
    affine: tuple[float, float, float] = (1.0, 0.0, 0.0)
    max_radius: float = 0.0
    stored_backward: bool = True

    @classmethod
    def from_array(cls, values: np.ndarray) -> "FThetaCamera":
        values = np.asarray(values, dtype=np.float64)
        if len(values) not in (11, 14):
            raise ValueError(f"f-theta intrinsics need 11 or 14 values, got {len(values)}")
        cx, cy, width, height = values[:4]
        poly, is_backward = values[4:10], bool(values[10])
        affine = tuple(values[11:14]) if len(values) == 14 else (1.0, 0.0, 0.0)
        corners = np.array([[0, 0], [width, 0], [0, height], [width, height]], dtype=float)
        max_radius = float(np.linalg.norm(corners - [cx, cy], axis=1).max())
        if is_backward:
            backward, forward = poly, _fit_inverse(poly, max_radius)
        else:
            theta_max = float(_newton_inverse(poly, np.array(max_radius), np.array(np.pi / 2)))
            forward, backward = poly, _fit_inverse(poly, theta_max)
        return cls(float(cx), float(cy), int(round(width)), int(round(height)), tuple(forward),
                   tuple(backward), tuple(float(a) for a in affine), max_radius, is_backward)

    @property
    def _matrix(self) -> np.ndarray:
        c, d, e = self.affine
        return np.array([[c, d], [e, 1.0]])

    def radius_of(self, theta: np.ndarray) -> np.ndarray:
        guess = _poly(np.array(self.forward), theta)
        if not self.stored_backward:
            return guess
        return _newton_inverse(np.array(self.backward), theta, guess)

    def theta_of(self, radius: np.ndarray) -> np.ndarray:
        guess = _poly(np.array(self.backward), radius)
        if self.stored_backward:
            return guess
        return _newton_inverse(np.array(self.forward), radius, guess)

    @property
    def max_theta(self) -> float:
        return float(self.theta_of(np.array(self.max_radius)))

    def project(self, points: np.ndarray) -> np.ndarray:
        xy = points[..., :2]
        rho = np.linalg.norm(xy, axis=-1)
        theta = np.arctan2(rho, points[..., 2])
        radius = self.radius_of(theta)
        unit = np.where(rho[..., None] > 0, xy / np.where(rho > 0, rho, 1.0)[..., None], 0.0)
        return np.array([self.cx, self.cy]) + (radius[..., None] * unit) @ self._matrix.T

    def unproject(self, pixels: np.ndarray) -> np.ndarray:
        offset = (pixels - np.array([self.cx, self.cy])) @ np.linalg.inv(self._matrix).T
        radius = np.linalg.norm(offset, axis=-1)
        theta = self.theta_of(radius)
        unit = np.where(radius[..., None] > 0, offset / np.where(radius > 0, radius, 1.0)[..., None], 0.0)
        return np.concatenate([np.sin(theta)[..., None] * unit, np.cos(theta)[..., None]], axis=-1)

    def valid(self, points: np.ndarray) -> np.ndarray:
        rho = np.linalg.norm(points[..., :2], axis=-1)
        theta = np.arctan2(rho, points[..., 2])
        return (theta <= self.max_theta) & (np.linalg.norm(points, axis=-1) >= NEAR_M)


def camera_from_record(model: str, intrinsics: list[float] | np.ndarray) -> Camera:
    """The camera of a frame record (``camera_model`` and ``intrinsics`` keys)."""
    if model == "pinhole":
        return PinholeCamera.from_array(np.asarray(intrinsics))
    if model == "ftheta":
        return FThetaCamera.from_array(np.asarray(intrinsics))
    raise ValueError(f"unknown camera model {model!r}; expected pinhole or ftheta")
