"""Camera models (docs/conventions.md#camera-models). Points are in the camera's RDF (OpenCV) frame.

Both models share one interface: ``project`` (points -> pixels), ``unproject`` (pixels -> rays),
``valid`` (which points the model can image), ``rays`` (one ray per pixel centre), ``resized``
(the same camera for a scaled image), ``to_array`` (the RDS-HQ intrinsics array), ``width`` /
``height``. Pixel coordinates are continuous with pixel ``(i, j)`` covering ``[i, i+1) x [j, j+1)``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Protocol

import numpy as np

NEAR_M = 0.1  # points closer than this along the optical axis are not projected


class Camera(Protocol):
    """What every camera model offers (``PinholeCamera``, ``FThetaCamera``); points in camera RDF
    (metres), pixels ``(u, v)`` in the continuous convention of the module docstring."""

    @property
    def width(self) -> int:
        """Image width in pixels."""
        ...

    @property
    def height(self) -> int:
        """Image height in pixels."""
        ...

    def project(self, points: np.ndarray) -> np.ndarray:
        """(..., 2) pixels of (..., 3) points; meaningful only where ``valid``."""
        ...

    def unproject(self, pixels: np.ndarray) -> np.ndarray:
        """(..., 3) rays in camera RDF through (..., 2) pixels; ``project`` maps them back."""
        ...

    def valid(self, points: np.ndarray) -> np.ndarray:
        """(...,) bool: which of the (..., 3) points the model images."""
        ...

    def rays(self) -> np.ndarray:
        """(height, width, 3) rays through every pixel centre."""
        ...

    def resized(self, width: int, height: int) -> Camera:
        """The same camera for the image scaled to ``width`` x ``height`` pixels."""
        ...

    def mirrored(self) -> Camera:
        """The camera of the image flipped left to right (column i becomes width - 1 - i): it
        images the scene mirrored through the camera's y-z plane, ``(x, y, z) -> (-x, y, z)``,
        at pixel ``(width - u, v)`` (an f-theta lens: within both cameras' calibrated angle, see
        ``FThetaCamera.mirrored``)."""
        ...

    def cropped(self, top: int) -> Camera:
        """The same camera for the image without its first ``top`` rows (``0 <= top < height``):
        every pixel ``(u, v)`` moves to ``(u, v - top)``."""
        ...

    def to_array(self) -> np.ndarray:
        """The intrinsics as RDS-HQ stores them (float64)."""
        ...


def _pixel_centres(width: int, height: int) -> np.ndarray:
    """(h, w, 2) pixel-centre coordinates ``(i + 0.5, j + 0.5)``."""
    u, v = np.meshgrid(np.arange(width) + 0.5, np.arange(height) + 0.5)
    return np.stack([u, v], axis=-1)


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
    def from_array(cls, values: np.ndarray) -> PinholeCamera:
        """From the RDS-HQ array ``[fx, fy, cx, cy, w, h]`` (pixels; values past the sixth are
        ignored), width and height rounded to whole pixels. ``ValueError`` for fewer than six."""
        fx, fy, cx, cy, w, h = (float(v) for v in np.asarray(values)[:6])
        return cls(fx, fy, cx, cy, round(w), round(h))

    def to_array(self) -> np.ndarray:
        """(6,) float64 ``[fx, fy, cx, cy, width, height]`` (pixels)."""
        return np.array([self.fx, self.fy, self.cx, self.cy, self.width, self.height], dtype=np.float64)

    def resized(self, width: int, height: int) -> PinholeCamera:
        """The same camera for an image scaled to ``width`` x ``height`` (pixel-corner convention)."""
        sx, sy = width / self.width, height / self.height
        return PinholeCamera(self.fx * sx, self.fy * sy, self.cx * sx, self.cy * sy, width, height)

    def mirrored(self) -> PinholeCamera:
        """The camera of the image flipped left to right (``Camera.mirrored``): principal point
        ``(width - cx, cy)``, from ``width - u = fx * (-x) / z + (width - cx)``."""
        return replace(self, cx=self.width - self.cx)

    def cropped(self, top: int) -> PinholeCamera:
        """The camera of the image without its first ``top`` rows (``Camera.cropped``): principal
        point ``(cx, cy - top)``, height ``height - top``. ``ValueError`` for ``top`` outside
        [0, height)."""
        _check_crop(top, self.height)
        return replace(self, cy=self.cy - top, height=self.height - top)

    def project(self, points: np.ndarray) -> np.ndarray:
        """(..., 2) pixels ``(u, v)`` of (..., 3) points in camera RDF (metres); meaningful only
        where ``valid`` (not checked: z = 0 gives inf, a point behind the camera a mirrored pixel)."""
        z = points[..., 2]
        return np.stack([self.fx * points[..., 0] / z + self.cx,
                         self.fy * points[..., 1] / z + self.cy], axis=-1)

    def unproject(self, pixels: np.ndarray) -> np.ndarray:
        """(..., 3) unit rays in camera RDF (z > 0) through (..., 2) pixels ``(u, v)``: ``project``
        maps any point along a ray back to its pixel."""
        rays = np.stack([(pixels[..., 0] - self.cx) / self.fx, (pixels[..., 1] - self.cy) / self.fy,
                         np.ones(pixels.shape[:-1])], axis=-1)
        return rays / np.linalg.norm(rays, axis=-1, keepdims=True)

    def valid(self, points: np.ndarray) -> np.ndarray:
        """(...,) bool: which (..., 3) points lie at least ``NEAR_M`` metres in front of the
        camera (z >= NEAR_M)."""
        return points[..., 2] >= NEAR_M

    def rays(self) -> np.ndarray:
        """(h, w, 3) ray directions with z = 1 through every pixel centre (a distance along such a
        ray is the depth z)."""
        pixels = _pixel_centres(self.width, self.height)
        return np.stack([(pixels[..., 0] - self.cx) / self.fx, (pixels[..., 1] - self.cy) / self.fy,
                         np.ones(pixels.shape[:2])], axis=-1)


def _poly(coefficients: np.ndarray, x: np.ndarray | float) -> np.ndarray:
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

    The polynomials are calibrated only up to ``max_theta``, the largest ray angle of the four
    corner pixels ``(0, 0), (w-1, 0), (0, h-1), (w-1, h-1)``. Beyond it the forward mapping is
    extended linearly, ``r = r(max_theta) + (theta - max_theta) * r'(max_theta)``, as NVIDIA's
    Cosmos-Drive-Dreams toolkit (``utils/camera/ftheta.py``) projects: evaluating a degree-5
    polynomial past its calibrated range bends it anywhere (a 30-degree camera's forward polynomial
    turns back within a few degrees), which puts boxes straddling the edge of the field of view
    hundreds of pixels away from the toolkit's rectangles.
    """

    cx: float
    cy: float
    width: int
    height: int
    forward: tuple[float, ...]  # r(theta)
    backward: tuple[float, ...]  # theta(r)
    affine: tuple[float, float, float] = (1.0, 0.0, 0.0)
    max_radius: float = 0.0  # farthest image corner from the principal point: the fitted range
    stored_backward: bool = True
    max_theta: float = np.pi  # calibrated angle (see the class docstring)
    edge_radius: float = np.inf  # r(max_theta)
    edge_slope: float = 1.0  # dr/dtheta at max_theta, in pixels per radian

    @classmethod
    def from_array(cls, values: np.ndarray) -> FThetaCamera:
        """Build from the RDS-HQ array; raises ``ValueError`` for a wrong length or a mapping that
        does not increase up to the image corners."""
        values = np.asarray(values, dtype=np.float64)
        if len(values) not in (11, 14):
            raise ValueError(f"f-theta intrinsics need 11 or 14 values, got {len(values)}")
        cx, cy, width, height = values[:4]
        poly, is_backward = values[4:10], bool(values[10])
        affine = (float(values[11]), float(values[12]), float(values[13])) if len(values) == 14 else (1.0, 0.0, 0.0)
        corners = np.array([[0, 0], [width, 0], [0, height], [width, height]], dtype=float)
        max_radius = float(np.linalg.norm(corners - [cx, cy], axis=1).max())
        if is_backward:
            backward, forward = poly, _fit_inverse(poly, max_radius)
        else:
            theta_max = float(_newton_inverse(poly, np.array(max_radius), np.array(np.pi / 2)))
            forward, backward = poly, _fit_inverse(poly, theta_max)
        camera = cls(float(cx), float(cy), round(float(width)), round(float(height)), tuple(forward),
                     tuple(backward), affine, max_radius, is_backward)
        return camera._with_edge()

    def _with_edge(self) -> FThetaCamera:
        """This camera with ``max_theta``, ``edge_radius`` and ``edge_slope`` set (toolkit rule)."""
        w, h = self.width - 1, self.height - 1
        pixels = np.array([[0, 0], [w, 0], [0, h], [w, h]], dtype=float)
        offsets = (pixels - [self.cx, self.cy]) @ np.linalg.inv(self._matrix).T
        edge_radius = float(np.linalg.norm(offsets, axis=1).max())
        max_theta = float(self._poly_theta(np.array(edge_radius)))
        if self.stored_backward:
            slope = 1.0 / float(_poly(np.polynomial.polynomial.polyder(np.array(self.backward)), edge_radius))
        else:
            slope = float(_poly(np.polynomial.polynomial.polyder(np.array(self.forward)), max_theta))
        if not slope > 0:
            raise ValueError(f"f-theta polynomial does not increase at the image corner "
                             f"(radius {edge_radius:.1f} px): not a valid calibration")
        return replace(self, max_theta=max_theta, edge_radius=edge_radius, edge_slope=slope)

    @property
    def _matrix(self) -> np.ndarray:
        c, d, e = self.affine
        return np.array([[c, d], [e, 1.0]])

    @property
    def stored_polynomial(self) -> tuple[float, ...]:
        """The six coefficients RDS-HQ stores, lowest power first: the backward polynomial
        (radians of pixels) when ``stored_backward``, else the forward one (pixels of radians)."""
        return self.backward if self.stored_backward else self.forward

    def _poly_radius(self, theta: np.ndarray) -> np.ndarray:
        guess = _poly(np.array(self.forward), theta)
        if not self.stored_backward:
            return guess
        return _newton_inverse(np.array(self.backward), theta, guess)

    def _poly_theta(self, radius: np.ndarray) -> np.ndarray:
        guess = _poly(np.array(self.backward), radius)
        if self.stored_backward:
            return guess
        return _newton_inverse(np.array(self.forward), radius, guess)

    def radius_of(self, theta: np.ndarray) -> np.ndarray:
        """Pixels from the principal point (before the affine) at ray angle ``theta`` (radians);
        linear beyond ``max_theta``."""
        theta = np.asarray(theta, dtype=np.float64)
        inside = self._poly_radius(np.minimum(theta, self.max_theta))
        return np.where(theta <= self.max_theta, inside,
                        self.edge_radius + (theta - self.max_theta) * self.edge_slope)

    def theta_of(self, radius: np.ndarray) -> np.ndarray:
        """Ray angle to the optical axis (radians) at ``radius`` pixels from the principal point
        (before the affine), any shape: the inverse of ``radius_of``, linear beyond
        ``edge_radius``."""
        radius = np.asarray(radius, dtype=np.float64)
        inside = self._poly_theta(np.minimum(radius, self.edge_radius))
        return np.where(radius <= self.edge_radius, inside,
                        self.max_theta + (radius - self.edge_radius) / self.edge_slope)

    def project(self, points: np.ndarray) -> np.ndarray:
        """(..., 2) pixels ``(u, v)`` of (..., 3) points in camera RDF (metres); calibrated only
        where ``valid`` (beyond ``max_theta`` the radius grows linearly, see the class docstring)."""
        xy = points[..., :2]
        rho = np.linalg.norm(xy, axis=-1)
        theta = np.arctan2(rho, points[..., 2])
        radius = self.radius_of(theta)
        unit = np.where(rho[..., None] > 0, xy / np.where(rho > 0, rho, 1.0)[..., None], 0.0)
        return np.array([self.cx, self.cy]) + (radius[..., None] * unit) @ self._matrix.T

    def unproject(self, pixels: np.ndarray) -> np.ndarray:
        """(..., 3) unit rays in camera RDF through (..., 2) pixels ``(u, v)``: ``project`` maps any
        point along a ray back to its pixel."""
        offset = (pixels - np.array([self.cx, self.cy])) @ np.linalg.inv(self._matrix).T
        radius = np.linalg.norm(offset, axis=-1)
        theta = self.theta_of(radius)
        unit = np.where(radius[..., None] > 0, offset / np.where(radius > 0, radius, 1.0)[..., None], 0.0)
        return np.concatenate([np.sin(theta)[..., None] * unit, np.cos(theta)[..., None]], axis=-1)

    def valid(self, points: np.ndarray) -> np.ndarray:
        """(...,) bool: which (..., 3) points lie within the calibrated angle ``max_theta`` of the
        optical axis and at least ``NEAR_M`` metres from the camera centre."""
        rho = np.linalg.norm(points[..., :2], axis=-1)
        theta = np.arctan2(rho, points[..., 2])
        return (theta <= self.max_theta) & (np.linalg.norm(points, axis=-1) >= NEAR_M)

    def rays(self) -> np.ndarray:
        """(h, w, 3) unit rays through every pixel centre (a distance along such a ray is metres)."""
        return self.unproject(_pixel_centres(self.width, self.height))

    def resized(self, width: int, height: int) -> FThetaCamera:
        """The same camera for an image scaled to ``width`` x ``height``. The radius scales by
        ``sy = height / self.height`` (backward coefficient k divided by ``sy**k``, forward ones
        multiplied by ``sy``) and a different horizontal scale ``sx`` goes into the affine's first
        row (``c, d`` times ``sx / sy``); for equal scales this is the toolkit's ``rescale``."""
        sx, sy = width / self.width, height / self.height
        powers = np.arange(len(self.stored_polynomial))
        poly = (np.array(self.stored_polynomial) / sy**powers if self.stored_backward
                else np.array(self.stored_polynomial) * sy)
        c, d, e = self.affine
        affine = (c * sx / sy, d * sx / sy, e)
        values = [self.cx * sx, self.cy * sy, width, height, *poly, float(self.stored_backward)]
        return FThetaCamera.from_array(np.array(values + ([] if affine == (1.0, 0.0, 0.0) else list(affine))))

    def mirrored(self) -> FThetaCamera:
        """The camera of the image flipped left to right (``Camera.mirrored``): principal point
        ``(width - cx, cy)`` and affine ``(c, -d, -e)`` (the radius depends on the angle to the
        optical axis alone, which mirroring keeps; negating the azimuth's x component and the
        pixel offset's u component leaves ``A = [[c, d], [e, 1]]`` with its off-diagonal terms
        negated). The calibrated angle is found again from the flipped image's corner pixels
        (the toolkit's rule, whose corners 0 and width - 1 a flip does not swap): it moves by
        about 1e-3 rad, so beyond it projections differ by hundredths of a pixel."""
        c, d, e = self.affine
        return FThetaCamera.from_array(replace(self, cx=self.width - self.cx, affine=(c, 0.0 - d, 0.0 - e)).to_array())

    def cropped(self, top: int) -> FThetaCamera:
        """The camera of the image without its first ``top`` rows (``Camera.cropped``): principal
        point ``(cx, cy - top)``, height ``height - top``, the polynomials and affine unchanged;
        the calibrated angle is found again from the cropped image's corners (a smaller one: the
        linear extension then starts nearer the axis). ``ValueError`` for ``top`` outside
        [0, height)."""
        _check_crop(top, self.height)
        return FThetaCamera.from_array(replace(self, cy=self.cy - top, height=self.height - top).to_array())

    def to_array(self) -> np.ndarray:
        """The RDS-HQ array: 11 values, 14 where the affine is not the identity."""
        values = [self.cx, self.cy, self.width, self.height, *self.stored_polynomial, float(self.stored_backward)]
        if self.affine != (1.0, 0.0, 0.0):
            values += list(self.affine)
        return np.array(values, dtype=np.float64)


def _check_crop(top: int, height: int) -> None:
    """``ValueError`` unless ``top`` rows can be cut from an image ``height`` rows high, leaving one."""
    if not 0 <= top < height:
        raise ValueError(f"cannot crop {top} rows off an image {height} rows high")


def camera_from_record(model: str, intrinsics: list[float] | np.ndarray) -> Camera:
    """The camera of a frame record: its ``camera_model`` (``pinhole`` or ``ftheta``) and
    ``intrinsics`` (the RDS-HQ array of that model, ``from_array``). ``ValueError`` for another
    model, or intrinsics the model's ``from_array`` refuses."""
    if model == "pinhole":
        return PinholeCamera.from_array(np.asarray(intrinsics))
    if model == "ftheta":
        return FThetaCamera.from_array(np.asarray(intrinsics))
    raise ValueError(f"unknown camera model {model!r}; expected pinhole or ftheta")
