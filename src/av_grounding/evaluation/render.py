"""Plots of an evaluation (PNG for people, JSON for `dvc plots`): precision-recall curves,
metrics against training steps, centre error against distance, and overlays of truth against
predictions on sample frames. AP-like axes run from 0 to 1 and percentages from 0 to 100, never
autoscaled; a plot with nothing to draw says "no matches"; null metrics are skipped."""

from __future__ import annotations

import io
import itertools
import zlib
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from ..geometry.boxes import edge_segments, project_edges
from ..geometry.cameras import PinholeCamera
from ..storage import atomic_write_bytes, write_json
from .frames import Frame
from .table import lookup

# key in metrics_vs_steps.json -> path in a column's serialized metrics
STEP_METRICS: dict[str, tuple[str, ...]] = {
    "ap2d": ("ap2d", "ap"), "ap2d_50": ("ap2d", "ap50"), "ap3d": ("ap3d", "ap"), "ap3d_25": ("ap3d", "ap25"),
    "ap3d_near": ("ap3d", "near"), "center_map": ("center_distance", "map"), "recall": ("matching", "recall"),
    "label_accuracy": ("matching", "label_accuracy"), "valid_json": ("answers", "valid_json"),
    "recipe_mean_iou": ("recipe", "mean_iou"), "recipe_ap2d": ("recipe", "ap2d"), "recipe_ap3d": ("recipe", "ap3d"),
    "recipe_iou_accuracy_pct": ("recipe", "iou_accuracy_pct"),
    "recipe_label_accuracy_pct": ("recipe", "label_accuracy_pct"),
    "boxes_per_frame": ("boxes_per_frame",),
}
UNIT_METRICS = ("ap2d", "ap2d_50", "ap3d", "ap3d_25", "ap3d_near", "center_map", "recall", "label_accuracy",
                "valid_json", "recipe_mean_iou", "recipe_ap2d", "recipe_ap3d")
PERCENT_METRICS = ("recipe_iou_accuracy_pct", "recipe_label_accuracy_pct")
NO_MATCHES = "no matches"

# BGR colours of the labels in overlays; other labels get a colour from their name.
LABEL_COLOURS = {"car": (0, 140, 255), "truck": (255, 120, 0), "bus": (200, 0, 200), "trailer": (200, 200, 0),
                 "train": (0, 220, 220)}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(plt, figure, path: Path) -> None:
    """The figure as PNG at ``path``, every axis with plain tick labels: no offset (ticks reading
    0.001-0.003 beside "+1.872") and no scientific notation."""
    for axis in figure.axes:
        axis.ticklabel_format(style="plain", useOffset=False)
    buffer = io.BytesIO()
    figure.tight_layout()
    figure.savefig(buffer, format="png", dpi=100, metadata={"Software": None})
    plt.close(figure)
    atomic_write_bytes(path, buffer.getvalue())


def _say_no_matches(axis) -> None:
    axis.text(0.5, 0.5, NO_MATCHES, transform=axis.transAxes, ha="center", va="center", fontsize=14, color="grey")


def plot_pr_curves(curves: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]], folder: Path) -> None:
    """``precision_recall.json`` (rows: curve, class, recall, precision) and ``.png``; ``curves``:
    title -> class -> (recall, precision)."""
    rows = [{"curve": name, "class": label, "recall": round(float(r), 5), "precision": round(float(p), 5)}
            for name, per_class in curves.items() for label, (rec, prec) in per_class.items()
            for r, p in zip(rec, prec)]
    write_json(folder / "precision_recall.json", rows)
    plt = _pyplot()
    figure, axes = plt.subplots(1, len(curves), figsize=(5 * len(curves), 4))
    for axis, (name, per_class) in zip(np.atleast_1d(axes), curves.items()):
        matched = {label: (rec, prec) for label, (rec, prec) in per_class.items() if len(rec) and rec.max() > 0}
        for label, (rec, prec) in matched.items():
            axis.plot(rec, prec, label=label)
        axis.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02), title=name)
        if matched:
            axis.legend()
        else:
            _say_no_matches(axis)
    _save(plt, figure, folder / "precision_recall.png")


def steps_rows(results: dict[str, dict[str, Any]], steps: dict[str, int]) -> list[dict[str, Any]]:
    """One row per column in step order: step, column and each ``STEP_METRICS`` value (null
    where the metric is undefined)."""
    rows = [{"step": steps[name], "column": name, **{key: lookup(metrics, path) for key, path in STEP_METRICS.items()}}
            for name, metrics in results.items()]
    return sorted(rows, key=lambda r: (r["step"], r["column"] == "final"))


