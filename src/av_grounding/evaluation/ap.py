"""Average precision. ``coco_ap`` follows COCOeval (pycocotools) step by step, so AP2D equals
pycocotools' on the same inputs, and serves AP3D with another overlap; ``distance_ap`` is
nuScenes' centre-distance AP with its true-positive errors (nuscenes-devkit
``eval/detection/algo.py``; equal to the devkit's on the same boxes, tested). A class without ground
truth has no AP (``None``), never 0 or -1."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..geometry.transforms import wrap_angle

RECALL_POINTS = np.linspace(0.0, 1.0, 101)


@dataclass
class ImageBoxes:
    """One image's boxes of every class. ``overlap``: a DxG matrix, overlap of detection d with
    truth g (IoU); ``gt_ignore`` (G,) marks truths outside the evaluated range (a depth bin),
    ``dt_outside`` (D,) detections outside it, ignored when unmatched (COCO's area ranges)."""

    gt_labels: list[str]
    dt_labels: list[str]
    dt_scores: np.ndarray
    overlap: np.ndarray
    gt_ignore: np.ndarray | None = None
    dt_outside: np.ndarray | None = None


@dataclass
class APResult:
    """``ap``: mean over thresholds and classes with truth (None when no class has truth);
    ``per_threshold``: threshold -> mean over classes; ``per_class``: class -> mean over
    thresholds; ``curves``: class -> (recall, precision) arrays at the first threshold."""

    ap: float | None = None
    per_threshold: dict[float, float | None] = field(default_factory=dict)
    per_class: dict[str, float] = field(default_factory=dict)
    curves: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)


def _match_image(image: ImageBoxes, label: str, thresholds: list[float], max_dets: int):
    """COCOeval.evaluateImg for one image and class: greedy matching in score order, truths
    marked ignore sorted last. Returns (scores, TxD matched flags, TxD ignore flags, truths kept)."""
    g = [i for i, name in enumerate(image.gt_labels) if name == label]
    d = [i for i, name in enumerate(image.dt_labels) if name == label]
    gt_ignore = image.gt_ignore[g] if image.gt_ignore is not None else np.zeros(len(g), dtype=bool)
    g = [g[i] for i in np.argsort(gt_ignore, kind="mergesort")]
    gt_ignore = np.sort(gt_ignore, kind="mergesort")
    d = [d[i] for i in np.argsort([-image.dt_scores[i] for i in d], kind="mergesort")][:max_dets]
    overlap = image.overlap[np.ix_(d, g)] if d and g else np.zeros((len(d), len(g)))
    matched_dt = np.zeros((len(thresholds), len(d)))
    dt_ignore = np.zeros((len(thresholds), len(d)), dtype=bool)
    for t, threshold in enumerate(thresholds):
        gt_taken = np.zeros(len(g), dtype=bool)
        for di in range(len(d)):
            best, m = min(threshold, 1 - 1e-10), -1
            for gi in range(len(g)):
                if gt_taken[gi]:
                    continue
                if m > -1 and not gt_ignore[m] and gt_ignore[gi]:
                    break
                if overlap[di, gi] < best:
                    continue
                best, m = overlap[di, gi], gi
            if m == -1:
                continue
            dt_ignore[t, di] = gt_ignore[m]
            matched_dt[t, di], gt_taken[m] = 1, True
    outside = image.dt_outside[d] if image.dt_outside is not None else np.zeros(len(d), dtype=bool)
    dt_ignore |= (matched_dt == 0) & outside[None, :]
    return [image.dt_scores[i] for i in d], matched_dt, dt_ignore, int((~gt_ignore).sum())


def _envelope(precision: np.ndarray) -> np.ndarray:
    """Precision made non-increasing in recall (COCOeval.accumulate)."""
    return np.maximum.accumulate(precision[::-1])[::-1] if len(precision) else precision


def _sampled_mean(recall: np.ndarray, precision: np.ndarray) -> float:
    """Mean of the precision envelope sampled at 101 recall points (0 past the last recall)."""
    sampled = np.zeros(len(RECALL_POINTS))
    positions = np.searchsorted(recall, RECALL_POINTS, side="left")
    valid = positions < len(precision)
    sampled[valid] = precision[positions[valid]]
    return float(sampled.mean())


