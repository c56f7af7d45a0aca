"""Stage scripts: --help, parameters from params.yaml, command-line overrides, clear errors."""

from __future__ import annotations

import re
import subprocess
import sys
import typing
from pathlib import Path

import pytest

from av_grounding.cli import STAGES, main
from av_grounding.params import (EvaluateParams, ExtractParams, FormatParams, InferParams, ParamsError,
                                 SynthesizeParams, TrainParams, TransformParams, load)

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
                 "--output", str(tmp_path / "out"), "--metrics", str(tmp_path / "m.json"),
                 "--timing", str(tmp_path / "timing.json")])
    assert code == 0
    assert "frames_written: 4" in capsys.readouterr().out  # 2 clips x frames 0 and 15


@pytest.mark.parametrize("cls, section, key, bad", [
    (TrainParams, "train", "schedule", "linear"),
    (TrainParams, "train", "backend", "deepspeed"),
    (TrainParams, "train", "preset", "cr3"),
    (TrainParams, "train", "attn_implementation", "flash"),
    (TransformParams, "transform", "codec", "cosmo"),
    (FormatParams, "format", "box_order", "random"),
    (FormatParams, "format", "model_family", "qwen2"),
    (ExtractParams, "extract", "camera_model", "fisheye"),
    (ExtractParams, "extract", "strategy", "fastest"),
    (ExtractParams, "extract", "executor", "slurm"),
    (InferParams, "infer", "checkpoints", "some"),
    (EvaluateParams, "evaluate", "codec", "qwen"),
    (SynthesizeParams, "synthesize", "preset", "turbo"),
    (SynthesizeParams, "synthesize", "executor", "dask"),
])
def test_fixed_choices_are_checked_when_params_load(tmp_path, cls, section, key, bad):
    params_file = tmp_path / "params.yaml"
    params_file.write_text(f"{section}:\n  {key}: {bad}\n")
    allowed = typing.get_args(typing.get_type_hints(cls)[key])
    allowed = typing.get_args(allowed[0]) if typing.get_origin(allowed[0]) is typing.Literal else allowed
    with pytest.raises(ParamsError, match=rf"params.yaml:{section} .*'{key}' must be one of "
                                          rf"{re.escape(str(list(allowed)))}.*got '{bad}'"):
        load(cls, section, params_file)


def test_fixed_choices_are_what_the_code_implements():
    from av_grounding import rdshq, video
    from av_grounding.dataset.answers import order_boxes
    from av_grounding.dataset.tokens import MERGE_FACTOR
    from av_grounding.geometry.codecs import CODECS
    from av_grounding.params import (PRESETS, BoxOrder, CameraModel, CodecName, ModelFamily, Strategy,
                                     TrainPreset)

    assert set(typing.get_args(CodecName)) == set(CODECS)
    assert set(typing.get_args(CameraModel)) == set(rdshq.CAMERA_MODELS)
    assert set(typing.get_args(Strategy)) == set(video.STRATEGIES)
    assert set(typing.get_args(ModelFamily)) == set(MERGE_FACTOR)
    assert set(typing.get_args(TrainPreset)) == set(PRESETS)
    box = [{"distance_m": 1.0, "center": [0.0, 0.0, 1.0], "track_id": "0"}]
    assert all(order_boxes(box, order) == box for order in typing.get_args(BoxOrder))


@pytest.mark.parametrize("cls, values, message", [
    (ExtractParams, {"skip_frames": 0}, r"'skip_frames' must be >= 1, got 0"),
    (ExtractParams, {"max_failed_fraction": 1.5}, r"'max_failed_fraction' must be >= 0.0 and <= 1.0, got 1.5"),
    (TrainParams, {"lr": -1e-3}, r"'lr' must be >= 0.0, got -0.001"),
    (TrainParams, {"warmup_ratio": float("nan")}, r"'warmup_ratio' must be >= 0.0 and <= 1.0, got nan"),
    (InferParams, {"checkpoints": "40,x"}, r"'checkpoints' must be one of \['all', 'none'\] or a list of int"),
    (FormatParams, {"min_pixels": 5000, "max_pixels": 4000}, r"format.min_pixels \(5000\) exceeds format.max_pixels"),
])
def test_numbers_outside_their_range_are_refused(cls, values, message):
    with pytest.raises(ParamsError, match=message):
        cls(**values)


def test_lists_of_steps_and_help_with_the_choices():
    assert InferParams(checkpoints="40, 80").checkpoints == (40, 80) and InferParams(checkpoints=[40]).checkpoints == (40,)
    result = subprocess.run([sys.executable, str(REPO / "stages" / "train.py"), "--help"], capture_output=True,
                            text=True, cwd=REPO, check=True)
    assert "one of: cosine, constant" in " ".join(result.stdout.split())


def test_main_lets_a_bug_show_its_traceback(monkeypatch, tmp_path):
    """Only the project's own errors become one-line messages; anything else is a bug."""
    from av_grounding.curation import transform

    def broken(*args, **kwargs):
        raise KeyError("a bug")

    monkeypatch.setattr(transform, "transform", broken)
    with pytest.raises(KeyError, match="a bug"):
        main(["transform", "--params", str(tmp_path / "none.yaml"), "--input", str(tmp_path), "--output",
              str(tmp_path / "out")])
