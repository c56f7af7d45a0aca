"""What the `train` and `rl` stages report besides the model: the DVCLive curve (per optimizer
step what it computed, the same on every run) and the timing file (wall time, samples/s,
tokens/s and model TFLOP/s, different on every run, so kept out of the metrics). For `train`
they are training hooks (``training.loop.HookBase``) the stage hands to the backend: the hf
backend's trainer calls them around its loop, the cosmos-rl backend around its run and once per
step of its log. For `rl` they are ``transformers.TrainerCallback`` objects TRL's trainer calls
(``rl_callbacks``).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from transformers import TrainerCallback

from ..models.flops import DATASHEET_BF16, mfu
from ..storage import atomic_write_bytes, write_json
from ..training.loop import HookBase, RunState, StepResult

if TYPE_CHECKING:
    from dvclive import Live


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


def cut_curve_back(live_dir: Path, step: int) -> None:
    """The DVCLive folder of a run killed after its checkpoint at ``step`` optimizer steps, cut
    back to what that checkpoint holds, before the resumed run adds to it: each TSV under
    ``plots/metrics`` keeps its header and the complete rows of steps before ``step`` (the dead
    run logged the steps after its checkpoint, and a kill may cut a row), and a summary
    (``metrics.json``) that a kill left unreadable is removed (DVCLive's resume would fail on it;
    the next step writes it again). So a resumed curve reads as one uninterrupted run's."""
    for table in sorted((live_dir / "plots" / "metrics").rglob("*.tsv")):
        lines = table.read_text().splitlines()
        if not lines:
            continue
        columns = len(lines[0].split("\t"))
        kept = [line for line in lines[1:] if len(cells := line.split("\t")) == columns and cells[0].isdigit()
                and int(cells[0]) < step and all(cells[1:])]
        atomic_write_bytes(table, ("\n".join([lines[0], *kept]) + "\n").encode())
    summary = live_dir / "metrics.json"
    if summary.exists():
        try:
            json.loads(summary.read_text())
        except (ValueError, UnicodeDecodeError):
            summary.unlink()


def open_live(live_dir: Path, step: int) -> Live:
    """The DVCLive run of a stage in ``live_dir``: a new one at step 0, else the continuation of
    the curve of a run resumed after ``step`` optimizer steps (``cut_curve_back`` first)."""
    from dvclive import Live

    if step > 0:
        cut_curve_back(live_dir, step)
    return Live(dir=str(live_dir), dvcyaml=None, save_dvc_exp=False, resume=step > 0, report=None)


def log_step(live: Live, result: StepResult) -> None:
    """One DVCLive step (numbered by optimizer step from 0, also after a resume): what the step
    computed, the same on every run. Its wall time goes to the timing file (``timing_record``)."""
    live.step = result.step - 1
    live.log_metric("train/loss", result.loss)
    live.log_metric("train/lr", result.lr)
    live.log_metric("train/grad_norm", result.grad_norm)
    live.next_step()


class LiveHook(HookBase):
    """Loss, learning rate and gradient norm to DVCLive in ``live_dir`` (rank 0 only); a run
    that starts past step 0 (resumed from a checkpoint) adds to the curve it continues."""

    def __init__(self, live_dir: Path):
        self.live_dir = live_dir
        self.live: Live | None = None

    def before_train(self, trainer: RunState) -> None:
        """Open the DVCLive run on rank 0 (continuing the curve of a resumed run: ``open_live``)."""
        if trainer.rank == 0:
            self.live = open_live(self.live_dir, trainer.step)

    def after_step(self, trainer: RunState, result: StepResult) -> None:
        """Log the step (``log_step``) on rank 0."""
        if self.live is not None:
            log_step(self.live, result)

    def after_train(self, trainer: RunState) -> None:
        """Close the DVCLive run (its files written), also after a failure."""
        if self.live is not None:
            self.live.end()


