"""Synthetic clips: layout, determinism, occlusion ground truth that matches the pixels."""

from __future__ import annotations

import dataclasses
import re

import fsspec
import numpy as np
import pytest

from av_grounding import rdshq
from av_grounding.geometry.boxes import FACES, Box3D, corners
from av_grounding.geometry.transforms import apply, invert_pose
from av_grounding.params import SynthesizeParams
from av_grounding.pipeline.synthesize import synthesize
from av_grounding.synth.clips import clip_rng, render_frame
from av_grounding.synth.raster import rasterize_polygon, raycast_box
from av_grounding.synth.render import RIG
from av_grounding.synth.scene import sample_scene
from av_grounding.video import index_video

from test_extract import tree_digest


def test_layout_holds_every_attribute(synthetic_root, small_params):
    clip_ids = rdshq.list_clip_ids(fsspec.filesystem("file"), str(synthetic_root))
    assert len(clip_ids) == small_params.num_clips
    for clip_id in clip_ids:
        for attribute in ("pose", "vehicle_pose", "pinhole_intrinsic", "all_object_info", rdshq.RENDER_TRUTH):
            assert (synthetic_root / attribute / f"{clip_id}.tar").exists()
        for camera in small_params.cameras:
            index = index_video(synthetic_root / f"pinhole_{camera}" / f"{clip_id}.mp4")
            assert index.frame_count == 30 and index.fps == 30
        labels = rdshq.read_clip_labels(fsspec.filesystem("file"), str(synthetic_root), clip_id, small_params.cameras)
        assert sorted(labels.objects) == list(range(0, 30, 3))  # 10 Hz labels
        np.testing.assert_array_equal(labels.vehicle_poses[0], np.eye(4))  # frame 0 is identity
        kinds = {o["object_type"] for objects in labels.objects.values() for o in objects.values()}
        assert kinds & {"Pedestrian", "Cyclist"} and kinds & {"Car", "Truck", "Bus"}


def test_same_seed_same_bytes(tmp_path):
    params = SynthesizeParams(num_clips=1, cameras=("camera_front_wide_120fov",), duration_s=0.4,
                              width=160, height=96, num_vehicles=4, num_pedestrians=1, workers=1)
    synthesize(params, tmp_path / "a")
    synthesize(params, tmp_path / "b")
    assert tree_digest(tmp_path / "a") == tree_digest(tmp_path / "b")
    synthesize(dataclasses.replace(params, seed=1), tmp_path / "c")
    assert tree_digest(tmp_path / "c") != tree_digest(tmp_path / "a")


@pytest.fixture(scope="module")
def front_view(small_params):
    rng = clip_rng(small_params, 0)
    rng.bytes(16)  # the clip id draw comes first, as in write_clip
    scene = sample_scene(rng, small_params.num_vehicles, small_params.num_pedestrians, small_params.duration_s)
    camera = RIG["camera_front_wide_120fov"].camera(small_params.width, small_params.height)
    view, truth = render_frame(scene, small_params, "camera_front_wide_120fov", 0, camera.rays())
    return scene, camera, view, truth


def test_hidden_car_is_occluded_and_blocker_is_visible(front_view):
    _, _, _, truth = front_view
    assert truth["0"]["visible_fraction"] == 1.0  # the truck/bus right ahead
    assert truth["1"]["unoccluded_pixels"] > 0 and truth["1"]["visible_fraction"] < 0.05  # the car behind it


def test_truth_matches_the_id_buffer_and_projection(front_view, small_params):
    scene, camera, view, truth = front_view
    ids = {t.track_id: i for i, t in enumerate(scene.tracks)}
    world_to_camera = invert_pose(RIG["camera_front_wide_120fov"].camera_to_rig())
    for track_id, entry in truth.items():
        assert entry["visible_pixels"] == int((view.object_ids == ids[track_id]).sum())
        assert 0.0 <= entry["visible_fraction"] <= 1.0
        track = scene.tracks[ids[track_id]]
        box = apply(world_to_camera, corners(track.pose(0.0), np.array(track.lwh)))
        if entry["corners_px"] is not None:
            np.testing.assert_allclose(entry["corners_px"], camera.project(box), atol=1e-3)
            if entry["visible_fraction"] == 1.0 and entry["unoccluded_pixels"] > 50:
                # the projected box hull contains every pixel of the object
                ys, xs = np.nonzero(view.object_ids == ids[track_id])
                hull = np.asarray(entry["corners_px"])
                assert xs.min() >= np.floor(hull[:, 0].min()) - 1 and xs.max() <= np.ceil(hull[:, 0].max()) + 1
                assert ys.min() >= np.floor(hull[:, 1].min()) - 1 and ys.max() <= np.ceil(hull[:, 1].max()) + 1


