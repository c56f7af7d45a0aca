"""The `infer` stage: answers of the base model (zero-shot), every training checkpoint and the
final model on the evaluation split, one prediction file per frame:

  <predictions>/<column>/<id>.json = {"annotations": [{"label", "bbox_3d"}], "raw_text",
                                      "scores": [per box], "parse_status", "reasoning"}

Columns: ``zero_shot``, ``step_NNNNNN``, ``final``, with their training steps in
``<predictions>/columns.json``. ``<predictions>/manifests/<column>.json`` records what a column
was made from (model, parameters, reasoning instruction, evaluation split); a rerun keeps a
column's answers only when that matches, and then skips the batches already answered, so a rerun
after a crash continues where it stopped and gives the same answers. ``reasoning`` says what the
answers were asked for (``infer.reasoning``, see ``models.reasoning``): ``{"setting": "none"}``, or
``model`` with the model type and the message that got the instruction.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from .. import numerics
from ..dataset.formats import read_cosmos
from ..evaluation.parse import box_scores, parse_answer
from ..geometry.virtual import VIRTUAL_CAMERA, AnswerCamera
from ..models.generate import generate
from ..models.inputs import Encoder
from ..models.loading import load_model
from ..models.reasoning import Instruction, instruction_for, model_type_of, reasoning_record, with_instruction
from ..params import FormatParams, InferParams, ParamsError
from ..sources import code_digest
from ..storage import folder_digest, remove_partials, stored_json, write_json
from ..training.loop import step_folders
from .outputs import Manifest, read_run, write_report

MANIFESTS = "manifests"


def rl_columns(rl: Path | None, rl_run: Any, params: InferParams, sft_steps: int) -> list[tuple[str, str, int]]:
    """The `rl` stage's columns after the SFT ones: ``rl_step_NNNNNN`` per RL checkpoint (unless
    ``infer.checkpoints`` is ``none``) and ``rl_final``, numbered by training steps in all (SFT
    steps plus RL steps); none without an RL folder or when its ``run.json`` (``rl_run``) made
    no step."""
    if rl is None or not isinstance(rl_run, dict) or not rl_run.get("steps"):
        return []
    steps = int(rl_run["steps"])
    chosen = [] if params.checkpoints == "none" else [
        (f"rl_{folder.name}", str(folder), sft_steps + step)
        for step, folder in step_folders(rl / "checkpoints").items() if step < steps]
    return chosen + [("rl_final", str(rl / "model"), sft_steps + steps)]


def columns(train: Path, params: InferParams, run: dict[str, Any]) -> list[tuple[str, str, int]]:
    """(column, model folder or hub id, training step) of the SFT run in step order."""
    chosen = [("zero_shot", run["base"], 0)] if params.zero_shot else []
    available = step_folders(train / "checkpoints")
    if params.checkpoints == "all":
        wanted = sorted(available)
    elif params.checkpoints == "none":
        wanted = []
    else:
        wanted = list(params.checkpoints)
        missing = sorted(set(wanted) - set(available))
        if missing:
            raise ParamsError(f"infer.checkpoints: no checkpoint for step(s) {missing} under {train / 'checkpoints'}; "
                              f"have {sorted(available)}")
    chosen += [(available[s].name, str(available[s]), s) for s in wanted]
    return chosen + [("final", str(train / "model"), int(run["steps"]))]


def prediction_record(text: str, token_ids: list[int], logprobs: list[float], tokenizer,
                      reasoning: dict[str, Any] | None = None,
                      virtual: dict[str, Any] | None = None) -> dict[str, Any]:
    """One frame's prediction file: the boxes parsed from ``text`` (a reasoning draft is never
    read, ``evaluation.parse``) in the real camera, each box's confidence from the
    log-probabilities of the tokens of its text (answer tokens only), ``reasoning``, what the
    answer was asked for, when given, and ``virtual``, the sample's ``virtual_camera`` block
    (``dataset.camera_input``: ``raw_text`` is in that camera), when the dataset wrote one."""
    parsed = parse_answer(text)
    boxes = [{"label": b["label"], "bbox_3d": b["bbox_3d"]} for b in parsed.boxes]
    if virtual is not None:
        boxes = AnswerCamera.deserialize(virtual, "the evaluation record").boxes_to_real(boxes)
    ends = [len(tokenizer.decode(token_ids[: i + 1], skip_special_tokens=False)) for i in range(len(token_ids))]
    record = {"annotations": boxes, "raw_text": text, "scores": box_scores(parsed, text, ends, logprobs),
              "parse_status": parsed.status}
    return {**record, **({"reasoning": reasoning} if reasoning is not None else {}),
            **({VIRTUAL_CAMERA: virtual} if virtual is not None else {})}


def column_instruction(params: InferParams, source: str) -> Instruction | None:
    """The reasoning instruction of the model at ``source`` (by its config's ``model_type``);
    None for ``infer.reasoning: none``, which reads neither the config nor the instructions file."""
    if params.reasoning == "none":
        return None
    return instruction_for(params.reasoning, model_type_of(source))


def column_inputs(params: InferParams, fmt: FormatParams, dataset: Path, run: dict[str, Any], column: str,
                  step: int, instruction: Instruction | None = None) -> dict[str, Any]:
    """What one column's predictions are made from: the model (the training run's inputs, the
    column and its step), the generation and image parameters, the reasoning instruction
    (``instruction``, its text included, so an edited instruction reruns the column), the
    evaluation split's content, the code that generates."""
    return {"model": {"training_inputs_sha256": run.get("inputs_sha256"), "column": column, "step": step},
            "params": {"max_new_tokens": params.max_new_tokens, "batch_size": params.batch_size,
                       "vision_attention": params.vision_attention, "kv_cache": params.kv_cache},
            "reasoning": reasoning_record(params.reasoning, instruction),
            "format": {key: getattr(fmt, key) for key in ("min_pixels", "max_pixels", "model_max_length")},
            "eval_split_sha256": folder_digest(dataset / "eval"), "code_sha256": code_digest(__name__)}


