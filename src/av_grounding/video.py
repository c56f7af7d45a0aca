"""H.264 video through PyAV: encoding for the synthetic clips and exact frame sampling for extract.

A frame's index comes from its presentation timestamp, ``round((pts - start) * time_base * fps)``,
never from a decode counter, where ``fps`` is the stream's nominal rate (FFmpeg's
``r_frame_rate``: the rate every timestamp is a multiple of), not its average rate (frames over
duration, which dropped frames lower). Only frames a player shows count: packets an mp4 edit list
hides (flagged discard by the demuxer, or timed before the stream's start) are decoded where later
frames need them but get no index. Where timestamps skip an index (dropped frames), that index is
missing: it is reported, never filled with a neighbour.

Three sampling strategies return the same frames at different cost:

- ``decode_all``: decode from the start and keep the targets;
- ``seek``: jump to the keyframe at or before a target when that skips decoding work;
- ``keyframes``: decode keyframes only (the decoder skips the rest), valid only when every
  target is a keyframe.

``auto`` demuxes the packets once (cheap: no decoding) to learn where keyframes are, then picks
the strategy that decodes the fewest frames.
"""

from __future__ import annotations

import collections
import functools
import io
from collections.abc import Iterable
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from .errors import PipelineError
from .storage import temporary_sibling

STRATEGIES = ("auto", "decode_all", "seek", "keyframes")
# A seek flushes the decoder and re-reads from a keyframe; count it as this many decoded frames
# (at 1080p a seek that saved only 1-2 frames was slower than decoding on: benchmarks/extract_throughput/results).
SEEK_COST_FRAMES = 5
MP4_DEMUXERS = {"mov", "mp4"}  # FFmpeg's mov/mp4 demuxer: the videos are <clip_id>.mp4


# x264 CPU flags and the /proc/cpuinfo names that grant them, AVX-512 deliberately left out.
_X264_CPU_FLAGS = (("MMX2", "mmxext"), ("SSE2", "sse2"), ("SSE2Fast", "sse2"), ("SSE3", "pni"),
                   ("SSSE3", "ssse3"), ("SSE4.1", "sse4_1"), ("SSE4.2", "sse4_2"), ("LZCNT", "abm"),
                   ("AVX", "avx"), ("FMA3", "fma"), ("BMI1", "bmi1"), ("BMI2", "bmi2"), ("AVX2", "avx2"))


@functools.cache
def x264_cpu_flags() -> str | None:
    """x264's SIMD flags without AVX-512, or None where the CPU's flags cannot be read.

    With its AVX-512 kernels, x264 gave different bytes for the same frames from run to run on
    this project's machines (measured: 12 of 12 runs differed with aq-mode=0); without them it is
    deterministic and matches its plain C output.
    """
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    line = next((ln for ln in text.splitlines() if ln.startswith("flags")), None)
    if line is None or "avx512f" not in line.split():
        return None
    present = set(line.split(":", 1)[1].split())
    return ",".join(name for name, cpu in _X264_CPU_FLAGS if cpu in present or (name == "MMX2" and "sse" in present))


class VideoError(PipelineError, RuntimeError):
    """A video cannot be decoded or lacks a requested frame; the message names the file."""


def encode_video(path: str | Path, frames: Iterable[np.ndarray], fps: int, crf: int = 23,
                 preset: str = "veryfast", keyframe_interval: int | None = None) -> None:
    """Write RGB uint8 frames as H.264 (yuv420p) mp4, atomically.

    ``keyframe_interval`` forces a keyframe every N frames exactly (no scene-cut keyframes);
    ``None`` leaves the choice to x264.
    """
    path = Path(path)
    tmp = temporary_sibling(path)
    try:
        with av.open(str(tmp), mode="w", format="mp4") as container:
            stream = container.add_stream("libx264", rate=fps)
            stream.pix_fmt = "yuv420p"
            # x264's bytes depend on its thread count, which defaults to the machine's core count
            # (measured: 1 and 2 cores gave different files); one thread everywhere, since
            # synthesize runs clips in parallel instead.
            stream.codec_context.thread_count = 1
            options: dict[str, object] = {"crf": str(crf), "preset": preset}
            if x264_cpu_flags():
                options["x264-params"] = f"asm={x264_cpu_flags()}"
            if keyframe_interval:
                options.update(g=str(keyframe_interval), keyint_min=str(keyframe_interval),
                               sc_threshold="0")
            stream.options = options
            time_base = Fraction(1, fps)
            for index, rgb in enumerate(frames):
                if index == 0:
                    stream.height, stream.width = rgb.shape[:2]
                frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
                frame.pts, frame.time_base = index, time_base
                container.mux(stream.encode(frame))
            container.mux(stream.encode(None))
        tmp.chmod(0o644)
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


