"""The `cosmos-rl` backend: supervised fine-tuning through NVIDIA's cosmos-rl
(docs/recipe.md#cosmos-rl-settings).

cosmos-rl needs ``transformers<5`` and ``av<19``, so it runs in its own environment as a
subprocess (``train.cosmos_rl_executable``). The stage prepares a run folder,

  <output>/cosmos-rl/run.toml              the config, every harmful cosmos-rl default overridden
  <output>/cosmos-rl/cosmos_rl_dataset.py  a self-contained dataset script (imports nothing of ours)
  <output>/cosmos-rl/conversations.jsonl   samples that passed the token budget, image paths relative
  <output>/cosmos-rl/cosmos-rl.log         everything cosmos-rl printed

runs ``cosmos-rl --config run.toml cosmos_rl_dataset.py`` inside it, then checks the exported
safetensors (its exit code does not show a crashed worker), logs the loss curve it printed to
DVCLive like the `hf` backend does, and places the exports where the `hf`
backend puts its models: the last export in ``model/``, earlier ones in ``checkpoints/step_N/``,
each a whole model under the published weight names (a LoRA export merged into the base weights:
``cosmos_rl_export``) completed with the tokenizer and image processor of the base model, so
`infer` does not care which backend trained. All paths in the run folder are relative: same params, same bytes.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from ..dataset.formats import read_cosmos
from ..errors import PipelineError
from ..models.inputs import BudgetError, Encoder, within_budget
from ..params import FormatParams, TrainParams
from ..processes import signal_on_parent_death
from ..storage import atomic_write_bytes
from .cosmos_rl_export import place_export
from .data import global_batch
from .loop import HookBase, StepResult, step_folder, step_folders

RUN_FOLDER = "cosmos-rl"
# With an explicit timestamp cosmos-rl writes straight into output_dir (<output_dir>/safetensors/
# step_N, <output_dir>/checkpoints); left empty it would add a clock-named folder to output_dir.
TIMESTAMP = "run"
# A resumed run finds its checkpoints under os.path.dirname(output_dir)/*/checkpoints (cosmos-rl
# 0.4.7, utils/checkpoint.py, _root_output_dir): "outputs" would give "" and find none.
OUTPUTS = "./outputs"
SCRIPT = "cosmos_rl_dataset.py"
CONVERSATIONS = "conversations.jsonl"
LOG = "cosmos-rl.log"
# Parameter-name patterns of the parts that the train_* switches freeze. They hold for every naming
# cosmos-rl uses: its native Qwen2.5-VL (``visual.*``, ``model.layers.*``) and its wrapper of the
# Hugging Face classes (``model.model.visual.*``, ``model.model.language_model.*``, ``model.lm_head``).
FREEZE_PATTERNS = {
    "train_vision": r"(^|\.)visual\.(?!merger|deepstack_merger)",
    "train_projector": r"(^|\.)visual\.(merger|deepstack_merger)",
    "train_llm": r"^(?!(.*\.)?visual\.)",  # everything outside the vision tower and projector
}


class CosmosRLError(PipelineError, RuntimeError):
    """cosmos-rl did not produce a model; the message names the log and quotes its end."""


def relative(path: Path, start: Path) -> str:
    return os.path.relpath(Path(path).resolve(), Path(start).resolve())


def model_reference(base: Path | str, run: Path) -> str:
    """A local base model relative to the run folder (cosmos-rl runs there); a hub id as it is."""
    return relative(Path(base), run) if Path(base).exists() else str(base)


def write_conversations(params: TrainParams, fmt: FormatParams, base: Path | str, dataset: Path,
                        run: Path) -> dict[str, Any]:
    """Check each sample's token budget with the base model's tokenizer (cosmos-rl's packer
    crashes on over-long samples), write the ones that fit as cosmos-rl conversations."""
    from ..models.loading import load_image_processor, load_tokenizer

    encoder = Encoder(load_tokenizer(base), load_image_processor(base), fmt.min_pixels, fmt.max_pixels,
                      fmt.model_max_length)
    kept, over_budget = within_budget(encoder, read_cosmos(dataset / "train"))
    # cosmos-rl's packer reads string contents and the image's pixel budget from its part; the
    # turns are those of dataset.formats.conversation (no system turn without a system prompt).
    lines = [json.dumps([
        *([{"role": "system", "content": sample.system}] if sample.system else []),
        {"role": "user", "content": [
            {"type": "image", "image": relative(sample.image, run), "min_pixels": fmt.min_pixels,
             "max_pixels": fmt.max_pixels},
            {"type": "text", "text": sample.user}]},
        {"role": "assistant", "content": sample.answer},
    ], sort_keys=True) for sample, _ in kept]
    if not lines:
        raise BudgetError(f"{dataset / 'train'}: no sample fits model_max_length {fmt.model_max_length}")
    atomic_write_bytes(run / CONVERSATIONS, ("\n".join(lines) + "\n").encode())
    return {"samples": len(lines), "samples_over_max_length": len(over_budget), "over_budget": over_budget}


def cosmos_config(params: TrainParams, fmt: FormatParams, base: Path | str, run: Path, samples: int,
                  resume: bool = False) -> dict[str, Any]:
    """The cosmos-rl TOML as a dict. Keys whose cosmos-rl default is a trap are always written."""
    per_step = global_batch(params.batch_size, params.grad_accum, params.gpus)
    freeze = [pattern for switch, pattern in FREEZE_PATTERNS.items() if not getattr(params, switch)]
    if params.lora:  # adapters on every linear layer (all-linear); train_llm's pattern would freeze the LLM's too
        freeze = [p for p in freeze if p != FREEZE_PATTERNS["train_llm"]]
    train: dict[str, Any] = {
        "epoch": params.epochs,
        "output_dir": OUTPUTS,
        "timestamp": TIMESTAMP,
        "resume": resume,
        "compile": False,  # default true: minutes of compilation, and it fails on some tiny shapes
        # cosmos-rl's native Qwen2.5-VL needs flash-attn; its Hugging Face wrapper runs on sdpa.
        "force_use_hf": params.cosmos_rl_hf_model,
        "seed": params.seed,
        "optm_name": "AdamW",
        "optm_lr": params.lr,
        "optm_weight_decay": params.weight_decay,
        # an int counts steps, a float in [0, 1] is a share of all steps
        "optm_warmup_steps": params.warmup_steps if params.warmup_steps is not None else float(params.warmup_ratio),
        "optm_decay_type": "cosine" if params.schedule == "cosine" else "none",
        "optm_grad_norm_clip": params.grad_clip,
        "fsdp_offload": params.fsdp_offload,
        "train_batch_per_replica": per_step,
        "param_dtype": "bfloat16" if params.bf16 else "float32",
        "master_dtype": "float32",
        "ckpt": {
            "enable_checkpoint": True,  # default false, and then nothing is exported
            "export_safetensors": True,
            "save_freq": params.save_every or max(1, samples * params.epochs // per_step),
            "save_mode": "sync",
            # its saves, the final one included; deleting a save deletes its export too
            "max_keep": params.keep_checkpoints + 1 if params.keep_checkpoints else -1,
        },
        "train_policy": {
            "type": "sft",
            "trainer_type": "sft",
            "mini_batch": params.batch_size,
            "dataset": {"name": "av_grounding"},
            "conversation_column_name": "conversations",
            "dataloader_shuffle": True,
            "dataloader_seed": params.seed,
            "dataloader_drop_last": True,
        },
    }
    if params.max_steps is not None:
        train["max_num_steps"] = params.max_steps
    policy: dict[str, Any] = {
        "model_name_or_path": model_reference(base, run),
        "model_max_length": fmt.model_max_length,
        "model_gradient_checkpointing": params.gradient_checkpointing,
        "parallelism": {"tp_size": 1, "cp_size": 1, "pp_size": 1, "dp_shard_size": params.gpus,
                        "dp_replicate_size": 1, "n_init_replicas": 1},  # tp_size defaults to 2
    }
    if freeze:
        policy["freeze_pattern"] = freeze
    if params.lora:
        policy["lora"] = {"r": params.lora_rank, "lora_alpha": float(params.lora_alpha),
                          "lora_dropout": params.lora_dropout, "target_modules": "all-linear"}
    return {
        "train": train,
        "policy": policy,
        "logging": {"logger": ["console"], "project_name": "av_grounding", "experiment_name": "sft"},
        "validation": {"enable": False},
    }


def exported_steps(run: Path) -> dict[int, Path]:
    """Folders ``<output_dir>/safetensors/step_N`` holding weights, by step."""
    return {step: folder for step, folder in step_folders(run / OUTPUTS / "safetensors").items()
            if any(folder.glob("*.safetensors"))}


STEP_LINE = re.compile(r"Step: (?P<step>\d+)/\d+, Loss: (?P<loss>\S+), Grad norm: (?P<grad_norm>\S+), "
                       r"Iteration time: (?P<seconds>\S+)s, optimizer/lr_[^:]*: (?P<lr>[^,\s]+)")


def training_curve(log: Path) -> dict[int, dict[str, float]]:
    """Per optimizer step what cosmos-rl printed (the last print of a step wins after a resume)."""
    curve = {}
    for match in STEP_LINE.finditer(log.read_text(errors="replace")):
        curve[int(match["step"])] = {k: float(match[k]) for k in ("loss", "grad_norm", "seconds", "lr")}
    return dict(sorted(curve.items()))


@dataclass
class ExternalRun:
    """cosmos-rl's run as the hooks see it (``loop.RunState``): rank 0 of this process, the
    last step it reported (0 before it starts: its log is replayed whole, the steps of a crashed
    earlier attempt included, so the curve is rewritten rather than continued), its last step;
    its device and precision are cosmos-rl's own."""

    total: int
    step: int = 0
    rank: int = 0
    device: str = "cosmos-rl"
    bf16: bool = False


