"""Tiny models, batches, and the hf backend: overfitting proves labels, masks, multimodal
positions and generation agree; a killed run resumes to the same weights."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import TINY, TRAINING_FORMAT, format_for, safetensors_weights
from torch.utils._python_dispatch import TorchDispatchMode

from av_grounding import numerics
from av_grounding.dataset.formats import conversation, read_cosmos, write_cosmos
from av_grounding.dataset.prompts import load_prompts
from av_grounding.models.builtin import BUILTIN_MODELS, SPECIAL_TOKENS, build_builtin, split_name
from av_grounding.models.generate import generate
from av_grounding.models.inputs import IGNORE, Encoder, answer_loss, collate
from av_grounding.models.loading import load_model
from av_grounding.params import ParamsError, TrainParams
from av_grounding.pipeline.train import LaunchError, train
from av_grounding.storage import is_partial
from av_grounding.training.loop import STATE_FILE

from test_extract import tree_digest

REPO = Path(__file__).resolve().parents[1]
FORMAT = TRAINING_FORMAT


@pytest.fixture(scope="module")
def few(dataset, tmp_path_factory):
    """Three training samples: the two shortest answers with vehicles, one without."""
    samples = read_cosmos(dataset / "train")
    with_vehicles = sorted((s for s in samples if s.answer != "[]"), key=lambda s: (len(s.answer), s.id))
    chosen = with_vehicles[:2] + [s for s in samples if s.answer == "[]"][:1]
    folder = tmp_path_factory.mktemp("few") / "train"
    (folder / "images").mkdir(parents=True)
    for s in chosen:
        shutil.copy(s.image, folder / "images" / f"{s.id}.jpg")
    write_cosmos(folder, [(s.id, {}, conversation(f"images/{s.id}.jpg", s.system, s.user, s.answer)) for s in chosen])
    return folder.parent


@pytest.fixture(scope="module", params=TINY)
def tiny(request, tmp_path_factory):
    prompts = load_prompts(FORMAT.prompts)
    folder = tmp_path_factory.mktemp(request.param)
    return build_builtin(request.param, folder, 0, prompts.system, prompts.user, FORMAT.min_pixels, FORMAT.max_pixels)


def test_tiny_model_loads_through_auto_classes_with_qwen_special_ids(tiny):
    loaded = load_model(tiny)
    assert type(loaded.model).__name__ in ("Qwen2_5_VLForConditionalGeneration", "Qwen3VLForConditionalGeneration")
    for token, index in SPECIAL_TOKENS.items():
        assert loaded.tokenizer.convert_tokens_to_ids(token) == index
    assert loaded.model.config.image_token_id == SPECIAL_TOKENS["<|image_pad|>"]


def test_a_lora_checkpoint_merges_a_host_copy_and_the_final_model_merges_in_place(tiny):
    """A checkpoint's merge leaves the model in training untouched and shares no storage with it
    (the copy is made in host memory); it holds the same tensors as the final in-place merge."""
    from av_grounding.training.hf import _merged, trainable_parameters

    model = trainable_parameters(load_model(tiny).model, TrainParams(lora=True))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:  # zero at the start: a merge would change nothing
                p.normal_(0, 0.1, generator=torch.Generator().manual_seed(len(name)))
    live = {name: p.detach().clone() for name, p in model.named_parameters()}
    checkpoint = _merged(model)
    assert not any("lora" in name for name, _ in checkpoint.named_parameters())
    assert all(torch.equal(p, live[name]) for name, p in model.named_parameters())  # adapters kept, unchanged
    pointers = {p.data_ptr() for p in model.parameters()}
    assert not pointers & {p.data_ptr() for p in checkpoint.parameters()}
    final = _merged(model, in_place=True)
    ours, theirs = checkpoint.state_dict(), final.state_dict()
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    base = {k.removeprefix("base_model.model.").replace(".base_layer", ""): v
            for k, v in live.items() if "lora_" not in k}
    assert base.keys() <= ours.keys() and not all(torch.equal(ours[k], base[k]) for k in base)  # adapters merged


def test_a_resumed_optimizer_keeps_the_fused_update_of_an_older_checkpoint():
    """Checkpoints written before the fused AdamW saved ``fused: False``; resuming keeps fused, and
    torch gets the flags with the state (it places each loaded ``step`` by them: on a GPU, beside
    the parameters for the fused update; a CPU cannot show the placement, so the state is checked)."""
    from av_grounding.training.hf import load_optimizer_state

    weight = torch.nn.Parameter(torch.ones(3))
    old = torch.optim.AdamW([weight], lr=1e-3, foreach=False)
    weight.grad = torch.ones(3)
    old.step()
    optimizer = torch.optim.AdamW([weight], lr=1e-3, fused=True)
    loaded = []
    torch_load = optimizer.load_state_dict
    optimizer.load_state_dict = lambda state: (loaded.append(state), torch_load(state))[1]
    load_optimizer_state(optimizer, old.state_dict())
    assert optimizer.param_groups[0]["fused"] and not optimizer.param_groups[0]["foreach"]
    assert [group["fused"] for group in loaded[0]["param_groups"]] == [True]
    assert torch.equal(optimizer.state[weight]["exp_avg"], old.state[weight]["exp_avg"])


def trl_training_template(model_type: str) -> str:
    """TRL's training variant of the published template ({% generation %} around the assistant turn)."""
    import importlib.util

    folder = Path(importlib.util.find_spec("trl").submodule_search_locations[0]) / "chat_templates"
    return (folder / f"{model_type}_training.jinja").read_text()


