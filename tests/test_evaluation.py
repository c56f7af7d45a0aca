"""Evaluation: parsing, scores, IoU against independent computations, AP against pycocotools,
the recipe's metrics on hand-computed cases, bad inputs, strict JSON over the stage's outputs."""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from shapely.geometry import Polygon

from av_grounding.evaluation.ap import ImageBoxes, coco_ap
from av_grounding.evaluation.config import ConfigError, EvaluationConfig
from av_grounding.evaluation.frames import EvaluationError, load_frames
from av_grounding.evaluation.iou import iou_2d_matrix, iou_3d, iou_3d_matrix
from av_grounding.evaluation.matching import match_centres
from av_grounding.evaluation.parse import box_scores, parse_answer
from av_grounding.evaluation.recipe import aligned_iou_matrix, normalise_label, recipe_rectangles
from av_grounding.evaluation.table import INTERVAL_ROWS, ROWS, lookup
from av_grounding.geometry.boxes import Box3D
from av_grounding.geometry.codecs import get_codec
from av_grounding.geometry.transforms import rot_x, rot_z, wrap_angle
from av_grounding.params import EvaluateParams, ParamsError, load
from av_grounding.pipeline.evaluate import evaluate

REPO = Path(__file__).resolve().parents[1]
LABELS = ["car", "truck", "bus"]
CAMERA = {"fx": 300.0, "fy": 300.0, "cx": 320.0, "cy": 180.0}  # a 640x360 image
CARS = [[-3.0, 0.7, 15.0, 4.5, 1.9, 1.6, 0.0, 0.2, 0.0], [2.5, 0.7, 22.0, 4.6, 1.9, 1.5, 0.0, -0.1, 0.0],
        [6.0, 0.5, 40.0, 12.0, 2.6, 3.2, 0.0, 0.0, 0.0]]
CONFIG = EvaluationConfig()


def approx(value):
    """Metrics files hold 6 decimals."""
    return pytest.approx(value, abs=1e-6)


def strict_loads(text: str):
    """json.loads that refuses NaN and Infinity, as browsers, Node and DVC's tools do."""
    def refuse(constant):
        raise ValueError(f"non-standard JSON constant {constant}")

    return json.loads(text, parse_constant=refuse)


# --- AP against pycocotools ---------------------------------------------------------------------

def random_rects(rng, n):
    xy = rng.uniform(0, 200, (n, 2))
    wh = rng.uniform(2, 60, (n, 2))
    return np.concatenate([xy, xy + wh], axis=1)


