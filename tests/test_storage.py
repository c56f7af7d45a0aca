"""Atomic writes: a crash while writing leaves the previous output whole."""

from __future__ import annotations

import pytest

from av_grounding.storage import atomic_folder


def test_atomic_folder_replaces_only_when_complete(tmp_path):
    folder = tmp_path / "model"
    with atomic_folder(folder) as tmp:
        tmp.mkdir()
        (tmp / "weights").write_text("first")
    with pytest.raises(RuntimeError):
        with atomic_folder(folder) as tmp:
            tmp.mkdir()
            (tmp / "weights").write_text("half of the second")
            raise RuntimeError("killed")
    assert (folder / "weights").read_text() == "first"
    with atomic_folder(folder) as tmp:  # the rerun clears the crashed attempt's leftover
        tmp.mkdir()
        (tmp / "weights").write_text("second")
    assert (folder / "weights").read_text() == "second"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]
