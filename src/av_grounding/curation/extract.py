"""The `extract` stage (docs/formats.md#extract): exact frames from RDS-HQ videos plus one record each.

A frame's index comes from its presentation timestamp on the video's nominal rate, counting only
frames a player shows (see ``video``); targets the video lacks (dropped frames, or frames past
its end that the labels cover) are reported per item and count as failed frames, never replaced by
a neighbour. A frame's poses and objects are those of the 30 Hz pose
frame at the frame's time (``pose_frame_index``): the same number for 30 fps videos, three times
the video index for the 10 fps videos of Waymo conversions.

Work is split per (clip, camera). Output layout under the output folder:
  images/<clip_id>/<camera>.tar       the item's JPEGs, members <frame:06d>.jpg (see ``shards``:
                                      one file per item instead of one per frame keeps DVC
                                      push/pull fast)
  records/<clip_id>/<camera>.json     list of frame records (see ``frame_record``); each names its
                                      image by ``image_shard`` (path under the output folder) and
                                      ``image_member``
  manifests/<clip_id>/<camera>.json   written last: the sha256 of every input file the item read,
                                      the parameters that shape its output, the code
                                      that extracts (``sources.code_digest``), and its counts
  failures.json                       items and frames that failed, frames the videos lack,
                                      objects dropped (first few)

A rerun reuses an item only when its manifest matches this run's inputs and parameters, and
redoes it otherwise; items no longer selected are removed, so the output and the metrics always
describe exactly this run's items.

Labels are checked where they enter: intrinsics of the documented length (else the item fails),
camera and vehicle poses finite and rigid (else that frame fails), objects with a rigid pose and
finite positive sizes (else the object is dropped and counted by reason), a label frame that is
an object of tracks (else the frames that need it fail), a picture that is a uniform scale of the
intrinsics' size (else the item fails). Frames after the last
(or before the first) label frame are not written, since their objects are unknown; they are
counted as ``frames_without_labels``. Camera names in the outputs follow ``camera_names`` (names
in the clip's files -> output names), which must be plain file names, one per camera.
"""

from __future__ import annotations

import bisect
import dataclasses
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import fsspec
import numpy as np

from .. import rdshq
from ..checks import IMAGE_SIZE_AT, object_problem, pose_problem
from ..errors import check_failed_fraction
from ..executors import Failure, Outcome, run_items
from ..geometry.cameras import camera_from_record
from ..params import ExtractParams, ParamsError
from ..shards import write_shard
from ..sources import code_digest
from ..storage import (StorageError, as_stored, file_digest, filesystem, is_local, reading, remove_partials,
                       stored_json, write_json)
from ..video import DecodedFrame, VideoIndex, index_video, read_frames, sample_indices
from .interpolate import objects_at
from .records import records_path, write_records


MANIFEST_PARAMS = ("camera_model", "skip_frames", "jpeg_quality")  # what shapes an item's output
SHOWN_DROPPED = 20  # dropped objects named in failures.json (all are counted in the metrics)


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
    def from_json(cls, values: dict[str, Any]) -> "ItemResult":
        nested = {key: tuple(tuple(entry) for entry in values[key]) for key in ("frame_failures", "dropped")}
        nested["missing_frames"] = tuple(values["missing_frames"])
        return cls(**{**values, **nested, "resumed": True})


def image_shard(clip_id: str, camera: str) -> str:
    return f"images/{clip_id}/{camera}.tar"


def image_member(frame: int) -> str:
    return f"{frame:06d}.jpg"


def manifest_path(root: Path, clip_id: str, camera: str) -> Path:
    return Path(root) / "manifests" / clip_id / f"{camera}.json"


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
    dropped, unusable = [], {}
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
        "timestamp_us": None if clip.start_us is None else clip.start_us + int(round(frame.time * 1_000_000)),
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


def item_inputs(fs: fsspec.AbstractFileSystem, root: str, params: ExtractParams, clip_id: str, camera: str,
                video: str, source: str | bytes) -> dict[str, str]:
    """Path under the input root -> sha256, of every file the item reads (video ``source``:
    its path, or its bytes when they were fetched already)."""
    attributes = ["pose", "vehicle_pose", f"{params.camera_model}_intrinsic", "all_object_info"]
    paths = [rdshq.tar_path(root, attribute, clip_id) for attribute in attributes]
    truth = rdshq.tar_path(root, rdshq.RENDER_TRUTH, clip_id)
    paths += [truth] if fs.exists(truth) else []
    digests = {path: file_digest(fs, path) for path in paths}
    digests[video] = file_digest(fs, video, source if isinstance(source, bytes) else None)
    return {path[len(root) + 1:]: digest for path, digest in sorted(digests.items())}


