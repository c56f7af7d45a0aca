"""Atomic writes: a crash while writing leaves the previous output whole; strict JSON. Stored
floats: one rounding rule, so that last-digit noise of the machine never reaches the bytes."""

from __future__ import annotations

import json

import numpy as np
import pytest

from av_grounding.storage import (
    StorageError,
    atomic_folder,
    atomic_write_bytes,
    canonical,
    dumps_json,
    remove_folder,
    remove_partials,
    write_json,
)


def test_atomic_folder_replaces_only_when_complete(tmp_path):
    folder = tmp_path / "model"
    with atomic_folder(folder) as tmp:
        tmp.mkdir()
        (tmp / "weights").write_text("first")
    with pytest.raises(RuntimeError), atomic_folder(folder) as tmp:  # noqa: PT012 - a crash in the middle of a write
        tmp.mkdir()
        (tmp / "weights").write_text("half of the second")
        raise RuntimeError("killed")
    assert (folder / "weights").read_text() == "first"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # the half-written folder went with the exception
    (tmp_path / ".model.tmp").mkdir()  # what a killed process leaves
    with atomic_folder(folder) as tmp:  # the rerun clears the crashed attempt's leftover
        tmp.mkdir()
        (tmp / "weights").write_text("second")
    assert (folder / "weights").read_text() == "second"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_a_removed_folder_is_gone_whole_or_left_under_a_partial_name(tmp_path, monkeypatch):
    import shutil

    folder = tmp_path / "checkpoints" / "step_000003"
    folder.mkdir(parents=True)
    (folder / "model.safetensors").write_text("weights")
    real_rmtree = shutil.rmtree

    def killed(path, *args, **kwargs):  # the deletion dies half way: one file gone, the folder left
        if not path.exists():
            return
        (path / "model.safetensors").unlink()
        raise KeyboardInterrupt

    monkeypatch.setattr(shutil, "rmtree", killed)
    with pytest.raises(KeyboardInterrupt):
        remove_folder(folder)
    monkeypatch.setattr(shutil, "rmtree", real_rmtree)
    assert not folder.exists()  # no reader finds a half-deleted step_000003
    assert remove_partials(tmp_path) == [tmp_path / "checkpoints" / ".step_000003.partial"]
    assert list((tmp_path / "checkpoints").iterdir()) == []
    remove_folder(folder)  # absent: nothing to do


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


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_write_json_refuses_nan_and_infinity_naming_file_and_place(tmp_path, value):
    path = tmp_path / "metrics.json"
    write_json(path, {"ok": 1.0})
    with pytest.raises(StorageError, match=r"metrics.json: not written: NaN or infinity at boxes\[1\].lwh\[2\]"):
        write_json(path, {"boxes": [{"lwh": [1.0, 2.0, 3.0]}, {"lwh": [1.0, 2.0, value]}]})
    assert json.loads(path.read_text()) == {"ok": 1.0}  # the earlier file stays
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json"]


def test_rounded_json_still_refuses_nan_in_tar_members_and_numpy_values():
    with pytest.raises(StorageError, match=r"NaN or infinity at pose\[1\]"):
        dumps_json({"pose": (np.float64(1.0000000000000002), np.float32("nan"))}, compact=True)


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


def test_camera_intrinsics_are_stored_exactly_in_records_and_tars():
    """f-theta polynomial coefficients go down to 1e-17: six decimals would zero them."""
    from av_grounding.rdshq import decode_tar, encode_tar

    ftheta = [954.2063, 757.15415, 1920.0, 1080.0, 0.0, 1.05758628e-3, 8.2116208e-9, -3.3945008e-11,
              8.0734208e-14, -2.94602496e-17, 1.0]
    stored = json.loads(dumps_json({"intrinsics": ftheta, "center": [1.23456789, -1e-17]}))
    assert stored == {"intrinsics": ftheta, "center": [1.234568, 0.0]}
    members = decode_tar(encode_tar("s_1_2", {"ftheta_intrinsic.camera_front_wide_120fov.npy": np.array(ftheta),
                                             "000000.vehicle_pose.npy": np.full((4, 4), 1e-17)}), "s_1_2", "test")
    np.testing.assert_array_equal(members["ftheta_intrinsic.camera_front_wide_120fov.npy"], ftheta)
    np.testing.assert_array_equal(members["000000.vehicle_pose.npy"], np.zeros((4, 4)))


def test_a_summarys_learning_rate_is_stored_as_given():
    """The recipe's Cosmos Reason 2 rate, 2e-7, is 0.0 at six decimals; other floats still round."""
    assert json.loads(dumps_json({"lr": 2e-7, "loss": 1e-7})) == {"lr": 2e-7, "loss": 0.0}
