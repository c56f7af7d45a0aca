"""The `hf` backend: supervised fine-tuning on transformers + PyTorch, one process or many.

Assistant-only loss, AdamW with linear warmup and cosine decay, gradient clipping and accumulation,
full fine-tuning with switches for vision tower / projector / language model or LoRA (peft), bf16
autocast and gradient checkpointing (of every decoder layer or a share of them,
``train.checkpoint_fraction``) on GPUs, fp32 weights or bf16 ones with stochastically rounded
updates (``train.precision``, optim.py); under torchrun, data parallel (PyTorch
DistributedDataParallel) or DeepSpeed ZeRO-3 (``train.deepspeed``, see zero3.py). The loop is
``loop.Trainer``; this module builds the model, optimizer and data, and holds the three execution
paths: one process (``SingleProcessTrainer``), data parallel over the processes of a torchrun
launch (``DataParallelTrainer``: a whole replica per GPU, for models that fit one) and DeepSpeed
ZeRO-3 (``ZeRO3Trainer``: for models that do not). Checkpoints are Hugging Face folders (weights,
tokenizer, image processor) plus ``trainer_state.pt``; a rerun resumes from the newest complete one
and ends with the same weights as an uninterrupted run. Each step's ``StepResult`` (loss,
learning rate, gradient norm, time, samples, tokens and rank 0's model FLOPs, ``step_flops``:
counted from the operations, ``models.flops``) goes to the caller's hooks: the `train` stage's
DVCLive curve and timing file (``pipeline/reporting.py``).
"""

from __future__ import annotations

import contextlib
import copy
import io
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..dataset.formats import read_cosmos
from ..models.checkpointing import use_checkpointing
from ..models.flops import counts_of_batch, training_flops
from ..models.inputs import (
    IGNORE,
    BudgetError,
    Encoder,
    answer_loss,
    padded_width,
    rope_index_owner,
    with_host_positions,
    within_budget,
)
from ..models.loading import LoadedModel, load_model
from ..params import FormatParams, ParamsError, TrainParams
from ..storage import atomic_write_bytes
from . import distributed
from .data import StepPlan, loader_workers, padding_multiple, step_loader
from .loop import (
    STATE_FILE,
    CheckpointHook,
    HookBase,
    ProgressHook,
    StepResult,
    Trainer,
    latest_checkpoint,
    save_folder,
)
from .optim import StochasticAdamW


def trainable_parameters(model, params: TrainParams):
    """Freeze or unfreeze the vision tower, the projector (merger) and the language model; with
    ``lora``, wrap the language model's projections in LoRA adapters. Returns the model to train."""
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


def warmup_steps(total: int, params: TrainParams) -> int:
    """Optimizer steps of linear warmup: ``train.warmup_steps`` when set, else ``train.warmup_ratio``
    of ``total`` rounded up."""
    return params.warmup_steps if params.warmup_steps is not None else math.ceil(params.warmup_ratio * total)


def lr_at(step: int, total: int, params: TrainParams) -> float:
    """Multiplier of the base learning rate: linear warmup, then cosine (or constant) decay."""
    warmup = warmup_steps(total, params)
    if step < warmup:
        return (step + 1) / warmup
    if params.schedule == "constant":
        return 1.0
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


def _merged(model, in_place: bool = False):
    """What a checkpoint or the final model stores: the whole model, LoRA adapters merged. The
    final model merges in place (training is over); a checkpoint merges a copy made in host
    memory, so the device never holds the model twice (a GPU copy of the 8B folder's fp32
    weights raised the measured peak by 26 GiB). The host merge of bf16 weights computes the
    adapters' product in fp32 (PEFT on the CPU), so a checkpoint of a GPU run can differ in the
    last bit from a GPU merge. (A LoRA run resumes from merged weights with fresh adapters: close
    to, not exactly, an uninterrupted run.)"""
    if not hasattr(model, "merge_and_unload"):
        return model
    if in_place:
        return model.merge_and_unload()
    on_host: dict[int, torch.Tensor] = {id(p): torch.nn.Parameter(p.detach().to("cpu", copy=True),
                                                                  requires_grad=p.requires_grad)
                                        for p in model.parameters()}
    on_host.update({id(b): b.detach().to("cpu", copy=True) for b in model.buffers()})
    return copy.deepcopy(model, on_host).merge_and_unload()


