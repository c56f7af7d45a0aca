"""Views of a frame (``dataset/views.py``): the sky crop (``format.crop_above_deg``) and mirrored
training frames (``format.mirror_train``). The box, the camera and the image change together, so
a box projects through the view's camera exactly onto the view's pixels, with both codecs and both
lens models; mirroring twice is the identity. ``format``'s views: ``test_dataset.py``."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from scipy.spatial.transform import Rotation

from av_grounding.dataset.views import cropped_record, mirror_record, sky_rows, view_jpeg
from av_grounding.geometry.boxes import MIRROR_RDF, Box3D, mirrored_box, projected_rectangle
from av_grounding.geometry.cameras import FThetaCamera, PinholeCamera, camera_from_record
from av_grounding.geometry.codecs import CODECS, mirrored_values
from av_grounding.params import FormatParams, ParamsError

FTHETA = FThetaCamera.from_array(np.array([957.0, 760.0, 1920, 1080, 0.0, 1.06e-3, 2.0e-10, -1.5e-11, 3.0e-15,
                                           -1.0e-19, 1.0]))
CAMERAS = {"pinhole_120": PinholeCamera(184.75, 184.75, 318.0, 190.0, 640, 360),
           "pinhole_70": PinholeCamera(457.0, 455.0, 321.5, 178.0, 640, 360), "ftheta_120": FTHETA,
           "ftheta_affine": FThetaCamera.from_array(np.array([*FTHETA.to_array(), 1.02, 0.01, -0.015]))}
# A corner's left-right partner (geometry/boxes.py's order: the +w corners are 0, 3, 4 and 7).
PARTNER = [1, 0, 3, 2, 5, 4, 7, 6]

boxes = st.builds(
    lambda c, q, s: Box3D(np.array(c), Rotation.from_quat(q).as_matrix(), np.array(s)),
    st.tuples(st.floats(-30, 30), st.floats(-3, 3), st.floats(2, 80)),
    st.tuples(*[st.floats(-1, 1)] * 4).filter(lambda q: np.linalg.norm(q) > 0.1),
    st.tuples(st.floats(0.5, 12), st.floats(0.5, 3), st.floats(0.5, 4)))


@settings(max_examples=100, deadline=None)
@given(box=boxes)
def test_a_mirrored_box_has_the_reflected_corners_and_mirrors_back(box):
    mirrored = mirrored_box(box)
    np.testing.assert_allclose(mirrored.corners(), (box.corners() @ MIRROR_RDF)[PARTNER], atol=1e-12)
    assert np.linalg.det(mirrored.rotation) == pytest.approx(1.0)
    twice = mirrored_box(mirrored)
    np.testing.assert_allclose(twice.corners(), box.corners(), atol=1e-12)


@pytest.mark.parametrize("codec", sorted(CODECS))
@settings(max_examples=60, deadline=None)
@given(box=boxes)
def test_mirrored_numbers_decode_to_the_mirrored_box_and_mirror_back(codec, box):
    values = CODECS[codec].encode(box)
    mirrored = mirrored_values(values, CODECS[codec])
    np.testing.assert_allclose(CODECS[codec].decode(mirrored).corners(), mirrored_box(box).corners(), atol=1e-9)
    np.testing.assert_allclose(CODECS[codec].decode(mirrored_values(mirrored, CODECS[codec])).corners(),
                               box.corners(), atol=1e-9)


@settings(max_examples=60, deadline=None)
@given(box=boxes)
def test_in_the_cosmos_codec_mirroring_negates_x_pitch_and_yaw(box):
    values = CODECS["cosmos"].encode(box)
    change = mirrored_values(values, CODECS["cosmos"]) - values * [-1, 1, 1, 1, 1, 1, 1, -1, -1]
    np.testing.assert_allclose(change[:6], 0.0, atol=1e-9)
    turns = change[6:] / (2 * np.pi)  # an angle may come back wrapped by a full turn
    np.testing.assert_allclose(turns, np.round(turns), atol=1e-9)


@pytest.mark.parametrize("camera", sorted(CAMERAS))
def test_the_mirrored_camera_sees_the_mirrored_point_at_the_flipped_pixel(camera):
    lens = CAMERAS[camera]
    points = np.random.default_rng(0).uniform([-20, -3, 1], [20, 3, 60], (500, 3))
    mirror = lens.mirrored()
    inside = lens.valid(points) & mirror.valid(points @ MIRROR_RDF)
    assert inside.mean() > 0.5
    u, v = lens.project(points[inside]).T
    np.testing.assert_allclose(mirror.project(points[inside] @ MIRROR_RDF), np.stack([lens.width - u, v], 1),
                               atol=1e-6)
    np.testing.assert_allclose(mirror.mirrored().to_array(), lens.to_array(), atol=1e-12)
    np.testing.assert_allclose(mirror.unproject(np.array([[lens.width - 100.5, 40.5]])) @ MIRROR_RDF,
                               lens.unproject(np.array([[100.5, 40.5]])), atol=1e-9)


@pytest.mark.parametrize("codec", sorted(CODECS))
@pytest.mark.parametrize("camera", sorted(CAMERAS))
@settings(max_examples=30, deadline=None)
@given(box=boxes)
def test_a_mirrored_box_projects_onto_the_flipped_rectangle(codec, camera, box):
    lens = CAMERAS[camera]
    # Past the calibrated angle an f-theta lens extends linearly from an edge found at its corner
    # pixels, which a flip moves by a pixel (FThetaCamera.mirrored): compared inside it only.
    assume(isinstance(lens, PinholeCamera) or lens.valid(box.corners()).all())
    rect = projected_rectangle(box.corners(), lens)
    mirrored = CODECS[codec].decode(mirrored_values(CODECS[codec].encode(box), CODECS[codec]))
    flipped = projected_rectangle(mirrored.corners(), lens.mirrored())
    if rect is None:
        assert flipped is None
        return
    np.testing.assert_allclose(flipped, [lens.width - rect[2], rect[1], lens.width - rect[0], rect[3]], atol=1e-5)


def test_a_mirrored_record_keeps_distance_and_order_fields_and_is_flagged():
    lens = CAMERAS["pinhole_70"]
    box = Box3D(np.array([4.0, 1.0, 20.0]), Rotation.from_euler("y", 0.4).as_matrix(), np.array([4.5, 1.9, 1.5]))
    record = {"camera_model": "pinhole", "intrinsics": lens.to_array().tolist(), "box_codec": "cosmos",
              "width": 640, "height": 360, "objects": [
                  {"track_id": 7, "label": "car", "distance_m": 20.4, "center": box.center.tolist(),
                   "bbox_3d": CODECS["cosmos"].encode(box).tolist(), "object_to_world": "unflipped scene"}]}
    mirrored = mirror_record(record)
    assert mirrored["mirrored"] is True and "mirrored" not in record
    assert mirrored["intrinsics"] == [457.0, 455.0, 640 - 321.5, 178.0, 640, 360]
    (obj,) = mirrored["objects"]
    assert obj["center"] == [-4.0, 1.0, 20.0] and obj["distance_m"] == 20.4 and obj["track_id"] == 7
    assert set(obj) == {"track_id", "label", "distance_m", "center", "bbox_3d"}
    assert camera_from_record("pinhole", mirrored["intrinsics"]) == lens.mirrored()


def test_the_view_jpeg_is_the_image_cropped_then_flipped_and_bad_bytes_name_their_source():
    across = np.tile(np.linspace(0, 255, 64, dtype=np.uint8), (48, 1))
    down = np.tile(np.linspace(0, 255, 48, dtype=np.uint8)[:, None], (1, 64))  # a flip upside down shows
    image = np.stack([across, down, np.full_like(across, 90)], axis=-1)
    ok, jpeg = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 95])
    assert ok
    original = cv2.imdecode(jpeg, cv2.IMREAD_COLOR).astype(int)
    assert view_jpeg(jpeg.tobytes(), "x") == jpeg.tobytes()  # no view: the bytes as extracted
    for top, mirrored in ((0, True), (10, False), (10, True)):
        view = cv2.imdecode(np.frombuffer(view_jpeg(jpeg.tobytes(), "x", top, mirrored), np.uint8), cv2.IMREAD_COLOR)
        expected = original[top:, ::-1] if mirrored else original[top:]
        assert view.shape == expected.shape and np.abs(view.astype(int) - expected).mean() < 2.0
        assert view_jpeg(jpeg.tobytes(), "x", top, mirrored) == view_jpeg(jpeg.tobytes(), "x", top, mirrored)
    with pytest.raises(ValueError, match=r"shard\.tar:000001\.jpg: not a JPEG image"):
        view_jpeg(b"not an image", "shard.tar:000001.jpg", 0, True)
    with pytest.raises(ValueError, match="x: 48 rows, fewer than the 48 to crop and one to keep"):
        view_jpeg(jpeg.tobytes(), "x", 48)


@pytest.mark.parametrize("camera", sorted(CAMERAS))
def test_the_cropped_camera_sees_every_point_one_crop_higher(camera):
    lens = CAMERAS[camera]
    cropped = lens.cropped(100)
    assert (cropped.width, cropped.height) == (lens.width, lens.height - 100)
    points = np.random.default_rng(1).uniform([-20, -3, 1], [20, 3, 60], (500, 3))
    inside = lens.valid(points) & cropped.valid(points)
    assert inside.mean() > 0.5
    np.testing.assert_allclose(cropped.project(points[inside]), lens.project(points[inside]) - [0, 100], atol=1e-6)
    np.testing.assert_array_equal(type(lens).from_array(cropped.to_array()).to_array(), cropped.to_array())
    assert lens.cropped(0).to_array().tolist() == lens.to_array().tolist()
    for bad in (-1, lens.height):
        with pytest.raises(ValueError, match="cannot crop"):
            lens.cropped(bad)


def test_sky_rows_by_hand():
    pinhole = CAMERAS["pinhole_70"]  # fy 455, cy 178: the ray 20 degrees up crosses row 178 - 455 tan 20
    assert sky_rows(pinhole, 20.0) == int(np.floor(178.0 - 455.0 * np.tan(np.radians(20))))  # 12
    assert sky_rows(pinhole, 60.0) == 0  # above the image: nothing cut
    radius = FTHETA.radius_of(np.radians(15.0))  # f-theta: the row cy - r(15 degrees)
    assert sky_rows(FTHETA, 15.0) == int(np.floor(760.0 - radius))
    for bad in (0.0, 90.0, -5.0, float("nan")):
        with pytest.raises(ValueError, match="between 0 and 90"):
            sky_rows(pinhole, bad)
        with pytest.raises(ParamsError, match="crop_above_deg"):
            FormatParams(crop_above_deg=bad)


def test_a_cropped_record_keeps_its_boxes_and_names_the_rows_cut():
    lens = CAMERAS["pinhole_70"]
    record = {"camera_model": "pinhole", "intrinsics": lens.to_array().tolist(), "width": 640, "height": 360,
              "objects": [{"bbox_3d": [1.0] * 9}]}
    cropped = cropped_record(record, 20.0)
    assert cropped["crop_top"] == 12 and cropped["height"] == 348 and cropped["objects"] == record["objects"]
    assert cropped["intrinsics"] == [457.0, 455.0, 321.5, 166.0, 640, 348]
    assert cropped_record(record, 60.0)["crop_top"] == 0 and cropped_record(record, 60.0)["height"] == 360
