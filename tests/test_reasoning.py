"""infer.reasoning: each model's published reasoning instruction in the message that model expects
(chosen by config.model_type), and answers of both reasoning forms read with the draft never
scored. No model is trained or run: prompts are rendered with the built-in tokenizer, generation
is replaced by hand-written answers."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest
from PIL import Image

from av_grounding.dataset.formats import Sample, conversation, write_cosmos
from av_grounding.dataset.prompts import load_prompts
from av_grounding.evaluation.parse import box_scores, parse_answer
from av_grounding.models.builtin import builtin_config, task_tokenizer
from av_grounding.models.generate import Generated
from av_grounding.models.inputs import Encoder
from av_grounding.models.loading import LoadedModel
from av_grounding.models.reasoning import instruction_for, load_instructions, model_type_of, with_instruction
from av_grounding.params import FormatParams, InferParams, ParamsError
from av_grounding.pipeline import infer as stage
from av_grounding.pipeline.infer import column_instruction, infer, prediction_record

REPO = Path(__file__).resolve().parents[1]
INSTRUCTIONS = REPO / "prompts" / "reasoning.yaml"
PROMPTS = load_prompts(REPO / "prompts" / "av_grounding.yaml")
SAMPLE = Sample("f0", Path("f0.jpg"), PROMPTS.system, PROMPTS.user, "[]")

BOX = '{"bbox_3d":[1,2,3,4,5,6,0,0.5,0],"label":"car"}'
DRAFT = '{"bbox_3d":[9,9,9,4,5,6,0,0.5,0],"label":"bus"}'


@pytest.fixture(scope="module")
def tokenizer():
    return task_tokenizer(PROMPTS.system, PROMPTS.user)


def rendered(tokenizer, sample: Sample) -> str:
    """The prompt as the model gets it, through the one place that renders prompts."""
    ids = Encoder(tokenizer, None, 1, 1, 8192).text(sample, 2, with_answer=False).input_ids
    return tokenizer.decode(ids, skip_special_tokens=False)


# --- the instructions and where they go ---------------------------------------------------------

def test_the_instructions_file_holds_each_models_published_text():
    instructions = load_instructions(INSTRUCTIONS)
    assert {key: i.place for key, i in instructions.items()} == {"qwen2_5_vl": "system", "qwen3_vl": "user"}
    cr1, cr2 = instructions["qwen2_5_vl"].text, instructions["qwen3_vl"].text
    assert cr1.startswith("Answer the question with provided options in the following format:\n<think>\n")
    assert cr1.endswith("</think>\n\n<answer>\nyour answer\n</answer>.")
    assert cr2.startswith("Answer the question using the following format:\n\n<think>\nYour reasoning.\n</think>\n")
    assert cr2.endswith("Write your final answer immediately after the </think> tag.")


def test_cosmos_reason_1_gets_the_addon_after_its_system_prompt(tokenizer):
    instruction = instruction_for("model", builtin_config("tiny-qwen2_5_vl").model_type, INSTRUCTIONS)
    prompted = with_instruction(SAMPLE, instruction)
    assert prompted.system == f"{PROMPTS.system}\n\n{instruction.text}" and prompted.user == PROMPTS.user
    text = rendered(tokenizer, prompted)
    assert f"<|im_start|>system\n{PROMPTS.system}\n\n{instruction.text}<|im_end|>" in text
    assert text.count("<think>") == 1 and f"{PROMPTS.user}<|im_end|>\n<|im_start|>assistant\n" in text


def test_cosmos_reason_2_gets_the_addon_after_its_user_prompt(tokenizer):
    instruction = instruction_for("model", builtin_config("tiny-qwen3_vl").model_type, INSTRUCTIONS)
    prompted = with_instruction(SAMPLE, instruction)
    assert prompted.user == f"{PROMPTS.user}\n\n{instruction.text}" and prompted.system == PROMPTS.system
    text = rendered(tokenizer, prompted)
    assert f"<|im_start|>system\n{PROMPTS.system}<|im_end|>" in text
    assert text.endswith(f"<|vision_end|>{PROMPTS.user}\n\n{instruction.text}<|im_end|>\n<|im_start|>assistant\n")


def test_joining_follows_each_models_script():
    """Cosmos Reason 1 right-strips both parts; Cosmos Reason 2 strips the user prompt."""
    cr1, cr2 = (instruction_for("model", t, INSTRUCTIONS) for t in ("qwen2_5_vl", "qwen3_vl"))
    padded = dataclasses.replace(SAMPLE, system="System. \n", user="\n  Find cars.  \n")
    assert with_instruction(padded, cr1).system == f"System.\n\n{cr1.text}"
    assert with_instruction(padded, cr2).user == f"Find cars.\n\n{cr2.text}"
    assert with_instruction(dataclasses.replace(SAMPLE, system=""), cr1).system == cr1.text


def test_the_model_is_known_by_its_config_never_by_its_name(tmp_path):
    folder = tmp_path / "Cosmos-Reason2-8B"  # a Cosmos Reason 1 model in a misleadingly named folder
    builtin_config("tiny-qwen2_5_vl").save_pretrained(folder)
    assert model_type_of(folder) == "qwen2_5_vl"
    assert column_instruction(InferParams(reasoning="model"), str(folder)).place == "system"
    with pytest.raises(ParamsError, match=r"no-model: cannot read the model's config.json"):
        model_type_of(tmp_path / "no-model")


def test_none_sends_the_prompts_byte_identical(tokenizer):
    assert InferParams().reasoning == "none"
    assert column_instruction(InferParams(), "no/such/model") is None  # nothing is read
    assert with_instruction(SAMPLE, instruction_for("none", "qwen2_5_vl", "no/such.yaml")) is SAMPLE
    assert rendered(tokenizer, with_instruction(SAMPLE, None)).encode() == rendered(tokenizer, SAMPLE).encode()


def test_bad_instructions_and_prompts_are_errors_naming_the_problem(tmp_path):
    with pytest.raises(ParamsError, match=r"reasoning.yaml: no reasoning instruction for model_type 'llava'"):
        instruction_for("model", "llava", INSTRUCTIONS)
    bad = tmp_path / "reasoning.yaml"
    bad.write_text("qwen3_vl:\n  place: assistant\n  text: think\n")
    with pytest.raises(ParamsError, match=rf"{bad}: 'qwen3_vl': needs 'place': one of system, user"):
        load_instructions(bad)
    with pytest.raises(ParamsError, match=r"missing.yaml \(infer.reasoning\): cannot read"):
        load_instructions(tmp_path / "missing.yaml")
    asks_already = dataclasses.replace(SAMPLE, user="Think in <think></think> first.")
    with pytest.raises(ParamsError, match="sample f0: the prompt already asks for <think>"):
        with_instruction(asks_already, instruction_for("model", "qwen3_vl", INSTRUCTIONS))


# --- reading answers of both forms ----------------------------------------------------------------

@pytest.mark.parametrize("text, labels, status", [
    # Cosmos Reason 1: <think> then <answer>; only the inside of <answer> is read
    (f"<think>\nA car ahead, maybe {DRAFT}?\n</think>\n\n<answer>\n[{BOX}]\n</answer>.", ["car"], "ok"),
    (f"<think>\n```json\n[{DRAFT}]\n```\n</think>\n<answer>\n```json\n[{BOX}]\n```\n</answer>", ["car"], "ok"),
    (f"<think>I will write <answer>[{DRAFT}]</answer></think>\n<answer>[{BOX}]</answer>", ["car"], "ok"),
    # the answer tag missing: what follows </think>; a draft's <answer> is still the draft's
    (f"<think>I will write <answer>[{DRAFT}]</answer></think>\n[{BOX}]", ["car"], "ok"),
    (f"<think>x</think>\n<answer>\n[{BOX}]\n", ["car"], "ok"),
    (f'<think>x</think><answer>[{BOX}, {{"bbox_3d":[1,2', ["car"], "repaired"),
    # Cosmos Reason 2: <think> then the answer
    (f"<think>\nThe bus: [{DRAFT}]\n</think>\n\n[{BOX}]", ["car"], "ok"),
    (f"  <think>\n\n  [{DRAFT}]  \n </think>   \n\n ```json\n [{BOX}] \n```  \n\n", ["car"], "ok"),
    (f"[{DRAFT}]</think>[{BOX}]", ["car"], "ok"),  # a draft whose <think> the template opened
    # reasoning without an answer, or cut off while reasoning: failed, the draft's JSON unread
    (f"<think>[{DRAFT}]</think>", [], "failed"),
    (f"<think>[{DRAFT}]</think><answer></answer>", [], "failed"),
    (f"<think>\nThe bus: [{DRAFT}]", [], "failed"),
    (f"[{BOX}]\n<think>more", [], "failed"),
    (f"<think>a</think>[{BOX}]<think>b", [], "failed"),
    # plain answers as before
    (f"[{BOX}]", ["car"], "ok"),
    (f"  \n[{BOX}]\n  ", ["car"], "ok"),
])
def test_answers_of_both_forms_score_the_answer_only(text, labels, status):
    parsed = parse_answer(text)
    assert [b["label"] for b in parsed.boxes] == labels and parsed.status == status
    if status == "failed":
        assert not parsed.valid_json


def test_the_answer_region_starts_after_the_draft():
    text = f"<think>[{DRAFT}]</think>\n<answer>[{BOX}]</answer>."
    start, end = parse_answer(text).region
    assert text[start:end] == f"[{BOX}]"
    assert parse_answer(f"[{BOX}]").region == (0, len(BOX) + 2)


# --- confidence from the answer's tokens only -------------------------------------------------------

def test_box_confidence_ignores_the_drafts_tokens_even_without_a_span():
    text = f"<think>[{BOX}]</think>[{BOX}]"
    answer_start = text.index("</think>") + len("</think>")
    ends = [answer_start, len(text)]  # one "token" of draft, one of answer
    parsed = parse_answer(text)
    assert box_scores(parsed, text, ends, [math.log(0.01), math.log(0.8)]) == pytest.approx([0.8])
    parsed.boxes[0]["span"] = None  # span unknown: the whole answer, still not the draft
    assert box_scores(parsed, text, ends, [math.log(0.01), math.log(0.8)]) == pytest.approx([0.8])


@pytest.mark.parametrize("form", ["{}</think>\n\n[{}]", "{}</think>\n<answer>\n[{}]\n</answer>"])
def test_prediction_scores_use_answer_tokens_with_a_real_tokenizer(tokenizer, form):
    """The draft holds the very same box text; its tokens are made unlikely, the answer's likely."""
    text = form.format(f"<think>\nA car: [{BOX}]\n", BOX)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    draft_end = text.index("</think>")
    ends = [len(tokenizer.decode(ids[: i + 1], skip_special_tokens=False)) for i in range(len(ids))]
    logprobs = [-5.0 if end <= draft_end else -0.1 for end in ends]
    record = prediction_record(text, ids, logprobs, tokenizer, {"setting": "model"})
    assert record["annotations"][0]["label"] == "car" and record["scores"] == pytest.approx([math.exp(-0.1)])
    assert record["reasoning"] == {"setting": "model"} and record["parse_status"] == "ok"


