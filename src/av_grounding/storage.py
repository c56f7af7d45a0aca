"""Local and ``s3://`` access through fsspec, atomic writes for every output file, and the one
rule for how floats are stored (``canonical``)."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import fsspec
import numpy as np

# Every float the project stores is rounded to this many decimals: 1e-6 m, 1e-6 rad, 1e-6 px,
# 1e-6 s, far below what any label or camera measures (lidar boxes: ~1e-2 m, poses: ~1e-3 m,
# calibration: ~1e-2 px) and far above the last-digit noise of float64 arithmetic (~1e-14 for
# values up to 100). That noise depends on the machine: BLAS kernels (OPENBLAS_CORETYPE: FMA or
# not, blocking) and numpy's SIMD paths for sin, cos and exp give different last digits for
# the same inputs. Rounded, the bytes agree on every machine unless a value lies within that
# noise of a rounding boundary (about 1e-8 per value).
STORED_DECIMALS = 6


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


def canonical(value: Any, decimals: int = STORED_DECIMALS) -> Any:
    """``value`` as it is stored: every float (Python, numpy scalar or float array) rounded to
    ``decimals`` and ``-0.0`` made ``0.0``, inside dicts, lists and tuples (tuples become lists).
    Other values are returned unchanged. Rounding is exact decimal rounding (``round``) for
    scalars and ``np.round`` for arrays; both give the same result for the same input on every
    machine."""
    if isinstance(value, (float, np.floating)):
        return round(float(value), decimals) + 0.0  # + 0.0 turns -0.0 into 0.0
    if isinstance(value, np.ndarray) and np.issubdtype(value.dtype, np.floating):
        return np.round(value, decimals) + value.dtype.type(0.0)
    if isinstance(value, dict):
        return {key: canonical(item, decimals) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [canonical(item, decimals) for item in value]
    return value


def dumps_json(obj: Any, allow_nan: bool = True, compact: bool = False) -> str:
    """Stable JSON text of ``canonical(obj)``: sorted keys; two-space indent and a trailing
    newline, or ``compact`` (no spaces, no newline) for members inside tar files.
    ``allow_nan=False``: strict JSON, ValueError for NaN or infinity (which browsers, Node and
    DVC's tools reject)."""
    if compact:
        return json.dumps(canonical(obj), sort_keys=True, separators=(",", ":"), allow_nan=allow_nan)
    return json.dumps(canonical(obj), indent=2, sort_keys=True, allow_nan=allow_nan) + "\n"


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
