"""Depth errors of a prediction column, per camera and distance, with depth kept apart from
finding: which lever the learning benchmark should pull next (issue 26: "choose each next run
from the last one's measurements").

    python benchmarks/learning/depth_errors.py --truth data/dataset/eval/text \\
        --predictions data/predictions/final --out depth_errors.md

Each true box is paired with at most one predicted box by the largest 2D overlap of their image
rectangles (Hungarian assignment, IoU at least 0.5): the model found the vehicle in the image,
whatever depth it gave it, so the pair isolates depth estimation (the evaluator's centre matching
within 2 m would drop exactly the far vehicles whose depth is most wrong). For every pair: the
true depth z (camera RDF, m) and the ratio of predicted to true depth. Per camera, with its focal
length: how many true boxes were found this way, the median ratio (a bias: 1 is none) and the
median absolute relative error, overall and per distance band; beside them, the share found
with a looser, 3D rule (a prediction whose ground-plane centre lies within 15 % of the true
range, one-to-one: the vehicle was answered, perhaps imprecisely) and the median width of the
true boxes' image rectangles (px), which says how many image tokens a vehicle covers. A bias that differs between
cameras of different lenses says the model cannot tell the lenses apart (camera-aware input is the
lever); a ratio near 1 everywhere with a spread growing with distance says the image resolution or
the answer's precision limits depth (the pixel budget is the lever).

Then, per distance band, how the true boxes not found in 2D were missed, each counted one way,
in this order: a box overlapped it (image-rectangle IoU at least 0.1 with some answered box, but no
box paired with it at 0.5; the box may be paired with another vehicle), else the answer ended
first (it holds no more boxes than the truth's rank in nearest-first order, the order of
`format.box_order: nearest`: a count, consistent with the model stopping before it reached the
vehicle, not proof of it), else the answer went on and nothing overlapped it. Overlaps point at
localisation or size (for a 20 px vehicle a few pixels decide IoU 0.5); an answer that ends
first at the stop decision or the box order; the rest at not seeing it.

Then, per distance band, how much of each true box's image rectangle the rectangles of nearer
true boxes cover (the `filter` stage's occlusion measure, ``covered_fraction``, here over the
kept true boxes only, where the filter also counts the objects it drops; the recipe keeps boxes
up to 95 % covered), for those found and those missed: a vehicle mostly hidden shows the model a
part of it, while its true rectangle is the whole box's.

Last, per distance band, what the overlapping box got wrong, for each missed truth whose
best-overlapping answered box stays under IoU 0.5 with it: that box with one property replaced
by the truth's, projected again (``repaired``), and whether its rectangle then reaches IoU 0.5:
its depth (its centre moved along its own ray to the truth's range: the rectangle keeps its
place and scales), its place in the image (its centre moved onto the truth's ray at its own
range), its size, its orientation. A property whose repair alone pairs most of them is what
limits finding the vehicles in 2D: the place in the image points at the image budget (finer
image tokens), the answer's form or what the model can see of the vehicle; depth and size at
the 3D estimate (a depth error along the ray only rescales the rectangle, so 2D pairing barely
sees it).
"""

from __future__ import annotations

import argparse
import itertools
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.optimize import linear_sum_assignment

from av_grounding.curation.filters import covered_fraction
from av_grounding.evaluation.frames import Frame, image_rectangle, load_frames
from av_grounding.evaluation.iou import iou_2d_matrix
from av_grounding.geometry.boxes import Box3D
from av_grounding.storage import atomic_write_bytes

BANDS_M = (0.0, 10.0, 20.0, 35.0, 50.0, np.inf)
MIN_IOU = 0.5
NEAR_MISS_IOU = 0.1  # a box overlapping a missed truth at least this much overlapped it too little
LOOSE_RANGE_SHARE = 0.15


def camera_name(frame: Frame) -> str:
    """The camera of a frame id ``<clip>_camera_<name>_<frame index>``; the whole id otherwise."""
    return frame.id.split("_camera_", 1)[1].rsplit("_", 1)[0] if "_camera_" in frame.id else frame.id


