"""The reinforcement-learning reward of one answer against its frame's truth (docs/rl_reward.md).

Built from the evaluation's own pieces, nothing re-implemented: the answer is read by
``parse_answer`` (reasoning left out, JSON repaired, invalid boxes dropped), the truth is checked
by ``check_box``, both are decoded by the box codec, predictions are matched one-to-one to the
truth by ``match_centres`` (the Hungarian assignment on ground-plane centre distance that
`evaluate`'s matching summary uses), and matched pairs are scored by the exact oriented ``iou_3d``.

The design follows three GRPO works on detection: a bipartite-matching reward over the whole
answer (Perception-R1, arXiv 2504.07954), IoU plus a format term (Visual-RFT, arXiv 2503.01785),
and a guard against the reward hack VLM-R1 documents for detection (arXiv 2504.07615): repeated
boxes that inflate recall. No code of theirs is used.

With ``G`` truth boxes, ``P`` valid predicted boxes of which ``D`` are duplicates (a box whose 3D
IoU with an earlier kept box exceeds ``duplicate_iou``: greedy suppression in order of
appearance), ``K = P - D`` kept boxes, and ``M`` pairs matched among them (ground-plane distance
``d_i`` at most ``match_distance_m``)::

    iou     = iou_weight    * sum(IoU_i) / G
    centre  = centre_weight * sum(1 - d_i / match_distance_m) / G
    label   = label_weight  * (pairs with the same label) / G
    format  = format_weight   if the answer is JSON valid as emitted and every item a valid box
    false_positive = false_positive_weight * (K - M) / K
    duplicate      = duplicate_weight * D / P
    malformed      = malformed_weight  if the answer needed repair or yielded nothing (parse status
                     ``repaired`` or ``failed``; a failed answer counts as zero boxes)
    truncated      = truncated_weight  if generation did not stop at end-of-sequence
    overlong       = overlong_weight   if the answer is longer than max_answer_tokens / _chars
    total = iou + centre + label + format - false_positive - duplicate - malformed - truncated - overlong

On a frame without truth (``G = 0``) nothing can be missed: the three match terms take their full
weights, so ``[]`` scores the maximum and every hallucinated box costs through ``false_positive``.
The match weights sum to 1, so a perfect answer scores ``1 + format_weight`` (``maximum``) and no
answer scores more.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

import numpy as np

from ..geometry.boxes import Box3D
from ..geometry.codecs import CODECS, get_codec
from ..geometry.virtual import VIRTUAL_CAMERA, AnswerCamera
from .config import ConfigError
from .frames import EvaluationError, json_files, load_json
from .iou import iou_3d, iou_3d_matrix
from .matching import match_centres
from .parse import check_box, parse_answer

_WEIGHTS = ("iou_weight", "centre_weight", "label_weight", "format_weight", "false_positive_weight",
            "duplicate_weight", "malformed_weight", "truncated_weight", "overlong_weight")


@dataclass(frozen=True)
class RewardConfig:
    """Weights (unitless reward points) and thresholds of ``reward``, checked together in the
    manner of nuscenes-devkit's ``DetectionConfig``.

    Defaults: the match part is shared 0.5 IoU, 0.4 centre distance, 0.1 label (they must sum to
    1); format 0.1, so a perfect answer scores 1.1; each penalty is a share of the match part: a
    wholly false answer (0.5), wholly duplicated (0.5), malformed (0.5), truncated (0.5), over-long
    (0.25). ``match_distance_m`` is `evaluate`'s default (2 m, camera ground plane x-z);
    ``duplicate_iou`` 0.5 (two real vehicles do not overlap that much); the length limits are
    about 20 boxes at the measured ~48 tokens (~60 characters) a box; None switches a limit off.

    Raises ``ConfigError`` (a ``ValueError``) naming the field for an unknown codec, a weight
    that is negative or not finite, match weights that do not sum to 1, ``duplicate_iou`` outside
    [0, 1), a distance that is not positive, or a length limit below 1.
    """

    codec: str = "cosmos"
    match_distance_m: float = 2.0
    iou_weight: float = 0.5
    centre_weight: float = 0.4
    label_weight: float = 0.1
    format_weight: float = 0.1
    false_positive_weight: float = 0.5
    duplicate_weight: float = 0.5
    duplicate_iou: float = 0.5
    malformed_weight: float = 0.5
    truncated_weight: float = 0.5
    overlong_weight: float = 0.25
    max_answer_tokens: int | None = 1024
    max_answer_chars: int | None = 4096

    def __post_init__(self) -> None:
        if self.codec not in CODECS:
            raise ConfigError(f"reward.codec: unknown box codec {self.codec!r}; choose from {sorted(CODECS)}")
        for name in _WEIGHTS:
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise ConfigError(f"reward.{name} must be a finite number >= 0, got {value!r}")
        match = self.iou_weight + self.centre_weight + self.label_weight
        if abs(match - 1.0) > 1e-9:
            raise ConfigError(f"reward.iou_weight + centre_weight + label_weight must be 1 (a perfect match scores "
                              f"1), got {match}")
        if not 0.0 <= self.duplicate_iou < 1.0:
            raise ConfigError(f"reward.duplicate_iou must be in [0, 1) (an exact copy has IoU 1), "
                              f"got {self.duplicate_iou}")
        if not self.match_distance_m > 0 or not math.isfinite(self.match_distance_m):
            raise ConfigError(f"reward.match_distance_m must be a positive distance, got {self.match_distance_m}")
        for name in ("max_answer_tokens", "max_answer_chars"):
            limit = getattr(self, name)
            if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
                raise ConfigError(f"reward.{name} must be a positive integer or None, got {limit!r}")

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> RewardConfig:
        """The config of a mapping of field names (a params section, a TOML table); ConfigError
        naming unknown keys, and as ``__post_init__`` for bad values."""
        unknown = sorted(set(values) - {f.name for f in fields(cls)})
        if unknown:
            raise ConfigError(f"reward: unknown key(s) {unknown}; known: {[f.name for f in fields(cls)]}")
        return cls(**values)

    @property
    def maximum(self) -> float:
        """The reward of a perfect answer, and the most any answer scores: ``1 + format_weight``."""
        return 1.0 + self.format_weight

    @property
    def minimum(self) -> float:
        """The least any answer scores: every penalty in full, no gain."""
        return -(self.false_positive_weight + self.duplicate_weight + self.malformed_weight
                 + self.truncated_weight + self.overlong_weight)


@dataclass(frozen=True)
class RewardBreakdown:
    """One answer's reward and its parts. Gains ``iou``, ``centre``, ``label``, ``format`` and
    penalties ``false_positive``, ``duplicate``, ``malformed``, ``truncated``, ``overlong`` are
    already weighted (reward points; penalties >= 0, subtracted), so ``total`` = gains - penalties.
    Counts: ``truth`` boxes, ``predicted`` valid boxes (duplicates included), ``duplicates``,
    ``matched`` pairs, ``false_positives`` (kept boxes left unmatched); ``status``: the parse
    status (ok, repaired, failed)."""

    total: float
    iou: float
    centre: float
    label: float
    format: float
    false_positive: float
    duplicate: float
    malformed: float
    truncated: float
    overlong: float
    truth: int
    predicted: int
    duplicates: int
    matched: int
    false_positives: int
    status: str

    def serialize(self) -> dict[str, float | int | str]:
        """Every field by name: plain floats, ints and the status string (JSON as it is)."""
        return asdict(self)


def _truth_boxes(truth: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The truth checked by the evaluation's ``check_box``; ValueError naming the first bad box."""
    if isinstance(truth, (str, bytes)) or not isinstance(truth, Sequence):
        raise ValueError(f"truth must be a list of {{label, bbox_3d}} boxes, got {type(truth).__name__}")
    boxes = []
    for index, item in enumerate(truth):
        box, reason = check_box(item)
        if box is None:
            raise ValueError(f"truth box {index} is invalid ({reason}): {item!r:.200}")
        boxes.append(box)
    return boxes


