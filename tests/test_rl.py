"""The `rl` stage (GRPO through TRL, ``training.grpo``, ``pipeline.rl``): its prompts are the SFT
encoder's, its reward reads virtual-camera answers, a short run learns, resumes after a crash
and becomes `infer` columns."""

from __future__ import annotations

import dataclasses
import json
import shutil

import numpy as np
import pytest
import torch
from conftest import TINY, format_for
from PIL import Image

from av_grounding.dataset.formats import conversation, read_cosmos, write_cosmos
from av_grounding.dataset.prompts import load_prompts
from av_grounding.evaluation.reward import RewardConfig, column_reward, reward
from av_grounding.evaluation.table import column_title
from av_grounding.geometry.virtual import AnswerCamera
from av_grounding.models.builtin import build_builtin
from av_grounding.models.inputs import Encoder
from av_grounding.models.loading import load_model
from av_grounding.params import FormatParams, InferParams, ParamsError, RLParams
from av_grounding.pipeline.infer import rl_columns
from av_grounding.pipeline.rl import rl
from av_grounding.training.grpo import image_text_processor, prompt_messages

FORMAT = FormatParams(prompts="prompts/av_grounding.yaml")


@pytest.mark.parametrize("model", TINY)
def test_the_processor_gives_the_encoders_prompt_tokens_and_pixels(model, dataset, tmp_path):
    """What GRPOTrainer feeds the policy (the chat template through the image-only processor)
    is what SFT trained on and infer asks: the same ids and pixel values."""
    fmt = format_for(model)
    prompts = load_prompts(fmt.prompts)
    folder = build_builtin(model, tmp_path / "model", 0, prompts.system, prompts.user, fmt.min_pixels, fmt.max_pixels)
    loaded = load_model(folder)
    processor = image_text_processor(loaded, fmt)
    encoder = Encoder(loaded.tokenizer, loaded.image_processor, fmt.min_pixels, fmt.max_pixels, 4096)
    sample = read_cosmos(dataset / "train")[0]
    text = processor.apply_chat_template(prompt_messages(sample), add_generation_prompt=True, tokenize=False)
    with Image.open(sample.image) as image:
        inputs = processor(text=[text], images=[image.convert("RGB")], return_tensors="pt", add_special_tokens=False)
    encoded = encoder.encode(sample, with_answer=False)
    assert inputs["input_ids"][0].tolist() == encoded.input_ids
    torch.testing.assert_close(inputs["pixel_values"], encoded.pixel_values, rtol=0, atol=0)
    assert inputs["image_grid_thw"].tolist() == encoded.image_grid_thw.tolist()


def test_the_reward_moves_a_virtual_camera_answer_back_before_matching():
    truth = [{"label": "car", "bbox_3d": [2.0, 1.0, 20.0, 4.5, 1.9, 1.6, 0.0, 0.3, 0.0]}]
    real = json.dumps(truth)
    scaled = json.dumps([{**truth[0], "bbox_3d": [4.0, 2.0, 40.0, *truth[0]["bbox_3d"][3:]]}])
    perfect = reward(real, truth)
    assert perfect.total == pytest.approx(RewardConfig().maximum)
    assert reward(scaled, truth, answer_camera=AnswerCamera(1.0, 2.0)) == perfect
    assert reward(scaled, truth).matched == 0  # read as real, the box is 20 m off


def test_column_reward_of_perfect_and_missing_answers(dataset, tmp_path):
    gt = dataset / "eval" / "text"
    pred = tmp_path / "pred"
    pred.mkdir()
    names = sorted(p.name for p in gt.glob("*.json"))
    for name in names[1:]:
        (pred / name).write_text(json.dumps({"annotations": json.loads((gt / name).read_text())["annotations"]}))
    means = column_reward(gt, pred, "cosmos")
    missing = reward("", json.loads((gt / names[0]).read_text())["annotations"]).total
    expected = ((len(names) - 1) * RewardConfig().maximum + missing) / len(names)
    assert means["total"] == pytest.approx(expected)
    assert set(means) >= {"total", "iou", "centre", "duplicate", "false_positive", "malformed"}


def test_rl_columns_follow_the_sft_steps_and_are_titled(tmp_path):
    (tmp_path / "checkpoints" / "step_000002").mkdir(parents=True)
    run = {"steps": 4}
    assert rl_columns(tmp_path, run, InferParams(), 100) == [
        ("rl_step_000002", str(tmp_path / "checkpoints" / "step_000002"), 102),
        ("rl_final", str(tmp_path / "model"), 104)]
    assert rl_columns(tmp_path, run, InferParams(checkpoints="none"), 100) == [
        ("rl_final", str(tmp_path / "model"), 104)]
    assert rl_columns(tmp_path, {"steps": 0}, InferParams(), 100) == [] == rl_columns(None, run, InferParams(), 1)
    assert column_title("rl_step_000002", 102) == "RL step 102"
    assert column_title("rl_final", 104) == "RL final (step 104)"


