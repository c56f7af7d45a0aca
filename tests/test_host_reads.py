"""What the training forward no longer reads on the host: Qwen3-VL's deepstack additions by index
(``models.deepstack``), the vision tower's grid-derived inputs computed on the host copy of the
grid (``models.inputs.vision_inputs``) and the packed vision attention given the longest segment
(``models.attention``). Each gives transformers' values and gradients bit for bit, and a CPU
profile counts the reads that would wait for a GPU (``nonzero``, ``_local_scalar_dense``)."""

from __future__ import annotations

from collections import Counter

import pytest
import torch
from conftest import TINY, TRAINING_FORMAT
from transformers.models.qwen3_vl.modeling_qwen3_vl import Qwen3VLTextModel

from av_grounding.dataset.formats import read_cosmos
from av_grounding.dataset.prompts import load_prompts
from av_grounding.models.attention import padded_attention
from av_grounding.models.builtin import build_builtin
from av_grounding.models.deepstack import deepstack_add
from av_grounding.models.inputs import Encoder, answer_loss, collate, rope_index_owner, with_host_positions
from av_grounding.models.loading import load_model

READS = ("aten::nonzero", "aten::_local_scalar_dense")


def host_reads(work) -> Counter:
    """The host reads of device values (``READS``) among the operators ``work()`` runs."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        work()
    return Counter(event.name for event in prof.events() if event.name in READS)


def transformers_deepstack(hidden_states, visual_pos_masks, visual_embeds):
    """transformers' own ``Qwen3VLTextModel._deepstack_process`` (it uses nothing of its module)."""
    return Qwen3VLTextModel._deepstack_process(None, hidden_states, visual_pos_masks, visual_embeds)


MASKS = {  # (rows, width) image-token masks
    "several rows": [[0, 1, 1, 0, 0, 1], [1, 1, 0, 0, 0, 0], [0, 0, 0, 1, 1, 1]],
    "a row without image tokens": [[0, 1, 1, 1, 0, 0], [0, 0, 0, 0, 0, 0], [1, 0, 0, 0, 0, 1]],
    "no image token": [[0] * 6] * 3,
}


def deepstack_inputs(mask: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
    """Seeded random (hidden states, embeddings, output gradient) for ``mask``."""
    generator = torch.Generator().manual_seed(0)
    hidden = torch.randn(*mask.shape, 8, generator=generator).to(dtype).requires_grad_()
    embeds = torch.randn(int(mask.sum()), 8, generator=generator).requires_grad_()  # float32: the add casts
    return hidden, embeds, torch.randn(*mask.shape, 8, generator=generator).to(dtype)


def deepstack_run(add, mask: torch.Tensor, inputs: tuple[torch.Tensor, ...]):
    """``add`` and its backward: (output, hidden grad, embeds grad)."""
    hidden, embeds, grad = inputs
    hidden.grad = embeds.grad = None
    out = add(hidden * 1, mask, embeds)  # hidden * 1: not a leaf, as in the model
    out.backward(grad)
    return out.detach(), hidden.grad, embeds.grad


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("case", sorted(MASKS))
def test_deepstack_add_equals_transformers_values_and_gradients(case, dtype):
    mask = torch.tensor(MASKS[case], dtype=torch.bool)
    inputs = deepstack_inputs(mask, dtype)
    ours, theirs = (deepstack_run(add, mask, inputs) for add in (deepstack_add, transformers_deepstack))
    for mine, reference in zip(ours, theirs):
        assert mine.dtype == reference.dtype and torch.equal(mine, reference)


def test_deepstack_add_reads_nothing_on_the_host():
    mask = torch.tensor(MASKS["several rows"], dtype=torch.bool)
    inputs = deepstack_inputs(mask, torch.float32)
    assert host_reads(lambda: deepstack_run(transformers_deepstack, mask, inputs)) == {"aten::nonzero": 5}
    assert host_reads(lambda: deepstack_run(deepstack_add, mask, inputs)) == {}


@pytest.mark.parametrize("lengths", [[3, 7, 1, 5], [4, 4, 4]])  # unequal (masked) and equal (no mask)
def test_padded_attention_given_the_longest_segment_reads_nothing_on_the_host(lengths):
    """The same values and gradients as with the longest read from the boundaries, without a read."""
    generator = torch.Generator().manual_seed(1)
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()])
    qkv = [torch.randn(2, sum(lengths), 8, generator=generator, dtype=torch.float64).requires_grad_()
           for _ in range(3)]

    def run(longest):
        for t in qkv:
            t.grad = None
        out = padded_attention(*qkv, cu, 0.3, longest)
        out.backward(torch.ones_like(out))
        return [out.detach()] + [t.grad for t in qkv]

    results = {}
    reads = {longest: host_reads(lambda longest=longest: results.setdefault(longest, run(longest)))
             for longest in (None, max(lengths))}
    assert all(torch.equal(a, b) for a, b in zip(results[None], results[max(lengths)]))
    assert reads[max(lengths)] == {} and sum(reads[None].values()) >= 1


