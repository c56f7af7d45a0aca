"""The extract stage on synthetic clips: exact frames, records, failures, resume."""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import tarfile
from pathlib import Path

import cv2
import fsspec
import numpy as np
import pytest
from conftest import params_for

from av_grounding import rdshq
from av_grounding.curation.records import records_path
from av_grounding.errors import StageFailed
from av_grounding.params import ExtractParams, ParamsError, SynthesizeParams
from av_grounding.pipeline.extract import extract
from av_grounding.pipeline.synthesize import synthesize
from av_grounding.shards import ShardReader, partial_path, write_shard
from av_grounding.synth.clips import clip_id_for, clip_rng
from av_grounding.synth.scene import sample_scene
from av_grounding.synth.stamp import read_index

from test_video import decoded_rgb, encode_timed, remux_shifted, zero_timestamps


def tree_digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_every_item_writes_the_exact_frames(extracted, small_params):
    out, metrics = extracted
    assert metrics["items"] == 4 and metrics["items_failed"] == 0
    # Labels cover frames 0..27 (10 Hz); frame 28 lies after the last label frame and is dropped.
    assert metrics["frames_written"] == 4 * 4 and metrics["frames_without_labels"] == 4
    for records_file in (out / "records").rglob("*.json"):
        records = json.loads(records_file.read_text())
        assert [r["frame_index"] for r in records] == [0, 7, 14, 21]
        for record in records:
            assert record["image_shard"] == f"images/{records_file.parent.name}/{records_file.stem}.tar"
            jpeg = ShardReader(out).read(record["image_shard"], record["image_member"])
            image = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
            assert image.shape == (small_params.height, small_params.width, 3)
            assert read_index(image) == record["frame_index"]
            assert record["timestamp_s"] == pytest.approx(record["frame_index"] / 30, abs=1e-6)


def test_records_carry_poses_intrinsics_and_interpolated_objects(extracted, synthetic_root, small_params):
    out, _ = extracted
    fs_root = str(synthetic_root)
    for clip_index in range(small_params.num_clips):
        rng = clip_rng(small_params, clip_index)
        clip_id = clip_id_for(rng, clip_index, small_params.duration_s)
        scene = sample_scene(rng, small_params.num_vehicles, small_params.num_pedestrians, small_params.duration_s)
        labels = rdshq.read_clip_labels(fsspec.filesystem("file"), fs_root, clip_id, small_params.cameras)
        for camera in small_params.cameras:
            records = json.loads((out / "records" / clip_id / f"{camera}.json").read_text())
            for record in records:
                frame = record["frame_index"]
                np.testing.assert_array_equal(record["camera_to_world"], labels.camera_poses[camera][frame])
                # Intrinsics are stored at the native 1920x1080 and rescaled to the video's size
                # (then stored to 6 decimals, as every float).
                np.testing.assert_allclose(record["intrinsics"], labels.intrinsics[camera] / 6, rtol=0, atol=5e-7)
                assert record["objects"], "every synthetic frame has labelled objects"
                tracks = {t.track_id: t for t in scene.tracks}
                for obj in record["objects"]:
                    truth = tracks[obj["track_id"]].pose(frame / 30)
                    # Between label frames the pose is interpolated; the true motion is smooth, so
                    # a linear/slerp estimate over 0.1 s lies within a few millimetres.
                    np.testing.assert_allclose(np.asarray(obj["object_to_world"])[:3, 3], truth[:3, 3], atol=5e-3)
                    np.testing.assert_allclose(np.asarray(obj["object_to_world"])[:3, :3], truth[:3, :3], atol=5e-3)
                    assert obj["object_lwh"] == pytest.approx(list(tracks[obj["track_id"]].lwh))


