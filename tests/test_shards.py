"""Image shards: deterministic bytes, random access by member name, atomic writes, clear errors."""

from __future__ import annotations

import tarfile

import pytest

from av_grounding.shards import ShardError, ShardReader, member_table, partial_path, write_shard

MEMBERS = {f"{index:06d}.jpg": bytes([index]) * (300 + 700 * index) for index in (0, 7, 14, 21)}


def write(path, members=MEMBERS):
    with write_shard(path) as shard:
        for name in sorted(members):
            shard.add(name, members[name])


def test_same_members_give_the_same_bytes_and_a_standard_tar(tmp_path):
    write(tmp_path / "a" / "one.tar")
    write(tmp_path / "b" / "one.tar")
    assert (tmp_path / "a" / "one.tar").read_bytes() == (tmp_path / "b" / "one.tar").read_bytes()
    with tarfile.open(tmp_path / "a" / "one.tar") as archive:
        infos = archive.getmembers()
        assert [i.name for i in infos] == sorted(MEMBERS)
        assert {(i.mtime, i.uid, i.gid, i.uname, i.gname, i.mode) for i in infos} == {(0, 0, 0, "", "", 0o644)}
        assert {i.name: archive.extractfile(i).read() for i in infos} == MEMBERS
    assert not partial_path(tmp_path / "a" / "one.tar").exists()


def test_reader_reads_any_member_by_name(tmp_path):
    write(tmp_path / "images" / "clip" / "cam.tar")
    reader = ShardReader(tmp_path)
    for name in ("000021.jpg", "000000.jpg", "000014.jpg", "000007.jpg"):
        assert reader.read("images/clip/cam.tar", name) == MEMBERS[name]
    assert reader.members("images/clip/cam.tar") == sorted(MEMBERS)
    table = member_table(tmp_path / "images" / "clip" / "cam.tar")
    assert all(offset % 512 == 0 for offset, _ in table.values())


def test_members_out_of_order_fail_and_leave_the_old_shard(tmp_path):
    path = tmp_path / "cam.tar"
    write(path, {"000001.jpg": b"old"})
    # The second add raises; the whole write is what is checked (the old shard stays).
    with pytest.raises(ValueError, match=r"cam.tar: member '000000.jpg' added after '000007.jpg'"), \
            write_shard(path) as shard:  # noqa: PT012
        shard.add("000007.jpg", b"x")
        shard.add("000000.jpg", b"y")
    assert ShardReader(tmp_path).read("cam.tar", "000001.jpg") == b"old"
    assert not partial_path(path).exists()
    with pytest.raises(ValueError, match="plain file name"), write_shard(path) as shard:
        shard.add("sub/000000.jpg", b"x")


def test_a_leftover_partial_file_is_replaced(tmp_path):
    path = tmp_path / "cam.tar"
    partial_path(path).write_bytes(b"half a shard from a killed run")
    write(path)
    assert not partial_path(path).exists()
    assert ShardReader(tmp_path).read("cam.tar", "000007.jpg") == MEMBERS["000007.jpg"]


def test_errors_name_the_shard(tmp_path):
    write(tmp_path / "cam.tar")
    reader = ShardReader(tmp_path)
    with pytest.raises(ShardError, match=r"cam.tar: no member '000001.jpg'"):
        reader.read("cam.tar", "000001.jpg")
    with pytest.raises(ShardError, match=r"absent.tar: missing shard"):
        reader.read("absent.tar", "000000.jpg")
    data = (tmp_path / "cam.tar").read_bytes()
    (tmp_path / "cut.tar").write_bytes(data[:-10240 - 6000])  # the last member loses its tail
    with pytest.raises(ShardError, match=r"cut.tar: unreadable shard: unexpected end of data"):
        ShardReader(tmp_path).read("cut.tar", "000021.jpg")
    (tmp_path / "junk.tar").write_bytes(b"\x01" * 2048)
    with pytest.raises(ShardError, match=r"junk.tar: unreadable shard"):
        reader.read("junk.tar", "000000.jpg")
