"""The `extract` stage (docs/formats.md#extract): exact frames from RDS-HQ videos plus one record each.

A frame's index comes from its presentation timestamp on the video's nominal rate, counting only
frames a player shows (see ``video``); targets the video lacks (dropped frames) are reported per
item, never replaced by a neighbour. A frame's poses and objects are those of the 30 Hz pose
frame at the frame's time (``pose_frame_index``): the same number for 30 fps videos, three times
the video index for the 10 fps videos of Waymo conversions.

Work is split per (clip, camera). Each item writes its image shard, then its records file last,
so a records file marks a finished item: a rerun after a crash skips finished items and redoes the
rest.

Output layout under the output folder:
  images/<clip_id>/<camera>.tar       the item's JPEGs, members <frame:06d>.jpg (see ``shards``:
                                      one file per item instead of one per frame keeps DVC
                                      push/pull fast)
  records/<clip_id>/<camera>.json     list of frame records (see ``frame_record``); each names its
                                      image by ``image_shard`` (path under the output folder) and
                                      ``image_member``

  failures.json                       items that failed, with the file and the problem, and
                                      items with missing frames (``missing_frames``)

Frames after the last (or before the first) label frame are not written, since their objects are
unknown; they are counted as ``frames_without_labels``. Camera names in the outputs follow
``camera_names`` (names in the clip's files -> output names).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from .. import rdshq
from ..executors import Outcome, run_items
from ..geometry.cameras import camera_from_record
from ..params import ExtractParams
from ..shards import write_shard
from ..storage import filesystem, is_local, write_json
from ..video import DecodedFrame, index_video, read_frames, sample_indices
from .interpolate import objects_at
from .records import records_path, write_records


@dataclass(frozen=True)
class ItemResult:
    clip_id: str
    camera: str
    frames_written: int
    video_frames: int
    decoded_frames: int
    strategy: str
    frames_without_labels: int
    skipped_existing: bool = False
    missing_frames: tuple[int, ...] = ()  # sampled indices the video lacks


def image_shard(clip_id: str, camera: str) -> str:
    return f"images/{clip_id}/{camera}.tar"


def image_member(frame: int) -> str:
    return f"{frame:06d}.jpg"


def intrinsics_for_image(model: str, values: np.ndarray, width: int, height: int) -> list[float]:
    """Intrinsics matching the decoded image size: videos may be stored below the native size the
    intrinsics are written for (the image is taken as scaled, not cropped)."""
    return camera_from_record(model, values).resized(width, height).to_array().tolist()


def output_camera(params: ExtractParams, camera: str) -> str:
    """The name a camera of the clip's files gets in the records and outputs."""
    return params.camera_names.get(camera, camera)