def test_a_bad_video_is_reported_and_the_rest_completes(synthetic_root, small_params, tmp_path):
    root = tmp_path / "root"
    shutil.copytree(synthetic_root, root)
    clip_ids = sorted(p.stem for p in (root / "all_object_info").glob("*.tar"))
    corrupt = Path(rdshq.video_path(str(root), "pinhole", "camera_front_wide_120fov", clip_ids[0]))
    corrupt.write_bytes(corrupt.read_bytes()[:2000])
    missing = Path(rdshq.video_path(str(root), "pinhole", "camera_cross_left_120fov", clip_ids[1]))
    missing.unlink()
    out = tmp_path / "out"
    metrics = extract(params_for(root, small_params, workers=2, max_failed_fraction=0.5), out,
                      tmp_path / "metrics.json")
    assert metrics["items_failed"] == 2
    assert metrics["frames_written"] == 2 * 4
    failures = json.loads((out / "failures.json").read_text())
    errors = " ".join(f["error"] for f in failures["items"])
    assert f"{clip_ids[0]}.mp4" in errors and f"pinhole_camera_cross_left_120fov/{clip_ids[1]}.mp4: missing" in errors
    assert json.loads((tmp_path / "metrics.json").read_text())["items_failed"] == 2
    # Over the limit (default 5 %) the stage fails, naming the items; its report is written first.
    with pytest.raises(StageFailed, match=r"(?s)2 of 4 items failed \(more than extract.max_failed_fraction.*"
                                          f"{clip_ids[0]}/camera_front_wide_120fov"):
        extract(params_for(root, small_params), tmp_path / "strict", tmp_path / "strict.json")
    assert json.loads((tmp_path / "strict.json").read_text())["items_failed"] == 2


def test_rerun_after_a_crash_continues_and_matches_a_clean_run(extracted, synthetic_root, small_params, tmp_path):
    clean, _ = extracted
    out = tmp_path / "out"
    shutil.copytree(clean, out)
    # Simulate a run killed inside one item: its records file not written yet, a half-written
    # shard left beside the one an earlier run (with other frames) had finished.
    victim = next((out / "records").rglob("*.json"))
    victim.unlink()
    shard = out / "images" / victim.parent.name / f"{victim.stem}.tar"
    with write_shard(shard) as older:
        older.add("000003.jpg", b"not this run's frame")
    partial_path(shard).write_bytes(shard.read_bytes()[:700])
    metrics = extract(params_for(synthetic_root, small_params), out)
    assert metrics["items_resumed"] == 3
    assert tree_digest(out) == tree_digest(clean)


def test_sequence_ids_file_selects_clips(synthetic_root, small_params, tmp_path):
    clip_ids = sorted(p.stem for p in (synthetic_root / "all_object_info").glob("*.tar"))
    ids = tmp_path / "ids.txt"
    ids.write_text(f"# one id per line\n{clip_ids[1]}\n")
    metrics = extract(params_for(synthetic_root, small_params, sequence_ids_file=str(ids)), tmp_path / "out")
    assert metrics["clips"] == 1 and metrics["items"] == 2
    assert [p.name for p in (tmp_path / "out" / "images").iterdir()] == [clip_ids[1]]
    ids.write_text("not-a-clip-id\n")
    with pytest.raises(ParamsError, match=r"extract.sequence_ids_file .*ids.txt, line 1: clip id 'not-a-clip-id'"):
        extract(params_for(synthetic_root, small_params, sequence_ids_file=str(ids)), tmp_path / "out2")


def broken_copy(synthetic_root: Path, tmp_path: Path) -> tuple[Path, list[str]]:
    """A copy of the synthetic root to break one thing in, and its clip ids."""
    root = tmp_path / "root"
    shutil.copytree(synthetic_root, root)
    return root, sorted(p.stem for p in (root / "all_object_info").glob("*.tar"))


def edit_tar(root: Path, attribute: str, clip_id: str, change) -> None:
    """Rewrite one clip tar after ``change(members)`` (members keyed without the clip id)."""
    members = rdshq.decode_tar((root / attribute / f"{clip_id}.tar").read_bytes(), clip_id, attribute)
    change(members)
    rdshq.write_tar(root, attribute, clip_id, members)


def set_value(key: str, index: tuple, value: float):
    def change(members):
        array = np.array(members[key], dtype=np.float64)
        array[index] = value
        members[key] = array
    return change


FRONT = "camera_front_wide_120fov"


