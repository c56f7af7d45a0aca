"""Ground truth and predictions read into frames, every box decoded once.

Ground truth: a folder of recipe-format files ``<id>.json``, each an object with an
``annotations`` list of ``{"label", "bbox_3d"}`` and the camera: ``camera_params`` ``{fx, fy, cx,
cy}`` (pinhole; the image is taken as twice the principal point unless ``width``/``height`` say
otherwise) or ``camera_model`` + ``intrinsics`` (what `format` writes, in ``text/``); an optional
``box_codec`` names the box convention. Predictions: a folder of ``<id>.json`` named like the
ground truth, each with ``annotations`` (boxes, optionally a ``score`` each) and optionally
``raw_text`` (the model's answer, parsed when present) and ``scores`` (one per box). A missing or
unparsable prediction is zero boxes for its frame, never a skipped frame; a prediction file of
another structure (a bare list, ``{}``, ``{"predictions": ...}``) is an error naming it. Hidden
names (``._x.json``, macOS's AppleDouble files) are not frames; an entry ``x.json`` that is not a
readable file (a folder, a symlink loop) is an error naming it.
"""

from __future__ import annotations

import dataclasses
import json
import math
import reprlib
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from ..errors import PipelineError, some_names
from ..geometry.boxes import Box3D, clip_rectangle, edge_segments, projected_rectangle
from ..geometry.cameras import Camera, PinholeCamera, camera_from_record
from ..geometry.codecs import get_codec
from ..geometry.virtual import VIRTUAL_CAMERA, AnswerCamera
from .parse import ParsedAnswer, check_box, order_scores, parse_answer, parse_items

ScoreSource = Literal["box", "list", "order"]


class EvaluationError(PipelineError, ValueError):
    """Input that cannot be scored; the message names the file or folder and what was expected."""


class EvaluationWarning(UserWarning):
    """Input that is scored, but not as well as it could be (missing or unmatched prediction
    files, unreadable prediction JSON, image sizes taken from the principal point)."""


@dataclass(frozen=True)
class BoxSet:
    """N boxes of one frame, decoded once. ``values``: Nx9, the nine numbers as written;
    ``boxes``: the physical boxes (camera RDF, metres; sizes positive, as reading checked: a
    negative size is an invalid box, never made positive); ``centres`` Nx3 (m); ``headings``
    (N,) yaw of the forward axis in the ground plane, ``atan2(x, z)`` (rad); ``rectangles`` Nx4
    image rectangles of the projected box clipped to the image (px; all zero behind the camera);
    ``scores`` (N,)."""

    labels: list[str]
    values: np.ndarray
    boxes: list[Box3D]
    centres: np.ndarray
    headings: np.ndarray
    rectangles: np.ndarray
    scores: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)


@dataclass
class Frame:
    """One evaluation frame: its truth, the predictions and how the answer parsed.
    ``status``: ok | repaired | failed | missing (no prediction file); ``recipe_camera``: the
    ``fx, fy, cx, cy`` of a pinhole frame (the recipe's "AP2D" needs them), else None; ``clip``:
    the record's ``clip_id`` (all cameras of one clip share it)."""

    id: str
    camera: Camera
    width: int
    height: int
    gt: BoxSet
    pred: BoxSet
    recipe_camera: dict[str, float] | None
    status: str = "missing"
    valid_json: bool = False
    emitted: int = 0
    dropped: Counter = field(default_factory=Counter)
    score_source: ScoreSource | None = None
    clip: str = ""  # the clip (sequence) it comes from: the unit a clip bootstrap resamples; "": its own


def camera_of(record: dict[str, Any], source: Path) -> tuple[Camera, int, int, bool]:
    """The frame's camera, image size and whether that size was taken from the principal point
    (recipe files carry no image size: the principal point is then taken as the image centre);
    EvaluationError naming ``source`` when the camera description is missing or unusable."""
    try:
        if "intrinsics" in record and "camera_model" in record:
            camera = camera_from_record(record["camera_model"], record["intrinsics"])
            check_intrinsics(camera, source)
            return camera, camera.width, camera.height, False
        params = record.get("camera_params")
        if not isinstance(params, dict) or not {"fx", "fy", "cx", "cy"} <= set(params):
            raise EvaluationError(f"{source}: needs 'intrinsics' + 'camera_model' or "
                                  "'camera_params' {fx, fy, cx, cy}")
        fx, fy, cx, cy = (float(params[k]) for k in ("fx", "fy", "cx", "cy"))
        guessed = "width" not in record or "height" not in record
        width = int(record.get("width", round(2 * cx)))
        height = int(record.get("height", round(2 * cy)))
        if min(width, height) <= 0 or not all(np.isfinite([fx, fy, cx, cy])):
            raise EvaluationError(f"{source}: camera {params} with image size {width}x{height} is unusable; give "
                                  "'width' and 'height'")
        camera = PinholeCamera(fx, fy, cx, cy, width, height)
        check_intrinsics(camera, source)
        return camera, width, height, guessed
    except EvaluationError:
        raise
    except (TypeError, ValueError, KeyError, PipelineError) as exc:
        raise EvaluationError(f"{source}: unusable camera description: {exc}") from None


