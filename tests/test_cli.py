"""Stage scripts: --help, parameters from params.yaml, command-line overrides, clear errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from av_grounding.cli import STAGES, main
from av_grounding.params import ExtractParams, ParamsError, load

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_every_stage_script_has_help(stage):
    result = subprocess.run([sys.executable, str(REPO / "stages" / f"{stage}.py"), "--help"],
                            capture_output=True, text=True, cwd=REPO, check=True)
    assert "--params" in result.stdout
    assert all(f"--{key}" in result.stdout for key in STAGES[stage].paths)


def test_params_yaml_matches_the_built_in_defaults():
    for stage, spec in STAGES.items():
        assert load(spec.params_cls, stage, REPO / "params.yaml") == spec.params_cls()


def test_overrides_and_type_checks(tmp_path):
    params_file = tmp_path / "params.yaml"
    params_file.write_text("extract:\n  skip_frames: 10\n  cameras: [camera_front_wide_120fov]\n")
    params = load(ExtractParams, "extract", params_file, {"skip_frames": 7})
    assert params.skip_frames == 7 and params.cameras == ("camera_front_wide_120fov",)
    with pytest.raises(ParamsError, match=r"params.yaml:extract.*unknown parameter\(s\) \['skip_frame'\]"):
        load(ExtractParams, "extract", params_file, {"skip_frame": 7})
    params_file.write_text("extract:\n  skip_frames: ten\n")
    with pytest.raises(ParamsError, match="'skip_frames' must be int"):
        load(ExtractParams, "extract", params_file)
    params_file.write_text("extract: [unclosed\n")
    with pytest.raises(ParamsError, match="not valid YAML"):
        load(ExtractParams, "extract", params_file)


def test_main_reports_bad_input_without_a_traceback(tmp_path, capsys):
    code = main(["extract", "--params", str(tmp_path / "none.yaml"), "--input-root", str(tmp_path / "absent"),
                 "--output", str(tmp_path / "out"), "--metrics", str(tmp_path / "m.json")])
    assert code == 2
    assert "absent/all_object_info: missing" in capsys.readouterr().err


def test_main_runs_a_stage_with_overrides(synthetic_root, tmp_path, capsys):
    code = main(["extract", "--params", str(REPO / "params.yaml"), "--input-root", str(synthetic_root),
                 "--cameras", "camera_front_wide_120fov", "--skip-frames", "15", "--workers", "1",
                 "--output", str(tmp_path / "out"), "--metrics", str(tmp_path / "m.json")])
    assert code == 0
    assert "frames_written: 4" in capsys.readouterr().out  # 2 clips x frames 0 and 15
