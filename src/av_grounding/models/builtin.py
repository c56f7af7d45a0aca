"""Built-in offline models of the real Cosmos Reason architectures, at three sizes.

``<size>-qwen2_5_vl`` (Cosmos Reason 1) and ``<size>-qwen3_vl`` (Cosmos Reason 2), with size
``tiny``, ``small`` or ``base`` (``MODEL_SIZES``), are the real
``Qwen2_5_VLForConditionalGeneration`` / ``Qwen3VLForConditionalGeneration`` classes, randomly
initialised from a seed; vision tower, projector and language model scale together. All share:
  - a byte-level BPE tokenizer trained with ``tokenizers`` on the task's own text (the prompts and
    answers shaped like the task's, from a fixed seed), Qwen's special tokens at their usual ids
    and the real models' 151,936-entry vocabulary (most entries unused filler);
  - the published chat template of the architecture, read from the installed ``trl``
    (``models.hub.chat_template``), as the published checkpoints ship it;
  - the PIL image processor (no torchvision needed).
All saved with ``save_pretrained``; model and tokenizer load back with the Auto classes, the
image processor with its PIL class (``AutoImageProcessor`` insists on torchvision).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

ARCHITECTURES = ("qwen2_5_vl", "qwen3_vl")  # Cosmos Reason 1, Cosmos Reason 2


@dataclass(frozen=True)
class ModelSize:
    """One size of the built-in models: widths and depths of the language model and the vision
    tower (the projector maps vision ``hidden`` to language ``hidden``), and the peak AdamW
    learning rate that ``train.lr: null`` uses for it (measured not to diverge with the default
    5 % warmup: 82M parameters trained stably at 3e-4 and diverged at 1e-3 on an H200)."""

    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int
    vision_hidden: int
    vision_depth: int
    vision_heads: int
    vision_intermediate: int
    lr: float

    def __post_init__(self):
        assert self.hidden % self.heads == 0 and self.heads % self.kv_heads == 0, self
        assert self.vision_hidden % self.vision_heads == 0, self
        assert (self.hidden // self.heads) % 8 == 0, "head_dim must split into M-RoPE sections"

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    def mrope_section(self) -> list[int]:
        """Rotary frequencies per (time, height, width), summing to head_dim / 2 in Qwen's
        2 : 3 : 3 proportion (16, 24, 24 at the real models' head_dim 128)."""
        eighth = self.head_dim // 16
        return [2 * eighth, 3 * eighth, 3 * eighth]

    def full_attention_blocks(self) -> list[int]:
        """Qwen2.5-VL vision blocks with full (not windowed) attention: every 4th, and the last
        (the real model: 7, 15, 23, 31 of 32)."""
        return sorted({*range(3, self.vision_depth, 4), self.vision_depth - 1})

    def deepstack_blocks(self) -> list[int]:
        """Qwen3-VL vision blocks whose features feed the language model's first layers: the ends
        of the first and second thirds and the last block (the real 8B model: 8, 16, 24 of 27)."""
        third = self.vision_depth // 3
        return sorted({third - 1, 2 * third - 1, self.vision_depth - 1}) if third else [self.vision_depth - 1]


MODEL_SIZES = {
    # hidden 64, 2 layers: tens of milliseconds a step on a CPU (tests, the default pipeline).
    "tiny": ModelSize(64, 2, 4, 2, 128, 64, 2, 4, 128, lr=5e-3),
    # about 80M parameters, 60M of them the 152k-entry embedding: learns the task in minutes on a GPU.
    "small": ModelSize(384, 6, 6, 2, 1024, 384, 6, 6, 1024, lr=3e-4),
    # about 300M parameters.
    "base": ModelSize(768, 12, 12, 4, 2048, 768, 12, 12, 2048, lr=1e-4),
}
BUILTIN_MODELS = tuple(f"{size}-{arch}" for size in MODEL_SIZES for arch in ARCHITECTURES)
SPECIAL_TOKENS = {  # Qwen2 vocabulary ids
    "<|endoftext|>": 151643, "<|im_start|>": 151644, "<|im_end|>": 151645,
    "<|vision_start|>": 151652, "<|vision_end|>": 151653, "<|image_pad|>": 151655, "<|video_pad|>": 151656,
}
VOCAB_SIZE = 151936  # as the real models: room for every special id
BPE_SIZE = 1024
CORPUS_SEED = 0  # the tokenizer depends on the prompts only, so `format` can measure with it

def task_corpus(system: str, user: str, answers: int = 400) -> list[str]:
    """Text the tokenizer learns from: the prompts and answers shaped like the task's."""
    from ..dataset.answers import AnswerStyle, format_answer

    rng = np.random.default_rng(CORPUS_SEED)
    texts = [system, user]
    labels = ["car", "truck", "bus", "trailer", "train"]
    for _ in range(answers):
        boxes = [{"bbox_3d": [*rng.uniform(-40, 40, 2), rng.uniform(1, 100), *rng.uniform(0.5, 15, 3),
                              *rng.uniform(-3.2, 3.2, 3)], "label": str(rng.choice(labels))}
                 for _ in range(int(rng.integers(0, 5)))]
        texts.append(format_answer(boxes, AnswerStyle(int(rng.integers(1, 4)), None, bool(rng.integers(2)),
                                                      bool(rng.integers(2)))))
    return texts


def build_tokenizer(corpus: list[str], template: str):
    """A byte-level BPE of BPE_SIZE tokens, padded to VOCAB_SIZE, special tokens at Qwen's ids,
    with the chat template ``template``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    trainer_tokenizer = Tokenizer(models.BPE())
    trainer_tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=BPE_SIZE, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    trainer_tokenizer.train_from_iterator(corpus, trainer)
    trained = trainer_tokenizer.model
    vocab = trainer_tokenizer.get_vocab()
    merges = [_pair(m) for m in _merges_of(trainer_tokenizer)]
    # Unreachable filler entries keep the special tokens at their real ids.
    taken = set(vocab.values())
    for index in range(VOCAB_SIZE):
        if index not in taken and index not in SPECIAL_TOKENS.values():
            vocab[f"<|unused_{index}|>"] = index
    vocab.update(SPECIAL_TOKENS)
    del trained
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   additional_special_tokens=list(SPECIAL_TOKENS), chat_template=template,
                                   model_max_length=32768, padding_side="right")
    return fast


@functools.cache
def task_tokenizer(system: str, user: str, arch: str = "qwen2_5_vl"):
    """The built-in models' tokenizer for these prompts (deterministic), with the published chat
    template of the architecture ``arch``."""
    from .hub import chat_template

    return build_tokenizer(task_corpus(system, user), chat_template(arch))


def _pair(merge: str | list[str]) -> tuple[str, str]:
    """One BPE merge as a pair: tokenizers writes ``"a b"`` or ``["a", "b"]`` by version."""
    first, second = merge.split(" ") if isinstance(merge, str) else merge
    return first, second


def _merges_of(tokenizer) -> list:
    import json

    return json.loads(tokenizer.to_str())["model"]["merges"]


def split_name(name: str) -> tuple[ModelSize, str]:
    """``"small-qwen3_vl"`` -> (its ModelSize, ``"qwen3_vl"``); ValueError for another name."""
    size, _, arch = name.partition("-")
    if size not in MODEL_SIZES or arch not in ARCHITECTURES:
        raise ValueError(f"unknown built-in model {name!r}; choose from {BUILTIN_MODELS}")
    return MODEL_SIZES[size], arch


def builtin_config(name: str):
    """The real architecture's config (``Qwen2_5_VLConfig`` or ``Qwen3VLConfig``) at the named size."""
    from transformers import Qwen2_5_VLConfig, Qwen3VLConfig

    size, arch = split_name(name)
    text = dict(vocab_size=VOCAB_SIZE, hidden_size=size.hidden, intermediate_size=size.intermediate,
                num_hidden_layers=size.layers, num_attention_heads=size.heads, num_key_value_heads=size.kv_heads,
                head_dim=size.head_dim, max_position_embeddings=4096,
                bos_token_id=SPECIAL_TOKENS["<|endoftext|>"], eos_token_id=SPECIAL_TOKENS["<|im_end|>"],
                pad_token_id=SPECIAL_TOKENS["<|endoftext|>"])
    vision = dict(depth=size.vision_depth, hidden_size=size.vision_hidden, intermediate_size=size.vision_intermediate,
                  num_heads=size.vision_heads, out_hidden_size=size.hidden)
    special: dict[str, Any] = dict(image_token_id=SPECIAL_TOKENS["<|image_pad|>"],
                                   video_token_id=SPECIAL_TOKENS["<|video_pad|>"],
                                   vision_start_token_id=SPECIAL_TOKENS["<|vision_start|>"],
                                   vision_end_token_id=SPECIAL_TOKENS["<|vision_end|>"])
    if arch == "qwen2_5_vl":
        return Qwen2_5_VLConfig(
            text_config={**text, "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0,
                                                     "mrope_section": size.mrope_section()}},
            vision_config={**vision, "fullatt_block_indexes": size.full_attention_blocks(), "window_size": 112},
            tie_word_embeddings=True, **special)
    return Qwen3VLConfig(
        text_config={**text, "rope_parameters": {"rope_type": "default", "rope_theta": 5000000.0,
                                                 "mrope_section": size.mrope_section(), "mrope_interleaved": True}},
        vision_config={**vision, "deepstack_visual_indexes": size.deepstack_blocks(), "num_position_embeddings": 256},
        tie_word_embeddings=True, **special)


