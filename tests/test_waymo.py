"""Clips as NVIDIA's toolkit converts Waymo Open segments, written by `synthesize` with
``layout: waymo``: Waymo context names as clip ids, Waymo camera names, 10 fps videos while poses
and labels stay keyed by 30 Hz frame numbers, a global world frame, every vehicle ``Car``."""

from __future__ import annotations

import dataclasses
import json

import cv2
import fsspec
import numpy as np
import pytest
from conftest import curate, validated

from av_grounding import rdshq
from av_grounding.params import ExtractParams, ParamsError, SynthesizeParams
from av_grounding.pipeline.extract import extract
from av_grounding.pipeline.synthesize import synthesize
from av_grounding.shards import ShardReader
from av_grounding.synth.stamp import read_index
from av_grounding.video import index_video

WAYMO = SynthesizeParams(layout="waymo", fps=10, cameras=("front", "side_left"), num_clips=1, duration_s=1.5,
                         width=320, height=180, num_vehicles=8, num_pedestrians=2, workers=1)
CAMERA_NAMES = {"front": "camera_front_wide_120fov"}  # side_left keeps its name


@pytest.fixture(scope="module")
def waymo_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("waymo")
    synthesize(WAYMO, root)
    return root


@pytest.fixture(scope="module")
def waymo_curated(waymo_root, tmp_path_factory):
    work = tmp_path_factory.mktemp("waymo_curated")
    metrics, _ = curate(ExtractParams(input_root=str(waymo_root), cameras=WAYMO.cameras, camera_names=CAMERA_NAMES,
                                      skip_frames=1, workers=1), work)
    return work, metrics


def test_the_layout_is_that_of_a_waymo_conversion(waymo_root):
    fs = fsspec.filesystem("file")
    (clip_id,) = rdshq.list_clip_ids(fs, str(waymo_root))
    clip = rdshq.ClipId.parse(clip_id)
    assert clip.start_us is None and clip_id.count("_") == 4
    assert not (waymo_root / "ftheta_intrinsic").exists()
    for camera in WAYMO.cameras:
        index = index_video(waymo_root / f"pinhole_{camera}" / f"{clip_id}.mp4")
        assert index.fps == 10 and index.frame_count == 15
    labels = rdshq.read_clip_labels(fs, str(waymo_root), clip_id, WAYMO.cameras)
    assert sorted(labels.vehicle_poses) == list(range(45))  # 30 Hz poses
    assert sorted(labels.objects) == list(range(0, 45, 3))  # labels on frames 0, 3, 6, ...
    assert not np.allclose(labels.vehicle_poses[0], np.eye(4))  # Waymo's global frame
    assert labels.intrinsics["front"][4:].tolist() == [1920, 1280]  # native sizes, pinhole only
    types = {o["object_type"] for objects in labels.objects.values() for o in objects.values()}
    assert "Car" in types and not types & {"Truck", "Bus", "Trailer", "Automobile", "Heavy_truck", "Other_vehicle"}


def test_video_frame_k_is_pose_and_label_frame_3k(waymo_root, waymo_curated):
    work, metrics = waymo_curated
    assert metrics["items_failed"] == 0 and metrics["frames_missing"] == 0
    fs = fsspec.filesystem("file")
    (clip_id,) = rdshq.list_clip_ids(fs, str(waymo_root))
    labels = rdshq.read_clip_labels(fs, str(waymo_root), clip_id, WAYMO.cameras)
    reader = ShardReader(work / "extracted")
    for source, name in (("front", "camera_front_wide_120fov"), ("side_left", "side_left")):
        records = json.loads((work / "extracted" / "records" / clip_id / f"{name}.json").read_text())
        assert [r["frame_index"] for r in records] == list(range(15))
        for record in records:
            k = record["frame_index"]
            assert record["camera"] == name and record["pose_frame_index"] == 3 * k
            assert record["timestamp_s"] == pytest.approx(k / 10) and record["timestamp_us"] is None
            image = cv2.imdecode(np.frombuffer(reader.read(record["image_shard"], record["image_member"]), np.uint8),
                                 cv2.IMREAD_COLOR)
            assert read_index(image) == k and image.shape[:2] == (214 if source == "front" else 148, 320)
            np.testing.assert_array_equal(record["camera_to_world"], labels.camera_poses[source][3 * k])
            assert {o["track_id"] for o in record["objects"]} == set(labels.objects[3 * k])
        assert any(o["render_truth"] is not None for r in records for o in r["objects"])  # keyed by pose frame


def test_waymo_clips_validate_against_the_renderer(waymo_curated, tmp_path):
    summary = validated(waymo_curated[0], tmp_path, sample_count=2)
    assert summary["by_reference"]["render_truth"]["boxes"] >= 20
    assert summary["max_residual_px"] < 0.5


def test_ftheta_is_refused_for_waymo_clips(waymo_root, tmp_path):
    with pytest.raises(ValueError, match="Waymo conversions are pinhole only"):
        synthesize(dataclasses.replace(WAYMO, camera_model="ftheta"), tmp_path / "never")
    with pytest.raises(ParamsError, match=r"extract.camera_model ftheta: no ftheta_<camera> video folders under"):
        extract(ExtractParams(input_root=str(waymo_root), cameras=("front",), camera_model="ftheta", workers=1),
                tmp_path / "out")
    assert not (tmp_path / "out").exists()