def step_results(curve: dict[int, dict[str, float]], samples_per_step: int) -> list[StepResult]:
    """cosmos-rl's logged steps as ``StepResult`` (its step timer's seconds; tokens and FLOPs unknown)."""
    return [StepResult(step, values["loss"], values["grad_norm"], values["lr"], values["seconds"], samples_per_step)
            for step, values in curve.items()]


def run_cosmos_rl(executable: str, run: Path) -> int:
    """Run cosmos-rl in the run folder, its output teed to the log; returns its exit code."""
    if shutil.which(executable) is None:
        raise CosmosRLError(f"train.cosmos_rl_executable {executable!r} not found: install cosmos-rl in its own "
                            "environment (it needs transformers<5 and av<19) and point the param at its launcher")
    with open(run / LOG, "a") as log:  # a resumed run adds to the log of the crashed one
        process = subprocess.Popen([executable, "--config", "run.toml", SCRIPT], cwd=run, stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, text=True, errors="replace",
                                   # prctl(PR_SET_PDEATHSIG) must run in the child: only preexec_fn can
                                   preexec_fn=lambda: signal_on_parent_death(signal.SIGTERM))  # noqa: PLW1509
        assert process.stdout is not None  # stdout=PIPE
        try:
            for line in process.stdout:
                log.write(line)
                print(line, end="", flush=True)
            code = process.wait()
        except BaseException:  # interrupted: cosmos-rl must not go on writing into the run folder
            process.terminate()
            process.wait()
            raise
    return code


