"""``format.camera_input``: the intrinsics in the prompt, or answers in a virtual camera that
infer and the evaluator turn back into the real camera (issue: camera-aware inputs)."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from av_grounding.dataset.answers import AnswerStyle
from av_grounding.dataset.camera_input import camera_sentence, frame_scale
from av_grounding.dataset.formats import read_cosmos
from av_grounding.evaluation.frames import EvaluationError
from av_grounding.evaluation.parse import parse_answer
from av_grounding.geometry.cameras import camera_from_record
from av_grounding.geometry.virtual import VIRTUAL_CAMERA
from av_grounding.params import EvaluateParams, FormatParams, ParamsError
from av_grounding.pipeline.evaluate import evaluate_folder
from av_grounding.pipeline.format import format_dataset
from av_grounding.pipeline.infer import prediction_record

REPO_PROMPTS = "prompts/av_grounding.yaml"
STYLE = AnswerStyle(2, None, True, True)


@pytest.fixture(scope="module")
def formatted(curated, tmp_path_factory):
    """The curated frames formatted four ways: camera_input none, prompt, virtual_camera, image_centre."""
    root = tmp_path_factory.mktemp("camera_input")
    for kind in ("none", "prompt", "virtual_camera", "image_centre"):
        format_dataset(FormatParams(prompts=REPO_PROMPTS, eval_clips=1, camera_input=kind), curated[0] / "filtered",
                       curated[0] / "extracted", root / kind)
    return root


def test_the_camera_sentence_by_hand():
    pinhole = {"camera_model": "pinhole", "intrinsics": [184.752, 184.752, 320.0, 180.0, 640, 360]}
    assert camera_sentence(pinhole, STYLE) == ("The camera is a pinhole camera with focal lengths fx 184.75 and fy "
                                               "184.75 pixels and principal point (320, 180); the image is 640x360 "
                                               "pixels.")
    # f-theta: r = theta / 1e-3 px (an equidistant lens of 1000 px/rad), 1920 px wide around cx 960:
    # the edges are 960 px = 0.96 rad from the axis, 110.01 degrees in all.
    ftheta = {"camera_model": "ftheta", "intrinsics": [960.0, 540.0, 1920, 1080, 0.0, 1e-3, 0, 0, 0, 0, 1.0]}
    assert camera_sentence(ftheta, STYLE) == ("The camera is an f-theta fisheye with a focal length of 1000 pixels "
                                              "per radian at its principal point (960, 540) and a horizontal field "
                                              "of view of 110.01 degrees; the image is 1920x1080 pixels.")


def test_prompt_puts_each_frames_intrinsics_after_the_user_prompt(formatted):
    plain = {s.id: s for s in read_cosmos(formatted / "none" / "train")}
    prompted = read_cosmos(formatted / "prompt" / "train")
    assert [s.id for s in prompted] == list(plain)
    lenses = set()
    for sample in prompted:
        assert sample.answer == plain[sample.id].answer  # only the prompt changes
        first, camera = sample.user.rsplit("\n", 1)
        assert first == plain[sample.id].user and camera == camera_sentence(sample.record, STYLE)
        fx = sample.record["intrinsics"][0]
        assert f"fx {fx:.2f}".rstrip("0").rstrip(".") in camera
        lenses.add(camera)
    assert len(lenses) >= 2  # the fixture's two cameras are told apart


def test_virtual_camera_answers_scale_centres_and_records_keep_the_truth(formatted):
    plain = {s.id: s for s in read_cosmos(formatted / "none" / "eval")}
    params = FormatParams(prompts=REPO_PROMPTS, eval_clips=1, camera_input="virtual_camera")
    scales = set()
    for sample in read_cosmos(formatted / "virtual_camera" / "eval"):
        record = sample.record
        assert record["annotations"] == plain[sample.id].record["annotations"]  # truth stays in the real camera
        block = record[VIRTUAL_CAMERA]
        assert block["focal_per_height"] == 1.0
        assert block["scale"] == pytest.approx(frame_scale(record, params.virtual_focal), abs=1e-6)
        fx, fy = record["intrinsics"][:2]
        assert block["scale"] == pytest.approx(record["height"] / np.sqrt(fx * fy), abs=1e-6)
        scales.add(block["scale"])
        answer = [b["bbox_3d"] for b in parse_answer(sample.answer).boxes]
        truth = [b["bbox_3d"] for b in record["annotations"]]
        assert len(answer) == len(truth)
        for virtual, real in zip(answer, truth):
            # centres: the (rounded) truth times the scale, rounded again; the rest as in the plain answer
            np.testing.assert_allclose(np.array(virtual[:3]) / block["scale"], real[:3],
                                       atol=0.005 / block["scale"] + 0.005 + 1e-9)
            assert virtual[3:] == real[3:]


def test_image_centre_answers_give_each_centres_pixel_and_virtual_distance(formatted):
    plain = {s.id: s for s in read_cosmos(formatted / "none" / "eval")}
    virtual = {s.id: s.record[VIRTUAL_CAMERA] for s in read_cosmos(formatted / "virtual_camera" / "eval")}
    for sample in read_cosmos(formatted / "image_centre" / "eval"):
        record = sample.record
        assert record["annotations"] == plain[sample.id].record["annotations"]  # truth stays in the real camera
        block = record[VIRTUAL_CAMERA]
        assert block == {**virtual[sample.id], "centre": "pixel", "camera_model": record["camera_model"],
                         "intrinsics": record["intrinsics"]}
        camera = camera_from_record(record["camera_model"], record["intrinsics"])
        answer = [b["bbox_3d"] for b in parse_answer(sample.answer).boxes]
        truth = [b["bbox_3d"] for b in record["annotations"]]
        assert len(answer) == len(truth) > 0
        for written, real in zip(answer, truth):
            # the exact centre's pixel and distance times the scale, to 2 decimals; the truth is the
            # exact centre to 2 decimals, which moves its pixel by up to `slack`
            pixel = camera.project(np.array(real[:3]))
            corners = np.array(real[:3]) + 0.005 * np.array(np.meshgrid(*[[-1, 1]] * 3)).reshape(3, -1).T
            slack = np.abs(camera.project(corners) - pixel).max()
            np.testing.assert_allclose(written[:2], pixel, rtol=0, atol=0.005 + slack + 1e-9)
            assert written[2] == pytest.approx(np.linalg.norm(real[:3]) * block["scale"],
                                               abs=0.005 + 0.0087 * block["scale"] + 1e-9)
            assert written[3:] == real[3:]


def test_a_box_the_parser_would_drop_is_left_out_of_the_answer_and_counted(curated, tmp_path, monkeypatch):
    """A centre whose pixel passes the parser's bound (a vehicle almost beside a pinhole camera)
    cannot be answered: shown here with the bound lowered to 400, which many pixels pass."""
    from av_grounding.evaluation import parse

    monkeypatch.setattr(parse, "MAX_ABS_VALUE", 400.0)
    params = FormatParams(prompts=REPO_PROMPTS, eval_clips=1, camera_input="image_centre")
    summary = format_dataset(params, curated[0] / "filtered", curated[0] / "extracted", tmp_path / "out")
    left_out = 0
    for split in ("train", "eval"):
        for sample in read_cosmos(tmp_path / "out" / split):
            answer = parse_answer(sample.answer).boxes
            assert all(abs(v) <= 400 for box in answer for v in box["bbox_3d"])
            left_out += len(sample.record["annotations"]) - len(answer)  # the truth keeps them all
    assert summary["boxes_unanswerable"] == left_out > 0


def _write_predictions(folder, samples, with_block: bool):
    """Each sample's own answer as its prediction, as infer writes it (``prediction_record``)."""
    from av_grounding.models.builtin import task_tokenizer

    tokenizer = task_tokenizer("system", "user")
    folder.mkdir(parents=True)
    for sample in samples:
        ids = tokenizer(sample.answer, add_special_tokens=False)["input_ids"]
        block = sample.record[VIRTUAL_CAMERA] if with_block else None
        record = prediction_record(sample.answer, ids, [-0.1] * len(ids), tokenizer, None, block)
        (folder / f"{sample.id}.json").write_text(json.dumps(record))
    return folder


