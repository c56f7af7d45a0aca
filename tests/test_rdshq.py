"""The RDS-HQ tar layout: write/read round trip and clear errors."""

from __future__ import annotations

import io
import re
import tarfile

import fsspec
import numpy as np
import pytest

from av_grounding import rdshq
from av_grounding.storage import canonical


def test_clip_id_parse_round_trip():
    text = "5f82c2d9-cfeb-4fa3-a1d7-d982f8bd1045_1700000000000000_1700000003000000"
    clip = rdshq.ClipId.parse(text)
    assert (clip.start_us, clip.end_us) == (1700000000000000, 1700000003000000)
    assert str(clip) == text
    waymo = rdshq.ClipId.parse("10247954040621004675_2180_000_2200_000")  # a converted Waymo segment
    assert (waymo.session, waymo.start_us, str(waymo)) == ("10247954040621004675", None,
                                                            "10247954040621004675_2180_000_2200_000")
    with pytest.raises(rdshq.LayoutError, match="neither '<session_uuid>_<start_us>_<end_us>'"):
        rdshq.ClipId.parse("session_with_underscores_1_2")
    with pytest.raises(rdshq.LayoutError, match="end time 1 us is not after start time 2 us"):
        rdshq.ClipId.parse("abc_2_1")


def tar_of(names: list[str]) -> bytes:
    """A tar whose members (an identity pose each) carry exactly these names."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name in names:
            payload = io.BytesIO()
            np.save(payload, np.eye(4))
            info = tarfile.TarInfo(name)
            info.size = len(payload.getvalue())
            tar.addfile(info, io.BytesIO(payload.getvalue()))
    return buffer.getvalue()


def test_a_dotted_clip_id_is_refused_for_its_dot():
    with pytest.raises(rdshq.LayoutError, match=r"clip id 'a\.b_1_2' contains a '\.'"):
        rdshq.ClipId.parse("a.b_1_2")
    # The reader names the file and the dot, not a member that "does not belong" to its own clip.
    with pytest.raises(rdshq.LayoutError, match=r"vehicle_pose/a\.b_1_2\.tar: clip id 'a\.b_1_2' contains a '\.'"):
        rdshq.decode_tar(tar_of(["a.b_1_2.000000.vehicle_pose.npy"]), "a.b_1_2", "vehicle_pose/a.b_1_2.tar")


def test_members_with_a_leading_dot_slash_are_read():
    data = tar_of(["./s_1_2.000000.vehicle_pose.npy", "./s_1_2.000001.vehicle_pose.npy"])
    members = rdshq.decode_tar(data, "s_1_2", "vehicle_pose/s_1_2.tar")
    assert sorted(members) == ["000000.vehicle_pose.npy", "000001.vehicle_pose.npy"]


def test_a_member_of_another_clip_is_named_with_its_clip():
    data = tar_of(["s_1_2.000000.vehicle_pose.npy", "./other_1_2.000001.vehicle_pose.npy"])
    with pytest.raises(rdshq.LayoutError, match=r"vehicle_pose/s_1_2.tar: member './other_1_2.000001.vehicle_pose.npy' "
                                                r"belongs to clip 'other_1_2', not to this tar's clip 's_1_2'"):
        rdshq.decode_tar(data, "s_1_2", "vehicle_pose/s_1_2.tar")
    with pytest.raises(rdshq.LayoutError, match=r"member 'README' is not named '<clip_id>\.<key>'"):
        rdshq.decode_tar(tar_of(["README"]), "s_1_2", "vehicle_pose/s_1_2.tar")


@pytest.mark.parametrize("second", ["s_1_2.000000.vehicle_pose.npy", "./s_1_2.000000.vehicle_pose.npy"],
                         ids=["same_name", "with_dot_slash"])
def test_a_member_twice_in_a_clip_tar_is_refused_naming_tar_and_member(second):
    data = tar_of(["s_1_2.000000.vehicle_pose.npy", "s_1_2.000001.vehicle_pose.npy", second])
    with pytest.raises(rdshq.LayoutError, match=rf"^vehicle_pose/s_1_2\.tar: member s_1_2\.000000\.vehicle_pose\.npy "
                                                rf"appears twice \(last as '{re.escape(second)}'\)"):
        rdshq.decode_tar(data, "s_1_2", "vehicle_pose/s_1_2.tar")


def test_tar_members_are_named_clip_dot_key_and_round_trip():
    clip = "abc_1_2"
    members = {"000003.pose.camera_front_wide_120fov.npy": np.arange(16.0).reshape(4, 4),
               "000003.all_object_info.json": {"7": {"object_type": "Car", "object_lwh": [4, 2, 1.5]}}}
    data = rdshq.encode_tar(clip, members)
    with tarfile.open(fileobj=io.BytesIO(data)) as archive:
        names = archive.getnames()
        assert all(info.mtime == 0 for info in archive.getmembers())
    assert names == sorted(f"{clip}.{k}" for k in members)
    decoded = rdshq.decode_tar(data, clip, "x.tar")
    np.testing.assert_array_equal(decoded["000003.pose.camera_front_wide_120fov.npy"], np.arange(16.0).reshape(4, 4))
    assert decoded["000003.all_object_info.json"] == members["000003.all_object_info.json"]
    assert rdshq.encode_tar(clip, members) == data  # deterministic bytes


def test_clip_labels_round_trip(tmp_path):
    clip = "s_10_20"
    labels = rdshq.ClipLabels(clip)
    rng = np.random.default_rng(0)
    cams = ("camera_front_wide_120fov", "camera_rear_left_70fov")
    for f in range(6):
        labels.vehicle_poses[f] = rng.normal(size=(4, 4))
        for cam in cams:
            labels.camera_poses.setdefault(cam, {})[f] = rng.normal(size=(4, 4))
    for cam in cams:
        labels.intrinsics[cam] = np.array([300.0, 300.0, 160.0, 90.0, 320.0, 180.0])
    labels.objects = {0: {"1": {"object_type": "Car"}}, 3: {}}
    rdshq.write_clip_labels(tmp_path, labels)
    fs = fsspec.filesystem("file")
    for attribute in ("pose", "vehicle_pose", "pinhole_intrinsic", "all_object_info"):
        assert (tmp_path / attribute / f"{clip}.tar").exists()
    back = rdshq.read_clip_labels(fs, str(tmp_path), clip, cams)
    for cam in cams:  # random poses come back as stored: rounded to STORED_DECIMALS
        for f in range(6):
            np.testing.assert_array_equal(back.camera_poses[cam][f], canonical(labels.camera_poses[cam][f]))
        np.testing.assert_array_equal(back.intrinsics[cam], labels.intrinsics[cam])
    assert back.objects == labels.objects
    assert rdshq.list_clip_ids(fs, str(tmp_path)) == [clip]


def test_errors_name_the_file(tmp_path):
    fs = fsspec.filesystem("file")
    with pytest.raises(rdshq.LayoutError, match=r"pose/s_1_2\.tar: missing"):
        rdshq.read_tar(fs, str(tmp_path), "pose", "s_1_2")
    (tmp_path / "pose").mkdir()
    (tmp_path / "pose" / "s_1_2.tar").write_bytes(b"not a tar at all" * 40)
    with pytest.raises(rdshq.LayoutError, match=r"s_1_2\.tar: unreadable clip tar"):
        rdshq.read_tar(fs, str(tmp_path), "pose", "s_1_2")
    rdshq.write_tar(tmp_path, "vehicle_pose", "other_1_2", {"000000.vehicle_pose.npy": np.eye(4)})
    (tmp_path / "vehicle_pose" / "other_1_2.tar").rename(tmp_path / "vehicle_pose" / "s_1_2.tar")
    with pytest.raises(rdshq.LayoutError, match="belongs to clip 'other_1_2', not to this tar's clip 's_1_2'"):
        rdshq.read_tar(fs, str(tmp_path), "vehicle_pose", "s_1_2")
