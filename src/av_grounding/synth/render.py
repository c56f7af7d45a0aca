"""Render one camera view of a scene: textured ground plane, shaded solid boxes, exact occlusion.

Besides the RGB image it returns what the renderer knows and later stages are checked against:
for every object in view, the pixels it covers alone, the pixels left visible after occlusion,
and its 8 projected corners.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..geometry.boxes import FACES, Box3D, corners, edge_segments, projected_rectangle
from ..geometry.cameras import NEAR_M, Camera, PinholeCamera, camera_from_record
from ..geometry.transforms import RDF_TO_FLU, apply, invert_pose, make_pose, rot_z
from .raster import rasterize_polygon, raycast_box
from .scene import CENTRE_LINE, DASHED_LINES, ROAD_EDGES, SIDEWALK_WIDTH, Scene

SUN = np.array([0.4, 0.3, 0.85]) / np.linalg.norm([0.4, 0.3, 0.85])
SKY_HORIZON, SKY_ZENITH = np.array([0.78, 0.85, 0.92]), np.array([0.35, 0.55, 0.85])
FOG_COLOUR, FOG_DISTANCE_M = np.array([0.78, 0.82, 0.86]), 350.0
# Outward body-frame normals of FACES, in the same order.
FACE_NORMALS = np.array([[0, 0, 1], [0, 0, -1], [1, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0]], dtype=float)
FACE_TINT = np.array([1.0, 1.0, 0.8, 0.9, 1.0, 1.0])  # darker front/back faces show the heading


@dataclass(frozen=True)
class CameraMount:
    """Where a camera sits on the rig (FLU) and which way it looks, its native image size and
    pinhole intrinsics, and its f-theta intrinsics where the source ships them (RDS-HQ array)."""

    yaw: float
    position: tuple[float, float, float]
    focal: float
    cx: float
    cy: float
    native: tuple[int, int] = (1920, 1080)
    ftheta: tuple[float, ...] | None = None

    def camera_to_rig(self) -> np.ndarray:
        return make_pose(rot_z(self.yaw) @ RDF_TO_FLU, np.array(self.position))

    def intrinsics(self, model: str) -> np.ndarray:
        """The native-size intrinsics array of ``model`` (pinhole or ftheta), as clips store it."""
        if model == "pinhole":
            return PinholeCamera(self.focal, self.focal, self.cx, self.cy, *self.native).to_array()
        if self.ftheta is None:
            raise ValueError("no f-theta calibration for this camera (Waymo conversions are pinhole only)")
        return np.array(self.ftheta, dtype=np.float64)

    def camera(self, width: int, height: int, model: str = "pinhole") -> Camera:
        """The camera for an image of ``width`` x ``height`` (the native one scaled)."""
        return camera_from_record(model, self.intrinsics(model)).resized(width, height)


# Intrinsics are those of a public RDS-HQ clip (docs/formats.md#cameras; the example in NVIDIA's Cosmos-Drive-Dreams
# toolkit: pinhole [fx = fy, cx, cy] and the f-theta arrays, backward polynomials for the
# 120-degree cameras, forward ones for the 30/70-degree ones); mounts are plausible guesses.
RIG = {
    "camera_front_wide_120fov": CameraMount(
        0.0, (1.8, 0.0, 1.55), 945.5, 954.2, 757.2,
        ftheta=(954.2063, 757.15415, 1920, 1080, 0.0, 1.05758628e-3, 8.2116208e-9, -3.3945008e-11,
                8.0734208e-14, -2.94602496e-17, 1.0)),
    "camera_cross_left_120fov": CameraMount(
        0.95, (1.6, 0.9, 1.5), 938.5, 964.9, 744.4,
        ftheta=(964.86275, 744.439, 1920, 1080, 0.0, 1.0655136e-3, -6.3100036e-9, 1.9566128e-11,
                1.258088896e-14, 1.28343936e-18, 1.0)),
    "camera_cross_right_120fov": CameraMount(
        -0.95, (1.6, -0.9, 1.5), 937.2, 958.4, 744.3,
        ftheta=(958.4103, 744.29785, 1920, 1080, 0.0, 1.0670406e-3, -1.9016488e-9, 5.0939608e-12,
                3.09046848e-14, -6.74121728e-18, 1.0)),
    "camera_rear_left_70fov": CameraMount(
        2.3, (1.0, 0.95, 1.45), 1571.3, 933.8, 557.2,
        ftheta=(933.82935, 557.2074, 1920, 1080, 0.0, 1571.27855, 96.98752, -255.40837, 150.845965,
                97.98543, 0.0)),
    "camera_rear_right_70fov": CameraMount(
        -2.3, (1.0, -0.95, 1.45), 1564.1, 968.9, 553.9,
        ftheta=(968.8991, 553.86615, 1920, 1080, 0.0, 1564.0829, 100.93601, -264.07915, 149.67691,
                100.501725, 0.0)),
    "camera_front_tele_30fov": CameraMount(
        0.0, (1.8, 0.0, 1.6), 3675.7, 978.4, 597.7,
        ftheta=(978.44415, 597.66565, 1920, 1080, 0.0, 3675.74975, 178.78496, -387.41287, -11.4377625,
                18.0317115, 0.0)),
    "camera_rear_tele_30fov": CameraMount(
        np.pi, (-1.0, 0.0, 1.6), 3680.6, 1032.5, 514.1,
        ftheta=(1032.4529, 514.0706, 1920, 1080, 0.0, 3680.57665, -184.34178, 2877.95335, -12169.1035,
                16158.127, 0.0)),
}
# The five cameras of a Waymo Open vehicle under the names NVIDIA's toolkit gives them when it
# converts Waymo to RDS-HQ; pinhole only, at Waymo's native sizes (front ones 1920x1280, side ones
# 1920x886). Focal lengths and mounts are plausible values, not a calibration.
WAYMO_RIG = {
    "front": CameraMount(0.0, (1.5, 0.0, 2.1), 2060.0, 955.0, 640.0, native=(1920, 1280)),
    "front_left": CameraMount(0.8, (1.5, 0.1, 2.1), 2060.0, 962.0, 636.0, native=(1920, 1280)),
    "front_right": CameraMount(-0.8, (1.5, -0.1, 2.1), 2060.0, 950.0, 645.0, native=(1920, 1280)),
    "side_left": CameraMount(1.6, (1.4, 0.15, 2.1), 2055.0, 960.0, 443.0, native=(1920, 886)),
    "side_right": CameraMount(-1.6, (1.4, -0.15, 2.1), 2055.0, 958.0, 446.0, native=(1920, 886)),
}


@dataclass
class View:
    rgb: np.ndarray  # (h, w, 3) uint8
    object_ids: np.ndarray  # (h, w) int32, index into scene.tracks, -1 for background
    truth: dict[str, dict] = field(default_factory=dict)  # track id -> what the renderer knows


def _noise(ix: np.ndarray, iy: np.ndarray) -> np.ndarray:
    """Deterministic value noise in [-1, 1] from integer cell coordinates."""
    h = (ix.astype(np.int64) * 73856093) ^ (iy.astype(np.int64) * 19349663)
    h = (h ^ (h >> 13)) * 1274126177
    return ((h >> 8) & 1023) / 511.5 - 1.0


def ground_colour(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Colour of the ground at world (x, y): asphalt with lane marks, kerbs, sidewalk, grass."""
    colour = np.empty(x.shape + (3,))
    colour[:] = (0.30, 0.45, 0.22)
    on_road = (y >= ROAD_EDGES[0]) & (y <= ROAD_EDGES[1])
    sidewalk = ~on_road & (y >= ROAD_EDGES[0] - SIDEWALK_WIDTH) & (y <= ROAD_EDGES[1] + SIDEWALK_WIDTH)
    colour[sidewalk] = (0.62, 0.61, 0.58)
    colour[on_road] = (0.33, 0.33, 0.35)
    colour *= (1.0 + 0.06 * _noise(np.floor(x * 2), np.floor(y * 2)))[..., None]
    dashes = np.zeros(x.shape, dtype=bool)
    for line in DASHED_LINES:
        dashes |= (np.abs(y - line) < 0.08) & (np.mod(x, 12.0) < 4.0)
    edges = (np.abs(y - ROAD_EDGES[0]) < 0.1) | (np.abs(y - ROAD_EDGES[1]) < 0.1)
    colour[dashes | edges] = (0.92, 0.92, 0.90)
    centre = (np.abs(y - CENTRE_LINE - 0.12) < 0.06) | (np.abs(y - CENTRE_LINE + 0.12) < 0.06)
    colour[centre] = (0.90, 0.75, 0.15)
    return colour


