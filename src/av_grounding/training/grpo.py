"""GRPO after supervised fine-tuning, through TRL's ``GRPOTrainer`` (docs/rl_reward.md#the-rl-stage).

The policy starts from the train stage's final model and answers the training frames' prompts,
``group_size`` samples per frame; each answer is scored by ``training.rewards.GroundingReward``
(the project's matching, ``evaluation/reward.py``) and GRPO pushes the policy toward the answers
that beat their group's mean, with a KL term against the starting model (TRL's ``beta``).
Generation is TRL's plain ``generate`` (no vLLM), so it runs on a CPU as on a GPU. Precision
(``rl.precision``): ``fp32`` keeps fp32 weights, under bf16 autocast on a GPU, and samples with
the dynamic KV cache: under autocast Qwen3-VL's keys come out of its fp32 key norm in fp32 and
its values out of a bf16 matmul, and a static cache, allocated in the first key's dtype, refuses
the values (H100, 2026-12-06, benchmarks/rl_vs_sft/results/README.md). ``bf16_stochastic`` keeps
the policy (and so TRL's reference model) in bf16 without autocast, updates it with
``StochasticAdamW`` and samples with a static cache, whose decoding step transformers compiles on
CUDA (TRL turns that compilation off; the stage turns it back on).

The prompts are the dataset's own (system, user with the image), rendered by the model folder's
chat template through a Qwen processor that holds the image processor at ``format``'s pixel
limits: the same tokens as the SFT encoder's prompt (``models.inputs.Encoder``; tested).

Under ``output``: ``trainer/checkpoint-N`` (TRL's resumable state, the newest only, removed
when the run completes), ``checkpoints/step_NNNNNN`` (model folders for `infer`, every
``save_every`` steps) and ``model`` (the final policy). A rerun resumes from the newest
``trainer/checkpoint-N``.
"""

from __future__ import annotations

import dataclasses
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..dataset.formats import Sample, read_cosmos
from ..evaluation.reward import RewardConfig
from ..geometry.virtual import VIRTUAL_CAMERA, AnswerCamera
from ..models.loading import LoadedModel, load_model
from ..params import FormatParams, RLParams
from .loop import save_folder, step_folder
from .optim import StochasticAdamW
from .rewards import CAMERA_COLUMN, CODEC_COLUMN, TRUTH_COLUMN, GroundingReward

TRAINER = "trainer"  # TRL's checkpoint-N folders (optimizer, scheduler, RNG: what resuming needs)
# What the summary keeps of TRL's per-step log: reward mean and spread, KL, answer lengths.
CURVE = ("reward", "reward_std", "kl", "completions/mean_length", "completions/clipped_ratio", "loss", "grad_norm")


def image_text_processor(loaded: LoadedModel, fmt: FormatParams) -> Any:
    """The model type's Qwen processor (``Qwen2_5_VLProcessor`` or ``Qwen3VLProcessor``) over the
    loaded tokenizer and PIL image processor, images only: the published processors also hold a
    video processor, which needs torchvision. Its image processor resizes within ``fmt``'s
    ``min_pixels`` / ``max_pixels``, as the encoder of training and inference does."""
    from transformers.models.qwen2_5_vl.processing_qwen2_5_vl import Qwen2_5_VLProcessor
    from transformers.models.qwen3_vl.processing_qwen3_vl import Qwen3VLProcessor

    base = {"qwen2_5_vl": Qwen2_5_VLProcessor, "qwen3_vl": Qwen3VLProcessor}[loaded.model.config.model_type]

    class ImageTextProcessor(base):  # type: ignore[valid-type, misc]
        # ProcessorMixin takes its sub-processors from this signature: no video_processor.
        def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
            super().__init__(image_processor, tokenizer, None, chat_template=chat_template)

    images = loaded.image_processor
    images.min_pixels, images.max_pixels = fmt.min_pixels, fmt.max_pixels
    images.size = {"shortest_edge": fmt.min_pixels, "longest_edge": fmt.max_pixels}
    return ImageTextProcessor(images, loaded.tokenizer, chat_template=loaded.tokenizer.chat_template)


def prompt_messages(sample: Sample) -> list[dict[str, Any]]:
    """The sample's prompt in TRL's conversational form: the image as a placeholder, the picture
    itself in the row's ``image`` column."""
    messages: list[dict[str, Any]] = []
    if sample.system:
        messages.append({"role": "system", "content": [{"type": "text", "text": sample.system}]})
    messages.append({"role": "user", "content": [{"type": "image"}, {"type": "text", "text": sample.user}]})
    return messages


