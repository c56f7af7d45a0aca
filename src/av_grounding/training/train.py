"""The `train` stage: resolve the base model, run a backend, place the result where `infer` looks.

Outputs under the training folder:
  base/         the model before fine-tuning (built here for the built-in models; absent for a hub id or path)
  checkpoints/  step_NNNNNN/ Hugging Face folders written during training
  model/        the fine-tuned model
  run.json      where fine-tuning started (base folder or hub id) and how many steps it took
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from ..dataset.prompts import load_prompts
from ..models.builtin import BUILTIN_MODELS, build_builtin, split_name
from ..params import FormatParams, TrainParams, with_preset
from ..storage import write_json

# Peak learning rate of `train.lr: null` for a model that is not built in (a hub id or folder of a
# pretrained model): a common full fine-tuning rate for 3-8B vision-language models.
PRETRAINED_LR = 1e-5


def resolved(params: TrainParams) -> TrainParams:
    """The params a run uses: the preset applied, and ``lr: null`` replaced by the built-in
    model size's learning rate (``models.builtin.MODEL_SIZES``) or PRETRAINED_LR."""
    params = with_preset(params)
    if params.lr is None:
        lr = split_name(params.model)[0].lr if params.model in BUILTIN_MODELS else PRETRAINED_LR
        params = dataclasses.replace(params, lr=lr)
    return params


def base_model(params: TrainParams, fmt: FormatParams, output: Path, build: bool = True) -> Path | str:
    """The folder or hub id fine-tuning starts from (a built-in model is built there unless
    ``build`` is false: other processes of a distributed launch wait for the first one to build it)."""
    if params.model not in BUILTIN_MODELS:
        return params.model
    if build:
        prompts = load_prompts(fmt.prompts)
        build_builtin(params.model, output / "base", params.seed, prompts.system, prompts.user,
                      fmt.min_pixels, fmt.max_pixels)
    return output / "base"


def train(params: TrainParams, fmt: FormatParams, dataset: Path, output: Path, metrics: Path | None = None,
          live: Path = Path("dvclive/train")) -> dict[str, Any]:
    params = resolved(params)
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
    elif params.backend == "cosmos-rl":
        from .cosmos_rl import train_cosmos_rl

        summary = train_cosmos_rl(params, fmt, base, dataset, output, live)
    else:
        raise ValueError(f"train.backend must be 'hf' or 'cosmos-rl', got {params.backend!r}")
    summary["model"] = params.model
    summary["lr"] = params.lr
    if rank == 0:
        write_json(output / "run.json", {"base": str(base), "steps": summary["steps"]})
        if metrics:
            write_json(metrics, summary)
    return summary