def test_a_bad_camera_pose_fails_that_frame_naming_clip_camera_frame_and_member(synthetic_root, small_params, tmp_path):
    root, clip_ids = broken_copy(synthetic_root, tmp_path)
    edit_tar(root, "pose", clip_ids[0], set_value(f"000007.pose.{FRONT}.npy", (0, 0), np.nan))
    edit_tar(root, "vehicle_pose", clip_ids[1], set_value("000014.vehicle_pose.npy", (0, 0), 2.0))  # scaled: not rigid
    out = tmp_path / "out"
    metrics = extract(params_for(root, small_params, max_failed_fraction=0.2), out)
    assert metrics["items_failed"] == 0 and metrics["frames_failed"] == 1 + 2  # the vehicle pose serves both cameras
    assert metrics["frames_written"] == 16 - 3
    frames = json.loads((out / "failures.json").read_text())["frames"]
    nan = next(f for f in frames if f["item"] == f"{clip_ids[0]}/{FRONT}")
    assert nan["frame"] == 7
    assert (f"pose/{clip_ids[0]}.tar: member {clip_ids[0]}.000007.pose.{FRONT}.npy (frame 7): pose not finite"
            in nan["error"])
    scaled = [f for f in frames if f["item"].startswith(clip_ids[1])]
    assert [f["frame"] for f in scaled] == [14, 14]
    assert all("vehicle_pose not rigid (rotation not orthonormal" in f["error"] for f in scaled)
    records = json.loads((out / "records" / clip_ids[0] / f"{FRONT}.json").read_text())
    assert [r["frame_index"] for r in records] == [0, 14, 21]
    # The same failure over the default limit (5 % of the frames) fails the stage.
    with pytest.raises(StageFailed, match=r"3 of 16 items failed"):
        extract(params_for(root, small_params), tmp_path / "strict")


def test_bad_objects_are_dropped_counted_by_reason_and_named(synthetic_root, small_params, tmp_path, monkeypatch):
    root, clip_ids = broken_copy(synthetic_root, tmp_path)
    key = "000000.all_object_info.json"
    tracks = sorted(rdshq.decode_tar((root / "all_object_info" / f"{clip_ids[0]}.tar").read_bytes(), clip_ids[0],
                                     "labels")[key])

    def break_objects(members):
        objects = members[key]
        objects[tracks[0]]["object_lwh"][0] = -3.5
        objects[tracks[1]]["object_to_world"][1][1] = float("nan")
        objects[tracks[2]]["object_to_world"][0][0] = 1.5
        del objects[tracks[3]]["object_type"]

    with monkeypatch.context() as patch:  # another tool's writer: Python's json writes NaN, ours refuses it
        patch.setattr(rdshq, "dumps_json", lambda value, compact: json.dumps(value, separators=(",", ":")))
        edit_tar(root, "all_object_info", clip_ids[0], break_objects)
    out = tmp_path / "out"
    metrics = extract(params_for(root, small_params), out, tmp_path / "metrics.json")
    assert metrics["objects_dropped"] == {"entry missing fields": 1, "object_lwh not positive": 1,
                                          "object_to_world not finite": 1, "object_to_world not rigid": 1}
    report = json.loads((out / "failures.json").read_text())
    named = {entry["track_id"]: entry for entry in report["objects_dropped_first"]}
    assert sorted(named) == sorted(tracks[:4])
    assert named[tracks[0]]["where"] == f"{root}/all_object_info/{clip_ids[0]}.tar: {clip_ids[0]}.{key}"
    problem = named[tracks[0]]["problem"]
    assert problem == "object_lwh not positive ([-3.5, " + problem.split(", ", 1)[1]
    for camera in small_params.cameras:
        first = json.loads((out / "records" / clip_ids[0] / f"{camera}.json").read_text())[0]
        assert first["frame_index"] == 0 and not {o["track_id"] for o in first["objects"]} & set(tracks[:4])
    for records_file in (out / "records").rglob("*.json"):
        for record in json.loads(records_file.read_text()):
            assert all(min(o["object_lwh"]) > 0 for o in record["objects"])