def grpo_dataset(samples: list[Sample]) -> Any:
    """A ``datasets.Dataset`` of one TRL row per sample: ``prompt``, ``image`` (the file, decoded
    when a batch reads it: 80k frames are never in memory at once), and the reward's columns
    ``annotations`` (the truth, JSON text), ``box_codec`` and ``virtual_camera`` (the answer's
    camera block as JSON text, or None). ``ValueError`` naming a sample read without its record
    (the Qwen-VL layout has no truth) or with a camera block ``AnswerCamera`` refuses."""
    import json

    from datasets import Dataset
    from datasets import Image as ImageFeature

    rows = []
    for sample in samples:
        if sample.record is None:
            raise ValueError(f"sample {sample.id}: no annotation record (read the Cosmos-RL layout)")
        block = sample.record.get(VIRTUAL_CAMERA)
        if block is not None:
            AnswerCamera.deserialize(block, f"sample {sample.id}")  # refused here, before the GPU time
        rows.append({"prompt": prompt_messages(sample), "image": str(sample.image),
                     TRUTH_COLUMN: json.dumps(sample.record.get(TRUTH_COLUMN, [])),
                     CODEC_COLUMN: sample.record.get(CODEC_COLUMN),
                     CAMERA_COLUMN: None if block is None else json.dumps(block)})
    return Dataset.from_list(rows).cast_column("image", ImageFeature(mode="RGB"))


def grpo_config(params: RLParams, output: Path, device: str, bf16: bool) -> Any:
    """TRL's ``GRPOConfig`` of ``params``: ``prompts_per_step`` frames x ``group_size`` answers a
    step, one optimizer step per generation (no reuse of old samples, so GRPO's ratio is 1 and
    ``kl`` alone holds the policy near the start), a constant learning rate, checkpoints every
    ``save_every`` steps (the newest kept), bf16 autocast over fp32 weights if ``bf16``, the KV
    cache of ``params.precision`` (module docstring), no reporting integrations (the stage logs
    through its callbacks)."""
    from trl import GRPOConfig

    return GRPOConfig(
        output_dir=str(output / TRAINER), max_steps=params.steps, seed=params.seed, data_seed=params.seed,
        per_device_train_batch_size=params.prompts_per_step * params.group_size,
        num_generations=params.group_size, max_completion_length=params.max_answer_tokens,
        temperature=params.temperature, beta=params.kl, learning_rate=params.lr, lr_scheduler_type="constant",
        cache_implementation="static" if params.precision == "bf16_stochastic" else "dynamic",
        gradient_checkpointing=params.gradient_checkpointing, logging_steps=1, report_to=[],
        save_strategy="steps" if params.save_every else "no", save_steps=params.save_every or 1, save_total_limit=1,
        use_cpu=device == "cpu", bf16=bf16, disable_tqdm=not sys.stderr.isatty())


def latest_trainer_checkpoint(output: Path) -> Path | None:
    """The newest ``trainer/checkpoint-N`` with its trainer state (what TRL resumes from)."""
    found = [(int(p.name.split("-")[1]), p) for p in (output / TRAINER).glob("checkpoint-*")
             if p.name.split("-")[1].isdigit() and (p / "trainer_state.json").is_file()]
    return max(found)[1] if found else None


def _export_callback(loaded: LoadedModel, base: Path, output: Path) -> Any:
    """A TrainerCallback that writes ``checkpoints/step_NNNNNN`` (a model folder `infer` reads) at
    every checkpoint TRL saves."""
    from transformers import TrainerCallback

    class ExportCheckpoints(TrainerCallback):
        def on_save(self, args, state, control, model=None, **kwargs):
            if state.is_world_process_zero:
                save_folder(model, loaded.tokenizer, loaded.image_processor,
                            step_folder(output / "checkpoints", state.global_step), source=str(base))

    return ExportCheckpoints()


def _time_budget_callback(budget_s: float) -> Any:
    """A TrainerCallback that ends training at the step boundary nearest ``budget_s`` seconds of
    the steps' own time (TRL's logged ``step_time``, the figure the timing file sums): it stops
    once another step, as long as the last one, would overshoot the budget by more than it would
    leave unspent. At least one step is made."""
    from transformers import TrainerCallback

    class TimeBudget(TrainerCallback):
        def __init__(self):
            self.spent = 0.0  # seconds of the steps made so far

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "step_time" in logs:
                step = float(logs["step_time"])
                self.spent += step
                if self.spent + step / 2 >= budget_s:
                    control.should_training_stop = True

    return TimeBudget()


