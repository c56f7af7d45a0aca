"""The RDS-HQ clip layout (docs/formats.md#rds-hq-input): one WebDataset-style tar per attribute and clip.

``<root>/<attribute>/<clip_id>.tar`` holds members ``<clip_id>.<key>`` (a leading ``./`` is
accepted); ``.npy`` members are ``np.save`` arrays and ``.json`` members JSON objects; members of
other types (``.txt`` timestamps of Waymo conversions) are skipped. Videos live in
``<root>/<camera_model>_<camera>/<clip_id>.mp4``.

Poses are keyed by frame numbers on a 30 Hz clock (``POSE_RATE_HZ``) and object labels by the
same numbers every third frame (10 Hz), whatever the video's own rate: NVIDIA's toolkit converts
Waymo Open segments into this layout with 10 fps videos, so video frame k is pose frame 3k there.
"""

from __future__ import annotations

import io
import json
import re
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import fsspec
import numpy as np

from .checks import intrinsics_problem
from .errors import PipelineError
from .shards import tar_member
from .storage import atomic_write_bytes, canonical, dumps_json

CAMERAS: tuple[str, ...] = (
    "camera_front_wide_120fov",
    "camera_cross_right_120fov",
    "camera_rear_right_70fov",
    "camera_rear_tele_30fov",
    "camera_rear_left_70fov",
    "camera_cross_left_120fov",
    "camera_front_tele_30fov",
)
CAMERA_MODELS: tuple[str, ...] = ("pinhole", "ftheta")
# Written by `synthesize` beside the standard attributes: what the renderer knows per frame.
RENDER_TRUTH = "render_truth"
POSE_RATE_HZ = 30  # the clock of pose and label frame numbers

_RDSHQ_ID = re.compile(r"^(?P<session>[0-9A-Za-z-]+)_(?P<start>\d+)_(?P<end>\d+)$")
_WAYMO_ID = re.compile(r"^(?P<session>\d+)_(?P<start>\d+_\d{3})_(?P<end>\d+_\d{3})$")


class LayoutError(PipelineError, ValueError):
    """A clip file is missing or malformed; the message names the file."""


@dataclass(frozen=True)
class ClipId:
    """A clip id in one of the two forms real clips come in:

    - RDS-HQ: ``<session_uuid>_<start_us>_<end_us>``, e.g.
      ``2d23a1f4-c269-46aa-8e7d-1bb595d1e421_2445376400000_2445396400000``;
    - Waymo Open segments converted by NVIDIA's toolkit: the segment's context name
      ``<run>_<start>_<ms>_<end>_<ms>``, e.g. ``10247954040621004675_2180_000_2200_000``; it
      carries no start time in microseconds (``start_us`` and ``end_us`` are None).

    Neither may contain a dot: tar members are named ``<clip_id>.<key>`` and readers split the
    name at its first dot.
    """

    text: str
    session: str
    start_us: int | None = None
    end_us: int | None = None

    @classmethod
    def parse(cls, text: str) -> ClipId:
        """Raises ``LayoutError`` saying what is wrong with ``text``."""
        if "." in text:
            raise LayoutError(f"clip id {text!r} contains a '.': tar members are named '<clip_id>.<key>' "
                              f"and split at the first '.', so a clip id cannot hold one; rename the clip")
        if match := _RDSHQ_ID.match(text):
            if int(match["end"]) <= int(match["start"]):
                raise LayoutError(f"clip id {text!r}: end time {match['end']} us is not after start time "
                                  f"{match['start']} us")
            return cls(text, match["session"], int(match["start"]), int(match["end"]))
        if match := _WAYMO_ID.match(text):
            return cls(text, match["session"])
        raise LayoutError(f"clip id {text!r} is neither '<session_uuid>_<start_us>_<end_us>' (RDS-HQ) nor "
                          f"'<run>_<start>_<ms>_<end>_<ms>' (a Waymo segment converted by NVIDIA's toolkit)")

    def __str__(self) -> str:
        return self.text


def tar_path(root: str, attribute: str, clip_id: str) -> str:
    return f"{root}/{attribute}/{clip_id}.tar"


INTRINSIC_ATTRIBUTES = ("pinhole_intrinsic.", "ftheta_intrinsic.")


