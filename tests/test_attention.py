"""Packed vision attention: one call per layer computes what transformers' one call per window
or image computes, for random segment layouts and for whole vision towers (values and gradients)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import TINY
from hypothesis import given, settings
from hypothesis import strategies as st

from av_grounding.models.attention import padded_attention, segment_layout, use_packed_vision_attention
from av_grounding.models.builtin import builtin_config


def per_segment(query, key, value, cu_seqlens, scale):
    """The reference: one SDPA call per segment, as transformers does without flash attention."""
    outs = [F.scaled_dot_product_attention(query[:, a:b], key[:, a:b], value[:, a:b], scale=scale)
            for a, b in zip(cu_seqlens[:-1].tolist(), cu_seqlens[1:].tolist())]
    return torch.cat(outs, dim=1).transpose(0, 1)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(1, 40), min_size=1, max_size=9), st.integers(1, 4), st.integers(0, 2**31 - 1))
def test_padded_attention_equals_one_call_per_segment(lengths, heads, seed):
    generator = torch.Generator().manual_seed(seed)
    tokens = sum(lengths)
    q, k, v = (torch.randn(heads, tokens, 8, generator=generator, dtype=torch.float64) for _ in range(3))
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()])
    packed = padded_attention(q, k, v, cu, 0.3)
    assert packed.shape == (tokens, heads, 8)
    torch.testing.assert_close(packed, per_segment(q, k, v, cu, 0.3), rtol=1e-10, atol=1e-10)


def test_segment_layout_points_padding_nowhere():
    index, valid = segment_layout(torch.tensor([0, 2, 5, 6]))
    assert index.tolist() == [[0, 1, 0], [2, 3, 4], [5, 0, 0]]
    assert valid.tolist() == [[True, True, False], [True, True, True], [True, False, False]]


@pytest.mark.parametrize("model", TINY)
def test_vision_tower_values_and_gradients_match_transformers_per_window_path(model):
    """Three images of two sizes: Qwen2.5-VL cuts them into windows of unequal sizes at the
    edges (padded path with a mask), Qwen3-VL attends per image."""
    from transformers import AutoModelForImageTextToText

    torch.manual_seed(0)
    loaded = AutoModelForImageTextToText.from_config(builtin_config(model), attn_implementation="sdpa")
    visual = loaded.model.visual
    grids = torch.tensor([[1, 12, 24], [1, 14, 20], [1, 12, 24]])
    patch = visual.config.patch_size
    pixels = torch.randn(int(grids.prod(1).sum()), 3 * 2 * patch * patch)

    def run():
        visual.zero_grad()
        out = visual(pixels, grid_thw=grids).pooler_output
        (out ** 2).mean().backward()
        return out.detach().clone(), {n: p.grad.clone() for n, p in visual.named_parameters() if p.grad is not None}

    reference, reference_grads = run()
    use_packed_vision_attention(loaded)
    assert loaded.model.visual.config._attn_implementation != "sdpa"
    assert loaded.config.text_config._attn_implementation == "sdpa"
    packed, packed_grads = run()
    torch.testing.assert_close(packed, reference, rtol=1e-5, atol=1e-6)
    assert packed_grads.keys() == reference_grads.keys()
    for name, grad in reference_grads.items():
        torch.testing.assert_close(packed_grads[name], grad, rtol=1e-4, atol=1e-6, msg=name)
