"""Exact frames of one (clip, camera) item from RDS-HQ videos plus one record each: what the
`extract` stage (``pipeline.extract``, docs/formats.md#extract) runs per item.

A frame's index comes from its presentation timestamp on the video's nominal rate, counting only
frames a player shows (see ``video``); targets the video lacks (dropped frames, or frames past
its end that the labels cover) are reported per item and count as failed frames, never replaced by
a neighbour. A frame's poses and objects are those of the 30 Hz pose
frame at the frame's time (``pose_frame_index``): the same number for 30 fps videos, three times
the video index for the 10 fps videos of Waymo conversions.

An item writes images/<clip_id>/<camera>.tar (its JPEGs, members <frame:06d>.jpg) and
records/<clip_id>/<camera>.json (its frame records, see ``frame_record``) under the output folder.

Labels are checked where they enter: intrinsics of the documented length (else the item fails),
camera and vehicle poses finite and rigid (else that frame fails), objects with a rigid pose and
finite positive sizes (else the object is dropped and counted by reason), a label frame that is
an object of tracks (else the frames that need it fail), a picture that is a uniform scale of the
intrinsics' size (else the item fails). Frames after the last
(or before the first) label frame are not written, since their objects are unknown; they are
counted as ``frames_without_labels``. Camera names in the outputs follow ``camera_names`` (names
in the clip's files -> output names).
"""

from __future__ import annotations

import bisect
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import fsspec
import numpy as np

from .. import rdshq
from ..checks import IMAGE_SIZE_AT, object_problem, pose_problem
from ..geometry.cameras import camera_from_record
from ..params import ExtractParams
from ..shards import write_shard
from ..video import DecodedFrame, VideoIndex, index_video, read_frames, sample_indices
from .interpolate import objects_at
from .records import write_records


class FrameError(rdshq.LayoutError):
    """One frame's labels are unusable; the frame is skipped, the rest of its item kept."""


@dataclass(frozen=True)
class ItemResult:
    """What one (clip, camera) item wrote; stored in its manifest so a resumed item counts too."""

    clip_id: str
    camera: str
    frames_written: int
    video_frames: int
    decoded_frames: int
    strategy: str
    frames_without_labels: int
    missing_frames: tuple[int, ...] = ()  # sampled indices the video lacks
    frame_failures: tuple[tuple[int, str], ...] = ()  # (frame index, error)
    dropped: tuple[tuple[str, str, str], ...] = ()  # (tar and member, track id, problem) per dropped object
    resumed: bool = False

    def to_json(self) -> dict[str, Any]:
        values = dataclasses.asdict(self)
        del values["resumed"]
        return values

    @classmethod
    def from_json(cls, values: dict[str, Any]) -> ItemResult:
        nested = {key: tuple(tuple(entry) for entry in values[key]) for key in ("frame_failures", "dropped")}
        nested["missing_frames"] = tuple(values["missing_frames"])
        return cls(**{**values, **nested, "resumed": True})


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


def checked_objects(objects: dict[int, dict[str, Any]], clip_id: str, url: str
                    ) -> tuple[dict[int, dict[str, Any]], list[tuple[str, str, str]], dict[int, str]]:
    """The label frames without their unsound objects (see ``checks.object_problem``),
    (tar and member, track id, problem) of each object dropped, and label frame -> error of each
    frame whose member is not an object of tracks: its objects are unknown, so the video frames
    that need it fail (``unusable_labels``) rather than be written without objects."""
    clean: dict[int, dict[str, Any]] = {}
    dropped: list[tuple[str, str, str]] = []
    unusable: dict[int, str] = {}
    source = rdshq.tar_path(url, "all_object_info", clip_id)
    for frame, tracks in sorted(objects.items()):
        key = f"{clip_id}.{rdshq.frame_key(frame, 'all_object_info', '.json')}"
        member = f"{source}: {key}"
        if not isinstance(tracks, dict):
            unusable[frame] = (f"{source}: member {key} (label frame {frame}): not an object of tracks "
                               f"({type(tracks).__name__})")
            continue
        clean[frame] = {}
        for track, info in tracks.items():
            found = object_problem(info)
            if found is None:
                clean[frame][track] = info
            else:
                field, problem = found
                dropped.append((member, str(track), f"{field} {problem}"))
    return clean, dropped, unusable


