"""The `hf` backend: supervised fine-tuning on transformers + PyTorch, one process or many.

Assistant-only loss, AdamW with linear warmup and cosine decay, gradient clipping and
accumulation, full fine-tuning with switches for vision tower / projector / language model or
LoRA (peft), bf16 autocast and gradient checkpointing on GPUs. Checkpoints are Hugging Face
folders (weights, tokenizer, image processor) plus ``trainer_state.pt``; a rerun resumes from
the newest complete one and ends with the same weights as an uninterrupted run. DVCLive logs
loss, learning rate, gradient norm, samples/s and tokens/s per optimizer step.
"""

from __future__ import annotations

import math
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..dataset.formats import read_cosmos
from ..models.loading import load_model
from ..params import FormatParams, TrainParams
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


def save_folder(model, tokenizer, image_processor, folder: Path, extra: dict[str, Any] | None = None) -> None:
    """A Hugging Face folder written atomically (temporary sibling, then rename)."""
    tmp = folder.with_name(f".{folder.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    image_processor.save_pretrained(tmp)
    if extra is not None:
        torch.save(extra, tmp / STATE_FILE)
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)


def train_hf(params: TrainParams, fmt: FormatParams, base: Path, dataset: Path, output: Path, live_dir: Path) -> dict[str, Any]:
    from dvclive import Live

    device = "cuda" if torch.cuda.is_available() else "cpu"
    bf16 = device == "cuda" and params.bf16
    checkpoints = output / "checkpoints"
    resume_from = latest_checkpoint(checkpoints)
    loaded = load_model(resume_from or base, "float32", device, params.attn_implementation)
    model, tokenizer = loaded.model, loaded.tokenizer
    encoder = Encoder(tokenizer, loaded.image_processor, fmt.min_pixels, fmt.max_pixels, fmt.model_max_length)
    examples, over_budget = [], []
    for sample in read_cosmos(dataset / "train"):
        try:
            examples.append(encoder.encode(sample))
        except BudgetError as exc:
            over_budget.append(str(exc))
    if not examples:
        raise ValueError(f"{dataset / 'train'}: no sample fits model_max_length {fmt.model_max_length}")
    if params.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    model = trainable_parameters(model, params)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=params.lr, weight_decay=params.weight_decay)
    per_step = params.batch_size * params.grad_accum
    steps_per_epoch = max(1, len(examples) // per_step)
    total = params.max_steps or params.epochs * steps_per_epoch
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_at(s, total, params))
    step = 0
    if resume_from is not None:
        state = torch.load(resume_from / STATE_FILE, weights_only=False)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["torch_rng"])
        step = state["step"]
    live = Live(dir=str(live_dir), dvcyaml=None, save_dvc_exp=False, resume=resume_from is not None, report=None)
    model.train()
    while step < total:
        epoch, position = divmod(step, steps_per_epoch)
        order = np.random.default_rng([params.seed, epoch]).permutation(len(examples))
        chunk = order[position * per_step: (position + 1) * per_step]
        started = time.perf_counter()
        tokens, losses = 0, []
        for micro in range(params.grad_accum):
            batch = [examples[i] for i in chunk[micro * params.batch_size: (micro + 1) * params.batch_size]]
            inputs = {k: v.to(device) for k, v in collate(batch, tokenizer.pad_token_id, encoder.image_pad).items()}
            tokens += int(inputs["attention_mask"].sum())
            with torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=bf16):
                loss, _ = answer_loss(model, inputs)
            (loss / params.grad_accum).backward()
            losses.append(float(loss.detach()))
        grad_norm = torch.nn.utils.clip_grad_norm_(trainable, params.grad_clip)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        elapsed = time.perf_counter() - started
        live.log_metric("train/loss", float(np.mean(losses)))
        live.log_metric("train/lr", scheduler.get_last_lr()[0])
        live.log_metric("train/grad_norm", float(grad_norm))
        live.log_metric("train/samples_per_s", len(chunk) / elapsed)
        live.log_metric("train/tokens_per_s", tokens / elapsed)
        live.next_step()
        if params.save_every and step % params.save_every == 0 and step < total:
            save_folder(_merged(model), tokenizer, loaded.image_processor, checkpoints / f"step_{step:06d}",
                        {"step": step, "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                         "torch_rng": torch.get_rng_state()})
            # Only the newest checkpoint needs the optimizer state (to resume); older ones stay
            # as models for evaluation against training steps.
            for older in checkpoints.glob("step_*"):
                if older.name != f"step_{step:06d}":
                    (older / STATE_FILE).unlink(missing_ok=True)
    live.end()
    save_folder(_merged(model), tokenizer, loaded.image_processor, output / "model")
    return {"steps": total, "samples": len(examples), "samples_over_max_length": len(over_budget),
            "trainable_parameters": sum(p.numel() for p in trainable), "backend": "hf", "device": device}


def _merged(model):
    """What a checkpoint stores: the whole model, LoRA adapters merged into a copy. (A LoRA run
    resumes from merged weights with fresh adapters: close to, not exactly, an uninterrupted run.)"""
    if hasattr(model, "merge_and_unload"):
        import copy

        return copy.deepcopy(model).merge_and_unload()
    return model
