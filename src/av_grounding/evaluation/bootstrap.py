"""Clip-bootstrap 95 % intervals of the headline metrics: AP2D50, AP3D (0.05:0.50), AP3D of the far
depth bin (truth beyond ``evaluate.depth_bins_m``'s last limit, 35 m by default), centre-distance
mAP, recall and precision.

The frames of one clip are not independent samples (the same scene seen by five cameras, tenths
of a second apart), so the evaluation set is resampled by clip, not by frame: each replicate
draws as many clips as there are, with replacement, keeps every frame of each drawn clip
(twice if drawn twice), and recomputes the metric; the interval is the 2.5th and 97.5th
percentile of the replicates (a percentile interval of the cluster bootstrap: Efron & Tibshirani
1993, "An Introduction to the Bootstrap", chapters 6 and 13; Field & Welsh 2007, "Bootstrapping
clustered data"). With few clips the interval is wide and itself uncertain: 12 held-out clips
give about 12 distinct values of anything one clip decides.

Each replicate's metrics equal the evaluator's (``evaluate.evaluate_frames``) on the resampled
list of frames, but are computed from per-frame matches made once (``ap.match_images``,
``ap.class_hits``, the centre matching of ``matching.match_centres``): matching depends on one
frame alone, so only the ranking across frames and the sums are redone per replicate.
"""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from .ap import ClassHits, accumulate, class_hits, distance_ap_of_hits, match_images
from .config import EvaluationConfig
from .evaluate import distance_images, images_2d, images_3d, in_depth_range
from .frames import EvaluationWarning, Frame
from .matching import match_centres

HEADLINE = ("ap2d50", "ap3d", "ap3d_far", "center_distance_map", "recall", "precision")
LEVEL = 0.95


@dataclass(frozen=True)
class Interval:
    """A metric's value on all frames and its bootstrap interval [low, high] (None where the
    metric is undefined, no truth, or where there is one clip only)."""

    value: float | None
    low: float | None
    high: float | None

    def serialize(self) -> list[float | None]:
        return [self.low, self.high]


def _mean(values: list[float | None]) -> float | None:
    defined = [v for v in values if v is not None]
    return float(np.mean(defined)) if defined else None


def metric_functions(frames: list[Frame], config: EvaluationConfig) -> dict[str, Callable[[np.ndarray], float | None]]:
    """Each headline metric as a function of an array of frame positions (repeats allowed, in
    that order), from matches made once here. ``frames`` as the evaluator reads them
    (``frames.load_frames``)."""
    labels = sorted({label for f in frames for label in f.gt.labels})
    matches_2d = match_images(images_2d(frames), labels, [0.5], config.max_detections)
    thresholds_3d = list(config.ap3d_thresholds)
    boxes_3d = images_3d(frames)
    matches_3d = match_images(boxes_3d, labels, thresholds_3d, config.max_detections)
    matches_far = match_images(in_depth_range(frames, boxes_3d, *config.depth_ranges["far"]), labels, thresholds_3d,
                               config.max_detections)
    distance = distance_images(frames)
    hits: dict[tuple[float, str], ClassHits] = {
        (t, label): class_hits(distance, label, t) for t in config.distance_thresholds_m for label in labels}
    matched = np.array([len(match_centres(f.pred.centres[:, [0, 2]], f.gt.centres[:, [0, 2]], config.match_distance_m))
                        for f in frames])
    truths = np.array([len(f.gt) for f in frames])
    predicted = np.array([len(f.pred) for f in frames])

    def centre_map(chosen: np.ndarray) -> float | None:
        return _mean([_mean([distance_ap_of_hits(hits[t, label], chosen, config.min_recall, config.min_precision)
                             for label in labels])
                      for t in config.distance_thresholds_m])

    def recall(chosen: np.ndarray) -> float | None:
        total = int(truths[chosen].sum())
        return float(matched[chosen].sum() / total) if total else None

    def precision(chosen: np.ndarray) -> float | None:
        total = int(predicted[chosen].sum())
        return float(matched[chosen].sum() / total) if total else None

    return {"ap2d50": lambda chosen: accumulate(matches_2d, [0.5], chosen).ap,
            "ap3d": lambda chosen: accumulate(matches_3d, thresholds_3d, chosen).ap,
            "ap3d_far": lambda chosen: accumulate(matches_far, thresholds_3d, chosen).ap,
            "center_distance_map": centre_map, "recall": recall, "precision": precision}