def reusable(output: Path, clip_id: str, camera: str, expected: dict[str, Any]) -> ItemResult | None:
    """The stored result of an item whose manifest matches ``expected`` and whose files exist."""
    stored = stored_json(manifest_path(output, clip_id, camera))
    complete = records_path(output, clip_id, camera).is_file() and (output / image_shard(clip_id, camera)).is_file()
    if not complete or not isinstance(stored, dict) or {key: stored.get(key) for key in expected} != as_stored(expected):
        return None
    try:
        return ItemResult.from_json(stored["result"])
    except (KeyError, TypeError):
        return None  # a manifest of another version: redo the item


def extract_item(params: ExtractParams, clip_id: str, camera: str, output: Path) -> ItemResult:
    """Extract every ``skip_frames``-th frame of one clip's camera video (``camera`` as the clip's
    files name it), or reuse the item's earlier output when its manifest matches this run's inputs
    and parameters."""
    fs, root = filesystem(params.input_root, params.s3_endpoint_url, params.s3_profile)
    url = params.input_root.rstrip("/")
    video = rdshq.video_path(root, params.camera_model, camera, clip_id)
    name = rdshq.video_path(url, params.camera_model, camera, clip_id)
    if not fs.exists(video):
        raise rdshq.LayoutError(f"{name}: missing")
    source: str | bytes = video if is_local(fs) else fs.cat_file(video)
    expected = {"inputs": item_inputs(fs, root, params, clip_id, camera, video, source),
                "params": {key: getattr(params, key) for key in MANIFEST_PARAMS}, "code_sha256": code_digest(__name__)}
    named = output_camera(params, camera)
    previous = reusable(output, clip_id, named, expected)
    if previous is not None:
        return previous
    manifest_path(output, clip_id, named).unlink(missing_ok=True)  # the old output no longer matches
    records_path(output, clip_id, named).unlink(missing_ok=True)
    result = extract_frames(params, fs, root, url, clip_id, camera, source, name, output)
    write_json(manifest_path(output, clip_id, named), {**expected, "result": result.to_json()})
    return result


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


def read_sequence_ids(path: str, params: ExtractParams) -> list[str]:
    """Clip ids of the ``sequence_ids_file`` (one per line, ``#`` comments); ``ParamsError``
    naming the key, the file and the line of a malformed id."""
    fs, file_path = filesystem(path, params.s3_endpoint_url, params.s3_profile)
    try:
        with reading(path):
            text = fs.cat_file(file_path).decode()
    except (OSError, UnicodeDecodeError) as exc:
        raise ParamsError(f"extract.sequence_ids_file {path}: unreadable: {exc}") from exc
    ids = []
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip() and not line.startswith("#"):
            try:
                ids.append(str(rdshq.ClipId.parse(line.strip())))
            except rdshq.LayoutError as exc:
                raise ParamsError(f"extract.sequence_ids_file {path}, line {number}: {exc}") from None
    return ids


def select_clips(fs: fsspec.AbstractFileSystem, root: str, params: ExtractParams) -> tuple[list[str], list[Failure]]:
    """The clips to extract, and a failure for each listed clip that cannot be (absent, or an
    id that is not ``<session>_<start_us>_<end_us>``). ``ParamsError`` when the sequence-ids
    file names no clip under the root."""
    url = params.input_root.rstrip("/")
    if is_local(fs) and Path(root).is_file():
        raise ParamsError(f"extract.input_root {url}: a file, not a folder (an RDS-HQ root holds all_object_info/, "
                          "pose/, ... and the video folders)")
    present = rdshq.list_clip_ids(fs, root, url)
    skipped = []
    if params.sequence_ids_file:
        listed = read_sequence_ids(params.sequence_ids_file, params)
        chosen = [clip_id for clip_id in listed if clip_id in present]
        if not chosen:
            raise ParamsError(f"extract.sequence_ids_file {params.sequence_ids_file}: none of its {len(listed)} clip id(s) "
                              f"is under {url} (it holds {len(present)} clips)")
        skipped = [Failure(clip_id, f"{rdshq.tar_path(url, 'all_object_info', clip_id)}: missing (listed in "
                                    f"{params.sequence_ids_file})") for clip_id in listed if clip_id not in present]
        return chosen, skipped
    chosen = []
    for clip_id in present:
        try:
            rdshq.ClipId.parse(clip_id)
            chosen.append(clip_id)
        except rdshq.LayoutError as exc:
            skipped.append(Failure(clip_id, f"{rdshq.tar_path(url, 'all_object_info', clip_id)}: {exc}"))
    return chosen, skipped


def name_problem(name: str) -> str | None:
    """Why a camera's output name cannot name its files (``records/<clip_id>/<name>.json``, ...):
    it must be a plain file name, not a path."""
    if not name:
        return "is empty"
    if "/" in name or "\\" in name or "\0" in name:
        return "is a path, not a plain file name"
    if name.startswith("."):
        return "starts with '.' (a hidden file, or a path like '..')"
    return None


