"""The `transform` stage (docs/conventions.md#world-to-camera): every records file through
``curation.transform``, world-frame labels -> boxes in camera RDF."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..curation.records import map_record_files
from ..curation.transform import transform_file
from ..params import TransformParams
from ..storage import atomic_folder
from .outputs import write_report


def transform(params: TransformParams, input: Path, output: Path, metrics: Path | None = None) -> dict[str, Any]:
    """The `transform` stage: every frame record's objects from world-frame labels to boxes in
    camera RDF, each with the nine numbers of ``params.codec``; in ``params.workers`` processes
    over records files (the same bytes for any number).

    Args:
        params: the ``transform`` section (box codec, workers).
        input: extract's output folder (``records/<clip_id>/<camera>.json``).
        output: the same layout with transformed records; replaced whole (no stale or
            half-written records).
        metrics: the summary as JSON, when given.

    Returns:
        ``frames`` and ``boxes`` transformed, and the ``codec`` used.

    Raises:
        RecordsError: ``input`` is missing or a records file is unreadable or malformed.
    """
    with atomic_folder(output) as folder:  # replaced whole: no stale or half-written records
        counts = map_record_files(transform_file, (params.codec,), input, folder, params.workers, "transform")
    summary = {"frames": sum(f for f, _ in counts), "boxes": sum(b for _, b in counts), "codec": params.codec}
    write_report(metrics, summary)
    return summary
