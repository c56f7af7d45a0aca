"""One training loop for every execution path, in the manner of detectron2's ``engine/train_loop``:
``Trainer.train()`` iterates optimizer steps; each execution path (one process, DeepSpeed
ZeRO-3) implements only ``run_step()`` and how it saves; checkpoints and DVCLive logging are
hooks (the ones writing the stage's reports, DVCLive and the timing file, are the pipeline's:
``pipeline/reporting.py``). Also here, shared with the cosmos-rl backend: the step folder names
and ``StepResult``.

A non-finite loss or gradient norm never passes silently: the step's update is skipped and
counted, and once more than ``max_nonfinite_steps`` such steps happened (default 0: the first)
the run stops with ``TrainingDivergedError`` naming the step; checkpoints are written only after
good steps, so the newest one stays usable.
"""

from __future__ import annotations

import abc
import dataclasses
import math
import re
import shutil
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Protocol

import torch
from tqdm import tqdm

from ..errors import PipelineError
from ..models.loading import make_portable
from ..storage import atomic_folder, remove_folder

STATE_FILE = "trainer_state.pt"
_STEP_FOLDER = re.compile(r"step_(\d+)")


class TrainingDivergedError(PipelineError, ValueError):
    """The loss or gradient norm became non-finite more often than allowed (a bad learning rate
    or warmup is a bad parameter value: the stage reports it in one line)."""


def step_folder(root: Path, step: int) -> Path:
    """``<root>/step_NNNNNN``: where the checkpoint (or export) of optimizer step ``step`` lives."""
    return Path(root) / f"step_{step:06d}"


def step_folders(root: Path) -> dict[int, Path]:
    """Existing ``step_N`` folders under ``root``, by step, in step order."""
    found = {}
    for folder in Path(root).glob("step_*"):
        match = _STEP_FOLDER.fullmatch(folder.name)
        if match and folder.is_dir():
            found[int(match[1])] = folder
    return dict(sorted(found.items()))


@dataclass
class StepResult:
    """What one optimizer step did. ``loss`` is the mean over its micro-batches; ``samples`` and
    ``tokens`` count all processes; ``tokens`` is None where unknown (cosmos-rl's log).
    ``flops``: the model FLOPs of this process's micro-batches (forward + backward, counted from
    the operations, ``models.flops.training_flops``), ``recomputed_flops`` the forward FLOPs
    activation checkpointing runs again on top; both per process, 0 where not counted
    (``Trainer.step_flops``; cosmos-rl)."""

    step: int  # optimizer steps done, this one included (1-based)
    loss: float
    grad_norm: float
    lr: float
    seconds: float
    samples: int
    tokens: int | None = None
    flops: float = 0.0
    recomputed_flops: float = 0.0

    @property
    def finite(self) -> bool:
        return math.isfinite(self.loss) and math.isfinite(self.grad_norm)


def canonical(state: Any) -> Any:
    """``state`` with every dict's keys in sorted order (ints before strings) and every string
    interned, recursively, so that ``torch.save`` writes the same bytes for the same content: a
    resumed optimizer's per-parameter state comes back from ``load_state_dict`` with its keys in
    another order than a fresh one's, and as other string objects (pickle writes a string once
    per object, so equal strings that are distinct objects change the bytes)."""
    if isinstance(state, dict):
        return {canonical(key): canonical(state[key]) for key in sorted(state, key=lambda k: (isinstance(k, str), k))}
    if isinstance(state, (list, tuple)):
        return type(state)(canonical(item) for item in state)
    if isinstance(state, str):
        return sys.intern(state)
    return state


# Files of a model folder that no object saved here writes (the video processor needs
# torchvision to load; transformers 5 saves a tokenizer as tokenizer.json alone): copied from the
# folder training started from, so a fine-tuned or merged model keeps everything the published
# checkpoint ships.
COMPANION_FILES = ("video_preprocessor_config.json", "chat_template.json", "vocab.json", "merges.txt")


