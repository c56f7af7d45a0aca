"""benchmarks/env/repack_wheels.py: a wheel recompressed with LZMA keeps every member's name,
bytes, date and permissions, and pip installs it; a damaged one is left as it was."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks" / "env"))
from repack_wheels import repack

RECORD = "demo-1.0.dist-info/RECORD"


def make_wheel(path: Path) -> None:
    """A pure-Python wheel of one module, deflated as wheels are, with its RECORD hashes."""
    import base64
    import hashlib

    files = {"demo.py": "".join(f"VALUE_{i} = {i * i}\n" for i in range(3000)).encode(),
             "demo-1.0.dist-info/METADATA": b"Metadata-Version: 2.1\nName: demo\nVersion: 1.0\n",
             "demo-1.0.dist-info/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
                                         b"Tag: py3-none-any\n"}

    def digest(data: bytes) -> str:
        return base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()

    lines = [f"{name},sha256={digest(data)},{len(data)}" for name, data in files.items()]
    files[RECORD] = ("\n".join([*lines, f"{RECORD},,"]) + "\n").encode()
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as wheel:
        for name, data in files.items():
            info = zipfile.ZipInfo(name, (2026, 12, 6, 8, 0, 0))
            info.external_attr = 0o644 << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            wheel.writestr(info, data)


def test_a_repacked_wheel_keeps_its_members_and_installs(tmp_path):
    wheel = tmp_path / "demo-1.0-py3-none-any.whl"
    make_wheel(wheel)
    with zipfile.ZipFile(wheel) as original:
        members = {info.filename: (original.read(info), info.date_time, info.external_attr)
                   for info in original.infolist()}
    repack(wheel)
    with zipfile.ZipFile(wheel) as repacked:
        assert {info.compress_type for info in repacked.infolist()} == {zipfile.ZIP_LZMA}
        assert {info.filename: (repacked.read(info), info.date_time, info.external_attr)
                for info in repacked.infolist()} == members
    assert not list(tmp_path.glob("*.partial"))
    target = tmp_path / "installed"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-index", "--no-deps",
                    "--target", str(target), str(wheel)], check=True)
    assert (target / "demo.py").read_bytes() == members["demo.py"][0]


def test_a_damaged_or_incompressible_wheel_is_left_as_it_was(tmp_path):
    """A member whose bytes fail their CRC stops the repack with the wheel untouched and no
    partial file beside it; a wheel LZMA would not shrink keeps its bytes."""
    damaged = tmp_path / "damaged-1.0-py3-none-any.whl"
    with zipfile.ZipFile(damaged, "w", zipfile.ZIP_STORED) as target:
        target.writestr("demo.py", b"VALUE = 42\n")
    raw = bytearray(damaged.read_bytes())
    raw[raw.index(b"VALUE = 42")] ^= 0xFF  # the stored bytes no longer match their CRC
    damaged.write_bytes(bytes(raw))
    with pytest.raises(zipfile.BadZipFile):
        repack(damaged)
    assert damaged.read_bytes() == bytes(raw) and not list(tmp_path.glob("*.partial"))
    small = tmp_path / "small-1.0-py3-none-any.whl"
    with zipfile.ZipFile(small, "w", zipfile.ZIP_STORED) as target:
        target.writestr("a.py", b"x")
    before = small.read_bytes()
    assert repack(small) == (len(before), len(before)) and small.read_bytes() == before
