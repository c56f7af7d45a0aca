"""benchmarks/learning/depth_errors.py: how the true boxes not found in 2D were missed and what one
repair of the overlapping box would pair, on frames built by hand (one way each), and
learning_report.py's quote of its tables."""

import json
import re
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks" / "learning"))
from depth_errors import REPAIRS, main, misses, nearest_ranks, occlusion, repair_shares, repaired, repairs, table
from learning_report import depth_section

from av_grounding.evaluation.frames import load_frames
from av_grounding.geometry.codecs import get_codec

CAMERA = {"fx": 300.0, "fy": 300.0, "cx": 320.0, "cy": 180.0}  # a 640x360 image


def car(x: float, z: float) -> dict:
    return {"label": "car", "bbox_3d": [x, 0.7, z, 4.5, 1.9, 1.6, 0.0, 0.0, 0.0]}


def frames(tmp_path: Path, documents: dict[str, tuple[list, list]]):
    """Truth and answer files of each frame ``{name: (true boxes, answered boxes)}``, loaded."""
    for name, (truth, answer) in documents.items():
        for folder, document in (("gt", {"camera_params": CAMERA, "width": 640, "height": 360, "annotations": truth}),
                                 ("pred", {"annotations": answer})):
            (tmp_path / folder).mkdir(exist_ok=True)
            (tmp_path / folder / f"{name}.json").write_text(json.dumps(document))
    return load_frames(tmp_path / "gt", tmp_path / "pred", "cosmos")


def test_nearest_ranks_order_by_distance_from_the_camera_ties_in_input_order():
    centres = np.array([[0.0, 0.0, 40.0], [30.0, 0.0, 10.0], [0.0, 0.0, 5.0], [0.0, 5.0, 0.0]])
    assert nearest_ranks(centres).tolist() == [3, 2, 0, 1]  # distances 40, 31.6, 5, 5


def test_each_missed_truth_is_counted_in_the_one_way_it_was_missed(tmp_path):
    """Band 35-50 m holds six true cars: one found, two after the end of a one-box answer, one
    under a box shifted to IoU 0.1-0.5, one both (overlapped counts first), one with the only box
    elsewhere in the image. The near car of `overlap-and-ended` is missed with nothing on it."""
    near, far = car(-3.0, 15.0), car(2.0, 40.0)
    shifted = car(2.0 + 0.8, 40.0)  # about 13 of 17 px wide at 40 m: overlaps, IoU under 0.5
    built = frames(tmp_path, {"ended": ([near, far, car(-6.0, 45.0)], [near]),
                              "overlap": ([far], [shifted]),
                              "overlap-and-ended": ([near, far], [shifted]),
                              "elsewhere": ([far], [car(-12.0, 40.0)]),
                              "found": ([far], [far])})
    boxes = table(built)  # a frame id without a camera names its camera column
    of = {name: boxes[boxes["camera"] == name] for name in ("ended", "overlap", "elsewhere", "found")}
    assert 0.1 <= of["overlap"]["best_iou"].item() < 0.5 and of["elsewhere"]["best_iou"].item() < 0.1, boxes
    assert boxes["found"].sum() == 2 and of["found"]["found"].item()  # the first near car and the found far one
    assert of["ended"]["rank"].tolist() == [0, 1, 2] and of["ended"]["answered"].tolist() == [1, 1, 1]
    result = misses(boxes)
    assert list(result.columns) == ["missed in 2D", "overlapped (IoU >= 0.1), not paired", "else: answer ended first",
                                    "else: no overlap"]
    assert result.loc["35-50"].tolist() == pytest.approx([5, 0.4, 0.4, 0.2])
    assert result.loc["10-20"].tolist() == pytest.approx([1, 0.0, 0.0, 1.0])


def test_a_far_car_behind_a_near_one_is_covered_and_the_band_table_sorts_by_outcome(tmp_path):
    """A car at 40 m on the ray of a car at 15 m lies wholly behind it in the image: covered 1; the
    near car 0; a car beside both 0; a car outside the picture (no rectangle) none. The band
    table's medians and shares, computed by hand."""
    near, behind, beside, outside = car(0.75, 15.0), car(2.0, 40.0), car(-12.0, 40.0), car(60.0, 20.0)
    boxes = table(frames(tmp_path, {"a": ([near, behind, beside, outside], [near])}))
    assert boxes.loc[boxes["z_m"] == 15.0, "covered"].tolist() == [0.0]
    assert sorted(boxes.loc[boxes["z_m"] == 40.0, "covered"].tolist()) == [0.0, 1.0]
    assert np.isnan(boxes.loc[boxes["z_m"] == 20.0, "covered"]).all()
    assert np.isnan(occlusion(boxes).loc["20-35", "share over half covered"])  # no box with a rectangle there
    built = pd.DataFrame({"z_m": [40.0, 41.0, 42.0, 43.0, 44.0], "found": [True, False, False, False, False],
                          "best_iou": [0.9, 0.3, 0.2, 0.0, 0.05], "covered": [0.1, 0.6, 0.8, 0.4, 1.0]})
    row = occlusion(built).loc["35-50"]
    assert row.tolist() == [0.1, 0.7, 0.7, 0.6]  # found 0.1; overlapped 0.6 and 0.8; others 0.4 and 1.0; 3 of 5 > 0.5


