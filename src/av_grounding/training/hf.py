"""The `hf` backend: supervised fine-tuning on transformers + PyTorch, one process or many.

Assistant-only loss, AdamW with linear warmup and cosine decay, gradient clipping and
accumulation, full fine-tuning with switches for vision tower / projector / language model or
LoRA (peft), bf16 autocast and gradient checkpointing on GPUs, DeepSpeed ZeRO-3 over the GPUs of
a torchrun launch (``train.deepspeed``, see zero3.py). Checkpoints are Hugging Face
folders (weights, tokenizer, image processor) plus ``trainer_state.pt``; a rerun resumes from
the newest complete one and ends with the same weights as an uninterrupted run. DVCLive logs
loss, learning rate, gradient norm, samples/s and tokens/s per optimizer step.
"""

from __future__ import annotations

import io
import math
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..dataset.formats import read_cosmos
from ..models.loading import load_model
from ..params import FormatParams, ParamsError, TrainParams
from ..storage import atomic_folder, atomic_write_bytes
from .collate import BudgetError, Encoder, answer_loss, collate

STATE_FILE = "trainer_state.pt"


def trainable_parameters(model, params: TrainParams) -> list[torch.nn.Parameter]:
    """Freeze or unfreeze the vision tower, the projector (merger) and the language model."""
    visual = model.model.visual
    for p in model.parameters():
        p.requires_grad_(False)
    if params.lora:
        from peft import LoraConfig, get_peft_model

        config = LoraConfig(r=params.lora_rank, lora_alpha=params.lora_alpha, lora_dropout=params.lora_dropout,
                            target_modules=r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)")
        model = get_peft_model(model, config)
        visual = model.base_model.model.model.visual
    elif params.train_llm:
        for p in model.model.language_model.parameters():
            p.requires_grad_(True)
        for p in model.lm_head.parameters():
            p.requires_grad_(True)
    for name, p in visual.named_parameters():
        in_projector = name.startswith("merger")
        if (in_projector and params.train_projector) or (not in_projector and params.train_vision):
            p.requires_grad_(True)
    return model


def lr_at(step: int, total: int, params: TrainParams) -> float:
    """Multiplier of the base learning rate: linear warmup, then cosine (or constant) decay."""
    warmup = math.ceil(params.warmup_ratio * total)
    if step < warmup:
        return (step + 1) / warmup
    if params.schedule == "constant":
        return 1.0
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


def latest_checkpoint(folder: Path) -> Path | None:
    done = sorted(p for p in folder.glob("step_*") if (p / STATE_FILE).exists())
    return done[-1] if done else None


def save_folder(model, tokenizer, image_processor, folder: Path, extra: dict[str, Any] | None = None,
                state_dict: dict[str, Any] | None = None) -> None:
    """A Hugging Face folder written atomically, with ``extra`` as the training state to resume from."""
    with atomic_folder(folder) as tmp:
        model.save_pretrained(tmp, state_dict=state_dict)
        tokenizer.save_pretrained(tmp)
        image_processor.save_pretrained(tmp)
        if extra is not None:
            torch.save(extra, tmp / STATE_FILE)


