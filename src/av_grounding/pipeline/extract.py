"""The `extract` stage (docs/formats.md#extract): every (clip, camera) item through
``curation.extract.extract_frames``, resumed by manifest, with failure and rate reports.

Work is split per (clip, camera). Output layout under the output folder:
  images/<clip_id>/<camera>.tar       the item's JPEGs, members <frame:06d>.jpg (see ``shards``:
                                      one file per item instead of one per frame keeps DVC
                                      push/pull fast)
  records/<clip_id>/<camera>.json     list of frame records (see ``curation.extract.frame_record``);
                                      each names its image by ``image_shard`` (path under the
                                      output folder) and ``image_member``
  manifests/<clip_id>/<camera>.json   written last: the sha256 of every input file the item read,
                                      the parameters that shape its output, the code
                                      that extracts (``sources.code_digest``), and its counts
  failures.json                       items and frames that failed, frames the videos lack,
                                      objects dropped (first few)

A rerun reuses an item only when its manifest matches this run's inputs and parameters, and
redoes it otherwise; items no longer selected are removed, so the output and the metrics always
describe exactly this run's items. Camera names in the outputs follow ``camera_names`` (names in
the clip's files -> output names), which must be plain file names, one per camera.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import fsspec

from .. import rdshq
from ..curation.extract import ItemResult, extract_frames, image_shard, output_camera
from ..curation.records import records_path
from ..errors import check_failed_fraction
from ..executors import Failure, Outcome, run_items
from ..params import ExtractParams, ParamsError
from ..sources import code_digest
from ..storage import StorageError, file_digest, filesystem, is_local, reading, remove_partials, write_json
from .outputs import RESULT, Manifest, write_report

MANIFEST_PARAMS = ("camera_model", "skip_frames", "jpeg_quality")  # what shapes an item's output


SHOWN_DROPPED = 20  # dropped objects named in failures.json (all are counted in the metrics)


def manifest_path(root: Path, clip_id: str, camera: str) -> Path:
    """``<root>/manifests/<clip_id>/<camera>.json``: the manifest of one item's output."""
    return Path(root) / "manifests" / clip_id / f"{camera}.json"


def item_inputs(fs: fsspec.AbstractFileSystem, root: str, params: ExtractParams, clip_id: str, camera: str,
                video: str, source: str | bytes) -> dict[str, str]:
    """Path under the input root -> sha256, of every file the item reads (video ``source``:
    its path, or its bytes when they were fetched already)."""
    attributes = ["pose", "vehicle_pose", f"{params.camera_model}_intrinsic", "all_object_info"]
    paths = [rdshq.tar_path(root, attribute, clip_id) for attribute in attributes]
    truth = rdshq.tar_path(root, rdshq.RENDER_TRUTH, clip_id)
    paths += [truth] if fs.exists(truth) else []
    digests = {path: file_digest(fs, path) for path in paths}
    digests[video] = file_digest(fs, video, source if isinstance(source, bytes) else None)
    return {path[len(root) + 1:]: digest for path, digest in sorted(digests.items())}


def reusable(output: Path, clip_id: str, camera: str, manifest: Manifest) -> ItemResult | None:
    """The stored result of an item whose manifest matches this run's and whose files exist."""
    complete = records_path(output, clip_id, camera).is_file() and (output / image_shard(clip_id, camera)).is_file()
    if not complete or not manifest.matches():
        return None
    stored = manifest.stored()
    try:
        return ItemResult.from_json(stored[RESULT]) if stored is not None else None
    except (KeyError, TypeError):
        return None  # a manifest of another version: redo the item


def extract_item(params: ExtractParams, clip_id: str, camera: str, output: Path) -> ItemResult:
    """Extract every ``skip_frames``-th frame of one clip's camera video (``camera`` as the clip's
    files name it), or reuse the item's earlier output when its manifest matches this run's inputs
    and parameters."""
    fs, root = filesystem(params.input_root, params.s3_endpoint_url, params.s3_profile)
    url = params.input_root.rstrip("/")
    video = rdshq.video_path(root, params.camera_model, camera, clip_id)
    name = rdshq.video_path(url, params.camera_model, camera, clip_id)
    if not fs.exists(video):
        raise rdshq.LayoutError(f"{name}: missing")
    source: str | bytes = video if is_local(fs) else fs.cat_file(video)
    expected = {"inputs": item_inputs(fs, root, params, clip_id, camera, video, source),
                "params": {key: getattr(params, key) for key in MANIFEST_PARAMS}, "code_sha256": code_digest(__name__)}
    named = output_camera(params, camera)
    manifest = Manifest(manifest_path(output, clip_id, named), expected)
    previous = reusable(output, clip_id, named, manifest)
    if previous is not None:
        return previous
    manifest.invalidate(records_path(output, clip_id, named))  # the old output no longer matches
    result = extract_frames(params, fs, root, url, clip_id, camera, source, name, output)
    manifest.finish(result.to_json())
    return result


