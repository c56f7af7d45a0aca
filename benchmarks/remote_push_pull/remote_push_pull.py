"""DVC push and pull times to an S3-compatible server for the same JPEGs as files and as shards.

    python benchmarks/remote_push_pull/remote_push_pull.py [--frames 20000,80000] [--frames-per-shard 20,1000]
        [--width 640 --height 360] [--work data/benchmark/remote] [--repeats 1]

Frames: every frame of a small synthetic root (rendered once, cached under --work), decoded and
re-encoded with a variant number stamped in the corner until there are --frames distinct JPEGs
(quality 95, as extract writes them). Layouts, each a fresh DVC repository holding `images/`:
  - files: one JPEG per frame, 20 per folder (the old extract layout);
  - shards of N frames: uncompressed tars written by av_grounding.shards (extract writes one per
    clip and camera: 20 frames for the recipe's 20 s clips at one frame per second).
For each layout and repeat: a fresh moto_server, `dvc push`, then the cache, DVC's temporary
state and images/ deleted and `dvc pull`, then every file checked against its digest. Times are
whole commands (DVC's start, about 1 s, included), with DVC's default jobs (4 per core).
moto on loopback has none of S3's per-request latency, so the gap to real S3 is larger still.
Writes benchmarks/remote_push_pull/results/remote_push_pull.{json,md} with the machine it ran on.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import cv2
import dvc
import moto
import numpy as np
import s3fs

from av_grounding.local_s3 import moto_server
from av_grounding.params import SynthesizeParams
from av_grounding.pipeline.synthesize import synthesize
from av_grounding.shards import write_shard
from av_grounding.storage import folder_digest
from av_grounding.synth.stamp import stamp_index
from av_grounding.video import index_video, read_frames

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: common.py
from common import command_line, markdown_table, video_machine, write_json

RESULTS = Path(__file__).resolve().parent / "results"
FILES_PER_FOLDER = 20
JPEG_QUALITY = 95
BUCKET = "benchmark"


def source_videos(work: Path, width: int, height: int) -> list[Path]:
    root = work / f"synthetic_{width}x{height}"
    if not (root / "all_object_info").exists():
        synthesize(SynthesizeParams(num_clips=2, duration_s=3.0, width=width, height=height, workers=2), root)
    return sorted(root.glob("pinhole_*/*.mp4"))


def distinct_frames(videos: list[Path]) -> Iterator[np.ndarray]:
    """The videos' frames, cycled forever, each cycle stamped with its own number in the corner."""
    for cycle in itertools.count():
        for video in videos:
            frames, _, _ = read_frames(video, list(range(index_video(video).frame_count)), "decode_all")
            for frame in frames:
                stamp_index(frame.bgr, cycle)
                yield frame.bgr


def write_frames(videos: list[Path], count: int, images: Path) -> None:
    """``count`` JPEGs as images/<folder>/<frame>.jpg, 20 per folder; no two may be equal, since
    DVC stores equal files once."""
    digests = set()
    for number, bgr in zip(range(count), distinct_frames(videos)):
        ok, jpeg = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
        if not ok:
            raise RuntimeError(f"JPEG encoding failed for frame {number}")
        data = jpeg.tobytes()
        digests.add(hashlib.sha256(data).hexdigest())
        path = images / f"{number // FILES_PER_FOLDER:06d}" / f"{number:06d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    if len(digests) != count:
        raise RuntimeError(f"only {len(digests)} of {count} frames are distinct")


def write_shards(files: Path, images: Path, frames_per_shard: int) -> None:
    paths = sorted(files.rglob("*.jpg"))
    for start in range(0, len(paths), frames_per_shard):
        with write_shard(images / f"{start // frames_per_shard:06d}.tar") as shard:
            for path in paths[start:start + frames_per_shard]:
                shard.add(path.name, path.read_bytes())


def dvc_command(repo: Path, env: dict[str, str], *args: str) -> float:
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=repo, env=env, check=False, capture_output=True,
                            text=True)
    if result.returncode != 0:
        raise RuntimeError(f"dvc {' '.join(args)} failed in {repo}:\n{result.stdout}\n{result.stderr}")
    return time.perf_counter() - start