@pytest.mark.parametrize("length", [4, 9])
def test_intrinsics_of_a_wrong_length_fail_the_item_naming_the_member(synthetic_root, small_params, tmp_path, length):
    root, clip_ids = broken_copy(synthetic_root, tmp_path)
    key = f"pinhole_intrinsic.{FRONT}.npy"

    def resize(members):
        members[key] = np.resize(members[key], length)

    edit_tar(root, "pinhole_intrinsic", clip_ids[0], resize)
    metrics = extract(params_for(root, small_params, max_failed_fraction=0.5), tmp_path / "out")
    assert metrics["items_failed"] == 1
    assert metrics["failures"][0].error == (
        f"LayoutError: {root}/pinhole_intrinsic/{clip_ids[0]}.tar: member {clip_ids[0]}.{key}: intrinsics wrong length "
        f"(shape ({length},); pinhole intrinsics have 6 values)")


def test_a_clip_id_that_is_not_an_rds_hq_id_fails_once(synthetic_root, small_params, tmp_path):
    root, clip_ids = broken_copy(synthetic_root, tmp_path)
    dotted = clip_ids[0].replace("_", ".", 1)
    for tar in root.glob(f"*/{clip_ids[0]}.tar"):  # members renamed as another tool would name them
        with tarfile.open(tar) as source, tarfile.open(tar.with_name(f"{dotted}.tar"), "w") as target:
            for info in source.getmembers():
                payload = source.extractfile(info).read()
                info.name = info.name.replace(clip_ids[0], dotted, 1)
                target.addfile(info, io.BytesIO(payload))
        tar.unlink()
    for video in root.glob(f"*/{clip_ids[0]}.mp4"):
        video.rename(video.with_name(f"{dotted}.mp4"))
    metrics = extract(params_for(root, small_params, max_failed_fraction=0.5), tmp_path / "out")
    assert metrics["items"] == 3 and metrics["items_failed"] == 1 and metrics["frames_written"] == 8
    assert [f.describe() for f in metrics["failures"]] == [
        (f"{dotted}: {root}/all_object_info/{dotted}.tar: clip id {dotted!r} contains a '.': tar members are named "
         "'<clip_id>.<key>' and split at the first '.', so a clip id cannot hold one; rename the clip")]


def test_parameter_errors_fail_once_before_any_work(synthetic_root, small_params, tmp_path, capsys):
    from av_grounding.cli import main

    common = ["extract", "--params", str(tmp_path / "none.yaml"), "--input-root", str(synthetic_root),
              "--output", str(tmp_path / "out"), "--metrics", str(tmp_path / "m.json"), "--workers", "1"]
    ids = tmp_path / "ids.txt"
    ids.write_text("0000-aaaa_1_2\n")
    cases = {
        ("--cameras", "camera_front_wide_120fov,camera_front_wide_12fov"):
            r"extract.cameras: no video folder .*/pinhole_<camera> for \['camera_front_wide_12fov'\]; cameras with "
            r"pinhole videos there: \['camera_cross_left_120fov', 'camera_front_wide_120fov'\]",
        ("--skip-frames", "0"): r"'skip_frames' must be >= 1, got 0",
        ("--sequence-ids-file", str(ids)): r"extract.sequence_ids_file .*ids.txt: none of its 1 clip id\(s\) is under",
        ("--strategy", "fastest"): r"'strategy' must be one of \['auto', 'decode_all', 'seek', 'keyframes'\]",
    }
    import re

    for override, message in cases.items():
        assert main(common + list(override)) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and re.search(message, err), err
        assert not (tmp_path / "out").exists() and not (tmp_path / "m.json").exists()


def test_the_stage_fails_when_every_item_fails_whatever_the_limit(synthetic_root, small_params, tmp_path):
    root, _ = broken_copy(synthetic_root, tmp_path)
    for video in root.glob("pinhole_*/*.mp4"):
        video.write_bytes(b"\0" * 100)
    with pytest.raises(StageFailed, match=r"4 of 4 items failed \(every item failed\)"):
        extract(params_for(root, small_params, max_failed_fraction=1.0), tmp_path / "out")