def load_optimizer_state(optimizer: torch.optim.Optimizer, state: dict) -> None:
    """``optimizer.load_state_dict(state)`` keeping the implementation this run chose: torch
    restores a group's ``fused`` / ``foreach`` flags from the checkpoint, so a checkpoint written
    before the fused AdamW would switch a resumed run back to the single-tensor update (on the CPU,
    MKL's vendor-dependent square root: numerics.py). The flags go into the state before it is
    loaded, because torch places each loaded ``step`` by them (on the parameter's device for the
    fused update)."""
    flags: tuple[str, ...] = ("fused", "foreach")
    chosen = [{key: group[key] for key in flags if key in group} for group in optimizer.param_groups]
    groups = [{**saved, **kept} for saved, kept in zip(state["param_groups"], chosen, strict=True)]
    optimizer.load_state_dict({**state, "param_groups": groups})


@dataclass
class Setup:
    """Everything both execution paths share."""

    loaded: LoadedModel
    model: Any  # the model being trained (a peft wrapper with LoRA)
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    device: str
    world: int
    checkpointing: bool = False  # activation checkpointing on (its recomputation counted apart)
    checkpoint_fraction: float = 1.0  # the share of decoder layers it recomputes (models.checkpointing)

    def step_flops(self, micro_batches: list[dict[str, torch.Tensor]]) -> tuple[float, float]:
        """(model FLOPs, recomputed FLOPs) of one process's micro-batches, from the collated CPU
        batches (``counts_of_batch`` reads shapes and labels on the host: nothing waits for the
        device). ``training_flops`` charges every matrix product 3 x forward (the gradients of its
        input and of its weight): frozen weights (LoRA's base weights, a frozen vision tower or
        language model) skip their weight gradients, and a frozen vision tower with a frozen
        projector runs no backward at all, so for those runs the figure overstates the work
        done (LoRA's own low-rank products are not counted either: small beside it). Attention is
        counted over the full square (as the throughput benchmark and FlopCounterMode count
        SDPA), not the causal half a flash kernel computes. Each row counts its own tokens:
        padding (to the longest row, then to ``train.pad_to_multiple_of``) is work the device
        does but not model FLOPs, so MFU leaves it out."""
        config = self.loaded.model.config
        total = recomputed = 0.0
        for batch in micro_batches:
            flops = training_flops(config, counts_of_batch(batch, padding=False), checkpointing=self.checkpointing,
                                   checkpoint_fraction=self.checkpoint_fraction)
            total, recomputed = total + flops.total, recomputed + flops.recomputed
        return total, recomputed


def _to_device(batch: dict[str, Any], device: str) -> dict[str, Any]:
    """The batch's tensors on ``device``; other values (``vision_inputs``' ints) as they are."""
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def _tokens(batch: dict[str, torch.Tensor]) -> int:
    return int(batch["attention_mask"].sum())