# --- the infer stage: prompts sent, manifests, prediction files ------------------------------------

def stage_inputs(folder: Path, config, user: str = PROMPTS.user) -> tuple[Path, Path]:
    """(dataset, train) folders for `infer`: a one-frame evaluation split in the Cosmos-RL layout
    and a training run whose final model is only a config.json (generation is replaced)."""
    dataset, train = folder / "dataset", folder / "train"
    (dataset / "eval" / "images").mkdir(parents=True)
    Image.new("RGB", (56, 56)).save(dataset / "eval" / "images" / "f0.jpg")
    write_cosmos(dataset / "eval",
                 [("f0", {"annotations": []}, conversation("images/f0.jpg", PROMPTS.system, user, "[]"))])
    config.save_pretrained(train / "model")
    (train / "run.json").write_text(json.dumps({"base": str(train / "model"), "steps": 0, "inputs_sha256": "x"}))
    return dataset, train


@pytest.mark.parametrize("model_type, user, error", [
    ("qwen2_vl", PROMPTS.user, "reasoning.yaml: no reasoning instruction for model_type 'qwen2_vl'"),
    ("qwen3_vl", "Think in <think> tags. " + PROMPTS.user, "sample f0: the prompt already asks for <think>"),
], ids=["no_instruction", "prompt_asks_already"])
def test_infer_refuses_what_it_cannot_ask_before_any_work(tmp_path, monkeypatch, model_type, user, error):
    from transformers import AutoConfig

    monkeypatch.chdir(REPO)  # where stages run: prompts/reasoning.yaml is read from there
    dataset, train = stage_inputs(tmp_path, AutoConfig.for_model(model_type), user)
    with pytest.raises(ParamsError, match=error):
        infer(InferParams(reasoning="model"), FormatParams(), dataset, train, tmp_path / "predictions")
    assert not (tmp_path / "predictions").exists()


