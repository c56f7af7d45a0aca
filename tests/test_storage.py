"""Atomic writes: a crash while writing leaves the previous output whole. Stored floats: one
rounding rule, so that last-digit noise of the machine never reaches the bytes."""

from __future__ import annotations

import json

import numpy as np
import pytest

from av_grounding.storage import atomic_folder, canonical, dumps_json


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


def test_stored_floats_have_fixed_decimals_and_no_negative_zero():
    record = {"distance_m": 52.533449232826555, "tiny": 1.2246467991473532e-16, "zero": -0.0,
              "near_zero": -4e-9, "sum": -0.11050000000000004, "count": 3, "flag": True, "name": "car",
              "pose": (np.float64(1.0000000000000002), np.float32(0.5)), "missing": None}
    text = dumps_json(record)
    assert json.loads(text) == {"distance_m": 52.533449, "tiny": 0.0, "zero": 0.0, "near_zero": 0.0,
                                "sum": -0.1105, "count": 3, "flag": True, "name": "car", "pose": [1.0, 0.5],
                                "missing": None}
    assert "-0.0" not in text and "e-" not in text
    array = canonical(np.array([[-0.0, 1e-12], [2.5000004, -3.0000001]]))
    np.testing.assert_array_equal(array, [[0.0, 0.0], [2.5, -3.0]])
    assert array.dtype == np.float64 and not np.signbit(array[0]).any()