def test_a_rerun_reuses_only_items_made_from_the_same_inputs_and_parameters(synthetic_root, small_params, tmp_path):
    root, clip_ids = broken_copy(synthetic_root, tmp_path)
    fresh = extract(params_for(root, small_params, skip_frames=5), tmp_path / "fresh")
    out = tmp_path / "out"
    extract(params_for(root, small_params, skip_frames=10), out)
    again = extract(params_for(root, small_params, skip_frames=5), out)
    assert again["items_resumed"] == 0 and tree_digest(out) == tree_digest(tmp_path / "fresh")
    resumed = extract(params_for(root, small_params, skip_frames=5), out, tmp_path / "metrics.json")
    assert resumed["items_resumed"] == 4
    assert {**resumed, "items_resumed": 0, "failures": []} == {**fresh, "failures": []}  # metrics of the whole output
    # A changed input file redoes the items that read it, and only those.
    edit_tar(root, "pose", clip_ids[1], set_value(f"000000.pose.{FRONT}.npy", (0, 3), 0.25))
    changed = extract(params_for(root, small_params, skip_frames=5), out)
    assert changed["items_resumed"] == 2
    assert json.loads((out / "records" / clip_ids[1] / f"{FRONT}.json").read_text())[0]["camera_to_world"][0][3] == 0.25
    # Fewer cameras: the other camera's items leave the output.
    extract(params_for(root, small_params, skip_frames=5, cameras=(FRONT,)), out)
    assert sorted(p.name for p in (out / "records").rglob("*.json")) == [f"{FRONT}.json"] * 2
    assert sorted(p.name for p in (out / "images").rglob("*")) == sorted([*clip_ids, f"{FRONT}.tar", f"{FRONT}.tar"])


LONG = SynthesizeParams(num_clips=1, cameras=("camera_front_wide_120fov",), duration_s=3.0, width=160, height=90,
                        num_vehicles=4, num_pedestrians=0, workers=1)


@pytest.fixture(scope="module")
def long_root(tmp_path_factory):
    """One clip of one camera, 3 s (90 frames), small pictures."""
    root = tmp_path_factory.mktemp("long")
    synthesize(LONG, root)
    return root


def rewritten(root: Path, folder: Path, rewrite) -> tuple[Path, str]:
    """A copy of ``root`` whose video went through ``rewrite(source, destination)``."""
    copy = folder / "root"
    shutil.copytree(root, copy)
    clip_id = rdshq.list_clip_ids(fsspec.filesystem("file"), str(copy))[0]
    video = Path(rdshq.video_path(str(copy), "pinhole", LONG.cameras[0], clip_id))
    original = folder / "original.mp4"
    video.rename(original)
    rewrite(original, video)
    return copy, clip_id


def extracted_frames(out: Path, clip_id: str) -> list[tuple[dict, int]]:
    """(record, stamped index of its picture) of every written frame."""
    records = json.loads(records_path(out, clip_id, LONG.cameras[0]).read_text())
    reader = ShardReader(out)
    return [(r, read_index(cv2.imdecode(np.frombuffer(reader.read(r["image_shard"], r["image_member"]), np.uint8),
                                        cv2.IMREAD_COLOR))) for r in records]


def test_an_edit_list_hiding_lead_in_packets_is_read_as_a_player_shows_it(long_root, tmp_path):
    root, clip_id = rewritten(long_root, tmp_path, lambda src, dst: remux_shifted(src, dst, 3))
    params = ExtractParams(input_root=str(root), cameras=LONG.cameras, skip_frames=29, workers=1,
                           max_failed_fraction=0.5)
    metrics = extract(params, tmp_path / "out")
    # The player shows 87 frames (0..86) while the labels run to frame 87: sampled frame 87 is missing.
    assert (metrics["items_failed"], metrics["video_frames"], metrics["frames_missing"]) == (0, 87, 1)
    frames = extracted_frames(tmp_path / "out", clip_id)
    assert [(r["frame_index"], stamp) for r, stamp in frames] == [(0, 3), (29, 32), (58, 61)]
    assert [r["timestamp_s"] for r, _ in frames] == [0.0, pytest.approx(29 / 30, abs=1e-6),
                                                     pytest.approx(58 / 30, abs=1e-6)]