def train_hf(params: TrainParams, fmt: FormatParams, base: Path, dataset: Path, output: Path, live_dir: Path) -> dict[str, Any]:
    from dvclive import Live

    zero3 = params.deepspeed is not None
    if zero3:
        from . import zero3 as ds

        if params.lora:
            raise ParamsError("train.lora with train.deepspeed is not supported: LoRA models fit one GPU")
        rank, world, local_rank = ds.distributed_context()
        device = f"cuda:{local_rank}"
        ds_config = ds.load_config(params.deepspeed, params, world)
        sharding = ds.sharded_loading(ds_config)  # noqa: F841 (must outlive from_pretrained)
    else:
        rank, world = 0, 1
        device = "cuda" if torch.cuda.is_available() else "cpu"
    autocast = device != "cpu" and params.bf16 and not zero3  # ZeRO-3 keeps bf16 weights itself
    checkpoints = output / "checkpoints"
    resume_from = latest_checkpoint(checkpoints)
    # ZeRO-3 restores weights from its own sharded checkpoint, so it always starts from the base.
    loaded = load_model(base if zero3 else resume_from or base, "float32", None if zero3 else device,
                        params.attn_implementation)
    model, tokenizer = loaded.model, loaded.tokenizer
    encoder = Encoder(tokenizer, loaded.image_processor, fmt.min_pixels, fmt.max_pixels, fmt.model_max_length)
    examples, over_budget = [], []
    for sample in read_cosmos(dataset / "train"):
        try:
            examples.append(encoder.encode(sample))
        except BudgetError as exc:
            over_budget.append(str(exc))
    if not examples:
        raise BudgetError(f"{dataset / 'train'}: no sample fits model_max_length {fmt.model_max_length}")
    if params.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    model = trainable_parameters(model, params)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=params.lr, weight_decay=params.weight_decay)
    per_step = params.batch_size * params.grad_accum * world
    steps_per_epoch = max(1, len(examples) // per_step)
    total = params.max_steps or params.epochs * steps_per_epoch
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_at(s, total, params))
    step = 0
    engine = ds.initialize(model, optimizer, scheduler, ds_config) if zero3 else None
    forward_model = engine if zero3 else model
    if resume_from is not None:
        if zero3:
            _, client_state = engine.load_checkpoint(str(resume_from / "deepspeed"))
            step = client_state["step"]
        else:
            state = torch.load(resume_from / STATE_FILE, weights_only=False)
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            torch.set_rng_state(state["torch_rng"])
            step = state["step"]
    live = Live(dir=str(live_dir), dvcyaml=None, save_dvc_exp=False, resume=resume_from is not None,
                report=None) if rank == 0 else None
    model.train()
    while step < total:
        epoch, position = divmod(step, steps_per_epoch)
        order = np.random.default_rng([params.seed, epoch]).permutation(len(examples))
        chunk = order[position * per_step: (position + 1) * per_step]
        started = time.perf_counter()
        tokens, losses = 0, []
        for micro in range(params.grad_accum):
            first = (micro * world + rank) * params.batch_size  # each rank its own micro-batches
            batch = [examples[i] for i in chunk[first: first + params.batch_size]]
            inputs = {k: v.to(device) for k, v in collate(batch, tokenizer.pad_token_id, encoder.image_pad).items()}
            tokens += int(inputs["attention_mask"].sum())
            with torch.autocast(device_type=device.split(":")[0], dtype=torch.bfloat16, enabled=autocast):
                loss, _ = answer_loss(forward_model, inputs)
            if zero3:
                engine.backward(loss)  # scales by 1/grad_accum; steps, clips and schedules at the boundary
                engine.step()
            else:
                (loss / params.grad_accum).backward()
            losses.append(float(loss.detach()))
        if zero3:
            grad_norm = engine.get_global_grad_norm()
        else:
            grad_norm = torch.nn.utils.clip_grad_norm_(trainable, params.grad_clip)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
        step += 1
        elapsed = time.perf_counter() - started
        if live is not None:
            live.step = step - 1  # numbered by optimizer step after a resume too (redone steps log twice)
            live.log_metric("train/loss", float(np.mean(losses)))
            live.log_metric("train/lr", scheduler.get_last_lr()[0])
            live.log_metric("train/grad_norm", float(grad_norm))
            live.log_metric("train/samples_per_s", len(chunk) / elapsed)
            live.log_metric("train/tokens_per_s", tokens * world / elapsed)
            live.next_step()
        if params.save_every and step % params.save_every == 0 and step < total:
            folder = checkpoints / f"step_{step:06d}"
            if zero3:
                _save_zero3(engine, loaded, folder, step, rank)
            else:
                save_folder(_merged(model), tokenizer, loaded.image_processor, folder,
                            {"step": step, "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                             "torch_rng": torch.get_rng_state()})
            # Only the newest checkpoint needs the optimizer state (to resume); older ones stay
            # as models for evaluation against training steps.
            if rank == 0:
                for older in checkpoints.glob("step_*"):
                    if older.name != folder.name:
                        (older / STATE_FILE).unlink(missing_ok=True)
                        shutil.rmtree(older / "deepspeed", ignore_errors=True)
    if live is not None:
        live.end()
    if zero3:
        state = ds.full_state_dict(engine)
        if rank == 0:
            save_folder(model, tokenizer, loaded.image_processor, output / "model", state_dict=state)
    else:
        save_folder(_merged(model), tokenizer, loaded.image_processor, output / "model")
    return {"steps": total, "samples": len(examples), "samples_over_max_length": len(over_budget),
            "trainable_parameters": sum(p.ds_numel if hasattr(p, "ds_numel") else p.numel() for p in trainable),
            "backend": "hf", "device": device.split(":")[0], "processes": world,
            "peak_gpu_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if device != "cpu" else None}


def _save_zero3(engine, loaded, folder: Path, step: int, rank: int) -> None:
    """Rank 0 writes the gathered Hugging Face model, then every rank its shard of the training
    state; the state file goes last, written atomically: it marks the checkpoint complete."""
    from . import zero3 as ds

    state = ds.full_state_dict(engine)  # collective: every rank takes part
    if rank == 0:
        save_folder(loaded.model, loaded.tokenizer, loaded.image_processor, folder, state_dict=state)
    ds.barrier()
    engine.save_checkpoint(str(folder / "deepspeed"), client_state={"step": step})
    if rank == 0:
        marker = io.BytesIO()
        torch.save({"step": step}, marker)
        atomic_write_bytes(folder / STATE_FILE, marker.getvalue())


def _merged(model):
    """What a checkpoint stores: the whole model, LoRA adapters merged into a copy. (A LoRA run
    resumes from merged weights with fresh adapters: close to, not exactly, an uninterrupted run.)"""
    if hasattr(model, "merge_and_unload"):
        import copy

        return copy.deepcopy(model).merge_and_unload()
    return model
