"""Local and ``s3://`` access through fsspec, atomic writes for every output file, and the one
rule for how floats are stored (``canonical``).

Every file or folder being written sits beside its final path under a hidden name ending in
``.tmp`` or ``.partial`` until it is complete; ``remove_partials`` clears what a killed run
left, so no half-written file stays visible under an output path.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import fsspec
import numpy as np

from .errors import PipelineError

# Every float the project stores is rounded to this many decimals: 1e-6 m, 1e-6 rad, 1e-6 px,
# 1e-6 s, far below what any label or camera measures (lidar boxes: ~1e-2 m, poses: ~1e-3 m,
# calibration: ~1e-2 px) and far above the last-digit noise of float64 arithmetic (~1e-14 for
# values up to 100). That noise depends on the machine: BLAS kernels (OPENBLAS_CORETYPE: FMA or
# not, blocking) and numpy's SIMD paths for sin, cos and exp give different last digits for
# the same inputs. Rounded, the bytes agree on every machine unless a value lies within that
# noise of a rounding boundary (about 1e-8 per value).
STORED_DECIMALS = 6
# Camera calibration is stored as given: it is copied from the clip, never computed (so it
# carries no machine-dependent digits), and f-theta polynomial coefficients (1e-3 down to 1e-17)
# would not survive rounding to decimals.
# Stored as given: camera intrinsics, and the learning rate a summary reports (the recipe's 2e-7
# would be 0.0 at 6 decimals).
EXACT_KEYS = frozenset({"intrinsics", "lr"})
PARTIAL_SUFFIXES = (".tmp", ".partial")


class StorageError(PipelineError):
    """An input cannot be read (access denied, missing bucket) or an output value cannot be
    stored; the message names the URL or file."""


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


def file_digest(fs: fsspec.AbstractFileSystem, path: str, data: bytes | None = None) -> str:
    """sha256 (hex) of a file, local or remote; of ``data`` when its bytes were read already."""
    if data is not None:
        return hashlib.sha256(data).hexdigest()
    with fs.open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def folder_digest(folder: str | Path) -> str:
    """sha256 (hex) of a local folder's content: every file's path under it and bytes, in
    path order (names and content, not times or owners)."""
    folder = Path(folder)
    total = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        with open(path, "rb") as handle:
            total.update(f"{path.relative_to(folder).as_posix()}\0{hashlib.file_digest(handle, 'sha256').hexdigest()}\n"
                         .encode())
    return total.hexdigest()


@contextmanager
def reading(url: str) -> Iterator[None]:
    """Report an access error of the filesystem while reading ``url`` as a ``StorageError``
    naming it (an S3 server answers wrong credentials with 403, a missing bucket with 404)."""
    try:
        yield
    except PermissionError as exc:
        raise StorageError(f"{url}: access denied ({exc}); check the credentials (AWS_ACCESS_KEY_ID and "
                           "AWS_SECRET_ACCESS_KEY, or the s3_profile parameter) and the endpoint") from exc


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


def canonical(value: Any, decimals: int = STORED_DECIMALS) -> Any:
    """``value`` as it is stored: every float (Python, numpy scalar or float array) rounded to
    ``decimals`` and ``-0.0`` made ``0.0``, inside dicts, lists and tuples (tuples become lists),
    except under the keys of ``EXACT_KEYS`` (camera intrinsics, learning rates), stored as they are.
    Other values are returned unchanged. Rounding is exact decimal rounding (``round``) for
    scalars and ``np.round`` for arrays; both give the same result for the same input on every
    machine; NaN and infinity stay as they are."""
    if isinstance(value, (float, np.floating)):
        return round(float(value), decimals) + 0.0  # + 0.0 turns -0.0 into 0.0
    if isinstance(value, np.ndarray) and np.issubdtype(value.dtype, np.floating):
        return np.round(value, decimals) + value.dtype.type(0.0)
    if isinstance(value, dict):
        return {key: item if key in EXACT_KEYS else canonical(item, decimals) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [canonical(item, decimals) for item in value]
    return value


def non_finite_at(obj: Any, where: str = "") -> str | None:
    """JSON path (``[3].objects[0].object_lwh[1]``) of the first NaN or infinity in ``obj``."""
    if isinstance(obj, float):
        return None if math.isfinite(obj) else where or "the top level"
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, (list, tuple)) else ()
    for key, value in items:
        found = non_finite_at(value, f"{where}[{key}]" if not isinstance(key, str)
                              else f"{where}.{key}" if where else key)
        if found:
            return found
    return None


def dumps_json(obj: Any, compact: bool = False) -> str:
    """Stable, strict JSON text of ``canonical(obj)``: sorted keys; two-space indent and a
    trailing newline, or ``compact`` (no spaces, no newline) for members inside tar files. NaN
    and infinity are refused (they are not JSON; browsers, Node and DVC's tools reject them):
    ``StorageError`` naming where the value sits."""
    stored = canonical(obj)
    try:
        if compact:
            return json.dumps(stored, sort_keys=True, separators=(",", ":"), allow_nan=False)
        return json.dumps(stored, indent=2, sort_keys=True, allow_nan=False) + "\n"
    except ValueError as exc:
        where = non_finite_at(stored)
        if where is None:
            raise
        raise StorageError(f"NaN or infinity at {where}: strict JSON has no such value") from exc


@contextmanager
def atomic_folder(folder: str | Path) -> Iterator[Path]:
    """Fill a temporary sibling folder, then put it in place of ``folder``: readers see the old
    folder or the complete new one. The sibling's name is fixed, so a rerun after a crash clears
    the leftover instead of adding one; an exception while filling removes it at once (a model
    folder's partial shards can be gigabytes). An output that cannot be written there (a read-only
    file system, a parent that is a file) is a ``StorageError`` naming ``folder``, before it is filled."""
    folder = Path(folder)
    tmp = folder.with_name(f".{folder.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.parent.mkdir(parents=True, exist_ok=True)
        tmp.mkdir()  # a probe: the caller fills the folder (or creates it itself)
        tmp.rmdir()
    except OSError as exc:
        at = f": {exc.filename}" if exc.filename else ""
        raise StorageError(f"{folder}: cannot write the output here ({exc.strerror or exc}{at})") from exc
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    remove_folder(folder)
    tmp.rename(folder)


def remove_folder(folder: str | Path) -> None:
    """Delete ``folder`` (if there) so that no reader ever sees it half deleted: it is renamed
    to a partial name (``is_partial``) first, which ``remove_partials`` clears should the
    deletion be killed."""
    folder = Path(folder)
    doomed = folder.with_name(f".{folder.name}.partial")
    shutil.rmtree(doomed, ignore_errors=True)
    try:
        folder.rename(doomed)
    except FileNotFoundError:
        return
    shutil.rmtree(doomed)


def stored_json(path: str | Path) -> Any | None:
    """What ``path`` holds as JSON; None when it is absent or unreadable (manifests of earlier runs)."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def as_stored(obj: Any) -> Any:
    """``obj`` as ``write_json`` then ``stored_json`` give it back (tuples become lists)."""
    return json.loads(dumps_json(obj))


def write_json(path: str | Path, obj: Any) -> None:
    """``obj`` as strict JSON in ``path``, atomically; ``StorageError`` naming the file and the
    place of a NaN or infinity, which leaves any earlier file in place."""
    try:
        text = dumps_json(obj)
    except StorageError as exc:
        raise StorageError(f"{path}: not written: {exc}") from exc
    atomic_write_bytes(path, text.encode())


def temporary_sibling(path: str | Path) -> Path:
    """A unique temporary path next to ``path``, for writers that need a file name (video muxers)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    return Path(tmp)


def is_partial(path: Path) -> bool:
    """A file or folder that a writer of this module had not finished."""
    return path.name.startswith(".") and path.name.endswith(PARTIAL_SUFFIXES)


def remove_partials(folder: str | Path) -> list[Path]:
    """Delete what killed writers left under ``folder`` (see ``is_partial``); returns the paths
    removed. Resumable stages call it before they look at their earlier output."""
    removed = []
    for path in sorted(Path(folder).rglob(".*")) if Path(folder).is_dir() else []:
        if is_partial(path) and (path.exists() or path.is_symlink()):
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink()
            removed.append(path)
    return removed
