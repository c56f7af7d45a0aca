"""The `infer` stage: answers of the base model (zero-shot), every training checkpoint and the
final model on the evaluation split, one prediction file per frame:

  <predictions>/<column>/<id>.json = {"annotations": [{"label", "bbox_3d"}], "raw_text",
                                      "scores": [per box], "parse_status"}

Columns: ``zero_shot``, ``step_NNNNNN``, ``final``, with their training steps in
``<predictions>/columns.json``. Frames already answered are skipped, so a rerun after a crash
continues where it stopped.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from ..dataset.formats import DatasetError, read_cosmos
from ..evaluation.parse import box_scores, parse_answer
from ..models.loading import load_model
from ..params import FormatParams, InferParams, ParamsError
from ..storage import write_json
from ..training.collate import Encoder
from .generate import generate


def columns(train: Path, params: InferParams) -> list[tuple[str, str, int]]:
    """(column, model folder or hub id, training step) in step order."""
    try:
        run = json.loads((train / "run.json").read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise DatasetError(f"{train / 'run.json'}: unreadable ({exc}); run train first") from exc
    chosen = [("zero_shot", run["base"], 0)] if params.zero_shot else []
    available = {int(p.name.split("_")[1]): p for p in sorted(train.glob("checkpoints/step_*"))}
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


def prediction_record(text: str, token_ids: list[int], logprobs: list[float], tokenizer) -> dict[str, Any]:
    parsed = parse_answer(text)
    ends = [len(tokenizer.decode(token_ids[: i + 1], skip_special_tokens=False)) for i in range(len(token_ids))]
    return {"annotations": [{"label": b["label"], "bbox_3d": b["bbox_3d"]} for b in parsed.boxes],
            "raw_text": text, "scores": box_scores(parsed, text, ends, logprobs), "parse_status": parsed.status}


def infer(params: InferParams, fmt: FormatParams, dataset: Path, train: Path, output: Path,
          metrics: Path | None = None) -> dict[str, Any]:
    samples = read_cosmos(dataset / "eval")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    summary: dict[str, Any] = {}
    chosen = columns(train, params)
    write_json(output / "columns.json", {column: step for column, _, step in chosen})
    for column, source, step in chosen:
        folder = output / column
        pending = [s for s in samples if not (folder / f"{s.id}.json").exists()]
        if not pending:
            continue
        loaded = load_model(source, "bfloat16" if device == "cuda" else "float32", device)
        encoder = Encoder(loaded.tokenizer, loaded.image_processor, fmt.min_pixels, fmt.max_pixels, fmt.model_max_length)
        started, tokens = time.perf_counter(), 0
        for begin in tqdm(range(0, len(pending), params.batch_size), desc=f"infer {column}", unit="batch"):
            batch = pending[begin: begin + params.batch_size]
            for sample, result in zip(batch, generate(loaded.model, encoder, batch, params.max_new_tokens, device)):
                tokens += len(result.token_ids)
                write_json(folder / f"{sample.id}.json",
                           prediction_record(result.text, result.token_ids, result.token_logprobs, loaded.tokenizer))
        elapsed = time.perf_counter() - started
        summary[column] = {"step": step, "frames": len(pending), "images_per_s": round(len(pending) / elapsed, 3),
                           "tokens_per_s": round(tokens / elapsed, 1)}
    if metrics:
        write_json(metrics, summary)
    return summary