def image_processor_for(name: str, min_pixels: int, max_pixels: int):
    """Qwen's image processor with the architecture's patch: 14 px (Qwen2.5-VL) or 16 px (Qwen3-VL),
    merged 2x2 into one image token."""
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    patch = 14 if split_name(name)[1] == "qwen2_5_vl" else 16
    return Qwen2VLImageProcessorPil(patch_size=patch, merge_size=2, temporal_patch_size=2,
                                    min_pixels=min_pixels, max_pixels=max_pixels)


def build_builtin(name: str, folder: Path, seed: int, system: str, user: str, min_pixels: int,
                  max_pixels: int) -> Path:
    """Create and save a built-in model (weights, tokenizer, image processor) under ``folder``,
    atomically; the same name and seed give the same weights."""
    import torch
    from transformers import AutoModelForImageTextToText

    from ..storage import atomic_folder
    from .loading import make_portable

    torch.manual_seed(seed)
    model = AutoModelForImageTextToText.from_config(builtin_config(name))
    with atomic_folder(folder) as tmp:
        model.save_pretrained(tmp)
        task_tokenizer(system, user, split_name(name)[1]).save_pretrained(tmp)
        image_processor_for(name, min_pixels, max_pixels).save_pretrained(tmp)
        make_portable(tmp)
    return folder
