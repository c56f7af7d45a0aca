"""Atomic writes: a crash while writing leaves the previous output whole; strict JSON."""

from __future__ import annotations

import json

import pytest

from av_grounding.storage import StorageError, atomic_folder, atomic_write_bytes, remove_partials, write_json


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


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_write_json_refuses_nan_and_infinity_naming_file_and_place(tmp_path, value):
    path = tmp_path / "metrics.json"
    write_json(path, {"ok": 1.0})
    with pytest.raises(StorageError, match=r"metrics.json: not written: NaN or infinity at boxes\[1\].lwh\[2\]"):
        write_json(path, {"boxes": [{"lwh": [1.0, 2.0, 3.0]}, {"lwh": [1.0, 2.0, value]}]})
    assert json.loads(path.read_text()) == {"ok": 1.0}  # the earlier file stays
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json"]


def test_remove_partials_clears_what_killed_writers_left(tmp_path):
    atomic_write_bytes(tmp_path / "a" / "done.json", b"{}")
    leftovers = [tmp_path / "a" / ".done.json.x1y2.tmp", tmp_path / "a" / ".cam.tar.partial", tmp_path / ".model.tmp"]
    for path in leftovers[:2]:
        path.write_bytes(b"half")
    (leftovers[2] / "inner").mkdir(parents=True)
    (tmp_path / "a" / ".hidden_but_complete").write_text("kept")
    assert remove_partials(tmp_path) == sorted(leftovers)
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")) == [
        "a", "a/.hidden_but_complete", "a/done.json"]
