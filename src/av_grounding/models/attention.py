"""One attention call per vision layer instead of one per window or image.

The vision towers of Qwen2.5-VL (windowed attention, windows of 8x8 patches, full attention in a
few layers) and Qwen3-VL (attention within each image) attend within segments of one packed
sequence of patches, described by ``cu_seqlens`` (segment boundaries). With ``sdpa`` or
``eager``, transformers splits the sequence and calls attention once per segment: on the
Qwen2.5-VL-3B shape at batch 4, 8,168 forward and 4,084 backward kernel calls a step, and the
launch overhead, not the arithmetic, sets the pace.

``packed_attention`` computes all segments in one call:
  - on a CUDA device, in bf16/fp16, with PyTorch's variable-length flash attention
    (``torch.nn.attention.varlen.varlen_attn``) when this PyTorch has it: no padding at all;
  - elsewhere, segments padded to the longest and stacked into a batch
    (segments x heads x longest x head_dim) for one ``scaled_dot_product_attention`` call with a
    key-padding mask (no mask when all segments have one length, the usual case).
The result equals the per-segment computation up to floating-point rounding (tests check it).
The padded path reads nothing on the host when given the longest segment (transformers passes
``max_length_q``; ``models.inputs.vision_inputs`` computes it on the host): the layout comes from
shapes, and the tokens are gathered back by indices (``torch.nonzero_static``, whose count is the
token count) instead of a boolean mask, which on a GPU waits for the device in the forward and
again in the backward of every vision layer.

transformers sends ``cu_seqlens`` to an attention implementation only when its name contains
"flash" (``is_flash_attention_requested``), hence the registered name ``PACKED``. It is set on
the vision configuration alone, after loading; the language model keeps its own implementation.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

PACKED = "flash_packed_segments"


def _varlen():
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return None
    return varlen_attn


def segment_layout(cu_seqlens: torch.Tensor, longest: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """For segments given by boundaries ``cu_seqlens`` (n + 1,), the (n, longest) index of each
    (segment, position) into the packed sequence (padding points at 0) and the (n, longest)
    validity mask. ``longest``: the longest segment's length (read from ``cu_seqlens`` when None,
    a wait on a GPU)."""
    lengths = cu_seqlens[1:] - cu_seqlens[:-1]
    longest = int(lengths.max()) if longest is None else longest
    positions = torch.arange(longest, device=cu_seqlens.device)
    valid = positions[None, :] < lengths[:, None]
    index = torch.where(valid, cu_seqlens[:-1, None] + positions[None, :], 0)
    return index, valid


def padded_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, cu_seqlens: torch.Tensor,
                     scale: float | None, longest: int | None = None) -> torch.Tensor:
    """Attention within segments, one SDPA call over the padded segments.

    query, key, value: (heads, tokens, head_dim); cu_seqlens: (segments + 1,) int boundaries;
    longest: the longest segment's length (``segment_layout``). Returns (tokens, heads, head_dim)."""
    index, valid = segment_layout(cu_seqlens, longest)
    segments, longest = valid.shape
    tokens = query.shape[1]
    # (segments, heads, longest, dim) each
    q, k, v = (t[:, index].transpose(0, 1) for t in (query, key, value))
    mask = None if segments * longest == tokens else valid[:, None, None, :]  # every segment full: no padding
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)  # (segments, heads, longest, dim)
    kept = torch.nonzero_static(valid.flatten(), size=tokens).squeeze(1)  # (tokens,) segments in order
    return out.transpose(1, 2).flatten(0, 1).index_select(0, kept)


def packed_attention(module, query, key, value, attention_mask=None, dropout: float = 0.0, scaling=None,
                     is_causal=False, cu_seq_lens_q=None, max_length_q=None, **kwargs):
    """The attention function registered as ``PACKED`` (transformers' attention-interface
    signature). query, key, value: (1, heads, tokens, head_dim); returns ((1, tokens, heads,
    head_dim), None). Non-causal, no dropout: what the vision towers use."""
    if cu_seq_lens_q is None or is_causal or (dropout and module.training):
        raise ValueError(f"{PACKED} serves the vision towers' packed segments only")
    q, k, v = query[0], key[0], value[0]
    longest = None if max_length_q is None else int(max_length_q)  # transformers' host int: no wait
    varlen = _varlen()
    if varlen is not None and q.is_cuda and q.dtype in (torch.bfloat16, torch.float16):
        cu = cu_seq_lens_q.to(torch.int32)
        longest = int((cu[1:] - cu[:-1]).max()) if longest is None else longest
        out = varlen(q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1), cu, cu, longest, longest, scale=scaling)
    else:
        out = padded_attention(q, k, v, cu_seq_lens_q, scaling, longest)
    return out.unsqueeze(0), None


def use_packed_vision_attention(model) -> None:
    """Route the vision tower of a Qwen2.5-VL or Qwen3-VL model (or a peft wrapper of one)
    through ``packed_attention``; the language model is left as it is."""
    from transformers import AttentionInterface

    AttentionInterface.register(PACKED, packed_attention)
    model.config.vision_config._attn_implementation = PACKED
