"""One training loop for every execution path, in the manner of detectron2's ``engine/train_loop``:
``Trainer.train()`` iterates optimizer steps; each execution path (one process, DeepSpeed
ZeRO-3) implements only ``run_step()`` and how it saves; checkpoints and DVCLive logging are
hooks. Also here, shared with the cosmos-rl backend: the step folder names and the per-step
DVCLive record.

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
from typing import IO, TYPE_CHECKING, Any

import torch
from tqdm import tqdm

from ..errors import PipelineError
from ..models.flops import DATASHEET_BF16, mfu
from ..models.loading import make_portable
from ..storage import atomic_folder, write_json

if TYPE_CHECKING:
    from dvclive import Live

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


def log_step(live, result: StepResult) -> None:
    """One DVCLive step (numbered by optimizer step from 0, also after a resume): what the step
    computed, the same on every run. Its wall time goes to the timing file (``timing_record``)."""
    live.step = result.step - 1
    live.log_metric("train/loss", result.loss)
    live.log_metric("train/lr", result.lr)
    live.log_metric("train/grad_norm", result.grad_norm)
    live.next_step()


def _rate(count: float | None, seconds: float) -> float | None:
    return round(count / seconds, 3) if count is not None and seconds > 0 else None


def _tflops(flops: float, seconds: float) -> float | None:
    """TFLOP/s to 4 significant digits (not a fixed number of decimals: a tiny model on a CPU runs
    well below 0.001; the file then keeps 6 decimals, ``storage.canonical``), None where nothing
    was counted."""
    return float(f"{flops / seconds / 1e12:.4g}") if flops > 0 and seconds > 0 else None


def timing_record(results: list[StepResult], wall_s: float, device: str | None = None,
                  peak_flops_per_s: float | None = None) -> dict[str, Any]:
    """What ``metrics/timing/train.json`` holds: the run's wall time, its overall samples/s and
    tokens/s over the steps it ran (a resumed run: the steps after the resume; the first step,
    warm-up included, counts like the others), and per step (columns ``step``, ``seconds``,
    ``samples_per_s``, ``tokens_per_s``, ``model_tflops_per_s``). Rates are None where the step's
    tokens are unknown.

    ``model_tflops_per_s``: the model FLOPs of the steps (``StepResult.flops``: counted from the
    operations, forward + backward, without checkpointing's recomputation) per second of step
    time, of ONE process (rank 0's micro-batches on its device: with N processes the run does
    about N times as much); None where not counted (cosmos-rl). ``recompute_tflops_per_s``
    (only with activation checkpointing): the re-run forward FLOPs alone per second, so the two
    add up to what the device executed. ``device``: the card's name (GPU runs);
    ``mfu_datasheet``: ``model_tflops_per_s`` over ``peak_flops_per_s`` (the datasheet's bf16
    rate, ``models.flops.DATASHEET_BF16``), only where that peak is known."""
    seconds = sum(r.seconds for r in results)
    tokens = None if any(r.tokens is None for r in results) else sum(r.tokens or 0 for r in results)
    flops, recomputed = sum(r.flops for r in results), sum(r.recomputed_flops for r in results)
    record: dict[str, Any] = {"wall_s": round(wall_s, 2), "steps_run": len(results), "step_seconds": round(seconds, 2),
              "samples_per_s": _rate(sum(r.samples for r in results), seconds), "tokens_per_s": _rate(tokens, seconds),
              "model_tflops_per_s": _tflops(flops, seconds)}
    if flops > 0:
        record["tflops_per_s_of"] = "one process (rank 0), its own micro-batches"
    if recomputed > 0:
        record["recompute_tflops_per_s"] = _tflops(recomputed, seconds)
    if device is not None:
        record["device"] = device
    if peak_flops_per_s and flops > 0 and seconds > 0:
        record["mfu_datasheet"] = round(mfu(flops, seconds, peak_flops_per_s), 4)
    record["per_step"] = {"step": [r.step for r in results], "seconds": [round(r.seconds, 4) for r in results],
                          "samples_per_s": [_rate(r.samples, r.seconds) for r in results],
                          "tokens_per_s": [_rate(r.tokens, r.seconds) for r in results],
                          "model_tflops_per_s": [_tflops(r.flops, r.seconds) for r in results]}
    return record


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


class HookBase:
    """Called by ``Trainer.train`` around the loop and after every optimizer step."""

    def before_train(self, trainer: Trainer) -> None:
        pass

    def after_step(self, trainer: Trainer, result: StepResult) -> None:
        pass

    def after_train(self, trainer: Trainer) -> None:
        pass


class Trainer(abc.ABC):
    """Runs optimizer steps from ``step`` (0, or where ``resume`` left it) to ``total - 1``.
    Subclasses implement ``run_step``, saving and resuming."""

    def __init__(self, grad_accum: int, total: int, max_nonfinite_steps: int, hooks: list[HookBase], rank: int = 0):
        self.grad_accum, self.total, self.step = grad_accum, total, 0
        self.max_nonfinite_steps, self.nonfinite_steps = max_nonfinite_steps, 0
        self.hooks, self.rank = hooks, rank
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
    instead); only the newest keeps the resumable state, older ones stay as models to evaluate."""

    def __init__(self, root: Path, every: int):
        self.root, self.every = root, every

    def after_step(self, trainer: Trainer, result: StepResult) -> None:
        if not self.every or result.step % self.every or result.step >= trainer.total:
            return
        folder = step_folder(self.root, result.step)
        trainer.save_checkpoint(folder)
        trainer.last_checkpoint = folder
        if trainer.rank == 0:
            for older in step_folders(self.root).values():
                if older != folder:
                    (older / STATE_FILE).unlink(missing_ok=True)
                    shutil.rmtree(older / "deepspeed", ignore_errors=True)


class TimingHook(HookBase):
    """The run's timing (``timing_record``: wall time, samples/s, tokens/s, rank 0's model
    TFLOP/s and, under checkpointing, recompute TFLOP/s) written to ``path`` after training (rank
    0 only): kept out of DVCLive and the metrics because it differs on every run. On a CUDA
    ``device`` it names the card, and with ``bf16`` (autocast or bf16 weights) on a card of
    ``models.flops.DATASHEET_BF16`` adds ``mfu_datasheet``."""

    def __init__(self, path: Path | None, device: str = "cpu", bf16: bool = False):
        self.path, self.started = path, 0.0
        self.results: list[StepResult] = []
        self.device, self.bf16 = device, bf16

    def before_train(self, trainer: Trainer) -> None:
        self.started = time.perf_counter()

    def after_step(self, trainer: Trainer, result: StepResult) -> None:
        self.results.append(result)

    def after_train(self, trainer: Trainer) -> None:
        if self.path is not None and trainer.rank == 0:
            card = torch.cuda.get_device_name(self.device) if self.device.startswith("cuda") else None
            peak = DATASHEET_BF16.get(card) if card is not None and self.bf16 else None
            write_json(self.path, timing_record(self.results, time.perf_counter() - self.started, card, peak))


class ProgressHook(HookBase):
    """A progress bar of optimizer steps on rank 0 (step, loss, samples/s, elapsed and ETA,
    starting at the step a resumed run starts from). Drawn only where ``file`` is a terminal:
    CI logs and redirected output stay free of bar updates (tqdm's ``disable=None``); the run's
    summary, DVCLive and the timing file say what happened there."""

    def __init__(self, file: IO[str] | None = None):
        self.file, self.bar = file, None

    def before_train(self, trainer: Trainer) -> None:
        if trainer.rank == 0:
            self.bar = tqdm(total=trainer.total, initial=trainer.step, desc="train", unit="step", dynamic_ncols=True,
                            disable=None, file=self.file if self.file is not None else sys.stderr)

    def after_step(self, trainer: Trainer, result: StepResult) -> None:
        if self.bar is not None:
            rate = result.samples / max(result.seconds, 1e-9)
            self.bar.set_postfix_str(f"loss {result.loss:.4f}, {rate:.2f} samples/s", refresh=False)
            self.bar.update()

    def after_train(self, trainer: Trainer) -> None:
        if self.bar is not None:
            self.bar.close()


class LiveHook(HookBase):
    """Loss, learning rate and gradient norm to DVCLive (rank 0 only)."""

    def __init__(self, live_dir: Path, resume: bool):
        self.live_dir, self.resume = live_dir, resume
        self.live: Live | None = None

    def before_train(self, trainer: Trainer) -> None:
        from dvclive import Live

        if trainer.rank == 0:
            self.live = Live(dir=str(self.live_dir), dvcyaml=None, save_dvc_exp=False, resume=self.resume,
                             report=None)

    def after_step(self, trainer: Trainer, result: StepResult) -> None:
        if self.live is not None:
            log_step(self.live, result)

    def after_train(self, trainer: Trainer) -> None:
        if self.live is not None:
            self.live.end()
