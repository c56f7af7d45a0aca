"""Frame records on disk: ``<root>/records/<clip_id>/<camera>.json``, one JSON list per
(clip, camera), written atomically. Extract, transform and filter all use this layout."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from ..errors import PipelineError
from ..storage import non_finite_at, write_json


class RecordsError(PipelineError, ValueError):
    """A records file is missing or malformed; the message names the file."""


# What every stage after extract relies on; stages add keys, none removes these.
FRAME_KEYS = ("clip_id", "camera", "camera_model", "frame_index", "image_shard", "image_member", "width", "height",
              "intrinsics", "camera_to_world", "objects")
OBJECT_KEYS = ("track_id", "object_type", "object_to_world", "object_lwh")


def records_path(root: Path, clip_id: str, camera: str) -> Path:
    return Path(root) / "records" / clip_id / f"{camera}.json"


def record_files(root: Path) -> list[tuple[str, str, Path]]:
    """(clip_id, camera, path) of every records file under ``root``, sorted."""
    folder = Path(root) / "records"
    if not folder.is_dir():
        raise RecordsError(f"{folder}: missing; run the previous stage first")
    return [(p.parent.name, p.stem, p) for p in sorted(folder.glob("*/*.json"))]


def read_records(path: Path) -> list[dict[str, Any]]:
    try:
        records = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise RecordsError(f"{path}: unreadable records: {exc}") from exc
    if not isinstance(records, list):
        raise RecordsError(f"{path}: expected a JSON list of frame records")
    if (where := non_finite_at(records)) is not None:
        raise RecordsError(f"{path}: NaN or infinity at {where}; strict JSON has no such value")
    for index, record in enumerate(records):
        missing = [k for k in FRAME_KEYS if not isinstance(record, dict) or k not in record]
        if missing:
            raise RecordsError(f"{path}: record {index} lacks {missing}")
        for position, obj in enumerate(record["objects"]):
            absent = [k for k in OBJECT_KEYS if not isinstance(obj, dict) or k not in obj]
            if absent:
                raise RecordsError(f"{path}: record {index} (frame {record['frame_index']}), object {position} "
                                   f"lacks {absent}")
    return records


def write_records(root: Path, clip_id: str, camera: str, records: list[dict[str, Any]]) -> None:
    write_json(records_path(root, clip_id, camera), records)


def iter_records(root: Path) -> Iterator[tuple[str, str, list[dict[str, Any]]]]:
    for clip_id, camera, path in record_files(root):
        yield clip_id, camera, read_records(path)


def _map_file(fn: Callable, args: tuple, path: Path, output: Path, clip_id: str, camera: str) -> Any:
    records, result = fn(*args, read_records(path))
    try:
        write_records(output, clip_id, camera, records)
    except OSError as exc:  # the output's fault (full disk, read-only), not the input file's
        raise RecordsError(f"output {records_path(output, clip_id, camera)} not written: "
                           f"{exc.strerror or exc}") from exc
    return result


def map_record_files(fn: Callable, args: tuple, input: Path, output: Path, workers: int, desc: str) -> list[Any]:
    """For every records file under ``input`` (one per clip and camera), ``fn(*args, records)``
    returns (records to write, result); the records go to the same clip and camera under
    ``output``, the results come back in file order, whatever ``workers`` (processes; 1: this
    one). ``fn`` must be a module-level function. A file that fails fails the stage
    (RecordsError naming each file and why): records are this project's own output."""
    from ..executors import run_items

    files = record_files(input)
    outcome = run_items(_map_file, [(fn, args, path, output, clip_id, camera) for clip_id, camera, path in files],
                        workers, desc, labels=[str(path) for _, _, path in files])
    if outcome.failures:
        raise RecordsError("; ".join(failure.describe() for failure in outcome.failures))
    return outcome.results
