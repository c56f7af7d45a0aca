"""Extract throughput at 1080p against a bare PyAV decode of every frame of the same videos.

    python benchmarks/extract_throughput/extract_throughput.py [--work data/benchmark] [--duration-s 20] [--repeats 3]

Renders (once, cached under --work) two 1920x1080 clips of one camera: one with a keyframe every
30 frames, one with x264's own keyframe choice. For each video it times:
  - bare PyAV: decode every frame (and, separately, decode + convert to BGR arrays);
  - the extract stage's item (read labels, pick frames, write JPEGs and records) with each
    strategy that can deliver the frames, for several skip_frames values.
Writes benchmarks/extract_throughput/results/extract_throughput.{json,md} with the machine it ran on.
"""

from __future__ import annotations

import argparse
import functools
import shutil
import sys
from pathlib import Path

import av

from av_grounding.params import ExtractParams, SynthesizeParams
from av_grounding.pipeline.extract import extract_item
from av_grounding.pipeline.synthesize import synthesize
from av_grounding.video import decode_cost, index_video, sample_indices

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: common.py
from common import command_line, markdown_table, timed, video_machine, write_json

CAMERA = "camera_front_wide_120fov"
RESULTS = Path(__file__).resolve().parent / "results"


def best_of(repeats: int, fn) -> float:
    return min(timed(fn)[1] for _ in range(repeats))


def bare_decode(path: Path, convert: bool) -> int:
    count = 0
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        for frame in container.decode(stream):
            if convert:
                frame.to_ndarray(format="bgr24")
            count += 1
    return count


def fresh_extract(params: ExtractParams, clip_id: str, out: Path):
    """``extract_item`` into an emptied ``out``; its result."""
    shutil.rmtree(out, ignore_errors=True)
    return extract_item(params, clip_id, CAMERA, out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", default="data/benchmark")
    parser.add_argument("--duration-s", type=float, default=20.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skips", default="1,7,30")
    args = parser.parse_args()
    work = Path(args.work)
    rows, videos = [], {}
    for label, interval in (("keyframes_every_30", 30), ("encoder_default_keyframes", None)):
        root = work / label
        params = SynthesizeParams(num_clips=1, cameras=(CAMERA,), duration_s=args.duration_s, width=1920,
                                  height=1080, keyframe_interval=interval, workers=1)
        if not (root / "all_object_info").exists():
            synthesize(params, root)
        video = next((root / f"pinhole_{CAMERA}").glob("*.mp4"))
        clip_id = video.stem
        index = index_video(video)
        videos[label] = {"frames": index.frame_count, "keyframes": len(index.keyframes),
                         "megabytes": round(video.stat().st_size / 2**20, 2)}
        for convert in (False, True):
            seconds = best_of(args.repeats, functools.partial(bare_decode, video, convert))
            rows.append({"video": label, "method": "pyav_decode_all" + ("+bgr" if convert else ""),
                         "skip_frames": 1, "frames_out": index.frame_count, "seconds": round(seconds, 3),
                         "frames_out_per_s": round(index.frame_count / seconds, 1),
                         "video_frames_per_s": round(index.frame_count / seconds, 1)})
        for skip in (int(s) for s in args.skips.split(",")):
            targets = sample_indices(index.frame_count, skip)
            for strategy in ("decode_all", "seek", "keyframes", "auto"):
                if strategy != "auto" and decode_cost(index, targets, strategy) == float("inf"):
                    continue
                out = work / "out"
                extract_params = ExtractParams(input_root=str(root), cameras=(CAMERA,), skip_frames=skip,
                                               strategy=strategy, workers=1)

                run = functools.partial(fresh_extract, extract_params, clip_id, out)
                result = run()
                seconds = best_of(args.repeats, run)
                method = f"extract_{strategy}" + (f" ({result.strategy})" if strategy == "auto" else "")
                rows.append({"video": label, "method": method,
                             "skip_frames": skip, "frames_out": result.frames_written,
                             "decoded_frames": result.decoded_frames, "seconds": round(seconds, 3),
                             "frames_out_per_s": round(result.frames_written / seconds, 1),
                             "video_frames_per_s": round(index.frame_count / seconds, 1)})
                print(rows[-1], file=sys.stderr)
    report = {"command": command_line(__file__), "machine": video_machine(), "videos": videos, "results": rows}
    write_json(RESULTS / "extract_throughput.json", report)
    lines = ["# Extract throughput at 1080p\n", f"Command: `{report['command']}`  ",
             (f"Machine: {report['machine']['cpu']}, {report['machine']['cores']} cores, Python "
              f"{report['machine']['python']}, PyAV {report['machine']['pyav']}\n"),
             "Videos: " + "; ".join(f"{k}: {v['frames']} frames, {v['keyframes']} keyframes, {v['megabytes']} MiB"
                                   for k, v in videos.items()) + "\n",
             "Times are the best of the repeats. `video_frames_per_s` = frames of the whole video / time.\n",
             *markdown_table(["video", "method", "skip", "frames out", "decoded", "s", "frames out/s",
                              "video frames/s"],
                             [[r["video"], r["method"], r["skip_frames"], r["frames_out"],
                               r.get("decoded_frames", r["frames_out"]), r["seconds"], r["frames_out_per_s"],
                               r["video_frames_per_s"]] for r in rows])]
    (RESULTS / "extract_throughput.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
