"""The grounding reward (``evaluation/reward.py``) in the two GRPO trainers' calling conventions
(docs/rl_reward.md).

- TRL ``GRPOTrainer`` (trl 1.16.0, ``trl/trainer/grpo_trainer.py``, ``_calculate_rewards``):
  each reward function is called with keywords ``prompts``, ``completions``, ``completion_ids``
  (token ids of each completion, ending with the end-of-sequence token when generation stopped
  there), every dataset column except ``prompt`` as a list, ``trainer_state``, ``log_extra`` and
  ``log_metric``; it returns one float per completion. ``GroundingReward`` is such a callable.
  It reads two dataset columns: ``annotations`` (the frame's truth) and, optionally,
  ``box_codec``.
- cosmos-rl GRPO (``cosmos_rl/dispatcher/algo/reward.py``, ``Reward.compute_per_reward_func``;
  the same file in 0.4.7): each function of ``launch_worker(reward_fns=[...])`` is called as
  ``fn(to_be_evaluated, reference, prompt=..., data_packer=..., config=..., tokenizer=...)``
  and returns a float, or ``(float, {metric: value})`` whose metrics cosmos-rl averages into its
  report; with ``train.train_policy.group_reward_calculation`` it gets the group's list of
  completions and returns lists. ``cosmos_rl_reward`` is such a function.

This module imports no trainer: cosmos-rl runs in its own environment, where this package needs
only numpy, scipy, PyYAML and json-repair.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any

from ..evaluation.reward import RewardBreakdown, RewardConfig, reward
from ..geometry.virtual import VIRTUAL_CAMERA, AnswerCamera

TRUTH_COLUMN = "annotations"  # the ground-truth record's key: [{"label", "bbox_3d"}], or its JSON text
CODEC_COLUMN = "box_codec"  # the ground-truth record's key; absent or None: RewardConfig.codec
# The answer's camera (geometry.virtual.AnswerCamera's block, or its JSON text); absent or None: the real camera
CAMERA_COLUMN = VIRTUAL_CAMERA
COSMOS_RL_CONFIG_KEY = "grounding_reward"  # the TOML table [custom.grounding_reward] holds RewardConfig fields
METRIC_PREFIX = "grounding/"


def answer_camera(value: Any, source: str) -> AnswerCamera | None:
    """The ``AnswerCamera`` of a ``virtual_camera`` block, or of its JSON text; None for None.
    ValueError naming ``source`` for anything ``AnswerCamera.deserialize`` refuses."""
    if isinstance(value, (str, bytes)):
        try:
            value = json.loads(value)
        except ValueError as exc:
            raise ValueError(f"{source}: {VIRTUAL_CAMERA!r} is not JSON: {exc}") from None
    return None if value is None else AnswerCamera.deserialize(value, source)


def read_truth(value: Any) -> tuple[list[dict[str, Any]], str | None, AnswerCamera | None]:
    """(truth boxes, box codec or None, the answer's camera or None) of a truth value: a list of
    ``{"label", "bbox_3d"}`` boxes, a ground-truth record (an object with ``annotations`` and
    optionally ``box_codec`` and a ``virtual_camera`` block: a ``text/<id>.json`` file of the
    Cosmos-RL dataset), or the JSON text of either. ValueError for anything else."""
    if isinstance(value, (str, bytes)):
        try:
            value = json.loads(value)
        except ValueError as exc:
            raise ValueError(f"truth is not JSON: {exc}") from None
    if isinstance(value, Mapping):
        boxes, codec = value.get(TRUTH_COLUMN), value.get(CODEC_COLUMN)
        if isinstance(boxes, list) and (codec is None or isinstance(codec, str)):
            return boxes, codec, answer_camera(value.get(VIRTUAL_CAMERA), "the ground-truth record")
    elif isinstance(value, list):
        return value, None, None
    raise ValueError(f"truth must be a list of boxes or a record with an {TRUTH_COLUMN!r} list, got {value!r:.200}")


def completion_text(completion: Any) -> str:
    """The answer text of a completion: a string as it is; a conversation (TRL's conversational
    datasets) its last message's content, a string or a list of ``{"type": "text", "text"}`` parts."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, Sequence) and completion and isinstance(completion[-1], Mapping):
        content = completion[-1].get("content") or ""
        if isinstance(content, str):
            return content
        return "".join(part.get("text", "") for part in content if isinstance(part, Mapping))
    raise ValueError(f"a completion must be a string or a list of messages, got {completion!r:.200}")


def component_means(breakdowns: Sequence[RewardBreakdown]) -> dict[str, float]:
    """Mean of every numeric field (the total, each weighted term, each count) over
    ``breakdowns``, keyed ``grounding/<field>``; empty for no breakdown."""
    if not breakdowns:
        return {}
    names = [k for k, v in breakdowns[0].serialize().items() if not isinstance(v, str)]
    return {f"{METRIC_PREFIX}{name}": sum(float(getattr(b, name)) for b in breakdowns) / len(breakdowns)
            for name in names}


class GroundingReward:
    """A TRL ``GRPOTrainer`` reward function: ``GRPOTrainer(..., reward_funcs=[GroundingReward(
    config, eos_token_ids=trainer_eos_ids)])``. Picklable (a plain class), named ``GroundingReward``
    in TRL's logs (``rewards/GroundingReward/mean``).

    ``eos_token_ids``: the ids that end generation, as ``GRPOTrainer.eos_token_ids`` gathers them
    (the model's ``generation_config.eos_token_id`` and the tokenizer's; for Qwen ``<|im_end|>``
    and ``<|endoftext|>``): a completion whose last id is not one of them was cut
    off at ``max_completion_length`` and is penalised as truncated. ValueError when empty.
    """

    def __init__(self, config: RewardConfig | None = None, *, eos_token_ids: Collection[int]) -> None:
        if not eos_token_ids:
            raise ValueError("eos_token_ids must name at least one end-of-sequence token id")
        self.config = config or RewardConfig()
        self.eos_token_ids = frozenset(int(i) for i in eos_token_ids)
        self.last: list[RewardBreakdown] = []  # the breakdowns of the latest call, one per completion

    def _generation(self, ids: Sequence[int] | None) -> tuple[bool, int | None]:
        """(stopped at end-of-sequence, answer tokens without that token) of one completion's ids;
        (True, None) without ids: nothing to judge."""
        if ids is None:
            return True, None
        ended = len(ids) > 0 and int(ids[-1]) in self.eos_token_ids
        return ended, len(ids) - int(ended)

    def __call__(self, prompts: Sequence[Any], completions: Sequence[Any],
                 completion_ids: Sequence[Sequence[int]] | None = None, *, annotations: Sequence[Any] | None = None,
                 box_codec: Sequence[str | None] | None = None, virtual_camera: Sequence[Any] | None = None,
                 log_metric: Callable[[str, float], None] | None = None, **_: Any) -> list[float]:
        """One total reward per completion. ``annotations[i]``, ``box_codec[i]``: the truth
        columns of completion i's frame (``read_truth``); ``virtual_camera[i]``: its answer's
        camera block or its JSON text (``answer_camera``; None or no column: the real camera, or the
        truth record's block); ``completion_ids[i]``: its token ids
        (without them neither truncation nor the token limit is judged). ``log_metric`` (TRL's):
        receives ``component_means`` of the batch. Other columns and TRL's keywords are ignored.
        ValueError for a missing ``annotations`` column, a bad truth value or a bad completion."""
        if annotations is None:
            raise ValueError(f"the dataset needs a {TRUTH_COLUMN!r} column: each frame's truth boxes (read_truth)")
        breakdowns = []
        for i, completion in enumerate(completions):
            boxes, codec, camera = read_truth(annotations[i])
            if virtual_camera is not None and virtual_camera[i] is not None:
                camera = answer_camera(virtual_camera[i], f"completion {i}")
            finished, n_tokens = self._generation(completion_ids[i] if completion_ids is not None else None)
            breakdowns.append(reward(completion_text(completion), boxes, self.config,
                                     codec=(box_codec[i] if box_codec is not None else None) or codec,
                                     finished=finished, n_tokens=n_tokens,
                                     answer_camera=camera))
        self.last = breakdowns
        if log_metric is not None:
            for name, value in component_means(breakdowns).items():
                log_metric(name, value)
        return [b.total for b in breakdowns]


def _cosmos_rl_config(config: Any) -> RewardConfig:
    """RewardConfig from the ``[custom.grounding_reward]`` table of a cosmos-rl ``Config`` (defaults without one)."""
    custom = getattr(config, "custom", None) or {}
    return RewardConfig.from_mapping(custom.get(COSMOS_RL_CONFIG_KEY) or {})


def _cosmos_rl_one(text: str, boxes: list[dict[str, Any]], codec: str | None, camera: AnswerCamera | None,
                   settings: RewardConfig, config: Any, tokenizer: Any) -> tuple[float, dict[str, float]]:
    n_tokens, finished = None, True
    if tokenizer is not None:
        n_tokens = len(tokenizer.encode(text, add_special_tokens=False))
        limit = getattr(getattr(config, "rollout", None), "max_response_length", None)
        finished = limit is None or n_tokens < limit
    result = reward(text, boxes, settings, codec=codec, finished=finished, n_tokens=n_tokens, answer_camera=camera)
    return result.total, component_means([result])


def cosmos_rl_reward(to_be_evaluated: str | Sequence[str], reference: str | None, *args: Any, config: Any = None,
                     tokenizer: Any = None, **kwargs: Any
                     ) -> tuple[float, dict[str, float]] | tuple[list[float], list[dict[str, float]]]:
    """A cosmos-rl GRPO reward function: ``launch_worker(dataset=..., reward_fns=[cosmos_rl_reward])``.

    ``to_be_evaluated``: the rollout's answer text (a list of them under
    ``group_reward_calculation``); ``reference``: what the dataset's ``get_reference_answer(idx)``
    returned, which cosmos-rl requires to be a string: the JSON text of the frame's ground-truth
    record (``text/<id>.json``: ``annotations`` and ``box_codec``) or of its box list.
    ``config``: cosmos-rl's ``Config``; its ``custom["grounding_reward"]`` table (TOML
    ``[custom.grounding_reward]``) holds ``RewardConfig`` fields, and ``rollout.max_response_length``
    the generation limit. ``tokenizer``: the policy's; with it the answer's tokens are counted
    and an answer of at least ``max_response_length`` tokens is taken as cut off (cosmos-rl does
    not pass vLLM's finish reason to rewards, so this is an estimate). ``prompt``, ``data_packer``
    and other keywords are ignored.

    Returns ``(total, metrics)``, ``metrics`` being ``component_means`` of this answer (cosmos-rl
    averages them over the step as ``train/grounding/<field>``), or lists of both for a list.
    Raises ValueError for a missing or bad reference and ConfigError for a bad config table.
    """
    if reference is None:
        raise ValueError("cosmos_rl_reward needs the frame's ground-truth record as reference (get_reference_answer)")
    boxes, codec, camera = read_truth(reference)
    settings = _cosmos_rl_config(config)
    if isinstance(to_be_evaluated, str):
        return _cosmos_rl_one(to_be_evaluated, boxes, codec, camera, settings, config, tokenizer)
    results = [_cosmos_rl_one(text, boxes, codec, camera, settings, config, tokenizer) for text in to_be_evaluated]
    return [total for total, _ in results], [metrics for _, metrics in results]