def check_intrinsics(camera: Camera, source: Path) -> None:
    """EvaluationError naming the ground-truth file (one frame) for intrinsics no image has: an
    empty image, a pinhole focal length that is not a positive finite number of pixels (with
    ``fx = fy = 0`` every box projects onto the principal point and AP2D means nothing), a
    principal point that is not finite."""
    where = f"{source}: frame {source.stem}: invalid intrinsics"
    if camera.width <= 0 or camera.height <= 0:
        raise EvaluationError(f"{where}: image size {camera.width}x{camera.height}")
    if isinstance(camera, PinholeCamera):
        values = {"fx": camera.fx, "fy": camera.fy, "cx": camera.cx, "cy": camera.cy}
        if not all(math.isfinite(v) for v in values.values()) or min(camera.fx, camera.fy) <= 0:
            raise EvaluationError(f"{where} {values}: fx and fy must be positive and all four finite (pixels)")


def pinhole_parameters(record: dict[str, Any]) -> dict[str, float] | None:
    """``fx, fy, cx, cy`` of a record's ``camera_params`` when all four are numbers, else None."""
    params = record.get("camera_params")
    if isinstance(params, dict) and all(isinstance(params.get(k), (int, float)) for k in ("fx", "fy", "cx", "cy")):
        return {k: float(params[k]) for k in ("fx", "fy", "cx", "cy")}
    return None


def image_rectangle(box: Box3D, camera: Camera, width: int, height: int) -> np.ndarray:
    """(4,) ``[x0, y0, x1, y1]`` (pixels): the rectangle around ``box``'s projected edges (curved
    under f-theta) clipped to the ``width`` x ``height`` image; all zero when the box lies wholly
    behind the camera's near plane."""
    rect = projected_rectangle(box.corners(), camera,
                               edge_segments("pinhole" if isinstance(camera, PinholeCamera) else "ftheta"))
    return np.zeros(4) if rect is None else clip_rectangle(rect, width, height)


def box_set(labels: list[str], values: list[list[float]], scores: list[float] | np.ndarray, codec: str,
            camera: Camera, width: int, height: int) -> BoxSet:
    """Decode N boxes (nine numbers each, in ``codec``'s convention) once: see ``BoxSet``."""
    decoder = get_codec(codec)
    boxes = [decoder.decode(v) for v in values]
    rectangles = [image_rectangle(box, camera, width, height) for box in boxes]
    forward = np.array([b.rotation[:, 0] for b in boxes]).reshape(-1, 3)
    return BoxSet(list(labels), np.asarray(values, float).reshape(-1, 9), boxes,
                  np.array([b.center for b in boxes]).reshape(-1, 3), np.arctan2(forward[:, 0], forward[:, 2]),
                  np.array(rectangles).reshape(-1, 4), np.asarray(scores, float))


_SHORT = reprlib.Repr()  # values quoted in one-line errors: bounded, however deep or long
_SHORT.maxlist, _SHORT.maxdict, _SHORT.maxstring, _SHORT.maxother, _SHORT.maxlevel = 12, 6, 80, 80, 3


def json_files(folder: Path) -> list[Path]:
    """The ``<id>.json`` files of ``folder``, sorted. Hidden names (a leading ``.``: macOS's
    AppleDouble ``._<id>.json``, writers' temporary files) are not frames and are skipped;
    EvaluationError naming an entry ``*.json`` that is not a file (a folder, a symlink loop, a
    link to nothing)."""
    found = []
    for path in sorted(folder.glob("*.json")):
        if path.name.startswith("."):
            continue
        if not path.is_file():
            kind = ("a folder" if path.is_dir() else "a symlink loop or a link to nothing" if path.is_symlink()
                    else "not a regular file")
            raise EvaluationError(f"{path}: {kind}, not a JSON file; remove or rename it")
        found.append(path)
    return found