def test_a_bad_reward_key_stops_the_stage_before_any_work(tmp_path):
    with pytest.raises(ParamsError, match=r"rl\.reward: .*no_such_weight"):
        rl(RLParams(reward={"no_such_weight": 1.0}), FORMAT, tmp_path / "dataset", tmp_path / "train",
           tmp_path / "rl", None, tmp_path / "live")
    assert not (tmp_path / "rl").exists() and not (tmp_path / "live").exists()


@pytest.fixture(scope="module")
def start(dataset, tmp_path_factory):
    """A train folder holding a tiny model (``run.json`` as train writes it) and a dataset of two
    training and two evaluation frames with their truth records."""
    root = tmp_path_factory.mktemp("rl")
    for split in ("train", "eval"):
        chosen = read_cosmos(dataset / split)[:2]
        folder = root / "data" / split
        (folder / "images").mkdir(parents=True)
        for s in chosen:
            shutil.copy(s.image, folder / "images" / f"{s.id}.jpg")
        write_cosmos(folder, [(s.id, s.record, conversation(f"images/{s.id}.jpg", s.system, s.user, s.answer))
                              for s in chosen])
    _train_folder(root / "train", "tiny-qwen2_5_vl")
    return root


def _train_folder(train, model):
    """``train/model``, a built-in ``model``, and ``train/run.json`` as the train stage writes them."""
    prompts = load_prompts(FORMAT.prompts)
    build_builtin(model, train / "model", 0, prompts.system, prompts.user, FORMAT.min_pixels, FORMAT.max_pixels)
    (train / "run.json").write_text(json.dumps({"base": str(train / "model"), "steps": 5, "inputs_sha256": "sft"}))


# Random answers of a random model all earn the same reward (malformed), which gives GRPO no
# advantage to follow: a 30-character limit makes their lengths tell them apart, so steps move weights.
SHORT = RLParams(steps=2, prompts_per_step=1, group_size=2, max_answer_tokens=12, save_every=1, kl=0.04,
                 reward={"max_answer_chars": 30})


def _weights(folder):
    return load_model(folder).model.state_dict()


@pytest.fixture(scope="module")
def whole(start, tmp_path_factory):
    """An uninterrupted run of SHORT: (its folder, its summary, its DVCLive folder)."""
    root = tmp_path_factory.mktemp("whole")
    summary = rl(SHORT, FORMAT, start / "data", start / "train", root / "rl", root / "rl.json", root / "live",
                 root / "timing.json")
    return root / "rl", summary, root / "live"


def test_a_run_moves_the_policy_and_logs_every_reward_term(start, whole):
    folder, summary, live = whole
    assert summary["steps"] == 2 and summary["answers_per_step"] == 2 and summary["frames"] == 2
    base, policy = _weights(start / "train" / "model"), _weights(folder / "model")
    assert any(not torch.equal(base[name], value) for name, value in policy.items()), "GRPO changed no weight"
    curves = live / "plots" / "metrics" / "rl"
    assert [line.split("\t")[0] for line in (curves / "reward.tsv").read_text().splitlines()[1:]] == ["0", "1"]
    assert {p.stem for p in (curves / "grounding").iterdir()} >= {"iou", "centre", "duplicate", "overlong", "total"}
    assert json.loads((folder / "run.json").read_text())["steps"] == 2
    assert not (folder / "trainer").exists()  # the resumable state goes once the run completes