def pairs(frame: Frame) -> list[tuple[int, int]]:
    """(prediction, truth) index pairs of the 2D assignment with the largest total IoU, IoU >= 0.5."""
    if not len(frame.pred) or not len(frame.gt):
        return []
    overlap = iou_2d_matrix(frame.pred.rectangles, frame.gt.rectangles)
    rows, cols = linear_sum_assignment(-overlap)
    return [(int(r), int(c)) for r, c in zip(rows, cols) if overlap[r, c] >= MIN_IOU]


def focal_px(frame: Frame) -> float:
    """A pinhole camera's horizontal focal length (px, rounded); NaN for other lens models."""
    focal = getattr(frame.camera, "fx", None)
    return float(round(focal)) if focal is not None else float("nan")


def loose_truths(frame: Frame) -> set[int]:
    """Truths answered at all: the one-to-one assignment of least total ground-plane distance
    between centres, a pair kept within ``LOOSE_RANGE_SHARE`` of the truth's range."""
    if not len(frame.pred) or not len(frame.gt):
        return set()
    ground_pred, ground_gt = frame.pred.centres[:, [0, 2]], frame.gt.centres[:, [0, 2]]
    distance = np.linalg.norm(ground_pred[:, None] - ground_gt[None], axis=2)
    within = distance <= LOOSE_RANGE_SHARE * np.linalg.norm(ground_gt, axis=1)[None]
    rows, cols = linear_sum_assignment(np.where(within, distance, 1e9))
    return {int(c) for r, c in zip(rows, cols) if within[r, c]}


def nearest_ranks(centres: np.ndarray) -> np.ndarray:
    """Each of N true boxes' place (0 first) in nearest-first order: by the distance of its
    centre (m) from the camera, ties in input order. ``centres``: an Nx3 matrix."""
    ranks = np.empty(len(centres), dtype=int)
    ranks[np.argsort(np.linalg.norm(centres, axis=1), kind="stable")] = np.arange(len(centres))
    return ranks


def table(frames: list[Frame]) -> pd.DataFrame:
    """One row per true box in front of the camera: camera, focal length (px), true depth (m),
    the width of its image rectangle (px), whether a prediction overlaps it in 2D (and that
    prediction's depth), whether one is near it in 3D (``loose_truths``), its nearest-first rank
    among the frame's true boxes, the number of boxes the answer held (emitted, dropped ones
    included), the largest 2D IoU of any answered box with it, and the share of its rectangle
    that the rectangles of nearer true boxes cover (``covered``: the `filter` stage's occlusion
    measure, ``curation.filters.covered_fraction``, over the boxes the truth kept; NaN for a
    rectangle with no area in the image, which that function would call wholly covered)."""
    rows = []
    for frame in frames:
        found, loose = {truth: prediction for prediction, truth in pairs(frame)}, loose_truths(frame)
        widths = frame.gt.rectangles[:, 2] - frame.gt.rectangles[:, 0]
        heights = frame.gt.rectangles[:, 3] - frame.gt.rectangles[:, 1]
        ranks = nearest_ranks(frame.gt.centres)
        distance = np.linalg.norm(frame.gt.centres, axis=1)
        overlap = (iou_2d_matrix(frame.pred.rectangles, frame.gt.rectangles).max(axis=0) if len(frame.pred)
                   else np.zeros(len(frame.gt)))
        for index, centre in enumerate(frame.gt.centres):
            if centre[2] <= 0:
                continue
            predicted = frame.pred.centres[found[index]][2] if index in found else np.nan
            rows.append({"camera": camera_name(frame), "focal_px": focal_px(frame),
                         "z_m": float(centre[2]), "width_px": float(widths[index]), "found": index in found,
                         "loose": index in loose, "z_pred_m": float(predicted), "rank": int(ranks[index]),
                         "answered": max(frame.emitted, len(frame.pred)), "best_iou": float(overlap[index]),
                         "covered": covered_fraction(frame.gt.rectangles[index],
                                                     list(frame.gt.rectangles[distance < distance[index]]))
                         if widths[index] > 0 and heights[index] > 0 else np.nan})
    return pd.DataFrame(rows)