def load_json(path: Path) -> Any:
    """The JSON value of the file ``path``. JSONDecodeError or UnicodeDecodeError for text that
    is not JSON (the caller decides what that means); EvaluationError naming the file for JSON
    that Python cannot read (nested deeper than its recursion limit, an integer of more digits
    than it converts) and for a file that cannot be read."""
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise
    except RecursionError:
        raise EvaluationError(f"{path}: JSON nested too deeply to read") from None
    except ValueError as exc:  # int(): "Exceeds the limit (4300 digits) for integer string conversion"
        raise EvaluationError(f"{path}: holds a number too long to read ({str(exc).split(';')[0]})") from None
    except OSError as exc:
        raise EvaluationError(f"{path}: cannot be read ({exc.strerror or exc})") from None


def read_ground_truth(path: Path) -> dict[str, Any] | None:
    """The record of a recipe-format file, or None when the file is JSON of another kind (a
    dataset's ``meta.json``); EvaluationError naming the file for JSON it cannot read or bad
    boxes (a size that is not positive among them)."""
    try:
        record = load_json(path)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise EvaluationError(f"{path}: malformed JSON: {exc}") from None
    if not isinstance(record, dict) or not isinstance(record.get("annotations"), list):
        return None
    for index, item in enumerate(record["annotations"]):
        _, reason = check_box(item)
        if reason:
            raise EvaluationError(f"{path}: ground-truth box {index} is invalid ({reason.replace('_', ' ')}): "
                                  f"{_SHORT.repr(item)}")
    return record


def _ground_truth_files(gt_dir: Path) -> list[tuple[Path, dict[str, Any]]]:
    if not gt_dir.is_dir():
        raise EvaluationError(f"{gt_dir}: no such folder; expected a folder of recipe-format ground truth (<id>.json)")
    records = [(path, read_ground_truth(path)) for path in json_files(gt_dir)]
    found = [(path, record) for path, record in records if record is not None]
    if not found:
        hint = f"; did you mean {gt_dir / 'text'}?" if (gt_dir / "text").is_dir() else ""
        names = ", ".join(path.name for path, _ in records[:3]) or "no .json file"
        raise EvaluationError(f"{gt_dir}: no recipe-format ground-truth files (<id>.json objects with an "
                              f"'annotations' list and the camera); found {names}{hint}")
    if len(found) < len(records):
        stray = next(path for path, record in records if record is None)
        raise EvaluationError(f"{stray}: not a recipe-format ground-truth file (an object with an 'annotations' list)")
    return found


def _prediction_names(pred_dir: Path, gt_names: set[str], gt_dir: Path) -> set[str]:
    if not pred_dir.is_dir():
        raise EvaluationError(f"{pred_dir}: no such prediction folder; expected <id>.json files named like "
                              f"the ground truth in {gt_dir}")
    names = {path.name for path in json_files(pred_dir)}
    if not names:
        raise EvaluationError(f"{pred_dir}: no prediction files; expected <id>.json files named like the "
                              f"ground truth in {gt_dir}")
    if not names & gt_names:
        raise EvaluationError(f"{pred_dir}: none of its {len(names)} .json files is named like a ground-truth "
                              f"file in {gt_dir} (e.g. {sorted(gt_names)[0]})")
    return names


def _finite_number(value: Any) -> bool:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:  # an integer beyond every float
        return False


def _checked_scores(values: list[Any], boxes: list[dict[str, Any]], path: Path) -> list[float]:
    for index, value in enumerate(values):
        if not _finite_number(value):
            raise EvaluationError(f"{path}: box {index} (label {boxes[index]['label']!r}): score "
                                  f"{_SHORT.repr(value)} is not a finite number")
    return [float(v) for v in values]


def _listed_for_kept(boxes: list[dict[str, Any]], listed: list[Any], annotations: Any) -> list[Any] | None:
    """The entries of a ``scores`` list written for the file's ``annotations`` (one each) that
    belong to ``boxes``, the boxes this reader kept: each kept box takes the score of the first
    annotation not yet taken with its label and its nine numbers. A writer that kept boxes this
    reader drops (a zero size, say) listed their scores too. None when the list does not follow
    ``annotations`` or a kept box is not among them."""
    if not isinstance(annotations, list) or len(annotations) != len(listed):
        return None
    written: list[tuple[Any, tuple[float, ...]] | None] = []
    for item in annotations:
        try:
            written.append((item["label"], tuple(float(v) for v in item["bbox_3d"])))
        except (KeyError, TypeError, ValueError):
            written.append(None)
    chosen = []
    for box in boxes:
        key = (box["label"], tuple(float(v) for v in box["bbox_3d"]))
        index = next((i for i, entry in enumerate(written) if entry == key), None)
        if index is None:
            return None
        written[index] = None
        chosen.append(listed[index])
    return chosen