class SingleProcessTrainer(Trainer):
    """One process on one device: bf16 autocast on GPUs, clipping, a skipped update when the
    gradients are non-finite."""

    def __init__(self, setup: Setup, params: TrainParams, **kwargs):
        super().__init__(**kwargs)
        self.setup, self.params = setup, params
        self.trainable = [p for p in setup.model.parameters() if p.requires_grad]
        self.autocast = setup.device != "cpu" and params.bf16
        self.forward_model = setup.model  # what computes the loss (a wrapper of the model in data parallel)
        self.rope_owner = rope_index_owner(setup.model)  # positions computed on the host: models.inputs
        self.pin = setup.device.startswith("cuda")

    def step_flops(self, micro_batches):
        return self.setup.step_flops(micro_batches)

    def accumulating(self, index: int, count: int):
        """The context of micro-batch ``index`` of ``count``'s forward and backward."""
        return contextlib.nullcontext()

    def over_processes(self, loss: torch.Tensor, samples: int, tokens: int) -> tuple[float, int, int]:
        """The step's mean loss, samples and tokens over all processes (here: one)."""
        return float(loss), samples, tokens

    def run_step(self, micro_batches):
        s = self.setup
        losses = []
        lr = s.scheduler.get_last_lr()[0]
        # Counted on the host copies: counting on the device would wait for it each micro-batch.
        tokens, samples = sum(map(_tokens, micro_batches)), sum(len(b["input_ids"]) for b in micro_batches)
        for index, host_batch in enumerate(micro_batches):
            batch = _to_device(with_host_positions(self.rope_owner, host_batch, pin=self.pin), s.device)
            with self.accumulating(index, len(micro_batches)):
                # No weight cache: it keeps a bf16 copy of every trainable fp32 weight until the
                # forward ends, also those checkpointing would drop (14.4 GiB on the 7B shape, which
                # ran an H200 out of memory in its second step, with weights, gradients and AdamW
                # state held). Without checkpointing autograd keeps the same copies anyway; turning
                # the cache off adds no cast, since no weight is used twice in a forward.
                with torch.autocast(device_type=s.device.split(":")[0], dtype=torch.bfloat16, enabled=self.autocast,
                                    cache_enabled=False):
                    loss = answer_loss(self.forward_model, batch)
                (loss / len(micro_batches)).backward()
            losses.append(loss.detach())
        mean_loss, samples, tokens = self.over_processes(torch.stack(losses).float().mean(), samples, tokens)
        grad_norm = float(torch.nn.utils.clip_grad_norm_(self.trainable, self.params.grad_clip))
        if math.isfinite(grad_norm) and math.isfinite(mean_loss):
            s.optimizer.step()
        s.scheduler.step()
        s.optimizer.zero_grad(set_to_none=True)
        return StepResult(self.step + 1, mean_loss, grad_norm, float(lr), 0.0, samples, tokens)

    def save_checkpoint(self, folder: Path) -> None:
        s = self.setup
        save_folder(_merged(s.model), s.loaded.tokenizer, s.loaded.image_processor, folder,
                    {"step": self.step, "optimizer": s.optimizer.state_dict(), "scheduler": s.scheduler.state_dict(),
                     "torch_rng": torch.get_rng_state(), "nonfinite_steps": self.nonfinite_steps},
                    source=s.loaded.source)

    def save_model(self, folder: Path) -> None:
        s = self.setup
        save_folder(_merged(s.model, in_place=True), s.loaded.tokenizer, s.loaded.image_processor, folder,
                    source=s.loaded.source)

    def resume(self, checkpoint: Path) -> None:
        state = torch.load(checkpoint / STATE_FILE, weights_only=False, map_location="cpu")  # not rank 0's GPU
        load_optimizer_state(self.setup.optimizer, state["optimizer"])
        self.setup.scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["torch_rng"])
        self.step, self.nonfinite_steps = state["step"], state["nonfinite_steps"]


class DataParallelTrainer(SingleProcessTrainer):
    """Every process of a torchrun launch without DeepSpeed: a whole replica of the model per
    process (PyTorch ``DistributedDataParallel``; NCCL on GPUs, gloo on CPUs), each on its own
    micro-batches of the step (``StepPlan``); the last micro-batch's backward averages the
    gradients over the processes, so every replica clips and steps alike. With ``batch_size`` b
    on N processes a step equals one process's step at ``batch_size`` b and ``grad_accum`` N
    (same samples, same loss). Rank 0 writes checkpoints and the final model."""

    def __init__(self, setup: Setup, params: TrainParams, **kwargs):
        super().__init__(setup, params, **kwargs)
        from torch.nn.parallel import DistributedDataParallel

        devices = None if setup.device == "cpu" else [torch.device(setup.device).index]
        self.forward_model = DistributedDataParallel(setup.model, device_ids=devices, gradient_as_bucket_view=True)

    def accumulating(self, index: int, count: int):
        """Gradients stay local until the step's last micro-batch (then one all-reduce)."""
        return self.forward_model.no_sync() if index < count - 1 else contextlib.nullcontext()

    def over_processes(self, loss: torch.Tensor, samples: int, tokens: int) -> tuple[float, int, int]:
        loss_sum, sample_sum, token_sum = distributed.sum_over_processes([float(loss), samples, tokens],
                                                                         self.setup.device)
        return loss_sum / self.setup.world, int(sample_sum), int(token_sum)

    def save_checkpoint(self, folder: Path) -> None:
        if self.rank == 0:
            super().save_checkpoint(folder)
        distributed.barrier()

    def save_model(self, folder: Path) -> None:
        if self.rank == 0:
            super().save_model(folder)
        distributed.barrier()