def prepare_run(params: TrainParams, fmt: FormatParams, base: Path | str, dataset: Path,
                output: Path) -> tuple[Path, dict[str, Any]]:
    """Write the run folder (conversations, TOML, dataset script); returns it with the budget counts.
    ``params`` are resolved already (``training.config.resolved``, called by the train stage)."""
    import tomli_w

    if params.lora and not Path(base).is_dir():  # known before cosmos-rl spends the GPU time
        raise CosmosRLError(f"train.model {base!r}: LoRA through cosmos-rl needs the base model in a local folder "
                            "(its export is the adapter alone, merged here into the base weights)")
    run = output / RUN_FOLDER
    run.mkdir(parents=True, exist_ok=True)
    budget = write_conversations(params, fmt, base, dataset, run)
    resume = (run / OUTPUTS / "checkpoints").is_dir()  # a crashed run continues
    config = cosmos_config(params, fmt, base, run, budget["samples"], resume)
    atomic_write_bytes(run / "run.toml", tomli_w.dumps(config).encode())
    atomic_write_bytes(run / SCRIPT, resources.files(__package__).joinpath(SCRIPT).read_bytes())
    return run, budget


def train_cosmos_rl(params: TrainParams, fmt: FormatParams, base: Path | str, dataset: Path,
                    output: Path, hooks: Sequence[HookBase] = ()) -> dict[str, Any]:
    """The cosmos-rl backend: prepare the run folder (``prepare_run``; ``params`` resolved by the
    caller), run cosmos-rl, and turn its exports into checkpoints and the run's summary. The
    ``hooks`` (the stage's reporting) bracket the run and see each step of its log
    (``step_results``: every step logged so far, also those of a crashed earlier attempt)."""
    run, budget = prepare_run(params, fmt, base, dataset, output)
    before = max(exported_steps(run), default=0)  # exports of a crashed earlier attempt
    seen = ExternalRun(params.max_steps or 0)
    for hook in hooks:
        hook.before_train(seen)
    try:
        code = run_cosmos_rl(params.cosmos_rl_executable, run)
        exports = exported_steps(run)
        if code != 0 or max(exports, default=0) <= before:
            tail = (run / LOG).read_text(errors="replace").splitlines()[-25:]
            raise CosmosRLError(f"{run / LOG}: cosmos-rl exited with code {code} and exported no new safetensors "
                                f"under {run / OUTPUTS / 'safetensors'} (newest step before this run: {before}, "
                                f"after: {max(exports, default=0)}); its last lines:\n" + "\n".join(tail))
        curve = training_curve(run / LOG)
        for result in step_results(curve, global_batch(params.batch_size, params.grad_accum, params.gpus)):
            seen.step = result.step
            for hook in hooks:
                hook.after_step(seen, result)
    finally:
        for hook in hooks:
            hook.after_train(seen)
    *earlier, last = exports
    for step in earlier:
        place_export(exports[step], base, step_folder(output / "checkpoints", step))
    place_export(exports[last], base, output / "model")
    # The resumable state (optimizer, full precision weights) is only needed by a crashed run.
    shutil.rmtree(run / OUTPUTS, ignore_errors=True)
    return {"steps": last, "samples": budget["samples"], "samples_over_max_length": budget["samples_over_max_length"],
            "backend": "cosmos-rl", "processes": params.gpus, "exit_code": code,
            "final_loss": curve[max(curve)]["loss"] if curve else None}