def coco_reference(images):
    """pycocotools' AP (IoU 0.50:0.95), AP50 and AP75 of images given as
    (truth rects, truth labels, detection rects, detection labels, detection scores)."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    gt = {"images": [], "annotations": [], "categories": [{"id": i + 1, "name": n} for i, n in enumerate(LABELS)]}
    dts = []
    for image_id, (g_rects, g_labels, d_rects, d_labels, d_scores) in enumerate(images, start=1):
        gt["images"].append({"id": image_id, "width": 640, "height": 360})
        for r, label in zip(g_rects, g_labels):
            gt["annotations"].append({"id": len(gt["annotations"]) + 1, "image_id": image_id,
                                      "category_id": LABELS.index(label) + 1,
                                      "bbox": [r[0], r[1], r[2] - r[0], r[3] - r[1]],
                                      "area": (r[2] - r[0]) * (r[3] - r[1]), "iscrowd": 0})
        for r, label, s in zip(d_rects, d_labels, d_scores):
            dts.append({"image_id": image_id, "category_id": LABELS.index(label) + 1,
                        "bbox": [r[0], r[1], r[2] - r[0], r[3] - r[1]], "score": s})
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = gt
        coco.createIndex()
        result = coco.loadRes(dts) if dts else COCO()
        evaluator = COCOeval(coco, result, "bbox")
        evaluator.params.areaRng = [[0, 1e10]]
        evaluator.params.areaRngLbl = ["all"]
        evaluator.evaluate()
        evaluator.accumulate()
    precision = evaluator.eval["precision"][:, :, :, 0, -1]  # T, R, K at maxDets=100
    valid = precision > -1
    return precision[valid].mean() if valid.any() else -1.0, [precision[t][valid[t]].mean() for t in (0, 5)]


@pytest.mark.parametrize("seed", range(12))
def test_ap2d_equals_pycocotools(seed):
    rng = np.random.default_rng(seed)
    images = []
    for _ in range(int(rng.integers(3, 15))):
        n_gt, n_dt = int(rng.integers(0, 8)), int(rng.integers(0, 10))
        g = random_rects(rng, n_gt)
        # Detections: jittered truths plus random ones, some tied scores.
        d = np.concatenate([g[: n_dt // 2] + rng.normal(0, 4, (min(n_gt, n_dt // 2), 4)),
                            random_rects(rng, n_dt - min(n_gt, n_dt // 2))])
        d[:, 2:] = np.maximum(d[:, 2:], d[:, :2] + 1)
        g_labels = list(rng.choice(LABELS, n_gt))
        matched = min(n_gt, n_dt // 2)  # jittered truths keep their label, the rest is random
        d_labels = g_labels[:matched] + list(rng.choice(LABELS, len(d) - matched))
        images.append((g, g_labels, d, d_labels, list(np.round(rng.uniform(0, 1, len(d)), 1))))
    ours = coco_ap([ImageBoxes(gl, dl, np.array(ds), iou_2d_matrix(d, g)) for g, gl, d, dl, ds in images],
                   LABELS, list(CONFIG.coco_thresholds))
    reference, (ap50, ap75) = coco_reference(images)
    if reference == -1:
        assert ours.ap is None
        return
    assert ours.ap == pytest.approx(reference, abs=1e-6)
    assert ap50 > 0.05  # the inputs exercise real matches
    assert ours.per_threshold[CONFIG.coco_thresholds[0]] == pytest.approx(ap50, abs=1e-6)
    assert ours.per_threshold[CONFIG.coco_thresholds[5]] == pytest.approx(ap75, abs=1e-6)


def projected_rect(values):
    """Independent image rectangle of a box wholly in front of the pinhole CAMERA: the bounds
    of its 8 projected corners, clipped to the 640x360 image."""
    corners = get_codec("cosmos").decode(values).corners()
    u = CAMERA["fx"] * corners[:, 0] / corners[:, 2] + CAMERA["cx"]
    v = CAMERA["fy"] * corners[:, 1] / corners[:, 2] + CAMERA["cy"]
    return np.clip([u.min(), v.min(), u.max(), v.max()], 0, [640, 360, 640, 360])


def random_box(rng):
    return [*rng.uniform(-8, 8, 1), *rng.uniform(-1, 2, 1), *rng.uniform(8, 50, 1), *rng.uniform(1, 5, 3),
            0.0, *rng.uniform(-np.pi, np.pi, 1), 0.0]


@pytest.mark.parametrize("seed", range(6))
def test_standalone_ap2d_with_per_box_scores_equals_pycocotools(tmp_path, seed):
    """Files as another tool writes them (a `score` in each box), through the standalone
    evaluator: many frames and classes, empty frames, missing answers, tied scores."""
    rng = np.random.default_rng(100 + seed)
    truth, answers, images = {}, {}, []
    for index in range(int(rng.integers(8, 20))):
        gt = [random_box(rng) for _ in range(int(rng.integers(0, 6)))]
        gt_labels = list(rng.choice(LABELS, len(gt)))
        jittered = [list(np.array(b) + np.r_[rng.normal(0, 0.4, 3), rng.normal(0, 0.2, 3), 0, rng.normal(0, 0.1), 0])
                    for b in gt if rng.random() < 0.7]
        dt = jittered + [random_box(rng) for _ in range(int(rng.integers(0, 4)))]
        dt_labels = gt_labels[:len(jittered)] + list(rng.choice(LABELS, len(dt) - len(jittered)))
        scores = [float(s) for s in np.round(rng.uniform(0, 1, len(dt)), 1)]  # ties
        name = f"{index:03d}"
        truth[name] = [{"label": label, "bbox_3d": b} for label, b in zip(gt_labels, gt)]
        if rng.random() < 0.1:  # no answer at all: zero predictions
            dt, dt_labels, scores = [], [], []
        else:
            answers[name] = [{"label": label, "bbox_3d": b, "score": s}
                             for label, b, s in zip(dt_labels, dt, scores)]
        images.append(([projected_rect(b) for b in gt], gt_labels, [projected_rect(b) for b in dt], dt_labels, scores))
    write_frames(tmp_path / "gt", truth)
    write_frames(tmp_path / "pred", answers, pred=True)
    result = evaluate(EvaluateParams(), gt=tmp_path / "gt", pred=tmp_path / "pred", out=tmp_path / "out.json")
    reference, (ap50, ap75) = coco_reference(images)
    assert result["answers"]["scores_from"]["box"] == sum(1 for boxes in answers.values() if boxes)
    assert result["ap2d"]["ap"] == pytest.approx(reference, abs=1e-6)
    assert result["ap2d"]["ap50"] == pytest.approx(ap50, abs=1e-6)
    assert result["ap2d"]["ap75"] == pytest.approx(ap75, abs=1e-6)


# --- IoU ------------------------------------------------------------------------------------------

def monte_carlo_iou(a: Box3D, b: Box3D, samples=400_000, seed=0):
    rng = np.random.default_rng(seed)
    corners = np.concatenate([a.corners(), b.corners()])
    lo, hi = corners.min(0), corners.max(0)
    points = rng.uniform(lo, hi, (samples, 3))

    def inside(box: Box3D) -> np.ndarray:
        return (np.abs((points - box.center) @ box.rotation) <= box.lwh / 2).all(1)

    ia, ib = inside(a), inside(b)
    return (ia & ib).sum() / (ia | ib).sum()


def test_iou3d_known_cases():
    car = Box3D(np.zeros(3), np.eye(3), np.array([4.0, 2.0, 1.5]))
    assert iou_3d(car, car) == pytest.approx(1.0)
    assert iou_3d(car, Box3D(np.array([10.0, 0, 0]), np.eye(3), car.lwh)) == 0.0
    turned = Box3D(np.zeros(3), rot_z(np.pi / 2), car.lwh)  # 90 degrees about the vertical
    assert iou_3d(car, turned) == pytest.approx((2 * 2 * 1.5) / (2 * 4 * 2 * 1.5 - 2 * 2 * 1.5))
    flat = Box3D(np.zeros(3), np.eye(3), np.array([4.0, 2.0, 0.0]))
    assert iou_3d(flat, flat) == 0.0  # no volume, no NaN


@pytest.mark.parametrize("seed", range(5))
def test_iou3d_matches_monte_carlo_for_tilted_boxes(seed):
    rng = np.random.default_rng(seed)
    a = Box3D(rng.normal(0, 0.5, 3), rot_z(rng.uniform(-3, 3)) @ rot_x(rng.uniform(-0.5, 0.5)), rng.uniform(1, 4, 3))
    b = Box3D(rng.normal(0, 0.5, 3), rot_z(rng.uniform(-3, 3)) @ rot_x(rng.uniform(-0.5, 0.5)), rng.uniform(1, 4, 3))
    assert iou_3d(a, b) == pytest.approx(monte_carlo_iou(a, b, seed=seed), abs=0.01)


@pytest.mark.parametrize("seed", range(5))
def test_iou3d_matches_shapely_for_upright_boxes(seed):
    rng = np.random.default_rng(seed + 10)
    boxes = []
    for _ in range(2):
        yaw, lwh = rng.uniform(-3, 3), rng.uniform(1, 5, 3)
        centre = np.array([*rng.normal(0, 1, 2), rng.uniform(0, 0.5)])
        boxes.append(Box3D(centre, rot_z(yaw), lwh))
    footprints = [Polygon(b.corners()[:4, :2]) for b in boxes]
    z_overlap = max(0.0, min(b.center[2] + b.lwh[2] / 2 for b in boxes)
                    - max(b.center[2] - b.lwh[2] / 2 for b in boxes))
    inter = footprints[0].intersection(footprints[1]).area * z_overlap
    expected = inter / (np.prod(boxes[0].lwh) + np.prod(boxes[1].lwh) - inter)
    assert iou_3d(*boxes) == pytest.approx(expected, abs=1e-9)


def test_pairwise_iou_matrices_have_shape_n_by_m_and_match_pairs():
    rng = np.random.default_rng(3)
    a, b = random_rects(rng, 4), random_rects(rng, 3)
    matrix = iou_2d_matrix(a, b)
    assert matrix.shape == (4, 3) and iou_2d_matrix(a, np.zeros((0, 4))).shape == (4, 0)
    w = min(a[0, 2], b[1, 2]) - max(a[0, 0], b[1, 0])
    h = min(a[0, 3], b[1, 3]) - max(a[0, 1], b[1, 1])
    inter = max(w, 0) * max(h, 0)
    union = np.prod(a[0, 2:] - a[0, :2]) + np.prod(b[1, 2:] - b[1, :2]) - inter
    assert matrix[0, 1] == pytest.approx(inter / union)
    boxes = [Box3D(rng.normal(0, 1, 3), rot_z(rng.uniform(-3, 3)), rng.uniform(1, 4, 3)) for _ in range(3)]
    assert np.allclose(iou_3d_matrix(boxes[:2], boxes), [[iou_3d(p, q) for q in boxes] for p in boxes[:2]])


def test_one_angle_helper_wraps_headings():
    assert wrap_angle(3 * np.pi / 2) == pytest.approx(-np.pi / 2)
    assert abs(wrap_angle(np.radians(179) - np.radians(-179))) == pytest.approx(np.radians(2))
    assert np.allclose(wrap_angle(np.array([0.0, 2 * np.pi, -np.pi / 4])), [0.0, 0.0, -np.pi / 4])


# --- parsing --------------------------------------------------------------------------------------

BOX = '{"bbox_3d":[1,2,3,4,5,6,0,0.5,0],"label":"car"}'
DRAFT = '{"bbox_3d":[9,9,9,4,5,6,0,0.5,0],"label":"bus"}'


@pytest.mark.parametrize("text, labels, status, valid_json", [
    (f"[{BOX}]", ["car"], "ok", True),
    (f"Sure:\n```json\n[{BOX}]\n```\nDone.", ["car"], "ok", True),
    (f"Here you go: [{BOX}] hope it helps", ["car"], "ok", True),
    ("[]", [], "ok", True),
    ("", [], "failed", False),
    ("I cannot see any vehicles.", [], "failed", False),
    # reasoning: the draft inside <think> is never scored, the last <answer> is
    (f"<think>First guess:\n```json\n[{DRAFT}]\n```\nbetter:</think>\n<answer>\n```json\n[{BOX}]\n```\n</answer>",
     ["car"], "ok", True),
    (f"<answer>[{DRAFT}]</answer> on reflection <answer>[{BOX}]</answer>", ["car"], "ok", True),
    (f"<think>maybe [{DRAFT}]</think>[{BOX}]", ["car"], "ok", True),
    (f"<think>cut off while thinking [{DRAFT}]", [], "failed", False),
    # a leading block of another language, then the json block; the json-tagged fence wins
    (f"```python\nboxes = detect(image)\n```\n```json\n[{BOX}]\n```", ["car"], "ok", True),
    (f"```json\n[{DRAFT}]\n```\n```\n[{BOX}]\n```", ["bus"], "ok", True),
    # a lone object is a list of one box
    (BOX, ["car"], "ok", True),
    (f"The vehicle: {BOX}", ["car"], "ok", True),
    # defects json-repair fixes: trailing commas anywhere, single quotes, unquoted keys
    ('[{"bbox_3d":[1,2,3,4,5,6,0,0.5,0],"label":"car",}]', ["car"], "repaired", False),
    ('[{"bbox_3d":[1,2,3,4,5,6,0,0.5,0,],"label":"car"},]', ["car"], "repaired", False),
    ("[{'bbox_3d':[1,2,3,4,5,6,0,0.5,0],'label':'car'}]", ["car"], "repaired", False),
    ('[{bbox_3d:[1,2,3,4,5,6,0,0.5,0],label:"car"}]', ["car"], "repaired", False),
    # a truncated tail: complete objects kept, the partial one dropped (never completed by guessing)
    (f'[{BOX},{{"bbox_3d":[7,8,9,1,2', ["car"], "repaired", False),
    (f'[{BOX},{{"bbox_3d":[7,8,9,1,2,3,0,0,0],"label":"tr', ["car"], "repaired", False),
    ('I see a car [{"bbox_3d": [1,2', [], "failed", False),
    # debris: digits that are no number
    ('[{"bbox_3d":[0.14.95,1,2,3,4,5,6,7,8],"label":"car"}]', [], "failed", False),
    ('[{"bbox_3d":[1,2,3],"label":"car"}]', [], "failed", True),
    ('[{"bbox_3d":["a",2,3,4,5,6,7,8,9],"label":"car"}, {"bbox_3d":[1,2,3,4,5,6,0,0,0],"label":7}]', [], "failed",
     True),
    ('[{"bbox_3d":[1,2,3,4,5,6,0,0,0],"label":"bus"}, 5]', ["bus"], "ok", True),
])
def test_parsing(text, labels, status, valid_json):
    parsed = parse_answer(text)
    assert [b["label"] for b in parsed.boxes] == labels
    assert parsed.status == status and parsed.valid_json == valid_json


@pytest.mark.parametrize("text, reason", [
    (f'[{{"bbox_3d":[1,2,3,4,5,6,0,0.5],"label":"car"}}, {BOX}]', "wrong_arity"),
    (f'[{{"bbox_3d":[1e308,2,3,4,5,6,0,0.5,0],"label":"car"}}, {BOX}]', "absurd_magnitude"),
    (f'[{{"bbox_3d":[NaN,2,3,4,5,6,0,0.5,0],"label":"car"}}, {BOX}]', "non_finite"),
    (f'[{{"bbox_3d":[1,2,3,4,5,6,0,0.5,"x"],"label":"car"}}, {BOX}]', "non_numeric"),
    (f'[{{"bbox_3d":[1,2,3,4,5,6,0,0.5,0]}}, {BOX}]', "no_label"),
    (f'[{{"label":"car"}}, {BOX}]', "no_bbox"),
    (f'["car", {BOX}]', "not_an_object"),
    (f'[{BOX}, {{"bbox_3d":[1,2', "truncated"),
])
def test_every_dropped_box_is_counted_by_reason(text, reason):
    parsed = parse_answer(text)
    assert len(parsed.boxes) == 1 and parsed.emitted == 2
    assert dict(parsed.dropped) == {reason: 1}


def test_box_scores_from_token_logprobs_and_fallback():
    answer = f"[{BOX},{BOX.replace('car', 'bus')}]"
    text = f"<think>[{DRAFT}]</think><answer>{answer}</answer>"
    parsed = parse_answer(text)
    middle = text.index("},{") + 1
    ends = [text.index("<answer>") + len("<answer>"), middle, len(text)]  # one "token" of reasoning, one per box
    scores = box_scores(parsed, text, ends, [np.log(0.01), np.log(0.9), np.log(0.2)])
    assert scores == pytest.approx([0.9, 0.2])
    assert box_scores(parsed, text, None, None) == [1.0, 0.5]


# --- whole evaluations on recipe-format files -------------------------------------------------------

def write_frames(folder: Path, frames: dict, pred: bool = False):
    folder.mkdir(parents=True, exist_ok=True)
    for name, content in frames.items():
        if pred:
            document = content if isinstance(content, dict) else {"annotations": content}
        else:
            document = {"frame_id": 0, "camera": "camera_front_wide_120fov", "camera_params": CAMERA,
                        "annotations": content}
        (folder / f"{name}.json").write_text(json.dumps(document))


def boxes(values, labels, scores=None):
    out = [{"label": label, "bbox_3d": v} for v, label in zip(values, labels)]
    for box, score in zip(out, scores or []):
        box["score"] = score
    return out


def score_files(tmp_path, truth: dict, answers: dict, params: EvaluateParams | None = None) -> dict:
    params = params or EvaluateParams()
    write_frames(tmp_path / "gt", truth)
    write_frames(tmp_path / "pred", answers, pred=True)
    result = evaluate(params, gt=tmp_path / "gt", pred=tmp_path / "pred", out=tmp_path / "out.json")
    assert strict_loads((tmp_path / "out.json").read_text()) == result
    return result


def test_perfect_predictions_score_one_and_empty_bins_are_null(tmp_path):
    truth = {"a": boxes(CARS, ["car", "car", "bus"]), "b": boxes(CARS[:1], ["car"])}
    metrics = score_files(tmp_path, truth, truth)
    assert metrics["ap2d"]["ap"] == approx(1.0) and metrics["ap3d"]["ap"] == approx(1.0)
    assert metrics["ap3d"]["near"] is None  # no truth nearer than 10 m: nothing to measure, not 0
    assert metrics["ap3d"]["medium"] == approx(1.0) and metrics["ap3d"]["far"] == approx(1.0)
    assert metrics["center_distance"]["map"] == approx(1.0)
    assert metrics["center_distance"]["trans_err_m"] == approx(0.0)
    assert metrics["recipe"]["mean_iou"] == approx(1.0) and metrics["recipe"]["iou_accuracy_pct"] == approx(100.0)
    assert metrics["matching"]["recall"] == 1.0 and metrics["matching"]["position_error_m"] == approx(0.0)
    assert metrics["answers"]["valid_json"] == 1.0 and metrics["answers"]["scores_from"]["order"] == 2


def test_nothing_matched_is_null_not_minus_one(tmp_path):
    far_off = [[v + (30.0 if i == 0 else 0.0) for i, v in enumerate(CARS[0])]]
    metrics = score_files(tmp_path, {"a": boxes(CARS[:1], ["car"])}, {"a": boxes(far_off, ["car"])})
    assert metrics["matching"]["matched"] == 0 and metrics["matching"]["precision"] == 0.0
    assert metrics["matching"]["position_error_m"] is None and metrics["matching"]["label_accuracy"] is None
    # nuScenes' true-positive errors of a class never matched are capped at 1, its AP is 0.
    assert metrics["center_distance"]["trans_err_m"] == 1.0 and metrics["center_distance"]["map"] == 0.0
    assert metrics["recipe"]["mean_iou"] == 0.0  # a same-label pair is "matched" by the recipe even at IoU 0


def test_scores_inside_boxes_rank_before_order_of_appearance(tmp_path):
    """The low-scored wrong box comes first: ranked by its score, AP is 1; by order, it is not."""
    wrong = [v + (8.0 if i == 0 else 0.0) for i, v in enumerate(CARS[0])]
    truth = {"a": boxes(CARS[:1], ["car"])}
    with_scores = score_files(tmp_path / "s", truth, {"a": boxes([wrong, CARS[0]], ["car", "car"], [0.1, 0.9])})
    in_order = score_files(tmp_path / "o", truth, {"a": boxes([wrong, CARS[0]], ["car", "car"])})
    listed = score_files(tmp_path / "l", truth, {"a": {"annotations": boxes([wrong, CARS[0]], ["car", "car"]),
                                                       "scores": [0.1, 0.9]}})
    assert with_scores["ap2d"]["ap"] == approx(1.0) and listed["ap2d"]["ap"] == approx(1.0)
    assert in_order["ap2d"]["ap"] == pytest.approx(0.5, abs=0.01)
    assert listed["answers"]["scores_from"] == {"box": 0, "list": 1, "order": 0}


@pytest.mark.parametrize("scores", [[float("nan"), 0.9], ["high", 0.9], [None, 0.9], [float("inf"), 0.9]])
@pytest.mark.parametrize("where", ["box", "list"])
def test_bad_scores_are_an_error_naming_the_file_and_box(tmp_path, scores, where):
    values = boxes(CARS[:2], ["car", "car"], scores if where == "box" else None)
    answer = {"annotations": values, **({"scores": scores} if where == "list" else {})}
    write_frames(tmp_path / "gt", {"a": boxes(CARS[:2], ["car", "car"])})
    (tmp_path / "pred").mkdir()
    (tmp_path / "pred" / "a.json").write_text(json.dumps(answer))  # NaN and Infinity as Python writes them
    with pytest.raises(EvaluationError, match=r"pred/a\.json: box 0 \(label 'car'\): score .* is not a finite number"):
        load_frames(tmp_path / "gt", tmp_path / "pred", "cosmos")


@pytest.mark.parametrize("keys", ["raw_text", "annotations"])
def test_a_scores_list_written_for_the_annotations_follows_the_boxes_kept(tmp_path, keys):
    """A file from a writer that kept a box this reader drops (an older infer's parser kept a
    zero size): three boxes in annotations (and raw_text), three scores; the two kept boxes take
    their own scores, in either reading. A list that fits neither is still an error."""
    zero = [*CARS[1][:3], 0.0, *CARS[1][4:]]
    written = boxes([CARS[0], zero, CARS[1]], ["car", "car", "car"])
    document = {"annotations": written, "scores": [0.9, 0.1, 0.5],
                **({"raw_text": json.dumps(written)} if keys == "raw_text" else {})}
    write_frames(tmp_path / "gt", {"a": boxes(CARS[:2], ["car", "car"])})
    write_frames(tmp_path / "pred", {"a": document}, pred=True)
    (frame,) = load_frames(tmp_path / "gt", tmp_path / "pred", "cosmos")
    assert list(frame.pred.scores) == [0.9, 0.5] and sum(frame.dropped.values()) == 1
    write_frames(tmp_path / "pred", {"a": {**document, "scores": [0.9, 0.1, 0.5, 0.3]}}, pred=True)
    with pytest.raises(EvaluationError, match=r"a\.json: 'scores' must be a list of one score per box; it has 4"):
        load_frames(tmp_path / "gt", tmp_path / "pred", "cosmos")


def test_scores_on_some_boxes_only_is_an_error(tmp_path):
    write_frames(tmp_path / "gt", {"a": boxes(CARS[:2], ["car", "car"])})
    write_frames(tmp_path / "pred", {"a": [{**boxes(CARS[:1], ["car"], [0.5])[0]}, *boxes(CARS[1:2], ["car"])]},
                 pred=True)
    with pytest.raises(EvaluationError, match=r"a\.json: box 1 .* has no 'score'"):
        load_frames(tmp_path / "gt", tmp_path / "pred", "cosmos")


def test_absurd_and_short_boxes_are_dropped_and_counted_never_a_crash(tmp_path):
    truth = {"a": boxes(CARS, ["car", "car", "bus"])}
    absurd = [1e308, *CARS[1][1:]]
    answer = {"a": {"raw_text": json.dumps(boxes([CARS[0], absurd, CARS[1][:8], CARS[2]],
                                                 ["car", "car", "car", "bus"]))}}
    metrics = score_files(tmp_path, truth, answer)
    assert metrics["answers"]["boxes_emitted"] == 4 and metrics["answers"]["boxes_kept"] == 2
    assert metrics["answers"]["boxes_dropped"]["absurd_magnitude"] == 1
    assert metrics["answers"]["boxes_dropped"]["wrong_arity"] == 1
    assert metrics["matching"]["recall"] == approx(2 / 3)


def test_zero_size_box_writes_no_nan(tmp_path):
    flat = [*CARS[0][:3], 0.0, 0.0, 0.0, *CARS[0][6:]]
    metrics = score_files(tmp_path, {"a": boxes(CARS[:1], ["car"])}, {"a": boxes([flat], ["car"])})
    assert metrics["answers"]["boxes_dropped"]["size_not_positive"] == 1 and metrics["answers"]["failed"] == 1.0
    assert metrics["center_distance"]["scale_err"] == approx(1.0)  # never matched: capped at 1
    assert metrics["recipe"]["mean_iou"] is None  # no pair to average, not 0


def test_honest_parse_accounting_per_column(tmp_path):
    truth = {name: boxes(CARS[:1], ["car"]) for name in "abcde"}
    answers = {"a": {"raw_text": json.dumps(boxes(CARS[:1], ["car"]))},
               "b": {"raw_text": f"[{{'bbox_3d': {CARS[0]}, 'label': 'car'}}]"},
               "c": {"raw_text": '[{"bbox_3d": [0.14.95, 1, 2, 3, 4, 5, 6, 7, 8], "label": "car"}]'},
               "d": {"raw_text": "no vehicles"}}
    metrics = score_files(tmp_path, truth, answers)
    assert {k: metrics["answers"][k] for k in ("valid_json", "ok", "repaired", "failed", "missing")} == \
        {"valid_json": 0.2, "ok": 0.2, "repaired": 0.2, "failed": 0.4, "missing": 0.2}
    assert metrics["answers"]["boxes_emitted"] == 3 and metrics["answers"]["boxes_kept"] == 2
    assert metrics["answers"]["boxes_dropped"]["non_numeric"] == 1


def test_recipe_bug_case_one_of_three_correct_is_a_third(tmp_path):
    shifted = [CARS[0], [v + (5.0 if i == 0 else 0.0) for i, v in enumerate(CARS[1])],
               [v + (9.0 if i == 0 else 0.0) for i, v in enumerate(CARS[2])]]
    metrics = score_files(tmp_path, {"a": boxes(CARS, ["car", "car", "bus"])},
                          {"a": boxes(shifted, ["car", "car", "bus"])})
    # The recipe rebuilt counts as int(33.33 / 100 * 3) = 0 and reported 0 %.
    assert metrics["recipe"]["iou_accuracy_pct"] == approx(100 / 3)
    assert metrics["recipe"]["correct"] == 1


def test_unparsable_and_missing_answers_count_as_misses(tmp_path):
    truth = {"a": boxes(CARS[:1], ["car"]), "b": boxes(CARS[1:2], ["car"]), "c": boxes(CARS[2:], ["bus"])}
    metrics = score_files(tmp_path, truth, {"a": truth["a"], "b": {"raw_text": "I see a car [{\"bbox_3d\": [1,2"}})
    assert metrics["frames"] == 3 and metrics["answers"]["failed"] == approx(1 / 3)
    assert metrics["answers"]["missing"] == approx(1 / 3)
    assert metrics["matching"]["recall"] == approx(1 / 3)
    # The recipe skipped b and c; counted, its frame-averaged "AP3D" is 1/3, not 1.
    assert metrics["recipe"]["ap3d"] == approx(1 / 3) and metrics["recipe"]["frames"] == 3
    assert metrics["recipe"]["iou_accuracy_pct"] == approx(100 / 3)


# --- the recipe's definitions, hand-computed ----------------------------------------------------------

UNIT = [0.0, 0.0, 10.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0]  # a 1 m cube 10 m ahead


def moved(dx: float, box=UNIT) -> list[float]:
    return [box[0] + dx, *box[1:]]


def test_recipe_labels_are_normalised():
    labels = ("Car_5", " TRUCK ", "van_100", "bus")
    assert [normalise_label(label) for label in labels] == ["car", "truck", "van", "bus"]


def test_recipe_iou_is_axis_aligned_and_ignores_rotation():
    turned = [*UNIT[:6], 0.3, 1.0, -0.4]
    assert aligned_iou_matrix([UNIT], [turned])[0, 0] == approx(1.0)
    assert aligned_iou_matrix([UNIT], [moved(0.5)])[0, 0] == approx(0.5 / 1.5)  # x extent overlap 0.5
    assert aligned_iou_matrix([UNIT], [[*UNIT[:3], -1.0, 1.0, 1.0, 0, 0, 0]])[0, 0] == 0.0  # a negative extent: empty


def test_recipe_rectangles_use_its_own_rotation_convention():
    # roll (the 7th number) turns the cube about the camera's z axis in the recipe's convention
    rect = recipe_rectangles([[0.0, 0.0, 10.0, 2.0, 2.0, 2.0, np.pi / 6, 0.0, 0.0]], CAMERA)[0]
    reach = 300 * (np.cos(np.pi / 6) + np.sin(np.pi / 6)) / 9  # nearest face at z = 9
    assert rect == approx([320 - reach, 180 - reach, 320 + reach, 180 + reach])
    # pitch (the 8th) turns it about x: a box 4 m deep stands 4 m tall (about y it would stay deep)
    tilted = recipe_rectangles([[0.0, 0.0, 10.0, 2.0, 2.0, 4.0, 0.0, np.pi / 2, 0.0]], CAMERA)[0]
    assert tilted == approx([320 - 300 / 9, 180 - 600 / 9, 320 + 300 / 9, 180 + 600 / 9])
    assert np.isnan(recipe_rectangles([[0.0, 0.0, -10.0, 2.0, 2.0, 2.0, 0, 0, 0]], CAMERA)[0]).all()  # behind


def test_recipe_mean_iou_is_over_matched_pairs_and_accuracies_over_truth(tmp_path):
    """Two cars and a bus of truth; one car predicted at IoU 1/3 (x shifted by half), one bus
    predicted as a truck. Matched pairs: the car only (the truck may not match the bus)."""
    truth = {"a": boxes([UNIT, moved(5.0), moved(-5.0)], ["Car_1", "car", "bus"])}
    answer = {"a": boxes([moved(0.5), moved(-5.0)], ["car", "truck"])}
    recipe = score_files(tmp_path, truth, answer)["recipe"]
    assert recipe["matched_pairs"] == 1 and recipe["correct"] == 0
    assert recipe["mean_iou"] == approx(1 / 3)  # over matched pairs (over truth: 1/9)
    assert recipe["iou_accuracy_pct"] == 0.0
    assert recipe["label_accuracy_pct"] == approx(100 / 3)  # over truth (over overlapping pairs: 50 %)


def test_recipe_matches_same_label_pairs_even_without_overlap(tmp_path):
    recipe = score_files(tmp_path, {"a": boxes([UNIT], ["car"])}, {"a": boxes([moved(20.0)], ["car"])})["recipe"]
    assert recipe["matched_pairs"] == 1 and recipe["mean_iou"] == 0.0 and recipe["label_accuracy_pct"] == 100.0


def test_recipe_ap_is_per_label_per_frame_then_averaged_over_frames(tmp_path):
    """Frame a: a car found exactly plus a stray car, and a bus missed: car 1/2, bus 0 -> 1/4 at
    every threshold. Frame b: a car at IoU 2/3 (x shifted by 0.2): kept at 0.50, 0.55, 0.60,
    0.65 -> 4/10. Frame c: no truth, one prediction -> 0. Set: (1/4 + 4/10 + 0) / 3. Pooled over
    all predictions instead, it would differ."""
    truth = {"a": boxes([UNIT, moved(5.0)], ["car", "bus"]), "b": boxes([UNIT], ["car"]), "c": []}
    answer = {"a": boxes([UNIT, moved(-5.0)], ["car", "car"]), "b": boxes([moved(0.2)], ["car"]),
              "c": boxes([UNIT], ["car"])}
    recipe = score_files(tmp_path, truth, answer)["recipe"]
    assert recipe["ap3d"] == approx((0.25 + 0.4 + 0.0) / 3)
    assert recipe["ap3d50"] == approx((0.25 + 1.0 + 0.0) / 3)
    assert recipe["ap3d75"] == approx((0.25 + 0.0 + 0.0) / 3)
    assert recipe["ap2d"] is not None and recipe["frames_ap2d"] == 3


def test_recipe_metrics_are_labelled_with_their_definitions(tmp_path):
    recipe = score_files(tmp_path, {"a": boxes([UNIT], ["car"])}, {"a": boxes([UNIT], ["car"])})["recipe"]
    assert "the recipe's definitions" in recipe["definitions"] and "two bugs removed" in recipe["definitions"]


# --- matching and configuration ------------------------------------------------------------------------

def test_one_centre_matcher_keeps_every_pair_it_can_within_the_limit():
    """Closest-first would pair prediction 0 with truth 0 (0.5 m) and leave prediction 1 (1.5 m
    from truth 0, 2.5 m from truth 1) unmatched; the assignment keeps two pairs within 2 m."""
    pairs = match_centres(np.array([[0.5, 0.0], [-1.5, 0.0]]), np.array([[0.0, 0.0], [1.8, 0.0]]), 2.0)
    assert sorted((p, g) for p, g, _ in pairs) == [(0, 1), (1, 0)]
    assert match_centres(np.array([[np.inf, 0.0]]), np.array([[0.0, 0.0]]), 2.0) == []


def test_config_asserts_its_consistency(tmp_path):
    assert EvaluationConfig.from_params(EvaluateParams()).tp_distance_m in CONFIG.distance_thresholds_m
    with pytest.raises(ConfigError, match=r"tp_distance_m .* must be one of"):
        EvaluationConfig(tp_distance_m=3.0)
    with pytest.raises(ConfigError, match="depth_bins_m"):
        EvaluationConfig(depth_bins_m=(35.0, 10.0))
    (tmp_path / "params.yaml").write_text("evaluate:\n  distance_thresholds_m: [1.0, 2.0]\n  tp_distance_m: 2.0\n")
    loaded = load(EvaluateParams, "evaluate", tmp_path / "params.yaml")
    assert EvaluationConfig.from_params(loaded).distance_thresholds_m == (1.0, 2.0)
    with pytest.raises(ParamsError):
        load(EvaluateParams, "evaluate", tmp_path / "params.yaml", {"tp_distance_m": "far"})


def test_params_yaml_repeats_every_evaluate_default():
    import dataclasses

    import yaml

    section = yaml.safe_load((REPO / "params.yaml").read_text())["evaluate"]
    defaults = {f.name: f.default for f in dataclasses.fields(EvaluateParams)}
    assert {k: tuple(v) if isinstance(v, list) else v for k, v in section.items()} == defaults


# --- bad inputs to the standalone command ---------------------------------------------------------------

def run_standalone(tmp_path, gt: Path, pred: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "stages" / "evaluate.py"), "--gt", str(gt), "--pred", str(pred),
                           "--out", str(tmp_path / "scores.json")], check=False, capture_output=True, text=True,
                          cwd=tmp_path)


def test_standalone_command(tmp_path):
    write_frames(tmp_path / "gt", {"a": boxes(CARS, ["car", "car", "bus"])})
    write_frames(tmp_path / "pred", {"a": boxes(CARS[:2], ["car", "truck"])}, pred=True)
    done = run_standalone(tmp_path, tmp_path / "gt", tmp_path / "pred")
    assert done.returncode == 0, done.stderr
    scores = strict_loads((tmp_path / "scores.json").read_text())
    assert scores["gt_boxes"] == 3 and scores["pred_boxes"] == 2
    assert scores["matching"]["label_accuracy"] == approx(0.5)
    assert 0 < scores["ap3d"]["ap"] < 1


@pytest.mark.parametrize("case, message", [
    ("missing_pred", r"pred: no such prediction folder; expected <id>\.json files named like the ground truth"),
    ("empty_pred", r"pred: no prediction files; expected <id>\.json files named like the ground truth"),
    ("unrelated_pred", r"pred: none of its 1 \.json files is named like a ground-truth file"),
    ("split_as_gt", r"split: no recipe-format ground-truth files .*found meta\.json; did you mean .*split/text\?"),
    ("missing_gt", r"nowhere: no such folder; expected a folder of recipe-format ground truth"),
    ("bad_gt_box", r"gt/a\.json: ground-truth box 0 is invalid \(wrong arity\)"),
    ("negative_gt_size", r"gt/a\.json: ground-truth box 0 is invalid \(size not positive\)"),
    ("text_in_camera", r"gt/a\.json: unusable camera description: could not convert string to float: 'wide'"),
    ("unknown_codec", r"gt/a\.json: unknown box codec 'bogus'"),
    ("scores_length", r"pred/a\.json: 'scores' must be a list of one score per box; it has 2 for 1 box\(es\)"),
])
def test_bad_folders_are_clear_errors(tmp_path, case, message):
    gt, pred = tmp_path / "gt", tmp_path / "pred"
    write_frames(gt, {"a": boxes(CARS[:1], ["car"])})
    write_frames(pred, {"a": boxes(CARS[:1], ["car"])}, pred=True)
    if case == "missing_pred":
        shutil.rmtree(pred)
    elif case == "empty_pred":
        (pred / "a.json").unlink()
    elif case == "unrelated_pred":
        (pred / "a.json").rename(pred / "other.json")
    elif case == "split_as_gt":
        gt = tmp_path / "split"
        shutil.copytree(tmp_path / "gt", gt / "text")
        (gt / "meta.json").write_text(json.dumps([{"id": "a", "media": "images/a.jpg",
                                                   "conversations": "text/a.json"}]))
    elif case == "missing_gt":
        gt = tmp_path / "nowhere"
    elif case == "bad_gt_box":
        write_frames(gt, {"a": boxes([CARS[0][:8]], ["car"])})
    elif case == "negative_gt_size":
        write_frames(gt, {"a": boxes([[*CARS[0][:3], -4.5, *CARS[0][4:]]], ["car"])})
    elif case in ("text_in_camera", "unknown_codec"):
        record = json.loads((gt / "a.json").read_text())
        record.update({"camera_params": {**CAMERA, "fx": "wide"}} if case == "text_in_camera"
                      else {"box_codec": "bogus"})
        (gt / "a.json").write_text(json.dumps(record))
    elif case == "scores_length":
        write_frames(pred, {"a": {"annotations": boxes(CARS[:1], ["car"]), "scores": [0.3, 0.2]}}, pred=True)
    done = run_standalone(tmp_path, gt, pred)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert done.stderr.startswith("error: ") and __import__("re").search(message, done.stderr), done.stderr
    assert not (tmp_path / "scores.json").exists()


def test_what_may_be_a_mistake_is_scored_with_a_warning(tmp_path):
    """A frame without a prediction file (a miss), a file named like no frame (ignored), a
    prediction that is not JSON (an unparsable answer) and an image size taken from the principal
    point are each named in a warning."""
    from av_grounding.evaluation.frames import EvaluationWarning

    write_frames(tmp_path / "gt", {name: boxes(CARS[:1], ["car"]) for name in "abc"})
    write_frames(tmp_path / "pred", {"a": boxes(CARS[:1], ["car"]), "zzz": boxes(CARS[:1], ["car"])}, pred=True)
    (tmp_path / "pred" / "b.json").write_text('{"annotations": [{"label": "car", "bbox_3d": [1, 2],}]}')
    with pytest.warns(EvaluationWarning) as caught:
        result = evaluate(EvaluateParams(), gt=tmp_path / "gt", pred=tmp_path / "pred", out=tmp_path / "out.json")
    messages = "\n".join(str(w.message) for w in caught)
    assert "b.json: not JSON" in messages and "no prediction for 1 of 3 frames, scored as misses: c.json" in messages
    assert "1 file(s) named like no ground truth" in messages and "zzz.json" in messages
    assert "3 file(s) give no 'width'/'height'" in messages
    assert result["answers"]["missing"] == approx(1 / 3) and result["answers"]["failed"] == approx(1 / 3)


# --- answers and files Python cannot read, odd structures, folders and outputs -------------------------

NESTED = "[" * 1000 + "]" * 1000  # deeper than Python's recursion limit
HUGE = '[{"label": "car", "bbox_3d": [%s, 0.7, 22, 4.6, 1.9, 1.5, 0, -0.1, 0]}]' % ("1" * 5000)  # > 4300 digits


def unreadable_json_is_a_failed_answer_or_an_error(tmp_path, where: str, bad: str, message: str):
    """Frame b's answer (``where == "answer"``), or its ground-truth or prediction file, holds
    the JSON text ``bad``: a failed answer that misses b's truth, or one error line naming the file."""
    truth = {"a": boxes(CARS[:1], ["car"]), "b": boxes(CARS[1:2], ["car"])}
    write_frames(tmp_path / "gt", truth)
    write_frames(tmp_path / "pred", {"a": truth["a"], "b": {"raw_text": f"```json\n{bad}\n```"}
                                     if where == "answer" else truth["b"]}, pred=True)
    if where == "gt":
        (tmp_path / "gt" / "b.json").write_text(f'{{"camera_params": {json.dumps(CAMERA)}, "annotations": {bad}}}')
    elif where == "pred":
        (tmp_path / "pred" / "b.json").write_text(f'{{"annotations": {bad}}}')
    if where == "answer":
        metrics = evaluate(EvaluateParams(), gt=tmp_path / "gt", pred=tmp_path / "pred", out=tmp_path / "out.json")
        assert metrics["answers"]["failed"] == approx(0.5) and metrics["answers"]["ok"] == approx(0.5)
        assert metrics["answers"]["valid_json"] == approx(0.5) and metrics["matching"]["recall"] == approx(0.5)
        return metrics
    with pytest.raises(EvaluationError) as caught:
        evaluate(EvaluateParams(), gt=tmp_path / "gt", pred=tmp_path / "pred", out=tmp_path / "out.json")
    assert str(caught.value).startswith(f"{tmp_path / where / 'b.json'}: {message}") and "\n" not in str(caught.value)
    assert not (tmp_path / "out.json").exists()
    return None


