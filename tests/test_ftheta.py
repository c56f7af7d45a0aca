"""F-theta cameras end to end: rendered videos, validation against the renderer, training sets and
AP2D through the same model; and the forward mapping beyond the calibrated angle, compared with
NVIDIA's Cosmos-Drive-Dreams toolkit."""

from __future__ import annotations

import dataclasses
import json
import shutil

import fsspec
import numpy as np
import pytest
from conftest import TRAINING_FORMAT, curate, validated

from av_grounding import rdshq
from av_grounding.cli import run
from av_grounding.geometry.boxes import Box3D, clipped_edges, edge_segments, project_edges, projected_rectangle
from av_grounding.geometry.cameras import FThetaCamera
from av_grounding.geometry.transforms import FLU_TO_RDF, rot_z
from av_grounding.params import ExtractParams, SynthesizeParams
from av_grounding.pipeline.format import format_dataset
from av_grounding.pipeline.synthesize import synthesize
from av_grounding.synth.render import RIG

FTHETA = SynthesizeParams(camera_model="ftheta", cameras=("camera_front_wide_120fov", "camera_rear_left_70fov"),
                          num_clips=2, duration_s=1.0, width=320, height=180, num_vehicles=8, num_pedestrians=2,
                          workers=1)


@pytest.fixture(scope="module")
def ftheta_curated(tmp_path_factory):
    work = tmp_path_factory.mktemp("ftheta")
    synthesize(FTHETA, work / "synthetic")
    metrics, _ = curate(ExtractParams(input_root=str(work / "synthetic"), cameras=FTHETA.cameras,
                                      camera_model="ftheta", skip_frames=3, workers=1), work)
    return work, metrics


def test_ftheta_videos_below_native_size_read_with_rescaled_intrinsics(ftheta_curated):
    work, metrics = ftheta_curated
    assert metrics["items_failed"] == 0 and metrics["frames_written"] > 0
    fs, root = fsspec.filesystem("file"), str(work / "synthetic")
    clip_id = rdshq.list_clip_ids(fs, root)[0]
    stored = rdshq.read_clip_labels(fs, root, clip_id, FTHETA.cameras, "ftheta").intrinsics
    assert all(values[2:4].tolist() == [1920, 1080] for values in stored.values())  # as real clips store them
    for path in (work / "extracted" / "records").glob("*/*.json"):
        record = json.loads(path.read_text())[0]
        camera = FThetaCamera.from_array(record["intrinsics"])
        reference = FThetaCamera.from_array(np.array(RIG[path.stem].ftheta))
        assert (record["camera_model"], camera.width, camera.height) == ("ftheta", 320, 180)
        # The same lens at a sixth of the size: every calibrated ray lands a sixth as far.
        rays = reference.unproject(np.random.default_rng(0).uniform([0, 0], [1920, 1080], (500, 2)))
        np.testing.assert_allclose(camera.project(rays), reference.project(rays) / 6, atol=1e-6)


def test_ftheta_validates_against_the_renderer_with_bent_edges(ftheta_curated, tmp_path):
    work, _ = ftheta_curated
    summary = validated(work, tmp_path, sample_count=4)
    assert summary["by_reference"]["render_truth"]["boxes"] >= 30
    assert summary["max_residual_px"] < 0.5
    assert len(list((tmp_path / "plots").glob("*.jpg"))) == 4
    bends = []
    for path in (work / "filtered" / "records").glob("*/*.json"):
        for record in json.loads(path.read_text()):
            camera = FThetaCamera.from_array(record["intrinsics"])
            for obj in record["objects"]:
                box = Box3D(np.array(obj["center"]), np.array(obj["rotation"]), np.array(obj["object_lwh"]))
                polylines = project_edges(box.corners(), camera, edge_segments("ftheta"))
                bends += [chord_distance(np.concatenate(polylines[i:i + 16])) for i in range(0, len(polylines), 16)
                          if len(polylines) == 12 * 16]
    assert max(bends) > 1.0  # drawn edges are curves, not chords


def chord_distance(points: np.ndarray) -> float:
    """Largest distance of a polyline's points from the straight line through its ends."""
    start, end = points[0], points[-1]
    direction = (end - start) / max(np.linalg.norm(end - start), 1e-9)
    offsets = points - start
    return float(np.abs(offsets[:, 0] * direction[1] - offsets[:, 1] * direction[0]).max())