@pytest.fixture(scope="module", params=TINY)
def stage_model(request, dataset, tmp_path_factory):
    """(model as the hf stage loads it, in training mode; a collated batch of three samples)."""
    prompts = load_prompts(TRAINING_FORMAT.prompts)
    folder = build_builtin(request.param, tmp_path_factory.mktemp(request.param), 0, prompts.system, prompts.user,
                           TRAINING_FORMAT.min_pixels, TRAINING_FORMAT.max_pixels)
    loaded = load_model(folder)
    encoder = Encoder(loaded.tokenizer, loaded.image_processor, TRAINING_FORMAT.min_pixels,
                      TRAINING_FORMAT.max_pixels, 4096)
    encoded = [encoder.encode(s) for s in read_cosmos(dataset / "train")[:3]]
    loaded.model.train()
    return loaded.model, collate(encoded, loaded.tokenizer.pad_token_id, encoder.image_pad)


def loss_and_gradients(model, batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    loss = answer_loss(model, batch)
    loss.backward()
    return loss.detach(), {name: p.grad for name, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("checkpointing", [False, True])
def test_the_training_forward_gives_transformers_loss_and_gradients_with_fewer_host_reads(stage_model,
                                                                                          checkpointing):
    """The stage's forward (host positions and vision inputs, deepstack by index) against
    transformers' own (vision inputs from the grid in the forward, boolean deepstack), with
    activation checkpointing off and on: the same loss and gradients bit for bit. What remains to
    read is transformers' placeholder check (2: its condition and its message), the causal-mask
    check (2 with padded rows) and the image scatter's backward (1)."""
    model, batch = stage_model
    (model.gradient_checkpointing_enable if checkpointing else model.gradient_checkpointing_disable)()
    staged = with_host_positions(rope_index_owner(model), batch)
    vision = {key for key in staged if key.startswith("image_") and key not in batch}  # vision_inputs' keys
    assert "image_cu_seqlens" in vision
    own = {k: v for k, v in staged.items() if k not in vision}
    results = {}
    reads = {"stage": host_reads(lambda: results.setdefault("stage", loss_and_gradients(model, staged)))}
    texts = [m for m in model.modules() if isinstance(m, Qwen3VLTextModel)]
    for text in texts:  # back to transformers' own deepstack
        del text._deepstack_process
    try:
        reads["own"] = host_reads(lambda: results.setdefault("own", loss_and_gradients(model, own)))
    finally:
        for text in texts:
            text._deepstack_process = deepstack_add
    (loss, grads), (own_loss, own_grads) = results["stage"], results["own"]
    assert torch.equal(loss, own_loss) and grads.keys() == own_grads.keys()
    assert all(torch.equal(grads[name], own_grads[name]) for name in grads)
    assert reads["stage"]["aten::nonzero"] == 0 and sum(reads["stage"].values()) <= 5, reads
    deepstack = 5 * len(model.config.vision_config.deepstack_visual_indexes) if texts else 0
    assert sum(reads["own"].values()) - sum(reads["stage"].values()) >= 5 + deepstack, reads