def save_folder(model, tokenizer, image_processor, folder: Path, extra: dict[str, Any] | None = None,
                state_dict: dict[str, Any] | None = None, source: str = "") -> None:
    """A Hugging Face folder written atomically, with ``extra`` as the training state to resume
    from, and the COMPANION_FILES of the local folder ``source`` that it lacks."""
    with atomic_folder(folder) as tmp:
        model.save_pretrained(tmp, state_dict=state_dict)
        tokenizer.save_pretrained(tmp)
        image_processor.save_pretrained(tmp)
        make_portable(tmp)
        for name in COMPANION_FILES:
            if source and (Path(source) / name).is_file() and not (tmp / name).exists():
                shutil.copyfile(Path(source) / name, tmp / name)
        if extra is not None:
            torch.save(canonical(extra), tmp / STATE_FILE)


def latest_checkpoint(folder: Path) -> Path | None:
    """The newest complete checkpoint (its state file is written last) under ``folder``."""
    done = [p for p in step_folders(folder).values() if (p / STATE_FILE).exists()]
    return done[-1] if done else None


class RunState(Protocol):
    """What a hook may read of the run it watches: a ``Trainer``, or cosmos-rl's run seen from
    outside (``training.cosmos_rl.ExternalRun``). ``step``: optimizer steps done (at
    ``before_train``: where a resumed run starts); ``device``: where rank 0 trains ("cuda:0",
    "cpu"); ``bf16``: whether the steps compute in bf16 (autocast or bf16 weights)."""

    rank: int
    step: int
    total: int
    device: str
    bf16: bool


class HookBase:
    """Called by ``Trainer.train`` around the loop and after every optimizer step (cosmos-rl's
    backend calls them around its run and once per step of its log). The hooks that write the
    stage's reports (DVCLive, timing) live in ``pipeline/``; the ones here belong to training."""

    def before_train(self, trainer: RunState) -> None:
        pass

    def after_step(self, trainer: RunState, result: StepResult) -> None:
        pass

    def after_train(self, trainer: RunState) -> None:
        pass


class Trainer(abc.ABC):
    """Runs optimizer steps from ``step`` (0, or where ``resume`` left it) to ``total - 1``.
    Subclasses implement ``run_step``, saving and resuming."""

    def __init__(self, grad_accum: int, total: int, max_nonfinite_steps: int, hooks: list[HookBase], rank: int = 0,
                 device: str = "cpu", bf16: bool = False):
        self.grad_accum, self.total, self.step = grad_accum, total, 0
        self.max_nonfinite_steps, self.nonfinite_steps = max_nonfinite_steps, 0
        self.hooks, self.rank, self.device, self.bf16 = hooks, rank, device, bf16
        self.last_checkpoint: Path | None = None

    def train(self, batches: Iterable[dict[str, torch.Tensor]]) -> None:
        """Run the remaining steps over ``batches``: this rank's micro-batches from step
        ``self.step`` on, ``grad_accum`` per step."""
        batches = iter(batches)
        for hook in self.hooks:
            hook.before_train(self)
        try:
            while self.step < self.total:
                started = time.perf_counter()
                micro_batches = [next(batches) for _ in range(self.grad_accum)]
                flops, recomputed = self.step_flops(micro_batches)  # on the CPU batches: no device sync
                result = self.run_step(micro_batches)
                self.step += 1
                result = dataclasses.replace(result, step=self.step, seconds=time.perf_counter() - started,
                                             flops=flops, recomputed_flops=recomputed)
                if not result.finite:
                    self._count_nonfinite(result)
                    continue
                for hook in self.hooks:
                    hook.after_step(self, result)
        finally:  # as detectron2's TrainerBase: DVCLive closed, timing written, bar closed, even on failure
            for hook in self.hooks:
                hook.after_train(self)

    def _count_nonfinite(self, result: StepResult) -> None:
        self.nonfinite_steps += 1
        if self.nonfinite_steps > self.max_nonfinite_steps or not self.can_skip:
            raise TrainingDivergedError(
                f"step {result.step}: loss {result.loss}, gradient norm {result.grad_norm} (non-finite; "
                f"{self.nonfinite_steps} such step(s), train.max_nonfinite_steps {self.max_nonfinite_steps}); "
                f"lower train.lr or raise train.warmup_ratio (or train.warmup_steps). Last good checkpoint: "
                f"{self.last_checkpoint or 'none'}")

    can_skip = True  # whether run_step leaves the weights untouched on a non-finite step

    def step_flops(self, micro_batches: list[dict[str, torch.Tensor]]) -> tuple[float, float]:
        """(model FLOPs, recomputed FLOPs) of this process's micro-batches of one step, counted
        from the collated batches before ``run_step`` moves them to the device (nothing here may
        wait for the device); (0, 0) where the trainer does not count them."""
        return 0.0, 0.0

    @abc.abstractmethod
    def run_step(self, micro_batches: list[dict[str, torch.Tensor]]) -> StepResult:
        """Forward, backward and (if the gradients are finite) the update of one optimizer step:
        its mean loss, gradient norm before clipping, learning rate used, samples and tokens (the
        last two over all processes); ``train`` fills in the step number, time and FLOPs."""

    @abc.abstractmethod
    def save_checkpoint(self, folder: Path) -> None:
        """A model folder ``infer`` can read plus what resuming needs (written last)."""

    @abc.abstractmethod
    def save_model(self, folder: Path) -> None:
        """The final model folder."""

    @abc.abstractmethod
    def resume(self, checkpoint: Path) -> None:
        """Restore the training state (and ``step``) saved by ``save_checkpoint``."""


