"""The virtual camera (``geometry.virtual``): an exact inverse with both codecs and both lens
models, a box's pixel kept, and one scale for a camera at every resolution; centres written as
their pixel and virtual distance, inverted to within the lens's unprojection."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.spatial.transform import Rotation

from av_grounding.geometry.boxes import Box3D, projected_rectangle
from av_grounding.geometry.cameras import FThetaCamera, PinholeCamera
from av_grounding.geometry.codecs import CODECS
from av_grounding.geometry.virtual import AnswerCamera, focal_length_px, virtual_scale

# A 120-degree f-theta camera (backward polynomial, as RDS-HQ stores it) and two pinhole lenses.
FTHETA = FThetaCamera.from_array(np.array([957.0, 760.0, 1920, 1080, 0.0, 1.06e-3, 2.0e-10, -1.5e-11, 3.0e-15,
                                           -1.0e-19, 1.0]))
CAMERAS = {"pinhole_120": PinholeCamera(320 / np.tan(np.radians(60)), 320 / np.tan(np.radians(60)), 320, 180, 640, 360),
           "pinhole_70": PinholeCamera(457.0, 455.0, 321.5, 178.0, 640, 360), "ftheta_120": FTHETA}

boxes = st.builds(
    lambda c, q, s: Box3D(np.array(c), Rotation.from_quat(q).as_matrix(), np.array(s)),
    st.tuples(st.floats(-30, 30), st.floats(-3, 3), st.floats(2, 80)),
    st.tuples(*[st.floats(-1, 1)] * 4).filter(lambda q: np.linalg.norm(q) > 0.1),
    st.tuples(st.floats(0.5, 12), st.floats(0.5, 3), st.floats(0.5, 4)))


def every_codec_and_lens(test):
    """Run ``test(codec, camera, box, focal)`` for every codec and lens, on 60 random boxes and
    virtual focal lengths (0.2 to 5 image heights) each."""
    test = settings(max_examples=60, deadline=None)(given(box=boxes, focal=st.floats(0.2, 5.0))(test))
    return pytest.mark.parametrize("codec", sorted(CODECS))(pytest.mark.parametrize("camera", sorted(CAMERAS))(test))


def test_focal_lengths_by_hand():
    assert focal_length_px(CAMERAS["pinhole_70"]) == pytest.approx(np.sqrt(457.0 * 455.0))
    assert focal_length_px(FTHETA) == pytest.approx(1 / 1.06e-3)  # dr/dtheta = 1 / (dtheta/dr) at the axis
    stretched = FThetaCamera.from_array(np.array([*FTHETA.to_array(), 1.21, 0.0, 0.0]))
    assert focal_length_px(stretched) == pytest.approx(1.1 / 1.06e-3)
    # f / height = 0.5 image heights for a 640x360 pinhole of f 180: a virtual focal of 1 doubles the centre
    assert virtual_scale(PinholeCamera(180.0, 180.0, 320, 180, 640, 360), 1.0) == pytest.approx(2.0)


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan"), float("inf")])
def test_a_focal_length_that_is_not_positive_is_refused(bad):
    with pytest.raises(ValueError, match="virtual focal length"):
        virtual_scale(CAMERAS["pinhole_70"], bad)
    with pytest.raises(ValueError, match="focal length"):
        focal_length_px(PinholeCamera(bad, 100.0, 320, 180, 640, 360))


@every_codec_and_lens
def test_the_inverse_is_exact_and_the_centre_keeps_its_pixel(codec, camera, box, focal):
    lens = CAMERAS[camera]
    values = CODECS[codec].encode(box)[None]
    answer_camera = AnswerCamera(focal, virtual_scale(lens, focal))
    virtual = answer_camera.to_answer(values)
    np.testing.assert_allclose(answer_camera.to_real(virtual), values, rtol=1e-13, atol=1e-13)
    back = CODECS[codec].decode(answer_camera.to_real(virtual)[0])
    np.testing.assert_allclose(back.corners(), box.corners(), atol=1e-9)
    moved = CODECS[codec].decode(virtual[0])
    np.testing.assert_array_equal(virtual[0, 3:], values[0, 3:])  # sizes and angles as they were
    np.testing.assert_allclose(moved.rotation, box.rotation, atol=1e-12)
    np.testing.assert_allclose(lens.project(moved.center), lens.project(box.center), atol=1e-6)


def pixel_camera(lens, focal: float) -> AnswerCamera:
    """``image_centre``'s answer camera of ``lens`` as a record would give it."""
    model = "ftheta" if isinstance(lens, FThetaCamera) else "pinhole"
    return AnswerCamera(focal, virtual_scale(lens, focal), model, tuple(lens.to_array()))


