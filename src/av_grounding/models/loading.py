"""Load a model folder (tiny, local copy or Hugging Face id) with its tokenizer and image processor."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from ..errors import PipelineError, some_names


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


def missing_files(folder: Path) -> list[str]:
    """What a local model folder lacks of what loading needs: configuration, image processor,
    tokenizer vocabulary and chat template (transformers would build an empty tokenizer from a
    folder without vocabulary and fail steps later)."""
    def has(*names: str) -> bool:
        return all((folder / name).is_file() for name in names)

    missing = [name for name in ("config.json", "preprocessor_config.json") if not has(name)]
    if not has("tokenizer.json") and not has("vocab.json", "merges.txt"):
        missing.append("tokenizer.json (or vocab.json and merges.txt)")
    in_config = has("tokenizer_config.json") and "chat_template" in (folder / "tokenizer_config.json").read_text()
    if not (in_config or has("chat_template.json") or has("chat_template.jinja")):
        missing.append("a chat template (chat_template.json, chat_template.jinja or tokenizer_config.json)")
    return missing


def model_type(source: str | Path) -> str:
    """``config.model_type`` of a model folder or hub id (``qwen2_5_vl``, ``qwen3_vl``): what the
    project dispatches on, never the folder's or id's name."""
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(str(source)).model_type


def load_tokenizer(source: str | Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(source))


class WeightsMismatch(PipelineError, ValueError):
    """A model folder whose weights are not its configuration's model; the message names the folder."""


def check_loaded_weights(source: str | Path, info: dict[str, Any]) -> None:
    """Raise ``WeightsMismatch`` when loading left weights missing (transformers initialises them
    at random and goes on) or found weights it does not know. (A weight of another shape is
    transformers' own error, unless ``ignore_mismatched_sizes`` lists it here.) ``info``: what
    ``from_pretrained(..., output_loading_info=True)`` returns beside the model."""
    problems = {kind: info.get(f"{kind}_keys") or () for kind in ("missing", "unexpected", "mismatched")}
    if any(problems.values()):
        shown = "; ".join(f"{len(keys)} {kind} ({some_names(keys, 3)})" for kind, keys in problems.items() if keys)
        raise WeightsMismatch(f"{source}: the weights do not fit the model its config.json describes: {shown}")


def load_model(source: str | Path, dtype: str = "float32", device: str | None = "cpu",
               attn_implementation: str | None = "sdpa", vision_attention: str = "packed") -> LoadedModel:
    """A model folder or hub id with its tokenizer and image processor. ``device=None`` leaves
    the weights where loading put them (sharded under DeepSpeed ZeRO-3). ``vision_attention``:
    ``packed`` (one attention call per vision layer, ``models.attention``) or ``per_segment``
    (transformers' own: one call per window or image). Qwen3-VL's deepstack additions go by
    index (``models.deepstack``: the same values without waiting for a GPU). Raises
    ``WeightsMismatch`` when the weights are not the configured model's (``check_loaded_weights``)."""
    import torch
    from transformers import AutoModelForImageTextToText

    kwargs = {"dtype": getattr(torch, dtype)}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    # with output_loading_info the stub's return type (the model alone) is wrong: (model, info)
    loaded = AutoModelForImageTextToText.from_pretrained(str(source), output_loading_info=True, **kwargs)
    model, info = cast(Any, loaded)
    check_loaded_weights(source, info)
    if vision_attention == "packed":
        from .attention import use_packed_vision_attention

        use_packed_vision_attention(model)
    from .deepstack import use_indexed_deepstack

    use_indexed_deepstack(model)
    if device is not None:
        model = model.to(device)
    return LoadedModel(model, load_tokenizer(source), load_image_processor(source), str(source))


def _portable_model_config(path: Path) -> None:
    """transformers 4 reads the rotary settings (M-RoPE sections, theta) from ``rope_scaling`` and
    ``rope_theta``, and the tied embeddings and architectures through the text config (its composite
    config answers every attribute the text config has); transformers 5 reads ``rope_parameters``
    and the top level. Write both, or 4.x silently falls back to the full-size models' M-RoPE
    sections, a random ``lm_head`` and no architecture (cosmos-rl then builds the wrong class)."""
    import json

    config = json.loads(path.read_text())
    text = config.get("text_config")
    if text is None or "rope_parameters" not in text:  # already in transformers 4's form
        return
    rope = text["rope_parameters"]
    text["rope_theta"] = rope["rope_theta"]
    text["rope_scaling"] = {k: v for k, v in rope.items() if k != "rope_theta"}
    for key in ("tie_word_embeddings", "architectures"):
        if key in config:
            text[key] = config[key]
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def _portable_tokenizer_config(path: Path) -> None:
    """transformers 5 names its own tokenizer class and special-token key, which transformers 4
    (cosmos-rl's environment) cannot read; the names both versions read load identical tokenizers."""
    import json

    config = json.loads(path.read_text())
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    if "extra_special_tokens" in config:
        config["additional_special_tokens"] = config.pop("extra_special_tokens")
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def make_portable(folder: Path) -> None:
    """Rewrite a folder transformers 5 saved so that transformers 4 (cosmos-rl's environment, and
    the published checkpoints' own) reads the same model and tokenizer from it."""
    _portable_model_config(folder / "config.json")
    if (folder / "tokenizer_config.json").is_file():
        _portable_tokenizer_config(folder / "tokenizer_config.json")