def _series_colours(plt) -> list[tuple[float, float, float]]:
    """20 distinct colours: tab20's ten strong ones, then their ten light ones."""
    colours = plt.get_cmap("tab20").colors
    return list(colours[0::2]) + list(colours[1::2])


def _plot_series(axis, rows: list[dict[str, Any]], keys: tuple[str, ...], colours: list,
                 matched: dict[str, float | None]) -> None:
    """One line per metric, each its own colour; the recipe's metrics dashed with square markers.
    Label accuracy is over matched pairs only: each of its points says how many (``n=``)."""
    for key, colour in zip(keys, colours):
        points = [(r["step"], r[key], r["column"]) for r in rows if r[key] is not None]
        if not points:
            continue
        recipe = key.startswith("recipe_")
        label = f"{key} (n: matched pairs)" if key == "label_accuracy" else key
        axis.plot([p[0] for p in points], [p[1] for p in points], color=colour, marker="s" if recipe else "o",
                  linestyle="--" if recipe else "-", label=label)
        if key == "label_accuracy":
            for step, value, column in points:
                axis.annotate(f"n={matched.get(column)}", (step, value), textcoords="offset points", xytext=(3, 4),
                              fontsize=6, color=colour)


def plot_against_steps(results: dict[str, dict[str, Any]], steps: dict[str, int], folder: Path) -> None:
    """``metrics_vs_steps.json`` and ``.png``: scores (0..1), percentages (0..100) and boxes per
    frame against the training step (0: zero-shot)."""
    rows = steps_rows(results, steps)
    write_json(folder / "metrics_vs_steps.json", rows)
    plt = _pyplot()
    figure, axes = plt.subplots(1, 3, figsize=(16, 4.5))
    colours = _series_colours(plt)
    matched = {name: lookup(metrics, ("matching", "matched")) for name, metrics in results.items()}
    _plot_series(axes[0], rows, UNIT_METRICS, colours, matched)
    _plot_series(axes[1], rows, PERCENT_METRICS, colours, matched)
    _plot_series(axes[2], rows, ("boxes_per_frame",), colours, matched)
    axes[0].set(xlabel="training step (0: zero-shot)", ylabel="score", ylim=(0, 1.02), title="AP-like scores")
    axes[1].set(xlabel="training step (0: zero-shot)", ylabel="%", ylim=(0, 102), title="recipe percentages")
    axes[2].set(xlabel="training step (0: zero-shot)", ylabel="boxes", ylim=(0, None), title="boxes per frame")
    axes[2].axhline(results[rows[0]["column"]]["gt_boxes"] / results[rows[0]["column"]]["frames"], color="grey",
                    linestyle="--", label="truth")
    for axis in axes:
        axis.legend(fontsize=7)
    _save(plt, figure, folder / "metrics_vs_steps.png")


def plot_error_against_distance(pairs: list[tuple[float, float]], column: str, folder: Path) -> None:
    """``error_vs_distance.json`` (mean centre error per 10 m of distance) and ``.png`` (every
    matched pair and the means), for one column; "no matches" when there is no pair."""
    distances = np.array([d for d, _ in pairs])
    errors = np.array([e for _, e in pairs])
    edges = np.arange(0, max(distances.max(initial=0) + 10, 20), 10)
    rows = []
    for low, high in itertools.pairwise(edges):
        inside = (distances >= low) & (distances < high)
        if inside.any():
            rows.append({"distance_m": float(low + 5), "mean_error_m": round(float(errors[inside].mean()), 4),
                         "boxes": int(inside.sum())})
    write_json(folder / "error_vs_distance.json", rows)
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(6, 4))
    axis.set(xlabel="distance of the true box (m)", ylabel="centre error (m)",
             title=f"Position error against distance ({column})")
    if pairs:
        axis.scatter(distances, errors, s=8, alpha=0.5, label="matched boxes")
        axis.plot([r["distance_m"] for r in rows], [r["mean_error_m"] for r in rows], color="red", marker="o",
                  label="mean per 10 m")
        axis.legend()
    else:
        _say_no_matches(axis)
    _save(plt, figure, folder / "error_vs_distance.png")


def label_colour(label: str) -> tuple[int, int, int]:
    """BGR colour of a label: fixed for the dataset's labels, derived from the name otherwise."""
    if label in LABEL_COLOURS:
        return LABEL_COLOURS[label]
    value = zlib.crc32(label.encode())
    return (64 + value % 192, 64 + (value >> 8) % 192, 64 + (value >> 16) % 192)


