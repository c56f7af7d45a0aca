"""Geometry: FLU/RDF, camera models, box corners and projection, box codecs."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.spatial.transform import Rotation

from av_grounding.geometry.boxes import Box3D, body_corners, projected_rectangle
from av_grounding.geometry.cameras import FThetaCamera, PinholeCamera
from av_grounding.geometry.codecs import CODECS
from av_grounding.geometry.transforms import FLU_TO_RDF, RDF_TO_FLU, apply, invert_pose, make_pose, rot_x, rot_y, rot_z

# A 120-degree camera like the public RDS-HQ example: backward polynomial, p1 ~ 1.06e-3 rad/px.
FTHETA_BACKWARD = np.array([957.0, 760.0, 1920, 1080, 0.0, 1.06e-3, 2.0e-10, -1.5e-11, 3.0e-15, -1.0e-19, 1.0])


def test_flu_to_rdf_example():
    np.testing.assert_array_equal(FLU_TO_RDF @ [1, 2, 3], [-2, -3, 1])
    np.testing.assert_array_equal(RDF_TO_FLU @ [-2, -3, 1], [1, 2, 3])
    assert np.linalg.det(FLU_TO_RDF) == pytest.approx(1.0)


def test_invert_pose():
    pose = make_pose(rot_z(0.3) @ rot_x(-0.2), np.array([1.0, -2.0, 3.0]))
    np.testing.assert_allclose(invert_pose(pose) @ pose, np.eye(4), atol=1e-12)


def test_corner_order_top_face_first():
    corners = body_corners([4.0, 2.0, 1.0])
    np.testing.assert_array_equal(corners[0], [2, 1, 0.5])
    np.testing.assert_array_equal(corners[2], [-2, -1, 0.5])
    np.testing.assert_array_equal(corners[4], [2, 1, -0.5])
    assert (corners[:4, 2] > 0).all() and (corners[4:, 2] < 0).all()


def test_box_straight_ahead_projects_to_the_image_centre():
    camera = PinholeCamera(945.5, 945.5, 960.0, 540.0, 1920, 1080)
    # A car 20 m ahead in camera FLU, converted to RDF.
    box = Box3D(FLU_TO_RDF @ np.array([20.0, 0.0, 0.0]), FLU_TO_RDF, np.array([4.5, 1.9, 1.6]))
    rect = projected_rectangle(box.corners(), camera)
    np.testing.assert_allclose([(rect[0] + rect[2]) / 2, (rect[1] + rect[3]) / 2], [960.0, 540.0], atol=1e-9)


def test_box_crossing_the_near_plane_projects_only_its_front_part():
    camera = PinholeCamera(500.0, 500.0, 320.0, 180.0, 640, 360)
    box = Box3D(np.array([0.0, 0.0, 1.0]), FLU_TO_RDF, np.array([6.0, 2.0, 1.5]))  # spans z in [-2, 4]
    rect = projected_rectangle(box.corners(), camera)
    assert np.isfinite(rect).all() and rect[2] - rect[0] > 640  # huge but finite: clipped at z = 0.1
    assert projected_rectangle(box.corners() - [0, 0, 10.0], camera) is None  # wholly behind


@pytest.mark.parametrize("values", [FTHETA_BACKWARD])
def test_ftheta_round_trip_pixel_ray_pixel(values):
    camera = FThetaCamera.from_array(values)
    rng = np.random.default_rng(0)
    pixels = rng.uniform([0, 0], [camera.width, camera.height], size=(5000, 2))
    rays = camera.unproject(pixels)
    np.testing.assert_allclose(np.linalg.norm(rays, axis=1), 1.0, atol=1e-12)
    error = np.linalg.norm(camera.project(rays) - pixels, axis=1)
    assert error.max() < 0.01
    np.testing.assert_allclose(camera.project(np.array([[0.0, 0.0, 5.0]])), [[957.0, 760.0]], atol=1e-9)


def test_ftheta_forward_polynomial_and_affine_round_trip():
    backward = FThetaCamera.from_array(FTHETA_BACKWARD)
    forward = FThetaCamera.from_array(np.array([957.0, 760.0, 1920, 1080, *backward.forward, 0.0,
                                                1.001, 0.002, -0.001]))
    assert not forward.stored_backward
    rng = np.random.default_rng(1)
    pixels = rng.uniform([100, 100], [1800, 1000], size=(2000, 2))
    error = np.linalg.norm(forward.project(forward.unproject(pixels)) - pixels, axis=1)
    assert error.max() < 0.01


def test_ftheta_matches_the_definition():
    camera = FThetaCamera.from_array(FTHETA_BACKWARD)
    point = np.array([3.0, -1.0, 8.0])
    theta = np.arccos(point[2] / np.linalg.norm(point))
    pixel = camera.project(point[None])[0]
    radius = np.linalg.norm(pixel - [957.0, 760.0])
    assert np.polynomial.polynomial.polyval(radius, FTHETA_BACKWARD[4:10]) == pytest.approx(theta, abs=1e-9)
    np.testing.assert_allclose((pixel - [957.0, 760.0]) / radius, point[:2] / np.linalg.norm(point[:2]), atol=1e-12)


def test_pinhole_unproject_inverts_project():
    camera = PinholeCamera(300.0, 310.0, 160.0, 90.0, 320, 180)
    pixels = np.array([[0.0, 0.0], [160.0, 90.0], [319.5, 179.5]])
    np.testing.assert_allclose(camera.project(camera.unproject(pixels) * 7.0), pixels, atol=1e-9)


rotations = st.builds(lambda q: Rotation.from_quat(q).as_matrix(),
                      st.lists(st.floats(-1, 1), min_size=4, max_size=4).filter(lambda q: np.linalg.norm(q) > 0.1))
sizes = st.lists(st.floats(0.3, 20.0), min_size=3, max_size=3)
centres = st.lists(st.floats(-80.0, 80.0), min_size=3, max_size=3)


@pytest.mark.parametrize("codec", sorted(CODECS))
@settings(max_examples=300, deadline=None)
@given(rotation=rotations, lwh=sizes, centre=centres)
def test_codec_round_trip_random_poses(codec, rotation, lwh, centre):
    box = Box3D(np.array(centre), rotation, np.array(lwh))
    back = CODECS[codec].decode(CODECS[codec].encode(box))
    np.testing.assert_allclose(back.corners(), box.corners(), atol=1e-6)


@pytest.mark.parametrize("codec", sorted(CODECS))
@settings(max_examples=300, deadline=None)
@given(heading=st.floats(-np.pi, np.pi), camera_yaw=st.floats(-np.pi, np.pi), lwh=sizes, centre=centres,
       near_lock=st.sampled_from([0.0, 1e-9, -1e-7, 1e-4]))
def test_codec_round_trip_upright_vehicles_and_gimbal_lock(codec, heading, camera_yaw, lwh, centre, near_lock):
    """Level vehicles at any heading seen by a level camera; for qwen3vl a heading along the
    camera's optical axis is exactly its gimbal lock (middle angle +-pi/2)."""
    for yaw in (heading, np.pi / 2, -np.pi / 2, 0.0, np.pi):
        object_in_camera_flu = rot_z(yaw + near_lock - camera_yaw)
        box = Box3D(np.array(centre), FLU_TO_RDF @ object_in_camera_flu, np.array(lwh))
        values = CODECS[codec].encode(box)
        back = CODECS[codec].decode(values)
        np.testing.assert_allclose(back.corners(), box.corners(), atol=1e-6)


