"""The `train` stage: resolve the base model, run a backend, place the result where `infer` looks.

Outputs under the training folder:
  base/         the model before fine-tuning (built here for tiny-*; absent for a hub id or path)
  checkpoints/  step_NNNNNN/ Hugging Face folders written during training
  model/        the fine-tuned model
  run.json      where fine-tuning started (base folder or hub id) and how many steps it took
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..dataset.prompts import load_prompts
from ..models.tiny import TINY_MODELS, build_tiny
from ..params import FormatParams, TrainParams, with_preset
from ..storage import write_json


def base_model(params: TrainParams, fmt: FormatParams, output: Path, build: bool = True) -> Path | str:
    """The folder or hub id fine-tuning starts from (a tiny model is built there unless ``build``
    is false: other processes of a distributed launch wait for the first one to build it)."""
    if params.model in TINY_MODELS and not build:
        return output / "base"
    if params.model in TINY_MODELS:
        prompts = load_prompts(fmt.prompts)
        return build_tiny(params.model, output / "base", params.seed, prompts.system, prompts.user,
                          fmt.min_pixels, fmt.max_pixels)
    return params.model


def train(params: TrainParams, fmt: FormatParams, dataset: Path, output: Path, metrics: Path | None = None,
          live: Path = Path("dvclive/train")) -> dict[str, Any]:
    params = with_preset(params)
    rank = 0
    if params.backend == "hf" and params.deepspeed is not None:
        from . import zero3

        rank, _, _ = zero3.distributed_context()
        base = base_model(params, fmt, output, build=rank == 0)
        zero3.barrier()
    else:
        base = base_model(params, fmt, output)
    if params.backend == "hf":
        from .hf import train_hf

        summary = train_hf(params, fmt, base, dataset, output, live)
    else:
        from .cosmos_rl import train_cosmos_rl

        summary = train_cosmos_rl(params, fmt, base, dataset, output, live)
    summary["model"] = params.model
    if rank == 0:
        write_json(output / "run.json", {"base": str(base), "steps": summary["steps"]})
        if metrics:
            write_json(metrics, summary)
    return summary