def test_infer_sends_the_instruction_records_it_and_reruns_when_it_changes(tokenizer, tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)  # where stages run: prompts/reasoning.yaml is read from there
    dataset, train = stage_inputs(tmp_path, builtin_config("tiny-qwen3_vl"))
    sent: list[Sample] = []
    answer = f"<think>\n[{DRAFT}]\n</think>\n\n[{BOX}]"

    def fake_generate(model, encoder, samples, *args):
        sent.extend(samples)
        ids = tokenizer(answer, add_special_tokens=False)["input_ids"]
        return [Generated(answer, ids, [-0.5] * len(ids)) for _ in samples]

    monkeypatch.setattr(stage, "load_model", lambda *args, **kwargs: LoadedModel(None, tokenizer, None))
    monkeypatch.setattr(stage, "generate", fake_generate)
    run = lambda reasoning: infer(InferParams(reasoning=reasoning, zero_shot=False), FormatParams(),  # noqa: E731
                                  dataset, train, tmp_path / "predictions")
    cr2 = load_instructions(INSTRUCTIONS)["qwen3_vl"]

    assert run("none")["final"]["frames_resumed"] == 0 and sent[-1].user == PROMPTS.user
    assert run("model")["final"]["frames_resumed"] == 0  # another setting: answered again
    assert sent[-1].user == f"{PROMPTS.user}\n\n{cr2.text}" and sent[-1].system == PROMPTS.system
    assert run("model")["final"]["frames_resumed"] == 1 and len(sent) == 2  # the same: reused
    manifest = json.loads((tmp_path / "predictions" / "manifests" / "final.json").read_text())
    assert manifest["reasoning"] == {"setting": "model", "model_type": "qwen3_vl", "place": "user", "text": cr2.text}
    record = json.loads((tmp_path / "predictions" / "final" / "f0.json").read_text())
    assert record["reasoning"] == {"setting": "model", "model_type": "qwen3_vl", "place": "user"}
    assert [b["label"] for b in record["annotations"]] == ["car"] and record["raw_text"] == answer