def render_view(scene: Scene, t: float, camera: Camera, camera_to_world: np.ndarray,
                rays: np.ndarray | None = None) -> View:
    """Render the scene at time ``t`` seen by ``camera`` placed at ``camera_to_world``; ``rays``
    are ``camera.rays()`` (passed in to reuse them over frames).

    Under a pinhole camera the boxes' faces are rasterised as polygons; under f-theta, where a
    straight edge images as a curve, every pixel's ray is cast against the box instead, so edges
    bend exactly as the lens bends them."""
    rays = camera.rays() if rays is None else rays
    rotation, centre = camera_to_world[:3, :3], camera_to_world[:3, 3]
    directions = rays @ rotation.T  # world directions; distances below are in units of the ray
    down = directions[..., 2]
    hit = down < -1e-9
    depth = np.full(down.shape, np.inf)
    depth[hit] = -centre[2] / down[hit]
    hit &= depth < 5000.0
    depth[~hit] = np.inf
    points = centre[:2] + directions[..., :2] * np.where(hit, depth, 0.0)[..., None]
    elevation = np.clip(down / np.linalg.norm(directions, axis=-1), 0.0, 1.0)
    rgb = SKY_HORIZON + (SKY_ZENITH - SKY_HORIZON) * np.sqrt(elevation)[..., None]
    rgb[hit] = ground_colour(points[hit, 0], points[hit, 1])
    object_ids = np.full(down.shape, -1, dtype=np.int32)

    world_to_camera = invert_pose(camera_to_world)
    height, width = down.shape
    coverage: dict[int, int] = {}
    projected: dict[int, list | None] = {}
    for index, track in enumerate(scene.tracks):
        pose = track.pose(t)
        box = apply(world_to_camera, corners(pose, np.array(track.lwh)))
        if (box[:, 2] < NEAR_M).all():
            continue
        in_front = (box[:, 2] >= NEAR_M).all()
        x0, y0, x1, y1 = _window(box, camera) if in_front else (0, 0, width, height)
        if x0 >= x1 or y0 >= y1:
            continue
        if isinstance(camera, PinholeCamera):
            patch, face_of = _rasterize_faces(box, camera, (y0, x0, y1, x1))
        else:
            patch, face_of = raycast_box(Box3D.from_pose(world_to_camera @ pose, track.lwh), rays[y0:y1, x0:x1], NEAR_M)
        covered = np.isfinite(patch)
        if not covered.any():
            continue
        coverage[index] = int(covered.sum())
        projected[index] = np.round(camera.project(box), 3).tolist() if in_front else None
        region = depth[y0:y1, x0:x1]
        visible = covered & (patch < region)
        region[visible] = patch[visible]
        object_ids[y0:y1, x0:x1][visible] = index
        world_normals = FACE_NORMALS @ pose[:3, :3].T
        shade = (0.5 + 0.5 * np.clip(world_normals @ SUN, 0.0, 1.0)) * FACE_TINT
        rgb[y0:y1, x0:x1][visible] = np.array(track.colour) * shade[face_of[visible]][:, None]

    fog = 1.0 - np.exp(-np.where(np.isfinite(depth), depth, 1e9) / FOG_DISTANCE_M)
    rgb = rgb + (FOG_COLOUR - rgb) * fog[..., None]
    view = View((np.clip(rgb, 0.0, 1.0) * 255 + 0.5).astype(np.uint8), object_ids)
    for index, total in coverage.items():
        view.truth[scene.tracks[index].track_id] = {"unoccluded_pixels": total, "corners_px": projected[index]}
    return view


