"""Evaluation: parsing, IoU against independent computations, AP against pycocotools."""

from __future__ import annotations

import contextlib
import io

import numpy as np
import pytest
from shapely.geometry import Polygon

from av_grounding.evaluation.ap import ImageBoxes, coco_ap
from av_grounding.evaluation.iou import iou_2d, iou_3d, iou_aligned
from av_grounding.evaluation.parse import box_scores, parse_answer
from av_grounding.geometry.boxes import Box3D
from av_grounding.geometry.transforms import rot_x, rot_z

LABELS = ["car", "truck", "bus"]


def random_rects(rng, n):
    xy = rng.uniform(0, 200, (n, 2))
    wh = rng.uniform(2, 60, (n, 2))
    return np.concatenate([xy, xy + wh], axis=1)


def coco_reference(images):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    gt = {"images": [], "annotations": [], "categories": [{"id": i + 1, "name": n} for i, n in enumerate(LABELS)]}
    dts = []
    for image_id, (g_rects, g_labels, d_rects, d_labels, d_scores) in enumerate(images, start=1):
        gt["images"].append({"id": image_id, "width": 400, "height": 400})
        for r, l in zip(g_rects, g_labels):
            gt["annotations"].append({"id": len(gt["annotations"]) + 1, "image_id": image_id, "category_id": LABELS.index(l) + 1,
                                      "bbox": [r[0], r[1], r[2] - r[0], r[3] - r[1]], "area": (r[2] - r[0]) * (r[3] - r[1]), "iscrowd": 0})
        for r, l, s in zip(d_rects, d_labels, d_scores):
            dts.append({"image_id": image_id, "category_id": LABELS.index(l) + 1, "bbox": [r[0], r[1], r[2] - r[0], r[3] - r[1]], "score": s})
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
        d = np.concatenate([g[: n_dt // 2] + rng.normal(0, 4, (min(n_gt, n_dt // 2), 4)), random_rects(rng, n_dt - min(n_gt, n_dt // 2))])
        d[:, 2:] = np.maximum(d[:, 2:], d[:, :2] + 1)
        g_labels = list(rng.choice(LABELS, n_gt))
        matched = min(n_gt, n_dt // 2)  # jittered truths keep their label, the rest is random
        d_labels = g_labels[:matched] + list(rng.choice(LABELS, len(d) - matched))
        images.append((g, g_labels, d, d_labels, list(np.round(rng.uniform(0, 1, len(d)), 1))))
    ours = coco_ap([ImageBoxes(gl, dl, ds, np.array([[iou_2d(a, b) for b in g] for a in d]).reshape(len(d), len(g)))
                    for g, gl, d, dl, ds in images], LABELS, list(np.linspace(0.5, 0.95, 10)))
    reference, (ap50, ap75) = coco_reference(images)
    assert ours.ap == pytest.approx(reference, abs=1e-6)
    assert reference == -1 or ap50 > 0.05  # the inputs exercise real matches
    if reference > -1:
        assert ours.per_threshold[0.5] == pytest.approx(ap50, abs=1e-6)
        assert ours.per_threshold[list(ours.per_threshold)[5]] == pytest.approx(ap75, abs=1e-6)


def monte_carlo_iou(a: Box3D, b: Box3D, samples=400_000, seed=0):
    rng = np.random.default_rng(seed)
    corners = np.concatenate([a.corners(), b.corners()])
    lo, hi = corners.min(0), corners.max(0)
    points = rng.uniform(lo, hi, (samples, 3))
    inside = lambda box: (np.abs((points - box.center) @ box.rotation) <= box.lwh / 2).all(1)
    ia, ib = inside(a), inside(b)
    return (ia & ib).sum() / (ia | ib).sum()


def test_iou3d_known_cases():
    car = Box3D(np.zeros(3), np.eye(3), np.array([4.0, 2.0, 1.5]))
    assert iou_3d(car, car) == pytest.approx(1.0)
    assert iou_3d(car, Box3D(np.array([10.0, 0, 0]), np.eye(3), car.lwh)) == 0.0
    turned = Box3D(np.zeros(3), rot_z(np.pi / 2), car.lwh)  # 90 degrees about the vertical
    assert iou_3d(car, turned) == pytest.approx((2 * 2 * 1.5) / (2 * 4 * 2 * 1.5 - 2 * 2 * 1.5))


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
        yaw, lwh, centre = rng.uniform(-3, 3), rng.uniform(1, 5, 3), np.array([*rng.normal(0, 1, 2), rng.uniform(0, 0.5)])
        boxes.append(Box3D(centre, rot_z(yaw), lwh))
    footprints = [Polygon(b.corners()[:4, :2]) for b in boxes]
    z_overlap = max(0.0, min(b.center[2] + b.lwh[2] / 2 for b in boxes) - max(b.center[2] - b.lwh[2] / 2 for b in boxes))
    inter = footprints[0].intersection(footprints[1]).area * z_overlap
    expected = inter / (np.prod(boxes[0].lwh) + np.prod(boxes[1].lwh) - inter)
    assert iou_3d(*boxes) == pytest.approx(expected, abs=1e-9)


def test_iou_aligned_ignores_rotation():
    assert iou_aligned([0, 0, 10, 4, 2, 2, 0, 1.0, 0], [0, 0, 10, 4, 2, 2, 0, -1.0, 0]) == pytest.approx(1.0)
    assert iou_aligned([0, 0, 10, 2, 2, 2, 0, 0, 0], [1, 0, 10, 2, 2, 2, 0, 0, 0]) == pytest.approx(1 / 3)


@pytest.mark.parametrize("text, count, status", [
    ('[{"bbox_3d":[1,2,3,4,5,6,0,0.5,0],"label":"car"}]', 1, "ok"),
    ('Sure:\n```json\n[{"bbox_3d":[1,2,3,4,5,6,0,0.5,0],"label":"car"}]\n```\nDone.', 1, "ok"),
    ('Here you go: [{"bbox_3d":[1,2,3,4,5,6,0,0.5,0],"label":"car"}] hope it helps', 1, "ok"),
    ('[{"bbox_3d":[1,2,3,4,5,6,0,0.5,0],"label":"car"},{"bbox_3d":[7,8,9,1,2', 1, "repaired"),
    ("[]", 0, "ok"),
    ("", 0, "failed"),
    ("I cannot see any vehicles.", 0, "failed"),
    ('[{"bbox_3d":[1,2,3],"label":"car"}]', 0, "failed"),
    ('[{"bbox_3d":["a",2,3,4,5,6,7,8,9],"label":"car"}, {"bbox_3d":[1,2,3,4,5,6,0,0,0],"label":7}]', 0, "failed"),
    ('[{"bbox_3d":[1,2,3,4,5,6,0,0,0],"label":"bus"}, 5]', 1, "ok"),
])
def test_parsing(text, count, status):
    parsed = parse_answer(text)
    assert len(parsed.boxes) == count and parsed.status == status


def test_box_scores_from_token_logprobs_and_fallback():
    text = '[{"bbox_3d":[1,2,3,4,5,6,0,0,0],"label":"car"},{"bbox_3d":[1,2,3,4,5,6,0,0,0],"label":"bus"}]'
    parsed = parse_answer(text)
    middle = text.index("},{") + 1
    ends = [middle, len(text)]  # two "tokens": one per box
    scores = box_scores(parsed, text, ends, [np.log(0.9), np.log(0.2)])
    assert scores == pytest.approx([0.9, 0.2])
    assert box_scores(parsed, text, None, None) == [1.0, 0.5]


# --- whole evaluations on recipe-format files -------------------------------------------------

import json
import subprocess
import sys
from pathlib import Path

from av_grounding.evaluation.evaluate import evaluate_frames, load_frames
from av_grounding.params import EvaluateParams

REPO = Path(__file__).resolve().parents[1]
CAMERA = {"fx": 300.0, "fy": 300.0, "cx": 320.0, "cy": 180.0}
CARS = [[-3.0, 0.7, 15.0, 4.5, 1.9, 1.6, 0.0, 0.2, 0.0], [2.5, 0.7, 22.0, 4.6, 1.9, 1.5, 0.0, -0.1, 0.0],
        [6.0, 0.5, 40.0, 12.0, 2.6, 3.2, 0.0, 0.0, 0.0]]


def write_frames(folder: Path, frames: dict[str, list], pred: bool = False):
    folder.mkdir(parents=True, exist_ok=True)
    for name, content in frames.items():
        if pred:
            document = content if isinstance(content, dict) else {"annotations": content}
        else:
            document = {"frame_id": 0, "camera": "camera_front_wide_120fov", "camera_params": CAMERA, "annotations": content}
        (folder / f"{name}.json").write_text(json.dumps(document))


def boxes(values, labels):
    return [{"label": l, "bbox_3d": v} for v, l in zip(values, labels)]


def test_perfect_predictions_score_one(tmp_path):
    truth = {"a": boxes(CARS, ["car", "car", "bus"]), "b": boxes(CARS[:1], ["car"])}
    write_frames(tmp_path / "gt", truth)
    write_frames(tmp_path / "pred", truth, pred=True)
    metrics, _ = evaluate_frames(load_frames(tmp_path / "gt", tmp_path / "pred", "cosmos"), EvaluateParams())
    assert metrics["ap2d"]["ap"] == pytest.approx(1.0) and metrics["ap3d"]["ap"] == pytest.approx(1.0)
    assert metrics["center_distance"]["map"] == pytest.approx(1.0)
    assert metrics["recipe"]["mean_iou"] == pytest.approx(1.0) and metrics["recipe"]["iou_accuracy_pct"] == pytest.approx(100.0)
    assert metrics["matching"]["recall"] == 1.0 and metrics["matching"]["position_error_m"] == pytest.approx(0.0)


def test_recipe_bug_case_one_of_three_correct_is_a_third(tmp_path):
    write_frames(tmp_path / "gt", {"a": boxes(CARS, ["car", "car", "bus"])})
    shifted = [CARS[0], [v + (5.0 if i == 0 else 0.0) for i, v in enumerate(CARS[1])],
               [v + (9.0 if i == 0 else 0.0) for i, v in enumerate(CARS[2])]]
    write_frames(tmp_path / "pred", {"a": boxes(shifted, ["car", "car", "bus"])}, pred=True)
    metrics, _ = evaluate_frames(load_frames(tmp_path / "gt", tmp_path / "pred", "cosmos"), EvaluateParams())
    # The recipe rebuilt counts as int(33.33 / 100 * 3) = 0 and reported 0 %.
    assert metrics["recipe"]["iou_accuracy_pct"] == pytest.approx(100 / 3)


def test_unparsable_and_missing_answers_count_as_misses(tmp_path):
    truth = {"a": boxes(CARS[:1], ["car"]), "b": boxes(CARS[1:2], ["car"]), "c": boxes(CARS[2:], ["bus"])}
    write_frames(tmp_path / "gt", truth)
    write_frames(tmp_path / "pred", {"a": truth["a"], "b": {"raw_text": "I see a car [{\"bbox_3d\": [1,2"}}, pred=True)
    metrics, _ = evaluate_frames(load_frames(tmp_path / "gt", tmp_path / "pred", "cosmos"), EvaluateParams())
    assert metrics["frames"] == 3 and metrics["parse_failure_rate"] == pytest.approx(2 / 3)
    assert metrics["matching"]["recall"] == pytest.approx(1 / 3)
    assert metrics["recipe"]["mean_iou"] == pytest.approx(1 / 3)


def test_standalone_command(tmp_path):
    write_frames(tmp_path / "gt", {"a": boxes(CARS, ["car", "car", "bus"])})
    write_frames(tmp_path / "pred", {"a": boxes(CARS[:2], ["car", "truck"])}, pred=True)
    subprocess.run([sys.executable, str(REPO / "stages" / "evaluate.py"), "--gt", str(tmp_path / "gt"),
                    "--pred", str(tmp_path / "pred"), "--out", str(tmp_path / "scores.json")], check=True, cwd=tmp_path)
    scores = json.loads((tmp_path / "scores.json").read_text())
    assert scores["gt_boxes"] == 3 and scores["pred_boxes"] == 2
    assert scores["matching"]["label_accuracy"] == pytest.approx(0.5)
    assert 0 < scores["ap3d"]["ap"] < 1
