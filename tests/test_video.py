"""Exact frame sampling: the pixels of every returned frame carry the index that was asked for."""

from __future__ import annotations

import os
import subprocess
import sys
from fractions import Fraction

import av
import cv2
import numpy as np
import pytest

from av_grounding.synth.stamp import read_index, stamp_index
from av_grounding.video import (
    VideoError,
    choose_strategy,
    decode_cost,
    encode_video,
    index_video,
    read_frames,
    sample_indices,
)

FRAMES = 95  # not a multiple of the keyframe interval


def stamped_frames(count: int, width: int = 320, height: int = 180):
    rng = np.random.default_rng(1)
    texture = rng.integers(0, 255, size=(height, width, 3), dtype=np.uint8)
    for index in range(count):
        image = np.roll(texture, 3 * index, axis=1)  # motion, so P/B frames carry real content
        stamp_index(image, index)
        yield image


@pytest.fixture(scope="module", params=[30, None], ids=["keyframes_every_30", "encoder_default_keyframes"])
def video(request, tmp_path_factory):
    path = tmp_path_factory.mktemp("video") / "clip.mp4"
    encode_video(path, stamped_frames(FRAMES), fps=30, keyframe_interval=request.param)
    return path, request.param


def test_index_reads_frames_and_keyframes(video):
    path, interval = video
    index = index_video(path)
    assert index.frame_count == FRAMES
    assert index.fps == 30
    if interval:
        assert index.keyframes == tuple(range(0, FRAMES, interval))
    else:
        assert index.keyframes[0] == 0 and len(index.keyframes) < FRAMES // 30


@pytest.mark.parametrize("skip", [1, 7, 30])
@pytest.mark.parametrize("strategy", ["auto", "decode_all", "seek", "keyframes"])
def test_exact_frames(video, skip, strategy):
    path, _ = video
    targets = sample_indices(FRAMES, skip)
    index = index_video(path)
    if strategy != "auto" and decode_cost(index, targets, strategy) == float("inf"):
        with pytest.raises(VideoError, match="cannot deliver"):
            read_frames(path, targets, strategy, "clip.mp4")
        return
    frames, used, decoded = read_frames(path, targets, strategy, "clip.mp4")
    assert [f.index for f in frames] == targets
    assert [read_index(f.bgr) for f in frames] == targets  # the pixels, not only the count
    assert [round(f.time_s * 30) for f in frames] == targets
    assert decoded >= len(targets)
    if strategy == "auto":
        assert used == choose_strategy(index, targets)


def test_auto_prefers_keyframes_only_when_they_are_the_targets(video):
    path, interval = video
    index = index_video(path)
    if interval == 30:
        assert choose_strategy(index, sample_indices(FRAMES, 30)) == "keyframes"
    else:
        assert choose_strategy(index, sample_indices(FRAMES, 30)) != "keyframes"
    assert choose_strategy(index, sample_indices(FRAMES, 1)) == "decode_all"


def test_seek_decodes_less_than_decode_all_when_targets_are_sparse(tmp_path):
    path = tmp_path / "sparse.mp4"
    encode_video(path, stamped_frames(180), fps=30, keyframe_interval=30)
    targets = [35, 95, 155]
    _, _, decoded_seek = read_frames(path, targets, "seek")
    frames, _, decoded_all = read_frames(path, targets, "decode_all")
    assert [read_index(f.bgr) for f in frames] == targets
    assert decoded_seek < decoded_all


