"""benchmarks/learning/depth_errors.py: how the true boxes not found in 2D were missed, on frames
built by hand (one way each), and learning_report.py's quote of its tables."""

import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks" / "learning"))
from depth_errors import main, misses, nearest_ranks, table
from learning_report import depth_section

from av_grounding.evaluation.frames import load_frames

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


def test_the_learning_report_quotes_both_band_tables_and_names_a_file_without_them(tmp_path, monkeypatch):
    frames(tmp_path, {"ended": ([car(-3.0, 15.0), car(2.0, 40.0)], [car(-3.0, 15.0)])})
    out = tmp_path / "run" / "depth_errors.md"
    out.parent.mkdir()
    monkeypatch.setattr(sys, "argv", ["depth_errors.py", "--truth", str(tmp_path / "gt"), "--predictions",
                                      str(tmp_path / "pred"), "--out", str(out)])
    main()
    section = depth_section(out)
    assert section.startswith("### Found and depth by distance, column `pred`")
    (row,) = [line for line in section.split("Those not found in 2D")[1].splitlines() if line.startswith("| 35-50")]
    assert [cell.strip() for cell in row.strip("|").split("|")] == ["35-50", "1", "0", "1", "0"]  # after the end
    out.write_text("# Depth errors of the column `final`\n\n## Per camera\n\n| a |\n")
    with pytest.raises(ValueError, match=re.escape("depth_errors.md: no '## All cameras")):
        depth_section(out)