class TimingHook(HookBase):
    """The run's ``timing_record`` written to ``path`` after training (rank 0 only, also when
    training failed: the steps it ran). On a CUDA device it names the card, and on a bf16 run on
    a card of ``models.flops.DATASHEET_BF16`` adds ``mfu_datasheet``."""

    def __init__(self, path: Path):
        self.path, self.started = path, 0.0
        self.results: list[StepResult] = []

    def before_train(self, trainer: RunState) -> None:
        """Start the wall clock."""
        self.started = time.perf_counter()

    def after_step(self, trainer: RunState, result: StepResult) -> None:
        """Keep the step's result."""
        self.results.append(result)

    def after_train(self, trainer: RunState) -> None:
        """Write the timing file of the steps run (rank 0)."""
        if trainer.rank == 0:
            card = torch.cuda.get_device_name(trainer.device) if trainer.device.startswith("cuda") else None
            peak = DATASHEET_BF16.get(card) if card is not None and trainer.bf16 else None
            write_json(self.path, timing_record(self.results, time.perf_counter() - self.started, card, peak))


def report_hooks(live: Path, timing: Path | None) -> list[HookBase]:
    """The `train` stage's reporting hooks: DVCLive into ``live``, and the timing file when given."""
    return [LiveHook(live), *([TimingHook(timing)] if timing is not None else [])]


# What the rl stage's DVCLive curve holds of TRL's per-step log (and every ``grounding/`` component).
RL_CURVE = {"reward": "rl/reward", "reward_std": "rl/reward_std", "kl": "rl/kl", "loss": "rl/loss",
            "grad_norm": "rl/grad_norm", "completions/mean_length": "rl/answer_tokens",
            "completions/clipped_ratio": "rl/answers_cut_off"}


class RLLiveCallback(TrainerCallback):
    """TRL's per-step log to DVCLive in ``live_dir`` (the world's process 0 only), numbered by
    optimizer step from 0 like `train`'s; a resumed run adds to the curve it continues. Only what
    the step computed (``RL_CURVE`` and the reward's ``grounding/`` components), never its time."""

    def __init__(self, live_dir: Path):
        self.live_dir = live_dir
        self.live: Live | None = None

    def on_train_begin(self, args, state, control, **kwargs):
        """Open the DVCLive run (continuing the curve of a resumed run: ``open_live``)."""
        if state.is_world_process_zero:
            self.live = open_live(self.live_dir, state.global_step)

    def on_log(self, args, state, control, logs=None, **kwargs):
        """Log one step's values (logs without a reward, such as the run's summary, are skipped)."""
        if self.live is None or not logs or "reward" not in logs:
            return
        self.live.step = state.global_step - 1
        for key, value in sorted(logs.items()):
            name = RL_CURVE.get(key, f"rl/{key}" if key.startswith("grounding/") else None)
            if name is not None:
                self.live.log_metric(name, float(value))
        self.live.next_step()

    def on_train_end(self, args, state, control, **kwargs):
        """Close the DVCLive run (its files written)."""
        if self.live is not None:
            self.live.end()


class RLTimingCallback(TrainerCallback):
    """The rl run's ``timing_record`` (wall time, answers/s, seconds per step from TRL's
    ``step_time``) written to ``path`` when training ends (process 0)."""

    def __init__(self, path: Path):
        self.path, self.started = path, 0.0
        self.results: list[StepResult] = []

    def on_train_begin(self, args, state, control, **kwargs):
        """Start the wall clock."""
        self.started = time.perf_counter()

    def on_log(self, args, state, control, logs=None, **kwargs):
        """Keep one step's time and size."""
        if logs and "step_time" in logs:
            answers = args.per_device_train_batch_size * args.world_size
            self.results.append(StepResult(state.global_step, float(logs.get("loss", 0.0)),
                                           float(logs.get("grad_norm", 0.0)), float(logs.get("learning_rate", 0.0)),
                                           float(logs["step_time"]), answers))

    def on_train_end(self, args, state, control, **kwargs):
        """Write the timing file of the steps run."""
        if state.is_world_process_zero:
            write_json(self.path, timing_record(self.results, time.perf_counter() - self.started))


def rl_callbacks(live: Path, timing: Path | None) -> list[TrainerCallback]:
    """The `rl` stage's reporting callbacks: DVCLive into ``live``, and the timing file when given."""
    return [RLLiveCallback(live), *([RLTimingCallback(timing)] if timing is not None else [])]
