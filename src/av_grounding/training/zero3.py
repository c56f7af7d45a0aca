"""DeepSpeed ZeRO-3 for the `hf` backend: models that do not fit one GPU.

Parameters, gradients and optimizer state are sharded over the processes of one torchrun launch:

    torchrun --nproc_per_node 8 stages/train.py --deepspeed configs/deepspeed_zero3.json --model ...

The config in the repository leaves batch sizes, clipping and bf16 as "auto": they come from the
train params, so the DeepSpeed file holds only what is DeepSpeed's own (stage, buckets, offload).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..params import ParamsError, TrainParams
from . import distributed

AUTO = "auto"


def distributed_context() -> tuple[int, int, str]:
    """rank, world size and device of this process of a torchrun launch, the process group joined
    (``distributed.join``, which DeepSpeed then finds); a clear error without a launch."""
    if not distributed.launched():
        raise ParamsError("train.deepspeed needs a distributed launch: train.gpus N, or torchrun --nproc_per_node N "
                          "stages/train.py --deepspeed <config> ... (N GPUs on this machine)")
    import deepspeed

    rank, world, device = distributed.join()
    deepspeed.init_distributed()  # finds the process group joined above and keeps it
    return rank, world, device


def load_config(path: str, params: TrainParams, world: int) -> dict[str, Any]:
    """The DeepSpeed config with its "auto" values taken from the train params."""
    try:
        config = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ParamsError(f"{path}: not a readable DeepSpeed JSON config: {exc}") from exc
    if config.get("zero_optimization", {}).get("stage") != 3:
        raise ParamsError(f"{path}: zero_optimization.stage must be 3 (this path exists for sharded models)")
    filled = {
        "train_micro_batch_size_per_gpu": params.batch_size,
        "gradient_accumulation_steps": params.grad_accum,
        "train_batch_size": params.batch_size * params.grad_accum * world,
        "gradient_clipping": params.grad_clip,
    }
    for key, value in filled.items():
        if config.get(key, AUTO) == AUTO:
            config[key] = value
        elif config[key] != value:
            raise ParamsError(f"{path}: {key} is {config[key]} but the train params give {value}; use \"auto\"")
    bf16 = config.setdefault("bf16", {})
    if bf16.get("enabled", AUTO) == AUTO:
        bf16["enabled"] = params.bf16
    return config


def sharded_loading(config: dict[str, Any]):
    """Keep the returned object alive while the model loads: transformers then builds it under
    ``deepspeed.zero.Init`` and every process holds only its shard of the weights."""
    from transformers.integrations import HfDeepSpeedConfig

    return HfDeepSpeedConfig(config)


def initialize(model, optimizer, scheduler, config: dict[str, Any]):
    import deepspeed

    engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=scheduler, config=config)
    return engine


def full_state_dict(engine) -> dict[str, Any] | None:
    """The whole model's weights gathered onto rank 0 (a collective call: every rank calls it)."""
    return engine._zero3_consolidated_16bit_state_dict()