REPAIRS = ("depth", "place in the image", "size", "orientation")


def repaired(pred: Box3D, truth: Box3D, what: str) -> Box3D:
    """``pred`` with one property (``REPAIRS``) replaced by ``truth``'s: ``depth`` scales its
    centre along its own ray to the truth's range (m), ``place in the image`` puts its centre on
    the truth's ray at its own range, ``size`` takes the truth's (length, width, height),
    ``orientation`` its rotation. Raises ``ValueError`` for another ``what``."""
    own, true = np.linalg.norm(pred.center), np.linalg.norm(truth.center)
    if what == "depth":
        return Box3D(pred.center * (true / own), pred.rotation, pred.lwh)
    if what == "place in the image":
        return Box3D(truth.center * (own / true), pred.rotation, pred.lwh)
    if what == "size":
        return Box3D(pred.center, pred.rotation, truth.lwh)
    if what == "orientation":
        return Box3D(pred.center, truth.rotation, pred.lwh)
    raise ValueError(f"repaired: {what!r} is none of {REPAIRS}")


def repairs(frames: list[Frame]) -> pd.DataFrame:
    """One row per true box in front of the camera that no answered box pairs with in 2D and whose
    best-overlapping answered box overlaps it with IoU in [``NEAR_MISS_IOU``, ``MIN_IOU``): its
    true depth (m), that IoU, and for each of ``REPAIRS`` whether the box so repaired
    (``repaired``) reaches IoU ``MIN_IOU`` with it."""
    rows = []
    for frame in frames:
        if not len(frame.pred):
            continue
        found = {truth for _, truth in pairs(frame)}
        overlap = iou_2d_matrix(frame.pred.rectangles, frame.gt.rectangles)
        for index, truth in enumerate(frame.gt.boxes):
            best = int(np.argmax(overlap[:, index]))
            if index in found or truth.center[2] <= 0 or not NEAR_MISS_IOU <= overlap[best, index] < MIN_IOU:
                continue
            true_rect = frame.gt.rectangles[index]
            row = {"z_m": float(truth.center[2]), "iou": float(overlap[best, index])}
            for what in REPAIRS:
                fixed = image_rectangle(repaired(frame.pred.boxes[best], truth, what), frame.camera, frame.width,
                                        frame.height)
                row[what] = float(iou_2d_matrix(fixed[None], true_rect[None])[0, 0]) >= MIN_IOU
            rows.append(row)
    return pd.DataFrame(rows, columns=["z_m", "iou", *REPAIRS])


def repair_shares(rows: pd.DataFrame) -> pd.DataFrame:
    """Per distance band: how many ``repairs`` rows, their median IoU, and for each property the
    share that its repair alone pairs at IoU ``MIN_IOU``."""
    grouped = banded(rows).groupby("band", observed=True)
    return pd.concat([grouped.size().rename("overlapped, IoU under 0.5"),
                      grouped["iou"].median().round(3).rename("median IoU"),
                      grouped[list(REPAIRS)].mean().round(3).add_prefix("paired if repaired: ")], axis=1)


def banded(boxes: pd.DataFrame) -> pd.DataFrame:
    """``boxes`` with the distance band of each true depth (``BANDS_M``, m) as ``band``."""
    labels = [f"{low:g}-{high:g}" for low, high in itertools.pairwise(BANDS_M)]
    return boxes.assign(band=pd.cut(boxes["z_m"], BANDS_M, right=False, labels=labels))


def occlusion(boxes: pd.DataFrame) -> pd.DataFrame:
    """Per distance band: the median share of the true boxes' rectangles covered by nearer true
    boxes' (``table``'s ``covered``), of those found in 2D, of those missed with an overlapping
    box and of the other misses; and the share of the true boxes more than half covered (of those
    with a rectangle in the image)."""
    boxes = banded(boxes)
    outcome = np.where(boxes["found"], "found in 2D",
                       np.where(boxes["best_iou"] >= NEAR_MISS_IOU, "missed, overlapped", "missed, other"))
    medians = boxes.groupby(["band", outcome], observed=True)["covered"].median().unstack().round(2)
    medians = medians.reindex(columns=["found in 2D", "missed, overlapped", "missed, other"])
    medians = medians.add_prefix("median covered: ")
    over = (boxes["covered"] > 0.5).where(boxes["covered"].notna())
    half = boxes.assign(over=over.astype(float)).groupby("band", observed=True)["over"].mean().round(3)
    return pd.concat([medians, half.rename("share over half covered")], axis=1)