def test_ftheta_frames_format_and_evaluate_through_the_same_model(ftheta_curated, tmp_path):
    work, _ = ftheta_curated
    format_dataset(dataclasses.replace(TRAINING_FORMAT, eval_clips=1), work / "filtered", work / "extracted",
                   tmp_path / "dataset")
    truth = tmp_path / "dataset" / "eval" / "text"
    records = [json.loads(p.read_text()) for p in sorted(truth.glob("*.json"))]
    assert records and all(r["camera_model"] == "ftheta" and len(r["intrinsics"]) == 11 for r in records)
    assert sum(len(r["annotations"]) for r in records) > 0
    predictions = tmp_path / "perfect"
    shutil.copytree(truth, predictions)
    result = run(["evaluate", "--gt", str(truth), "--pred", str(predictions), "--out", str(tmp_path / "eval.json")])
    assert result["ap2d"]["ap"] == pytest.approx(1.0)


# Boxes (camera RDF centre, heading about the camera's down axis; a 4.6 x 1.9 x 1.55 m car)
# straddling the edge of the calibrated field of view, and the rectangle NVIDIA's toolkit gives
# them: `FThetaCamera.ray2pixel_np` of cosmos-drive-dreams-toolkits/utils/camera/ftheta.py over
# 4001 points per edge (near plane z = 0.1), on the public example clip's f-theta intrinsics.
STRADDLING = [
    ("camera_rear_tele_30fov", (-4.64, 0.82, 11.39), 0.0, (-1002.9, 525.6, 65.9, 1123.6)),
    ("camera_rear_tele_30fov", (-1.5, 1.25, 4.76), 0.5, (-802.3, 751.2, 1529.1, 3049.7)),
    ("camera_rear_left_70fov", (5.56, 1.65, 6.46), 0.3, (1618.2, 694.3, 2546.7, 1206.4)),
    ("camera_front_tele_30fov", (-0.59, 1.37, 4.05), 1.2, (-1426.4, 957.3, 2712.2, 3204.3)),
]


@pytest.mark.parametrize("camera_name, centre, heading, toolkit", STRADDLING)
def test_rectangles_of_boxes_straddling_the_calibrated_angle_match_the_toolkit(camera_name, centre, heading, toolkit):
    camera = FThetaCamera.from_array(np.array(RIG[camera_name].ftheta))
    box = Box3D(np.array(centre), FLU_TO_RDF @ rot_z(heading), np.array([4.6, 1.9, 1.55]))
    corners = box.corners()
    points = np.concatenate(clipped_edges(corners, 64))
    angles = np.arctan2(np.linalg.norm(points[:, :2], axis=1), points[:, 2])
    assert angles.min() < camera.max_theta < angles.max()  # its edges cross the calibrated angle
    rectangle = projected_rectangle(corners, camera, edge_segments("ftheta"))
    np.testing.assert_allclose(rectangle, toolkit, atol=0.5)
    # Evaluating the polynomial past its calibrated angle, as this project did before, is far off.
    polynomial_only = dataclasses.replace(camera, max_theta=np.pi, edge_radius=np.inf)
    assert np.abs(projected_rectangle(corners, polynomial_only, edge_segments("ftheta")) - toolkit).max() > 40


@pytest.mark.parametrize("camera_name", sorted(name for name, mount in RIG.items() if mount.ftheta))
def test_the_forward_mapping_continues_linearly_beyond_the_calibrated_angle(camera_name):
    camera = FThetaCamera.from_array(np.array(RIG[camera_name].ftheta))
    edge, step = camera.max_theta, 1e-6
    np.testing.assert_allclose(camera.radius_of(edge), camera.edge_radius, rtol=1e-9)
    slope_inside = (camera.radius_of(edge) - camera.radius_of(edge - step)) / step
    assert slope_inside == pytest.approx(camera.edge_slope, rel=1e-4)  # no kink at the edge
    beyond = edge + np.array([0.01, 0.1, 0.5])
    np.testing.assert_allclose(camera.radius_of(beyond), camera.edge_radius + (beyond - edge) * camera.edge_slope)
    np.testing.assert_allclose(camera.theta_of(camera.radius_of(beyond)), beyond, atol=1e-12)
    # The calibrated angle is that of the farthest corner pixel, (0, 0) to (w-1, h-1).
    corners = np.array([[0, 0], [1919, 0], [0, 1079], [1919, 1079]], dtype=float)
    rays = camera.unproject(corners)
    assert np.arctan2(np.linalg.norm(rays[:, :2], axis=1), rays[:, 2]).max() == pytest.approx(edge, abs=1e-9)