def test_labels_are_the_assistant_mask_of_trls_training_template(tiny, few):
    """An independent reference for the labels: TRL's training template marks the assistant turn
    (answer, <|im_end|> and its newline); the labels are that mask without the newline."""
    from av_grounding.models.inputs import messages_of

    loaded = load_model(tiny)
    encoder = Encoder(loaded.tokenizer, loaded.image_processor, FORMAT.min_pixels, FORMAT.max_pixels, 4096)
    newline = loaded.tokenizer("\n", add_special_tokens=False)["input_ids"]
    for sample in read_cosmos(few / "train"):
        encoded = encoder.encode(sample)
        templated = loaded.tokenizer.apply_chat_template(
            messages_of(sample, True), tokenize=True, return_dict=True, return_assistant_tokens_mask=True,
            chat_template=trl_training_template(loaded.model.config.model_type))
        mask = list(templated["assistant_masks"])
        assert templated["input_ids"][-1:] == newline and mask[-1] == 1
        mask[-1] = 0
        # The template holds one image placeholder; the encoder expands it to the image's tokens.
        image_tokens = encoded.input_ids.count(encoder.image_pad)
        expanded = [m for i, m in zip(templated["input_ids"], mask)
                    for _ in range(image_tokens if i == encoder.image_pad else 1)]
        assert [label != IGNORE for label in encoded.labels] == [bool(m) for m in expanded]
        assert image_tokens == int(encoded.image_grid_thw.prod()) // 4


def test_left_padding_for_generation(tiny, few):
    loaded = load_model(tiny)
    encoder = Encoder(loaded.tokenizer, loaded.image_processor, FORMAT.min_pixels, FORMAT.max_pixels, 4096)
    encoded = [encoder.encode(s, with_answer=False) for s in read_cosmos(few / "train")]
    batch = collate(encoded, loaded.tokenizer.pad_token_id, encoder.image_pad, left_pad=True)
    assert (batch["attention_mask"][:, -1] == 1).all()
    assert int(batch["mm_token_type_ids"].sum()) == sum(e.input_ids.count(encoder.image_pad) for e in encoded)