@pytest.mark.parametrize("where", ["answer", "gt", "pred"])
def test_nesting_deeper_than_python_reads_fails_the_answer_or_names_the_file(tmp_path, where):
    """About 1,000 nested brackets stopped the whole evaluation with a RecursionError."""
    unreadable_json_is_a_failed_answer_or_an_error(tmp_path, where, NESTED, "JSON nested too deeply to read")


@pytest.mark.parametrize("where", ["answer", "gt", "pred"])
def test_an_integer_too_long_for_python_fails_the_answer_or_names_the_file(tmp_path, where):
    """A 5,000-digit integer in a file stopped the evaluation with int()'s ValueError (4300 digits
    at most); in an answer, json-repair keeps its digits as text: a non-numeric box."""
    metrics = unreadable_json_is_a_failed_answer_or_an_error(tmp_path, where, HUGE, "holds a number too long to "
                                                             "read (Exceeds the limit (4300 digits)")
    assert metrics is None or metrics["answers"]["boxes_dropped"]["non_numeric"] == 1


@pytest.mark.parametrize("text", ["[" * 320, "Here they are: [", "[,]", "[,,,]]"])
def test_a_repair_that_recovers_no_box_is_a_failed_answer(text):
    """Garbage that json-repair turns into ``[]`` is no answer: ``repaired`` means boxes were
    recovered; only ``[]`` as emitted is an answer with no box."""
    parsed = parse_answer(text)
    assert parsed.boxes == [] and parsed.status == "failed" and not parsed.valid_json
    assert parse_answer("[]").status == "ok" and parse_answer(f"[{BOX}").status == "repaired"