def video_path(root: str, camera_model: str, camera: str, clip_id: str) -> str:
    return f"{root}/{camera_model}_{camera}/{clip_id}.mp4"


def encode_tar(clip_id: str, members: dict[str, Any]) -> bytes:
    """A deterministic tar (sorted members, zero mtimes and owners) of ``.npy`` / ``.json`` members,
    their floats stored as ``storage.canonical`` rounds them (intrinsics exactly as given)."""
    ClipId.parse(clip_id)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for key in sorted(members):
            value = members[key]
            if key.endswith(".npy"):
                payload = io.BytesIO()
                array = np.asarray(value)  # intrinsics as given: see storage.EXACT_KEYS
                np.save(payload, array if key.startswith(INTRINSIC_ATTRIBUTES) else canonical(array),
                        allow_pickle=False)
                data = payload.getvalue()
            elif key.endswith(".json"):
                data = dumps_json(value, compact=True).encode()
            else:
                raise LayoutError(f"member key {key!r} must end in .npy or .json")
            archive.addfile(tar_member(f"{clip_id}.{key}", len(data)), io.BytesIO(data))
    return buffer.getvalue()


def decode_tar(data: bytes, clip_id: str, source: str) -> dict[str, Any]:
    """Members of one clip tar keyed without the ``<clip_id>.`` prefix (or ``./<clip_id>.``)."""
    try:
        ClipId.parse(clip_id)
    except LayoutError as exc:
        raise LayoutError(f"{source}: {exc}") from None
    members: dict[str, Any] = {}
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as archive:
            for info in archive:
                if not info.isfile():
                    continue
                key = _member_key(info.name, clip_id, source)
                if key in members:  # two copies (or ``x`` and ``./x``): which one is meant is unknown
                    raise LayoutError(f"{source}: member {clip_id}.{key} appears twice (last as {info.name!r}); "
                                      "a clip tar holds each member once")
                member = archive.extractfile(info)
                assert member is not None  # a regular file (isfile above)
                payload = member.read()
                if key.endswith(".npy"):
                    members[key] = np.load(io.BytesIO(payload), allow_pickle=False)
                elif key.endswith(".json"):
                    members[key] = json.loads(payload)
    except (tarfile.TarError, ValueError, OSError) as exc:
        if isinstance(exc, LayoutError):
            raise
        raise LayoutError(f"{source}: unreadable clip tar: {exc}") from exc
    return members


def _member_key(name: str, clip_id: str, source: str) -> str:
    """``<key>`` of a member named ``[./]<clip_id>.<key>``; errors say whose member it is."""
    prefix, dot, key = name.removeprefix("./").partition(".")
    if not dot or not key:
        raise LayoutError(f"{source}: member {name!r} is not named '<clip_id>.<key>'")
    if prefix != clip_id:
        raise LayoutError(f"{source}: member {name!r} belongs to clip {prefix!r}, not to this tar's clip {clip_id!r}")
    return key


def write_tar(root: str | Path, attribute: str, clip_id: str, members: dict[str, Any]) -> None:
    atomic_write_bytes(tar_path(str(root), attribute, clip_id), encode_tar(clip_id, members))


def read_tar(fs: fsspec.AbstractFileSystem, root: str, attribute: str, clip_id: str) -> dict[str, Any]:
    path = tar_path(root, attribute, clip_id)
    try:
        data = fs.cat_file(path)
    except FileNotFoundError as exc:
        raise LayoutError(f"{path}: missing") from exc
    return decode_tar(data, clip_id, path)


def frame_key(frame: int, name: str, suffix: str) -> str:
    """Member key of one frame's value: ``frame_key(3, "pose", ".camera_front_wide_120fov.npy")``."""
    return f"{frame:06d}.{name}{suffix}"


@dataclass
class ClipLabels:
    """Everything of one clip but its pixels: poses per video frame, intrinsics, 10 Hz objects."""

    clip_id: str
    camera_poses: dict[str, dict[int, np.ndarray]] = field(default_factory=dict)  # cam -> frame -> 4x4
    vehicle_poses: dict[int, np.ndarray] = field(default_factory=dict)  # frame -> 4x4 rig-to-world
    intrinsics: dict[str, np.ndarray] = field(default_factory=dict)  # cam -> model's array
    objects: dict[int, dict[str, dict[str, Any]]] = field(default_factory=dict)  # label frame -> tracks
    unusable_objects: dict[int, str] = field(default_factory=dict)  # label frame -> why its objects are unknown


