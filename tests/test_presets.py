"""The recipe's settings as presets (params.yaml's top-level ``preset``): each value as the
recipe's files give it (docs/recipe.md#presets names each one's source), how a preset meets the
params file and the command line, and where its values arrive: the hf schedule, cosmos-rl's
run.toml and the image budget `format` prints. Fast: nothing trains."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from av_grounding import cli
from av_grounding.dataset.tokens import image_budget_lines, print_image_budget
from av_grounding.params import PRESETS, FormatParams, ParamsError, TrainParams, load

REPO = Path(__file__).resolve().parents[1]
ABSENT = object()  # the preset leaves the key alone
PATHS = ("cr1-cosmos-rl", "cr2-cosmos-rl", "cr2-qwen-finetune")

# section, key, then the value of each of PATHS (the table of docs/recipe.md#presets, with sources).
TABLE = [
    ("train", "lr", 1e-6, 2e-7, 2e-7),  # cr1: cosmos-rl's default optm_lr
    ("train", "schedule", "constant", "cosine", "cosine"),  # cr1: optm_decay_type default None
    ("train", "warmup_steps", 20, None, None),  # cr1: cosmos-rl's default optm_warmup_steps 20 (steps)
    ("train", "warmup_ratio", ABSENT, 0.03, 0.03),
    ("train", "weight_decay", 0.01, 0.01, 0.01),
    ("train", "grad_clip", 1.0, 1.0, 1.0),
    ("train", "epochs", 5, 2, 2),
    ("train", "batch_size", 4, 4, 2),  # mini_batch 4; per_device_train_batch_size 2
    ("train", "grad_accum", 8, 4, 8),  # train_batch_per_replica 32 / 16 = 4 x 8 / 4 x 4; accumulation 8
    ("train", "gradient_checkpointing", True, True, True),
    ("train", "fsdp_offload", True, False, False),
    ("train", "save_every", 50, 50, 20),
    ("train", "keep_checkpoints", 2, 29, 19),  # max_keep 3 and 30, save_total_limit 20: each counts the final save
    ("format", "model_family", "qwen2_5_vl", "qwen3_vl", "qwen3_vl"),
    ("format", "system_prompt", True, True, False),  # the Qwen converter drops the system prompt
    ("format", "min_pixels", 3136, 4096, 12544),  # qwen-vl-utils' 4 tokens; qwen-vl-finetune's 28*28*16
    ("format", "max_pixels", 40960, 40960, 451584),  # [custom.vision]; qwen-vl-finetune's 28*28*576
    ("format", "model_max_length", 4096, 4096, 4096),
]
VALUES = [(path, section, key, values[index]) for section, key, *values in TABLE for index, path in enumerate(PATHS)]


def params_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("preset, section, key, value", VALUES)
def test_each_preset_holds_the_recipes_value(tmp_path, preset, section, key, value):
    if value is ABSENT:
        assert key not in PRESETS[preset][section]
        return
    assert PRESETS[preset][section][key] == value and type(PRESETS[preset][section][key]) is type(value)
    cls = {"format": FormatParams, "train": TrainParams}[section]
    loaded = load(cls, section, params_file(tmp_path, f"preset: {preset}\ntrain:\n  backend: cosmos-rl\n"))
    assert getattr(loaded, key) == value


@pytest.mark.parametrize("preset", PATHS)
def test_presets_name_only_the_keys_of_the_table_and_never_model_or_backend(preset):
    assert list(PRESETS) == list(PATHS)
    for section in ("format", "train"):
        expected = {key for s, key, *values in TABLE if s == section and values[PATHS.index(preset)] is not ABSENT}
        assert set(PRESETS[preset][section]) == expected
    assert not {"model", "backend"} & set(PRESETS[preset]["train"])


def test_global_batch_per_gpu_is_the_recipes():
    """cosmos-rl: train_batch_per_replica 32 (cr1) and 16 (cr2) on one replica; qwen-vl-finetune:
    2 x 8 per GPU (128 on the recipe's 8 GPUs)."""
    per_step = {name: PRESETS[name]["train"]["batch_size"] * PRESETS[name]["train"]["grad_accum"] for name in PATHS}
    assert per_step == {"cr1-cosmos-rl": 32, "cr2-cosmos-rl": 16, "cr2-qwen-finetune": 16}


def test_a_command_line_option_beats_the_preset_and_the_preset_beats_params_yaml(tmp_path):
    path = params_file(tmp_path, "preset: cr2-qwen-finetune\ntrain:\n  epochs: 2\n  seed: 3\n")
    assert load(TrainParams, "train", path, {"lr": 1e-5}).lr == 1e-5
    assert load(TrainParams, "train", path).lr == 2e-7 and load(TrainParams, "train", path).seed == 3
    args = cli.build_parser().parse_args(["train", "--params", str(path), "--lr", "3e-6"])
    train, others = cli._stage_params(cli.STAGES["train"], args)
    assert (train.lr, train.epochs, others["fmt"].max_pixels) == (3e-6, 2, 451584)


def test_preset_on_the_command_line_replaces_the_files(tmp_path):
    path = params_file(tmp_path, "preset: cr2-qwen-finetune\n")
    for raw, lr, max_pixels in [("cr2-cosmos-rl", 2e-7, 40960), ("null", None, 40960)]:
        args = cli.build_parser().parse_args(["train", "--params", str(path), "--preset", raw])
        train, others = cli._stage_params(cli.STAGES["train"], args)
        assert (train.lr, others["fmt"].max_pixels) == (lr, max_pixels)


def test_an_unknown_preset_is_refused_naming_the_file_and_the_names(tmp_path):
    path = params_file(tmp_path, "preset: cr2\n")
    names = re.escape(str(list(PATHS)))
    for cls, section in ((FormatParams, "format"), (TrainParams, "train")):
        with pytest.raises(ParamsError, match=rf"^{re.escape(str(path))}: 'preset' must be one of {names} or null"):
            load(cls, section, path)


def test_dvc_exp_run_with_a_preset_is_one_experiment(tmp_path):
    """What `dvc exp run -S preset=cr2-qwen-finetune` does to params.yaml (DVC's own writer), then
    what the stages read: format and infer the same format values, train the recipe's lr."""
    from dvc.utils.serialize import modify_yaml

    path = tmp_path / "params.yaml"
    shutil.copy(REPO / "params.yaml", path)
    with modify_yaml(str(path)) as data:
        data["preset"] = "cr2-qwen-finetune"
    fmt = load(FormatParams, "format", path)
    assert (fmt.system_prompt, fmt.max_pixels, fmt.min_pixels, fmt.model_family) == (False, 451584, 12544, "qwen3_vl")
    assert load(TrainParams, "train", path).lr == 2e-7
    for stage in ("train", "infer"):
        _, others = cli._stage_params(cli.STAGES[stage], cli.build_parser().parse_args([stage, "--params", str(path)]))
        assert others["fmt"] == fmt


def test_checks_hold_after_the_preset(tmp_path):
    path = params_file(tmp_path, "preset: cr1-cosmos-rl\ntrain:\n  backend: cosmos-rl\n")
    with pytest.raises(ParamsError, match=r"format.min_pixels \(50000\) exceeds format.max_pixels \(40960\)"):
        load(FormatParams, "format", path, {"min_pixels": 50000})
    with pytest.raises(ParamsError, match=r"preset cr1-cosmos-rl and command-line overrides\): 'epochs' must be >= 1"):
        load(TrainParams, "train", path, {"epochs": 0})


def test_fsdp_offload_is_a_warning_on_the_hf_backend(tmp_path):
    with pytest.warns(UserWarning, match=r"train.fsdp_offload applies to the cosmos-rl backend"):
        assert load(TrainParams, "train", params_file(tmp_path, "preset: cr1-cosmos-rl\n")).fsdp_offload
    assert TrainParams(fsdp_offload=True, backend="cosmos-rl").fsdp_offload


def test_a_params_yaml_value_the_preset_replaces_is_named_in_a_warning(tmp_path):
    path = params_file(tmp_path, "preset: cr2-qwen-finetune\ntrain:\n  lr: 0.001\n  epochs: 8\n  grad_accum: 8\n")
    with pytest.warns(UserWarning, match=r"train: preset cr2-qwen-finetune replaces lr 0.001 -> 2e-07 \(") as caught:
        load(TrainParams, "train", path)
    assert "epochs" not in str(caught[0].message)  # 8 is the built-in default: nothing was chosen there
    assert "grad_accum" not in str(caught[0].message)  # the preset's own value


def test_warmup_steps_override_warmup_ratio_in_the_hf_schedule():
    from av_grounding.training.hf import lr_at, warmup_steps

    params = TrainParams(warmup_ratio=0.5, warmup_steps=20, schedule="constant")
    assert warmup_steps(100, params) == 20 and warmup_steps(100, TrainParams(warmup_ratio=0.5)) == 50
    assert [lr_at(step, 100, params) for step in (0, 9, 19, 20, 99)] == [1 / 20, 10 / 20, 1.0, 1.0, 1.0]
    cosine = TrainParams(warmup_steps=20, schedule="cosine")
    assert lr_at(19, 100, cosine) == 1.0 and lr_at(60, 100, cosine) == pytest.approx(0.5)
    assert lr_at(0, 100, TrainParams(warmup_steps=0, schedule="constant")) == 1.0


@pytest.mark.parametrize("preset, warmup, decay, per_replica, offload", [
    ("cr1-cosmos-rl", 20, "none", 32, True),
    ("cr2-cosmos-rl", 0.03, "cosine", 16, False),
])
def test_cosmos_rl_run_toml_gets_the_presets_schedule_batch_and_offload(tmp_path, preset, warmup, decay,
                                                                          per_replica, offload):
    from av_grounding.training.cosmos_rl import cosmos_config

    path = params_file(tmp_path, f"preset: {preset}\ntrain:\n  backend: cosmos-rl\n  lr: 0.5\n")
    with pytest.warns(UserWarning, match="replaces lr 0.5"):
        params = load(TrainParams, "train", path)
    train = cosmos_config(params, load(FormatParams, "format", path), "org/model", tmp_path, samples=64)["train"]
    assert train["optm_warmup_steps"] == warmup and type(train["optm_warmup_steps"]) is type(warmup)  # int: steps
    assert (train["optm_decay_type"], train["train_batch_per_replica"], train["fsdp_offload"]) == (
        decay, per_replica, offload)
    assert (train["train_policy"]["mini_batch"], train["optm_lr"], train["optm_weight_decay"]) == (
        4, PRESETS[preset]["train"]["lr"], 0.01)


@pytest.mark.parametrize("preset, size, resized, count", [
    ("cr1-cosmos-rl", (1280, 720), "252x140", 45),
    ("cr2-cosmos-rl", (1280, 720), "256x128", 32),
    ("cr2-qwen-finetune", (1280, 720), "896x480", 420),
])
def test_image_tokens_per_frame_of_each_presets_budget(preset, size, resized, count):
    """45 / 32 / 420 image tokens per 1280x720 frame (docs/recipe.md#presets)."""
    fmt = PRESETS[preset]["format"]
    [line] = image_budget_lines([size], fmt["model_family"], fmt["min_pixels"], fmt["max_pixels"])
    assert f"1280x720 -> {resized}, {count} tokens ({fmt['model_family']}" in line


def test_format_prints_one_line_per_frame_size(capsys):
    print_image_budget([(640, 360), (1280, 720), (640, 360)], "qwen2_5_vl", 3136, 40960)
    assert capsys.readouterr().err.splitlines() == [
        ("format: image tokens per frame at min_pixels 3136, max_pixels 40960: 640x360 -> 252x140, 45 tokens "
         "(qwen2_5_vl, 28 px each)"),
        ("format: image tokens per frame at min_pixels 3136, max_pixels 40960: 1280x720 -> 252x140, 45 tokens "
         "(qwen2_5_vl, 28 px each)")]
