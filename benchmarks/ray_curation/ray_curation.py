"""The extract stage's curation rate per core: local process pool against a local Ray instance.

    python benchmarks/ray_curation/ray_curation.py [--work data/benchmark/ray] [--clips 2] [--copies 16]
                                                   [--duration-s 10] [--cores 1,2]

Renders (once, cached under --work) ``--clips`` 1920x1080 clips of two cameras with a keyframe
every 30 frames, then lays out ``--copies`` copies of each under new clip ids (same videos and
labels), so that there are enough (clip, camera) items to keep every core busy without
rendering them all. For each core count it runs the whole extract stage (``skip_frames: 30``,
the recipe's 1 frame per second) with ``executor: local`` (``workers`` = cores) and with
``executor: ray`` on a fresh local Ray instance of that many CPUs, and checks that every run
wrote the same bytes. Writes benchmarks/ray_curation/results/ray_curation.{json,md} with the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import uuid
from pathlib import Path

import fsspec
import numpy as np

from av_grounding import rdshq
from av_grounding.params import ExtractParams, SynthesizeParams
from av_grounding.pipeline.extract import extract
from av_grounding.pipeline.synthesize import synthesize
from av_grounding.storage import folder_digest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: common.py
from common import command_line, markdown_table, video_machine, write_json

CAMERAS = ("camera_front_wide_120fov", "camera_cross_left_120fov")
ATTRIBUTES = ("pose", "vehicle_pose", "pinhole_intrinsic", "all_object_info", rdshq.RENDER_TRUTH)
RESULTS = Path(__file__).resolve().parent / "results"


def copy_clip(source: Path, clip_id: str, target: Path, new_id: str) -> None:
    """Lay out clip ``clip_id`` of ``source`` again under ``target`` as ``new_id`` (videos hard-linked)."""
    fs = fsspec.filesystem("file")
    for attribute in ATTRIBUTES:
        members = rdshq.read_tar(fs, str(source), attribute, clip_id)
        rdshq.write_tar(target, attribute, new_id, members)
    for camera in CAMERAS:
        video = Path(rdshq.video_path(str(target), "pinhole", camera, new_id))
        video.parent.mkdir(parents=True, exist_ok=True)
        os.link(rdshq.video_path(str(source), "pinhole", camera, clip_id), video)


def prepare(work: Path, clips: int, copies: int, duration_s: float) -> Path:
    source, root = work / "source", work / f"root_{clips}x{copies}"
    if not (source / "all_object_info").exists():
        synthesize(SynthesizeParams(num_clips=clips, cameras=CAMERAS, duration_s=duration_s, width=1920,
                                    height=1080, keyframe_interval=30, workers=2), source)
    if not (root / "all_object_info").exists():
        rng = np.random.default_rng(0)
        for clip_id in rdshq.list_clip_ids(fsspec.filesystem("file"), str(source)):
            parsed = rdshq.ClipId.parse(clip_id)
            for _ in range(copies):
                session = uuid.UUID(bytes=rng.bytes(16), version=4)
                copy_clip(source, clip_id, root, str(rdshq.ClipId(str(session), parsed.start_us, parsed.end_us)))
    return root


def run(root: Path, work: Path, executor: str, cores: int) -> tuple[dict, str]:
    """One extract run; its rate and the digest of what it wrote (every file's path and bytes)."""
    import ray

    out = work / "out"
    shutil.rmtree(out, ignore_errors=True)
    params = ExtractParams(input_root=str(root), cameras=CAMERAS, skip_frames=30, workers=cores, executor=executor)
    if executor == "ray":
        ray.init(num_cpus=cores, include_dashboard=False, logging_level="WARNING")
    try:
        load = os.getloadavg()[0]
        summary = extract(params, out, rate=work / "rate.json")
    finally:
        if executor == "ray":
            ray.shutdown()
    assert summary["items_failed"] == 0, summary["failures"]
    rate = {**json.loads((work / "rate.json").read_text()), "load_before": round(load, 2)}
    return rate, folder_digest(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", default="data/benchmark/ray")
    parser.add_argument("--clips", type=int, default=2)
    parser.add_argument("--copies", type=int, default=16)
    parser.add_argument("--duration-s", type=float, default=10.0)
    parser.add_argument("--cores", default="1,2")
    args = parser.parse_args()
    work = Path(args.work)
    root = prepare(work, args.clips, args.copies, args.duration_s)
    rows, digests = [], set()
    for cores in (int(c) for c in args.cores.split(",")):
        for executor in ("local", "ray"):
            rate, digest = run(root, work, executor, cores)
            digests.add(digest)
            rows.append(rate)
            print(rate, file=sys.stderr)
    assert len(digests) == 1, "runs with different executors or core counts wrote different bytes"
    command = command_line(__file__)
    report = {"command": command, "machine": video_machine(), "items": rows[0]["items_run"],
              "video": f"1920x1080, {args.duration_s:g} s at 30 fps, keyframe every 30 frames", "results": rows}
    write_json(RESULTS / "ray_curation.json", report)
    lines = ["# Curation rate per core: local process pool and Ray\n", f"Command: `{command}`  ",
             (f"Machine: {report['machine']['cpu']}, {report['machine']['cores']} cores, Python "
              f"{report['machine']['python']}, PyAV {report['machine']['pyav']}\n"),
             (f"Input: {report['items']} (clip, camera) items, each a {report['video']} video; "
              "extract with skip_frames 30 (frames 0, 30, 60, ...: keyframes only). Every run wrote the same bytes.\n"),
             ("`load before`: the machine's 1-minute load average as the run started (other users' "
              "processes share the cores: above 0 the rates are low by that share).\n"),
             ("`per core-second`: frames / (wall s x cores); `per CPU-second`: frames / CPU seconds the "
              "items' processes used (all their threads), which other users' load lowers much less.\n"),
             *markdown_table(["executor", "cores", "frames written", "wall s", "frames/s", "per core-second", "CPU s",
                              "per CPU-second", "load before"],
                             [[r[key] for key in ("executor", "cores", "frames_written", "wall_s", "frames_per_s",
                                                  "frames_per_core_s", "cpu_s", "frames_per_cpu_s", "load_before")]
                              for r in rows])]
    (RESULTS / "ray_curation.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