def read_sequence_ids(path: str, params: ExtractParams) -> list[str]:
    """Clip ids of the ``sequence_ids_file`` (one per line, ``#`` comments); ``ParamsError``
    naming the key, the file and the line of a malformed id."""
    fs, file_path = filesystem(path, params.s3_endpoint_url, params.s3_profile)
    try:
        with reading(path):
            text = fs.cat_file(file_path).decode()
    except (OSError, UnicodeDecodeError) as exc:
        raise ParamsError(f"extract.sequence_ids_file {path}: unreadable: {exc}") from exc
    ids = []
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip() and not line.startswith("#"):
            try:
                ids.append(str(rdshq.ClipId.parse(line.strip())))
            except rdshq.LayoutError as exc:
                raise ParamsError(f"extract.sequence_ids_file {path}, line {number}: {exc}") from None
    return ids


def select_clips(fs: fsspec.AbstractFileSystem, root: str, params: ExtractParams) -> tuple[list[str], list[Failure]]:
    """The clips to extract, and a failure for each listed clip that cannot be (absent, or an
    id that is not ``<session>_<start_us>_<end_us>``). ``ParamsError`` when the sequence-ids
    file names no clip under the root."""
    url = params.input_root.rstrip("/")
    if is_local(fs) and Path(root).is_file():
        raise ParamsError(f"extract.input_root {url}: a file, not a folder (an RDS-HQ root holds all_object_info/, "
                          "pose/, ... and the video folders)")
    present = rdshq.list_clip_ids(fs, root, url)
    skipped = []
    if params.sequence_ids_file:
        listed = read_sequence_ids(params.sequence_ids_file, params)
        chosen = [clip_id for clip_id in listed if clip_id in present]
        if not chosen:
            raise ParamsError(f"extract.sequence_ids_file {params.sequence_ids_file}: none of its {len(listed)} "
                              f"clip id(s) is under {url} (it holds {len(present)} clips)")
        skipped = [Failure(clip_id, f"{rdshq.tar_path(url, 'all_object_info', clip_id)}: missing (listed in "
                                    f"{params.sequence_ids_file})") for clip_id in listed if clip_id not in present]
        return chosen, skipped
    chosen = []
    for clip_id in present:
        try:
            rdshq.ClipId.parse(clip_id)
            chosen.append(clip_id)
        except rdshq.LayoutError as exc:
            skipped.append(Failure(clip_id, f"{rdshq.tar_path(url, 'all_object_info', clip_id)}: {exc}"))
    return chosen, skipped


def name_problem(name: str) -> str | None:
    """Why a camera's output name cannot name its files (``records/<clip_id>/<name>.json``, ...):
    it must be a plain file name, not a path."""
    if not name:
        return "is empty"
    if "/" in name or "\\" in name or "\0" in name:
        return "is a path, not a plain file name"
    if name.startswith("."):
        return "starts with '.' (a hidden file, or a path like '..')"
    return None


def check_camera_names(params: ExtractParams) -> None:
    """``ParamsError`` naming the key when an output camera name is not a plain file name or two
    cameras would get one name (their files would overwrite each other)."""
    for camera, name in params.camera_names.items():
        if (problem := name_problem(name)) is not None:
            raise ParamsError(f"extract.camera_names: {camera}: {name!r} {problem}; camera names become file names")
    for camera in params.cameras:
        if camera not in params.camera_names and (problem := name_problem(camera)) is not None:
            raise ParamsError(f"extract.cameras: {camera!r} {problem}; camera names become file names")
    renamed = [*params.camera_names.values(), *(c for c in params.cameras if c not in params.camera_names)]
    for name in sorted({n for n in renamed if renamed.count(n) > 1}):
        sources = sorted({c for c in params.camera_names if params.camera_names[c] == name} |
                         ({name} & set(params.cameras) - set(params.camera_names)))
        raise ParamsError(f"extract.camera_names: {sources} would all be named {name!r}; their files would overwrite "
                          "each other")