def _decode(boxes: list[dict[str, Any]], codec: str) -> tuple[list[Box3D], np.ndarray]:
    """Physical boxes (camera RDF, metres) of the nine numbers, and their Nx2 ground-plane (x, z) centres."""
    decoder = get_codec(codec)
    decoded = [decoder.decode(box["bbox_3d"]) for box in boxes]
    return decoded, np.array([[b.center[0], b.center[2]] for b in decoded]).reshape(-1, 2)


def _duplicates(boxes: list[Box3D], threshold: float) -> list[bool]:
    """Per box, in order of appearance: whether its 3D IoU with an earlier kept box exceeds ``threshold``."""
    kept: list[Box3D] = []
    flags = []
    for box in boxes:
        repeated = bool(kept) and float(iou_3d_matrix([box], kept).max()) > threshold
        flags.append(repeated)
        if not repeated:
            kept.append(box)
    return flags


def _match_terms(pred: list[Box3D], pred_xz: np.ndarray, pred_labels: list[str], gt: list[Box3D],
                 gt_xz: np.ndarray, gt_labels: list[str], config: RewardConfig) -> tuple[float, float, float, int]:
    """(iou, centre, label, matched pairs): the weighted match terms of kept predictions against the truth."""
    if not gt:
        return config.iou_weight, config.centre_weight, config.label_weight, 0
    pairs = match_centres(pred_xz, gt_xz, config.match_distance_m)
    iou = sum(iou_3d(pred[p], gt[g]) for p, g, _ in pairs)
    centre = sum(1.0 - d / config.match_distance_m for _, _, d in pairs)
    label = sum(pred_labels[p] == gt_labels[g] for p, g, _ in pairs)
    n = len(gt)
    return config.iou_weight * iou / n, config.centre_weight * centre / n, config.label_weight * label / n, len(pairs)


def _overlong(text: str, n_tokens: int | None, config: RewardConfig) -> bool:
    tokens = n_tokens is not None and config.max_answer_tokens is not None and n_tokens > config.max_answer_tokens
    return tokens or (config.max_answer_chars is not None and len(text) > config.max_answer_chars)


