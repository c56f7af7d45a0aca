"""From a model's raw answer to boxes, one rule set applied in this order:

1. Reasoning is never scored. Text up to the last ``</think>`` is the draft and is left out.
   After it, when there are ``<answer>...</answer>`` blocks (Cosmos Reason 1's form), only the
   last one is read (to the end when its ``</answer>`` is missing); else all that follows
   ``</think>`` (Cosmos Reason 2's form). A ``<think>`` never closed (the answer was cut off while
   reasoning) leaves no answer: ``failed``, whatever JSON the draft holds. Plain answers, without
   tags, are read whole.
2. Among fenced blocks (```), the last one tagged ``json`` wins, else the last fenced block;
   without fences, the remaining text.
3. In it, the outermost JSON value: the first ``[`` or ``{`` to its matching bracket, or to the
   end when the answer was cut off. A lone object is a list of one box.
4. JSON that is valid as emitted (``NaN`` and ``Infinity`` are not JSON) gives status ``ok``.
   Anything else is repaired with the ``json-repair`` package (trailing commas anywhere, single
   quotes, unquoted keys, missing closing brackets) and gets status ``repaired``. A cut-off tail
   is first trimmed to the last complete object, and the partial object is counted as dropped:
   json-repair would complete it with guessed values (a label ``"tr"``, a number missing digits).
   JSON nested deeper than Python's recursion limit is no answer; an integer of more than 4300
   digits is no number Python converts (json-repair keeps it as text: ``non_numeric``).
5. A box is an object with a non-empty string ``label`` and a ``bbox_3d`` of nine finite numbers,
   each within +-``MAX_ABS_VALUE``, whose three sizes (numbers 4 to 6 in both codecs) are
   positive; every other item is dropped and counted by reason (a negative size is never made
   positive: that would score a mirrored guess as a perfect box).

An answer that yields no box is ``failed`` unless it is JSON valid as emitted that dropped
nothing: ``[]`` is ``ok`` with no box, while only dropped items, no JSON at all, or a repair that
recovered no box (320 unclosed ``[``, ``[,]``) is ``failed``, never ``repaired``. The caller
counts a failed answer as zero predictions for its frame, never as a skipped frame.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Literal

import json_repair

# No camera sees a vehicle 10 km away and no size or angle comes near it: beyond this a number is
# debris (1e308 would overflow every distance and make the Hungarian assignment infeasible).
MAX_ABS_VALUE = 1e4
DROP_REASONS = ("truncated", "not_an_object", "no_label", "no_bbox", "wrong_arity", "non_numeric",
                "non_finite", "absurd_magnitude", "size_not_positive")

THINK, THINK_END = "<think>", "</think>"
_ANSWER = re.compile(r"<answer>(.*?)(?:</answer>|\Z)", re.DOTALL)
_FENCE = re.compile(r"```[ \t]*([A-Za-z][\w+.-]*)?[ \t]*\n?(.*?)(?:```|\Z)", re.DOTALL)
_OPENING = re.compile(r"[\[{]")

Status = Literal["ok", "repaired", "failed"]


@dataclass
class ParsedAnswer:
    """What one answer yielded. ``boxes``: dicts with ``label``, ``bbox_3d`` (nine floats),
    ``span`` (start, end) of the box's text in the answer, and ``score`` when the object carried
    one (unchecked: the caller decides what a bad score means). ``emitted``: items found,
    including dropped ones and a cut-off partial object; ``dropped``: reason -> count."""

    boxes: list[dict[str, Any]] = field(default_factory=list)
    status: Status = "ok"
    valid_json: bool = True
    emitted: int = 0
    dropped: Counter = field(default_factory=Counter)
    region: tuple[int, int] | None = None  # (start, end) of the answer in the text: what may be scored


def answer_span(text: str) -> tuple[int, int] | None:
    """(start, end) of the answer in ``text``, reasoning left out (rule 1 of the module
    docstring); None when a ``<think>`` was never closed."""
    closed = text.rfind(THINK_END)
    start = closed + len(THINK_END) if closed >= 0 else 0
    if THINK in text[start:]:
        return None
    answers = list(_ANSWER.finditer(text, start))
    return answers[-1].span(1) if answers else (start, len(text))


def _region(text: str, start: int, end: int) -> tuple[int, int]:
    """(start, end) of the text that holds the JSON within the answer ``start:end``: the last
    json-tagged fenced block in it, else the last fence, else the whole answer."""
    fences = list(_FENCE.finditer(text, start, end))
    if fences:
        tagged = [f for f in fences if (f.group(1) or "").lower() == "json"]
        return (tagged or fences)[-1].span(2)
    return start, end


def _scan(text: str, start: int, end: int) -> tuple[int | None, list[tuple[int, int]]]:
    """From the bracket at ``start``: the index after its matching bracket (None when ``end``
    comes first) and the spans of the complete objects directly inside it (of the value itself
    when it is an object). Strings in either quote are skipped, escapes honoured."""
    depth, quote, escaped, spans, object_start = 0, None, False, [], None
    inner = 1 if text[start] == "[" else 0
    for index in range(start, end):
        char = text[index]
        if quote:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == quote:
                quote = None
            continue
        if char in "\"'":
            quote = char
        elif char in "[{":
            if char == "{" and depth == inner:
                object_start = index
            depth += 1
        elif char in "]}":
            depth -= 1
            if char == "}" and depth == inner and object_start is not None:
                spans.append((object_start, index + 1))
                object_start = None
            if depth == 0:
                return index + 1, spans
    return None, spans


def _strict_json(block: str) -> Any:
    def refuse(constant: str) -> None:
        raise ValueError(f"{constant} is not JSON")

    return json.loads(block, parse_constant=refuse)


def check_box(item: Any) -> tuple[dict[str, Any] | None, str | None]:
    """(box, None) for a valid item, else (None, the reason it is dropped)."""
    if not isinstance(item, dict):
        return None, "not_an_object"
    label, values = item.get("label"), item.get("bbox_3d")
    if not isinstance(label, str) or not label.strip():
        return None, "no_label"
    if not isinstance(values, list):
        return None, "no_bbox"
    if len(values) != 9:
        return None, "wrong_arity"
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        return None, "non_numeric"
    if not all(math.isfinite(v) for v in values if isinstance(v, float)):
        return None, "non_finite"
    if any(abs(v) > MAX_ABS_VALUE for v in values):
        return None, "absurd_magnitude"
    if min(values[3:6]) <= 0:
        return None, "size_not_positive"
    box = {"label": label, "bbox_3d": [float(v) for v in values]}
    if "score" in item:
        box["score"] = item["score"]
    return box, None


def parse_items(items: list[Any], spans: list[tuple[int, int]] | None = None, valid_json: bool = True,
                dropped: Counter | None = None) -> ParsedAnswer:
    """Check a list of decoded items (an answer's, or a prediction file's ``annotations``).
    ``spans``: text span of each object item, in order (used only when there is one per object);
    ``dropped``: counts already made (a cut-off object). Status as in the module docstring."""
    parsed = ParsedAnswer(valid_json=valid_json, dropped=Counter(dropped or {}))
    parsed.emitted = len(items) + sum(parsed.dropped.values())
    objects = sum(isinstance(item, dict) for item in items)
    object_index = 0
    for item in items:
        box, reason = check_box(item)
        if isinstance(item, dict):
            object_index += 1
        if reason:
            parsed.dropped[reason] += 1
            continue
        assert box is not None  # check_box gives a box exactly when it gives no reason
        box["span"] = spans[object_index - 1] if spans and len(spans) == objects else None
        parsed.boxes.append(box)
    if not parsed.boxes and (parsed.dropped or not valid_json):
        parsed.status = "failed"  # a repair that recovered no box recovered nothing
    else:
        parsed.status = "ok" if valid_json else "repaired"
    return parsed


def parse_answer(text: str) -> ParsedAnswer:
    """Boxes of one raw model answer by the rules of the module docstring."""
    answer = answer_span(text)
    if answer is None:  # cut off while reasoning
        return ParsedAnswer(status="failed", valid_json=False)
    parsed = _parse_json(text, *_region(text, *answer))
    parsed.region = answer
    return parsed


def _parse_json(text: str, start: int, end: int) -> ParsedAnswer:
    """Boxes of the JSON value in ``text[start:end]`` (rules 3 to 5 of the module docstring)."""
    opening = _OPENING.search(text, start, end)
    if opening is None:
        return ParsedAnswer(status="failed", valid_json=False)
    first = opening.start()
    close, spans = _scan(text, first, end)
    block = text[first: close if close is not None else end]
    try:
        value, valid, dropped = _strict_json(block), True, Counter[str]()
    except RecursionError:  # nested deeper than Python reads: no answer
        return ParsedAnswer(status="failed", valid_json=False)
    except ValueError:  # not JSON, or an integer longer than Python converts (json-repair fails on it too)
        valid, dropped = False, Counter[str]()
        if close is None:  # cut off: keep the complete objects, count the partial one
            cut = spans[-1][1] if spans else first + (text[first] == "[")
            if "{" in text[cut:end]:
                dropped["truncated"] = 1
            block = text[first:cut]
        try:
            value = json_repair.loads(block) if block else None
        except (ValueError, RecursionError):
            value = None
    if isinstance(value, dict):
        value = [value]
    if not isinstance(value, list):
        return ParsedAnswer(status="failed", valid_json=False, emitted=sum(dropped.values()), dropped=dropped)
    if text[first] == "{":  # a lone object: its span is the whole value
        spans = [(first, close if close is not None else end)]
    return parse_items(value, spans, valid, dropped)


def box_scores(parsed: ParsedAnswer, text: str, token_ends: list[int] | None,
               token_logprobs: list[float] | None) -> list[float]:
    """Confidence of each box: exp(mean log-probability of the tokens overlapping its text span;
    tokens of the whole answer, never of the reasoning draft, when the span is unknown).
    ``token_ends[i]``: character offset in ``text`` where token i ends. Without token
    log-probabilities, the documented fallback is the order of appearance, ``order_scores``."""
    if not token_ends or not token_logprobs:
        return order_scores(len(parsed.boxes))
    scores, starts = [], [0] + token_ends[:-1]
    for box in parsed.boxes:
        a, b = box["span"] or parsed.region or (0, len(text))
        chosen = [lp for s, e, lp in zip(starts, token_ends, token_logprobs) if e > a and s < b]
        scores.append(math.exp(sum(chosen) / len(chosen)) if chosen else 0.0)
    return scores


def order_scores(count: int) -> list[float]:
    """The fallback score of boxes that carry none: 1 / (1 + index), so earlier boxes rank higher."""
    return [1.0 / (1.0 + i) for i in range(count)]