def keep_only(output: Path, names: set[str], ids: set[str]) -> None:
    """Remove column folders (and their manifests) not in ``names``, and predictions of frames
    not in ``ids``, so the output holds this run's columns and frames only."""
    for folder in sorted(p for p in output.iterdir() if p.is_dir() and p.name != MANIFESTS) if output.is_dir() else []:
        if folder.name not in names:
            shutil.rmtree(folder)
            (output / MANIFESTS / f"{folder.name}.json").unlink(missing_ok=True)
            continue
        for stale in sorted(folder.glob("*.json")):
            if stale.stem not in ids:
                stale.unlink()


def answer_block(sample: Any, trained: bool) -> dict[str, Any] | None:
    """The ``virtual_camera`` block of a sample's prediction file: the dataset's (``format.camera_input``)
    for a model trained on its answers; for one that never was (the zero-shot column), the real
    camera said outright (scale 1), so that neither infer nor the evaluator reads its answer in
    the dataset's answer camera; None where the dataset has no block."""
    block = (sample.record or {}).get(VIRTUAL_CAMERA)
    return block if trained or block is None else AnswerCamera(None, 1.0).serialize()


def infer_column(params: InferParams, fmt: FormatParams, samples: list, source: str, folder: Path,
                 expected: dict[str, Any], device: str, reasoning: dict[str, Any] | None = None,
                 trained: bool = True) -> dict[str, Any]:
    """Answer ``samples`` (their prompts as sent, reasoning instruction included) with the model
    at ``source`` into ``folder``, in fixed batches (the same batches after a resume, so resumed
    answers equal uninterrupted ones); a batch whose every answer exists from a run with the same
    inputs (``expected``) is not redone. ``reasoning``: recorded in every prediction file;
    ``trained``: whether the model learned the dataset's answers (``answer_block``). Returns this
    run's timing: frames resumed, wall time, images/s and generated tokens/s."""
    manifest = Manifest(folder.parent / MANIFESTS / f"{folder.name}.json", expected)
    if not manifest.matches():
        manifest.reset(folder)
    batches = [samples[begin: begin + params.batch_size] for begin in range(0, len(samples), params.batch_size)]
    pending = [batch for batch in batches if not all((folder / f"{s.id}.json").exists() for s in batch)]
    started, tokens = time.perf_counter(), 0
    if pending:
        # Each model compiles its own decoding step (static cache on CUDA): dynamo would count every
        # column's recompilations against one limit and fall back to eager past it.
        torch.compiler.reset()
        loaded = load_model(source, "bfloat16" if device == "cuda" else "float32", device,
                            vision_attention=params.vision_attention)
        encoder = Encoder(loaded.tokenizer, loaded.image_processor, fmt.min_pixels, fmt.max_pixels,
                          fmt.model_max_length)
        for batch in tqdm(pending, desc=f"infer {folder.name}", unit="batch"):
            answers = generate(loaded.model, encoder, batch, params.max_new_tokens, device, params.kv_cache)
            for sample, result in zip(batch, answers):
                tokens += len(result.token_ids)
                write_json(folder / f"{sample.id}.json",
                           prediction_record(result.text, result.token_ids, result.token_logprobs, loaded.tokenizer,
                                             reasoning, answer_block(sample, trained)))
    elapsed = time.perf_counter() - started
    generated = sum(len(batch) for batch in pending)
    return {"frames_resumed": len(samples) - generated, "wall_s": round(elapsed, 2),
            "images_per_s": round(generated / elapsed, 3) if generated else None,
            "tokens_per_s": round(tokens / elapsed, 1) if generated else None}


