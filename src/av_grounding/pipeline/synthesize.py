"""The `synthesize` stage: ``num_clips`` synthetic clips in the RDS-HQ layout (see
``synth.clips``, which writes one clip), written in parallel and published whole."""

from __future__ import annotations

from pathlib import Path

from ..executors import run_items
from ..params import ParamsError, SynthesizeParams
from ..storage import atomic_folder
from ..synth.clips import mount_of, write_clip
from .outputs import write_report


def synthesize(params: SynthesizeParams, output: Path, metrics: Path | None = None) -> dict:
    """The `synthesize` stage: ``params.num_clips`` clips in the RDS-HQ layout, rendered in
    parallel over clips (``params.workers`` processes, or Ray).

    Args:
        params: the ``synthesize`` section (layout, cameras, lens model, duration, image size,
            scene, video encoding).
        output: the RDS-HQ root written: per camera ``<model>_<camera>/<clip_id>.mp4`` (H.264),
            the ``pose``, ``vehicle_pose``, intrinsics and ``all_object_info`` tars and
            ``render_truth``. Replaced only once every clip is written: a killed run leaves the
            previous folder whole.
        metrics: where the summary is written as JSON, when given.

    Returns:
        The summary: ``clips``, ``cameras`` (per clip), ``video_frames`` (over all clips and
        cameras) and ``tracks`` (objects over all clips).

    Raises:
        ParamsError: a camera the layout's rig lacks, or a lens model it cannot use; before any work.
        RuntimeError: a clip failed to render (a bug: the generator makes its own inputs).
    """
    for camera_name in params.cameras:  # unknown camera or model: fail before any work
        mount = mount_of(params, camera_name)
        try:
            mount.intrinsics(params.camera_model)
        except ValueError as exc:
            raise ParamsError(f"synthesize.camera_model {params.camera_model!r}, camera {camera_name!r}: "
                              f"{exc}") from None
    with atomic_folder(output) as folder:  # a killed run leaves the previous output whole
        outcome = run_items(write_clip, [(params, i, folder) for i in range(params.num_clips)],
                            params.workers, "synthesize clips", executor=params.executor,
                            address=params.ray_address)
        if outcome.failures:  # the generator's own inputs: a failure is a bug, not bad data
            raise RuntimeError("synthesize failed for: " + "; ".join(f.describe() for f in outcome.failures))
    summaries = outcome.results
    summary = {"clips": len(summaries), "cameras": len(params.cameras),
               "video_frames": sum(s["frames"] for s in summaries) * len(params.cameras),
               "tracks": sum(s["tracks"] for s in summaries)}
    write_report(metrics, summary)
    return summary
