"""Plots of an evaluation: precision-recall curves, metrics against training steps, position
error against distance (PNG for people, JSON for `dvc plots`), and overlays of truth (green)
against predictions (red) on sample frames."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from ..geometry.boxes import edge_segments, project_edges
from ..geometry.cameras import PinholeCamera
from ..storage import atomic_write_bytes, write_json
from .evaluate import Frame

STEP_METRICS = {"ap2d": ("ap2d", "ap"), "ap3d": ("ap3d", "ap"), "ap3d_25": ("ap3d", "ap25"),
                "center_map": ("center_distance", "map"), "recipe_mean_iou": ("recipe", "mean_iou"),
                "recipe_iou_accuracy_pct": ("recipe", "iou_accuracy_pct"),
                "recipe_label_accuracy_pct": ("recipe", "label_accuracy_pct"),
                "recipe_ap2d": ("recipe", "ap2d"), "recipe_ap3d": ("recipe", "ap3d")}


def _figure():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(plt, figure, path: Path) -> None:
    buffer = io.BytesIO()
    figure.tight_layout()
    figure.savefig(buffer, format="png", dpi=100, metadata={"Software": None})
    plt.close(figure)
    atomic_write_bytes(path, buffer.getvalue())


def plot_pr_curves(curves: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]], folder: Path) -> None:
    rows = [{"curve": name, "class": label, "recall": round(float(r), 5), "precision": round(float(p), 5)}
            for name, per_class in curves.items() for label, (rec, prec) in per_class.items()
            for r, p in zip(rec, prec)]
    write_json(folder / "precision_recall.json", rows)
    plt = _figure()
    figure, axes = plt.subplots(1, len(curves), figsize=(5 * len(curves), 4))
    for axis, (name, per_class) in zip(np.atleast_1d(axes), curves.items()):
        for label, (rec, prec) in per_class.items():
            axis.plot(rec, prec, label=label)
        axis.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02), title=name)
        if per_class:
            axis.legend()
    _save(plt, figure, folder / "precision_recall.png")


def plot_against_steps(results: dict[str, dict[str, Any]], steps: dict[str, int], folder: Path) -> None:
    rows = []
    for column, metrics in results.items():
        row = {"step": steps[column], "column": column}
        for key, (section, name) in STEP_METRICS.items():
            row[key] = round(float(metrics[section][name]), 6)
        rows.append(row)
    rows.sort(key=lambda r: r["step"])
    write_json(folder / "metrics_vs_steps.json", rows)
    plt = _figure()
    figure, axes = plt.subplots(1, 2, figsize=(11, 4))
    for key in ("ap2d", "ap3d", "ap3d_25", "center_map", "recipe_mean_iou", "recipe_ap2d", "recipe_ap3d"):
        axes[0].plot([r["step"] for r in rows], [r[key] for r in rows], marker="o", label=key)
    for key in ("recipe_iou_accuracy_pct", "recipe_label_accuracy_pct"):
        axes[1].plot([r["step"] for r in rows], [r[key] for r in rows], marker="o", label=key)
    axes[0].set(xlabel="training step (0: zero-shot)", ylabel="score")
    axes[1].set(xlabel="training step (0: zero-shot)", ylabel="%")
    axes[0].legend(fontsize=7)
    axes[1].legend(fontsize=7)
    _save(plt, figure, folder / "metrics_vs_steps.png")


def plot_error_against_distance(pairs: list[tuple[float, float]], folder: Path) -> None:
    """Centre error (m) of matched boxes against the truth's distance (m), binned by 10 m."""
    distances = np.array([d for d, _ in pairs])
    errors = np.array([e for _, e in pairs])
    edges = np.arange(0, max(distances.max(initial=0) + 10, 20), 10)
    rows = []
    for lo, hi in zip(edges[:-1], edges[1:]):
        inside = (distances >= lo) & (distances < hi)
        if inside.any():
            rows.append({"distance_m": float(lo + 5), "mean_error_m": round(float(errors[inside].mean()), 4),
                         "boxes": int(inside.sum())})
    write_json(folder / "error_vs_distance.json", rows)
    plt = _figure()
    figure, axis = plt.subplots(figsize=(6, 4))
    axis.scatter(distances, errors, s=8, alpha=0.5, label="matched boxes")
    axis.plot([r["distance_m"] for r in rows], [r["mean_error_m"] for r in rows], color="red", marker="o", label="mean per 10 m")
    axis.set(xlabel="distance of the true box (m)", ylabel="centre error (m)", title="Position error against distance")
    axis.legend()
    _save(plt, figure, folder / "error_vs_distance.png")


def draw_overlay(frame: Frame, image: np.ndarray) -> np.ndarray:
    model = "pinhole" if isinstance(frame.camera, PinholeCamera) else "ftheta"
    canvas = image.copy()
    for which, colour in (("gt", (60, 220, 60)), ("pred", (40, 40, 255))):
        for box in frame.boxes(which):
            for line in project_edges(box.corners(), frame.camera, edge_segments(model)):
                if np.isfinite(line).all() and np.abs(line).max() < 1e5:
                    cv2.polylines(canvas, [np.round(line * 4).astype(np.int32)], False, colour, 1, cv2.LINE_AA, shift=2)
    return canvas


def write_overlays(frames: list[Frame], images: Path, folder: Path, count: int) -> int:
    for stale in folder.glob("*.jpg"):
        stale.unlink()
    chosen = [f for f in frames if f.gt][:count]
    for frame in chosen:
        image = cv2.imread(str(images / f"{frame.id}.jpg"))
        if image is None:
            continue
        ok, jpeg = cv2.imencode(".jpg", draw_overlay(frame, image), [cv2.IMWRITE_JPEG_QUALITY, 90])
        atomic_write_bytes(folder / f"{frame.id}.jpg", jpeg.tobytes())
    return len(chosen)
