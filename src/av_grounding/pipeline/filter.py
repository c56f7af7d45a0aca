"""The `filter` stage (docs/formats.md#filter): every records file through ``curation.filters``
(which box is dropped by which filter, and why), the counts into the metrics."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..curation.filters import REASONS, filter_file, score_against_truth
from ..curation.records import map_record_files
from ..params import FilterParams
from ..storage import atomic_folder
from .outputs import write_report


def filter_boxes(params: FilterParams, input: Path, output: Path, metrics: Path | None = None) -> dict[str, Any]:
    """The `filter` stage: every box through the filters of ``curation.filters`` (category,
    distance in metres, field of view, 2D occlusion, 3D depth by ray casting); in
    ``params.workers`` processes over records files (the same bytes for any number).

    Args:
        params: the ``filter`` section (label map, limits, rays per side, workers).
        input: transform's output folder (``records/<clip_id>/<camera>.json``).
        output: the same layout, each record with only its kept boxes (labelled, with their
            measured fractions); replaced whole.
        metrics: the summary as JSON, when given.

    Returns:
        ``frames``, ``frames_without_boxes``, ``boxes_in``, ``boxes_kept``, ``removed`` (boxes per
        filter reason), ``removed_types`` (raw types outside the label map, counted), and for
        synthetic clips ``against_render_truth`` (precision and recall of the occlusion and
        depth decisions against the renderer's truth).

    Raises:
        RecordsError: ``input`` is missing or a records file is unreadable or malformed.
    """
    with atomic_folder(output) as folder:  # replaced whole: no stale or half-written records
        files = map_record_files(filter_file, (params,), input, folder, params.workers, "filter")
    unmapped: dict[str, int] = {}
    for counts in files:
        for raw_type, count in counts.unmapped.items():
            unmapped[raw_type] = unmapped.get(raw_type, 0) + count
    scored = [pair for counts in files for pair in counts.scored]
    summary: dict[str, Any] = {"frames": sum(c.frames for c in files),
                               "frames_without_boxes": sum(c.empty_frames for c in files),
                               "boxes_in": len(scored), "boxes_kept": sum(c.kept for c in files),
                               "removed": {reason: sum(c.removed[reason] for c in files) for reason in REASONS},
                               "removed_types": dict(sorted(unmapped.items()))}
    if any(truth is not None for _, truth in scored):
        summary["against_render_truth"] = score_against_truth(scored, params)
    write_report(metrics, summary)
    return summary
