"""Exact frame sampling: the pixels of every returned frame carry the index that was asked for."""

from __future__ import annotations

import numpy as np
import pytest

from av_grounding.synth.stamp import read_index, stamp_index
from av_grounding.video import (VideoError, choose_strategy, decode_cost, encode_video, index_video,
                                read_frames, sample_indices)

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
    path, interval = video
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
    with pytest.raises(VideoError, match="garbage.mp4"):
        index_video(garbage, "garbage.mp4")
    path, _ = video
    data = path.read_bytes()
    with pytest.raises(VideoError, match="truncated.mp4"):
        read_frames(data[: len(data) // 3], sample_indices(FRAMES, 30), "auto", "truncated.mp4")


def test_requesting_frames_beyond_the_end_fails(video):
    path, _ = video
    with pytest.raises(VideoError, match="has 95"):
        read_frames(path, [0, 200], "auto", "clip.mp4")


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
