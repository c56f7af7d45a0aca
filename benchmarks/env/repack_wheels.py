"""Recompress wheels in place with LZMA, so the device tool's carry (64 MiB with the working
tree) holds .whl/project: the av wheel goes from 35.8 to 26.8 MB, pygit2's from 4.9 to 3.8.

    python benchmarks/env/repack_wheels.py .whl/project/av-*.whl .whl/project/pygit2-*.whl

Every member keeps its name, bytes, date and permissions, so the RECORD hashes still hold and pip
installs the wheel as before (it reads LZMA members through the standard zipfile module). Each
file is written beside the original and moved over it only when complete and smaller; a wheel
that cannot be read is left as it was, with nothing beside it.
"""

from __future__ import annotations

import argparse
import os
import zipfile
from pathlib import Path


def repack(wheel: Path) -> tuple[int, int]:
    """Rewrite ``wheel`` with every member LZMA-compressed, unless that is no smaller; returns
    (bytes before, bytes after). Raises ``zipfile.BadZipFile`` (a member's CRC, not a zip) or
    ``OSError`` with the wheel untouched."""
    before = wheel.stat().st_size
    partial = wheel.with_name(wheel.name + ".partial")
    try:
        with zipfile.ZipFile(wheel) as source, zipfile.ZipFile(partial, "w", zipfile.ZIP_LZMA) as target:
            for member in source.infolist():
                copy = zipfile.ZipInfo(member.filename, member.date_time)
                copy.external_attr = member.external_attr
                copy.compress_type = zipfile.ZIP_LZMA
                target.writestr(copy, source.read(member))
        if partial.stat().st_size < before:
            os.replace(partial, wheel)
    finally:
        partial.unlink(missing_ok=True)
    return before, wheel.stat().st_size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("wheels", nargs="+", type=Path)
    for wheel in parser.parse_args().wheels:
        before, after = repack(wheel)
        print(f"{wheel}: {before:,} -> {after:,} bytes")


if __name__ == "__main__":
    main()