def _dashed(canvas: np.ndarray, line: np.ndarray, colour: tuple[int, int, int], dash_px: float = 5.0) -> None:
    """Draw a pixel polyline as dashes of ``dash_px`` with gaps of the same length, clipped to
    the canvas."""
    height, width = canvas.shape[:2]
    for first, second in itertools.pairwise(line):
        visible, clipped_a, clipped_b = cv2.clipLine((0, 0, width, height),
                                                     tuple(np.round(first).astype(int).tolist()),
                                                     tuple(np.round(second).astype(int).tolist()))
        if not visible:
            continue
        a, b = np.array(clipped_a, float), np.array(clipped_b, float)
        pieces = max(1, int(np.linalg.norm(b - a) / dash_px))
        for k in range(0, pieces, 2):
            start, end = a + (b - a) * k / pieces, a + (b - a) * min(k + 1, pieces) / pieces
            cv2.line(canvas, tuple(np.round(start).astype(int)), tuple(np.round(end).astype(int)), colour, 1,
                     cv2.LINE_AA)


def _legend(width: int, column: str, labels: list[str]) -> np.ndarray:
    """A white band: the column name, the line styles of truth and prediction, the label colours."""
    band = np.full((40, width, 3), 255, dtype=np.uint8)
    font, scale, black = cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0)
    cv2.putText(band, column, (4, 14), font, scale, black, 1, cv2.LINE_AA)
    x = 4 + cv2.getTextSize(column, font, scale, 1)[0][0] + 12
    cv2.line(band, (x, 10), (x + 20, 10), black, 2, cv2.LINE_AA)
    cv2.putText(band, "truth", (x + 24, 14), font, scale, black, 1, cv2.LINE_AA)
    x += 70
    _dashed(band, np.array([[x, 10.0], [x + 20, 10.0]]), black, 4.0)
    cv2.putText(band, "prediction", (x + 24, 14), font, scale, black, 1, cv2.LINE_AA)
    x = 4
    for label in labels:
        cv2.rectangle(band, (x, 24), (x + 10, 34), label_colour(label), -1)
        cv2.putText(band, label, (x + 14, 33), font, scale, black, 1, cv2.LINE_AA)
        x += 14 + cv2.getTextSize(label, font, scale, 1)[0][0] + 10
    return band


def draw_overlay(frame: Frame, image: np.ndarray, column: str) -> np.ndarray:
    """The image with truth (solid, 2 px) and predictions (dashed) in their label's colour, and a
    legend band below it naming the column."""
    model = "pinhole" if isinstance(frame.camera, PinholeCamera) else "ftheta"
    canvas = image.copy()
    for which, boxes in (("gt", frame.gt), ("pred", frame.pred)):
        for label, box in zip(boxes.labels, boxes.boxes):
            for line in project_edges(box.corners(), frame.camera, edge_segments(model)):
                if not (np.isfinite(line).all() and np.abs(line).max() < 1e5):
                    continue
                if which == "gt":
                    cv2.polylines(canvas, [np.round(line * 4).astype(np.int32)], False, label_colour(label), 2,
                                  cv2.LINE_AA, shift=2)
                else:
                    _dashed(canvas, line, label_colour(label))
    labels = sorted(set(frame.gt.labels) | set(frame.pred.labels))
    return np.concatenate([canvas, _legend(canvas.shape[1], column, labels)])


def write_overlays(frames: list[Frame], images: Path, folder: Path, count: int, column: str) -> int:
    """Overlays of the first ``count`` frames with truth, ``<id>.jpg`` in ``folder`` (stale ones
    removed; the folder exists afterwards, empty when ``count`` is 0: it is a declared output of
    the ``evaluate`` stage); returns how many frames were chosen."""
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.glob("*.jpg"):
        stale.unlink()
    chosen = [f for f in frames if len(f.gt)][:count]
    for frame in chosen:
        image = cv2.imread(str(images / f"{frame.id}.jpg"))
        if image is None:
            continue
        ok, jpeg = cv2.imencode(".jpg", draw_overlay(frame, image, column), [cv2.IMWRITE_JPEG_QUALITY, 90])
        if not ok:
            raise RuntimeError(f"{folder / f'{frame.id}.jpg'}: JPEG encoding failed")
        atomic_write_bytes(folder / f"{frame.id}.jpg", jpeg.tobytes())
    return len(chosen)