class CheckpointHook(HookBase):
    """A checkpoint every ``every`` steps (not at the last step: the final model is saved
    instead); only the newest keeps the resumable state, older ones stay as models to evaluate,
    the newest ``keep`` of them (0: all; ``train.keep_checkpoints``)."""

    def __init__(self, root: Path, every: int, keep: int = 0):
        self.root, self.every, self.keep = root, every, keep

    def after_step(self, trainer: RunState, result: StepResult) -> None:
        assert isinstance(trainer, Trainer), "checkpoints are written by this package's trainers"
        if not self.every or result.step % self.every or result.step >= trainer.total:
            return
        folder = step_folder(self.root, result.step)
        trainer.save_checkpoint(folder)
        trainer.last_checkpoint = folder
        if trainer.rank == 0:
            older = [path for path in step_folders(self.root).values() if path != folder]
            dropped = older[:max(0, len(older) + 1 - self.keep)] if self.keep else []
            for path in older:
                if path in dropped:
                    remove_folder(path)
                else:
                    (path / STATE_FILE).unlink(missing_ok=True)
                    shutil.rmtree(path / "deepspeed", ignore_errors=True)


class ProgressHook(HookBase):
    """A progress bar of optimizer steps on rank 0 (step, loss, samples/s, elapsed and ETA,
    starting at the step a resumed run starts from). Drawn only where ``file`` is a terminal:
    CI logs and redirected output stay free of bar updates (tqdm's ``disable=None``); the run's
    summary, DVCLive and the timing file say what happened there."""

    def __init__(self, file: IO[str] | None = None):
        self.file, self.bar = file, None

    def before_train(self, trainer: RunState) -> None:
        if trainer.rank == 0:
            self.bar = tqdm(total=trainer.total, initial=trainer.step, desc="train", unit="step", dynamic_ncols=True,
                            disable=None, file=self.file if self.file is not None else sys.stderr)

    def after_step(self, trainer: RunState, result: StepResult) -> None:
        if self.bar is not None:
            rate = result.samples / max(result.seconds, 1e-9)
            self.bar.set_postfix_str(f"loss {result.loss:.4f}, {rate:.2f} samples/s", refresh=False)
            self.bar.update()

    def after_train(self, trainer: RunState) -> None:
        if self.bar is not None:
            self.bar.close()