def write_clip_labels(root: str | Path, labels: ClipLabels, camera_model: str = "pinhole") -> None:
    cid = labels.clip_id
    write_tar(root, "pose", cid, {
        frame_key(f, "pose", f".{cam}.npy"): pose
        for cam, poses in labels.camera_poses.items() for f, pose in poses.items()})
    write_tar(root, "vehicle_pose", cid, {
        frame_key(f, "vehicle_pose", ".npy"): pose for f, pose in labels.vehicle_poses.items()})
    write_tar(root, f"{camera_model}_intrinsic", cid, {
        f"{camera_model}_intrinsic.{cam}.npy": k for cam, k in labels.intrinsics.items()})
    write_tar(root, "all_object_info", cid, {
        frame_key(f, "all_object_info", ".json"): objs for f, objs in labels.objects.items()})


def _frames_of(members: dict[str, Any], name: str, source: str) -> dict[int, Any]:
    out = {}
    for key, value in members.items():
        head, _, rest = key.partition(".")
        if rest.startswith(name) and head.isdigit():
            out[int(head)] = value
    if not out:
        raise LayoutError(f"{source}: no '{name}' members")
    return out


def read_clip_labels(fs: fsspec.AbstractFileSystem, root: str, clip_id: str,
                     cameras: tuple[str, ...], camera_model: str = "pinhole") -> ClipLabels:
    """Read poses, intrinsics and objects of ``clip_id`` for ``cameras``; errors name the file."""
    if camera_model not in CAMERA_MODELS:
        raise LayoutError(f"camera model {camera_model!r} is not one of {CAMERA_MODELS}")
    labels = ClipLabels(clip_id)
    poses = read_tar(fs, root, "pose", clip_id)
    intrinsic_name = f"{camera_model}_intrinsic"
    intrinsics = read_tar(fs, root, intrinsic_name, clip_id)
    for cam in cameras:
        source = f"{tar_path(root, 'pose', clip_id)} (camera {cam})"
        labels.camera_poses[cam] = _frames_of(poses, f"pose.{cam}.npy", source)
        key = f"{intrinsic_name}.{cam}.npy"
        if key not in intrinsics:
            raise LayoutError(f"{tar_path(root, intrinsic_name, clip_id)}: no member {clip_id}.{key}")
        if (problem := intrinsics_problem(camera_model, intrinsics[key])) is not None:
            raise LayoutError(f"{tar_path(root, intrinsic_name, clip_id)}: member {clip_id}.{key}: "
                              f"intrinsics {problem}")
        labels.intrinsics[cam] = np.asarray(intrinsics[key], dtype=np.float64)
    vehicle = read_tar(fs, root, "vehicle_pose", clip_id)
    labels.vehicle_poses = _frames_of(vehicle, "vehicle_pose.npy", tar_path(root, "vehicle_pose", clip_id))
    objects = read_tar(fs, root, "all_object_info", clip_id)
    labels.objects = _frames_of(objects, "all_object_info.json", tar_path(root, "all_object_info", clip_id))
    return labels


def list_clip_ids(fs: fsspec.AbstractFileSystem, root: str, name: str | None = None) -> list[str]:
    """Clip ids present under ``root`` (those with an ``all_object_info`` tar; hidden files such
    as the ``._<name>`` files macOS leaves on other file systems are not clips), sorted; errors
    name the root as ``name`` (its URL) when given."""
    folder = f"{root}/all_object_info"
    try:
        names = fs.ls(folder, detail=False)
    except NotADirectoryError as exc:  # a file where the root or a folder of its path should be
        raise LayoutError(f"{name or root}/all_object_info: not a folder ({exc.strerror}); is {name or root!r} an "
                          "RDS-HQ root?") from exc
    except FileNotFoundError as exc:
        why = exc.strerror or (exc.args[0] if exc.args else "")  # an S3 server says which: bucket or prefix
        named = name or root
        raise LayoutError(f"{named}/all_object_info: missing ({why}); is {named!r} an RDS-HQ root?") from exc
    return sorted(Path(n).name[: -len(".tar")] for n in names
                  if n.endswith(".tar") and not Path(n).name.startswith("."))  # hidden: macOS ._* and the like