@dataclass(frozen=True)
class ClassMatches:
    """COCOeval's ``evaluateImg`` for one class over every image: it depends on each image
    alone, so a resampled list of images (``bootstrap.py``) reuses it. Flat over every image's
    detections in its own score order: ``scores`` (N,), ``matched`` and ``ignored`` flags (TxN);
    per image (I,): ``starts`` into them, ``counts`` of detections, ``positives`` (truths that
    count)."""

    scores: np.ndarray
    matched: np.ndarray
    ignored: np.ndarray
    starts: np.ndarray
    counts: np.ndarray
    positives: np.ndarray


def _gather(starts: np.ndarray, counts: np.ndarray, images: np.ndarray | None) -> np.ndarray:
    """Positions in flat per-image arrays of the images at ``images`` (repeats allowed, in that
    order; None: every image once)."""
    if images is None:
        return np.arange(int(counts.sum()))
    chosen = counts[images]
    return np.repeat(starts[images] - (np.cumsum(chosen) - chosen), chosen) + np.arange(int(chosen.sum()))


def match_images(images: list[ImageBoxes], labels: list[str], thresholds: list[float],
                 max_dets: int = 100) -> dict[str, ClassMatches]:
    """COCOeval's ``evaluate``: per class, each image's matches at every threshold."""
    out = {}
    for label in labels:
        per_image = [_match_image(image, label, thresholds, max_dets) for image in images]
        counts = np.array([len(p[0]) for p in per_image], dtype=int)
        out[label] = ClassMatches(np.array([s for p in per_image for s in p[0]], dtype=float),
                                  np.concatenate([p[1] for p in per_image], axis=1) if per_image
                                  else np.zeros((len(thresholds), 0)),
                                  np.concatenate([p[2] for p in per_image], axis=1) if per_image
                                  else np.zeros((len(thresholds), 0), dtype=bool),
                                  np.cumsum(counts) - counts, counts, np.array([p[3] for p in per_image], dtype=int))
    return out


def accumulate(matches: dict[str, ClassMatches], thresholds: list[float],
               images: np.ndarray | None = None) -> APResult:
    """COCOeval's ``accumulate`` over ``match_images``' output, for the images at positions
    ``images`` (repeats allowed, in that order; None: all once): equal to ``coco_ap`` of that
    list of images."""
    labels = list(matches)
    table = np.full((len(thresholds), len(labels)), np.nan)
    result = APResult()
    for k, label in enumerate(labels):
        m = matches[label]
        positives = int(m.positives.sum() if images is None else m.positives[images].sum())
        if positives == 0:
            continue
        index = _gather(m.starts, m.counts, images)
        order = index[np.argsort(-m.scores[index], kind="mergesort")]
        matched, ignored = m.matched[:, order], m.ignored[:, order]
        tps = np.cumsum((matched != 0) & ~ignored, axis=1).astype(float)
        fps = np.cumsum((matched == 0) & ~ignored, axis=1).astype(float)
        for t in range(len(thresholds)):
            recall = tps[t] / positives
            precision = _envelope(tps[t] / (fps[t] + tps[t] + np.spacing(1)))
            table[t, k] = _sampled_mean(recall, precision)
            if t == 0:
                result.curves[label] = (recall, precision)
    valid = ~np.isnan(table)
    if valid.any():
        result.ap = float(table[valid].mean())
        result.per_threshold = {th: float(table[t][valid[t]].mean()) for t, th in enumerate(thresholds)}
        result.per_class = {label: float(table[:, k].mean()) for k, label in enumerate(labels) if valid[:, k].any()}
    return result


def coco_ap(images: list[ImageBoxes], labels: list[str], thresholds: list[float], max_dets: int = 100) -> APResult:
    """COCO AP over images for each class and overlap threshold (COCOeval's evaluate and
    accumulate at one area range, ``max_dets`` detections per image and class)."""
    return accumulate(match_images(images, labels, thresholds, max_dets), thresholds)