@dataclass(frozen=True)
class BootstrapResult:
    """The headline metrics' intervals (``HEADLINE`` -> ``Interval``) from ``replicates``
    resamplings of ``clips`` clips, drawn with ``seed``."""

    replicates: int
    clips: int
    seed: int
    intervals: dict[str, Interval]
    # Per metric, its value in each replicate (NaN where undefined), and the frames drawn from:
    # what a paired comparison of two columns on the same draws needs (``paired_change``).
    values: dict[str, np.ndarray] = field(default_factory=dict, compare=False, repr=False)
    frames: tuple[str, ...] = field(default=(), compare=False, repr=False)

    def serialize(self) -> dict[str, object]:
        return {"level": LEVEL, "replicates": self.replicates, "clips": self.clips, "seed": self.seed,
                **{name: interval.serialize() for name, interval in self.intervals.items()}}


def clip_bootstrap(frames: list[Frame], config: EvaluationConfig, replicates: int, seed: int = 0) -> BootstrapResult:
    """The headline metrics (``HEADLINE``) of ``frames`` with clip-bootstrap 95 % intervals from
    ``replicates`` resamplings drawn by a generator seeded with ``seed`` (deterministic). A
    replicate where a metric is undefined (no truth drawn) is left out of that metric's
    percentiles. With one clip there is nothing to resample: every interval is [None, None].
    Frames without a clip (ground truth without ``clip_id``) are each their own clip, with an
    ``EvaluationWarning`` when no frame has one.
    Raises ``ValueError`` for fewer than 2 replicates or no frames."""
    if replicates < 2 or not frames:
        raise ValueError(f"clip_bootstrap: {replicates} replicates of {len(frames)} frames; an interval needs at "
                         "least 2 replicates of at least one frame")
    clips: dict[str, list[int]] = {}
    for index, frame in enumerate(frames):
        clips.setdefault(frame.clip or frame.id, []).append(index)
    members = [np.asarray(clips[name]) for name in sorted(clips)]
    if len(members) == len(frames) > 1 and not any(frame.clip for frame in frames):
        warnings.warn("the ground truth names no clip_id: the bootstrap resamples frames as if independent, so "
                      "its intervals are too narrow where frames share a clip", EvaluationWarning, stacklevel=2)
    metrics = metric_functions(frames, config)
    rng = np.random.default_rng(seed)
    draws = [np.concatenate([members[c] for c in rng.integers(0, len(members), len(members))])
             for _ in range(replicates)]
    everything = np.arange(len(frames))
    intervals, values = {}, {}
    for name, metric in metrics.items():
        values[name] = np.array([np.nan if (v := metric(chosen)) is None else v for chosen in draws]
                                if len(members) > 1 else [], dtype=float)
        intervals[name] = Interval(metric(everything), *_percentiles(values[name]))
    return BootstrapResult(replicates, len(members), seed, intervals, values, tuple(f.id for f in frames))


def _percentiles(values: np.ndarray) -> tuple[float | None, float | None]:
    """The 2.5th and 97.5th percentiles of the defined (not NaN) values; None, None without any."""
    defined = values[~np.isnan(values)]
    if not len(defined):
        return None, None
    low, high = np.percentile(defined, [100 * (1 - LEVEL) / 2, 100 * (1 + LEVEL) / 2])
    return float(low), float(high)


def paired_change(before: BootstrapResult, after: BootstrapResult) -> dict[str, Interval]:
    """``after`` minus ``before`` per headline metric, with the 95 % interval of that difference
    over the same resamplings (a paired bootstrap: both columns scored on the same draws of the
    same clips, so what the clips share cancels and the interval is far narrower than the two
    intervals side by side). An interval above 0 says the metric rose. Value None where either
    is undefined. Raises ``ValueError`` when the two were not drawn alike (other frames, clips,
    replicates or seed)."""
    if (before.frames, before.clips, before.replicates, before.seed) != (after.frames, after.clips,
                                                                        after.replicates, after.seed):
        raise ValueError("paired_change: the two bootstraps were not drawn on the same frames, clips, replicates "
                         "and seed")
    out = {}
    for name, interval in after.intervals.items():
        earlier = before.intervals[name].value
        value = None if interval.value is None or earlier is None else interval.value - earlier
        out[name] = Interval(value, *_percentiles(_difference(before, after, name)))
    return out