@pytest.mark.parametrize("document, found", [
    ([{"label": "car", "bbox_3d": CARS[1]}], "found a bare list (save a model's answer as {\"raw_text\""),
    ({}, "found an empty object"),
    ({"predictions": [{"label": "car", "bbox_3d": CARS[1]}]}, "found an object with keys 'predictions'"),
    ({"annotations": None}, "found 'annotations' that is null"),
    ({"raw_text": [{"label": "car", "bbox_3d": CARS[1]}]}, "found 'raw_text' that is a list"),
    ("car at 22 m", "found a string"),
], ids=["bare_list", "empty_object", "predictions_key", "annotations_null", "raw_text_list", "string"])
def test_a_prediction_file_of_another_structure_is_an_error_naming_it(tmp_path, document, found):
    """Such files were scored as failed answers without a word: a column saved the wrong way
    passed for a model that answers nothing."""
    write_frames(tmp_path / "gt", {"a": boxes(CARS[:1], ["car"]), "b": boxes(CARS[1:2], ["car"])})
    write_frames(tmp_path / "pred", {"a": boxes(CARS[:1], ["car"])}, pred=True)
    (tmp_path / "pred" / "b.json").write_text(json.dumps(document))
    with pytest.raises(EvaluationError) as caught:
        load_frames(tmp_path / "gt", tmp_path / "pred", "cosmos")
    message = str(caught.value)
    assert message.startswith(f"{tmp_path / 'pred' / 'b.json'}: not a prediction file: expected a JSON object "
                              "with an 'annotations' list of boxes or a 'raw_text' string")
    assert found in message and "\n" not in message