def resolve_scores(parsed: ParsedAnswer, document: dict[str, Any], path: Path) -> tuple[list[float], ScoreSource]:
    """Scores of the kept boxes, in this order: a ``score`` inside every box object, else a
    top-level ``scores`` list of one entry per kept box, or of one entry per box of the file's
    ``annotations`` (``_listed_for_kept``: a writer that kept boxes this reader drops), else the
    order of appearance. ``parsed``: the boxes as written (before any camera change).
    EvaluationError naming the file and box for a non-finite or non-numeric score, when only some
    boxes carry one, or for a ``scores`` list that fits neither the kept boxes nor ``annotations``."""
    boxes = parsed.boxes
    own = ["score" in box for box in boxes]
    if any(own):
        if not all(own):
            index = own.index(False)
            raise EvaluationError(f"{path}: box {index} (label {boxes[index]['label']!r}) has no 'score' "
                                  f"while other boxes have one")
        return _checked_scores([box["score"] for box in boxes], boxes, path), "box"
    listed = document.get("scores")
    if listed is not None and boxes:
        if isinstance(listed, list) and len(listed) != len(boxes):
            listed = _listed_for_kept(boxes, listed, document.get("annotations")) or listed
        if not isinstance(listed, list) or len(listed) != len(boxes):
            has = len(listed) if isinstance(listed, list) else repr(listed)
            raise EvaluationError(f"{path}: 'scores' must be a list of one score per box; it has "
                                  f"{has} for {len(boxes)} box(es)")
        return _checked_scores(listed, boxes, path), "list"
    return order_scores(len(boxes)), "order"


_JSON_KINDS = {dict: "an object", list: "a list", str: "a string", int: "a number", float: "a number",
               bool: "a boolean", type(None): "null"}


def _structure(document: Any) -> str:
    """What a prediction file holds instead of the prediction format, in words."""
    if isinstance(document, list):
        return ("a bare list (save a model's answer as {\"raw_text\": \"...\"}, boxes as "
                "{\"annotations\": [...]})")
    if not isinstance(document, dict):
        return _JSON_KINDS[type(document)]
    if document.get("raw_text") is not None:
        return f"'raw_text' that is {_JSON_KINDS[type(document['raw_text'])]}"
    if "annotations" in document:
        return f"'annotations' that is {_JSON_KINDS[type(document['annotations'])]}"
    keys = sorted(document)
    return f"an object with keys {', '.join(map(repr, keys[:5]))}{' ...' if len(keys) > 5 else ''}" if keys \
        else "an empty object"


def in_real_camera(parsed: ParsedAnswer, document: dict[str, Any], path: Path,
                   truth_block: Any = None) -> ParsedAnswer:
    """The boxes of an answer written in a virtual camera moved back into the real camera: by the
    prediction file's ``virtual_camera`` block (``dataset.camera_input``), else by the ground-truth
    record's (``truth_block``: the model was trained on answers in that camera; warned); the
    answer as it is when neither has one. EvaluationError naming the file for a block
    ``AnswerCamera.deserialize`` refuses."""
    if VIRTUAL_CAMERA not in document:
        if truth_block is None:
            return parsed
        warnings.warn(EvaluationWarning(f"{path}: no '{VIRTUAL_CAMERA}' block, but the ground truth's record has one: "
                                        "its raw_text is read in the truth's virtual camera"), stacklevel=2)
        document = {VIRTUAL_CAMERA: truth_block}
    try:
        camera = AnswerCamera.deserialize(document[VIRTUAL_CAMERA], str(path))
    except ValueError as exc:
        raise EvaluationError(str(exc)) from None
    return dataclasses.replace(parsed, boxes=camera.boxes_to_real(parsed.boxes))