def test_render_truth_is_written_per_frame_and_camera(synthetic_root, small_params):
    fs = fsspec.filesystem("file")
    clip_id = rdshq.list_clip_ids(fs, str(synthetic_root))[0]
    truth = rdshq.read_tar(fs, str(synthetic_root), rdshq.RENDER_TRUTH, clip_id)
    assert len(truth) == 30
    frame0 = truth[f"000000.{rdshq.RENDER_TRUTH}.json"]
    assert set(frame0) == set(small_params.cameras)
    entries = [e for per_camera in frame0.values() for e in per_camera.values()]
    assert entries and all(0.0 <= e["visible_fraction"] <= 1.0 and e["visible_pixels"] <= e["unoccluded_pixels"]
                           for e in entries)
    assert any(e["corners_px"] is not None and len(e["corners_px"]) == 8 for e in entries)


def test_ray_casting_agrees_with_the_polygon_rasteriser_under_a_pinhole(front_view, small_params):
    """The f-theta renderer's ray caster, run with pinhole rays, covers the pixels the pinhole
    rasteriser covers, at the same depth, with the same face."""
    scene, camera, _, _ = front_view
    world_to_camera = invert_pose(RIG["camera_front_wide_120fov"].camera_to_rig())
    rays = camera.rays()
    compared = 0
    for track in scene.tracks:
        object_to_camera = world_to_camera @ track.pose(0.0)
        box = apply(object_to_camera, corners(np.eye(4), np.array(track.lwh)))
        if (box[:, 2] < 1.0).any():
            continue
        raster_depth = np.full(rays.shape[:2], np.inf)
        raster_face = np.full(rays.shape[:2], -1)
        for index, face in enumerate(FACES):
            won = rasterize_polygon(box[face], camera, raster_depth, (0, 0))
            if won is not None:
                raster_face[won] = index
        cast_depth, cast_face = raycast_box(Box3D.from_pose(object_to_camera, track.lwh), rays)
        both = np.isfinite(raster_depth) & np.isfinite(cast_depth)
        differing = np.isfinite(raster_depth) != np.isfinite(cast_depth)
        if not both.any():
            continue
        compared += 1
        assert differing.sum() <= max(2, 0.02 * both.sum())  # only pixel centres on an outline differ
        np.testing.assert_allclose(cast_depth[both], raster_depth[both], rtol=1e-9)
        assert (cast_face[both] == raster_face[both]).mean() > 0.98
    assert compared >= 3


@pytest.mark.parametrize("flag, value, message", [
    ("--seed", "-1", r"synthesize \(with command-line overrides\): 'seed' must be >= 0, got -1"),
    ("--width", "641", r"synthesize.width = 641 is odd; H.264 in yuv420p needs even sizes \(640 or 642\)"),
    ("--height", "91", r"synthesize.height = 91 is odd; H.264 in yuv420p needs even sizes \(90 or 92\)"),
], ids=["negative_seed", "odd_width", "odd_height"])
def test_synthesize_refuses_what_it_would_fail_on_or_round_silently(tmp_path, capsys, flag, value, message):
    """A negative seed (numpy refuses it in every clip) and an odd size (rounded to an even one
    for H.264 in yuv420p) fail once as parameter errors, before any clip is written."""
    from av_grounding.cli import main

    small = {"--width": "160", "--height": "90", "--seed": "0"}
    small[flag] = value
    code = main(["synthesize", "--params", str(tmp_path / "none.yaml"), "--output", str(tmp_path / "out"),
                 "--metrics", str(tmp_path / "m.json"), "--num-clips", "1", "--duration-s", "0.1", "--workers", "1",
                 "--cameras", "camera_front_wide_120fov", *[item for pair in small.items() for item in pair]])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and err.startswith("error: ")
    assert re.search(message, err), err
    assert not (tmp_path / "out").exists() and not (tmp_path / "m.json").exists()
