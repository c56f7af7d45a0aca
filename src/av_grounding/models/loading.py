"""Load a model folder (tiny, local copy or Hugging Face id) with its tokenizer and image processor."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass
class LoadedModel:
    model: Any
    tokenizer: Any
    image_processor: Any
    source: str = ""  # the folder or hub id it was loaded from


def load_image_processor(source: str | Path):
    """The PIL image processor of a Qwen-VL model folder or id (no torchvision needed)."""
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    return Qwen2VLImageProcessorPil.from_pretrained(str(source))


def model_type(source: str | Path) -> str:
    """``config.model_type`` of a model folder or hub id (``qwen2_5_vl``, ``qwen3_vl``): what the
    project dispatches on, never the folder's or id's name."""
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(str(source)).model_type


def load_tokenizer(source: str | Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(source))


def load_model(source: str | Path, dtype: str = "float32", device: str | None = "cpu",
               attn_implementation: str | None = "sdpa", vision_attention: str = "packed") -> LoadedModel:
    """A model folder or hub id with its tokenizer and image processor. ``device=None`` leaves
    the weights where loading put them (sharded under DeepSpeed ZeRO-3). ``vision_attention``:
    ``packed`` (one attention call per vision layer, ``models.attention``) or ``per_segment``
    (transformers' own: one call per window or image)."""
    import torch
    from transformers import AutoModelForImageTextToText

    kwargs = {"dtype": getattr(torch, dtype)}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    model = AutoModelForImageTextToText.from_pretrained(str(source), **kwargs)
    if vision_attention == "packed":
        from .attention import use_packed_vision_attention

        use_packed_vision_attention(model)
    if device is not None:
        model = model.to(device)
    return LoadedModel(model, load_tokenizer(source), load_image_processor(source), str(source))