def test_an_interrupted_run_resumes_to_the_weights_of_an_uninterrupted_one(start, whole, tmp_path, monkeypatch):
    """Killed after step 2 (before its checkpoint), the rerun continues from step 1's TRL
    checkpoint (optimizer, scheduler, RNG; the policy from its exported folder, the KL
    reference still the starting model), trains step 2 only, and ends with the uninterrupted
    run's weights; the DVCLive curve and the checkpoints are those of one run."""
    from transformers import TrainerCallback

    from av_grounding.pipeline import reporting

    class Crash(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 2:
                raise KeyboardInterrupt

    real = reporting.rl_callbacks  # the stage imports it when it trains a step
    monkeypatch.setattr(reporting, "rl_callbacks", lambda live, timing: [*real(live, timing), Crash()])
    with pytest.raises(KeyboardInterrupt):
        rl(SHORT, FORMAT, start / "data", start / "train", tmp_path / "cut", None, tmp_path / "live",
           tmp_path / "t.json")
    assert sorted(p.name for p in (tmp_path / "cut" / "trainer").iterdir() if p.is_dir()) == ["checkpoint-1"]
    monkeypatch.setattr(reporting, "rl_callbacks", real)
    rl(SHORT, FORMAT, start / "data", start / "train", tmp_path / "cut", None, tmp_path / "live",
       tmp_path / "t.json")
    assert json.loads((tmp_path / "t.json").read_text())["per_step"]["step"] == [2]
    resumed, uninterrupted = _weights(tmp_path / "cut" / "model"), _weights(whole[0] / "model")
    for name, value in uninterrupted.items():
        torch.testing.assert_close(resumed[name], value, rtol=0, atol=0, msg=name)
    assert sorted(p.name for p in (tmp_path / "cut" / "checkpoints").iterdir()) == ["step_000001", "step_000002"]
    curve = (tmp_path / "live" / "plots" / "metrics" / "rl" / "reward.tsv").read_text().splitlines()
    assert curve[1:] == (whole[2] / "plots" / "metrics" / "rl" / "reward.tsv").read_text().splitlines()[1:]


def test_the_gpu_precision_samples_and_trains_qwen3_vl(start, tmp_path, monkeypatch):
    """On a GPU the stage trains fp32 weights under bf16 autocast (TRL's ``bf16``) and samples the
    answers under it too; here on a CPU, where autocast does the same. A static KV cache failed
    exactly there on an H100 with Qwen3-VL (keys leave its fp32 key norm in fp32, values come out
    in bf16; with it, this test fails the same way): the run must make its step, and the policy
    it writes keeps fp32 weights."""
    from av_grounding.training import grpo

    _train_folder(tmp_path / "train", "tiny-qwen3_vl")
    real = grpo.grpo_config
    monkeypatch.setattr(grpo, "grpo_config", lambda params, output, device, bf16: real(params, output, device, True))
    one_step = dataclasses.replace(SHORT, steps=1, save_every=0)  # the failure came at the first answers
    summary = rl(one_step, dataclasses.replace(FORMAT, model_family="qwen3_vl"), start / "data", tmp_path / "train",
                 tmp_path / "rl", None, tmp_path / "live", tmp_path / "t.json")
    assert summary["steps"] == 1
    assert all(value.dtype == torch.float32 for value in _weights(tmp_path / "rl" / "model").values())


def test_a_bf16_stochastic_policy_samples_with_the_compiled_static_cache(start, tmp_path, monkeypatch):
    """rl.precision bf16_stochastic with Qwen3-VL (whose static cache fails under autocast): the
    answers are sampled with the static cache, compilation allowed; every step's update goes
    through StochasticAdamW; the written policy is bf16."""
    from transformers.generation.utils import GenerationMixin

    from av_grounding.training import optim

    sampled, real_generate = [], GenerationMixin.generate

    def spy(self, *args, generation_config=None, **kwargs):
        sampled.append((generation_config.cache_implementation, generation_config.disable_compile))
        return real_generate(self, *args, generation_config=generation_config, **kwargs)

    updates, real_step = [], optim.StochasticAdamW.step
    monkeypatch.setattr(GenerationMixin, "generate", spy)
    monkeypatch.setattr(optim.StochasticAdamW, "step",
                        lambda self, *args, **kwargs: updates.append(1) or real_step(self, *args, **kwargs))
    _train_folder(tmp_path / "train", "tiny-qwen3_vl")
    params = dataclasses.replace(SHORT, steps=1, save_every=0, precision="bf16_stochastic")
    summary = rl(params, dataclasses.replace(FORMAT, model_family="qwen3_vl"), start / "data", tmp_path / "train",
                 tmp_path / "rl", None, tmp_path / "live", tmp_path / "t.json")
    assert summary["steps"] == len(updates) == 1
    assert sampled and set(sampled) == {("static", False)}
    from safetensors.torch import load_file

    stored = [load_file(f) for f in (tmp_path / "rl" / "model").glob("*.safetensors")]
    assert stored and {value.dtype for part in stored for value in part.values()} == {torch.bfloat16}


def test_a_time_budget_stops_the_run_after_the_step_that_reaches_it(start, tmp_path):
    """A budget far below one step's time: the first step completes and the run stops there (of 3);
    the summary, run.json (which numbers infer's column) and the timing file say one step, and
    the final policy is written."""
    params = dataclasses.replace(SHORT, steps=3, save_every=0, time_budget_s=1e-6)
    summary = rl(params, FORMAT, start / "data", start / "train", tmp_path / "rl", None, tmp_path / "live",
                 tmp_path / "t.json")
    assert summary["steps"] == 1
    assert json.loads((tmp_path / "rl" / "run.json").read_text())["steps"] == 1
    assert json.loads((tmp_path / "t.json").read_text())["per_step"]["step"] == [1]
    assert (tmp_path / "rl" / "model" / "config.json").is_file()


def test_rl_columns_are_inferred_after_the_sft_ones(start, whole, tmp_path):
    from av_grounding.pipeline.infer import infer

    params = InferParams(max_new_tokens=8, batch_size=2, zero_shot=False, checkpoints="none")
    summary = infer(params, FORMAT, start / "data", start / "train", tmp_path / "predictions", rl=whole[0])
    assert {name: column["step"] for name, column in summary.items()} == {"final": 5, "rl_final": 7}
    assert json.loads((tmp_path / "predictions" / "columns.json").read_text()) == {"final": 5, "rl_final": 7}
    rl(RLParams(steps=0), FORMAT, start / "data", start / "train", tmp_path / "none", None,
       tmp_path / "live")  # no RL: no columns, an empty curve (DVC's outputs exist)
    assert not (tmp_path / "none" / "model").exists()
    assert json.loads((tmp_path / "live" / "metrics.json").read_text()) == {}
    assert (tmp_path / "live" / "plots" / "metrics").is_dir()
    assert list(infer(params, FORMAT, start / "data", start / "train", tmp_path / "predictions",
                      rl=tmp_path / "none")) == ["final"]


def test_the_cosmos_rl_reward_reads_a_virtual_camera_record():
    from av_grounding.training.rewards import cosmos_rl_reward

    truth = [{"label": "car", "bbox_3d": [1.0, 1.0, 20.0, 4.5, 1.9, 1.6, 0.0, 0.3, 0.0]}]
    record = {"annotations": truth, "virtual_camera": {"focal_per_height": 1.0, "scale": 2.0}}
    scaled = json.dumps([{**truth[0], "bbox_3d": [2.0, 2.0, 40.0, *truth[0]["bbox_3d"][3:]]}])
    assert cosmos_rl_reward(scaled, json.dumps(record))[0] == pytest.approx(RewardConfig().maximum)
    with pytest.raises(ValueError, match="the ground-truth record: 'virtual_camera' must be an object with a positive"):
        cosmos_rl_reward(scaled, json.dumps({**record, "virtual_camera": {"scale": 0.0}}))


def test_a_prediction_without_the_block_is_read_in_the_truths_virtual_camera(tmp_path):
    """A raw answer saved without its block (an external inference script) on a dataset whose
    answers are in a virtual camera: read in the truth's camera, with a warning; ``null`` is an
    error in both the evaluator and the column reward."""
    from av_grounding.evaluation.frames import EvaluationError, EvaluationWarning, load_frames

    truth = [{"label": "car", "bbox_3d": [1.0, 1.0, 20.0, 4.5, 1.9, 1.6, 0.0, 0.3, 0.0]}]
    gt, pred = tmp_path / "gt", tmp_path / "pred"
    gt.mkdir(), pred.mkdir()
    (gt / "a.json").write_text(json.dumps({"annotations": truth, "camera_params": {"fx": 500, "fy": 500, "cx": 320,
                                           "cy": 180}, "width": 640, "height": 360,
                                           "virtual_camera": {"focal_per_height": 1.0, "scale": 2.0}}))
    scaled = json.dumps([{**truth[0], "bbox_3d": [2.0, 2.0, 40.0, *truth[0]["bbox_3d"][3:]]}])
    (pred / "a.json").write_text(json.dumps({"raw_text": scaled}))
    with pytest.warns(EvaluationWarning, match="read in the truth's virtual camera"):
        (frame,) = load_frames(gt, pred, "cosmos")
    np.testing.assert_allclose(frame.pred.centres, frame.gt.centres)
    assert column_reward(gt, pred, "cosmos")["total"] == pytest.approx(RewardConfig().maximum)
    (pred / "a.json").write_text(json.dumps({"raw_text": scaled, "virtual_camera": None}))
    with pytest.raises(EvaluationError, match="positive 'scale'"):
        load_frames(gt, pred, "cosmos")
    with pytest.raises(ValueError, match="positive 'scale'"):
        column_reward(gt, pred, "cosmos")


def test_the_rewards_end_ids_are_the_generation_configs_and_the_tokenizers(start):
    from av_grounding.training.grpo import end_ids

    loaded = load_model(start / "train" / "model")
    loaded.model.generation_config.eos_token_id = [151645, 151643]
    assert end_ids(loaded) == {151645, 151643}
    loaded.model.generation_config.eos_token_id = None
    assert end_ids(loaded) >= {151645}


def test_rl_params_refuse_a_zero_temperature_and_take_null_or_string_reward_fields(tmp_path):
    from av_grounding.params import load

    params = tmp_path / "params.yaml"
    params.write_text("rl:\n  reward: {max_answer_tokens: null, codec: qwen3vl, iou_weight: 0.5, centre_weight: 0.4}\n")
    loaded = load(RLParams, "rl", params)
    assert RewardConfig.from_mapping(dict(loaded.reward)).max_answer_tokens is None
    with pytest.raises(ParamsError, match=r"rl\.temperature = 0\.0"):
        load(RLParams, "rl", params, {"temperature": 0})