@dataclass
class DistanceImage:
    """One image for the centre-distance AP: ``gt_centres`` a Gx2 and ``dt_centres`` a Dx2 matrix
    of ground-plane positions (metres), ``dt_scores`` (D,); for the true-positive errors, sizes
    ``gt_lwh`` Gx3 and ``dt_lwh`` Dx3 (metres) and headings ``gt_headings`` (G,) and
    ``dt_headings`` (D,) (radians, in the ground plane)."""

    gt_labels: list[str]
    gt_centres: np.ndarray
    gt_lwh: np.ndarray
    gt_headings: np.ndarray
    dt_labels: list[str]
    dt_scores: np.ndarray
    dt_centres: np.ndarray
    dt_lwh: np.ndarray
    dt_headings: np.ndarray


# nuScenes' true-positive errors that apply to these boxes (no velocity, no attributes).
TP_ERRORS = ("trans_err", "scale_err", "orient_err")


@dataclass
class DistanceAP:
    """One class at one distance threshold: ``ap`` (None when the class has no truth), the
    true positives as (image, detection, truth) triples, and the true-positive errors by name
    (``TP_ERRORS``; None when the class has no truth, 1 when its recall never passes the minimum
    recall, as nuScenes caps them)."""

    ap: float | None
    matches: list[tuple[int, int, int]]
    errors: dict[str, float | None]


def scale_error(pred_lwh: np.ndarray, gt_lwh: np.ndarray) -> float:
    """1 - IoU of two boxes of these sizes (3,) with centres and orientations aligned
    (nuscenes-devkit ``eval/common/utils.py`` ``scale_iou``); 1 where both volumes are zero."""
    inter = float(np.prod(np.minimum(pred_lwh, gt_lwh)))
    union = float(np.prod(pred_lwh) + np.prod(gt_lwh)) - inter
    return 1.0 - (inter / union if union > 0 else 0.0)


@dataclass
class _Ranked:
    """One class's detections in rank order: their scores, whether each matched, the matches
    (image, detection, truth) and each match's errors by name."""

    scores: list[float] = field(default_factory=list)
    hits: list[int] = field(default_factory=list)
    matches: list[tuple[int, int, int]] = field(default_factory=list)
    errors: dict[str, list[float]] = field(default_factory=lambda: {name: [] for name in TP_ERRORS})


def _rank_and_match(images: list[DistanceImage], label: str, threshold: float) -> _Ranked:
    """The devkit's ``accumulate`` loop: detections by descending score (ties: later first), each
    taking the nearest free truth of its class in its image when nearer than ``threshold``."""
    ranked = sorted(((float(score), i, d) for i, image in enumerate(images)
                     for d, (name, score) in enumerate(zip(image.dt_labels, image.dt_scores)) if name == label),
                    reverse=True)
    taken = [np.zeros(len(image.gt_labels), dtype=bool) for image in images]
    result = _Ranked()
    for score, i, d in ranked:
        image = images[i]
        candidates = [g for g, name in enumerate(image.gt_labels) if name == label and not taken[i][g]]
        distances = np.linalg.norm(image.gt_centres[candidates] - image.dt_centres[d], axis=1) if candidates else []
        best = int(np.argmin(distances)) if candidates else -1
        result.scores.append(score)
        result.hits.append(int(best >= 0 and distances[best] < threshold))
        if not result.hits[-1]:
            continue
        g = candidates[best]
        taken[i][g] = True
        result.matches.append((i, d, g))
        result.errors["trans_err"].append(float(distances[best]))
        result.errors["scale_err"].append(scale_error(image.dt_lwh[d], image.gt_lwh[g]))
        result.errors["orient_err"].append(abs(wrap_angle(image.dt_headings[d] - image.gt_headings[g])))
    return result