def check_camera_names(params: ExtractParams) -> None:
    """``ParamsError`` naming the key when an output camera name is not a plain file name or two
    cameras would get one name (their files would overwrite each other)."""
    for camera, name in params.camera_names.items():
        if (problem := name_problem(name)) is not None:
            raise ParamsError(f"extract.camera_names: {camera}: {name!r} {problem}; camera names become file names")
    for camera in params.cameras:
        if camera not in params.camera_names and (problem := name_problem(camera)) is not None:
            raise ParamsError(f"extract.cameras: {camera!r} {problem}; camera names become file names")
    renamed = [*params.camera_names.values(), *(c for c in params.cameras if c not in params.camera_names)]
    for name in sorted({n for n in renamed if renamed.count(n) > 1}):
        sources = sorted({c for c in params.camera_names if params.camera_names[c] == name} |
                         ({name} & set(params.cameras) - set(params.camera_names)))
        raise ParamsError(f"extract.camera_names: {sources} would all be named {name!r}; their files would overwrite "
                          "each other")


def check_cameras(fs: fsspec.AbstractFileSystem, root: str, params: ExtractParams) -> None:
    """``ParamsError`` naming ``extract.cameras`` when it is empty, lists a camera twice or one
    without a video folder, or ``extract.camera_names`` when an output name is not a plain file
    name or two cameras would get one (``check_camera_names``)."""
    if not params.cameras:
        raise ParamsError("extract.cameras: empty; name at least one camera to extract")
    twice = sorted({camera for camera in params.cameras if params.cameras.count(camera) > 1})
    if twice:
        raise ParamsError(f"extract.cameras: {twice} listed more than once in {list(params.cameras)}")
    check_camera_names(params)
    url = params.input_root.rstrip("/")
    missing = [camera for camera in params.cameras if not fs.isdir(f"{root}/{params.camera_model}_{camera}")]
    if missing:
        prefix = f"{params.camera_model}_"
        found = sorted(Path(n).name[len(prefix):] for n in fs.ls(root, detail=False)
                       if Path(n).name.startswith(prefix) and Path(n).name != f"{prefix}intrinsic")
        if not found:
            raise ParamsError(f"extract.camera_model {params.camera_model}: no {prefix}<camera> video folders under "
                              f"{url}")
        raise ParamsError(f"extract.cameras: no video folder {url}/{prefix}<camera> for {missing}; "
                          f"cameras with {params.camera_model} videos there: {found}")


def check_writable(folder: Path) -> None:
    """``StorageError`` naming ``folder`` when it cannot be made or written (a read-only file
    system, a file in its path), before any item runs. The probe file is hidden and named as a
    partial one, so a killed run leaves nothing a rerun keeps."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        handle, probe = tempfile.mkstemp(prefix=".write-check.", suffix=".tmp", dir=folder)
        os.close(handle)
        os.unlink(probe)
    except OSError as exc:
        at = f": {exc.filename}" if exc.filename else ""
        raise StorageError(f"{folder}: cannot write the output here ({exc.strerror or exc}{at}); nothing extracted") \
            from exc


def remove_unselected(output: Path, kept: set[tuple[str, str]]) -> None:
    """Delete the records, shard and manifest of every item not in ``kept`` (earlier runs' items
    that this run did not select, or failed on), so the output holds this run's items only."""
    for folder, suffix in (("records", ".json"), ("images", ".tar"), ("manifests", ".json")):
        for path in sorted((output / folder).glob(f"*/*{suffix}")):
            if (path.parent.name, path.name[: -len(suffix)]) not in kept:
                path.unlink()
        for clip_folder in sorted((output / folder).glob("*")):
            if clip_folder.is_dir() and not any(clip_folder.iterdir()):
                clip_folder.rmdir()


def failure_report(skipped: list[Failure], failed: list[Failure], results: list[ItemResult]) -> dict[str, Any]:
    """What failures.json holds: failed items and frames, frames the videos lack, dropped objects
    (counted by reason, the first ``SHOWN_DROPPED`` named)."""
    dropped = sorted({entry for result in results for entry in result.dropped})  # each clip's labels once
    by_reason: dict[str, int] = {}
    for _, _, problem in dropped:
        reason = problem.split(" (")[0]
        by_reason[reason] = by_reason.get(reason, 0) + 1
    return {
        "items": [{"item": f.item, "error": f.error} for f in [*skipped, *failed]],
        "frames": [{"item": f"{r.clip_id}/{r.camera}", "frame": frame, "error": error}
                   for r in results for frame, error in r.frame_failures],
        "missing_frames": [{"item": f"{r.clip_id}/{r.camera}", "missing_frames": list(r.missing_frames),
                            "error": f"frames {list(r.missing_frames)} are not in the video (its timestamps skip "
                                     "them, or it ends before its labels do); not written"}
                           for r in results if r.missing_frames],
        "objects_dropped": dict(sorted(by_reason.items())),
        "objects_dropped_first": [{"where": where, "track_id": track, "problem": problem}
                                  for where, track, problem in dropped[:SHOWN_DROPPED]],
    }