def _window(box: np.ndarray, camera: Camera) -> tuple[int, int, int, int]:
    """Pixel window ``(x0, y0, x1, y1)`` holding the projection of a box wholly in front of the
    near plane: the corners' hull under a pinhole camera, the bent edges' (plus a margin for the
    bulge between their sample points) under f-theta."""
    if isinstance(camera, PinholeCamera):
        px = camera.project(box)
        x0, y0 = max(int(np.floor(px[:, 0].min())), 0), max(int(np.floor(px[:, 1].min())), 0)
        x1 = min(int(np.ceil(px[:, 0].max())) + 1, camera.width)
        y1 = min(int(np.ceil(px[:, 1].max())) + 1, camera.height)
        return x0, y0, x1, y1
    rect = projected_rectangle(box, camera, edge_segments("ftheta"))
    assert rect is not None  # a box wholly in front of the near plane projects
    return (max(int(np.floor(rect[0])) - 2, 0), max(int(np.floor(rect[1])) - 2, 0),
            min(int(np.ceil(rect[2])) + 3, camera.width), min(int(np.ceil(rect[3])) + 3, camera.height))


def _rasterize_faces(box: np.ndarray, camera: PinholeCamera,
                     window: tuple[int, int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Depth (inf: not covered) and face index of the box's front faces over ``window``
    ``(y0, x0, y1, x1)``; planar faces stay planar polygons under a pinhole camera."""
    y0, x0, y1, x1 = window
    patch = np.full((y1 - y0, x1 - x0), np.inf)
    face_of = np.full(patch.shape, -1, dtype=np.int8)
    for face_index, face in enumerate(FACES):
        quad = box[face]
        normal = np.cross(quad[1] - quad[0], quad[2] - quad[0])
        if normal @ quad[0] >= 0:  # faces away from the camera centre
            continue
        won = rasterize_polygon(quad, camera, patch, (y0, x0), NEAR_M)
        if won is not None:
            face_of[won] = face_index
    return patch, face_of


def finish_truth(view: View, scene: Scene) -> dict[str, dict]:
    """Count visible pixels per object (after anything drawn over the image) into its truth."""
    counts = np.bincount(view.object_ids[view.object_ids >= 0].ravel(), minlength=len(scene.tracks))
    truth = {}
    for index, track in enumerate(scene.tracks):
        entry = view.truth.get(track.track_id)
        if entry is None:
            continue
        visible = int(counts[index])
        truth[track.track_id] = {**entry, "visible_pixels": visible,
                                 "visible_fraction": round(visible / entry["unoccluded_pixels"], 6)}
    return truth