@pytest.mark.parametrize("kind", ["virtual_camera", "image_centre"])
def test_evaluation_scores_virtual_answers_in_the_real_camera(formatted, tmp_path, kind):
    """Perfect answers in the answer camera score as perfect real ones once converted back, by
    infer (the annotations it writes) and by the evaluator (raw_text plus the block; a file
    without the block is read in the truth's answer camera, with a warning); read against truth
    without a block, the moved boxes score far worse."""
    from av_grounding.evaluation.frames import EvaluationWarning

    samples = read_cosmos(formatted / kind / "eval")
    gt = formatted / kind / "eval" / "text"
    params = EvaluateParams()
    converted = evaluate_folder(params, gt, _write_predictions(tmp_path / "with", samples, True),
                                tmp_path / "with.json")
    with pytest.warns(EvaluationWarning, match="read in the truth's virtual camera"):
        fallback = evaluate_folder(params, gt, _write_predictions(tmp_path / "without", samples, False),
                                   tmp_path / "without.json")
    assert converted["ap3d"]["ap"] > 0.95 and converted["center_distance"]["map"] > 0.95
    assert fallback == converted
    ignored = evaluate_folder(params, formatted / "none" / "eval" / "text", tmp_path / "without",
                              tmp_path / "ignored.json")
    assert ignored["center_distance"]["map"] < 0.5 * converted["center_distance"]["map"]
    written = json.loads(next((tmp_path / "with").glob("*.json")).read_text())
    sample = next(s for s in samples if s.id == next((tmp_path / "with").glob("*.json")).stem)
    for box, truth in zip(written["annotations"], sample.record["annotations"]):
        np.testing.assert_allclose(box["bbox_3d"][:3], truth["bbox_3d"][:3], atol=0.011)
    only_boxes = tmp_path / "annotations_only"
    only_boxes.mkdir()
    for path in (tmp_path / "with").glob("*.json"):  # annotations alone are read as they are: real
        record = json.loads(path.read_text())
        (only_boxes / path.name).write_text(json.dumps({"annotations": record["annotations"]}))
    assert evaluate_folder(params, gt, only_boxes, tmp_path / "only.json")["ap3d"]["ap"] == converted["ap3d"]["ap"]