def measure(repo: Path, repeats: int) -> dict:
    """Push and pull ``repo/images`` (already there) through fresh moto servers."""
    env = {**os.environ, "DVC_NO_ANALYTICS": "1", "DVC_SITE_CACHE_DIR": str(repo / ".site-cache"),
           "AWS_ACCESS_KEY_ID": "benchmark", "AWS_SECRET_ACCESS_KEY": "benchmark", "AWS_DEFAULT_REGION": "us-east-1"}
    images = repo / "images"
    files = sum(1 for p in images.rglob("*") if p.is_file())
    size = sum(p.stat().st_size for p in images.rglob("*") if p.is_file())
    expected = folder_digest(images)  # every file's path and bytes
    dvc_command(repo, env, "init", "--no-scm", "-q")
    add_s = dvc_command(repo, env, "add", "-q", "images")
    push_times, pull_times = [], []
    for _ in range(repeats):
        with moto_server() as endpoint:
            bucket_fs = s3fs.S3FileSystem(endpoint_url=endpoint, key="benchmark", secret="benchmark",
                                          skip_instance_cache=True)
            bucket_fs.mkdir(BUCKET)
            dvc_command(repo, env, "remote", "add", "--force", "--default", "bench", f"s3://{BUCKET}/dvc")
            dvc_command(repo, env, "remote", "modify", "bench", "endpointurl", endpoint)
            push_times.append(dvc_command(repo, env, "push", "-q"))
            for state in (repo / ".dvc" / "cache", repo / ".dvc" / "tmp", repo / ".site-cache", images):
                shutil.rmtree(state, ignore_errors=True)
            pull_times.append(dvc_command(repo, env, "pull", "-q"))
        if folder_digest(images) != expected:
            raise RuntimeError(f"{images}: pulled files differ from the pushed ones")
    push_s, pull_s = min(push_times), min(pull_times)
    mib = size / 2**20
    return {"files": files, "mib": round(mib, 1), "add_s": round(add_s, 2),
            "push_s": round(push_s, 2), "pull_s": round(pull_s, 2),
            "push_mib_per_s": round(mib / push_s, 1), "pull_mib_per_s": round(mib / pull_s, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", default="data/benchmark/remote")
    parser.add_argument("--frames", default="20000", help="comma-separated frame counts")
    parser.add_argument("--frames-per-shard", default="20,1000", help="comma-separated shard sizes")
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=360)
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    work = Path(args.work)
    videos = source_videos(work, args.width, args.height)
    rows = []
    for count in (int(c) for c in args.frames.split(",")):
        runs = work / f"frames_{count}"
        shutil.rmtree(runs, ignore_errors=True)
        write_frames(videos, count, runs / "files" / "images")
        layouts = {"files": runs / "files"}
        for per_shard in (int(n) for n in args.frames_per_shard.split(",")):
            layouts[f"shards of {per_shard}"] = runs / f"shards_{per_shard}"
            write_shards(runs / "files" / "images", layouts[f"shards of {per_shard}"] / "images", per_shard)
        for layout, repo in layouts.items():
            rows.append({"frames": count, "layout": layout, **measure(repo, args.repeats)})
            print(rows[-1], file=sys.stderr)
        shutil.rmtree(runs)
    for row in rows:
        files_row = next(r for r in rows if r["frames"] == row["frames"] and r["layout"] == "files")
        row["push_speedup"] = round(files_row["push_s"] / row["push_s"], 1)
        row["pull_speedup"] = round(files_row["pull_s"] / row["pull_s"], 1)
    report = {"command": command_line(__file__),
              "machine": {**video_machine(), "dvc": dvc.__version__, "moto": moto.__version__},
              "image_size": f"{args.width}x{args.height}", "jpeg_quality": JPEG_QUALITY, "repeats": args.repeats,
              "results": rows}
    write_json(RESULTS / "remote_push_pull.json", report)
    m = report["machine"]
    lines = ["# DVC push / pull to an S3-compatible server: files against shards\n",
             f"Command: `{report['command']}`  ",
             (f"Machine: {m['cpu']}, {m['cores']} cores, Python {m['python']}, DVC {m['dvc']}, moto_server {m['moto']} "
              "on loopback (no S3 request latency: real S3 widens the gap)\n"),
             (f"Images: distinct {report['image_size']} synthetic frames, JPEG quality {JPEG_QUALITY}. Times are whole "
              f"`dvc push` / `dvc pull` commands (best of {args.repeats}), DVC's default jobs; pull starts from an "
              "empty cache and workspace and is checked file by file.\n"),
             *markdown_table(["frames", "layout", "files", "MiB", "push s", "pull s", "push MiB/s", "pull MiB/s",
                              "push speed-up", "pull speed-up"],
                             [[r["frames"], r["layout"], r["files"], r["mib"], r["push_s"], r["pull_s"],
                               r["push_mib_per_s"], r["pull_mib_per_s"], f"{r['push_speedup']}x",
                               f"{r['pull_speedup']}x"]
                              for r in rows])]
    (RESULTS / "remote_push_pull.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