def drop_frames_40_to_44(source: Path, destination: Path) -> None:
    encode_timed(destination, [(i, rgb) for i, rgb in enumerate(decoded_rgb(source)) if not 40 <= i <= 44])


@pytest.mark.parametrize("skip, missing", [(6, [42]), (10, [40])])
def test_dropped_frames_are_reported_and_never_filled_with_a_neighbour(long_root, tmp_path, skip, missing):
    root, clip_id = rewritten(long_root, tmp_path, drop_frames_40_to_44)
    params = ExtractParams(input_root=str(root), cameras=LONG.cameras, skip_frames=skip, workers=1,
                           max_failed_fraction=0.2)  # a missing frame counts as a failed one
    metrics = extract(params, tmp_path / "out", tmp_path / "metrics.json")
    assert (metrics["items_failed"], metrics["video_frames"], metrics["frames_missing"]) == (0, 85, 1)
    assert json.loads((tmp_path / "metrics.json").read_text())["frames_missing"] == 1
    frames = extracted_frames(tmp_path / "out", clip_id)
    expected = [i for i in range(0, 88, skip) if i not in missing]  # labels end at frame 87
    assert [r["frame_index"] for r, _ in frames] == expected
    for record, stamp in frames:  # index, picture, timestamp and pose all agree
        assert stamp == record["frame_index"] == record["pose_frame_index"]
        assert record["image_member"] == f"{stamp:06d}.jpg"
        assert record["timestamp_s"] == pytest.approx(stamp / 30, abs=1e-6)
    failures = json.loads((tmp_path / "out" / "failures.json").read_text())
    assert failures["missing_frames"] == [{"item": f"{clip_id}/{LONG.cameras[0]}", "missing_frames": missing,
                                           "error": f"frames {missing} are not in the video (its timestamps skip "
                                                    "them, or it ends before its labels do); not written"}]
    assert failures["items"] == failures["frames"] == []


# Videos, labels and names (docs/reliability.md, "Videos, labels and names in extract").

def cut_to(count: int):
    """A rewrite keeping the first ``count`` frames: a recording cut short."""
    def rewrite(source: Path, destination: Path) -> None:
        encode_timed(destination, list(enumerate(decoded_rgb(source)))[:count])
    return rewrite


def jpeg_named_mp4(source: Path, destination: Path) -> None:
    destination.write_bytes(cv2.imencode(".jpg", np.ascontiguousarray(decoded_rgb(source)[0][..., ::-1]))[1].tobytes())


def timestamps_all_zero(source: Path, destination: Path) -> None:
    encode_timed(destination, enumerate(decoded_rgb(source)))
    zero_timestamps(destination)


@pytest.mark.parametrize("rewrite, missing, error", [
    (cut_to(45), [50, 60, 70, 80], None),  # labels run to frame 87
    (cut_to(1), [10, 20, 30, 40, 50, 60, 70, 80], None),
    (jpeg_named_mp4, [], "not an mp4 video"),
    (timestamps_all_zero, [], "90 shown frames but only 1 distinct timestamps"),
], ids=["cut_short", "one_frame", "jpeg_named_mp4", "all_pts_zero"])
def test_a_video_shorter_than_its_labels_never_passes_silently(long_root, tmp_path, rewrite, missing, error):
    root, clip_id = rewritten(long_root, tmp_path, rewrite)
    params = ExtractParams(input_root=str(root), cameras=LONG.cameras, skip_frames=10, workers=1)
    with pytest.raises(StageFailed):  # missing frames count as failed ones against extract.max_failed_fraction
        extract(params, tmp_path / "out", tmp_path / "metrics.json")
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    failures = json.loads((tmp_path / "out" / "failures.json").read_text())
    assert metrics["frames_missing"] == len(missing)
    if error is None:
        assert metrics["items_failed"] == 0 and failures["missing_frames"][0]["missing_frames"] == missing
        written = [i for i in range(0, 88, 10) if i not in missing]
        assert [(r["frame_index"], stamp) for r, stamp in extracted_frames(tmp_path / "out", clip_id)] == \
            [(i, i) for i in written]
    else:
        video = rdshq.video_path(str(root), "pinhole", LONG.cameras[0], clip_id)
        assert metrics["items_failed"] == 1
        assert failures["items"][0]["error"].startswith(f"VideoError: {video}: {error}")