class ZeRO3Trainer(Trainer):
    """Every process of a torchrun launch under DeepSpeed ZeRO-3: the engine accumulates,
    clips, steps and schedules; weights are bf16 and sharded. DeepSpeed applies an update before
    its gradient norm can be seen, so a non-finite step stops the run at once."""

    can_skip = False

    def __init__(self, setup: Setup, engine, **kwargs):
        super().__init__(**kwargs)
        self.setup, self.engine = setup, engine
        self.rope_owner, self.pin = rope_index_owner(engine), setup.device.startswith("cuda")

    def step_flops(self, micro_batches):
        return self.setup.step_flops(micro_batches)  # this rank's micro-batches; the config is whole under ZeRO-3

    def run_step(self, micro_batches):
        s = self.setup
        lr = s.scheduler.get_last_lr()[0]
        losses = []
        tokens, samples = sum(map(_tokens, micro_batches)), sum(len(b["input_ids"]) for b in micro_batches)
        for batch in micro_batches:
            loss = answer_loss(self.engine, _to_device(with_host_positions(self.rope_owner, batch, pin=self.pin),
                                                          s.device))
            self.engine.backward(loss)  # scales by 1/grad_accum; steps, clips and schedules at the boundary
            self.engine.step()
            losses.append(loss.detach())
        grad_norm = float(self.engine.get_global_grad_norm())
        return StepResult(self.step + 1, float(torch.stack(losses).float().mean()), grad_norm, float(lr), 0.0,
                          samples * s.world, tokens * s.world)

    def save_checkpoint(self, folder: Path) -> None:
        """Rank 0 writes the gathered Hugging Face model, then every rank its shard of the training
        state; the state file goes last, written atomically: it marks the checkpoint complete."""
        from . import zero3 as ds

        s = self.setup
        state = ds.full_state_dict(self.engine)  # collective: every rank takes part
        if self.rank == 0:
            save_folder(s.loaded.model, s.loaded.tokenizer, s.loaded.image_processor, folder, state_dict=state,
                        source=s.loaded.source)
        distributed.barrier()
        self.engine.save_checkpoint(str(folder / "deepspeed"), client_state={"step": self.step})
        if self.rank == 0:
            marker = io.BytesIO()
            torch.save({"step": self.step}, marker)
            atomic_write_bytes(folder / STATE_FILE, marker.getvalue())

    def save_model(self, folder: Path) -> None:
        from . import zero3 as ds

        state = ds.full_state_dict(self.engine)
        if self.rank == 0:
            save_folder(self.setup.model, self.setup.loaded.tokenizer, self.setup.loaded.image_processor, folder,
                        state_dict=state, source=self.setup.loaded.source)

    def resume(self, checkpoint: Path) -> None:
        _, client_state = self.engine.load_checkpoint(str(checkpoint / "deepspeed"))
        self.step = client_state["step"]


def check_memory(model, params: TrainParams, examples, device, world: int = 1) -> None:
    """``ParamsError`` before the first step when the estimated peak of the largest micro-batch
    (``training.memory``) exceeds the GPU's memory. Its language-model positions are padded as
    ``collate`` pads them: ``batch_size`` rows of the longest sample, rounded up to
    ``train.pad_to_multiple_of``. Gradients count as held through the forward with several
    micro-batches a step or ``world`` > 1 processes (data parallel's gradient buckets)."""
    from .memory import check_fits, estimate

    def largest(values: list[int]) -> int:
        return sum(sorted(values)[-params.batch_size:])

    texts = [text for _, text in examples]
    image_pad = model.config.image_token_id
    multiple = padding_multiple(params.pad_to_multiple_of, device)
    width = padded_width(max(len(t.input_ids) for t in texts), multiple)
    needed = estimate(model, params.gradient_checkpointing, params.batch_size * width,
                      4 * largest([t.input_ids.count(image_pad) for t in texts]),
                      largest([sum(label != IGNORE for label in t.labels) for t in texts]),
                      autocast=params.bf16, stochastic_update=params.precision == "bf16_stochastic",
                      checkpoint_fraction=params.checkpoint_fraction,
                      accumulating=params.grad_accum > 1 or world > 1)
    check_fits(needed, torch.cuda.get_device_properties(device).total_memory, torch.cuda.get_device_name(device))
    print(f"train: estimated peak memory {needed.describe()}", file=sys.stderr)