def test_cosmos_level_car_has_only_pitch():
    box = Box3D(np.array([-9.0, -0.15, 18.0]), FLU_TO_RDF @ rot_z(0.65), np.array([5.3, 2.19, 2.03]))
    values = CODECS["cosmos"].encode(box)
    np.testing.assert_allclose(values[:6], [-9.0, -0.15, 18.0, 5.3, 2.19, 2.03])
    assert values[6] == pytest.approx(0.0, abs=1e-12) and values[8] == pytest.approx(0.0, abs=1e-12)
    assert abs(values[7]) == pytest.approx(0.65)


def test_qwen3vl_sizes_are_length_height_width_at_zero_rotation():
    # Local axes = camera axes at zero rotation: length along x, height along y (down), width along z.
    body_to_camera = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]])
    box = Box3D(np.zeros(3), body_to_camera, np.array([4.5, 1.9, 1.6]))
    values = CODECS["qwen3vl"].encode(box)
    np.testing.assert_allclose(values[3:], [4.5, 1.6, 1.9, 0, 0, 0], atol=1e-12)
    extent = np.ptp(box.corners(), axis=0)
    np.testing.assert_allclose(extent, values[3:6], atol=1e-12)


def test_world_to_camera_composition():
    """World -> camera FLU -> camera RDF equals the inverse of the RDF camera-to-world pose."""
    camera_to_world = make_pose(rot_z(0.4) @ rot_y(0.05) @ RDF_TO_FLU, np.array([10.0, 2.0, 1.5]))
    world_to_flu = make_pose(RDF_TO_FLU, np.zeros(3)) @ invert_pose(camera_to_world)
    point = np.array([30.0, -4.0, 0.7])
    np.testing.assert_allclose(FLU_TO_RDF @ apply(world_to_flu, point), apply(invert_pose(camera_to_world), point),
                               atol=1e-12)
