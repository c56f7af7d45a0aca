"""From a model's raw answer to boxes, tolerating fenced blocks, surrounding prose and a
truncated tail. An answer that yields nothing usable counts as zero predictions (its frame's
ground truth all missed) and as a parse failure; the frame is never skipped."""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from typing import Any

_FENCE = re.compile(r"```(?:json)?\s*(.*?)(?:```|$)", re.DOTALL)


@dataclass
class ParsedAnswer:
    boxes: list[dict[str, Any]] = field(default_factory=list)  # {"label", "bbox_3d", "span": (start, end)}
    status: str = "ok"  # ok | repaired | failed
    invalid_items: int = 0


def _object_spans(text: str) -> list[tuple[int, int]]:
    """Character spans of the complete top-level objects inside a JSON list (string-aware)."""
    spans, depth, start, in_string, escaped = [], 0, None, False, False
    for index, char in enumerate(text):
        if in_string:
            escaped = char == "\\" and not escaped
            if char == '"' and not escaped:
                in_string = False
            continue
        if char == '"':
            in_string, escaped = True, False
        elif char == "{":
            depth += 1
            if depth == 1:
                start = index
        elif char == "}" and depth:
            depth -= 1
            if depth == 0 and start is not None:
                spans.append((start, index + 1))
    return spans


def _valid_box(item: Any) -> dict[str, Any] | None:
    if not isinstance(item, dict):
        return None
    values, label = item.get("bbox_3d"), item.get("label")
    if not isinstance(label, str) or not isinstance(values, list) or len(values) != 9:
        return None
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values):
        return None
    return {"label": label, "bbox_3d": [float(v) for v in values]}


def parse_answer(text: str) -> ParsedAnswer:
    fenced = _FENCE.search(text)
    offset = fenced.start(1) if fenced else 0
    body = fenced.group(1) if fenced else text
    start = body.find("[")
    if start < 0:
        return ParsedAnswer(status="failed")
    end = body.rfind("]")
    status = "ok"
    try:
        items = json.loads(body[start: end + 1]) if end > start else None
        if not isinstance(items, list):
            raise ValueError
    except (json.JSONDecodeError, ValueError):
        items, status = None, "repaired"
    spans = [(offset + start + a, offset + start + b) for a, b in _object_spans(body[start:])]
    if items is None:  # truncated or damaged: keep every complete object
        items = []
        for a, b in spans:
            try:
                items.append(json.loads(text[a:b]))
            except json.JSONDecodeError:
                items.append(None)
    parsed = ParsedAnswer(status=status)
    for position, item in enumerate(items):
        box = _valid_box(item)
        if box is None:
            parsed.invalid_items += 1
            continue
        box["span"] = spans[position] if position < len(spans) else (0, len(text))
        parsed.boxes.append(box)
    if not parsed.boxes and (status == "repaired" or parsed.invalid_items):
        parsed.status = "failed"
    return parsed


def box_scores(parsed: ParsedAnswer, text: str, token_ends: list[int] | None,
               token_logprobs: list[float] | None) -> list[float]:
    """Confidence of each box: exp(mean log-probability of the tokens of its text). Without
    token log-probabilities (answers scored from files), the documented fallback is the order
    of appearance: 1 / (1 + index), so earlier boxes rank higher."""
    if not token_ends or not token_logprobs:
        return [1.0 / (1.0 + i) for i in range(len(parsed.boxes))]
    scores, starts = [], [0] + token_ends[:-1]
    for box in parsed.boxes:
        a, b = box["span"]
        chosen = [lp for s, e, lp in zip(starts, token_ends, token_logprobs) if e > a and s < b]
        scores.append(math.exp(sum(chosen) / len(chosen)) if chosen else 0.0)
    return scores
