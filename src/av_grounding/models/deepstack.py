"""Qwen3-VL's deepstack additions by index, without a host read.

Qwen3-VL adds features of three vision layers (two in the tiny-weight 8B folder, one in the
built-in tiny model) to the hidden states of as many first decoder layers, at the image tokens'
positions. transformers (``Qwen3VLTextModel._deepstack_process``, transformers 5.17) does it
with boolean indexing::

    hidden_states = hidden_states.clone()
    hidden_states[visual_pos_masks, :] = hidden_states[visual_pos_masks, :] + visual_embeds

Boolean indexing runs ``nonzero``, whose output size the host must read: on a GPU each is a wait
for the device. A CPU trace counts two in the forward and three in the backward of every deepstack
layer: 15 a micro-batch on the 8B shape. ``deepstack_add`` adds the same values by index: the
image tokens' flat positions by ``torch.nonzero_static``, whose count is known on the host (the
rows of ``visual_embeds``), then ``index_add``, whose backward is an ``index_select``. Neither
reads anything on the host. Each position gets one addition of the same two values, so values and
gradients equal transformers' bit for bit (``tests/test_host_reads.py``).

The function runs in the text model's loop between decoder layers, outside the layers that
activation checkpointing recomputes; it keeps no state, so a recomputation would not matter.
"""

from __future__ import annotations

import torch


def deepstack_add(hidden_states: torch.Tensor, visual_pos_masks: torch.Tensor,
                  visual_embeds: torch.Tensor) -> torch.Tensor:
    """``hidden_states`` (rows, width, hidden) with ``visual_embeds`` (n, hidden) added at the n
    positions where ``visual_pos_masks`` (rows, width) is True, in row-major order: what
    ``Qwen3VLTextModel._deepstack_process`` returns. The mask must hold exactly n True values (the
    model's placeholder check ensures it before)."""
    visual_embeds = visual_embeds.to(hidden_states.device, hidden_states.dtype)
    flat = torch.nonzero_static(visual_pos_masks.to(hidden_states.device).flatten(),
                                size=visual_embeds.shape[0]).squeeze(1)  # (n,)
    return hidden_states.flatten(0, 1).index_add(0, flat, visual_embeds).view_as(hidden_states)


def use_indexed_deepstack(model) -> None:
    """Give every Qwen3-VL text model in ``model`` (a Qwen3-VL model, a peft wrapper of one; a
    model without one is left as it is) ``deepstack_add`` as its ``_deepstack_process``, on the
    instance: other models of the process keep transformers' own."""
    from transformers.models.qwen3_vl.modeling_qwen3_vl import Qwen3VLTextModel

    for module in model.modules():
        if isinstance(module, Qwen3VLTextModel):
            module._deepstack_process = deepstack_add  # type: ignore[method-assign]  # this instance only