def test_each_repair_replaces_one_property_and_keeps_the_others():
    decode = get_codec("cosmos").decode
    pred = decode([3.0, 0.5, 30.0, 4.0, 1.8, 1.5, 0.0, 0.0, 0.2])
    truth = decode([1.0, 0.7, 42.0, 4.6, 1.9, 1.6, 0.0, 0.0, 0.0])
    depth = repaired(pred, truth, "depth")  # along its own ray, to the truth's range
    assert np.linalg.norm(depth.center) == pytest.approx(np.linalg.norm(truth.center))
    assert np.cross(depth.center, pred.center) == pytest.approx(np.zeros(3), abs=1e-12)
    place = repaired(pred, truth, "place in the image")  # on the truth's ray, at its own range
    assert np.linalg.norm(place.center) == pytest.approx(np.linalg.norm(pred.center))
    assert np.cross(place.center, truth.center) == pytest.approx(np.zeros(3), abs=1e-12)
    assert (repaired(pred, truth, "size").lwh == truth.lwh).all()
    assert (repaired(pred, truth, "orientation").rotation == truth.rotation).all()
    for what in REPAIRS:
        fixed = repaired(pred, truth, what)
        kept = [name for name, a, b in (("centre", fixed.center, pred.center), ("size", fixed.lwh, pred.lwh),
                                        ("orientation", fixed.rotation, pred.rotation)) if np.array_equal(a, b)]
        assert len(kept) == 2, (what, kept)
    with pytest.raises(ValueError, match="'colour' is none of"):
        repaired(pred, truth, "colour")


def test_a_box_off_in_one_property_is_paired_by_that_repair_alone(tmp_path):
    """Three far cars, each answered by a box that overlaps it under IoU 0.5 for one reason: 0.8 m
    to the side (its place in the image), 30 % too near along its own ray (its depth: the same
    place, a larger rectangle), 1.6 times too large (its size). Each is paired by its own repair
    and, here, by no other; a found car and a car with no overlapping box are left out."""
    far = car(2.0, 40.0)
    too_near = {"label": "car", "bbox_3d": [2.0 * 0.7, 0.7 * 0.7, 40.0 * 0.7, 4.5, 1.9, 1.6, 0.0, 0.0, 0.0]}
    too_large = {"label": "car", "bbox_3d": [2.0, 0.7, 40.0, 4.5 * 1.6, 1.9 * 1.6, 1.6 * 1.6, 0.0, 0.0, 0.0]}
    built = frames(tmp_path, {"aside": ([far], [car(2.8, 40.0)]), "near": ([far], [too_near]),
                              "large": ([far], [too_large]), "found": ([far], [far]),
                              "elsewhere": ([far], [car(-12.0, 40.0)])})
    rows = repairs(built)
    assert len(rows) == 3 and ((rows["iou"] >= 0.1) & (rows["iou"] < 0.5)).all(), rows
    # frames load by name: aside, large, near
    assert rows[list(REPAIRS)].to_numpy().tolist() == [[False, True, False, False], [False, False, True, False],
                                                      [True, False, False, False]], rows
    shares = repair_shares(rows)
    assert shares.loc["35-50"].tolist() == [3, round(rows["iou"].median(), 3), 0.333, 0.333, 0.333, 0.0]


def test_the_learning_report_quotes_the_band_tables_and_names_a_file_without_them(tmp_path, monkeypatch):
    frames(tmp_path, {"ended": ([car(-3.0, 15.0), car(2.0, 40.0)], [car(-3.0, 15.0)]),
                      "aside": ([car(2.0, 40.0)], [car(2.8, 40.0)])})
    out = tmp_path / "run" / "depth_errors.md"
    out.parent.mkdir()
    monkeypatch.setattr(sys, "argv", ["depth_errors.py", "--truth", str(tmp_path / "gt"), "--predictions",
                                      str(tmp_path / "pred"), "--out", str(out)])
    main()
    section = depth_section(out)
    assert section.startswith("### Found and depth by distance, column `pred`")
    missed, rest = section.split("Those not found in 2D")[1].split("How much of the true boxes' image rectangles")
    covered_table, repaired_table = rest.split("Those overlapped by a box")
    (row,) = [line for line in covered_table.splitlines() if line.startswith("| 35-50")]
    # the far car of `ended` found nothing over it, `aside`'s was overlapped; nothing nearer covers either
    assert [cell.strip() for cell in row.strip("|").split("|")] == ["35-50", "nan", "0", "0", "0"]
    (row,) = [line for line in missed.splitlines() if line.startswith("| 35-50")]
    assert [cell.strip() for cell in row.strip("|").split("|")] == ["35-50", "2", "0.5", "0.5", "0"]
    (row,) = [line for line in repaired_table.splitlines() if line.startswith("| 35-50")]
    # one car overlapped at IoU 0.461, 0.8 m aside: paired by a repair of its place in the image alone
    assert [cell.strip() for cell in row.strip("|").split("|")] == ["35-50", "1", "0.461", "0", "1", "0", "0"]
    out.write_text("# Depth errors of the column `final`\n\n## Per camera\n\n| a |\n")
    with pytest.raises(ValueError, match=re.escape("depth_errors.md: no '## All cameras")):
        depth_section(out)