def distance_ap(images: list[DistanceImage], label: str, threshold: float, min_recall: float = 0.1,
                min_precision: float = 0.1) -> DistanceAP:
    """nuScenes' detection AP for one class and distance threshold (metres), with its
    true-positive errors (nuscenes-devkit ``eval/detection/algo.py``: ``accumulate``, ``calc_ap``,
    ``calc_tp``).

    Detections are taken by descending score, ties by the later detection first (as the devkit
    sorts); each matches the nearest free truth of its class in its image if nearer than
    ``threshold``. Precision is interpolated at 101 recall points; AP averages it above
    ``min_recall`` after subtracting ``min_precision`` (negative parts count as 0), over
    ``1 - min_precision``. Each true-positive error is the running mean over the matches in rank
    order, read at the score each recall point is reached with, averaged from ``min_recall`` up
    to the highest recall reached (1 when that is not above ``min_recall``). The devkit finds the
    highest recall by the first zero among the interpolated scores; it is found here from the
    recall itself, which agrees for scores that are not 0 and also holds for log-probabilities."""
    positives = sum(name == label for image in images for name in image.gt_labels)
    if positives == 0:
        return DistanceAP(None, [], dict.fromkeys(TP_ERRORS))
    ranked = _rank_and_match(images, label, threshold)
    if not ranked.matches:
        return DistanceAP(0.0, [], dict.fromkeys(TP_ERRORS, 1.0))
    ap = _interpolated_ap(np.asarray(ranked.hits), positives, min_recall, min_precision)
    tp = np.cumsum(ranked.hits)
    recall = tp / positives
    first = round(100 * min_recall) + 1
    score_at = np.interp(RECALL_POINTS, recall, ranked.scores, right=0)
    last = int(np.flatnonzero(recall[-1] >= RECALL_POINTS)[-1])  # the highest recall point reached
    matched_scores = np.asarray([s for s, hit in zip(ranked.scores, ranked.hits) if hit])[::-1]
    errors: dict[str, float | None] = {}
    for name, values in ranked.errors.items():
        running_mean = np.cumsum(values) / np.arange(1, len(values) + 1)
        curve = np.interp(score_at[::-1], matched_scores, running_mean[::-1])[::-1]
        errors[name] = float(curve[first:last + 1].mean()) if last >= first else 1.0
    return DistanceAP(ap, ranked.matches, errors)


def _interpolated_ap(hits: np.ndarray, positives: int, min_recall: float, min_precision: float) -> float:
    """nuScenes' ``calc_ap`` from the hit flags (N,) of the ranked detections: precision at 101
    recall points (0 past the last recall), above ``min_recall``, less ``min_precision``."""
    if not hits.any():
        return 0.0
    tp = np.cumsum(hits)
    recall, precision = tp / positives, tp / np.arange(1, len(tp) + 1)
    sampled = np.interp(RECALL_POINTS, recall, precision, right=0)
    first = round(100 * min_recall) + 1
    return float(np.clip(sampled[first:] - min_precision, 0, None).mean() / (1.0 - min_precision))


@dataclass(frozen=True)
class ClassHits:
    """``distance_ap``'s matching of one class at one threshold, image by image: it depends on
    each image alone (a detection takes the nearest free truth of its image, in the image's own
    score order), so a resampled list of images (``bootstrap.py``) reuses it. Flat over every
    image's ranked detections: ``scores``, ``hits`` (0/1) and ``within`` (rank in its image),
    each (N,); per image (I,): ``starts`` into them, ``counts`` of detections, ``positives``
    (truths of the class)."""

    scores: np.ndarray
    hits: np.ndarray
    within: np.ndarray
    starts: np.ndarray
    counts: np.ndarray
    positives: np.ndarray


def class_hits(images: list[DistanceImage], label: str, threshold: float) -> ClassHits:
    """Every image's ``_rank_and_match`` for ``label`` at ``threshold`` (metres), flattened."""
    ranked = [_rank_and_match([image], label, threshold) for image in images]
    counts = np.array([len(r.scores) for r in ranked], dtype=int)
    return ClassHits(np.array([s for r in ranked for s in r.scores], dtype=float),
                     np.array([h for r in ranked for h in r.hits], dtype=int),
                     np.concatenate([np.arange(c) for c in counts]) if len(counts) else np.zeros(0, dtype=int),
                     np.cumsum(counts) - counts, counts,
                     np.array([sum(name == label for name in image.gt_labels) for image in images], dtype=int))


def distance_ap_of_hits(table: ClassHits, images: np.ndarray, min_recall: float = 0.1,
                        min_precision: float = 0.1) -> float | None:
    """``distance_ap(...).ap`` of the images at positions ``images`` (repeats allowed, in that
    order) from ``class_hits``: detections ranked as the devkit ranks them (score, then the later
    image, then the later detection first). None when those images hold no truth of the class."""
    positives = int(table.positives[images].sum())
    if positives == 0:
        return None
    index = _gather(table.starts, table.counts, images)
    position = np.repeat(np.arange(len(images)), table.counts[images])
    order = np.lexsort((table.within[index], -position, -table.scores[index]))
    return _interpolated_ap(table.hits[index][order], positives, min_recall, min_precision)