def reward(text: str, truth: Sequence[Mapping[str, Any]], config: RewardConfig | None = None, *,
           codec: str | None = None, finished: bool = True, n_tokens: int | None = None,
           answer_camera: AnswerCamera | None = None) -> RewardBreakdown:
    """The reward of the answer ``text`` on a frame whose truth is ``truth`` (module docstring).

    ``truth``: the frame's boxes as the ground-truth record's ``annotations`` holds them, a list
    of ``{"label": str, "bbox_3d": [nine numbers]}`` (``[]`` for an empty frame). ``codec``: the
    convention of both the truth and the answer (the record's ``box_codec``), default
    ``config.codec``. ``finished``: whether generation stopped at end-of-sequence (False: the
    answer was cut off). ``n_tokens``: the answer's length in tokens, when known. No camera is
    needed: 3D IoU and centre distance are measured in camera RDF metres, whatever the intrinsics.
    ``answer_camera``: for a dataset whose answers are in a virtual camera
    (``format.camera_input``: ``virtual_camera``, ``image_centre``), the frame's (its record's
    ``virtual_camera`` block): the answer's boxes are moved back into the real camera of
    ``truth`` before matching.

    Raises ValueError for an invalid truth box (naming its index and why) or an unknown codec.
    """
    config = config or RewardConfig()
    codec = codec or config.codec
    gt_boxes = _truth_boxes(truth)
    gt, gt_xz = _decode(gt_boxes, codec)
    parsed = parse_answer(text)
    if answer_camera is not None:
        parsed = replace(parsed, boxes=answer_camera.boxes_to_real(parsed.boxes))
    pred_all, xz_all = _decode(parsed.boxes, codec)
    repeated = _duplicates(pred_all, config.duplicate_iou)
    keep = [i for i, r in enumerate(repeated) if not r]
    pred, pred_xz = [pred_all[i] for i in keep], xz_all[keep]
    iou, centre, label, matched = _match_terms(pred, pred_xz, [parsed.boxes[i]["label"] for i in keep], gt, gt_xz,
                                               [b["label"] for b in gt_boxes], config)
    n_pred, n_dup, unmatched = len(pred_all), sum(repeated), len(pred) - matched
    parts = {
        "iou": iou, "centre": centre, "label": label,
        "format": config.format_weight if parsed.status == "ok" and not parsed.dropped else 0.0,
        "false_positive": config.false_positive_weight * unmatched / len(pred) if pred else 0.0,
        "duplicate": config.duplicate_weight * n_dup / n_pred if n_pred else 0.0,
        "malformed": config.malformed_weight if parsed.status != "ok" else 0.0,
        "truncated": 0.0 if finished else config.truncated_weight,
        "overlong": config.overlong_weight if _overlong(text, n_tokens, config) else 0.0,
    }
    gains = parts["iou"] + parts["centre"] + parts["label"] + parts["format"]
    penalties = sum(parts[k] for k in ("false_positive", "duplicate", "malformed", "truncated", "overlong"))
    return RewardBreakdown(float(gains - penalties), **{k: float(v) for k, v in parts.items()}, truth=len(gt),
                           predicted=n_pred, duplicates=n_dup, matched=matched, false_positives=unmatched,
                           status=parsed.status)


def column_reward(gt_dir: Path, pred_dir: Path, codec: str, config: RewardConfig | None = None) -> dict[str, float]:
    """The mean reward (``reward``, default weights unless ``config``) of a prediction column's
    answers, with the mean of every term: per ground-truth file of ``gt_dir`` its prediction in
    ``pred_dir`` (its ``raw_text``, else its ``annotations`` as JSON; moved back from a virtual
    camera as the evaluator moves it, ``frames.in_real_camera``; a missing or unreadable file is an
    empty answer). Whether an answer was cut off is not recorded in prediction files: the
    truncation term stays 0. Keys:
    each ``RewardBreakdown`` number by name (``total`` the reward). ValueError for a bad truth box."""
    breakdowns = []
    for truth_path in json_files(gt_dir):
        record = load_json(truth_path)
        pred_path = pred_dir / truth_path.name
        try:
            document = load_json(pred_path) if pred_path.is_file() else None
        except (ValueError, EvaluationError):
            document = None
        document = document if isinstance(document, dict) else {}
        raw, boxes = document.get("raw_text"), document.get("annotations")
        text = raw if isinstance(raw, str) else json.dumps(boxes) if isinstance(boxes, list) else ""
        block = document[VIRTUAL_CAMERA] if VIRTUAL_CAMERA in document else record.get(VIRTUAL_CAMERA)
        camera = AnswerCamera.deserialize(block, str(pred_path)) if isinstance(raw, str) and (
            VIRTUAL_CAMERA in document or VIRTUAL_CAMERA in record) else None
        breakdowns.append(reward(text, record["annotations"], config, codec=record.get("box_codec") or codec,
                                 answer_camera=camera))
    numbers = [k for k, v in breakdowns[0].serialize().items() if not isinstance(v, str)] if breakdowns else []
    return {name: sum(float(getattr(b, name)) for b in breakdowns) / len(breakdowns) for name in numbers}