def _difference(before: BootstrapResult, after: BootstrapResult, name: str) -> np.ndarray:
    """``after``'s replicates of metric ``name`` minus ``before``'s (empty with one clip)."""
    return after.values[name] - before.values[name] if len(after.values[name]) else after.values[name]


def _order_of(frames: tuple[str, ...], replicates: int) -> np.ndarray:
    """A permutation of ``replicates`` seeded by the frame ids: runs on the same frames get the
    same order (their draws stay common), runs on other frames another (their draws combine as
    independent)."""
    seed = int.from_bytes(hashlib.sha256("\n".join(frames).encode()).digest()[:8], "little")
    return np.random.default_rng(seed).permutation(replicates)


def mean_change(pairs: list[tuple[BootstrapResult, BootstrapResult]]) -> dict[str, Interval]:
    """The mean over runs (training seeds, say) of ``after`` minus ``before`` per headline metric,
    with the 95 % interval of that mean. Each pair is one run's two columns drawn alike
    (``paired_change``); replicate i of the mean is the mean of the runs' replicate-i differences,
    each run's replicates first reordered by a permutation seeded by its frames (``_order_of``):
    runs scored on the same frames keep their common draws (a paired design: what the clips
    share cancels), runs on other frames (another data seed) combine as independent draws, as
    they are. One pair gives ``paired_change``'s numbers. Value None where a run's is undefined.

    The interval covers the sampling of each run's evaluation clips, not the spread between
    training runs: with two or three seeds that spread cannot be estimated, so a claim across
    seeds also needs each run's own change to point the same way (benchmarks/rl_vs_sft's report
    checks both).
    Raises ``ValueError`` for no pairs, a pair not drawn alike, or runs of unequal replicate counts."""
    if not pairs:
        raise ValueError("mean_change: no runs")
    changes = [paired_change(before, after) for before, after in pairs]
    differences = [{name: _difference(before, after, name) for name in after.intervals} for before, after in pairs]
    return _mean_of_runs("mean_change", changes, differences, [after for _, after in pairs])


def mean_over_runs(results: list[BootstrapResult]) -> dict[str, Interval]:
    """The mean over runs (two data and training seeds, say) of each headline metric, with the
    95 % interval of that mean: replicate i of the mean is the mean of the runs' replicate-i
    values, each run's replicates first reordered by a permutation seeded by its frames
    (``_order_of``), so runs on other frames combine as independent draws, while runs on the same
    frames with the same bootstrap seed keep their common draws (the same run twice gives its own
    intervals, as does one run). As for ``mean_change``, the interval covers the sampling of each
    run's evaluation clips, not the spread between training runs. Value None where a run's is undefined.
    Raises ``ValueError`` for no runs or runs of unequal replicate counts."""
    if not results:
        raise ValueError("mean_over_runs: no runs")
    return _mean_of_runs("mean_over_runs", [r.intervals for r in results], [r.values for r in results], results)


def _mean_of_runs(caller: str, intervals: list[dict[str, Interval]], draws: list[dict[str, np.ndarray]],
                  runs: list[BootstrapResult]) -> dict[str, Interval]:
    """Per metric: the mean of the runs' values (None where one is undefined) and the 95 %
    interval of the mean of their replicate values ``draws``, each run's reordered by
    ``_order_of`` the frames of its bootstrap in ``runs``."""
    if len({run.replicates for run in runs}) > 1:
        raise ValueError(f"{caller}: the runs' bootstraps have different replicate counts")
    frames = [run.frames for run in runs]
    out = {}
    for name in intervals[0]:
        values = [value for run in intervals if (value := run[name].value) is not None]
        ordered = [run[name][_order_of(ids, len(run[name]))] for run, ids in zip(draws, frames)]
        mean = float(np.mean(values)) if len(values) == len(intervals) else None
        out[name] = Interval(mean, *(_percentiles(np.mean(ordered, axis=0)) if all(len(d) for d in ordered)
                                     else (None, None)))
    return out