Source = str | Path | bytes


def _open(source: Source, name: str) -> av.container.InputContainer:
    try:
        return av.open(io.BytesIO(source) if isinstance(source, bytes) else str(source), mode="r")
    except (av.FFmpegError, OSError) as exc:
        raise VideoError(f"{name}: cannot open video: {exc}") from exc


@dataclass(frozen=True)
class VideoIndex:
    """What demuxing alone tells about a video stream: its nominal rate, the indices of the
    frames a player shows (ascending; gaps where frames were dropped) and which are keyframes."""

    fps: Fraction  # nominal frame rate
    time_base: Fraction
    start_pts: int  # presentation timestamp of frame 0
    frames: tuple[int, ...]  # indices of the shown frames, ascending
    keyframes: tuple[int, ...]  # indices of the shown keyframes, ascending

    @property
    def frame_count(self) -> int:
        """Frames a player shows."""
        return len(self.frames)

    @property
    def span(self) -> int:
        """One past the last shown index: frames the video would have without gaps."""
        return self.frames[-1] + 1 if self.frames else 0

    def missing(self, targets: Iterable[int]) -> list[int]:
        """The ``targets`` no shown frame has (inside the span: dropped; beyond it: past the end)."""
        shown = set(self.frames)
        return [t for t in targets if t not in shown]

    def index_of(self, pts: int) -> int:
        return round(self.time_of(pts) * self.fps)

    def time_of(self, pts: int) -> Fraction:
        """Seconds since frame 0, exactly."""
        return (pts - self.start_pts) * self.time_base

    def pts_of(self, index: int) -> int:
        return self.start_pts + round(Fraction(index) / (self.fps * self.time_base))


def nominal_rate(stream: av.video.stream.VideoStream) -> Fraction | None:
    """The stream's declared frame rate: FFmpeg's ``r_frame_rate`` (the base rate its timestamps
    are multiples of), else FFmpeg's guess; never ``average_rate``, which dropped frames lower."""
    rate = stream.base_rate or stream.guessed_rate
    return Fraction(rate) if rate else None


def index_video(source: Source, name: str = "video") -> VideoIndex:
    """Demux every packet of the first video stream (no decoding) to find the shown frames and
    keyframes. Raises ``VideoError`` naming ``name`` for a file that is not an mp4 (an image
    renamed), an unreadable, empty or rateless stream, or frames that share a timestamp."""
    with _open(source, name) as container:
        if not MP4_DEMUXERS & set(container.format.name.split(",")):  # a JPEG or another file named .mp4
            raise VideoError(f"{name}: not an mp4 video (FFmpeg reads it as {container.format.long_name})")
        if not container.streams.video:
            raise VideoError(f"{name}: no video stream")
        stream = container.streams.video[0]
        fps = nominal_rate(stream)
        if not fps:
            raise VideoError(f"{name}: frame rate unknown")
        shown: list[tuple[int, bool]] = []
        demuxed = 0  # packets with data, shown or not (an edit list hides lead-in ones)
        try:
            for packet in container.demux(stream):
                demuxed += packet.size > 0
                if packet.pts is not None and not packet.is_discard:
                    shown.append((packet.pts, packet.is_keyframe))
        except av.FFmpegError as exc:
            raise VideoError(f"{name}: corrupt stream while demuxing: {exc}") from exc
        if not shown:
            raise VideoError(f"{name}: no frames")
        if stream.frames and demuxed < stream.frames:  # the index (moov) lists more than the file holds
            raise VideoError(f"{name}: truncated: its index lists {stream.frames} frames but the file holds "
                             f"only {demuxed}")
        start = stream.start_time if stream.start_time is not None else min(p for p, _ in shown)
        if stream.time_base is None:
            raise VideoError(f"{name}: the video stream has no time base")
        index = VideoIndex(fps, Fraction(stream.time_base), start, (), ())
        indexed = [(index.index_of(pts), key) for pts, key in shown if pts >= start]
        check_distinct_times(indexed, name)
        frames = tuple(sorted({i for i, _ in indexed}))
        keyframes = tuple(sorted({i for i, key in indexed if key}))
        return VideoIndex(fps, index.time_base, start, frames, keyframes)


def check_distinct_times(indexed: list[tuple[int, bool]], name: str) -> None:
    """``VideoError`` when shown frames share a frame time (timestamps repeated, e.g. every
    frame at pts 0): frames are placed by their timestamps, so those cannot be."""
    counts = collections.Counter(i for i, _ in indexed)
    shared = sorted(i for i, n in counts.items() if n > 1)
    if shared:
        raise VideoError(f"{name}: {len(indexed)} shown frames but only {len(counts)} distinct timestamps "
                         f"({counts[shared[0]]} frames carry the timestamp of frame {shared[0]}); frames are placed "
                         "by their timestamps, so this video's cannot be")


