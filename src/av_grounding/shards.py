"""Image shards: many small files stored as one uncompressed tar, read back by member name.

Why: DVC pushes and pulls one object per file, and with thousands of small JPEGs the per-object
cost dominates (benchmarks/remote_push_pull/results/remote_push_pull.md). A shard keeps the bytes of each member
unchanged, so readers get exactly the JPEG that was written.

Shards are deterministic: ustar headers with zero mtime, owner and group, mode 0644, members in
increasing name order; the same members give the same bytes, hence the same DVC hashes. They
are uncompressed, so a member is one seek away: the tar headers are the index (one 512-byte
header per member, read once per shard by ``ShardReader``).
"""

from __future__ import annotations

import os
import tarfile
from collections.abc import Iterator
from contextlib import contextmanager
from io import BytesIO
from pathlib import Path

from .errors import PipelineError


class ShardError(PipelineError, ValueError):
    """A shard is missing or malformed, or lacks a member; the message names the file."""


def tar_member(name: str, size: int) -> tarfile.TarInfo:
    """A tar header that depends on name and size only (zero mtime, owner and group; mode 0644)."""
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = size, 0o644, 0
    return info


class ShardWriter:
    """Adds members to an open shard; names must increase so the bytes depend on content only."""

    def __init__(self, archive: tarfile.TarFile, path: Path):
        self._archive, self._path, self._last = archive, path, ""

    def add(self, name: str, data: bytes) -> None:
        if "/" in name or not name or len(name) > 100:
            raise ValueError(f"{self._path}: member name {name!r} must be a plain file name of at most 100 characters")
        if name <= self._last:
            raise ValueError(f"{self._path}: member {name!r} added after {self._last!r}; add members in increasing "
                             "name order")
        self._archive.addfile(tar_member(name, len(data)), BytesIO(data))
        self._last = name


def partial_path(path: Path) -> Path:
    """Where a shard is written before it is renamed into place. The name is fixed, not random,
    so a rerun after a crash overwrites the leftover of the killed run instead of adding one."""
    return path.with_name(f".{path.name}.partial")


@contextmanager
def write_shard(path: str | Path) -> Iterator[ShardWriter]:
    """Stream members into ``path``: readers see the old shard or the complete new one, never
    half a file. One writer per path at a time (extract writes each item's shard once)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = partial_path(path)
    try:
        with open(partial, "wb") as handle, tarfile.open(fileobj=handle, mode="w",
                                                         format=tarfile.USTAR_FORMAT) as archive:
            yield ShardWriter(archive, path)
        os.chmod(partial, 0o644)
        os.replace(partial, path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise


def member_table(path: str | Path) -> dict[str, tuple[int, int]]:
    """Member name -> (offset of its data, size), from the shard's headers (data is skipped)."""
    try:
        with tarfile.open(path, mode="r:") as archive:
            return {info.name: (info.offset_data, info.size) for info in archive if info.isfile()}
    except FileNotFoundError as exc:
        raise ShardError(f"{path}: missing shard") from exc
    except (tarfile.TarError, OSError) as exc:
        raise ShardError(f"{path}: unreadable shard: {exc}") from exc


class ShardReader:
    """Random access to members of the shards under ``root``, by shard path and member name."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self._tables: dict[str, dict[str, tuple[int, int]]] = {}

    def members(self, shard: str) -> list[str]:
        return sorted(self._table(shard))

    def read(self, shard: str, member: str) -> bytes:
        path = self.root / shard
        location = self._table(shard).get(member)
        if location is None:
            raise ShardError(f"{path}: no member {member!r}")
        offset, size = location
        with open(path, "rb") as handle:
            handle.seek(offset)
            data = handle.read(size)
        if len(data) != size:
            raise ShardError(f"{path}: member {member!r} is truncated")
        return data

    def _table(self, shard: str) -> dict[str, tuple[int, int]]:
        if shard not in self._tables:
            self._tables[shard] = member_table(self.root / shard)
        return self._tables[shard]
