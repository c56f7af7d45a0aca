"""Samples -> model inputs. One place builds the prompt, so training and inference agree on it.

The conversation goes through the tokenizer's chat template (the published one for the hub
checkpoints and the built-in models alike: Qwen2.5-VL's adds the system message "You are a
helpful assistant." when a sample has no system prompt, Qwen3-VL's adds none); the single
``<|image_pad|>`` is expanded to one token per merged image patch, as many as the image
processor's grid gives at the configured ``min_pixels`` / ``max_pixels``. Labels cover the
assistant's answer and its ``<|im_end|>`` only; everything else is -100. A template that puts
anything into the assistant turn around the answer (``<think>`` blocks, say) is refused, since
the labels would train on it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..dataset.formats import Sample, conversation
from ..errors import PipelineError

IMAGE_PAD = "<|image_pad|>"
IGNORE = -100


class BudgetError(PipelineError, ValueError):
    """A sample does not fit ``model_max_length``."""


class TemplateError(PipelineError, ValueError):
    """A chat template renders the assistant turn as something other than answer + ``<|im_end|>``."""


def messages_of(sample: Sample, with_answer: bool) -> list[dict[str, Any]]:
    """The sample's conversation (``dataset.formats.conversation``), with the answer or as a prompt."""
    return conversation(str(sample.image), sample.system, sample.user, sample.answer if with_answer else None)


@dataclass
class Text:
    """A sample's token ids and labels (-100 outside the answer), with its image placeholder
    already expanded to the image's token count."""

    input_ids: list[int]
    labels: list[int]


@dataclass
class Encoded:
    input_ids: list[int]
    labels: list[int]
    pixel_values: torch.Tensor  # (patches, channels x temporal x patch x patch)
    image_grid_thw: torch.Tensor  # (1, 3): temporal, height and width in patches


