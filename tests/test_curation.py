"""Transform, filter and validate stages: unit cases and an end-to-end run on synthetic clips."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from av_grounding.curation.filters import covered_fraction, decide, ray_box_entry
from av_grounding.curation.records import RecordsError, read_records, write_records
from av_grounding.curation.transform import transform_record
from av_grounding.curation.validate import ValidationError, check_record, encoded_corners
from av_grounding.geometry.boxes import Box3D
from av_grounding.geometry.codecs import CODECS
from av_grounding.geometry.transforms import FLU_TO_RDF, RDF_TO_FLU, make_pose, rot_z
from av_grounding.params import FilterParams, ValidateParams
from av_grounding.pipeline.validate import validate

CAMERA_HEIGHT = 1.5
INTRINSICS = [300.0, 300.0, 320.0, 180.0, 640, 360]


def frame(objects, camera_yaw=0.0):
    """A frame record from a front camera at the world origin (1.5 m up), looking along +x."""
    camera_to_world = make_pose(rot_z(camera_yaw) @ RDF_TO_FLU, np.array([0.0, 0.0, CAMERA_HEIGHT]))
    return {"clip_id": "s_0_1", "camera": "camera_front_wide_120fov", "camera_model": "pinhole", "frame_index": 0,
            "image_shard": "images/s_0_1/camera_front_wide_120fov.tar",
            "image_member": "000000.jpg", "width": 640, "height": 360, "intrinsics": INTRINSICS,
            "camera_to_world": camera_to_world.tolist(), "vehicle_to_world": np.eye(4).tolist(),
            "objects": [{"track_id": str(i), "object_type": kind, "object_is_moving": True,
                         "object_to_world": make_pose(rot_z(yaw), np.array([x, y, lwh[2] / 2])).tolist(),
                         "object_lwh": list(lwh)} for i, (kind, x, y, yaw, lwh) in enumerate(objects)]}


CAR = (4.5, 1.9, 1.6)
TRUCK = (8.0, 2.5, 3.2)


def test_transform_puts_a_car_ahead_on_the_optical_axis():
    record = transform_record(frame([("Car", 20.0, 0.0, 0.0, CAR)]), "cosmos")
    obj = record["objects"][0]
    # Car centre at z = 0.8 m, camera at 1.5 m: 0.7 m below the axis, i.e. +0.7 in RDF y.
    np.testing.assert_allclose(obj["center"], [0.0, 0.7, 20.0], atol=1e-12)
    np.testing.assert_allclose(obj["rotation"], FLU_TO_RDF, atol=1e-12)
    np.testing.assert_allclose(obj["bbox_3d"], [0.0, 0.7, 20.0, *CAR, 0.0, 0.0, 0.0], atol=1e-12)
    assert obj["distance_m"] == pytest.approx(np.hypot(20.0, 0.7))


@pytest.mark.parametrize("codec", sorted(CODECS))
def test_transform_bbox_decodes_to_the_physical_box(codec):
    record = transform_record(frame([("Car", 12.0, -3.0, 0.7, CAR)], camera_yaw=-0.3), codec)
    obj = record["objects"][0]
    box = Box3D(np.array(obj["center"]), np.array(obj["rotation"]), np.array(obj["object_lwh"]))
    np.testing.assert_allclose(CODECS[codec].decode(obj["bbox_3d"]).corners(), box.corners(), atol=1e-9)
    assert record["box_codec"] == codec


def test_covered_fraction_known_cases():
    target = np.array([0.0, 0.0, 10.0, 10.0])
    assert covered_fraction(target, []) == 0.0
    assert covered_fraction(target, [np.array([-5.0, -5.0, 20.0, 20.0])]) == 1.0
    assert covered_fraction(target, [np.array([0.0, 0.0, 5.0, 10.0])]) == pytest.approx(0.5)
    # Two overlapping halves count their union once.
    halves = [np.array([0.0, 0.0, 6.0, 10.0]), np.array([4.0, 0.0, 10.0, 5.0])]
    assert covered_fraction(target, halves) == pytest.approx(0.8)


def test_covered_fraction_matches_monte_carlo():
    rng = np.random.default_rng(3)
    target = np.array([10.0, 20.0, 110.0, 80.0])
    others = [np.sort(rng.uniform(0, 130, 4).reshape(2, 2), axis=0).T.ravel()[[0, 2, 1, 3]] for _ in range(6)]
    points = rng.uniform(target[:2], target[2:], size=(200_000, 2))
    inside = np.zeros(len(points), dtype=bool)
    for o in others:
        inside |= (points[:, 0] >= o[0]) & (points[:, 0] <= o[2]) & (points[:, 1] >= o[1]) & (points[:, 1] <= o[3])
    assert covered_fraction(target, others) == pytest.approx(inside.mean(), abs=0.005)


def test_ray_box_entry():
    box = Box3D(np.array([0.0, 0.0, 10.0]), np.eye(3), np.array([2.0, 2.0, 2.0]))
    rays = np.array([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.05, 0.0, 1.0] / np.linalg.norm([0.05, 0.0, 1.0])])
    entry = ray_box_entry(rays, box)
    assert entry[0] == pytest.approx(9.0) and np.isinf(entry[1])
    assert entry[2] == pytest.approx(9.0 / rays[2, 2])
    inside = Box3D(np.zeros(3), np.eye(3), np.array([2.0, 2.0, 2.0]))
    assert ray_box_entry(rays[:1], inside)[0] == 0.0


def test_each_filter_has_its_reason():
    params = FilterParams()
    record = transform_record(frame([
        ("Car", 20.0, 0.0, 0.0, CAR),          # 0 kept
        ("Pedestrian", 15.0, 5.0, 0.0, (0.6, 0.6, 1.7)),  # 1 category
        ("Car", 150.0, 0.0, 0.0, CAR),          # 2 distance
        ("Car", -20.0, 0.0, 0.0, CAR),          # 3 behind the camera: fov
        ("Truck", 30.0, 12.0, 0.0, TRUCK),      # 4 kept, ahead on the left
        ("Car", 60.0, 24.0, 0.0, CAR),          # 5 on the same bearing, behind the truck: occlusion
    ]), "cosmos")
    reasons = [d.reason for d in decide(record, params)]
    assert reasons == [None, "category", "distance", "fov", None, "occlusion"]


def test_depth_filter_sees_through_gaps_that_2d_boxes_cover():
    """Two trucks side by side leave a gap; a car seen through it is covered by their 2D boxes'
    union only in part, but its lines of sight tell whether it is hidden."""
    params = FilterParams(occlusion_max_covered=1.01)  # isolate the depth filter
    hidden = transform_record(frame([("Truck", 15.0, 0.0, 0.0, TRUCK), ("Car", 40.0, 0.0, 0.0, CAR)]), "cosmos")
    assert [d.reason for d in decide(hidden, params)] == [None, "depth"]
    beside = transform_record(frame([("Truck", 15.0, 0.0, 0.0, TRUCK), ("Car", 40.0, 6.0, 0.0, CAR)]), "cosmos")
    assert [d.reason for d in decide(beside, params)] == [None, None]


def test_filter_counts_and_truth_scores(curated):
    work, curation = curated
    saved = json.loads((work / "curation.json").read_text())
    assert saved == curation
    assert curation["boxes_in"] == curation["boxes_kept"] + sum(curation["removed"].values())
    assert curation["removed"]["category"] > 0 and curation["removed"]["fov"] > 0
    # Every raw type dropped for its category is named with its count.
    assert set(curation["removed_types"]) <= {"Pedestrian", "Cyclist"} and curation["removed_types"]
    assert sum(curation["removed_types"].values()) == curation["removed"]["category"]
    scores = curation["against_render_truth"]
    assert scores["occlusion_and_depth"]["precision"] > scores["keep_all"]["precision"]
    assert scores["depth"]["recall"] > 0.9 and scores["depth"]["precision"] > 0.9
    kept = [o for path in (work / "filtered" / "records").rglob("*.json") for r in read_records(path)
            for o in r["objects"]]
    assert kept and all(o["label"] in {"car", "truck", "bus", "trailer"} for o in kept)


def test_validate_residual_and_overlays(curated):
    work, _ = curated
    summary = validate(ValidateParams(sample_count=3), work / "filtered", work / "extracted", work / "plots",
                       work / "validation.json")
    assert summary["boxes_checked"] > 0 and summary["max_residual_px"] < 0.5
    assert summary["by_reference"]["render_truth"]["boxes"] > 0
    assert len(list((work / "plots").glob("*.jpg"))) == 3


def test_validate_fails_on_a_misplaced_box(curated, tmp_path):
    work, _ = curated
    broken = tmp_path / "filtered"
    for path in sorted((work / "filtered" / "records").rglob("*.json")):
        records = read_records(path)
        for record in records:
            for obj in record["objects"]:
                obj["bbox_3d"][0] += 0.5  # half a metre sideways
        write_records(broken, path.parent.name, path.stem, records)
    with pytest.raises(ValidationError, match=r"(?s)worst clips \(failing boxes\): \S+ \(\d+\).*worst boxes:\n"
                                              r"  clip \S+, camera_\w+, frame \d+, box \d+: re-projects [\d.]+ px "
                                              r"from its "
                                              r"render_truth reference.*validate.max_residual_px = 0.5"):
        validate(ValidateParams(sample_count=1), broken, work / "extracted", tmp_path / "plots", tmp_path / "v.json")
    summary = json.loads((tmp_path / "v.json").read_text())
    assert summary["max_residual_px"] > 0.5 and summary["problems"]["residual"] == summary["boxes_failed"] > 0
    assert summary["worst"][0]["residual_px"] == summary["max_residual_px"]


# A bus beside the cross-left camera, one corner 12 cm in front of the camera plane (from the
# learning benchmark's clip 148, frame 14): that corner projects to about (-20290, -4079) px.
BESIDE_CAMERA = {
    "clip_id": "c", "camera": "camera_cross_left_120fov", "frame_index": 14, "box_codec": "cosmos",
    "camera_model": "pinhole", "width": 640, "height": 360,
    "intrinsics": [312.8333333333333, 312.8333333333333, 321.6333333333333, 248.13333333333333, 640.0, 360.0],
    "camera_to_world": np.eye(4).tolist(),
    "objects": [{"track_id": "14", "object_type": "Bus",
                 "bbox_3d": [-4.237592, -0.0985, 4.468893, 11.312, 2.597, 3.197, 0.0, -2.191592, 0.0],
                 "object_lwh": [11.312, 2.597, 3.197], "object_to_world": np.eye(4).tolist()}]}


@pytest.mark.parametrize("corner, fails", [(0, False), (2, True)], ids=["far_off_image", "in_image"])
def test_validate_residual_counts_corners_near_the_image_only(corner, fails):
    """A 0.9 px difference 20,000 px off the image is rounding (a relative 5e-5); in the image it is an error."""
    from av_grounding.geometry.cameras import camera_from_record

    record = json.loads(json.dumps(BESIDE_CAMERA))
    camera = camera_from_record("pinhole", record["intrinsics"])
    pixels = camera.project(encoded_corners(record["objects"][0], "cosmos"))
    assert pixels[0, 0] < -30 * 640 and 0 <= pixels[2, 0] <= 640 and 0 <= pixels[2, 1] <= 360
    pixels[corner] += [0.9, 0.0]
    record["objects"][0]["render_truth"] = {"corners_px": pixels.tolist()}
    [finding] = check_record(record, max_residual_px=0.5)
    assert (finding.problem is not None) == fails
    assert finding.residual_px == pytest.approx(0.9 if fails else 0.0, abs=1e-6)


def without_truth(records):
    """Frame records as real data gives them: no renderer truth."""
    return [{**r, "objects": [{**o, "render_truth": None} for o in r["objects"]]} for r in records]


def test_validate_passes_real_data_against_the_raw_labels(curated, tmp_path):
    work, _ = curated
    for path in sorted((work / "filtered" / "records").rglob("*.json")):
        write_records(tmp_path / "real", path.parent.name, path.stem, without_truth(read_records(path)))
    summary = validate(ValidateParams(sample_count=0), tmp_path / "real", work / "extracted", tmp_path / "plots")
    assert summary["by_reference"]["raw_labels"]["boxes"] == summary["boxes_checked"] > 0
    assert summary["max_residual_px"] < 0.01 and summary["boxes_failed"] == 0
    assert summary["per_frame"]["frames"] == summary["per_frame"]["frames_without_boxes"] + sum(
        1 for path in (tmp_path / "real" / "records").rglob("*.json") for r in read_records(path) if r["objects"])


@pytest.mark.parametrize("breakage, problem", [
    ("negative_size", "object_lwh not positive"),
    ("scaled_pose", r"camera_to_world not rigid \(rotation not orthonormal"),
    ("mirrored", r"object_to_world not rigid \(rotation determinant -1"),
    ("duplicate", "duplicate track in this frame"),
], ids=["negative_size", "scaled_pose", "mirrored", "duplicate"])
def test_validate_on_real_data_names_the_frame_and_box_of_a_bad_label(curated, tmp_path, breakage, problem):
    """Real data (no renderer truth): a negative size re-projects with residual 0 (both paths use
    it), so the sizes, finiteness and duplicates are checked on their own."""
    work, _ = curated
    victim = None
    for path in sorted((work / "filtered" / "records").rglob("*.json")):
        records = without_truth(read_records(path))
        for record in records:
            if victim is None and record["objects"]:
                victim = (record["clip_id"], record["camera"], record["frame_index"], record["objects"][0]["track_id"])
                obj = record["objects"][0]
                if breakage == "negative_size":  # what transform made of a negative raw size
                    obj["object_lwh"] = [-obj["object_lwh"][0], *obj["object_lwh"][1:]]
                    record["objects"][0] = transform_record({**record, "objects": [obj]}, "cosmos")["objects"][0]
                elif breakage == "scaled_pose":
                    record["camera_to_world"] = (np.diag([1.1, 1.1, 1.1, 1.0]) @ record["camera_to_world"]).tolist()
                elif breakage == "mirrored":
                    obj["object_to_world"] = (np.diag([1.0, -1.0, 1.0, 1.0]) @ obj["object_to_world"]).tolist()
                else:
                    record["objects"].append(dict(obj))
        write_records(tmp_path / "real", path.parent.name, path.stem, records)
    clip, camera, frame_index, track = victim
    box = "" if breakage == "scaled_pose" else f", box {track}"
    with pytest.raises(ValidationError, match=rf"(?s)worst clips \(failing boxes\): {clip} \(1\).*"
                                              rf"clip {clip}, {camera}, frame {frame_index}{box}: {problem}"):
        validate(ValidateParams(sample_count=2), tmp_path / "real", work / "extracted", tmp_path / "plots",
                 tmp_path / "v.json")
    summary = json.loads((tmp_path / "v.json").read_text())
    assert summary["boxes_failed"] == 1 and summary["per_frame"]["frames_with_problems"] == 1
    assert summary["worst"][0]["frame_index"] == frame_index and re.match(problem, summary["worst"][0]["problem"])


def test_malformed_records_name_the_file(tmp_path):
    from av_grounding.curation.records import RecordsError
    from av_grounding.params import TransformParams
    from av_grounding.pipeline.transform import transform

    good = frame([("Car", 20.0, 0.0, 0.0, CAR)])
    broken = json.loads(json.dumps(good))
    del broken["objects"][0]["object_lwh"]
    write_records(tmp_path / "in", "s_0_1", "camera_front_wide_120fov", [good, broken])
    with pytest.raises(RecordsError, match=r"camera_front_wide_120fov.json: record 1 \(frame 0\), object 0 "
                                           r"lacks \['object_lwh'\]"):
        transform(TransformParams(), tmp_path / "in", tmp_path / "out")
    (tmp_path / "in" / "records" / "s_0_1" / "camera_front_wide_120fov.json").write_text("[{\"clip_id\": 1}")
    with pytest.raises(RecordsError, match="unreadable records"):
        transform(TransformParams(), tmp_path / "in", tmp_path / "out")
    good["objects"][0]["object_lwh"][2] = float("nan")  # another writer's bare NaN (not JSON)
    (tmp_path / "in" / "records" / "s_0_1" / "camera_front_wide_120fov.json").write_text(json.dumps([good]))
    with pytest.raises(RecordsError, match=r"camera_front_wide_120fov.json: NaN or infinity at \[0\].objects\[0\]"
                                           r".object_lwh\[2\]; strict JSON"):
        transform(TransformParams(), tmp_path / "in", tmp_path / "out")


def test_whole_output_stages_keep_no_stale_records(tmp_path):
    """transform (like filter and format) replaces its output folder whole: records of clips that
    left the input leave the output, and a failed run leaves the earlier output in place."""
    from av_grounding.params import TransformParams
    from av_grounding.pipeline.transform import transform

    record = frame([("Car", 20.0, 0.0, 0.0, CAR)])
    write_records(tmp_path / "in", "s_0_1", "camera_front_wide_120fov", [record])
    write_records(tmp_path / "in", "t_0_1", "camera_front_wide_120fov", [{**record, "clip_id": "t_0_1"}])
    transform(TransformParams(), tmp_path / "in", tmp_path / "out")
    (tmp_path / "in" / "records" / "t_0_1" / "camera_front_wide_120fov.json").unlink()
    transform(TransformParams(), tmp_path / "in", tmp_path / "out")
    assert [p.parent.name for p in (tmp_path / "out" / "records").rglob("*.json")] == ["s_0_1"]
    (tmp_path / "in" / "records" / "s_0_1" / "camera_front_wide_120fov.json").write_text("[")
    with pytest.raises(RecordsError):
        transform(TransformParams(), tmp_path / "in", tmp_path / "out")
    assert [p.parent.name for p in (tmp_path / "out" / "records").rglob("*.json")] == ["s_0_1"]


def test_transform_and_filter_give_the_same_bytes_and_counts_in_one_or_two_processes(curated, tmp_path):
    from av_grounding.params import TransformParams
    from av_grounding.pipeline.filter import filter_boxes
    from av_grounding.pipeline.transform import transform

    work, _ = curated
    outputs = {}
    for workers in (1, 2):
        folder = tmp_path / str(workers)
        transformed = transform(TransformParams(workers=workers), work / "extracted", folder / "transformed")
        filtered = filter_boxes(FilterParams(workers=workers), folder / "transformed", folder / "filtered")
        files = {path.relative_to(folder): path.read_bytes() for path in sorted(folder.rglob("*.json"))}
        outputs[workers] = (transformed, filtered, files)
    assert outputs[1] == outputs[2]
    assert outputs[1][1]["boxes_in"] == outputs[1][0]["boxes"] > outputs[1][1]["boxes_kept"] > 0