def unusable_labels(labels: rdshq.ClipLabels, pose_frame: int) -> str | None:
    """Why the objects at ``pose_frame`` are unknown: the label frame it is, or one of the two
    it is interpolated between, is unusable (``ClipLabels.unusable_objects``); else ``None``."""
    bad = labels.unusable_objects
    if not bad or pose_frame in labels.objects:
        return None
    if pose_frame in bad:
        return bad[pose_frame]
    frames = sorted({*labels.objects, *bad})
    position = bisect.bisect_left(frames, pose_frame)
    if not 0 < position < len(frames):
        return None  # outside the labelled span: unlabelled, not unusable
    return next((bad[f] for f in frames[position - 1:position + 1] if f in bad), None)


def frame_at(frame: DecodedFrame, pose_frame: int) -> str:
    """The frame as messages name it (its pose frame too where the numbers differ)."""
    return f"frame {pose_frame}" if pose_frame == frame.index else \
        f"pose frame {pose_frame}, video frame {frame.index} at {frame.time_s:.6f} s"


def checked_pose(pose: Any, url: str, attribute: str, clip_id: str, key: str, frame: DecodedFrame,
                 pose_frame: int) -> np.ndarray:
    """``pose`` as a 4x4 array, or ``FrameError`` naming the tar, member and frame."""
    at = frame_at(frame, pose_frame)
    if pose is None:
        raise FrameError(f"{rdshq.tar_path(url, attribute, clip_id)}: no member {clip_id}.{key} ({at})")
    if (problem := pose_problem(pose)) is not None:
        raise FrameError(f"{rdshq.tar_path(url, attribute, clip_id)}: member {clip_id}.{key} ({at}): "
                         f"{attribute} {problem}")
    return np.asarray(pose, dtype=np.float64)


def frame_record(labels: rdshq.ClipLabels, params: ExtractParams, camera: str, frame: DecodedFrame,
                 render_truth: dict[str, Any] | None = None, url: str | None = None) -> dict[str, Any] | None:
    """One frame's record; ``None`` for a frame outside the labelled span (its objects unknown).
    ``FrameError`` naming the tar and member when the frame's camera or vehicle pose is missing
    or not a rigid transform (``url``: the input root named in messages).

    Where the clip carries a renderer's truth (synthetic clips), each object gets its entry for
    this frame and camera under ``render_truth`` (``None``: not in view)."""
    url = url if url is not None else params.input_root.rstrip("/")
    height, width = frame.bgr.shape[:2]
    clip = rdshq.ClipId.parse(labels.clip_id)
    pose_frame = round(frame.time * rdshq.POSE_RATE_HZ)
    if (problem := unusable_labels(labels, pose_frame)) is not None:
        raise FrameError(f"{problem}; the objects of {frame_at(frame, pose_frame)} are unknown")
    objects = objects_at(labels.objects, pose_frame)
    if objects is None:
        return None
    pose = checked_pose(labels.camera_poses[camera].get(pose_frame), url, "pose", labels.clip_id,
                        rdshq.frame_key(pose_frame, "pose", f".{camera}.npy"), frame, pose_frame)
    vehicle = checked_pose(labels.vehicle_poses.get(pose_frame), url, "vehicle_pose", labels.clip_id,
                           rdshq.frame_key(pose_frame, "vehicle_pose", ".npy"), frame, pose_frame)
    name = output_camera(params, camera)
    record = {
        "clip_id": labels.clip_id,
        "camera": name,
        "camera_model": params.camera_model,
        "frame_index": frame.index,
        "pose_frame_index": pose_frame,
        "timestamp_s": round(frame.time_s, 6),
        "timestamp_us": None if clip.start_us is None else clip.start_us + round(frame.time * 1_000_000),
        "image_shard": image_shard(labels.clip_id, name),
        "image_member": image_member(frame.index),
        "width": width,
        "height": height,
        "intrinsics": intrinsics_for_image(params.camera_model, labels.intrinsics[camera], width, height),
        "camera_to_world": pose.tolist(),
        "vehicle_to_world": vehicle.tolist(),
        "objects": [{"track_id": track, **info} for track, info in sorted(objects.items())],
    }
    if render_truth is not None:
        in_view = render_truth.get(f"{pose_frame:06d}.{rdshq.RENDER_TRUTH}.json", {}).get(camera, {})
        for obj in record["objects"]:
            obj["render_truth"] = in_view.get(obj["track_id"])
    return record