def sample_indices(span: int, skip_frames: int) -> list[int]:
    """Every ``skip_frames``-th frame index from 0 below ``span``."""
    if skip_frames < 1:
        raise ValueError(f"skip_frames must be >= 1, got {skip_frames}")
    return list(range(0, span, skip_frames))


def decode_cost(index: VideoIndex, targets: list[int], strategy: str) -> float:
    """Frames the decoder must produce to deliver ``targets``; ``inf`` where the strategy is wrong."""
    if not targets:
        return 0.0
    if strategy == "decode_all":
        return float(max(targets) + 1)
    if strategy == "keyframes":
        keys = set(index.keyframes)
        return float(sum(1 for k in index.keyframes if k <= max(targets))) \
            if all(t in keys for t in targets) else float("inf")
    if strategy == "seek":
        cost, position = 0.0, 0
        for target in sorted(targets):
            keyframe = max((k for k in index.keyframes if k <= target), default=0)
            if keyframe > position + SEEK_COST_FRAMES:
                cost += SEEK_COST_FRAMES + target - keyframe + 1
            else:
                cost += target - position + 1
            position = target + 1
        return cost
    raise ValueError(f"unknown strategy {strategy!r}; choose from {STRATEGIES}")


def choose_strategy(index: VideoIndex, targets: list[int]) -> str:
    """The concrete strategy with the lowest decode cost (ties go to the simpler one)."""
    return min(("decode_all", "seek", "keyframes"), key=lambda s: decode_cost(index, targets, s))


@dataclass(frozen=True)
class DecodedFrame:
    """A shown frame: its index, its presentation time since frame 0 (exact) and its pixels."""

    index: int
    time: Fraction
    bgr: np.ndarray

    @property
    def time_s(self) -> float:
        return float(self.time)


def read_frames(source: Source, targets: list[int], strategy: str = "auto", name: str = "video",
                index: VideoIndex | None = None) -> tuple[list[DecodedFrame], str, int]:
    """Decode exactly the frames ``targets``; returns them in order, the strategy used and the
    number of frames the decoder produced. Raises ``VideoError`` naming ``name`` if a target is
    not a shown frame of the video (see ``VideoIndex.missing``)."""
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; choose from {STRATEGIES}")
    index = index or index_video(source, name)
    wanted = sorted(set(targets))
    absent = index.missing(wanted)
    if absent:
        raise VideoError(f"{name}: frames {absent} requested but the video shows {index.frame_count} frames "
                         f"with indices 0..{index.span - 1}{' (with gaps)' if index.frame_count < index.span else ''}")
    if strategy == "auto":
        strategy = choose_strategy(index, wanted)
    elif decode_cost(index, wanted, strategy) == float("inf"):
        raise VideoError(f"{name}: strategy {strategy!r} cannot deliver frames {wanted} "
                         f"(keyframes at {list(index.keyframes)[:10]}...)")
    found: dict[int, DecodedFrame] = {}
    with _open(source, name) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        if strategy == "keyframes":
            stream.codec_context.skip_frame = "NONKEY"
        try:
            decoded = _decode(container, stream, index, wanted, found, seek=strategy == "seek")
        except av.FFmpegError as exc:
            raise VideoError(f"{name}: corrupt stream while decoding: {exc}") from exc
    missing = [t for t in wanted if t not in found]
    if missing:
        raise VideoError(f"{name}: frames {missing} not found by strategy {strategy!r}")
    return [found[t] for t in wanted], strategy, decoded


def _decode(container, stream, index: VideoIndex, wanted: list[int],
            found: dict[int, DecodedFrame], seek: bool) -> int:
    """Walk the decoder forward through the targets, jumping to keyframes where ``seek`` pays."""
    wanted_set, decoded, position = set(wanted), 0, 0
    frames = container.decode(stream)
    for target in wanted:
        if target in found:
            continue
        if seek:
            keyframe = max((k for k in index.keyframes if k <= target), default=0)
            if keyframe > position + SEEK_COST_FRAMES:
                container.seek(index.pts_of(keyframe), stream=stream, backward=True, any_frame=False)
                frames = container.decode(stream)
        for frame in frames:
            decoded += 1
            if frame.pts is None:
                raise VideoError("decoded frame without a presentation timestamp")
            idx = index.index_of(frame.pts)
            if idx in wanted_set and idx not in found:
                found[idx] = DecodedFrame(idx, index.time_of(frame.pts), frame.to_ndarray(format="bgr24"))
            if idx >= target:
                break
        position = target + 1
    return decoded
