"""Write one synthetic clip in the RDS-HQ layout: videos, poses, intrinsics, 10 Hz labels, truth
(the `synthesize` stage writes ``num_clips`` of them: ``pipeline.synthesize``).

Two layouts (``SynthesizeParams.layout``): native RDS-HQ clips, and clips as NVIDIA's toolkit
converts Waymo Open segments (Waymo context names as clip ids, Waymo camera names, poses in a
global frame whose origin is far from the ego, every vehicle typed ``Car``, pinhole only). Either
way poses are keyed by 30 Hz frame numbers and labels by every third one, whatever the video rate.
Intrinsics are written at the camera's native size, as real clips store them; the videos are
rendered at ``width`` x ``height`` (per 1920x1080 of native size).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from .. import rdshq
from ..geometry.transforms import make_pose, rot_z
from ..params import ParamsError, SynthesizeParams
from ..video import encode_video
from .render import RIG, WAYMO_RIG, CameraMount, View, finish_truth, render_view
from .scene import CLASSES, LABEL_RANGE_M, Scene, sample_scene
from .stamp import stamp_index, stamp_region

LABEL_RATE_HZ = 10
FIRST_START_US = 1_700_000_000_000_000
RIGS = {"rdshq": RIG, "waymo": WAYMO_RIG}
# Waymo conversions keep Waymo's global frame: the ego starts far from the origin, turned.
WAYMO_WORLD = make_pose(rot_z(2.2), np.array([4513.7, -1872.4, 151.3]))
WAYMO_VEHICLE_TYPE = "Car"  # Waymo labels only TYPE_VEHICLE; the toolkit names every one Car


def clip_rng(params: SynthesizeParams, clip_index: int) -> np.random.Generator:
    return np.random.default_rng([params.seed, clip_index])


def clip_id_for(rng: np.random.Generator, clip_index: int, duration_s: float, layout: str = "rdshq") -> str:
    """An id of the layout's form: RDS-HQ ``<uuid>_<start_us>_<end_us>`` or a Waymo context name
    ``<run>_<start>_<ms>_<end>_<ms>``; one draw of 16 bytes either way."""
    drawn = rng.bytes(16)
    if layout == "waymo":
        start_ms = 100_000 + clip_index * 60_000
        end_ms = start_ms + round(duration_s * 1000)
        run = int.from_bytes(drawn[:8], "big")
        return f"{run}_{start_ms // 1000}_{start_ms % 1000:03d}_{end_ms // 1000}_{end_ms % 1000:03d}"
    session = uuid.UUID(bytes=drawn, version=4)
    start = FIRST_START_US + clip_index * 3_600_000_000
    return f"{session}_{start}_{start + round(duration_s * 1e6)}"


def clip_id(params: SynthesizeParams, clip_index: int) -> str:
    """The id ``write_clip`` gives clip ``clip_index`` (the first draw of its generator), without
    rendering it: the same for every ``num_clips`` that includes the index."""
    return clip_id_for(clip_rng(params, clip_index), clip_index, params.duration_s, params.layout)


def object_labels(scene: Scene, t: float, layout: str = "rdshq") -> dict[str, dict]:
    """``all_object_info`` of one label frame: tracks within range of the ego."""
    ego = scene.ego_pose(t)[:3, 3]
    labels = {}
    for track in scene.tracks:
        pose = track.pose(t)
        if np.linalg.norm(pose[:3, 3] - ego) > LABEL_RANGE_M:
            continue
        vehicle = CLASSES[track.raw_type].is_vehicle
        labels[track.track_id] = {
            "object_to_world": to_world(pose, layout).tolist(),
            "object_lwh": list(track.lwh),
            "object_is_moving": track.is_moving,
            "object_type": WAYMO_VEHICLE_TYPE if layout == "waymo" and vehicle else track.raw_type,
        }
    return labels


def to_world(pose: np.ndarray, layout: str) -> np.ndarray:
    """A pose in the scene's frame (the ego at time 0) as the layout's world frame stores it."""
    return WAYMO_WORLD @ pose if layout == "waymo" else pose


def mount_of(params: SynthesizeParams, camera_name: str) -> CameraMount:
    rig = RIGS[params.layout]
    if camera_name not in rig:
        raise ParamsError(f"synthesize.cameras: unknown camera {camera_name!r} for layout {params.layout!r}; "
                          f"known: {sorted(rig)}")
    return rig[camera_name]


def video_size(params: SynthesizeParams, mount: CameraMount) -> tuple[int, int]:
    """The video size of a camera: its native size scaled as 1920x1080 is to ``width`` x
    ``height`` (even numbers, as H.264 in yuv420p needs)."""
    width = 2 * round(mount.native[0] * params.width / 1920 / 2)
    height = 2 * round(mount.native[1] * params.height / 1080 / 2)
    return width, height


def pose_frame(video_frame: int, fps: int) -> int:
    """The 30 Hz pose/label frame number at the time of ``video_frame``."""
    return round(video_frame * rdshq.POSE_RATE_HZ / fps)


def render_frame(scene: Scene, params: SynthesizeParams, camera_name: str, frame: int,
                 rays: np.ndarray) -> tuple[View, dict]:
    """Video frame ``frame`` of one camera, its index stamped in, and the renderer's truth."""
    mount = mount_of(params, camera_name)
    camera = mount.camera(*video_size(params, mount), params.camera_model)
    t = frame / params.fps
    camera_to_world = scene.ego_pose(t) @ mount.camera_to_rig()
    view = render_view(scene, t, camera, camera_to_world, rays)
    if params.stamp_frame_index:
        stamp_index(view.rgb, frame)
        view.object_ids[stamp_region(camera.width)] = -1
    return view, finish_truth(view, scene)


