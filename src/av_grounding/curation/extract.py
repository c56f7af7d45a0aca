"""The `extract` stage (docs/formats.md#extract): exact frames from RDS-HQ videos plus one record each.

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

Frames after the last (or before the first) label frame are not written, since their objects are
unknown; they are counted as ``frames_without_labels``.
  failures.json                       items that failed, with the file and the problem
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from .. import rdshq
from ..executors import run_items
from ..geometry.cameras import PinholeCamera
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


def image_shard(clip_id: str, camera: str) -> str:
    return f"images/{clip_id}/{camera}.tar"


def image_member(frame: int) -> str:
    return f"{frame:06d}.jpg"


def intrinsics_for_image(model: str, values: np.ndarray, width: int, height: int) -> list[float]:
    """Intrinsics matching the decoded image size (videos may be stored below native size)."""
    if model == "pinhole":
        return PinholeCamera.from_array(values).resized(width, height).to_array().tolist()
    native_w, native_h = values[2], values[3]
    if (native_w, native_h) != (width, height):
        raise ValueError(f"f-theta intrinsics are for {native_w:.0f}x{native_h:.0f} but the video "
                         f"is {width}x{height}; rescaling f-theta polynomials is not supported")
    return values.tolist()


def frame_record(labels: rdshq.ClipLabels, params: ExtractParams, camera: str, frame: DecodedFrame,
                 render_truth: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """One frame's record; ``None`` for a frame outside the labelled span (its objects unknown).

    Where the clip carries a renderer's truth (synthetic clips), each object gets its entry for
    this frame and camera under ``render_truth`` (``None``: not in view)."""
    height, width = frame.bgr.shape[:2]
    clip = rdshq.ClipId.parse(labels.clip_id)
    objects = objects_at(labels.objects, frame.index)
    if objects is None:
        return None
    pose = labels.camera_poses[camera].get(frame.index)
    vehicle = labels.vehicle_poses.get(frame.index)
    if pose is None or vehicle is None:
        raise rdshq.LayoutError(f"clip {labels.clip_id}: no camera or vehicle pose for frame {frame.index}")
    record = {
        "clip_id": labels.clip_id,
        "camera": camera,
        "camera_model": params.camera_model,
        "frame_index": frame.index,
        "timestamp_s": round(frame.time_s, 6),
        "timestamp_us": clip.start_us + int(round(frame.time_s * 1e6)),
        "image_shard": image_shard(labels.clip_id, camera),
        "image_member": image_member(frame.index),
        "width": width,
        "height": height,
        "intrinsics": intrinsics_for_image(params.camera_model, labels.intrinsics[camera], width, height),
        "camera_to_world": np.asarray(pose, float).tolist(),
        "vehicle_to_world": np.asarray(vehicle, float).tolist(),
        "objects": [{"track_id": track, **info} for track, info in sorted(objects.items())],
    }
    if render_truth is not None:
        in_view = render_truth.get(f"{frame.index:06d}.{rdshq.RENDER_TRUTH}.json", {}).get(camera, {})
        for obj in record["objects"]:
            obj["render_truth"] = in_view.get(obj["track_id"])
    return record


def extract_item(params: ExtractParams, clip_id: str, camera: str, output: Path) -> ItemResult:
    """Extract every ``skip_frames``-th frame of one clip's camera video."""
    done = records_path(output, clip_id, camera)
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
    targets = sample_indices(index.frame_count, params.skip_frames)
    frames, strategy, decoded = read_frames(source, targets, params.strategy, name, index)
    truth_path = rdshq.tar_path(root, rdshq.RENDER_TRUTH, clip_id)
    render_truth = rdshq.read_tar(fs, root, rdshq.RENDER_TRUTH, clip_id) if fs.exists(truth_path) else None
    records, unlabelled = [], 0
    with write_shard(output / image_shard(clip_id, camera)) as shard:
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
    write_records(output, clip_id, camera, records)
    return ItemResult(clip_id, camera, len(records), index.frame_count, decoded, strategy, unlabelled)


def read_sequence_ids(path: str, params: ExtractParams) -> list[str]:
    fs, file_path = filesystem(path, params.s3_endpoint_url, params.s3_profile)
    text = fs.cat_file(file_path).decode()
    ids = [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]
    for clip_id in ids:
        rdshq.ClipId.parse(clip_id)  # raises with the bad id
    return ids


def extract(params: ExtractParams, output: Path, metrics: Path | None = None) -> dict[str, Any]:
    """The `extract` stage over every (clip, camera); failures are counted, the rest completes."""
    if params.camera_model not in rdshq.CAMERA_MODELS:
        raise ValueError(f"camera_model must be one of {rdshq.CAMERA_MODELS}, got {params.camera_model!r}")
    fs, root = filesystem(params.input_root, params.s3_endpoint_url, params.s3_profile)
    clip_ids = (read_sequence_ids(params.sequence_ids_file, params) if params.sequence_ids_file
                else rdshq.list_clip_ids(fs, root))
    items = [(params, clip_id, camera, output) for clip_id in clip_ids for camera in params.cameras]
    labels = [f"{clip_id}/{camera}" for _, clip_id, camera, _ in items]
    outcome = run_items(extract_item, items, params.workers, "extract", labels)
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
        "decoded_frames": sum(r.decoded_frames for r in results),
        "strategy": strategies,
    }
    write_json(output / "failures.json", [{"item": f.item, "error": f.error} for f in outcome.failures])
    if metrics:
        write_json(metrics, summary)
    return {**summary, "failures": outcome.failures}
