"""Selective activation checkpointing (``train.checkpoint_fraction``): which of the language
model's decoder layers recompute their activations in the backward pass.

transformers' ``gradient_checkpointing_enable`` checkpoints every vision block and every decoder
layer of Qwen2.5-VL and Qwen3-VL: each is a ``GradientCheckpointingLayer``, whose call runs
through the checkpoint function while its own ``gradient_checkpointing`` flag is set. Leaving a
share of the decoder layers unchecked keeps their activations for the backward instead of
recomputing them: less recomputation for memory a run has to spare. The checkpointed layers are
spread evenly over the depth; the vision blocks always recompute. ``models.flops`` and
``training.memory`` count the same layers.
"""

from __future__ import annotations

import math
from typing import Any

# A share written in decimals (0.29 of 100 layers) or as the float of k / n (15 / 22 of 22)
# multiplies out a hair below the whole number of layers it means.
_ROUNDING = 1e-9


def checkpointed_layers(count: int, fraction: float) -> tuple[int, ...]:
    """Indices (ascending) of the decoder layers that recompute, of ``count`` layers at the share
    ``fraction`` (0 to 1): ``k = floor(count * fraction)`` of them, evenly spread, layer ``i``
    when ``floor((i + 1) k / count) > floor(i k / count)`` (the last layer whenever ``k >= 1``;
    the odd ones at 0.5, every third at 1/3). ValueError for a share outside [0, 1] or a
    negative count."""
    if not 0 <= fraction <= 1 or count < 0:
        raise ValueError(f"checkpointing a share {fraction} of {count} layers: the share must lie in [0, 1] and the "
                         "count must not be negative")
    chosen = math.floor(count * fraction + _ROUNDING)
    return tuple(i for i in range(count) if (i + 1) * chosen // count > i * chosen // count)


def unchecked_layers(model, fraction: float) -> list[Any]:
    """The decoder layers of ``model`` (a Qwen2.5-VL or Qwen3-VL model, or a peft wrapper of
    one) that keep their activations at the share ``fraction``: those ``checkpointed_layers``
    leaves out, of the ``layers`` of the language model ``model.get_decoder()`` returns."""
    layers = model.get_decoder().layers
    chosen = set(checkpointed_layers(len(layers), fraction))
    return [layer for index, layer in enumerate(layers) if index not in chosen]


def use_checkpointing(model, fraction: float) -> None:
    """Turn on transformers' activation checkpointing (non-reentrant) in ``model``, every vision
    block and the share ``fraction`` of its decoder layers (``checkpointed_layers``); the other
    decoder layers keep their activations. The language model's own flag stays set, so a
    training forward still builds no KV cache."""
    model.gradient_checkpointing_enable()
    for layer in unchecked_layers(model, fraction):
        layer.gradient_checkpointing = False