def frame_record(labels: rdshq.ClipLabels, params: ExtractParams, camera: str, frame: DecodedFrame,
                 render_truth: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """One frame's record; ``None`` for a frame outside the labelled span (its objects unknown).

    Where the clip carries a renderer's truth (synthetic clips), each object gets its entry for
    this frame and camera under ``render_truth`` (``None``: not in view)."""
    height, width = frame.bgr.shape[:2]
    clip = rdshq.ClipId.parse(labels.clip_id)
    pose_frame = round(frame.time * rdshq.POSE_RATE_HZ)
    objects = objects_at(labels.objects, pose_frame)
    if objects is None:
        return None
    pose = labels.camera_poses[camera].get(pose_frame)
    vehicle = labels.vehicle_poses.get(pose_frame)
    if pose is None or vehicle is None:
        raise rdshq.LayoutError(f"clip {labels.clip_id}: no camera or vehicle pose for pose frame {pose_frame} "
                                f"(video frame {frame.index} at {frame.time_s:.6f} s)")
    name = output_camera(params, camera)
    record = {
        "clip_id": labels.clip_id,
        "camera": name,
        "camera_model": params.camera_model,
        "frame_index": frame.index,
        "pose_frame_index": pose_frame,
        "timestamp_s": round(frame.time_s, 6),
        "timestamp_us": None if clip.start_us is None else clip.start_us + int(round(frame.time * 1_000_000)),
        "image_shard": image_shard(labels.clip_id, name),
        "image_member": image_member(frame.index),
        "width": width,
        "height": height,
        "intrinsics": intrinsics_for_image(params.camera_model, labels.intrinsics[camera], width, height),
        "camera_to_world": np.asarray(pose, float).tolist(),
        "vehicle_to_world": np.asarray(vehicle, float).tolist(),
        "objects": [{"track_id": track, **info} for track, info in sorted(objects.items())],
    }
    if render_truth is not None:
        in_view = render_truth.get(f"{pose_frame:06d}.{rdshq.RENDER_TRUTH}.json", {}).get(camera, {})
        for obj in record["objects"]:
            obj["render_truth"] = in_view.get(obj["track_id"])
    return record


def extract_item(params: ExtractParams, clip_id: str, camera: str, output: Path) -> ItemResult:
    """Extract every ``skip_frames``-th frame of one clip's camera video (``camera`` as the clip's
    files name it)."""
    done = records_path(output, clip_id, output_camera(params, camera))
    if done.exists():
        return ItemResult(clip_id, camera, 0, 0, 0, "none", 0, skipped_existing=True)
    fs, root = filesystem(params.input_root, params.s3_endpoint_url, params.s3_profile)
    labels = rdshq.read_clip_labels(fs, root, clip_id, (camera,), params.camera_model)
    path = rdshq.video_path(root, params.camera_model, camera, clip_id)
    name = rdshq.video_path(params.input_root.rstrip("/"), params.camera_model, camera, clip_id)
    if not fs.exists(path):
        raise rdshq.LayoutError(f"{name}: missing")
    source: str | bytes = path if is_local(fs) else fs.cat_file(path)
    index = index_video(source, name)
    targets = sample_indices(index.span, params.skip_frames)
    missing = index.missing(targets)
    present = [t for t in targets if t not in missing]
    frames, strategy, decoded = read_frames(source, present, params.strategy, name, index)
    truth_path = rdshq.tar_path(root, rdshq.RENDER_TRUTH, clip_id)
    render_truth = rdshq.read_tar(fs, root, rdshq.RENDER_TRUTH, clip_id) if fs.exists(truth_path) else None
    records, unlabelled = [], 0
    with write_shard(output / image_shard(clip_id, output_camera(params, camera))) as shard:
        for frame in frames:
            record = frame_record(labels, params, camera, frame, render_truth)
            if record is None:
                unlabelled += 1
                continue
            ok, jpeg = cv2.imencode(".jpg", frame.bgr, [cv2.IMWRITE_JPEG_QUALITY, params.jpeg_quality])
            if not ok:
                raise RuntimeError(f"{name}: JPEG encoding failed for frame {frame.index}")
            shard.add(record["image_member"], jpeg.tobytes())
            records.append(record)
    write_records(output, clip_id, output_camera(params, camera), records)
    return ItemResult(clip_id, camera, len(records), index.frame_count, decoded, strategy, unlabelled,
                      missing_frames=tuple(missing))


def read_sequence_ids(path: str, params: ExtractParams) -> list[str]:
    fs, file_path = filesystem(path, params.s3_endpoint_url, params.s3_profile)
    text = fs.cat_file(file_path).decode()
    ids = [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]
    for clip_id in ids:
        rdshq.ClipId.parse(clip_id)  # raises with the bad id
    return ids


def curation_rate(outcome: Outcome, executor: str) -> dict[str, Any]:
    """How fast this run curated: frames written per second of wall time, overall and per core
    (``cores``: pool processes or cluster CPUs; on a machine shared with other work this is
    low by their share), and per CPU-second the items used (not slowed by other work; above
    the per-core rate when cores idle). Resumed and failed items add no frames."""
    frames = sum(r.frames_written for r in outcome.results)
    core_seconds = outcome.wall_s * outcome.cores

    def per(seconds: float) -> float | None:
        return round(frames / seconds, 3) if seconds else None

    return {"executor": executor, "cores": outcome.cores,
            "items_run": sum(not r.skipped_existing for r in outcome.results),
            "frames_written": frames, "wall_s": round(outcome.wall_s, 2), "cpu_s": round(outcome.cpu_s, 2),
            "frames_per_s": per(outcome.wall_s), "frames_per_core_s": per(core_seconds),
            "frames_per_cpu_s": per(outcome.cpu_s)}


def extract(params: ExtractParams, output: Path, metrics: Path | None = None,
            rate: Path | None = None) -> dict[str, Any]:
    """The `extract` stage over every (clip, camera); failures are counted, the rest completes.

    ``metrics`` gets the counts (the same on every run); ``rate`` the run's timing
    (``curation_rate``), kept apart so that a rerun leaves the stage's recorded outputs as
    they were."""
    if params.camera_model not in rdshq.CAMERA_MODELS:
        raise ValueError(f"camera_model must be one of {rdshq.CAMERA_MODELS}, got {params.camera_model!r}")
    fs, root = filesystem(params.input_root, params.s3_endpoint_url, params.s3_profile)
    clip_ids = (read_sequence_ids(params.sequence_ids_file, params) if params.sequence_ids_file
                else rdshq.list_clip_ids(fs, root))
    names = [output_camera(params, camera) for camera in params.cameras]
    if len(set(names)) < len(names):
        raise ValueError(f"extract.camera_names maps several of {list(params.cameras)} to one name: {names}")
    items = [(params, clip_id, camera, output) for clip_id in clip_ids for camera in params.cameras]
    labels = [f"{clip_id}/{camera}" for _, clip_id, camera, _ in items]
    outcome = run_items(extract_item, items, params.workers, "extract", labels, params.executor, params.ray_address)
    results: list[ItemResult] = outcome.results
    strategies: dict[str, int] = {}
    for result in results:
        if not result.skipped_existing:
            strategies[result.strategy] = strategies.get(result.strategy, 0) + 1
    summary = {
        "clips": len(clip_ids),
        "items": len(items),
        "items_failed": len(outcome.failures),
        "items_resumed": sum(r.skipped_existing for r in results),
        "frames_written": sum(r.frames_written for r in results),
        "frames_without_labels": sum(r.frames_without_labels for r in results),
        "video_frames": sum(r.video_frames for r in results),
        "frames_missing": sum(len(r.missing_frames) for r in results),
        "decoded_frames": sum(r.decoded_frames for r in results),
        "strategy": strategies,
    }
    gaps = [{"item": f"{r.clip_id}/{r.camera}", "missing_frames": list(r.missing_frames),
             "error": f"frames {list(r.missing_frames)} are not in the video (its timestamps skip them); not written"}
            for r in results if r.missing_frames]
    write_json(output / "failures.json", [{"item": f.item, "error": f.error} for f in outcome.failures] + gaps)
    if metrics:
        write_json(metrics, summary)
    if rate:
        write_json(rate, curation_rate(outcome, params.executor))
    return {**summary, "failures": outcome.failures}