def write_clip(params: SynthesizeParams, clip_index: int, root: Path) -> dict:
    """Render and write one clip; returns a summary for the stage metrics."""
    rng = clip_rng(params, clip_index)
    clip_id = clip_id_for(rng, clip_index, params.duration_s, params.layout)
    scene = sample_scene(rng, params.num_vehicles, params.num_pedestrians, params.duration_s)
    pose_frames = round(params.duration_s * rdshq.POSE_RATE_HZ)
    video_frames = round(params.duration_s * params.fps)
    labels = rdshq.ClipLabels(clip_id)
    truth: dict[int, dict[str, dict]] = {pose_frame(k, params.fps): {} for k in range(video_frames)}
    for frame in range(pose_frames):
        labels.vehicle_poses[frame] = to_world(scene.ego_pose(frame / rdshq.POSE_RATE_HZ), params.layout)
    for frame in range(0, pose_frames, rdshq.POSE_RATE_HZ // LABEL_RATE_HZ):
        labels.objects[frame] = object_labels(scene, frame / rdshq.POSE_RATE_HZ, params.layout)
    for camera_name in params.cameras:
        mount = mount_of(params, camera_name)
        camera = mount.camera(*video_size(params, mount), params.camera_model)
        labels.intrinsics[camera_name] = mount.intrinsics(params.camera_model)
        labels.camera_poses[camera_name] = {
            f: labels.vehicle_poses[f] @ mount.camera_to_rig() for f in range(pose_frames)}
        rays = camera.rays()

        def frames(camera_name: str, rays: np.ndarray) -> Iterator[np.ndarray]:
            """The camera's video frames, in order; records each frame's render truth as it goes."""
            for frame in range(video_frames):
                view, frame_truth = render_frame(scene, params, camera_name, frame, rays)
                truth[pose_frame(frame, params.fps)][camera_name] = frame_truth
                yield view.rgb

        path = Path(rdshq.video_path(str(root), params.camera_model, camera_name, clip_id))
        path.parent.mkdir(parents=True, exist_ok=True)
        encode_video(path, frames(camera_name, rays), params.fps, params.crf, params.preset, params.keyframe_interval)
    rdshq.write_clip_labels(root, labels, params.camera_model)
    rdshq.write_tar(root, rdshq.RENDER_TRUTH, clip_id, {
        f"{f:06d}.{rdshq.RENDER_TRUTH}.json": per_camera for f, per_camera in truth.items()})
    return {"clip_id": clip_id, "frames": video_frames, "tracks": len(scene.tracks)}