def check_cameras(fs: fsspec.AbstractFileSystem, root: str, params: ExtractParams) -> None:
    """``ParamsError`` naming ``extract.cameras`` when it is empty, lists a camera twice or one
    without a video folder, or ``extract.camera_names`` when an output name is not a plain file
    name or two cameras would get one (``check_camera_names``)."""
    if not params.cameras:
        raise ParamsError("extract.cameras: empty; name at least one camera to extract")
    twice = sorted({camera for camera in params.cameras if params.cameras.count(camera) > 1})
    if twice:
        raise ParamsError(f"extract.cameras: {twice} listed more than once in {list(params.cameras)}")
    check_camera_names(params)
    url = params.input_root.rstrip("/")
    missing = [camera for camera in params.cameras if not fs.isdir(f"{root}/{params.camera_model}_{camera}")]
    if missing:
        prefix = f"{params.camera_model}_"
        found = sorted(Path(n).name[len(prefix):] for n in fs.ls(root, detail=False)
                       if Path(n).name.startswith(prefix) and Path(n).name != f"{prefix}intrinsic")
        if not found:
            raise ParamsError(f"extract.camera_model {params.camera_model}: no {prefix}<camera> video folders under "
                              f"{url}")
        raise ParamsError(f"extract.cameras: no video folder {url}/{prefix}<camera> for {missing}; "
                          f"cameras with {params.camera_model} videos there: {found}")


def check_writable(folder: Path) -> None:
    """``StorageError`` naming ``folder`` when it cannot be made or written (a read-only file
    system, a file in its path), before any item runs. The probe file is hidden and named as a
    partial one, so a killed run leaves nothing a rerun keeps."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        handle, probe = tempfile.mkstemp(prefix=".write-check.", suffix=".tmp", dir=folder)
        os.close(handle)
        os.unlink(probe)
    except OSError as exc:
        at = f": {exc.filename}" if exc.filename else ""
        raise StorageError(f"{folder}: cannot write the output here ({exc.strerror or exc}{at}); nothing extracted") \
            from exc


def remove_unselected(output: Path, kept: set[tuple[str, str]]) -> None:
    """Delete the records, shard and manifest of every item not in ``kept`` (earlier runs' items
    that this run did not select, or failed on), so the output holds this run's items only."""
    for folder, suffix in (("records", ".json"), ("images", ".tar"), ("manifests", ".json")):
        for path in sorted((output / folder).glob(f"*/*{suffix}")):
            if (path.parent.name, path.name[: -len(suffix)]) not in kept:
                path.unlink()
        for clip_folder in sorted((output / folder).glob("*")):
            if clip_folder.is_dir() and not any(clip_folder.iterdir()):
                clip_folder.rmdir()


def failure_report(skipped: list[Failure], failed: list[Failure], results: list[ItemResult]) -> dict[str, Any]:
    """What failures.json holds: failed items and frames, frames the videos lack, dropped objects
    (counted by reason, the first ``SHOWN_DROPPED`` named)."""
    dropped = sorted({entry for result in results for entry in result.dropped})  # each clip's labels once
    by_reason: dict[str, int] = {}
    for _, _, problem in dropped:
        reason = problem.split(" (")[0]
        by_reason[reason] = by_reason.get(reason, 0) + 1
    return {
        "items": [{"item": f.item, "error": f.error} for f in [*skipped, *failed]],
        "frames": [{"item": f"{r.clip_id}/{r.camera}", "frame": frame, "error": error}
                   for r in results for frame, error in r.frame_failures],
        "missing_frames": [{"item": f"{r.clip_id}/{r.camera}", "missing_frames": list(r.missing_frames),
                            "error": f"frames {list(r.missing_frames)} are not in the video (its timestamps skip "
                                     "them, or it ends before its labels do); not written"}
                           for r in results if r.missing_frames],
        "objects_dropped": dict(sorted(by_reason.items())),
        "objects_dropped_first": [{"where": where, "track_id": track, "problem": problem}
                                  for where, track, problem in dropped[:SHOWN_DROPPED]],
    }


def curation_rate(outcome: Outcome, executor: str) -> dict[str, Any]:
    """How fast this run curated: frames written per second of wall time, overall and per core
    (``cores``: pool processes or cluster CPUs; on a machine shared with other work this is
    low by their share), and per CPU-second the items used (not slowed by other work; above
    the per-core rate when cores idle). Resumed and failed items add no frames."""
    ran = [r for r in outcome.results if not r.resumed]
    frames = sum(r.frames_written for r in ran)
    core_seconds = outcome.wall_s * outcome.cores

    def per(seconds: float) -> float | None:
        return round(frames / seconds, 3) if seconds else None

    return {"executor": executor, "cores": outcome.cores,
            "items_run": len(ran), "items_resumed": len(outcome.results) - len(ran),
            "frames_written": frames, "wall_s": round(outcome.wall_s, 2), "cpu_s": round(outcome.cpu_s, 2),
            "frames_per_s": per(outcome.wall_s), "frames_per_core_s": per(core_seconds),
            "frames_per_cpu_s": per(outcome.cpu_s)}