class Encoder:
    """Samples -> token ids, labels and pixel values, as the model sees them at training and
    inference alike. Text and pixels are separate steps: the token budget needs only the image's
    size (read from the file header), training loads pixels in data-loader workers."""

    def __init__(self, tokenizer, image_processor, min_pixels: int, max_pixels: int, max_length: int):
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        self.min_pixels, self.max_pixels, self.max_length = min_pixels, max_pixels, max_length
        self.im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
        self.image_pad = tokenizer.convert_tokens_to_ids(IMAGE_PAD)

    def vision(self, path) -> tuple[torch.Tensor, torch.Tensor, int]:
        """Pixel values, patch grid (1, 3) and image-token count of one image file."""
        with Image.open(path) as image:
            features = self.image_processor(images=[image.convert("RGB")], min_pixels=self.min_pixels,
                                            max_pixels=self.max_pixels, return_tensors="pt")
        grid = features["image_grid_thw"]
        tokens = int(grid.prod()) // self.image_processor.merge_size ** 2
        return features["pixel_values"], grid, tokens

    def image_tokens(self, path) -> int:
        """Image tokens of an image file from its header alone (the processor's resize rule):
        what ``vision`` would count, without decoding the pixels."""
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize

        with Image.open(path) as image:
            width, height = image.size
        factor = self.image_processor.patch_size * self.image_processor.merge_size
        h, w = smart_resize(height, width, factor, self.min_pixels, self.max_pixels)
        return (h // factor) * (w // factor)

    def render(self, sample: Sample, with_answer: bool) -> str:
        """The chat template's text of the sample: up to the assistant's turn (the generation
        prompt) or, ``with_answer``, through the answer. ``TemplateError`` unless the full text is
        the prompt, the answer, ``<|im_end|>`` and nothing but newlines."""
        prompt = self.tokenizer.apply_chat_template(messages_of(sample, False), tokenize=False,
                                                    add_generation_prompt=True)
        if prompt.count(IMAGE_PAD) != 1:
            raise TemplateError(f"chat template produced {prompt.count(IMAGE_PAD)} image placeholders, expected 1")
        if not with_answer:
            return prompt
        full = self.tokenizer.apply_chat_template(messages_of(sample, True), tokenize=False)
        expected = prompt + sample.answer + "<|im_end|>"
        if not full.startswith(expected) or full[len(expected):].strip("\n"):
            template = self.tokenizer.name_or_path or "the model"
            raise TemplateError(f"sample {sample.id}: the chat template of {template} "
                                f"renders the assistant turn as {full[len(prompt) - 10:]!r}, not the answer and "
                                "<|im_end|>: labels would train on what it adds")
        return full

    def _ids(self, samples: list[Sample], texts: list[str], image_tokens: list[int]) -> list[list[int]]:
        """Token ids of each sample's rendered text, whose one image placeholder is expanded to the
        image's token count. The placeholder is a special token, which the tokenizer splits off
        before it tokenizes the text around it: repeating its id gives exactly the ids of the
        expanded text. The texts go to the tokenizer as one batch, which a fast tokenizer spreads
        over the cores. ``TemplateError`` naming the sample when a text holds another number of
        placeholders (an answer that contains one, say)."""
        expanded = []
        for sample, ids, count in zip(samples, self.tokenizer(texts, add_special_tokens=False)["input_ids"],
                                      image_tokens, strict=True):
            if ids.count(self.image_pad) != 1:
                raise TemplateError(f"sample {sample.id}: {ids.count(self.image_pad)} image placeholders "
                                    f"({IMAGE_PAD}) in its text, expected 1")
            at = ids.index(self.image_pad)
            expanded.append(ids[:at] + [self.image_pad] * count + ids[at + 1:])
        return expanded

    def texts(self, samples: list[Sample], image_tokens: list[int], with_answer: bool = True) -> list[Text]:
        """Token ids and labels of each sample with its image's token count, as ``text`` gives
        them but without the ``max_length`` check: prompts that render alike are tokenized once,
        the full texts as one batch."""
        if not samples:
            return []
        prompts = [(self.render(sample, False), count) for sample, count in zip(samples, image_tokens, strict=True)]
        first: dict[tuple[str, int], Sample] = {}  # each distinct prompt's first sample (named in errors)
        for key, sample in zip(prompts, samples):
            first.setdefault(key, sample)
        prompt_ids = dict(zip(first, self._ids(list(first.values()), [text for text, _ in first],
                                               [count for _, count in first])))
        if not with_answer:
            return [Text(prompt_ids[key], [IGNORE] * len(prompt_ids[key])) for key in prompts]
        full_ids = self._ids(samples, [self.render(sample, True) for sample in samples], image_tokens)
        return [self._labelled(sample, prompt_ids[key], ids) for sample, key, ids in zip(samples, prompts, full_ids)]

    def _labelled(self, sample: Sample, prompt: list[int], ids: list[int]) -> Text:
        """``ids`` of the full text, labelled from the end of ``prompt`` (a prefix of them)
        through the assistant's closing ``<|im_end|>``."""
        if ids[: len(prompt)] != prompt or self.im_end not in ids[len(prompt):]:
            raise TemplateError(f"sample {sample.id}: the tokens of the prompt are not a prefix of the full text's")
        end = ids.index(self.im_end, len(prompt))
        return Text(ids, [IGNORE] * len(prompt) + ids[len(prompt): end + 1] + [IGNORE] * (len(ids) - end - 1))

    def check_budget(self, sample: Sample, text: Text, image_tokens: int) -> None:
        """BudgetError when ``text`` is longer than ``max_length``."""
        if len(text.input_ids) > self.max_length:
            raise BudgetError(f"sample {sample.id}: {len(text.input_ids)} tokens ({image_tokens} image) > "
                              f"model_max_length {self.max_length}")

    def text(self, sample: Sample, image_tokens: int, with_answer: bool = True) -> Text:
        """Token ids and labels; BudgetError when longer than ``max_length``."""
        (text,) = self.texts([sample], [image_tokens], with_answer)
        self.check_budget(sample, text, image_tokens)
        return text

    def with_pixels(self, sample: Sample, text: Text) -> Encoded:
        """The text encoding completed with the image's pixels."""
        pixel_values, grid, tokens = self.vision(sample.image)
        if text.input_ids.count(self.image_pad) != tokens:
            raise ValueError(f"sample {sample.id}: {sample.image} gives {tokens} image tokens, the text holds "
                             f"{text.input_ids.count(self.image_pad)}")
        return Encoded(text.input_ids, text.labels, pixel_values, grid)

    def encode(self, sample: Sample, with_answer: bool = True) -> Encoded:
        return self.with_pixels(sample, self.text(sample, self.image_tokens(sample.image), with_answer))


def within_budget(encoder: Encoder, samples: list[Sample]) -> tuple[list[tuple[Sample, Text]], list[str]]:
    """The samples whose prompt + image + answer fit ``model_max_length`` (with their text
    encodings), and one message per sample that does not. Both backends check with this."""
    counts = [encoder.image_tokens(sample.image) for sample in samples]
    kept, over = [], []
    for sample, text, count in zip(samples, encoder.texts(samples, counts), counts):
        try:
            encoder.check_budget(sample, text, count)
            kept.append((sample, text))
        except BudgetError as exc:
            over.append(str(exc))
    return kept, over


def logit_columns(labels: torch.Tensor) -> torch.Tensor:
    """(n,) the columns of the (rows, width) ``labels`` whose next token some row has a label
    for: the positions the model's forward keeps for its output layer (``answer_loss``; on a
    device tensor, a ``nonzero`` that waits)."""
    return (labels[:, 1:] != IGNORE).any(dim=0).nonzero().squeeze(1)


def labelled_pairs(labels: torch.Tensor, columns: torch.Tensor) -> torch.Tensor:
    """(m,) the (row, column) pairs of the (rows, width) ``labels`` at ``columns``
    (``logit_columns``) whose next token has a label, as flat indices into the (rows,
    len(columns)) block, row-major: where ``answer_loss`` computes logits (on a device tensor, a
    ``nonzero`` that waits)."""
    return (labels[:, 1:][:, columns] != IGNORE).flatten().nonzero().squeeze(1)


def output_layer(model) -> torch.nn.Module:
    """The output layer (``get_output_embeddings``, the ``lm_head``) of ``model``: a transformers
    model, a peft wrapper of one, or a ``DistributedDataParallel`` or DeepSpeed wrapper of either
    (unwrapped through ``module``)."""
    while not hasattr(model, "get_output_embeddings") and hasattr(model, "module"):
        model = model.module
    return model.get_output_embeddings()


@contextlib.contextmanager
def output_rows(head: torch.nn.Module, pairs: torch.Tensor) -> Iterator[None]:
    """Within the block, ``head`` (``output_layer``) computes only the rows ``pairs`` of its
    (rows, positions, hidden) input, flattened to (rows x positions, hidden): its output is
    (len(pairs), vocabulary). A forward pre-hook, removed on leaving; ``index_select`` takes a
    device tensor without reading it on the host."""
    def select(_module, args):
        return (args[0].flatten(0, 1).index_select(0, pairs), *args[1:])

    handle = head.register_forward_pre_hook(select)
    try:
        yield
    finally:
        handle.remove()


def padded_width(longest: int, multiple: int) -> int:
    """``longest`` tokens rounded up to a multiple of ``multiple`` (>= 1): the width ``collate``
    pads a batch to."""
    return -(-longest // multiple) * multiple


def rope_index_owner(model) -> Any:
    """The module of ``model`` (a Qwen2.5-VL or Qwen3-VL model, a peft wrapper or a DeepSpeed
    engine of one) that computes its multimodal rotary positions (``get_rope_index``); None for
    a model without one."""
    return next((module for module in model.modules() if hasattr(module, "get_rope_index")), None)


def vision_inputs(owner: Any, grid: torch.Tensor) -> dict[str, Any]:
    """What the vision tower of ``owner`` (from ``rope_index_owner``) derives from the (images, 3)
    patch grid in its forward, computed here on the host copy of the grid by the same functions
    of ``transformers.vision_utils``, with the same settings, as the ``image_``-prefixed keywords
    the model's forward takes instead (``accepts_precomputed_kwargs``, transformers 5.17):

    - both: the rotary positions of the patches, the images' boundaries ``cu_seqlens`` and the
      longest image ``max_seqlen`` (a Python int, kept only where the attention takes one);
    - Qwen2.5-VL: the window order ``window_index``, the windows' boundaries and the longest;
    - Qwen3-VL: the taps and weights that resample its learned position grid.

    On a GPU the forward computes them from the device copy of the grid, with ``repeat_interleave``
    without output size, ``.tolist()``, ``unique_consecutive`` and ``.item()``, each a wait for the
    device: a CPU trace counts 10 host reads a forward on Qwen3-VL and 6 on Qwen2.5-VL, besides the
    ``.tolist()`` calls it does not show. Empty for another model type. The keys and the forward's
    use of them are transformers 5.17's; ``tests/test_host_reads.py`` checks the reads are gone."""
    from transformers import vision_utils
    from transformers.utils.generic import get_max_seqlen

    visual, kind = owner.visual, owner.config.model_type
    if kind not in ("qwen2_5_vl", "qwen3_vl"):
        return {}
    cu_seqlens = vision_utils.get_vision_cu_seqlens(grid)
    out: dict[str, Any] = {"position_ids": vision_utils.get_vision_position_ids(grid, visual.spatial_merge_size),
                           "cu_seqlens": cu_seqlens, "max_seqlen": get_max_seqlen(cu_seqlens, visual.config)}
    if kind == "qwen2_5_vl":
        window_index, cu_window_seqlens = vision_utils.get_vision_window_index(
            grid, visual.spatial_merge_size, visual.window_size, visual.patch_size)
        out.update(window_index=window_index, cu_window_seqlens=cu_window_seqlens,
                   max_window_seqlen=get_max_seqlen(cu_window_seqlens, visual.config))
    else:
        out["interp_indices"], out["interp_weights"] = vision_utils.get_vision_interpolation_indices_and_weights(
            grid, visual.num_grid_per_side, mode=visual.interpolation_mode,
            align_corners=visual.interpolation_align_corners, spatial_merge_size=visual.config.spatial_merge_size)
    return {f"image_{k}": v for k, v in out.items() if v is not None}


def with_host_positions(owner: Any, batch: dict[str, torch.Tensor], pin: bool = False) -> dict[str, Any]:
    """``batch`` (``collate``'s dict of host tensors, images only: no video grid) with the
    positions its forward would otherwise compute on the device, each read there on the host:

    - ``position_ids``: the (3, rows, width) multimodal rotary positions, by the model's own
      function (``owner.get_rope_index``, from ``rope_index_owner``). Qwen's function walks each
      row's text and image spans reading values on the host: on GPU tensors a synchronisation
      per read in the middle of the forward (8 a sample in a CPU trace of the tiny Qwen3-VL
      model). Left out when ``owner`` is None, the batch has no image or already has them.
    - the vision tower's inputs derived from the image grid (``vision_inputs``), under the same
      conditions.
    - ``logit_positions``: (n,) the columns where some row has a label (``logit_columns``), and
      ``logit_pairs``: the labelled (row, column) pairs among them (``labelled_pairs``), where
      ``answer_loss`` computes logits (on the device, each a ``nonzero`` before the forward).

    ``pin``: the new tensors in pinned memory, so their copy to a GPU does not wait (the loader
    pins the rest); Python ints (the longest image or window) stay as they are."""
    columns = logit_columns(batch["labels"])
    added = {"logit_positions": columns, "logit_pairs": labelled_pairs(batch["labels"], columns)}
    if owner is not None and batch["image_grid_thw"].numel() and "position_ids" not in batch:
        added["position_ids"], _ = owner.get_rope_index(
            batch["input_ids"], batch["mm_token_type_ids"], image_grid_thw=batch["image_grid_thw"],
            attention_mask=batch["attention_mask"])
        added.update(vision_inputs(owner, batch["image_grid_thw"]))
    if pin:
        added = {k: v.pin_memory() if isinstance(v, torch.Tensor) else v for k, v in added.items()}
    return {**batch, **added}


def answer_loss(model, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean cross-entropy over the labelled (assistant) tokens of ``inputs`` (``collate``'s
    batch, optionally with ``with_host_positions``' keys): a 0-d tensor.

    Logits are computed only at the labelled (row, position) pairs: the forward keeps the
    columns where some row has a label (``logits_to_keep``, ``logit_columns``) and the output
    layer takes only the labelled pairs among them (``output_rows``, ``labelled_pairs``). With a
    vocabulary of 152k entries the logits dominate a small model's time and memory, prompts
    (system, user, image tokens) make up most of every sequence, and answers of different
    lengths leave many of a batch's columns unlabelled in most rows. ``inputs``' own
    ``logit_positions`` and ``logit_pairs`` are used when present (computed on the host: no
    ``nonzero`` on the device)."""
    labels = inputs["labels"]
    columns = inputs.get("logit_positions")
    if columns is None:
        columns = logit_columns(labels)
    pairs = inputs.get("logit_pairs")
    if pairs is None:
        pairs = labelled_pairs(labels, columns)
    forward = {k: v for k, v in inputs.items() if k not in ("labels", "logit_positions", "logit_pairs")}
    with output_rows(output_layer(model), pairs):
        logits = model(**forward, logits_to_keep=columns).logits
    targets = labels[:, 1:][:, columns].flatten().index_select(0, pairs)
    return torch.nn.functional.cross_entropy(logits.float(), targets)


def collate(batch: list[Encoded], pad_id: int, image_pad_id: int, left_pad: bool = False,
            multiple: int = 1) -> dict[str, torch.Tensor]:
    """Pad to the longest sample (right for training, left for generation), rounded up to a
    multiple of ``multiple`` (>= 1) tokens (which may pass ``format.model_max_length``: the
    padding is masked and unlabelled).

    ``mm_token_type_ids`` (1 on image tokens) is what lets the model compute its multimodal
    rotary positions; without it Qwen2.5-VL silently falls back to text-only positions."""
    width = padded_width(max(len(e.input_ids) for e in batch), multiple)
    ids = np.full((len(batch), width), pad_id, dtype=np.int64)
    labels = np.full((len(batch), width), IGNORE, dtype=np.int64)
    mask = np.zeros((len(batch), width), dtype=np.int64)
    for row, e in enumerate(batch):
        span = slice(width - len(e.input_ids), width) if left_pad else slice(0, len(e.input_ids))
        ids[row, span], labels[row, span], mask[row, span] = e.input_ids, e.labels, 1
    return {"input_ids": torch.from_numpy(ids), "attention_mask": torch.from_numpy(mask),
            "mm_token_type_ids": torch.from_numpy((ids == image_pad_id).astype(np.int64)),
            "labels": torch.from_numpy(labels), "pixel_values": torch.cat([e.pixel_values for e in batch]),
            "image_grid_thw": torch.cat([e.image_grid_thw for e in batch])}
