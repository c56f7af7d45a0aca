"""Write synthetic clips in the RDS-HQ layout: videos, poses, intrinsics, 10 Hz labels, truth."""

from __future__ import annotations

import uuid
from pathlib import Path

import numpy as np

from .. import rdshq
from ..executors import run_items
from ..params import ParamsError, SynthesizeParams
from ..storage import atomic_folder, write_json
from ..video import encode_video
from .render import RIG, View, finish_truth, render_view
from .scene import LABEL_RANGE_M, Scene, sample_scene
from .stamp import stamp_index, stamp_region

LABEL_RATE_HZ = 10
FIRST_START_US = 1_700_000_000_000_000


def clip_rng(params: SynthesizeParams, clip_index: int) -> np.random.Generator:
    return np.random.default_rng([params.seed, clip_index])


def clip_id_for(rng: np.random.Generator, clip_index: int, duration_s: float) -> str:
    session = uuid.UUID(bytes=rng.bytes(16), version=4)
    start = FIRST_START_US + clip_index * 3_600_000_000
    return str(rdshq.ClipId(str(session), start, start + int(round(duration_s * 1e6))))


def object_labels(scene: Scene, t: float) -> dict[str, dict]:
    """``all_object_info`` of one label frame: tracks within range of the ego."""
    ego = scene.ego_pose(t)[:3, 3]
    labels = {}
    for track in scene.tracks:
        pose = track.pose(t)
        if np.linalg.norm(pose[:3, 3] - ego) > LABEL_RANGE_M:
            continue
        labels[track.track_id] = {
            "object_to_world": pose.tolist(),
            "object_lwh": list(track.lwh),
            "object_is_moving": track.is_moving,
            "object_type": track.raw_type,
        }
    return labels


def render_frame(scene: Scene, params: SynthesizeParams, camera_name: str, frame: int,
                 rays: np.ndarray) -> tuple[View, dict]:
    mount = RIG[camera_name]
    camera = mount.camera(params.width, params.height)
    t = frame / params.fps
    camera_to_world = scene.ego_pose(t) @ mount.camera_to_rig()
    view = render_view(scene, t, camera, camera_to_world, rays)
    if params.stamp_frame_index:
        stamp_index(view.rgb, frame)
        view.object_ids[stamp_region(params.width)] = -1
    return view, finish_truth(view, scene)


def write_clip(params: SynthesizeParams, clip_index: int, root: Path) -> dict:
    """Render and write one clip; returns a summary for the stage metrics."""
    rng = clip_rng(params, clip_index)
    clip_id = clip_id_for(rng, clip_index, params.duration_s)
    scene = sample_scene(rng, params.num_vehicles, params.num_pedestrians, params.duration_s)
    frame_count = int(round(params.duration_s * params.fps))
    label_step = max(1, params.fps // LABEL_RATE_HZ)
    labels = rdshq.ClipLabels(clip_id)
    truth: dict[int, dict[str, dict]] = {f: {} for f in range(frame_count)}
    for frame in range(frame_count):
        labels.vehicle_poses[frame] = scene.ego_pose(frame / params.fps)
    for frame in range(0, frame_count, label_step):
        labels.objects[frame] = object_labels(scene, frame / params.fps)
    for camera_name in params.cameras:
        mount = RIG[camera_name]
        camera = mount.camera(params.width, params.height)
        labels.intrinsics[camera_name] = camera.to_array()
        labels.camera_poses[camera_name] = {
            f: labels.vehicle_poses[f] @ mount.camera_to_rig() for f in range(frame_count)}
        rays = camera.rays()

        def frames():
            for frame in range(frame_count):
                view, frame_truth = render_frame(scene, params, camera_name, frame, rays)
                truth[frame][camera_name] = frame_truth
                yield view.rgb

        path = Path(rdshq.video_path(str(root), "pinhole", camera_name, clip_id))
        path.parent.mkdir(parents=True, exist_ok=True)
        encode_video(path, frames(), params.fps, params.crf, params.preset, params.keyframe_interval)
    rdshq.write_clip_labels(root, labels, "pinhole")
    rdshq.write_tar(root, rdshq.RENDER_TRUTH, clip_id, {
        f"{f:06d}.{rdshq.RENDER_TRUTH}.json": per_camera for f, per_camera in truth.items()})
    return {"clip_id": clip_id, "frames": frame_count, "tracks": len(scene.tracks)}


def synthesize(params: SynthesizeParams, output: Path, metrics: Path | None = None) -> dict:
    """The `synthesize` stage: ``num_clips`` clips under ``output``, in parallel over clips; the
    folder is replaced only once every clip is written."""
    unknown = [c for c in params.cameras if c not in RIG]
    if unknown:
        raise ParamsError(f"synthesize.cameras: unknown camera(s) {unknown}; known: {sorted(RIG)}")
    with atomic_folder(output) as folder:  # a killed run leaves the previous output whole
        outcome = run_items(write_clip, [(params, i, folder) for i in range(params.num_clips)],
                            params.workers, "synthesize clips")
        if outcome.failures:  # the generator's own inputs: a failure is a bug, not bad data
            raise RuntimeError("synthesize failed for: " + "; ".join(f.describe() for f in outcome.failures))
    summaries = outcome.results
    summary = {"clips": len(summaries), "cameras": len(params.cameras),
               "video_frames": sum(s["frames"] for s in summaries) * len(params.cameras),
               "tracks": sum(s["tracks"] for s in summaries)}
    if metrics:
        write_json(metrics, summary)
    return summary