def extract(params: ExtractParams, output: Path, metrics: Path | None = None,
            timing: Path | None = None) -> dict[str, Any]:
    """The `extract` stage over every (clip, camera) item: every ``skip_frames``-th frame of the
    item's video as JPEG, with a record per frame; an item whose manifest matches this run is
    reused. Parameter errors fail at once, before any item runs; item and frame failures are
    counted, and fail the stage when too many failed.

    Args:
        params: the ``extract`` section: input root (a folder or ``s3://`` URL in the RDS-HQ
            layout), clips, cameras and their output names, frame step, decode strategy,
            workers or Ray, ``max_failed_fraction``.
        output: the folder written: ``records/<clip_id>/<camera>.json`` (one record per frame:
            intrinsics, camera and ego pose, objects), ``images/<clip_id>/<camera>.tar`` (the
            JPEGs, one shard per item), ``manifests/`` (what each item was made from) and
            ``failures.json``; items of earlier runs that this run did not select are removed.
        metrics: the summary as JSON (counts of the whole output: the same on every run,
            resumed or not), when given.
        timing: the run's rates and the items it resumed (``curation_rate``), when given; kept
            apart so that a rerun leaves the stage's recorded outputs as they were.

    Returns:
        The summary (``clips``, ``items``, ``items_failed``, ``frames_written``,
        ``frames_failed``, ``frames_without_labels``, ``objects_dropped``, ``video_frames``,
        ``frames_missing``, ``decoded_frames``, ``strategy``: items per decode strategy), plus
        ``items_resumed`` and ``failures`` (``Failure`` objects), which the metrics leave out.

    Raises:
        ParamsError: bad cameras or camera names, an unreadable or unmatched
            ``sequence_ids_file``, an input root that is a file.
        StorageError: the input cannot be read (credentials, endpoint) or an output folder
            cannot be written.
        LayoutError: the input root is not in the RDS-HQ layout.
        StageFailed: more than ``max_failed_fraction`` of the items, or of the frames, failed
            (``failures.json`` and the metrics are written first).
    """
    fs, root = filesystem(params.input_root, params.s3_endpoint_url, params.s3_profile)
    with reading(params.input_root):
        clip_ids, skipped = select_clips(fs, root, params)
        check_cameras(fs, root, params)
    for folder in [output, *(Path(path).parent for path in (metrics, timing) if path)]:
        check_writable(folder)
    remove_partials(output)
    items = [(params, clip_id, camera, output) for clip_id in clip_ids for camera in params.cameras]
    labels = [f"{clip_id}/{camera}" for _, clip_id, camera, _ in items]
    outcome = run_items(extract_item, items, params.workers, "extract", labels, params.executor, params.ray_address)
    results: list[ItemResult] = outcome.results
    remove_unselected(output, {(r.clip_id, output_camera(params, r.camera)) for r in results})
    report = failure_report(skipped, outcome.failures, results)
    strategies: dict[str, int] = {}
    for result in results:
        strategies[result.strategy] = strategies.get(result.strategy, 0) + 1
    summary = {
        "clips": len(clip_ids),
        "items": len(items) + len(skipped),
        "items_failed": len(outcome.failures) + len(skipped),
        "frames_written": sum(r.frames_written for r in results),
        "frames_failed": len(report["frames"]),
        "frames_without_labels": sum(r.frames_without_labels for r in results),
        "objects_dropped": report["objects_dropped"],
        "video_frames": sum(r.video_frames for r in results),
        "frames_missing": sum(len(r.missing_frames) for r in results),
        "decoded_frames": sum(r.decoded_frames for r in results),
        "strategy": dict(sorted(strategies.items())),
    }
    write_json(output / "failures.json", report)
    write_report(metrics, summary)
    write_report(timing, curation_rate(outcome, params.executor))
    frame_failures = [Failure(f"{f['item']} frame {f['frame']}", f["error"]) for f in report["frames"]]
    lacking = [Failure(m["item"], m["error"]) for m in report["missing_frames"]]  # one line per item
    lost = [*(f.describe() for f in frame_failures),  # failed and missing frames count alike
            *(f"{m['item']} frame {frame}: not in the video" for m in report["missing_frames"]
              for frame in m["missing_frames"])]
    key = "extract.max_failed_fraction"
    check_failed_fraction([f.describe() for f in [*skipped, *outcome.failures]], summary["items"],
                          params.max_failed_fraction, key, output / "failures.json")
    check_failed_fraction(lost, summary["frames_written"] + len(lost), params.max_failed_fraction, key,
                          output / "failures.json")
    resumed = sum(r.resumed for r in results)  # what this run did, not what the output is: not a metric
    return {**summary, "items_resumed": resumed,
            "failures": [*skipped, *outcome.failures, *frame_failures, *lacking]}
