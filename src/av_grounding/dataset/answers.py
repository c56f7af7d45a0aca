"""The model's answer text: a JSON list of ``{"bbox_3d": [nine numbers], "label": ...}``.

Numbers are written with a fixed number of decimals (sizes may use their own), optionally with
trailing zeros trimmed (``18.00`` -> ``18``), and never as ``-0``. The Qwen vocabulary splits
digits one per token, so every character saved is a token saved.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class AnswerStyle:
    decimals: int | None = 2  # None: full float precision, as the recipe writes
    size_decimals: int | None = None  # None: same as decimals
    trim_zeros: bool = True
    compact: bool = True

    def field_decimals(self) -> list[int | None]:
        size = self.decimals if self.size_decimals is None else self.size_decimals
        return [self.decimals] * 3 + [size] * 3 + [self.decimals] * 3


def format_number(value: float, decimals: int | None, trim_zeros: bool) -> str:
    if decimals is None:
        return repr(float(value))
    text = f"{value:.{decimals}f}"
    if trim_zeros and "." in text:
        text = text.rstrip("0").rstrip(".")
    if text.lstrip("-").strip("0.") == "":
        text = "0" if trim_zeros else text.lstrip("-")
    return text


def rounded(values: list[float], style: AnswerStyle) -> list[float]:
    """The numbers as the answer states them (what a perfect model would reproduce)."""
    return [float(format_number(v, d, style.trim_zeros)) for v, d in zip(values, style.field_decimals())]


def format_answer(boxes: list[dict[str, Any]], style: AnswerStyle) -> str:
    """``boxes``: dicts with ``bbox_3d`` (nine floats) and ``label``; key order as the recipe's."""
    item_sep, key_sep = (",", ":") if style.compact else (", ", ": ")
    parts = []
    for box in boxes:
        numbers = item_sep.join(format_number(v, d, style.trim_zeros)
                                for v, d in zip(box["bbox_3d"], style.field_decimals()))
        parts.append("{" + f'"bbox_3d"{key_sep}[{numbers}]{item_sep}"label"{key_sep}{json.dumps(box["label"])}' + "}")
    return "[" + item_sep.join(parts) + "]"


def order_boxes(objects: list[dict[str, Any]], order: str) -> list[dict[str, Any]]:
    """``nearest`` first, ``left_to_right`` by bearing in the image, or ``track`` id order."""
    if order == "nearest":
        return sorted(objects, key=lambda o: (o["distance_m"], o["track_id"]))
    if order == "left_to_right":
        return sorted(objects, key=lambda o: (float(np.arctan2(o["center"][0], o["center"][2])), o["track_id"]))
    if order == "track":
        return sorted(objects, key=lambda o: o["track_id"])
    raise ValueError(f"unknown box order {order!r}; choose nearest, left_to_right or track")