@pytest.mark.parametrize("sizes", [[-4.5, -1.9, -1.6], [4.5, 0.0, 1.6], [4.5, 1.9, -0.01]],
                         ids=["negated", "zero", "one_negative"])
@pytest.mark.parametrize("where", ["annotations", "raw_text"])
def test_non_positive_predicted_sizes_are_invalid_boxes_never_made_positive(tmp_path, sizes, where):
    """abs() made the negated box a perfect match; now such a box is dropped and counted."""
    bad = [*CARS[0][:3], *sizes, *CARS[0][6:]]
    answer = boxes([bad, CARS[1]], ["car", "car"])
    metrics = score_files(tmp_path, {"a": boxes(CARS[:2], ["car", "car"])},
                          {"a": {"raw_text": json.dumps(answer)} if where == "raw_text" else answer})
    answers = metrics["answers"]
    assert answers["boxes_emitted"] == 2 and answers["boxes_kept"] == 1 and metrics["pred_boxes"] == 1
    assert answers["boxes_dropped"]["size_not_positive"] == 1 and answers["ok"] == 1.0
    assert metrics["matching"]["recall"] == approx(0.5) and metrics["ap3d"]["ap"] < 0.51
    assert metrics["ap2d"]["ap"] < 0.51 and metrics["recipe"]["matched_pairs"] == 1


