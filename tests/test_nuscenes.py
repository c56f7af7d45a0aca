"""The centre-distance AP and its true-positive errors equal nuscenes-devkit's own detection
evaluation (PyPI ``nuscenes-devkit``: ``accumulate``, ``calc_ap``, ``calc_tp``) on the same boxes,
class by class and threshold by threshold, in randomised cases: near and far predictions, wrong
labels, images without truth or without predictions, scores with ties.

The devkit measures distances in the xy plane and yaw about z; our ground plane is the camera's
x-z plane and our heading is about its down axis, so boxes go in as (x, z, 0) with a rotation
about z by the heading. The devkit evaluates every class of its challenge and gives a class
without truth an AP of 0; we leave such a class out (no AP), so only classes with truth are
compared."""

from __future__ import annotations

import numpy as np
import pytest
from nuscenes.eval.common.data_classes import EvalBoxes
from nuscenes.eval.common.utils import center_distance
from nuscenes.eval.detection.algo import accumulate, calc_ap, calc_tp
from nuscenes.eval.detection.data_classes import DetectionBox
from pyquaternion import Quaternion

from av_grounding.evaluation.ap import TP_ERRORS, DistanceImage, distance_ap
from av_grounding.evaluation.config import EvaluationConfig

CONFIG = EvaluationConfig()
CLASSES = ("car", "truck", "bus")  # names of the nuScenes challenge, which the devkit insists on


def random_image(rng: np.random.Generator, tied_scores: bool) -> DistanceImage:
    """Truths scattered over 40 x 60 m; predictions near a truth (0.1-3 m off, sometimes another
    label) or anywhere; random sizes and headings."""
    g, d = int(rng.integers(0, 6)), int(rng.integers(0, 8))
    gt_centres = rng.uniform([-20, 0], [20, 60], size=(g, 2))
    gt_labels = [str(label) for label in rng.choice(CLASSES, size=g)]
    dt_centres, dt_labels = np.zeros((d, 2)), []
    for k in range(d):
        if g and rng.random() < 0.7:
            near = int(rng.integers(g))
            dt_centres[k] = gt_centres[near] + rng.normal(0, rng.uniform(0.1, 3.0), size=2)
            dt_labels.append(gt_labels[near] if rng.random() < 0.85 else str(rng.choice(CLASSES)))
        else:
            dt_centres[k] = rng.uniform([-20, 0], [20, 60])
            dt_labels.append(str(rng.choice(CLASSES)))
    scores = rng.uniform(0.05, 1.0, size=d)
    return DistanceImage(gt_labels, gt_centres, rng.uniform(0.5, 12, size=(g, 3)), rng.uniform(-np.pi, np.pi, g),
                         dt_labels, np.round(scores, 1) if tied_scores else scores, dt_centres,
                         rng.uniform(0.5, 12, size=(d, 3)), rng.uniform(-np.pi, np.pi, d))


def devkit_boxes(images: list[DistanceImage], truth: bool) -> EvalBoxes:
    boxes = EvalBoxes()
    for i, image in enumerate(images):
        token = f"sample-{i}"
        labels, centres, sizes, headings = ((image.gt_labels, image.gt_centres, image.gt_lwh, image.gt_headings)
                                            if truth else
                                            (image.dt_labels, image.dt_centres, image.dt_lwh, image.dt_headings))
        scores = [-1.0] * len(labels) if truth else [float(s) for s in image.dt_scores]
        boxes.add_boxes(token, [DetectionBox(sample_token=token, translation=(float(c[0]), float(c[1]), 0.0),
                                             size=tuple(float(v) for v in size),
                                             rotation=tuple(Quaternion(axis=(0.0, 0.0, 1.0), angle=float(h)).elements),
                                             detection_name=label, detection_score=score)
                                for label, c, size, h, score in zip(labels, centres, sizes, headings, scores)])
    return boxes


def assert_equal_to_the_devkit(images: list[DistanceImage]) -> None:
    """Every class with truth, every threshold: AP and each true-positive error within 1e-6."""
    gt, pred = devkit_boxes(images, truth=True), devkit_boxes(images, truth=False)
    compared = 0
    for label in CLASSES:
        for threshold in CONFIG.distance_thresholds_m:
            ours = distance_ap(images, label, threshold, CONFIG.min_recall, CONFIG.min_precision)
            if not any(label in image.gt_labels for image in images):
                assert ours.ap is None and all(v is None for v in ours.errors.values())
                continue
            data = accumulate(gt, pred, label, center_distance, threshold)
            assert ours.ap == pytest.approx(calc_ap(data, CONFIG.min_recall, CONFIG.min_precision), abs=1e-6), (
                f"AP of {label} at {threshold} m")
            for name in TP_ERRORS:
                assert ours.errors[name] == pytest.approx(calc_tp(data, CONFIG.min_recall, name), abs=1e-6), (
                    f"{name} of {label} at {threshold} m")
            compared += 1
    assert compared or not any(image.gt_labels for image in images)


@pytest.mark.parametrize("tied_scores", [False, True], ids=["distinct-scores", "tied-scores"])
@pytest.mark.parametrize("seed", range(25))
def test_centre_distance_ap_and_tp_errors_equal_the_devkits(seed, tied_scores):
    rng = np.random.default_rng(seed)
    assert_equal_to_the_devkit([random_image(rng, tied_scores) for _ in range(int(rng.integers(1, 7)))])


def test_a_prediction_exactly_at_the_threshold_is_no_match_as_in_the_devkit():
    """Distances of exactly 0.5, 1 and 2 m: a match needs a distance below the threshold."""
    truth = np.array([[0.0, 10.0], [5.0, 20.0], [-6.0, 30.0]])
    image = DistanceImage(["car"] * 3, truth, np.full((3, 3), 2.0), np.zeros(3), ["car"] * 3,
                          np.array([0.9, 0.8, 0.7]), truth + [[0.5, 0.0], [0.0, 1.0], [2.0, 0.0]],
                          np.full((3, 3), 2.0), np.zeros(3))
    assert [len(distance_ap([image], "car", t).matches) for t in CONFIG.distance_thresholds_m] == [0, 1, 2, 3]
    assert_equal_to_the_devkit([image])


def test_the_random_cases_reach_every_branch_of_the_metric():
    """The cases above include classes with AP strictly between 0 and 1, AP 0 with some true
    positives (recall or precision below nuScenes' minimum: the clipping decides), errors
    averaged over a recall range and errors capped at 1, so each part of the definition is
    compared."""
    seen = set()
    for seed in range(25):
        rng = np.random.default_rng(seed)
        images = [random_image(rng, False) for _ in range(int(rng.integers(1, 7)))]
        for label in CLASSES:
            for threshold in CONFIG.distance_thresholds_m:
                result = distance_ap(images, label, threshold, CONFIG.min_recall, CONFIG.min_precision)
                if result.ap is None:
                    continue
                seen.add("partial AP" if 0 < result.ap < 1 else "AP 1" if result.ap == 1 else "AP 0")
                if result.ap == 0 and result.matches:
                    seen.add("clipped to 0 despite true positives")
                seen.add("errors capped" if result.errors["trans_err"] == 1.0 else "errors averaged")
    assert seen >= {"partial AP", "AP 0", "clipped to 0 despite true positives", "errors capped",
                    "errors averaged"}, seen