def sampled_targets(index: VideoIndex, labels: rdshq.ClipLabels, skip_frames: int) -> list[int]:
    """Every ``skip_frames``-th frame index of the video, and beyond its last frame those its
    labels still cover: a video cut short lacks them (they are missing, not silently absent)."""
    label_frames = [*labels.objects, *labels.unusable_objects]
    first, last = min(label_frames), max(label_frames)

    def pose_frame(index_: int) -> int:
        return round(index_ / index.fps * rdshq.POSE_RATE_HZ)

    span = index.span
    while pose_frame(span) <= last:
        span += 1
    return [t for t in sample_indices(span, skip_frames) if t < index.span or pose_frame(t) >= first]


PICTURE_TOLERANCE_PX = 2  # a side of a scaled video rounded to an even size moves by up to this


def check_picture_size(labels: rdshq.ClipLabels, model: str, camera: str, frame: DecodedFrame, name: str,
                       url: str) -> None:
    """``LayoutError`` naming the video and the intrinsics when the video's picture is not a
    uniform scale of the size its intrinsics are calibrated for (a crop or a stretch: fx and fy
    would be scaled apart). Videos stored smaller than that size are accepted, scaled."""
    height, width = frame.bgr.shape[:2]
    native_w, native_h = (float(labels.intrinsics[camera][i]) for i in IMAGE_SIZE_AT[model])
    off = min(abs(width - height * native_w / native_h), abs(height - width * native_h / native_w))
    if off <= PICTURE_TOLERANCE_PX:
        return
    tar = rdshq.tar_path(url, f"{model}_intrinsic", labels.clip_id)
    raise rdshq.LayoutError(
        f"{name}: picture {width}x{height} (aspect {width / height:.3f}) is not a uniform scale of the "
        f"{native_w:g}x{native_h:g} (aspect {native_w / native_h:.3f}) that {tar}: member "
        f"{labels.clip_id}.{model}_intrinsic.{camera}.npy is calibrated for (cropped or stretched?); fx and fy "
        "would scale apart")


def extract_frames(params: ExtractParams, fs: fsspec.AbstractFileSystem, root: str, url: str, clip_id: str,
                   camera: str, source: str | bytes, name: str, output: Path) -> ItemResult:
    """Decode, check and write one item's frames: its image shard, then its records file."""
    labels = rdshq.read_clip_labels(fs, root, clip_id, (camera,), params.camera_model)
    labels.objects, dropped, labels.unusable_objects = checked_objects(labels.objects, clip_id, url)
    index = index_video(source, name)
    targets = sampled_targets(index, labels, params.skip_frames)
    missing = index.missing(targets)
    present = [t for t in targets if t not in missing]
    frames, strategy, decoded = read_frames(source, present, params.strategy, name, index)
    if frames:
        check_picture_size(labels, params.camera_model, camera, frames[0], name, url)
    truth_path = rdshq.tar_path(root, rdshq.RENDER_TRUTH, clip_id)
    render_truth = rdshq.read_tar(fs, root, rdshq.RENDER_TRUTH, clip_id) if fs.exists(truth_path) else None
    records, unlabelled, failed = [], 0, []
    named = output_camera(params, camera)
    with write_shard(output / image_shard(clip_id, named)) as shard:
        for frame in frames:
            try:
                record = frame_record(labels, params, camera, frame, render_truth, url)
            except FrameError as exc:
                failed.append((frame.index, str(exc)))
                continue
            if record is None:
                unlabelled += 1
                continue
            ok, jpeg = cv2.imencode(".jpg", frame.bgr, [cv2.IMWRITE_JPEG_QUALITY, params.jpeg_quality])
            if not ok:
                raise RuntimeError(f"{name}: JPEG encoding failed for frame {frame.index}")
            shard.add(record["image_member"], jpeg.tobytes())
            records.append(record)
    write_records(output, clip_id, named, records)
    return ItemResult(clip_id, camera, len(records), index.frame_count, decoded, strategy, unlabelled,
                      tuple(missing), tuple(failed), tuple(dropped))