@dataclass
class Process:
    """Where this process trains: its rank among ``world`` processes, its device, and under
    ZeRO-3 the DeepSpeed config and the sharded-loading context (which must outlive loading)."""

    rank: int
    world: int
    device: str
    ds_config: dict[str, Any] | None = None
    sharding: Any = None

    @property
    def zero3(self) -> bool:
        return self.ds_config is not None


def _setup_process(params: TrainParams) -> Process:
    """One process, a data-parallel process of a torchrun launch, or a ZeRO-3 process;
    ``ParamsError`` for LoRA with ZeRO-3."""
    if params.deepspeed is not None:
        from . import zero3 as ds

        if params.lora:
            raise ParamsError("train.lora with train.deepspeed is not supported: LoRA models fit one GPU")
        rank, world, device = ds.distributed_context()
        ds_config = ds.load_config(params.deepspeed, params, world)
        return Process(rank, world, device, ds_config, ds.sharded_loading(ds_config))
    if distributed.launched():
        return Process(*distributed.join())
    return Process(0, 1, "cuda" if torch.cuda.is_available() else "cpu")


def _setup_model(params: TrainParams, base: Path | str, resume_from: Path | None,
                 process: Process) -> tuple[LoadedModel, Any]:
    """The model in fp32, or bf16 with ``train.precision: bf16_stochastic`` (from the newest
    checkpoint, or the base; ZeRO-3 always loads the base and restores its own shards), with Liger
    kernels and activation checkpointing as asked (``train.checkpoint_fraction`` of the decoder
    layers: ``models.checkpointing``), and its trainable parts chosen (``trainable_parameters``):
    (loaded folder, model to train)."""
    dtype = "bfloat16" if params.precision == "bf16_stochastic" else "float32"
    loaded = load_model(base if process.zero3 else resume_from or base, dtype,
                        None if process.zero3 else process.device, params.attn_implementation,
                        params.vision_attention)
    if params.fused_kernels == "liger" and process.device != "cpu":
        from ..models.kernels import use_liger_kernels

        use_liger_kernels(loaded.model)
    if params.gradient_checkpointing:
        use_checkpointing(loaded.model, params.checkpoint_fraction)
    return loaded, trainable_parameters(loaded.model, params)


def _setup_data(loaded: LoadedModel, fmt: FormatParams, dataset: Path) -> tuple[Encoder, list, list[str]]:
    """The encoder of the format params, the training samples that fit ``model_max_length``
    (with their text encodings) and one message per sample that does not; ``BudgetError`` when
    none fits."""
    encoder = Encoder(loaded.tokenizer, loaded.image_processor, fmt.min_pixels, fmt.max_pixels, fmt.model_max_length)
    examples, over_budget = within_budget(encoder, read_cosmos(dataset / "train"))
    if not examples:
        raise BudgetError(f"{dataset / 'train'}: no sample fits model_max_length {fmt.model_max_length}")
    return encoder, examples, over_budget