def test_an_object_info_member_that_is_not_an_object_of_tracks_fails_its_frames(synthetic_root, small_params,
                                                                               tmp_path):
    root, clip_ids = broken_copy(synthetic_root, tmp_path)
    key = "000006.all_object_info.json"

    def as_list(members):
        members[key] = list(members[key].values())

    edit_tar(root, "all_object_info", clip_ids[0], as_list)
    metrics = extract(params_for(root, small_params, max_failed_fraction=0.2), tmp_path / "out")
    # Frame 7 lies between label frames 6 and 9: its objects are unknown, in both cameras; no object is "dropped".
    assert (metrics["frames_failed"], metrics["frames_written"], metrics["objects_dropped"]) == (2, 14, {})
    frames = json.loads((tmp_path / "out" / "failures.json").read_text())["frames"]
    assert sorted((f["item"], f["frame"]) for f in frames) == [(f"{clip_ids[0]}/{camera}", 7)
                                                                 for camera in sorted(small_params.cameras)]
    assert frames[0]["error"] == (f"{root}/all_object_info/{clip_ids[0]}.tar: member {clip_ids[0]}.{key} (label frame "
                                  "6): not an object of tracks (list); the objects of frame 7 are unknown")
    for camera in small_params.cameras:
        records = json.loads(records_path(tmp_path / "out", clip_ids[0], camera).read_text())
        assert [r["frame_index"] for r in records] == [0, 14, 21]
    with pytest.raises(StageFailed, match=r"2 of 16 items failed"):
        extract(params_for(root, small_params), tmp_path / "strict")


def extract_cli(synthetic_root: Path, tmp_path: Path, *options: str) -> list[str]:
    """``av-grounding extract`` on the synthetic clips, with ``options`` added."""
    return ["extract", "--params", str(tmp_path / "none.yaml"), "--input-root", str(synthetic_root),
            "--cameras", "camera_front_wide_120fov,camera_cross_left_120fov", "--output", str(tmp_path / "out"),
            "--metrics", str(tmp_path / "m.json"), "--workers", "1", *options]


def assert_refused_once(argv: list[str], message: str, capsys) -> None:
    """The stage exits 2 with one line matching ``message``."""
    from av_grounding.cli import main

    assert main(argv) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and re.search(message, err), err


def test_camera_names_must_be_plain_distinct_file_names(synthetic_root, tmp_path, capsys):
    cases = {
        "{camera_front_wide_120fov: ../../../escaped}":
            r"extract.camera_names: camera_front_wide_120fov: '\.\./\.\./\.\./escaped' is a path, not a plain file "
            r"name; camera names become file names",
        "{camera_front_wide_120fov: ''}": r"extract.camera_names: camera_front_wide_120fov: '' is empty",
        "{camera_front_wide_120fov: .front}":
            r"extract.camera_names: camera_front_wide_120fov: '\.front' starts with '\.'",
        "{camera_front_wide_120fov: front, camera_cross_left_120fov: front}":
            r"extract.camera_names: \['camera_cross_left_120fov', 'camera_front_wide_120fov'\] would all be named "
            r"'front'",
        "{camera_front_wide_120fov: camera_cross_left_120fov}":
            r"extract.camera_names: \['camera_cross_left_120fov', 'camera_front_wide_120fov'\] would all be named "
            r"'camera_cross_left_120fov'",
    }
    for names, message in cases.items():
        assert_refused_once(extract_cli(synthetic_root, tmp_path, "--camera-names", names), message, capsys)
        assert not (tmp_path / "out").exists() and not list(tmp_path.glob("escaped*"))


def test_an_empty_or_repeated_camera_list_is_refused_naming_extract_cameras(synthetic_root, tmp_path, capsys):
    cases = {"[]": r"extract.cameras: empty; name at least one camera",
             "camera_front_wide_120fov,camera_front_wide_120fov":
                 r"extract.cameras: \['camera_front_wide_120fov'\] listed more than once"}
    for cameras, message in cases.items():
        assert_refused_once(extract_cli(synthetic_root, tmp_path, "--cameras", cameras), message, capsys)
        assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("where", ["input_root_a_file", "output_under_a_file",
                                   pytest.param("read_only_output", marks=pytest.mark.skipif(
                                       os.geteuid() == 0, reason="root writes into read-only folders"))])