def read_prediction(path: Path, truth_block: Any = None) -> tuple[ParsedAnswer, list[float], ScoreSource]:
    """Boxes, their scores and where the scores came from, for one prediction file. The boxes
    come from ``raw_text`` when the file has it (the model's own answer, parsed; moved back into
    the real camera when the file says the answer is in a virtual one, ``in_real_camera``), else
    from ``annotations`` (always in the real camera); a file that is not JSON is a failed answer
    (with a warning). EvaluationError naming the file for any other structure (a bare list,
    ``{}``, ``{"annotations": null}``): scored as failed answers, a whole column saved the wrong
    way would pass for a bad model."""
    try:
        document = load_json(path)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        warnings.warn(EvaluationWarning(f"{path}: not JSON ({exc}): scored as an unparsable answer"), stacklevel=2)
        return ParsedAnswer(status="failed", valid_json=False), [], "order"
    raw, annotations = (document.get(key) if isinstance(document, dict) else None
                        for key in ("raw_text", "annotations"))
    if isinstance(raw, str):
        parsed = parse_answer(raw)
        scores, source = resolve_scores(parsed, document, path)
        return in_real_camera(parsed, document, path, truth_block), scores, source
    if raw is None and isinstance(annotations, list):
        parsed = parse_items(annotations)
        return parsed, *resolve_scores(parsed, document, path)
    raise EvaluationError(f"{path}: not a prediction file: expected a JSON object with an 'annotations' list "
                          f"of boxes or a 'raw_text' string (the model's answer); found {_structure(document)}")


def load_frames(gt_dir: Path, pred_dir: Path, default_codec: str) -> list[Frame]:
    """Every ground-truth frame of ``gt_dir`` with its prediction from ``pred_dir`` (see the
    module docstring). EvaluationError, naming the folder or file, for a missing or empty folder,
    a ground-truth folder without recipe-format files, prediction files none of which is named
    like the ground truth, a bad ground-truth box or a bad score."""
    gt_dir, pred_dir = Path(gt_dir), Path(pred_dir)
    truth = _ground_truth_files(gt_dir)
    available = _prediction_names(pred_dir, {path.name for path, _ in truth}, gt_dir)
    frames, guessed_size = [], []
    for path, record in truth:
        camera, width, height, guessed = camera_of(record, path)
        if guessed:
            guessed_size.append(path.name)
        codec = record.get("box_codec", default_codec)
        annotations = record["annotations"]
        try:
            gt = box_set([b["label"] for b in annotations], [b["bbox_3d"] for b in annotations],
                         np.ones(len(annotations)), codec, camera, width, height)
        except ValueError as exc:
            raise EvaluationError(f"{path}: {exc}") from None
        scores: list[float] = []
        parsed, source = ParsedAnswer(status="failed", valid_json=False), None
        if path.name in available:
            parsed, scores, source = read_prediction(pred_dir / path.name, record.get(VIRTUAL_CAMERA))
        pred = box_set([b["label"] for b in parsed.boxes], [b["bbox_3d"] for b in parsed.boxes], scores,
                       codec, camera, width, height)
        frames.append(Frame(path.stem, camera, width, height, gt, pred, pinhole_parameters(record),
                            parsed.status if source else "missing", parsed.valid_json, parsed.emitted,
                            parsed.dropped, source, str(record.get("clip_id", ""))))
    _warn_about(gt_dir, pred_dir, {path.name for path, _ in truth}, available, guessed_size)
    return frames


def _warn_about(gt_dir: Path, pred_dir: Path, gt_names: set[str], pred_names: set[str], guessed: list[str]) -> None:
    """EvaluationWarnings for what is scored but may be a mistake: frames without a prediction
    file (scored as misses), prediction files no ground truth names (ignored), image sizes taken
    from the principal point (AP2D rectangles are clipped to that size)."""
    if gt_names - pred_names:
        warnings.warn(EvaluationWarning(f"{pred_dir}: no prediction for {len(gt_names - pred_names)} of "
                                        f"{len(gt_names)} frames, scored as misses: "
                                        f"{some_names(gt_names - pred_names)}"),
                      stacklevel=3)
    if pred_names - gt_names:
        warnings.warn(EvaluationWarning(f"{pred_dir}: {len(pred_names - gt_names)} file(s) named like no "
                                        f"ground truth in {gt_dir}, ignored: {some_names(pred_names - gt_names)}"),
                      stacklevel=3)
    if guessed:
        warnings.warn(EvaluationWarning(f"{gt_dir}: {len(guessed)} file(s) give no 'width'/'height': image size "
                                        f"taken as twice the principal point ({some_names(guessed)})"), stacklevel=3)