def _setup_optimizer(model, params: TrainParams, process: Process, examples: list,
                     dataset: Path) -> tuple[torch.optim.Optimizer, StepPlan, int, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW over the trainable parameters (after the GPU memory check), the step plan, the
    number of steps and the learning-rate schedule; ``ParamsError`` when a step needs more
    samples than fit the budget."""
    if process.device != "cpu" and not process.zero3:
        check_memory(model, params, examples, process.device, process.world)
    if params.lr is None:
        raise ValueError("train.lr is null: train_hf takes resolved params (training.config.resolved)")
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer: torch.optim.Optimizer
    if params.precision == "bf16_stochastic":
        optimizer = StochasticAdamW(trainable, lr=params.lr, weight_decay=params.weight_decay, seed=params.seed)
    else:
        # The fused AdamW on every device. On the CPU its square root is ATen's own (IEEE-exact),
        # where the plain one calls MKL's vector math, whose results depend on the CPU's vendor
        # (numerics.py); on a GPU it updates in place in one kernel per group, where the
        # single-tensor loop used before allocated temporaries per tensor and launched several
        # kernels per tensor.
        optimizer = torch.optim.AdamW(trainable, lr=params.lr, weight_decay=params.weight_decay, fused=True)
    plan = StepPlan(len(examples), params.batch_size, params.grad_accum, process.world, params.seed)
    if plan.per_step > len(examples):
        raise ParamsError(f"train.batch_size x train.grad_accum x processes = {plan.per_step} samples a step, but "
                          f"{dataset / 'train'} has {len(examples)} that fit model_max_length")
    total = params.max_steps or params.epochs * plan.steps_per_epoch
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_at(s, total, params))
    return optimizer, plan, total, scheduler


def _setup_trainer(params: TrainParams, setup: Setup, process: Process, total: int, output: Path,
                   hooks: Sequence[HookBase], resume_from: Path | None) -> Trainer:
    """The trainer of the execution path with its hooks (the caller's ``hooks``, then checkpoints
    and progress: a step's curve row is written before its checkpoint, so a run killed between
    the two resumes from the checkpoint before and its curve has no gap), resumed from
    ``resume_from`` when there is one."""
    bf16 = process.ds_config["bf16"]["enabled"] if process.ds_config else process.device != "cpu" and params.bf16
    checkpoints = CheckpointHook(output / "checkpoints", params.save_every, params.keep_checkpoints)
    common = dict(grad_accum=params.grad_accum, total=total, max_nonfinite_steps=params.max_nonfinite_steps,
                  hooks=[*hooks, checkpoints, ProgressHook()],
                  rank=process.rank, device=process.device, bf16=bf16)
    trainer: Trainer
    if process.ds_config is not None:
        from . import zero3 as ds

        engine = ds.initialize(setup.model, setup.optimizer, setup.scheduler, process.ds_config)
        trainer = ZeRO3Trainer(setup, engine, **common)
    elif process.world > 1:
        trainer = DataParallelTrainer(setup, params, **common)
    else:
        trainer = SingleProcessTrainer(setup, params, **common)
    if resume_from is not None:
        trainer.resume(resume_from)
        trainer.last_checkpoint = resume_from
    return trainer


def train_hf(params: TrainParams, fmt: FormatParams, base: Path | str, dataset: Path, output: Path,
             hooks: Sequence[HookBase] = ()) -> dict[str, Any]:
    """Fine-tune ``base`` on ``dataset``'s training split with resolved ``params`` (the recipe:
    process, model, data, optimizer, trainer, in that order), resuming from the newest checkpoint
    under ``output/checkpoints``; the final model goes to ``output/model``. ``hooks`` (the
    stage's reporting) run after the trainer's own (checkpoints, progress). Returns the run's
    summary (steps, samples, samples over the budget, skipped steps, trainable parameters,
    device, processes, loader workers, peak GPU memory in GiB)."""
    process = _setup_process(params)
    resume_from = latest_checkpoint(output / "checkpoints")
    loaded, model = _setup_model(params, base, resume_from, process)
    encoder, examples, over_budget = _setup_data(loaded, fmt, dataset)
    optimizer, plan, total, scheduler = _setup_optimizer(model, params, process, examples, dataset)
    setup = Setup(loaded, model, optimizer, scheduler, process.device, process.world, params.gradient_checkpointing,
                  params.checkpoint_fraction)
    trainer = _setup_trainer(params, setup, process, total, output, hooks, resume_from)
    workers = loader_workers(params.loader_workers, process.device)
    model.train()
    trainer.train(step_loader(encoder, examples, plan, process.rank, trainer.step, total, workers,
                              pin_memory=process.device != "cpu",
                              multiple=padding_multiple(params.pad_to_multiple_of, process.device)))
    trainable = [p for p in model.parameters() if p.requires_grad]  # before the save merges LoRA in place
    trainer.save_model(output / "model")
    return {"steps": total, "samples": len(examples), "samples_over_max_length": len(over_budget),
            "nonfinite_steps_skipped": trainer.nonfinite_steps,
            "trainable_parameters": sum(p.ds_numel if hasattr(p, "ds_numel") else p.numel() for p in trainable),
            "backend": "hf", "device": process.device.split(":")[0], "processes": process.world,
            "loader_workers": workers,
            "peak_gpu_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2)
            if process.device != "cpu" else None}
