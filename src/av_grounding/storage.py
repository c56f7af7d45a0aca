"""Local and ``s3://`` access through fsspec, and atomic writes for every output file."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import fsspec


def filesystem(url: str, s3_endpoint_url: str | None = None,
               s3_profile: str | None = None) -> tuple[fsspec.AbstractFileSystem, str]:
    """Return the filesystem serving ``url`` and the path inside it (no protocol prefix)."""
    options: dict[str, Any] = {}
    if url.startswith("s3://"):
        if s3_endpoint_url:
            options["endpoint_url"] = s3_endpoint_url
        if s3_profile:
            options["profile"] = s3_profile
    fs, path = fsspec.core.url_to_fs(url, **options)
    return fs, path.rstrip("/")


def is_local(fs: fsspec.AbstractFileSystem) -> bool:
    return "file" in fs.protocol or "local" in fs.protocol


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write through a temporary file in the same folder, then rename: readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; outputs are ordinary shared files
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def dumps_json(obj: Any, allow_nan: bool = True) -> str:
    """Stable JSON text: sorted keys, two-space indent, trailing newline. ``allow_nan=False``:
    strict JSON, ValueError for NaN or infinity (which browsers, Node and DVC's tools reject)."""
    return json.dumps(obj, indent=2, sort_keys=True, allow_nan=allow_nan) + "\n"


@contextmanager
def atomic_folder(folder: str | Path) -> Iterator[Path]:
    """Fill a temporary sibling folder, then put it in place of ``folder``: readers see the old
    folder or the complete new one. The sibling's name is fixed, so a rerun after a crash clears
    the leftover instead of adding one."""
    folder = Path(folder)
    tmp = folder.with_name(f".{folder.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.parent.mkdir(parents=True, exist_ok=True)
    yield tmp
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)


def write_json(path: str | Path, obj: Any, allow_nan: bool = True) -> None:
    atomic_write_bytes(path, dumps_json(obj, allow_nan).encode())


def temporary_sibling(path: str | Path) -> Path:
    """A unique temporary path next to ``path``, for writers that need a file name (video muxers)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    return Path(tmp)
