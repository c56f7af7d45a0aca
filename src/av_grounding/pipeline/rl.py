"""The `rl` stage: GRPO from the train stage's final model (``training.grpo``), rewarded by the
project's own matching (docs/rl_reward.md); its checkpoints and final policy become further
columns of `infer` and `evaluate`.

Outputs under the RL folder:
  inputs.json   what the run is made from (rl parameters, the image limits, the SFT run's
                inputs_sha256, the training split's and the code's digests): a rerun resumes
                from the newest checkpoint only when these match; otherwise it starts over
  trainer/      TRL's newest checkpoint-N (optimizer, scheduler, RNG)
  checkpoints/  step_NNNNNN/ model folders, every rl.save_every steps
  model/        the final policy
  run.json      base (the SFT model), steps made (fewer than rl.steps where rl.time_budget_s
                stopped the run), inputs_sha256 (what `infer` compares)
With ``rl.steps: 0`` the stage writes only ``inputs.json`` and ``run.json`` (steps 0): no columns.
"""

from __future__ import annotations

import dataclasses
import hashlib
import shutil
from pathlib import Path
from typing import Any

from .. import numerics
from ..evaluation.config import ConfigError
from ..evaluation.reward import RewardConfig
from ..params import FormatParams, ParamsError, RLParams
from ..sources import code_digest
from ..storage import dumps_json, folder_digest, remove_partials, write_json
from .outputs import Manifest, read_run, write_report

INPUTS = "inputs.json"
MADE = ("trainer", "checkpoints", "model", "run.json")  # what an earlier run made


def rl_inputs(params: RLParams, fmt: FormatParams, dataset: Path, train: Path) -> dict[str, Any]:
    """What an RL run is made of (module docstring): equal inputs, equal run."""
    return {"rl": {**dataclasses.asdict(params), "reward": dict(params.reward)},
            "format": {key: getattr(fmt, key) for key in ("min_pixels", "max_pixels")},
            "sft_inputs_sha256": read_run(train).get("inputs_sha256"),
            "train_split_sha256": folder_digest(dataset / "train"),
            "code_sha256": code_digest(__name__, "av_grounding.training.grpo")}


def check_reward(params: RLParams) -> None:
    """``ParamsError`` naming ``rl.reward`` for fields ``RewardConfig`` refuses, before any work."""
    try:
        RewardConfig.from_mapping(dict(params.reward))
    except (ConfigError, TypeError) as exc:
        raise ParamsError(f"rl.reward: {exc}") from None


def empty_curve(live: Path) -> None:
    """The DVCLive folder of a stage that trained no step: no curve, an empty summary (DVC tracks
    ``metrics.json`` and ``plots/metrics`` as outputs, which must exist)."""
    shutil.rmtree(live, ignore_errors=True)
    (live / "plots" / "metrics").mkdir(parents=True)
    write_json(live / "metrics.json", {})


def rl(params: RLParams, fmt: FormatParams, dataset: Path, train: Path, output: Path, metrics: Path | None = None,
       live: Path = Path("dvclive/rl"), timing: Path | None = None) -> dict[str, Any]:
    """The `rl` stage: GRPO from ``train/model`` on ``dataset``'s training split, or the resumption
    of a run made from the same inputs. CPU numerics are pinned first (``numerics.pin_torch``).

    Args:
        params: the ``rl`` section (steps, frames and answers per step, learning rate, KL,
            temperature, answer budget, checkpoints, reward weights).
        fmt: the ``format`` section (image pixel limits).
        dataset: format's output folder (its ``train/`` split, Cosmos-RL layout, with the truth).
        train: train's output folder (``run.json``, ``model/``).
        output: the RL folder (module docstring).
        metrics: the summary as JSON (steps, frames, answers per step, reward configuration, the
            mean reward of the first and last steps, the last KL), when given.
        live: the DVCLive folder (per step: reward, its spread, each reward component, KL, loss,
            answer length).
        timing: wall time and seconds per step, when given.

    Returns:
        The summary written to ``metrics``.

    Raises:
        ParamsError: ``rl.reward`` names a field ``RewardConfig`` does not have or a bad value.
        MissingInputError: ``train/run.json`` is missing (run train first).
    """
    check_reward(params)
    numerics.pin_torch()
    inputs = rl_inputs(params, fmt, dataset, train)
    remove_partials(output)
    manifest = Manifest(output / INPUTS, inputs)
    if not manifest.matches():
        manifest.reset(*(output / name for name in MADE))
    summary: dict[str, Any] = {"steps": params.steps}
    if not params.steps:
        empty_curve(live)
    else:
        from ..training.grpo import train_grpo
        from .reporting import rl_callbacks  # transformers' trainer and peft: 4 s of imports a run with no step

        run = train_grpo(params, fmt, train / "model", dataset, output, rl_callbacks(live, timing))
        curve = run.pop("curve")
        summary = {**run, "reward_first_step": curve[0]["reward"] if curve else None,
                   "reward_last_step": curve[-1]["reward"] if curve else None,
                   "kl_last_step": curve[-1].get("kl") if curve else None}
    write_json(output / "run.json", {"base": str(train / "model"), "steps": summary["steps"],
                                     "inputs_sha256": hashlib.sha256(dumps_json(inputs).encode()).hexdigest()})
    write_report(metrics, summary)
    return summary