def infer(params: InferParams, fmt: FormatParams, dataset: Path, train: Path, output: Path,
          metrics: Path | None = None, timing: Path | None = None, rl: Path | None = None) -> dict[str, Any]:
    """The `infer` stage: every column's answers on the evaluation split, resumed where a run
    with the same inputs stopped. CPU numerics are pinned first (``numerics``).

    Args:
        params: the ``infer`` section (columns: zero-shot, checkpoints; batch size, new tokens,
            KV cache, reasoning instruction).
        fmt: the ``format`` section (image pixel limits, ``model_max_length``).
        dataset: format's output folder (its ``eval/`` split in the Cosmos-RL layout).
        train: train's output folder (``run.json``, ``checkpoints/``, ``model/``).
        output: the predictions folder (module docstring: ``<column>/<id>.json``,
            ``columns.json``, ``manifests/``); columns and frames not in this run are removed.
        metrics: per column its training ``step`` and ``frames`` (the same whether resumed or
            not), when given.
        timing: per column what this run did (frames resumed, wall seconds, images/s,
            generated tokens/s), when given.
        rl: the `rl` stage's output folder, whose checkpoints and final policy become columns
            after the SFT ones (``rl_columns``), when given and it trained.

    Returns:
        Per column (in ``columns.json``'s order: zero-shot, SFT steps, RL steps) the metrics and
        the timing together. The columns are answered longest-trained first, so a run stopped
        part way holds the final model's answers.

    Raises:
        MissingInputError: ``run.json`` is missing or unreadable.
        DatasetError: the evaluation split is missing or unreadable.
        ParamsError: a checkpoint step ``infer.checkpoints`` names does not exist, or a model
            has no reasoning instruction for ``infer.reasoning: model``.
    """
    numerics.pin_torch()
    samples = read_cosmos(dataset / "eval")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    run = read_run(train)
    chosen = columns(train, params, run)
    rl_run = stored_json(rl / "run.json") if rl is not None else None
    extra = rl_columns(rl, rl_run, params, int(run["steps"]))
    runs: dict[str, Any] = {column: run for column, _, _ in chosen} | {column: rl_run for column, _, _ in extra}
    chosen += extra
    # Every column's prompts before any work: a model type without a reasoning instruction, or a
    # prompt that already asks for <think>, stops the stage with nothing changed.
    instructions = {column: column_instruction(params, source) for column, source, _ in chosen}
    prompted = {column: [with_instruction(sample, instruction) for sample in samples]
                for column, instruction in instructions.items()}
    remove_partials(output)
    keep_only(output, {column for column, _, _ in chosen}, {s.id for s in samples})
    write_json(output / "columns.json", {column: step for column, _, step in chosen})
    summary: dict[str, Any] = {}
    times: dict[str, Any] = {}
    # The longest-trained model first: a run stopped part way (a GPU lease that ends) has the
    # answers of the model it exists for; the files do not depend on the order.
    for column, source, step in sorted(chosen, key=lambda c: (-c[2], c[0] not in ("final", "rl_final"))):
        expected = column_inputs(params, fmt, dataset, runs[column], column, step, instructions[column])
        times[column] = infer_column(params, fmt, prompted[column], source, output / column, expected, device,
                                     reasoning_record(params.reasoning, instructions[column], with_text=False),
                                     trained=column != "zero_shot")
        summary[column] = {"step": step, "frames": len(samples)}
    write_report(metrics, summary)
    write_report(timing, times)
    return {column: {**summary[column], **times[column]} for column, _, _ in chosen}