def _optimizer(loaded: LoadedModel, params: RLParams) -> tuple[Any, Any]:
    """``GRPOTrainer``'s ``optimizers``: for ``bf16_stochastic`` a ``StochasticAdamW`` with
    TrainingArguments' AdamW defaults (betas 0.9 / 0.999, eps 1e-8, no weight decay) at the
    constant ``params.lr``, keyed by ``params.seed``; else (None, None), TRL's own AdamW."""
    import torch

    if params.precision != "bf16_stochastic":
        return None, None
    trainable = [p for p in loaded.model.parameters() if p.requires_grad]
    optimizer = StochasticAdamW(trainable, lr=params.lr, weight_decay=0.0, seed=params.seed)
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)


def end_ids(loaded: LoadedModel) -> set[int]:
    """The token ids that end an answer, as GRPOTrainer gathers them: the generation config's
    ``eos_token_id`` (one id or a list: the published Qwen2.5-VL's holds ``<|im_end|>`` and
    ``<|endoftext|>``), the tokenizer's, and ``<|im_end|>``."""
    configured = loaded.model.generation_config.eos_token_id
    ids = set(configured if isinstance(configured, list) else [] if configured is None else [configured])
    return ids | {loaded.tokenizer.eos_token_id, loaded.tokenizer.convert_tokens_to_ids("<|im_end|>")} - {None}


def _trainer_class() -> type:
    """TRL's ``GRPOTrainer`` resuming everything but the weights from a checkpoint (optimizer,
    scheduler, RNG, step): ``train_grpo`` loads the policy itself, with the key mapping that
    transformers' ``Trainer._load_from_checkpoint`` lacks for Qwen-VL (it would warn of every key
    missing and keep the weights it has)."""
    from trl import GRPOTrainer

    class ResumingGRPOTrainer(GRPOTrainer):
        def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
            return None

    return ResumingGRPOTrainer


def train_grpo(params: RLParams, fmt: FormatParams, base: Path, dataset: Path, output: Path,
               callbacks: Sequence[Any] = ()) -> dict[str, Any]:
    """GRPO from the model folder ``base`` on ``dataset``'s training split (module docstring),
    resuming from the newest checkpoint under ``output/trainer``; the final policy goes to
    ``output/model``. ``callbacks``: further ``transformers.TrainerCallback`` objects (the stage's
    reporting). With ``params.time_budget_s`` training ends at the step boundary nearest that many
    seconds of step time (``_time_budget_callback``). Returns the run's summary: steps made,
    frames, device, the reward configuration, and per step the mean reward, its spread within
    groups, KL and answer length (``curve``).

    Raises ``ConfigError`` for ``params.reward`` fields ``RewardConfig`` refuses, ``ValueError``
    for a dataset without annotation records."""
    import torch

    config = RewardConfig.from_mapping(dict(params.reward))
    device = "cuda" if torch.cuda.is_available() else "cpu"
    resume = latest_trainer_checkpoint(output)
    # The policy of a resumed run comes from its exported folder: TRL's checkpoint holds the
    # weights under the hub's key names, which Trainer's own resume does not map back.
    start = step_folder(output / "checkpoints", int(resume.name.split("-")[1])) if resume else base
    loaded = load_model(start, "bfloat16" if params.precision == "bf16_stochastic" else "float32", device)
    # TRL builds the KL reference from the policy config's name_or_path: always the starting model.
    loaded.model.config._name_or_path = str(base)
    processor = image_text_processor(loaded, fmt)
    samples = read_cosmos(dataset / "train")
    rows = grpo_dataset(samples)
    reward = GroundingReward(config, eos_token_ids=end_ids(loaded))
    args = grpo_config(params, output, device, bf16=device != "cpu" and params.precision == "fp32")
    trainer = _trainer_class()(model=loaded.model, reward_funcs=[reward], args=args, train_dataset=rows,
                          processing_class=processor, optimizers=_optimizer(loaded, params),
                          callbacks=[_export_callback(loaded, base, output), *callbacks,
                                     *([_time_budget_callback(params.time_budget_s)] if params.time_budget_s else [])])
    trainer.generation_config.disable_compile = args.cache_implementation != "static"
    trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    save_folder(trainer.model, loaded.tokenizer, loaded.image_processor, output / "model", source=str(base))
    # The resumable state is only needed by a crashed run; its trainer_state.json holds wall times.
    shutil.rmtree(output / TRAINER, ignore_errors=True)
    curve = [{key: entry[key] for key in CURVE if key in entry} | {"step": entry["step"]}
             for entry in trainer.state.log_history if "reward" in entry]
    return {"steps": trainer.state.global_step, "frames": len(samples), "device": device, "answers_per_step":
            params.prompts_per_step * params.group_size, "reward_config": dataclasses.asdict(config), "curve": curve}
