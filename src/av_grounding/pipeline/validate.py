"""The `validate` stage: every kept box through the checks of ``curation.validate``, and the
boxes of a sample of frames drawn for people to look at.

The metrics summarise per frame (boxes, worst residual, frames with a problem) and name the worst
frames and boxes; when any box fails the stage fails, naming the worst clips, frames and boxes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import cv2
import numpy as np

from ..curation.records import iter_records
from ..curation.validate import Finding, ValidationError, check_record, draw_boxes
from ..params import ValidateParams
from ..shards import ShardError, ShardReader
from ..storage import atomic_write_bytes
from .outputs import write_report

SHOWN_WORST = 5  # clips, and frames or boxes, named in metrics and messages


def residual_summary(values: list[float]) -> dict[str, Any]:
    """``boxes`` (how many residuals), ``mean_residual_px`` and ``max_residual_px`` (pixels,
    6 decimals; None without residuals) of re-projection residuals in pixels."""
    return {"boxes": len(values),
            "mean_residual_px": round(float(np.mean(values)), 6) if values else None,
            "max_residual_px": round(float(np.max(values)), 6) if values else None}


def summarise(frames: list[list[Finding]], images_drawn: int) -> dict[str, Any]:
    """Stage metrics: residuals overall and by reference, per-frame sanity, the worst findings."""
    every = [f for frame in frames for f in frame]
    measured = [f for f in every if f.residual_px is not None]
    failing = [f for f in every if f.problem is not None]
    problems: dict[str, int] = {}
    for finding in failing:
        kind = "residual" if finding.residual_px is not None else (finding.problem or "").split(" (")[0]
        problems[kind] = problems.get(kind, 0) + 1
    worst_per_frame = [max((f.residual_px for f in frame if f.residual_px is not None), default=None)
                       for frame in frames]
    residuals = [r for r in worst_per_frame if r is not None]
    overall = residual_summary([f.residual_px for f in measured if f.residual_px is not None])
    return {
        "boxes_checked": len(measured),
        "mean_residual_px": overall["mean_residual_px"],
        "max_residual_px": overall["max_residual_px"],
        "by_reference": {source: residual_summary([f.residual_px for f in measured
                                                   if f.residual_px is not None and f.reference == source])
                         for source in ("render_truth", "raw_labels")},
        "boxes_failed": len(failing),
        "problems": dict(sorted(problems.items())),
        "per_frame": {
            "frames": len(frames),
            "frames_without_boxes": sum(1 for frame in frames if all(f.track_id is None for f in frame)),
            "frames_with_problems": sum(1 for frame in frames if any(f.problem is not None for f in frame)),
            "boxes": {"mean": round(float(np.mean([len(frame) for frame in frames])), 3) if frames else None,
                      "max": max((len(frame) for frame in frames), default=None)},
            "worst_residual_px": {"p50": round(float(np.percentile(residuals, 50)), 6) if residuals else None,
                                  "p95": round(float(np.percentile(residuals, 95)), 6) if residuals else None},
        },
        "worst": [{"clip_id": f.clip_id, "camera": f.camera, "frame_index": f.frame_index, "track_id": f.track_id,
                   "problem": f.problem, "residual_px": None if f.residual_px is None else round(f.residual_px, 6)}
                  for f in sorted(failing, key=lambda f: (-f.severity(), f.where()))[:SHOWN_WORST]],
        "images_drawn": images_drawn,
    }


def failure_message(failing: list[Finding], total: int, metrics: Path | None) -> str:
    """Names the clips with the most failing boxes and the worst frames and boxes."""
    per_clip: dict[str, int] = {}
    for finding in failing:
        per_clip[finding.clip_id] = per_clip.get(finding.clip_id, 0) + 1
    clips = ", ".join(f"{clip} ({count})" for clip, count in
                      sorted(per_clip.items(), key=lambda item: (-item[1], item[0]))[:SHOWN_WORST])
    worst = "\n  ".join(f"{f.where()}: {f.problem}" for f in sorted(failing, key=lambda f: (-f.severity(), f.where()))
                        [:SHOWN_WORST])
    where = f"; every check is summarised in {metrics}" if metrics else ""
    return (f"{len(failing)} of {total} checked boxes or frames failed{where}\n"
            f"worst clips (failing boxes): {clips}\nworst boxes:\n  {worst}")


def draw_sample(records: list[dict[str, Any]], params: ValidateParams, images: Path, plots: Path) -> int:
    """Draw ``sample_count`` frames (seeded choice) with their boxes into ``plots``."""
    rng = np.random.default_rng(params.seed)
    chosen = (sorted(rng.choice(len(records), size=min(params.sample_count, len(records)), replace=False))
              if records else [])
    plots.mkdir(parents=True, exist_ok=True)
    for stale in plots.glob("*.jpg"):
        stale.unlink()
    shards = ShardReader(images)
    for index in chosen:
        record = records[index]
        stored = shards.read(record["image_shard"], record["image_member"])
        image = cv2.imdecode(np.frombuffer(stored, np.uint8), cv2.IMREAD_COLOR)
        if image is None:
            raise ShardError(f"{images / record['image_shard']}: member {record['image_member']} is not an image")
        path = plots / f"{record['clip_id'][:8]}_{record['camera']}_{record['frame_index']:06d}.jpg"
        ok, jpeg = cv2.imencode(".jpg", draw_boxes(image, record), [cv2.IMWRITE_JPEG_QUALITY, 90])
        if not ok:
            raise RuntimeError(f"{path}: JPEG encoding failed")
        atomic_write_bytes(path, jpeg.tobytes())
    return len(chosen)


def validate(params: ValidateParams, input: Path, images: Path, plots: Path,
             metrics: Path | None = None) -> dict[str, Any]:
    """The `validate` stage: every kept box through the checks of ``curation.validate`` (finite
    numbers, rigid poses, positive sizes, re-projection through the codec and camera model
    against a reference), and a sample of sound frames drawn with their boxes.

    Args:
        params: the ``validate`` section (sample count and seed, ``max_residual_px``).
        input: filter's output folder (``records/<clip_id>/<camera>.json``).
        images: extract's output folder (the JPEG shards under ``images/``).
        plots: the folder of the drawn sample (``<first 8 characters of the clip id>_<camera>_
            <frame index:06d>.jpg``; earlier JPEGs there are removed).
        metrics: the summary as JSON, when given; written before any failure is raised.

    Returns:
        The summary: boxes checked, mean and max residual in pixels (overall and by reference:
        ``render_truth`` or ``raw_labels``), boxes failed, problems by kind, per-frame counts,
        the worst findings, and the number of images drawn.

    Raises:
        ValidationError: any box or frame failed a check (a residual above ``max_residual_px``
            pixels, or a bad number); the message names the worst clips, frames and boxes.
        RecordsError: ``input`` is missing or a records file is unreadable or malformed.
        ShardError: a sampled frame's image is missing from its shard or is not an image.
    """
    frames: list[list[Finding]] = []
    drawable: list[dict[str, Any]] = []
    for _, _, records in iter_records(input):
        for record in records:
            findings = check_record(record, params.max_residual_px)
            frames.append(findings)
            if record["objects"] and not any(f.problem and f.residual_px is None for f in findings):
                drawable.append(record)
    summary = summarise(frames, draw_sample(drawable, params, images, plots))
    write_report(metrics, summary)
    failing = [f for frame in frames for f in frame if f.problem is not None]
    if failing:
        raise ValidationError(failure_message(failing, sum(len(frame) for frame in frames), metrics)
                              + f"\n(limit of the residual: validate.max_residual_px = {params.max_residual_px})")
    return summary