@pytest.mark.parametrize("case", ["behind_camera", "beside_the_image", "zero_focal_lengths"])
def test_ap2d_ignores_truth_outside_the_picture_and_refuses_zero_focal_lengths(tmp_path, case):
    """One truth box of four behind the camera or beside the image (an empty rectangle) gave
    perfect predictions an AP2D of 0.888; fx = fy = 0 was accepted (AP2D 0.417)."""
    unseen = {"behind_camera": [2.0, 0.7, -15.0, 4.5, 1.9, 1.6, 0.0, 0.2, 0.0],
              "beside_the_image": [60.0, 0.7, 15.0, 4.5, 1.9, 1.6, 0.0, 0.2, 0.0]}.get(case, CARS[0])
    truth = {"a": boxes([*CARS, unseen], ["car", "car", "bus", "car"])}
    if case == "zero_focal_lengths":
        write_frames(tmp_path / "gt", {"a": boxes(CARS, ["car", "car", "bus"])})
        record = json.loads((tmp_path / "gt" / "a.json").read_text())
        record["camera_params"].update(fx=0.0, fy=0.0)
        (tmp_path / "gt" / "a.json").write_text(json.dumps(record))
        write_frames(tmp_path / "pred", {"a": boxes(CARS, ["car", "car", "bus"])}, pred=True)
        with pytest.raises(EvaluationError) as caught:
            evaluate(EvaluateParams(), gt=tmp_path / "gt", pred=tmp_path / "pred", out=tmp_path / "out.json")
        assert str(caught.value).startswith(f"{tmp_path / 'gt' / 'a.json'}: frame a: invalid intrinsics {{'fx': 0.0")
        assert "fx and fy must be positive" in str(caught.value)
        return
    perfect = score_files(tmp_path / "perfect", truth, truth)
    assert perfect["ap2d"]["ap"] == approx(1.0) and perfect["ap2d"]["per_class"] == {"bus": 1.0, "car": 1.0}
    assert perfect["ap3d"]["ap"] == approx(1.0)  # 3D still scores the box the picture cannot show
    only_unseen = score_files(tmp_path / "only", truth, {"a": boxes([unseen], ["car"])})
    assert only_unseen["ap2d"]["ap"] == 0.0 and only_unseen["ap3d"]["per_class"]["car"] > 0.3


