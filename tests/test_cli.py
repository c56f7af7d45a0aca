"""Stage scripts: --help, parameters from params.yaml, command-line overrides, clear errors."""

from __future__ import annotations

import re
import subprocess
import sys
import typing
from pathlib import Path

import pytest

from av_grounding.cli import STAGES, main
from av_grounding.params import (
    EvaluateParams,
    ExtractParams,
    FormatParams,
    InferParams,
    ParamsError,
    SynthesizeParams,
    TrainParams,
    TransformParams,
    load,
)

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


def test_an_unknown_preset_is_refused_naming_the_file_and_the_allowed_names(tmp_path, capsys):
    """The top-level ``preset`` (not a key of a section): refused by every stage it changes, from
    the params file or --preset, before any work."""
    params_file = tmp_path / "params.yaml"
    params_file.write_text("preset: cr3\n")
    allowed = re.escape("['cr1-cosmos-rl', 'cr2-cosmos-rl', 'cr2-qwen-finetune']")
    for stage in ("format", "train", "infer"):
        code = main([stage, "--params", str(params_file), *paths_under(tmp_path, stage)])
        err = capsys.readouterr().err.strip()
        assert code == 2 and re.fullmatch(rf"error: {re.escape(str(params_file))}: 'preset' must be one of {allowed} "
                                          r"or null \(no preset\), got 'cr3'", err), err
    code = main(["format", "--params", str(tmp_path / "none.yaml"), "--preset", "cr1",
                 *paths_under(tmp_path, "format")])
    assert code == 2 and "error: --preset: 'preset' must be one of" in capsys.readouterr().err


def test_fixed_choices_are_what_the_code_implements():
    from av_grounding import rdshq, video
    from av_grounding.dataset.answers import order_boxes
    from av_grounding.dataset.tokens import MERGE_FACTOR
    from av_grounding.geometry.codecs import CODECS
    from av_grounding.params import PRESETS, BoxOrder, CameraModel, CodecName, ModelFamily, Preset, Strategy

    assert set(typing.get_args(CodecName)) == set(CODECS)
    assert set(typing.get_args(CameraModel)) == set(rdshq.CAMERA_MODELS)
    assert set(typing.get_args(Strategy)) == set(video.STRATEGIES)
    assert set(typing.get_args(ModelFamily)) == set(MERGE_FACTOR)
    assert set(typing.get_args(Preset)) == set(PRESETS)
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
    assert InferParams(checkpoints="40, 80").checkpoints == (40, 80)
    assert InferParams(checkpoints=[40]).checkpoints == (40,)
    result = subprocess.run([sys.executable, str(REPO / "stages" / "train.py"), "--help"], capture_output=True,
                            text=True, cwd=REPO, check=True)
    assert "one of: cosine, constant" in " ".join(result.stdout.split())


def test_main_lets_a_bug_show_its_traceback(monkeypatch, tmp_path):
    """Only the project's own errors become one-line messages; anything else is a bug."""
    from av_grounding.pipeline import transform

    def broken(*args, **kwargs):
        raise KeyError("a bug")

    monkeypatch.setattr(transform, "transform", broken)
    with pytest.raises(KeyError, match="a bug"):
        main(["transform", "--params", str(tmp_path / "none.yaml"), "--input", str(tmp_path), "--output",
              str(tmp_path / "out")])


def paths_under(tmp_path: Path, stage: str) -> list[str]:
    """Every path option of ``stage`` pointing under ``tmp_path``: no test writes into the repository."""
    return [arg for key, default in STAGES[stage].paths.items() if default
            for arg in (f"--{key.replace('_', '-')}", str(tmp_path / key))]


@pytest.mark.parametrize("stage, flag", [("validate", "--seed"), ("format", "--split-seed"), ("train", "--seed")])
def test_negative_seeds_are_refused_when_params_load(tmp_path, capsys, stage, flag):
    """numpy's generators take no negative seed: refused with the key, not a traceback later."""
    code = main([stage, "--params", str(tmp_path / "none.yaml"), flag, "-1", *paths_under(tmp_path, stage)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert re.search(rf"none.yaml:{stage} \(with command-line overrides\): '{flag[2:].replace('-', '_')}' must be "
                     r">= 0, got -1", err), err


def test_a_key_written_twice_in_params_yaml_names_it_and_both_lines(tmp_path, capsys):
    params_file = tmp_path / "params.yaml"
    params_file.write_text("transform:\n  codec: cosmos\n  workers: 1\nfilter:\n  max_distance_m: 80\n"
                           "  workers: 1\n  max_distance_m: 50\n")
    code = main(["transform", "--params", str(params_file), *paths_under(tmp_path, "transform")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err == (f"error: {params_file}: key 'filter.max_distance_m' appears twice, on lines 5 and 7 "
                                 "(YAML readers would silently keep the last); keep one")
    params_file.write_text("base: &base\n  workers: 1\ntransform:\n  <<: *base\n  workers: 2\n")  # a merge may override
    assert load(TransformParams, "transform", params_file).workers == 2


def test_format_refuses_an_eval_split_of_no_clip(tmp_path, capsys):
    code = main(["format", "--params", str(tmp_path / "none.yaml"), "--eval-clips", "0",
                 *paths_under(tmp_path, "format")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err == ("error: format.eval_clips = 0: the eval split must hold at least one clip "
                                 "(or name them in format.eval_clip_ids)")
    assert FormatParams(eval_clips=0, eval_clip_ids=("a_1_2",)).eval_clips == 0


@pytest.mark.parametrize("case", ["read_only", "parent_is_a_file"])
def test_an_output_that_cannot_be_written_is_named_not_the_input(tmp_path, capsys, monkeypatch, case):
    """transform's output on a read-only file system (simulated: no new folder can be made
    under it; tests run as root, which ignores permission bits) or under a regular file: one
    line naming the output, before any work, never blaming the input records."""
    import errno
    import os

    from av_grounding.curation.records import write_records

    record = {"clip_id": "s_0_1", "camera": "camera_front_wide_120fov", "camera_model": "pinhole", "frame_index": 0,
              "image_shard": "images/s_0_1/camera_front_wide_120fov.tar", "image_member": "000000.jpg",
              "width": 640, "height": 360, "intrinsics": [300.0, 300.0, 320.0, 180.0, 640, 360],
              "camera_to_world": [[1.0, 0, 0, 0], [0, 1.0, 0, 0], [0, 0, 1.0, 0], [0, 0, 0, 1.0]], "objects": []}
    write_records(tmp_path / "in", "s_0_1", "camera_front_wide_120fov", [record])
    if case == "read_only":
        output = tmp_path / "mounted" / "transformed"
        output.parent.mkdir()
        real_mkdir = os.mkdir

        def read_only_mkdir(path, *args, **kwargs):
            if Path(path).is_relative_to(output.parent):
                if Path(path).exists():
                    raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(path))
                raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
            return real_mkdir(path, *args, **kwargs)

        monkeypatch.setattr(os, "mkdir", read_only_mkdir)
    else:
        output = tmp_path / "notes.txt" / "transformed"
        output.parent.write_text("a file, not a folder")
    code = main(["transform", "--params", str(tmp_path / "none.yaml"), "--workers", "1", "--input",
                 str(tmp_path / "in"), "--output", str(output)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    assert err.startswith(f"error: {output}: cannot write the output here (") and str(tmp_path / "in") not in err
    assert ("Read-only file system" if case == "read_only" else "File exists") in err