def curation_rate(outcome: Outcome, executor: str) -> dict[str, Any]:
    """How fast this run curated: frames written per second of wall time, overall and per core
    (``cores``: pool processes or cluster CPUs; on a machine shared with other work this is
    low by their share), and per CPU-second the items used (not slowed by other work; above
    the per-core rate when cores idle). Resumed and failed items add no frames."""
    ran = [r for r in outcome.results if not r.resumed]
    frames = sum(r.frames_written for r in ran)
    core_seconds = outcome.wall_s * outcome.cores

    def per(seconds: float) -> float | None:
        return round(frames / seconds, 3) if seconds else None

    return {"executor": executor, "cores": outcome.cores,
            "items_run": len(ran), "items_resumed": len(outcome.results) - len(ran),
            "frames_written": frames, "wall_s": round(outcome.wall_s, 2), "cpu_s": round(outcome.cpu_s, 2),
            "frames_per_s": per(outcome.wall_s), "frames_per_core_s": per(core_seconds),
            "frames_per_cpu_s": per(outcome.cpu_s)}


def extract(params: ExtractParams, output: Path, metrics: Path | None = None,
            timing: Path | None = None) -> dict[str, Any]:
    """The `extract` stage over every (clip, camera). Parameter errors fail at once, before any
    item runs; item and frame failures are counted, and fail the stage (``StageFailed``) when
    more than ``max_failed_fraction`` of the items, or of the frames, failed.

    ``metrics`` gets the counts of the whole output (the same on every run, resumed or not);
    ``timing`` the run's timing and the items it resumed (``curation_rate``), kept apart so that
    a rerun leaves the stage's recorded outputs as they were."""
    fs, root = filesystem(params.input_root, params.s3_endpoint_url, params.s3_profile)
    with reading(params.input_root):
        clip_ids, skipped = select_clips(fs, root, params)
        check_cameras(fs, root, params)
    for folder in [output, *(Path(path).parent for path in (metrics, timing) if path)]:
        check_writable(folder)
    remove_partials(output)
    items = [(params, clip_id, camera, output) for clip_id in clip_ids for camera in params.cameras]
    labels = [f"{clip_id}/{camera}" for _, clip_id, camera, _ in items]
    outcome = run_items(extract_item, items, params.workers, "extract", labels, params.executor, params.ray_address)
    results: list[ItemResult] = outcome.results
    remove_unselected(output, {(r.clip_id, output_camera(params, r.camera)) for r in results})
    report = failure_report(skipped, outcome.failures, results)
    strategies: dict[str, int] = {}
    for result in results:
        strategies[result.strategy] = strategies.get(result.strategy, 0) + 1
    summary = {
        "clips": len(clip_ids),
        "items": len(items) + len(skipped),
        "items_failed": len(outcome.failures) + len(skipped),
        "frames_written": sum(r.frames_written for r in results),
        "frames_failed": len(report["frames"]),
        "frames_without_labels": sum(r.frames_without_labels for r in results),
        "objects_dropped": report["objects_dropped"],
        "video_frames": sum(r.video_frames for r in results),
        "frames_missing": sum(len(r.missing_frames) for r in results),
        "decoded_frames": sum(r.decoded_frames for r in results),
        "strategy": dict(sorted(strategies.items())),
    }
    write_json(output / "failures.json", report)
    if metrics:
        write_json(metrics, summary)
    if timing:
        write_json(timing, curation_rate(outcome, params.executor))
    frame_failures = [Failure(f"{f['item']} frame {f['frame']}", f["error"]) for f in report["frames"]]
    lacking = [Failure(m["item"], m["error"]) for m in report["missing_frames"]]  # one line per item
    lost = [*(f.describe() for f in frame_failures),  # failed and missing frames count alike
            *(f"{m['item']} frame {frame}: not in the video" for m in report["missing_frames"]
              for frame in m["missing_frames"])]
    key = "extract.max_failed_fraction"
    check_failed_fraction([f.describe() for f in [*skipped, *outcome.failures]], summary["items"],
                          params.max_failed_fraction, key, output / "failures.json")
    check_failed_fraction(lost, summary["frames_written"] + len(lost), params.max_failed_fraction, key,
                          output / "failures.json")
    resumed = sum(r.resumed for r in results)  # what this run did, not what the output is: not a metric
    return {**summary, "items_resumed": resumed,
            "failures": [*skipped, *outcome.failures, *frame_failures, *lacking]}