def test_corrupt_and_truncated_videos_name_the_file(tmp_path, video):
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(b"\x00" * 4096)
    with pytest.raises(VideoError, match=r"garbage\.mp4"):
        index_video(garbage, "garbage.mp4")
    path, _ = video
    data = path.read_bytes()
    with pytest.raises(VideoError, match=r"truncated\.mp4"):
        read_frames(data[: len(data) // 3], sample_indices(FRAMES, 30), "auto", "truncated.mp4")


def test_requesting_frames_beyond_the_end_fails(video):
    path, _ = video
    with pytest.raises(VideoError, match=r"frames \[200\] requested but the video shows 95 frames"):
        read_frames(path, [0, 200], "auto", "clip.mp4")


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two cores to compare with one")
def test_encoded_bytes_do_not_depend_on_the_number_of_cores(tmp_path):
    """x264 picks its thread count from the cores it may use; the bytes must not follow."""
    digests = []
    for cores in ({min(os.sched_getaffinity(0))}, os.sched_getaffinity(0)):
        path = tmp_path / f"{len(cores)}.mp4"
        code = ("import sys; from test_video import stamped_frames; from av_grounding.video import encode_video; "
                f"encode_video({str(path)!r}, stamped_frames(30, 640, 360), fps=30, keyframe_interval=30)")
        subprocess.run([sys.executable, "-c", code], check=True, cwd=os.path.dirname(__file__),
                       preexec_fn=lambda cores=cores: os.sched_setaffinity(0, cores), timeout=120)
        digests.append(path.read_bytes())
    assert digests[0] == digests[1]


def faststart_copy(source, target) -> None:
    """The same packets in an mp4 whose index (moov) comes before the media data."""
    import av

    with av.open(str(source)) as reader, av.open(str(target), "w", format="mp4",
                                                  options={"movflags": "faststart"}) as writer:
        stream = writer.add_stream_from_template(reader.streams.video[0])
        for packet in reader.demux(reader.streams.video[0]):
            if packet.dts is not None:
                packet.stream = stream
                writer.mux(packet)


def test_a_truncated_mp4_with_its_index_at_the_front_says_truncated(tmp_path, video):
    path, _ = video
    faststart_copy(path, tmp_path / "front.mp4")
    data = (tmp_path / "front.mp4").read_bytes()
    assert data[4:8] == b"ftyp" and data.index(b"moov") < data.index(b"mdat")
    assert index_video(data, "front.mp4").frame_count == FRAMES
    with pytest.raises(VideoError, match=rf"cut.mp4: truncated: its index lists {FRAMES} frames but the file holds "
                                         r"only \d+"):
        index_video(data[: len(data) // 2], "cut.mp4")


# Videos as real files come: built here from stamped frames with PyAV, each frame's stamp being
# its index in the source, so the pixels tell which frame a reader really returned.

def remux_shifted(source, destination, shift_frames: int) -> None:
    """Stream copy with every timestamp ``shift_frames`` frames earlier: the mp4 muxer writes an
    edit list whose presentation starts at the old frame ``shift_frames``, hiding the lead-in
    packets (still stored, since later frames are predicted from them)."""
    with av.open(str(source)) as inp, av.open(str(destination), "w", format="mp4") as out:
        stream = inp.streams.video[0]
        copy = out.add_stream_from_template(stream)
        step = round(1 / (stream.base_rate * stream.time_base))
        for packet in inp.demux(stream):
            if packet.dts is None:
                continue
            packet.pts -= shift_frames * step
            packet.dts -= shift_frames * step
            packet.stream = copy
            out.mux(packet)


def encode_timed(destination, frames, bframes: int = 0, keyframe_interval: int = 30) -> None:
    """H.264 mp4 of ``(pts, rgb)`` pairs on a 30 fps clock (the timestamps may skip or start late)."""
    with av.open(str(destination), "w", format="mp4") as out:
        stream = out.add_stream("libx264", rate=30)
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": "20", "preset": "veryfast", "g": str(keyframe_interval),
                          "x264-params": f"bframes={bframes}:b-adapt=0"}
        for count, (pts, rgb) in enumerate(frames):
            if count == 0:
                stream.height, stream.width = rgb.shape[:2]
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            frame.pts, frame.time_base = pts, Fraction(1, 30)
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))


def decoded_rgb(path) -> list[np.ndarray]:
    with av.open(str(path)) as container:
        return [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]


def zero_timestamps(path) -> None:
    """Rewrite an mp4 without B-frames (no ``ctts``) in place so that its sample table gives
    every frame duration 0 (its ``stts`` entries): every frame then carries pts 0."""
    data = bytearray(path.read_bytes())
    at = data.index(b"stts", data.index(b"moov")) + 8  # past the type and the version/flags
    for entry in range(int.from_bytes(data[at:at + 4], "big")):
        delta = at + 4 + 8 * entry + 4  # each entry: sample count, sample duration
        data[delta:delta + 4] = bytes(4)
    path.write_bytes(bytes(data))


def test_an_image_or_frames_sharing_a_timestamp_are_not_taken_for_a_video(tmp_path):
    frames = list(enumerate(stamped_frames(30, 160, 90)))
    photo = tmp_path / "photo.mp4"  # a JPEG named .mp4
    photo.write_bytes(cv2.imencode(".jpg", frames[0][1])[1].tobytes())
    with pytest.raises(VideoError, match=r"photo.mp4: not an mp4 video \(FFmpeg reads it as piped jpeg sequence\)"):
        index_video(photo, "photo.mp4")
    same = tmp_path / "same.mp4"
    encode_timed(same, frames)
    zero_timestamps(same)
    with av.open(str(same)) as container:
        assert {p.pts for p in container.demux(video=0) if p.pts is not None} == {0}
    with pytest.raises(VideoError, match=r"same.mp4: 30 shown frames but only 1 distinct timestamps \(30 frames carry "
                                         r"the timestamp of frame 0\)"):
        index_video(same, "same.mp4")


@pytest.fixture(scope="module")
def odd_videos(tmp_path_factory):
    """90 stamped frames (3 s at 30 fps) written four ways real files come."""
    folder = tmp_path_factory.mktemp("odd")
    source = folder / "source.mp4"
    encode_video(source, stamped_frames(90), fps=30, keyframe_interval=30)
    remux_shifted(source, folder / "edit_list.mp4", 3)
    frames = list(enumerate(stamped_frames(90)))
    encode_timed(folder / "gap.mp4", [(i, rgb) for i, rgb in frames if not 40 <= i <= 44])
    encode_timed(folder / "bframes.mp4", frames, bframes=3)
    encode_timed(folder / "late_start.mp4", [(i + 250, rgb) for i, rgb in frames], bframes=2)
    return folder


def test_an_edit_list_hides_lead_in_packets(odd_videos):
    """A player shows 87 frames, numbered from the first shown one (source frame 3)."""
    path = odd_videos / "edit_list.mp4"
    with av.open(str(path)) as container:
        assert sum(1 for p in container.demux(video=0) if p.pts is not None) == 90  # all still stored
    index = index_video(path)
    assert (index.frame_count, index.span, index.frames[0]) == (87, 87, 0)
    assert len(decoded_rgb(path)) == 87
    for strategy in ("auto", "decode_all", "seek"):
        frames, _, _ = read_frames(path, sample_indices(index.span, 29), strategy, "edit_list.mp4")
        assert [f.index for f in frames] == [0, 29, 58]
        assert [read_index(f.bgr) for f in frames] == [3, 32, 61]
        assert [f.time * 30 for f in frames] == [0, 29, 58]


def test_dropped_frames_leave_gaps_on_the_nominal_clock(odd_videos):
    path = odd_videos / "gap.mp4"
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        assert stream.average_rate == Fraction(85, 3)  # what the index must not use
    index = index_video(path)
    assert index.fps == 30 and (index.frame_count, index.span) == (85, 90)
    targets = sample_indices(index.span, 6)
    assert index.missing(targets) == [42]
    present = [t for t in targets if t != 42]
    for strategy in ("auto", "decode_all", "seek"):
        frames, _, _ = read_frames(path, present, strategy, "gap.mp4")
        assert [read_index(f.bgr) for f in frames] == [f.index for f in frames] == present
        assert [f.time * 30 for f in frames] == present
    with pytest.raises(VideoError, match=r"gap.mp4: frames \[40\] requested but the video shows 85 frames "
                                         r"with indices 0..89 \(with gaps\)"):
        read_frames(path, [30, 40], "auto", "gap.mp4")


@pytest.mark.parametrize("name", ["bframes.mp4", "late_start.mp4"])
def test_b_frames_and_a_late_first_timestamp(odd_videos, name):
    path = odd_videos / name
    with av.open(str(path)) as container:
        packets = [p.pts for p in container.demux(video=0) if p.pts is not None]
        start = container.streams.video[0].start_time
    assert packets != sorted(packets)  # B-frames: stored out of presentation order
    assert (start != 0) == (name == "late_start.mp4")
    index = index_video(path)
    assert index.frames == tuple(range(90)) and index.start_pts == start
    for strategy in ("auto", "decode_all", "seek", "keyframes"):
        targets = sample_indices(90, 30 if strategy == "keyframes" else 7)
        frames, _, _ = read_frames(path, targets, strategy, name)
        assert [read_index(f.bgr) for f in frames] == [f.index for f in frames] == targets
        assert [f.time * 30 for f in frames] == targets