def test_an_unusable_input_root_or_output_fails_once_naming_it(synthetic_root, tmp_path, capsys, where):
    a_file = tmp_path / "a_file"
    a_file.write_text("not a folder")
    root, out = synthetic_root, tmp_path / "out"
    if where == "input_root_a_file":
        root, message = a_file, rf"extract.input_root {re.escape(str(a_file))}: a file, not a folder"
    elif where == "output_under_a_file":
        out = a_file / "out"
        message = (rf"{re.escape(str(out))}: cannot write the output here \(Not a directory: {re.escape(str(out))}\); "
                   "nothing extracted")
    else:
        (tmp_path / "read_only").mkdir(mode=0o555)
        out = tmp_path / "read_only" / "out"
        message = rf"{re.escape(str(out))}: cannot write the output here \(Permission denied"
    argv = extract_cli(root, tmp_path, "--output", str(out))
    assert_refused_once(argv, message, capsys)


def test_hidden_and_apple_double_files_are_not_clips(synthetic_root, small_params, extracted, tmp_path):
    root, _ = broken_copy(synthetic_root, tmp_path)
    apple_double = b"\x00\x05\x16\x07\x00\x02\x00\x00" + bytes(74)  # what macOS writes beside a file on other volumes
    for path in [*root.glob("*/*"), *root.glob("*")]:
        path.with_name(f"._{path.name}").write_bytes(apple_double)
    (root / "all_object_info" / ".DS_Store").write_bytes(bytes(64))
    metrics = extract(params_for(root, small_params), tmp_path / "out")
    assert (metrics["clips"], metrics["items"], metrics["items_failed"]) == (2, 4, 0)
    assert tree_digest(tmp_path / "out" / "records") == tree_digest(extracted[0] / "records")


def resized_to(width: int, height: int):
    """A rewrite of the video at another picture size (the intrinsics stay those of 1920x1080)."""
    def rewrite(source: Path, destination: Path) -> None:
        encode_timed(destination, [(i, cv2.resize(rgb, (width, height), interpolation=cv2.INTER_AREA))
                                   for i, rgb in enumerate(decoded_rgb(source))])
    return rewrite


@pytest.mark.parametrize("size", [(160, 120), (128, 72)], ids=["4_3_video", "16_9_smaller"])
def test_a_video_that_is_not_a_uniform_scale_of_its_intrinsics_fails_the_item(long_root, tmp_path, size):
    root, clip_id = rewritten(long_root, tmp_path, resized_to(*size))
    params = ExtractParams(input_root=str(root), cameras=LONG.cameras, skip_frames=30, workers=1)
    camera = LONG.cameras[0]
    if size == (128, 72):  # a uniform downscale: read with the intrinsics scaled alike
        extract(params, tmp_path / "out")
        native = rdshq.read_clip_labels(fsspec.filesystem("file"), str(root), clip_id, LONG.cameras).intrinsics[camera]
        for record in json.loads(records_path(tmp_path / "out", clip_id, camera).read_text()):
            np.testing.assert_allclose(record["intrinsics"], native * 128 / 1920, rtol=0, atol=5e-7)
        return
    with pytest.raises(StageFailed, match=r"1 of 1 items failed"):
        extract(params, tmp_path / "out")
    error = json.loads((tmp_path / "out" / "failures.json").read_text())["items"][0]["error"]
    assert error == (f"LayoutError: {rdshq.video_path(str(root), 'pinhole', camera, clip_id)}: picture 160x120 "
                     "(aspect 1.333) is not a uniform scale of the 1920x1080 (aspect 1.778) that "
                     f"{root}/pinhole_intrinsic/{clip_id}.tar: member {clip_id}.pinhole_intrinsic.{camera}.npy is "
                     "calibrated for (cropped or stretched?); fx and fy would scale apart")