@pytest.mark.parametrize("kind", ["virtual_camera", "image_centre"])
def test_a_zero_shot_column_is_read_in_the_real_camera(formatted, tmp_path, kind):
    """The base model never learned the answer camera: its answers (here the plain dataset's,
    in the real camera) are written with the real camera said outright, and score as they are
    without the evaluator's fallback to the truth's block."""
    import warnings

    from av_grounding.models.builtin import task_tokenizer
    from av_grounding.pipeline.infer import answer_block

    plain = {s.id: s.answer for s in read_cosmos(formatted / "none" / "eval")}
    samples = read_cosmos(formatted / kind / "eval")
    tokenizer = task_tokenizer("system", "user")
    (tmp_path / "zero").mkdir()
    for sample in samples:
        assert answer_block(sample, trained=True) == sample.record[VIRTUAL_CAMERA]
        ids = tokenizer(plain[sample.id], add_special_tokens=False)["input_ids"]
        record = prediction_record(plain[sample.id], ids, [-0.1] * len(ids), tokenizer, None,
                                   answer_block(sample, trained=False))
        assert record[VIRTUAL_CAMERA] == {"scale": 1.0}
        (tmp_path / "zero" / f"{sample.id}.json").write_text(json.dumps(record))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        scores = evaluate_folder(EvaluateParams(), formatted / kind / "eval" / "text", tmp_path / "zero",
                                 tmp_path / "zero.json")
    assert scores["ap3d"]["ap"] > 0.95 and scores["center_distance"]["map"] > 0.95


@pytest.mark.parametrize("block, problem", [
    ({"scale": 0}, "must be an object with a positive 'scale'"),
    ({"scale": "2"}, "must be an object with a positive 'scale'"),
    ({"focal_per_height": 1.0}, "must be an object with a positive 'scale'"),
    ([1.5], "must be an object with a positive 'scale'"),
    (None, "must be an object with a positive 'scale'"),
    ({"scale": 1.0, "centre": "uv"}, "centre must be 'xyz' or 'pixel'"),
    ({"scale": 1.0, "centre": "pixel"}, "with pixel centres: needs a 'camera_model' string"),
    ({"scale": 1.0, "centre": "pixel", "camera_model": "pinhole", "intrinsics": [1.0, 2.0]}, "with pixel centres"),
    ({"scale": 1.0, "centre": "pixel", "camera_model": "fisheye", "intrinsics": [1.0] * 6}, "unknown camera model"),
    ({"scale": 1.0, "centre": "pixel", "camera_model": "pinhole", "intrinsics": [None, 315, 320, 180, 640, 360]},
     "intrinsics must be finite numbers"),
    ({"scale": 1.0, "centre": "pixel", "camera_model": "pinhole", "intrinsics": [True, 315, 320, 180, 640, 360]},
     "intrinsics must be finite numbers"),
    ({"scale": 1.0, "centre": "pixel", "camera_model": "pinhole", "intrinsics": [0, 315, 320, 180, 640, 360]},
     "focal length"),
    ({"scale": 1.0, "centre": "pixel", "camera_model": "pinhole", "intrinsics": [315, 315, 320, 180, 0, 360]},
     "image size 0x360 is not positive"),
])
def test_a_bad_virtual_camera_block_is_an_error_naming_the_file(formatted, tmp_path, block, problem):
    sample = read_cosmos(formatted / "virtual_camera" / "eval")[0]
    pred = tmp_path / "pred"
    pred.mkdir()
    (pred / f"{sample.id}.json").write_text(json.dumps({"raw_text": sample.answer, VIRTUAL_CAMERA: block}))
    with pytest.raises(EvaluationError, match=rf"{sample.id}\.json: 'virtual_camera'.*{re.escape(problem)}"):
        evaluate_folder(EvaluateParams(), formatted / "virtual_camera" / "eval" / "text", pred, tmp_path / "o.json")


@pytest.mark.parametrize("focal", [0.0, -1.0, 1e-7, float("inf"), float("nan")])
def test_a_virtual_focal_that_is_not_positive_is_refused(focal):
    with pytest.raises(ParamsError, match="virtual_focal"):
        FormatParams(virtual_focal=focal)