@every_codec_and_lens
def test_pixel_centres_invert_and_give_the_centres_pixel_and_virtual_distance(codec, camera, box, focal):
    lens = CAMERAS[camera]
    values = CODECS[codec].encode(box)[None]
    answer_camera = pixel_camera(lens, focal)
    written = answer_camera.to_answer(values)
    np.testing.assert_allclose(written[0, :2], lens.project(box.center), rtol=0, atol=1e-9)
    assert written[0, 2] == pytest.approx(np.linalg.norm(box.center) * answer_camera.scale, rel=1e-12)
    np.testing.assert_array_equal(written[0, 3:], values[0, 3:])  # sizes and angles as they were
    # f-theta inverts its polynomial numerically: the centre comes back to well under a millimetre
    np.testing.assert_allclose(answer_camera.to_real(written), values, rtol=0, atol=1e-6)
    back = CODECS[codec].decode(answer_camera.to_real(written)[0])
    np.testing.assert_allclose(back.corners(), box.corners(), atol=1e-6)


@pytest.mark.parametrize("camera", sorted(CAMERAS))
def test_a_serialized_answer_camera_reads_back_equal(camera):
    for answer_camera in (AnswerCamera(1.0, 0.75), pixel_camera(CAMERAS[camera], 1.0)):
        block = answer_camera.serialize()
        assert AnswerCamera.deserialize(block, "here") == answer_camera
        assert ("centre" in block) == (answer_camera.camera is not None)


def test_pixel_centres_by_hand():
    """A pinhole of f 180 px on a 640x360 image (scale 2 at one image height): the centre
    (4, -1, 20) m is at pixel (320 + 180 * 4 / 20, 180 - 180 / 20) = (356, 171), its distance
    sqrt(16 + 1 + 400) = 20.4206 m, written times 2."""
    lens = PinholeCamera(180.0, 180.0, 320.0, 180.0, 640, 360)
    answer_camera = pixel_camera(lens, 1.0)
    box = np.array([[4.0, -1.0, 20.0, 4.5, 1.9, 1.6, 0.0, 0.3, 0.0]])
    written = answer_camera.to_answer(box)
    np.testing.assert_allclose(written[0, :3], [356.0, 171.0, 2 * np.sqrt(417.0)], rtol=1e-12)
    np.testing.assert_allclose(answer_camera.to_real(written), box, rtol=0, atol=1e-12)
    assert answer_camera.to_answer(np.zeros((0, 9))).shape == (0, 9)  # no boxes: nothing to move


def test_a_pinhole_centre_behind_the_camera_is_written_with_a_negative_distance():
    """A long vehicle beside the camera can show its front while its centre is behind the image
    plane: its pixel is that of the mirrored point, so the distance takes the sign that inverts."""
    lens = PinholeCamera(315.0, 315.0, 320.0, 252.0, 640, 360)
    answer_camera = pixel_camera(lens, 1.0)
    box = np.array([[-3.0, 0.5, -0.3, 6.0, 2.0, 1.6, 0.0, 0.2, 0.0]])
    written = answer_camera.to_answer(box)
    assert written[0, 2] == pytest.approx(-np.linalg.norm(box[0, :3]) * answer_camera.scale)
    np.testing.assert_allclose(answer_camera.to_real(written), box, rtol=0, atol=1e-12)


@pytest.mark.parametrize("bad", [0.0, -2.0, float("nan"), True])
def test_an_answer_camera_without_a_positive_scale_is_refused(bad):
    with pytest.raises(ValueError, match="positive number"):
        AnswerCamera(1.0, bad)


@pytest.mark.parametrize("camera", sorted(CAMERAS))
@pytest.mark.parametrize("factor", [0.25, 0.4166, 1.5])
def test_the_scale_is_the_same_at_every_resolution(camera, factor):
    """What the model sees is the image resized to its pixel budget: the virtual depth must not
    depend on that size (the focal length is measured in image heights)."""
    lens = CAMERAS[camera]
    small = lens.resized(round(lens.width * factor), round(lens.height * factor))
    aspect = (small.width / lens.width) / (small.height / lens.height)  # rounding to whole pixels
    assert virtual_scale(small, 1.0) == pytest.approx(virtual_scale(lens, 1.0) / np.sqrt(aspect), rel=1e-9)


def test_a_virtual_box_in_the_virtual_camera_has_the_apparent_size_of_the_box_in_its_own():
    """Omni3D's premise: seen by a pinhole camera of focal ``s * f``, the box moved to
    ``s * centre`` (its size unchanged) spans the pixels the box spans in its own camera (to the
    perspective of its depth extent, seen from another distance)."""
    lens = CAMERAS["pinhole_70"]
    box = Box3D(np.array([3.0, 1.0, 40.0]), np.eye(3), np.array([4.5, 1.6, 1.9]))
    scale = virtual_scale(lens, 1.0)
    virtual_lens = PinholeCamera(lens.fx * scale, lens.fy * scale, lens.cx, lens.cy, lens.width, lens.height)
    moved = Box3D(box.center * scale, box.rotation, box.lwh)
    seen, seen_virtual = projected_rectangle(box.corners(), lens), projected_rectangle(moved.corners(), virtual_lens)
    np.testing.assert_allclose(seen_virtual[2:] - seen_virtual[:2], seen[2:] - seen[:2], rtol=0.02)