@pytest.mark.parametrize("case", ["out_is_a_folder", "out_under_a_file", "folder_in_gt", "folder_in_pred",
                                  "symlink_loop_in_gt", "symlink_loop_in_pred"])
def test_odd_paths_are_one_line_errors_naming_the_path(tmp_path, case, capsys):
    """``--out`` a folder, or not writable (under a regular file, as a read-only place is for
    root), a folder named ``b.json`` or a symlink loop among the inputs: exit 2 with one line,
    no traceback."""
    from av_grounding.cli import main

    gt, pred, out = tmp_path / "gt", tmp_path / "pred", tmp_path / "scores.json"
    write_frames(gt, {"a": boxes(CARS[:1], ["car"]), "b": boxes(CARS[1:2], ["car"])})
    write_frames(pred, {"a": boxes(CARS[:1], ["car"])}, pred=True)
    named = out
    if case == "out_is_a_folder":
        out.mkdir()
    elif case == "out_under_a_file":
        (tmp_path / "scores").write_text("")
        out = named = tmp_path / "scores" / "scores.json"
    else:
        named = (gt if case.endswith("gt") else pred) / "b.json"
        named.unlink(missing_ok=True)
        named.mkdir() if case.startswith("folder") else named.symlink_to(named.name)
    code = main(["evaluate", "--params", str(tmp_path / "none.yaml"), "--gt", str(gt), "--pred", str(pred),
                 "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith(f"error: {named}: ") and err.count("\n") == 1, err
    assert not (tmp_path / "scores.json").is_file()


def test_hidden_files_in_the_folders_are_ignored(tmp_path):
    """macOS's AppleDouble ``._a.json`` (binary) stopped the evaluation as "malformed JSON"."""
    truth = {"a": boxes(CARS[:1], ["car"])}
    write_frames(tmp_path / "gt", truth)
    write_frames(tmp_path / "pred", truth, pred=True)
    for folder in ("gt", "pred"):
        (tmp_path / folder / "._a.json").write_bytes(b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X        \xff\xfe")
        (tmp_path / folder / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1\x00")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        metrics = score_files(tmp_path, {}, {})
    assert metrics["frames"] == 1 and metrics["ap3d"]["ap"] == approx(1.0)
    assert not [w for w in caught if "._a.json" in str(w.message) or "DS_Store" in str(w.message)]  # not frames


# --- the stage on a formatted dataset: strict JSON, results table, plots ----------------------------------

@pytest.fixture(scope="module")
def stage_outputs(dataset, tmp_path_factory):
    """Three columns on the formatted evaluation split: debris (zero-shot), the truth itself with
    scores (step 2), and the truth with a zero-size box added, one answer missing and one with a
    1e308 coordinate (final)."""
    root = tmp_path_factory.mktemp("evaluate")
    texts = sorted((dataset / "eval" / "text").glob("*.json"))
    records = {path.stem: json.loads(path.read_text()) for path in texts}
    columns = {"zero_shot": 0, "step_000002": 2, "final": 4}
    predictions = root / "predictions"
    predictions.mkdir()
    (predictions / "columns.json").write_text(json.dumps(columns))
    for name in columns:
        (predictions / name).mkdir()
    for index, (stem, record) in enumerate(records.items()):
        truth = record["annotations"]
        (predictions / "zero_shot" / f"{stem}.json").write_text(json.dumps(
            {"raw_text": '[{"bbox_3d": [0.14.95, 1", "label": "car"}]', "annotations": [], "scores": []}))
        (predictions / "step_000002" / f"{stem}.json").write_text(json.dumps(
            {"annotations": [{**box, "score": 1.0 - 0.01 * k} for k, box in enumerate(truth)]}))
        if index == 0:
            continue  # missing answer
        final = [*truth, {"label": "car", "bbox_3d": [1.0, 1.0, 12.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]}]
        if index == 1:
            final.append({"label": "car", "bbox_3d": [1e308, 0.0, 10.0, 4.0, 2.0, 1.5, 0.0, 0.0, 0.0]})
        (predictions / "final" / f"{stem}.json").write_text(json.dumps({"raw_text": json.dumps(final)}))
    results = evaluate(EvaluateParams(overlays=2), dataset, predictions, root / "metrics" / "eval.json",
                       plots=root / "plots")
    return root, results, records, dataset


def test_stage_writes_only_strict_json(stage_outputs):
    root, results, *_ = stage_outputs
    written = sorted(root.glob("metrics/*.json")) + sorted(root.glob("plots/**/*.json"))
    assert {p.name for p in written} >= {"eval.json", "metrics_vs_steps.json", "precision_recall.json",
                                         "error_vs_distance.json"}
    for path in written:
        strict_loads(path.read_text())
    assert strict_loads((root / "metrics" / "eval.json").read_text()) == results


def test_stage_metrics_of_each_column(stage_outputs):
    _, results, records, _ = stage_outputs
    assert list(results) == ["zero_shot", "step_000002", "final"]
    truth = [box for record in records.values() for box in record["annotations"]]
    depths = [box["bbox_3d"][2] for box in truth]
    perfect = results["step_000002"]
    assert perfect["ap2d"]["ap"] == approx(1.0) and perfect["ap3d"]["ap"] == approx(1.0)
    for name, (low, high) in CONFIG.depth_ranges.items():
        in_bin = any(low <= d < high for d in depths)
        assert (perfect["ap3d"][name] is None) == (not in_bin), name
    debris = results["zero_shot"]
    assert debris["answers"]["valid_json"] == 0.0 and debris["answers"]["failed"] == 1.0
    assert debris["matching"]["position_error_m"] is None and debris["center_distance"]["orient_err_rad"] == 1.0
    final = results["final"]
    assert final["answers"]["missing"] == approx(1 / len(records))
    assert final["answers"]["boxes_dropped"]["absurd_magnitude"] == 1
    assert final["answers"]["boxes_dropped"]["size_not_positive"] == len(records) - 1  # the zero-size boxes
    assert final["pred_boxes"] == len(truth) - len(records[next(iter(records))]["annotations"])


def test_results_table_matches_the_metrics(stage_outputs):
    root, results, *_ = stage_outputs
    table, intervals = (root / "plots" / "results_table.md").read_text().split("\n95 % intervals: clip bootstrap")
    lines = [line for line in table.splitlines() if line.startswith("|")]
    cells = [[cell.strip() for cell in line.strip("|").split("|")] for line in lines]
    header, body = cells[0], cells[2:]
    assert header[1:] == ["zero-shot", "step 2", "final (step 4)"]
    assert [row[0] for row in body] == [label for label, _ in ROWS]
    for row, (_, path) in zip(body, ROWS):
        for cell, column in zip(row[1:], results):
            value = lookup(results[column], path)
            assert (cell == "-") if value is None else float(cell) == pytest.approx(value, abs=5e-5), (row[0], column)
    # then the intervals (the test split's one clip gives none), then the changes between columns
    intervals, changes = intervals.split("\nChange from the column before")
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in intervals.splitlines() if line.startswith("|")]
    assert [row[0] for row in rows[2:]] == [label for label, _ in INTERVAL_ROWS]
    assert all(cell == "-" for row in rows[2:] for cell in row[1:]) and len(rows[0]) == 4
    assert "| step 2 vs zero-shot" in changes and "final (step 4) vs step 2" in changes


def test_stage_plots_and_overlays(stage_outputs):
    root, _, _, dataset = stage_outputs
    rows = strict_loads((root / "plots" / "metrics_vs_steps.json").read_text())
    assert [r["step"] for r in rows] == [0, 2, 4] and rows[0]["recall"] == 0.0
    assert rows[0]["valid_json"] == 0.0 and rows[1]["ap3d"] == approx(1.0)
    overlays = sorted((root / "plots" / "overlays").glob("*.jpg"))
    assert len(overlays) == 2
    import cv2

    image, source = cv2.imread(str(overlays[0])), cv2.imread(str(dataset / "eval" / "images" / overlays[0].name))
    assert image.shape == (source.shape[0] + 40, source.shape[1], 3)  # the image, then the legend band


def test_plots_say_no_matches_instead_of_empty_axes(tmp_path, monkeypatch):
    from av_grounding.evaluation import render

    said = []
    monkeypatch.setattr(render, "_say_no_matches", lambda axis: said.append(axis.get_title()))
    render.plot_error_against_distance([], "final", tmp_path)
    empty = (np.zeros(3), np.zeros(3))
    render.plot_pr_curves({"AP2D": {"car": empty}, "AP3D": {}}, tmp_path)
    assert said == ["Position error against distance (final)", "AP2D", "AP3D"]
    assert strict_loads((tmp_path / "error_vs_distance.json").read_text()) == []


def drawn_figures(monkeypatch) -> dict[str, object]:
    """File name -> matplotlib figure of every plot ``render`` saves from now on."""
    from av_grounding.evaluation import render

    figures, save = {}, render._save

    def keep(plt, figure, path):
        figures[path.name] = figure
        save(plt, figure, path)

    monkeypatch.setattr(render, "_save", keep)
    return figures


def steps_results(matched: list[int]) -> dict[str, dict]:
    """Serialized metrics of columns at steps 0, 1000, 2000, ... with ``matched`` pairs each."""
    results = {}
    for index, pairs in enumerate(matched):
        value = 0.1 + 0.05 * index
        results[f"step_{index}"] = {
            "ap2d": {"ap": value, "ap50": value + 0.01}, "ap3d": {"ap": value, "ap25": value, "near": value},
            "center_distance": {"map": value}, "answers": {"valid_json": 1.0}, "boxes_per_frame": 3.0,
            "matching": {"matched": pairs, "recall": value, "label_accuracy": 1.0 if pairs == 1 else 0.7},
            "recipe": {"mean_iou": value, "ap2d": value, "ap3d": value, "iou_accuracy_pct": 10.0 * index,
                       "label_accuracy_pct": 20.0}, "gt_boxes": 39, "frames": 13}
    return results


def test_error_against_distance_has_plain_tick_labels(tmp_path, monkeypatch):
    """Errors of 1.873 m at 40 m were drawn with matplotlib's offset notation (ticks 0.0001 ...
    beside "+1.873"): every tick label now reads as the value itself."""
    from av_grounding.evaluation import render

    figures = drawn_figures(monkeypatch)
    render.plot_error_against_distance([(40.01, 1.8731), (40.02, 1.8732), (40.03, 1.8734)], "final", tmp_path)
    axis = figures["error_vs_distance.png"].axes[0]
    for scale in (axis.xaxis, axis.yaxis):
        assert scale.get_major_formatter().get_useOffset() is False and scale.get_offset_text().get_text() == ""
        labels = [label for label in scale.get_ticklabels() if label.get_text()]
        assert labels and all(float(label.get_text().replace("\u2212", "-")) == pytest.approx(x, abs=1e-9)
                              for label, x in zip(labels, scale.get_ticklocs()))


def test_every_series_against_steps_has_its_own_colour(tmp_path, monkeypatch):
    """12 AP-like series shared 10 colours (ap2d and recipe_ap2d, ap2d_50 and recipe_ap3d)."""
    from matplotlib.colors import to_rgba

    from av_grounding.evaluation import render

    figures = drawn_figures(monkeypatch)
    render.plot_against_steps(steps_results([39, 20, 1]), {"step_0": 0, "step_1": 1000, "step_2": 2000}, tmp_path)
    for axis in figures["metrics_vs_steps.png"].axes:
        lines = [line for line in axis.get_lines() if line.get_label().split(" ")[0] in render.STEP_METRICS]
        colours = [tuple(np.round(to_rgba(line.get_color()), 6)) for line in lines]
        assert len(set(colours)) == len(lines) > 0
        for line in lines:  # the recipe's metrics dashed with square markers, the others solid with dots
            recipe = line.get_label().startswith("recipe_")
            assert (line.get_linestyle(), line.get_marker()) == (("--", "s") if recipe else ("-", "o"))
    assert len(figures["metrics_vs_steps.png"].axes[0].get_lines()) == len(render.UNIT_METRICS)


def test_label_accuracy_against_steps_shows_its_matched_pairs(tmp_path, monkeypatch):
    """Label accuracy jumped to 1.0 on one matched pair of 39 with nothing to say so: each of its
    points is annotated with its number of matched pairs, and the legend says what n counts."""
    from av_grounding.evaluation import render

    figures = drawn_figures(monkeypatch)
    render.plot_against_steps(steps_results([39, 20, 1]), {"step_0": 0, "step_1": 1000, "step_2": 2000}, tmp_path)
    axis = figures["metrics_vs_steps.png"].axes[0]
    notes = {(text.xy[0], text.xy[1]): text.get_text() for text in axis.texts}
    assert notes == {(0, 0.7): "n=39", (1000, 0.7): "n=20", (2000, 1.0): "n=1"}
    assert "label_accuracy (n: matched pairs)" in [text.get_text() for text in axis.get_legend().get_texts()]