def misses(boxes: pd.DataFrame) -> pd.DataFrame:
    """Per distance band, the true boxes not found in 2D and the share of them missed each way, in
    the module docstring's order: a box overlapped it (IoU at least ``NEAR_MISS_IOU``), else the
    answer ended first, else nothing overlapped it."""
    missed = banded(boxes[~boxes["found"]])
    ways = [f"overlapped (IoU >= {NEAR_MISS_IOU:g}), not paired", "else: answer ended first",
            "else: no overlap"]
    way = np.where(missed["best_iou"] >= NEAR_MISS_IOU, ways[0],
                   np.where(missed["answered"] <= missed["rank"], ways[1], ways[2]))
    shares = pd.crosstab(missed["band"], way, normalize="index").reindex(columns=ways, fill_value=0.0).round(3)
    return pd.concat([missed.groupby("band", observed=True).size().rename("missed in 2D"), shares], axis=1)


def summary(boxes: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Per camera, per distance band, and per both: true boxes, median image width, share found
    in 2D and in 3D (loose), median depth ratio and median absolute relative depth error of those
    found in 2D."""
    boxes = banded(boxes).assign(ratio=boxes["z_pred_m"] / boxes["z_m"])
    boxes["relative_error"] = (boxes["ratio"] - 1).abs()

    def describe(group: pd.DataFrame) -> pd.Series:
        found = group[group["found"]]
        return pd.Series({"true boxes": len(group), "median width (px)": round(group["width_px"].median(), 1),
                          "found in 3D (loose)": round(group["loose"].mean(), 3),
                          "found in 2D": round(group["found"].mean(), 3),
                          "median z ratio": round(found["ratio"].median(), 3) if len(found) else np.nan,
                          "median abs rel error": round(found["relative_error"].median(), 3) if len(found) else np.nan})

    per_camera = boxes.groupby(["camera", "focal_px"], dropna=False).apply(describe, include_groups=False)
    per_band = boxes.groupby(["camera", "band"], observed=True).apply(describe, include_groups=False)
    overall = boxes.groupby("band", observed=True).apply(describe, include_groups=False)
    return per_camera, per_band, overall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--truth", type=Path, required=True, help="the evaluation split's text folder")
    parser.add_argument("--predictions", type=Path, required=True, help="one prediction column's folder")
    parser.add_argument("--codec", default="cosmos")
    parser.add_argument("--out", type=Path, required=True, help="markdown file to write")
    args = parser.parse_args()
    frames = load_frames(args.truth, args.predictions, args.codec)
    boxes = table(frames)
    per_camera, per_band, overall = summary(boxes)
    atomic_write_bytes(args.out, ("\n\n".join([
        (f"# Depth errors of the column `{args.predictions.name}`\n\nWritten by "
         "`benchmarks/learning/depth_errors.py` (its docstring defines every column). Found in 2D: paired by "
         f"image-rectangle IoU >= {MIN_IOU}; found in 3D (loose): a ground-plane centre within "
         f"{LOOSE_RANGE_SHARE:.0%} of the true range; ratio: predicted / true depth (camera z) of the 2D pairs."),
        "## Per camera\n\n" + per_camera.to_markdown(),
        "## All cameras, per distance band (m)\n\n" + overall.to_markdown(),
        "## Missed in 2D, per distance band (m): how\n\n" + misses(boxes).to_markdown(),
        "## Covered by nearer vehicles, per distance band (m)\n\n" + occlusion(boxes).to_markdown(),
        "## Overlapped but missed, per distance band (m): what one repair of the box would pair\n\n"
        + repair_shares(repairs(frames)).to_markdown(),
        "## Per camera and distance band (m)\n\n" + per_band.to_markdown()]) + "\n").encode())


if __name__ == "__main__":
    main()