def test_answer_loss_equals_the_cross_entropy_of_full_logits(tiny, few):
    """Logits at the labelled pairs only give the mean cross-entropy that every position's logits
    give with the unlabelled ones ignored, and the same gradients, also through a peft wrapper
    and a ``module`` wrapper (as DDP and DeepSpeed wrap); the output layer keeps no hook."""
    from peft import LoraConfig, get_peft_model

    from av_grounding.models.inputs import output_layer

    loaded = load_model(tiny)
    encoder = Encoder(loaded.tokenizer, loaded.image_processor, FORMAT.min_pixels, FORMAT.max_pixels, 4096)
    batch = collate([encoder.encode(s) for s in read_cosmos(few / "train")], loaded.tokenizer.pad_token_id,
                    encoder.image_pad)
    assert len({int((row != IGNORE).sum()) for row in batch["labels"]}) > 1  # answers of different lengths
    head = output_layer(loaded.model)

    def loss_and_gradient(loss: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        loaded.model.zero_grad(set_to_none=True)
        loss.backward()
        return loss.detach(), head.weight.grad.clone()

    logits = loaded.model(**{k: v for k, v in batch.items() if k != "labels"}).logits[:, :-1]
    full = loss_and_gradient(torch.nn.functional.cross_entropy(
        logits.flatten(0, 1).float(), batch["labels"][:, 1:].flatten(), ignore_index=IGNORE))
    del logits
    mine = loss_and_gradient(answer_loss(loaded.model, batch))
    torch.testing.assert_close(mine[0], full[0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(mine[1], full[1], rtol=1e-4, atol=1e-7)
    assert not head._forward_pre_hooks
    wrapped = get_peft_model(loaded.model, LoraConfig(r=2, target_modules=["q_proj"]))  # B = 0: the same model
    holder = torch.nn.Module()
    holder.module = wrapped
    assert output_layer(holder) is output_layer(wrapped) is head
    with torch.no_grad():
        torch.testing.assert_close(answer_loss(wrapped, batch), full[0], rtol=1e-5, atol=1e-6)


def test_positions_computed_on_the_host_are_the_models_own(tiny, few):
    """``with_host_positions`` (what the training step adds to each micro-batch before it goes to
    the device) gives the rotary positions and logit columns the forward computes itself, hence
    the same loss bit for bit, padded or not; the model reads the positions it gets; a peft
    wrapper finds the same function; positions already there are kept."""
    from peft import LoraConfig, get_peft_model

    from av_grounding.models.inputs import rope_index_owner, with_host_positions

    loaded = load_model(tiny)
    encoder = Encoder(loaded.tokenizer, loaded.image_processor, FORMAT.min_pixels, FORMAT.max_pixels, 4096)
    encoded = [encoder.encode(s) for s in read_cosmos(few / "train")]
    owner = rope_index_owner(loaded.model)
    assert owner is not None
    for multiple in (1, 64):
        batch = collate(encoded, loaded.tokenizer.pad_token_id, encoder.image_pad, multiple=multiple)
        given = with_host_positions(owner, batch)
        assert given["position_ids"].shape == (3, *batch["input_ids"].shape)
        labelled = (batch["labels"][:, 1:] != IGNORE).any(dim=0)  # independent of logit_columns
        assert labelled[given["logit_positions"]].all() and len(given["logit_positions"]) == int(labelled.sum())
        pairs = [(row, column) for row in range(len(encoded)) for column in range(batch["input_ids"].shape[1] - 1)
                 if batch["labels"][row, column + 1] != IGNORE]
        columns = given["logit_positions"].tolist()
        assert given["logit_pairs"].tolist() == [row * len(columns) + columns.index(c) for row, c in pairs]
        wrong = {**given, "position_ids": torch.zeros_like(given["position_ids"])}  # the model reads what it gets
        with torch.no_grad():
            own, host, other = (answer_loss(loaded.model, b) for b in (batch, given, wrong))
        assert torch.equal(own, host) and not torch.equal(own, other)
    wrapped = get_peft_model(loaded.model, LoraConfig(r=2, target_modules=["q_proj"]))
    assert rope_index_owner(wrapped) is owner
    assert set(with_host_positions(None, batch)) == set(batch) | {"logit_positions", "logit_pairs"}
    assert with_host_positions(owner, given)["position_ids"] is given["position_ids"]


def test_padding_to_a_multiple_changes_neither_the_loss_nor_the_model_flops(tiny, few):
    """``train.pad_to_multiple_of``: rows padded to a multiple of 64 tokens (masked, unlabelled)
    give the loss of the unpadded batch up to float rounding, and the same model FLOPs (each row
    counts its own tokens); the work the device does (``padding=True``) grows."""
    from av_grounding.models.flops import counts_of_batch, training_flops
    from av_grounding.training.data import padding_multiple

    loaded = load_model(tiny)
    encoder = Encoder(loaded.tokenizer, loaded.image_processor, FORMAT.min_pixels, FORMAT.max_pixels, 4096)
    encoded = [encoder.encode(s) for s in read_cosmos(few / "train")]
    plain, padded = (collate(encoded, loaded.tokenizer.pad_token_id, encoder.image_pad, multiple=m) for m in (1, 64))
    width = max(len(e.input_ids) for e in encoded)
    assert plain["input_ids"].shape[1] == width and padded["input_ids"].shape[1] == -(-width // 64) * 64 > width
    assert torch.equal(padded["attention_mask"].sum(1), plain["attention_mask"].sum(1))
    assert (padded["labels"][:, width:] == IGNORE).all()
    with torch.no_grad():
        losses = [answer_loss(loaded.model, batch) for batch in (plain, padded)]
    torch.testing.assert_close(losses[1], losses[0], rtol=1e-5, atol=1e-6)
    config = loaded.model.config
    model_flops = [training_flops(config, counts_of_batch(b, padding=False)).total for b in (plain, padded)]
    assert model_flops[0] == model_flops[1] < training_flops(config, counts_of_batch(padded)).total
    assert (padding_multiple(None, "cuda:0"), padding_multiple(None, "cpu"), padding_multiple(8, "cpu")) == (64, 1, 8)


# A step of the plateau where greedy answers reproduce the targets exactly, under the pinned
# numerics (so on every CPU), its first (each step costs about 0.35 s of the suite): since the loss
# takes logits at the labelled pairs only (2026-12-06), checkpoints every 25 steps of a 150-step
# run first reproduced all three at step 100 (qwen2_5_vl; 1 of 3 at 75) and 125 (qwen3_vl; 1 of 3
# at 100), and both still did at 125. (Before, 125 for both, still at 250 and 200.)
@pytest.mark.slow
@pytest.mark.parametrize("model, steps, lr", [("tiny-qwen2_5_vl", 100, 5e-3), ("tiny-qwen3_vl", 125, 5e-3)])
def test_overfit_until_greedy_generation_reproduces_the_targets(model, steps, lr, few, tmp_path):
    params = TrainParams(model=model, max_steps=steps, batch_size=3, lr=lr, schedule="constant", warmup_ratio=0.0,
                         save_every=0)
    train(params, format_for(model), few, tmp_path / "out", None, tmp_path / "live")
    loaded = load_model(tmp_path / "out" / "model")
    encoder = Encoder(loaded.tokenizer, loaded.image_processor, FORMAT.min_pixels, FORMAT.max_pixels, 4096)
    samples = read_cosmos(few / "train")
    generated = generate(loaded.model, encoder, samples, max_new_tokens=300)
    assert [g.text for g in generated] == [s.answer for s in samples]
    assert (tmp_path / "live" / "plots" / "metrics" / "train" / "loss.tsv").exists()


class OperatorNames(TorchDispatchMode):
    """Records the ATen operators (``sqrt``, ``_foreach_sqrt``, ...; in-place and out variants
    under their base name) that run while it is active."""

    def __init__(self):
        super().__init__()
        self.names: set[str] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.add(func._schema.name.removeprefix("aten::").rstrip("_"))
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("model", TINY)
def test_training_and_generation_call_no_operator_whose_cpu_result_depends_on_the_vendor(model, few, tmp_path):
    """MKL's vector math (``numerics.VENDOR_DEPENDENT_OPS``) gives other bits on Intel than on
    AMD whatever is pinned: neither architecture's training step (the optimizer included) nor
    its generation may reach it."""
    with OperatorNames() as recorder:
        train(TrainParams(model=model, max_steps=2, batch_size=2, save_every=0), format_for(model), few,
              tmp_path / "out", None, tmp_path / "live")
        loaded = load_model(tmp_path / "out" / "model")
        encoder = Encoder(loaded.tokenizer, loaded.image_processor, FORMAT.min_pixels, FORMAT.max_pixels, 4096)
        generate(loaded.model, encoder, read_cosmos(few / "train")[:2], max_new_tokens=4)
    seen = recorder.names
    forbidden = {prefix + name for name in numerics.VENDOR_DEPENDENT_OPS for prefix in ("", "_foreach_")}
    assert "mm" in seen and "addmm" in seen, sorted(seen)  # the recorder saw the model run
    assert not seen & forbidden, f"vendor-dependent operators called: {sorted(seen & forbidden)}"
    assert "_fused_adamw" in seen, sorted(seen)


@pytest.mark.parametrize("model", TINY)
def test_timing_reports_model_flops_counted_from_each_steps_batches(model, few, tmp_path, monkeypatch):
    """The timing file's model TFLOP/s are the FLOPs of the batches each step trained
    (``training_flops`` of every micro-batch, recomputed here from what the loader yielded) per
    second of step time; checkpointing's recomputation apart (of the share of decoder layers
    checkpointed: here one of two); none of it in the metrics."""
    from transformers import AutoConfig

    from av_grounding.models.flops import counts_of_batch, training_flops
    from av_grounding.pipeline import reporting
    from av_grounding.training import hf

    yielded, records = [], []
    real_loader, real_record = hf.step_loader, reporting.timing_record

    def recording_loader(*args, **kwargs):
        for batch in real_loader(*args, **kwargs):
            yielded.append(batch)
            yield batch

    def recording_record(results, *args):
        records.append(list(results))
        return real_record(results, *args)

    monkeypatch.setattr(hf, "step_loader", recording_loader)
    monkeypatch.setattr(reporting, "timing_record", recording_record)
    params = TrainParams(model=model, max_steps=2, batch_size=1, grad_accum=2, save_every=0,
                         gradient_checkpointing=True, checkpoint_fraction=0.5)
    summary = train(params, format_for(model), few, tmp_path / "out", tmp_path / "train.json", tmp_path / "live",
                    tmp_path / "timing.json")
    config = AutoConfig.from_pretrained(tmp_path / "out" / "model")
    (results,) = records
    assert len(yielded) == 4 and [r.step for r in results] == [1, 2]
    for index, result in enumerate(results):
        counts = [counts_of_batch(b, padding=False) for b in yielded[2 * index:][:2]]
        expected = [training_flops(config, c, checkpointing=True, checkpoint_fraction=0.5) for c in counts]
        every_layer = sum(training_flops(config, c, checkpointing=True).recomputed for c in counts)
        assert result.flops == sum(f.total for f in expected) > 0
        assert 0 < result.recomputed_flops == sum(f.recomputed for f in expected) < every_layer
    timing = json.loads((tmp_path / "timing.json").read_text())
    seconds = sum(r.seconds for r in results)
    assert timing["model_tflops_per_s"] > 0
    # 4 significant digits, then the 6 decimals every stored float keeps (storage.canonical)
    assert timing["model_tflops_per_s"] == pytest.approx(sum(r.flops for r in results) / seconds / 1e12,
                                                         rel=1e-3, abs=1e-6)
    assert timing["recompute_tflops_per_s"] == pytest.approx(
        sum(r.recomputed_flops for r in results) / seconds / 1e12, rel=1e-3, abs=1e-6)
    assert len(timing["per_step"]["model_tflops_per_s"]) == 2 and "process" in timing["tflops_per_s_of"]
    assert "device" not in timing and "mfu_datasheet" not in timing  # a CPU run
    metrics = json.loads((tmp_path / "train.json").read_text())
    assert not any("flops" in key for key in [*summary, *metrics])


def test_timing_record_rates_and_datasheet_mfu():
    from av_grounding.models.flops import DATASHEET_BF16
    from av_grounding.pipeline.reporting import timing_record
    from av_grounding.training.loop import StepResult

    steps = [StepResult(1, 1.0, 1.0, 1e-3, 3.0, 4, 100, 6e12, 2e12), StepResult(2, 1.0, 1.0, 1e-3, 1.0, 4, 100, 2e12)]
    record = timing_record(steps, 5.0, "NVIDIA H200", DATASHEET_BF16["NVIDIA H200"])
    assert record["model_tflops_per_s"] == 2.0 and record["recompute_tflops_per_s"] == 0.5
    assert record["per_step"]["model_tflops_per_s"] == [2.0, 2.0]
    assert record["device"] == "NVIDIA H200" and record["mfu_datasheet"] == round(2e12 / 989e12, 4)
    uncounted = timing_record([StepResult(1, 1.0, 1.0, 1e-3, 2.0, 4)], 2.0)  # cosmos-rl's steps
    assert uncounted["model_tflops_per_s"] is None and uncounted["per_step"]["model_tflops_per_s"] == [None]
    assert not {"recompute_tflops_per_s", "tflops_per_s_of", "device", "mfu_datasheet"} & set(uncounted)


def final_weights(folder: Path) -> dict[str, torch.Tensor]:
    return safetensors_weights(folder / "model")


def test_a_curve_a_kill_left_behind_is_cut_back_to_the_checkpoint(tmp_path):
    """The dead run logged steps 0-4 after its checkpoint at step 3 (the last row cut off) and
    left the summary empty, as a kill during DVCLive's writes does: resuming after 3 steps keeps
    rows 0-2, opens DVCLive (which would fail on the empty summary) and appends step 3."""
    from av_grounding.pipeline.reporting import open_live

    curve = tmp_path / "live" / "plots" / "metrics" / "train"
    curve.mkdir(parents=True)
    (curve / "loss.tsv").write_text("step\tloss\n0\t1.5\n1\t1.25\n2\t1.0\n3\t0.75\n4\t0.")
    (tmp_path / "live" / "metrics.json").write_text("")
    live = open_live(tmp_path / "live", 3)
    live.step = 3
    live.log_metric("train/loss", 0.5)
    live.next_step()
    live.end()
    assert (curve / "loss.tsv").read_text().splitlines() == ["step\tloss", "0\t1.5", "1\t1.25", "2\t1.0", "3\t0.5"]
    assert json.loads((tmp_path / "live" / "metrics.json").read_text())["step"] == 3


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_weights(few, tmp_path):
    params_file = tmp_path / "params.yaml"
    params_file.write_text(f"format:\n  prompts: {FORMAT.prompts}\n")
    command = [sys.executable, str(REPO / "stages" / "train.py"), "--params", str(params_file),
               "--dataset", str(few), "--max-steps", "10", "--save-every", "3", "--keep-checkpoints", "2",
               "--batch-size", "1",
               "--metrics", str(tmp_path / "m.json"), "--timing", str(tmp_path / "timing.json")]
    subprocess.run(command + ["--output", str(tmp_path / "straight"), "--live", str(tmp_path / "live1")],
                   check=True, capture_output=True)
    run = subprocess.Popen(command + ["--output", str(tmp_path / "killed"), "--live", str(tmp_path / "live2")],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not list((tmp_path / "killed" / "checkpoints").glob("step_*/trainer_state.pt")):
        assert time.monotonic() < deadline and run.poll() is None
        time.sleep(0.05)
    run.kill()
    run.wait()
    assert not (tmp_path / "killed" / "model").exists(), "the run finished before it could be killed"
    subprocess.run(command + ["--output", str(tmp_path / "killed"), "--live", str(tmp_path / "live2")],
                   check=True, capture_output=True)
    curves = [(tmp_path / live / "plots" / "metrics" / "train" / "loss.tsv").read_text().splitlines()
              for live in ("live1", "live2")]
    assert [row.split("\t")[0] for row in curves[1]] == [row.split("\t")[0] for row in curves[0]]  # no gap, no repeat
    straight, resumed = final_weights(tmp_path / "straight"), final_weights(tmp_path / "killed")
    assert straight.keys() == resumed.keys()
    for name in straight:
        torch.testing.assert_close(resumed[name], straight[name], atol=1e-6, rtol=0)
    assert not [p for p in (tmp_path / "killed").rglob(".*") if is_partial(p)]
    # Of the checkpoints at steps 3, 6 and 9 the newest two stay, the resumable state in the newest.
    for folder in ("killed", "straight"):
        kept = sorted((tmp_path / folder / "checkpoints").iterdir())
        assert [p.name for p in kept] == ["step_000006", "step_000009"]
        assert [(p / STATE_FILE).exists() for p in kept] == [False, True]
    # Every other file the same bytes; run.json names its own base folder; the optimizer state
    # the same content (torch.save writes a random serialization id and pickles shared strings
    # by identity, so its bytes differ from save to save).
    resumed_files, straight_files = tree_digest(tmp_path / "killed"), tree_digest(tmp_path / "straight")
    state = next(name for name in straight_files if name.endswith(STATE_FILE))
    volatile = {"run.json", state}
    assert {k: v for k, v in resumed_files.items() if k not in volatile} == {
        k: v for k, v in straight_files.items() if k not in volatile}
    runs = [json.loads((tmp_path / folder / "run.json").read_text()) for folder in ("killed", "straight")]
    assert [{**run, "base": Path(run["base"]).name} for run in runs] == [{**runs[1], "base": "base"}] * 2
    states = [torch.load(tmp_path / folder / state, weights_only=False) for folder in ("killed", "straight")]
    assert states[0]["step"] == states[1]["step"] and states[0]["scheduler"] == states[1]["scheduler"]
    assert torch.equal(states[0]["torch_rng"], states[1]["torch_rng"])
    for a, b in zip(states[0]["optimizer"]["state"].values(), states[1]["optimizer"]["state"].values()):
        assert all(torch.equal(a[key], b[key]) for key in a)


def loss_curve(live: Path) -> list[float]:
    rows = (live / "plots" / "metrics" / "train" / "loss.tsv").read_text().splitlines()[1:]
    return [float(row.split("\t")[-1]) for row in rows]


@pytest.mark.slow
def test_two_data_parallel_processes_equal_one_process_accumulating_their_batches(few, tmp_path):
    """`train --gpus 2` (the stage starts itself under torchrun: 2 processes, gloo on this CPU
    machine, NCCL on GPUs) at batch 1 takes the same samples per step as one process at batch 1 x
    grad_accum 2: same losses, same weights, checkpoints written once, by rank 0, and rank 0's
    summary reported."""
    params_file = tmp_path / "params.yaml"
    params_file.write_text(f"format:\n  prompts: {FORMAT.prompts}\n")
    common = [str(REPO / "stages" / "train.py"), "--params", str(params_file), "--dataset", str(few),
              "--max-steps", "4", "--save-every", "2", "--batch-size", "1", "--lr", "0.005"]
    one = [sys.executable, *common, "--grad-accum", "2"]
    two = [sys.executable, *common, "--gpus", "2"]
    for name, command in (("one", one), ("two", two)):
        subprocess.run(command + ["--output", str(tmp_path / name), "--live", str(tmp_path / f"live-{name}"),
                                  "--metrics", str(tmp_path / f"{name}.json"), "--timing",
                                  str(tmp_path / f"{name}-timing.json")], check=True, capture_output=True)
    metrics = {name: json.loads((tmp_path / f"{name}.json").read_text()) for name in ("one", "two")}
    assert (metrics["one"]["processes"], metrics["two"]["processes"]) == (1, 2)
    losses = {name: loss_curve(tmp_path / f"live-{name}") for name in ("one", "two")}
    assert len(losses["two"]) == 4 and losses["two"][-1] < losses["two"][0]
    assert losses["two"] == pytest.approx(losses["one"], rel=1e-5)
    # Adam's first steps move each weight by about lr times the sign of its gradient, so float
    # rounding can flip a near-zero gradient's weight: compare the two runs' difference with the
    # training's own change, over all weights (replicas that did not average would differ by ~1).
    from safetensors.torch import load_file

    start = load_file(str(tmp_path / "one" / "base" / "model.safetensors"))
    single, parallel = final_weights(tmp_path / "one"), final_weights(tmp_path / "two")
    moved = torch.cat([(single[name] - start[name]).flatten() for name in single]).norm()
    apart = torch.cat([(parallel[name] - single[name]).flatten() for name in single]).norm()
    assert moved > 0 and apart / moved < 1e-3
    assert sorted(p.name for p in (tmp_path / "two" / "checkpoints").iterdir()) == ["step_000002"]
    assert (tmp_path / "two" / "checkpoints" / "step_000002" / STATE_FILE).exists()


@pytest.mark.slow
def test_a_failure_under_train_gpus_is_one_error_with_the_processes_status(few, tmp_path, capfd):
    """`dvc exp run -S train.gpus=2` with the hf backend: a failure in the processes the stage
    starts under torchrun is one error with their status (their run:
    ``test_two_data_parallel_processes_equal_one_process_accumulating_their_batches``)."""
    with pytest.raises(LaunchError,
                       match=r"train.gpus 2: the training processes under torchrun exited with status 1"), \
            pytest.warns(UserWarning, match="train.gpus 2 on a machine without GPUs"):
        train(TrainParams(gpus=2, max_steps=2, batch_size=2, save_every=0), FORMAT, few, tmp_path / "bad", None,
              tmp_path / "live-bad")  # 2 processes x 2 samples: more than the 3 training samples
    assert "error: train.batch_size x train.grad_accum x processes = 4 samples a step" in capfd.readouterr().err


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads processes from /proc")
def test_killing_a_train_gpus_launch_ends_torchrun_and_its_processes(few, tmp_path):
    from test_executors import alive, children, wait_for

    params_file = tmp_path / "params.yaml"
    params_file.write_text(f"format:\n  prompts: {FORMAT.prompts}\n")
    main = subprocess.Popen([sys.executable, str(REPO / "stages" / "train.py"), "--params", str(params_file),
                             "--dataset", str(few), "--gpus", "2", "--max-steps", "100000", "--batch-size", "1",
                             "--save-every", "0", "--output", str(tmp_path / "out"), "--live", str(tmp_path / "live"),
                             "--metrics", str(tmp_path / "m.json"), "--timing", str(tmp_path / "timing.json")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    started: list[int] = []
    try:
        started = wait_for(lambda: children(main.pid), "torchrun")
        started += wait_for(lambda: len(found := children(started[0])) >= 2 and found, "two training processes")
        main.send_signal(signal.SIGKILL)
        main.wait(timeout=60)
        wait_for(lambda: not any(alive(pid) for pid in started), f"torchrun and its processes {started} to exit")
    finally:
        main.kill()
        for pid in filter(alive, started):
            os.kill(pid, signal.SIGKILL)


@pytest.mark.slow
def test_a_rerun_with_other_parameters_starts_over_instead_of_resuming(few, tmp_path):
    common = dict(max_steps=4, save_every=2, batch_size=1)
    train(TrainParams(lr=1e-3, **common), FORMAT, few, tmp_path / "fresh", None, tmp_path / "live1")
    train(TrainParams(lr=5e-3, **common), FORMAT, few, tmp_path / "out", None, tmp_path / "live2")
    shutil.rmtree(tmp_path / "out" / "model")  # as if killed after its checkpoint at step 2
    train(TrainParams(lr=1e-3, **common), FORMAT, few, tmp_path / "out", None, tmp_path / "live3")
    fresh, rerun = final_weights(tmp_path / "fresh"), final_weights(tmp_path / "out")
    assert all(torch.equal(rerun[name], fresh[name]) for name in fresh)
    assert json.loads((tmp_path / "out" / "inputs.json").read_text())["train"]["lr"] == 1e-3


def answer_texts(predictions: Path) -> dict[Path, str]:
    """Every answer's text under an `infer` output folder, by path relative to it."""
    return {p.relative_to(predictions): json.loads(p.read_text())["raw_text"]
            for p in sorted(predictions.glob("*/*.json")) if p.parent.name != "manifests"}


@pytest.mark.slow
def test_infer_and_evaluate_write_columns_metrics_and_plots(dataset, tmp_path, monkeypatch):
    from av_grounding.params import EvaluateParams, InferParams
    from av_grounding.pipeline import infer as stage
    from av_grounding.pipeline.evaluate import evaluate
    from av_grounding.pipeline.infer import infer

    caches = []  # the KV cache kind of every generation call
    monkeypatch.setattr(stage, "generate", lambda *args: caches.append(args[-1]) or generate(*args))

    train(TrainParams(max_steps=4, save_every=2, batch_size=2), FORMAT, dataset, tmp_path / "train", None,
          tmp_path / "live")
    summary = infer(InferParams(max_new_tokens=24, batch_size=4), FORMAT, dataset, tmp_path / "train",
                    tmp_path / "predictions", tmp_path / "infer.json", tmp_path / "timing.json")
    assert list(summary) == ["zero_shot", "step_000002", "final"]
    answers = {p: p.read_bytes() for p in sorted((tmp_path / "predictions").rglob("*.json"))}
    metrics = (tmp_path / "infer.json").read_bytes()
    again = infer(InferParams(max_new_tokens=24, batch_size=4), FORMAT, dataset, tmp_path / "train",
                  tmp_path / "predictions", tmp_path / "infer.json", tmp_path / "timing.json")
    # Every frame answered already from the same inputs: a rerun redoes nothing (its timing says
    # so), and its metrics still describe every column's whole output, byte for byte.
    assert {c: (v["frames"], v["frames_resumed"], v["images_per_s"]) for c, v in again.items()} == {
        c: (v["frames"], v["frames"], None) for c, v in summary.items()}
    assert (tmp_path / "infer.json").read_bytes() == metrics
    assert json.loads((tmp_path / "timing.json").read_text())["final"]["frames_resumed"] == summary["final"]["frames"]
    assert {p: p.read_bytes() for p in sorted((tmp_path / "predictions").rglob("*.json"))} == answers
    # The KV cache is one of the inputs: the other kind answers every frame again, the same text.
    assert set(caches) == {"static"}
    shutil.copytree(tmp_path / "predictions", tmp_path / "dynamic")
    dynamic = infer(InferParams(max_new_tokens=24, batch_size=4, kv_cache="dynamic"), FORMAT, dataset,
                    tmp_path / "train", tmp_path / "dynamic")
    assert all(v["frames_resumed"] == 0 for v in dynamic.values()) and caches[-1] == "dynamic"
    texts = answer_texts(tmp_path / "predictions")
    assert len(texts) == 3 * len(read_cosmos(dataset / "eval")) and answer_texts(tmp_path / "dynamic") == texts
    with pytest.raises(ParamsError, match=r"infer.checkpoints: no checkpoint for step\(s\) \[3\]"):
        infer(InferParams(checkpoints="3"), FORMAT, dataset, tmp_path / "train", tmp_path / "other")
    # Other generation parameters: nothing is reused; fewer columns: the others leave the output.
    other = infer(InferParams(max_new_tokens=8, batch_size=4, checkpoints="none"), FORMAT, dataset,
                  tmp_path / "train", tmp_path / "changed")
    shutil.copytree(tmp_path / "predictions", tmp_path / "rerun")
    rerun = infer(InferParams(max_new_tokens=8, batch_size=4, checkpoints="none"), FORMAT, dataset,
                  tmp_path / "train", tmp_path / "rerun")
    assert all(v["frames_resumed"] == 0 for v in rerun.values()) and list(rerun) == ["zero_shot", "final"]
    assert tree_digest(tmp_path / "rerun") == tree_digest(tmp_path / "changed") and list(other) == list(rerun)
    results = evaluate(EvaluateParams(overlays=2), dataset, tmp_path / "predictions", tmp_path / "eval.json",
                       tmp_path / "plots")
    assert list(results) == ["zero_shot", "step_000002", "final"]
    assert results["final"]["frames"] == len(read_cosmos(dataset / "eval"))
    for name in ("precision_recall.png", "metrics_vs_steps.json", "error_vs_distance.png"):
        assert (tmp_path / "plots" / name).exists()
    assert len(list((tmp_path / "plots" / "overlays").glob("*.jpg"))) == 2


def test_a_diverging_run_stops_with_an_error_naming_the_step(few, tmp_path):
    """lr 1e30: the first update blows the weights up, the second step's loss is not finite. The
    stage exits with an error naming that step and the last good checkpoint, which still loads."""
    params_file = tmp_path / "params.yaml"
    params_file.write_text(f"format:\n  prompts: {FORMAT.prompts}\n")

    def command(name: str, *extra: str) -> list[str]:
        return [sys.executable, str(REPO / "stages" / "train.py"), "--params", str(params_file), "--dataset", str(few),
                "--output", str(tmp_path / name), "--live", str(tmp_path / f"{name}-live"),
                "--metrics", str(tmp_path / f"{name}.json"), "--timing", str(tmp_path / f"{name}-timing.json"),
                "--max-steps", "6", "--save-every", "1",
                "--batch-size", "3", "--lr", "1e30", "--warmup-ratio", "0", *extra]

    run = subprocess.run(command("out"), check=False, capture_output=True, text=True)
    assert run.returncode != 0
    last_line = run.stderr.strip().splitlines()[-1]
    assert last_line.startswith("error: step 2: loss ") and "non-finite" in last_line, run.stderr[-2000:]
    assert "step_000001" in last_line
    assert not (tmp_path / "out" / "model").exists() and not (tmp_path / "out.json").exists()
    assert not (tmp_path / "out" / "checkpoints" / "step_000002").exists()
    load_model(tmp_path / "out" / "checkpoints" / "step_000001")
    skipping = subprocess.run(command("skip", "--max-nonfinite-steps", "2"), check=False, capture_output=True,
                              text=True)
    assert "error: step 4: loss " in skipping.stderr and "3 such step(s)" in skipping.stderr, skipping.stderr[-2000:]


def _check_shape(folder, model):
    """The folder's model has the size and class of the built-in ``model``."""
    size, architecture = split_name(model)
    loaded = load_model(folder)
    config = loaded.model.config
    assert (config.text_config.hidden_size, config.text_config.num_hidden_layers) == (size.hidden, size.layers)
    assert (config.vision_config.depth, config.vision_config.out_hidden_size) == (size.vision_depth, size.hidden)
    assert type(loaded.model).__name__ == {"qwen2_5_vl": "Qwen2_5_VLForConditionalGeneration",
                                           "qwen3_vl": "Qwen3VLForConditionalGeneration"}[architecture]
    return loaded


@pytest.mark.parametrize("model", [m for m in BUILTIN_MODELS if m.startswith("base-")])
def test_the_base_size_builds_and_reloads_at_its_shape(model, tmp_path):
    """The ~300M size is built and read back at its shape; the smaller sizes, with the same code
    below the shape, also train (next test): a step of this one cost 20 s and 2.2 GB of disk."""
    prompts = load_prompts(FORMAT.prompts)
    _check_shape(build_builtin(model, tmp_path / "base", 0, prompts.system, prompts.user, FORMAT.min_pixels,
                               FORMAT.max_pixels), model)


@pytest.mark.slow
@pytest.mark.parametrize("model", [m for m in BUILTIN_MODELS if not m.startswith("base-")])
def test_every_builtin_size_trains_saves_reloads_and_generates(model, few, tmp_path):
    train(TrainParams(model=model, max_steps=1, batch_size=1, save_every=0), format_for(model), few,
          tmp_path / "out", None, tmp_path / "live")
    loaded = _check_shape(tmp_path / "out" / "model", model)
    base = load_model(tmp_path / "out" / "base").model.state_dict()
    changed = [name for name, value in loaded.model.state_dict().items() if not torch.equal(value, base[name])]
    assert changed, "one training step changed no weight"
    encoder = Encoder(loaded.tokenizer, loaded.image_processor, FORMAT.min_pixels, FORMAT.max_pixels, 4096)
    generated = generate(loaded.model, encoder, read_cosmos(few / "train")[:2], max_new_tokens=4)
    assert len(generated) == 2  # an answer each (it may be empty: one step of training decides little)
    assert all(len(g.token_ids) <= 4 and len(g.token_logprobs) == len(g.token_ids) for g in generated)


def test_generation_logprobs_equal_those_of_the_full_scores(tiny, few):
    """The recorded log-probability of each greedy token equals log_softmax of the step's full
    scores at that token (what output_scores would give, without keeping them)."""
    loaded = load_model(tiny)
    encoder = Encoder(loaded.tokenizer, loaded.image_processor, FORMAT.min_pixels, FORMAT.max_pixels, 4096)
    samples = read_cosmos(few / "train")
    generated = generate(loaded.model, encoder, samples, max_new_tokens=6)
    batch = collate([encoder.encode(s, with_answer=False) for s in samples], loaded.tokenizer.pad_token_id,
                    encoder.image_pad, left_pad=True)
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    out = loaded.model.generate(**inputs, max_new_tokens=6, do_sample=False, output_scores=True,
                                return_dict_in_generate=True, eos_token_id=encoder.im_end,
                                pad_token_id=loaded.tokenizer.pad_token_id)
    new = out.sequences[:, inputs["input_ids"].shape[1]:]
    full = torch.stack([torch.log_softmax(s.float(), dim=-1) for s in out.scores], dim=1)
    expected = full.gather(2, new.unsqueeze(-1)).squeeze(-1)
    for row, answer in enumerate(generated):
        assert answer.token_ids == new[row, : len(answer.token_ids)].tolist()
        torch.testing.assert_close(torch.tensor(answer.token_logprobs), expected[row, : len(answer.token_ids)])


@pytest.mark.parametrize("kv_cache", ["dynamic", "static"])
def test_batched_greedy_answers_equal_one_at_a_time(tiny, few, kv_cache):
    """Left padding and the KV-cache kind change nothing in fp32: a batch whose prompts differ in
    length (so the shorter ones are padded) answers each sample as it answers it alone with the
    default cache (what infer_throughput.py checks in bf16 on a GPU, where a different batch shape
    may flip a near-tie)."""
    loaded = load_model(tiny)
    encoder = Encoder(loaded.tokenizer, loaded.image_processor, FORMAT.min_pixels, FORMAT.max_pixels, 4096)
    samples = read_cosmos(few / "train")
    samples[1] = dataclasses.replace(samples[1], user=samples[1].user + " Answer carefully, vehicles only.")
    batched = generate(loaded.model, encoder, samples, max_new_tokens=8, kv_cache=kv_cache)
    lengths = [len(encoder.encode(s, with_answer=False).input_ids) for s in samples]
    assert len(set(lengths)) > 1  # the batch is padded
    assert all(batched[row].token_ids for row, n in enumerate(lengths) if n < max(lengths))  # padded rows answer
    for sample, together in zip(samples, batched):
        alone = generate(loaded.model, encoder, [sample], max_new_tokens=8)[0]
        assert together.token_ids == alone.token_ids
        torch.testing.assert_close(torch.tensor(together.token_logprobs), torch.tensor(alone.token_logprobs),
                                   rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("model, batch_size, grad_accum, message", [
    ("small-qwen3-vl", 1, 1, r"train.model 'small-qwen3-vl' is not a built-in model \(tiny-qwen2_5_vl, .*org/name\)"),
    ("tiny-qwen2_5_vl", 2, 2, r"batch_size x train.grad_accum x processes = 4 samples a step, but .* has 3"),
])
def test_bad_train_params_fail_before_any_download_or_step(few, tmp_path, model, batch_size, grad_accum, message):
    from av_grounding.params import ParamsError

    with pytest.raises(ParamsError, match=message):
        train(TrainParams(model=model, batch_size=batch_size, grad_accum=grad_accum, max_steps=1), FORMAT, few,
              tmp_path / "out", None, tmp_path / "live")


def cached_hub_model(cache: Path, repo_id: str) -> None:
    """``repo_id`` as the Hugging Face cache holds a downloaded model (its config only)."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0" * 40)
    (repo / "snapshots" / ("0" * 40)).mkdir(parents=True)
    (repo / "snapshots" / ("0" * 40) / "config.json").write_text("{}")


@pytest.mark.parametrize("case", ["missing_folder", "offline", "unreachable"])
def test_a_model_that_is_no_folder_and_no_loadable_hub_id_fails_at_once(tmp_path, capsys, monkeypatch, case):
    """``./no/such/folder`` was taken for a hub id; a hub id offline retried for 93 s, then a
    traceback. Now one line naming train.model, within seconds, without the network: offline
    (HF_HUB_OFFLINE) only the local cache counts, online the hub is asked once. A cached id loads."""
    import socket

    from huggingface_hub import constants

    from av_grounding.cli import main

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", case == "offline")
    with socket.socket() as probe:  # a local port nothing listens on: the hub refuses at once
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE",
                        f"http://127.0.0.1:{port}/{{repo_id}}/resolve/{{revision}}/{{filename}}")
    model = "./no/such/folder" if case == "missing_folder" else f"no-such-org/no-such-model-{case}"
    started = time.monotonic()
    code = main(["train", "--params", str(tmp_path / "none.yaml"), "--model", model, "--max-steps", "1",
                 "--dataset", str(tmp_path / "dataset"), "--output", str(tmp_path / "out"), "--metrics",
                 str(tmp_path / "m.json"), "--live", str(tmp_path / "live"), "--timing", str(tmp_path / "t.json")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and time.monotonic() - started < 5, err
    assert err.startswith(f"error: train.model {model!r}")
    assert {"missing_folder": f": no such folder ({Path(model).absolute()})",
            "offline": f"is neither a built-in model ({', '.join(BUILTIN_MODELS)}), a local folder nor in the local "
                       f"Hugging Face cache ({tmp_path / 'hub'}), and HF_HUB_OFFLINE is set",
            "unreachable": "nor in the local Hugging Face cache"}[case] in err
    assert case != "unreachable" or "and the hub cannot be reached (ConnectError" in err
    assert not (tmp_path / "out").exists()
    from av_grounding.pipeline.train import model_source

    cached_hub_model(tmp_path / "hub", "some-org/cached-model")
    assert model_source("some-org/cached-model") == "some-org/cached-model"


def test_one_step_at_the_recipes_learning_rate_moves_the_trained_bf16_weights_only(few, tmp_path):
    """`train` with train.precision bf16_stochastic: the model trains and is saved in bf16; one
    step at lr 2e-7 moves language-model and projector weights (each by lr in expectation: about
    one element in 600 of size 0.02 moves by its bf16 step) and none of the frozen vision
    tower's."""
    from safetensors.torch import load_file

    model = "tiny-qwen2_5_vl"
    base = tmp_path / "base"
    common = dict(model=model, batch_size=3, save_every=0, schedule="constant", warmup_ratio=0.0, train_vision=False)
    train(TrainParams(max_steps=1, lr=0.0, **common), format_for(model), few, base, None, tmp_path / "live0")
    params = TrainParams(max_steps=1, lr=2e-7, precision="bf16_stochastic", **common)
    train(dataclasses.replace(params, model=str(base / "model")), format_for(model), few, tmp_path / "out", None,
          tmp_path / "live")
    before = {k: v.bfloat16() for k, v in load_file(str(base / "model" / "model.safetensors")).items()}
    after = load_file(str(tmp_path / "out" / "model" / "model.safetensors"))
    assert {v.dtype for v in after.values()} == {torch.bfloat16}
    moved = {name for name in after if not torch.equal(after[name], before[name])}
    assert not any("visual.blocks" in name or "patch_embed" in name for name in moved)  # frozen
    assert any("visual.merger" in name for name in moved)  # the projector trains (train_projector)
    assert any(".layers." in name and "visual" not in name for name in moved)
