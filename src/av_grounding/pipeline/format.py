"""The `format` stage: curated frames -> train/eval datasets in both layouts, with token budgets.

Output under the dataset folder:
  split.json                    which clips went where (evaluation reads it)
  train/ and eval/, each with   meta.json, text/, images/      (Cosmos-RL)
                                annotations.json               (Qwen-VL fine-tune)
A sample whose prompt + image + answer tokens exceed ``model_max_length`` is dropped and counted,
never truncated. Tokens are counted as the published checkpoints count them: the conversation
rendered by the published chat template of ``model_family`` and tokenized with the real Qwen
vocabulary (``models.hub``), through the encoder training and inference use; each sample's counts
are kept in its Cosmos-RL record under ``tokens``. Images are copied out of extract's shards into
``images/<id>.jpg``, the layout every reader expects; dvc.yaml keeps this folder off the DVC remote
(``push: false``): `dvc repro` rebuilds it from the pulled shards faster than DVC moves one object
per sample. ``camera_input`` (``dataset.camera_input``) adds the intrinsics to the user prompt, or
writes the answers' centres in a virtual camera: the record's ``annotations`` stay in the real
camera and its ``virtual_camera`` block says how the answer's centres are written (a scale, and
for ``image_centre`` the frame's intrinsics). ``crop_above_deg`` cuts every
frame's sky off, and ``mirror_train`` adds each training frame flipped left to right as a sample of
its own (``dataset.views``: id ``<id>_mirrored``, its record flagged ``mirrored``, with the
mirrored camera's intrinsics and boxes).
"""

from __future__ import annotations

import csv
import functools
import io
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..curation.records import iter_records
from ..dataset import tokens
from ..dataset.answers import AnswerStyle, format_answer, order_boxes, rounded
from ..dataset.camera_input import answer_camera, user_prompt
from ..dataset.formats import Sample, conversation, write_cosmos, write_qwen
from ..dataset.prompts import load_prompts
from ..dataset.split import split_clips
from ..dataset.views import CROP_TOP, MIRRORED, cropped_record, mirror_record, view_jpeg
from ..evaluation.parse import check_box
from ..geometry.virtual import VIRTUAL_CAMERA
from ..models.builtin import task_tokenizer
from ..models.hub import build_tokenizer
from ..models.inputs import IGNORE, Encoder
from ..params import FormatParams, ParamsError
from ..shards import ShardReader
from ..storage import atomic_folder, atomic_write_bytes, write_json
from .outputs import write_report

# The recipe's own sample box (seed, "Annotation Format"), for comparable token figures.
RECIPE_SAMPLE_BOX = [{"bbox_3d": [-8.962420703794697, -0.15224466668225012, 18.004403863124224, 5.301581382751465,
                                  2.187917470932007, 2.0336594581604004, 0.005443232293758353, 0.6511561857044312,
                                  -0.009069517922754287], "label": "car"}]
# Answer styles whose token cost the metrics compare (the configured one is added as "configured").
STYLE_VARIANTS = {
    "full_precision_spaced": AnswerStyle(None, None, False, False),
    "2_decimals_spaced": AnswerStyle(2, None, False, False),
    "2_decimals_compact": AnswerStyle(2, None, False, True),
    "2_decimals_compact_trimmed": AnswerStyle(2, None, True, True),
    "2_decimals_sizes_1_compact_trimmed": AnswerStyle(2, 1, True, True),
    "1_decimal_compact_trimmed": AnswerStyle(1, None, True, True),
}


def answer_style(params: FormatParams) -> AnswerStyle:
    """How answers are written (decimals, size decimals, trimmed zeros, compact JSON) per ``params``."""
    return AnswerStyle(params.decimals, params.size_decimals, params.trim_zeros, params.compact_json)


def sample_id(record: dict[str, Any]) -> str:
    """``<clip_id>_<camera>_<frame_index:06d>``: a frame record's sample id (and image file stem);
    ``_mirrored`` appended for a mirrored frame (``dataset.views``)."""
    return f"{record['clip_id']}_{record['camera']}_{record['frame_index']:06d}" + (
        f"_{MIRRORED}" if record.get(MIRRORED) else "")


def annotation_record(record: dict[str, Any], boxes: list[dict[str, Any]]) -> dict[str, Any]:
    """A sample's Cosmos-RL record: frame, clip and camera, the camera model with its
    ``camera_params`` (pinhole ``fx, fy, cx, cy``; f-theta ``cx, cy``; pixels) and RDS-HQ
    ``intrinsics``, the image size in pixels, the box codec, the view's ``crop_top`` and
    ``mirrored`` where set (``dataset.views``) and ``boxes`` as ``annotations``."""
    intrinsics = record["intrinsics"]
    camera_params = ({"fx": intrinsics[0], "fy": intrinsics[1], "cx": intrinsics[2], "cy": intrinsics[3]}
                     if record["camera_model"] == "pinhole" else {"cx": intrinsics[0], "cy": intrinsics[1]})
    return {"frame_id": record["frame_index"], "clip_id": record["clip_id"], "camera": record["camera"],
            "camera_model": record["camera_model"], "camera_params": camera_params, "intrinsics": intrinsics,
            "width": record["width"], "height": record["height"], "box_codec": record["box_codec"],
            **{key: record[key] for key in (CROP_TOP, MIRRORED) if key in record}, "annotations": boxes}


# The answer styles are compared on an evenly spaced sample of at most this many answers: the
# per-box cost settles long before (its value changes in the second decimal), and counting
# every answer in seven styles with two vocabularies was most of the stage's time at 20k frames.
STYLE_SAMPLE = 2000


def evenly_spaced(items: list, limit: int) -> list:
    """At most ``limit`` items, every k-th (k = ceil(len / limit)), first included."""
    return items[:: max(1, -(-len(items) // limit))]


def tokens_per_box(answers: list[list[dict[str, Any]]], style: AnswerStyle, count=tokens.count_qwen) -> float:
    """Answer tokens spent per box: (tokens of each answer - tokens of an empty answer) / boxes."""
    with_boxes = [a for a in answers if a]
    boxes = sum(len(a) for a in with_boxes)
    if not boxes:
        return 0.0
    empty = count("[]")
    return sum(count(format_answer(a, style)) - empty for a in with_boxes) / boxes


def distribution(values: list[int]) -> dict[str, float]:
    """``mean``, ``p50``, ``p95`` and ``max`` of token counts; all 0.0 for no values."""
    if not values:
        return {"mean": 0.0, "p50": 0.0, "p95": 0.0, "max": 0.0}
    array = np.asarray(values, dtype=float)
    return {"mean": round(float(array.mean()), 2), "p50": float(np.percentile(array, 50)),
            "p95": round(float(np.percentile(array, 95)), 2), "max": float(array.max())}


@dataclass
class Counts:
    """Frames read, mirrored copies made (``mirror_train``), and frames, boxes and samples left
    out, by reason (a mirrored copy is left out as any frame is)."""

    frames_in: int = 0
    mirrored_frames: int = 0
    empty_frames_skipped: int = 0
    boxes_over_max_boxes: int = 0
    boxes_unanswerable: int = 0
    samples_over_max_length: int = 0


def check_every_split_keeps_a_sample(params: FormatParams, per_split: dict[str, list],
                                     shortest_over: dict[str, tuple[int, str]]) -> None:
    """``ParamsError`` when ``model_max_length`` dropped every sample of a split (nothing to
    train on or to evaluate), naming the tokens of its shortest sample."""
    emptied = [split for split, entries in per_split.items() if not entries and split in shortest_over]
    if emptied:
        shortest = " and ".join(f"{split} (the shortest: {shortest_over[split][0]} tokens, {shortest_over[split][1]})"
                                for split in emptied)
        needed = max(shortest_over[split][0] for split in emptied)
        raise ParamsError(f"format.model_max_length = {params.model_max_length} drops every sample of {shortest}; "
                          f"raise it to at least {needed}")


def format_dataset(params: FormatParams, input: Path, images: Path, output: Path, metrics: Path | None = None,
                   plots: Path | None = None) -> dict[str, Any]:
    """The `format` stage: curated frames split by clip into train and eval, written in both
    layouts from one source, with token budgets counted as the published checkpoints count them.

    Args:
        params: the ``format`` section (prompts, split, answer style, box order and limit, image
            pixel limits, ``model_max_length`` in tokens, model family).
        input: filter's output folder (``records/<clip_id>/<camera>.json``).
        images: extract's output folder (the JPEG shards the images are copied from).
        output: the dataset folder (see the module docstring: ``split.json``, ``train/`` and
            ``eval/`` in both layouts); replaced whole.
        metrics: the summary as JSON, when given.
        plots: the folder of ``answer_tokens.png`` and ``.csv`` (answer tokens per frame), when
            given.

    Returns:
        The summary: ``samples`` and ``clips`` per split, ``boxes``, frames in, mirrored copies
        made (``mirror_train``; each then kept or left out like any frame), frames left out by
        reason (empty, over ``max_boxes``, over ``model_max_length``), and ``tokens``: answer,
        prompt and image tokens per frame or box (mean, p50, p95, max) with the Qwen vocabulary
        and the built-in models' task tokenizer, per answer style.

    Raises:
        ParamsError: the split cannot be made (``eval_clips``, ``eval_clip_ids``),
            ``model_max_length`` drops every sample of a split, or the prompts file is unreadable.
        RecordsError: ``input`` is missing or a records file is unreadable or malformed.
        ShardError: a frame's image is missing from extract's shards.
        DatasetError: a frame's image that a view (``crop_above_deg``, ``mirror_train``) must
            decode is not an image, or has no row left after the crop.
    """
    prompts = load_prompts(params.prompts)
    style = answer_style(params)
    frames = [record for _, _, records in iter_records(input) for record in records]
    train_clips, eval_clips = split_clips([r["clip_id"] for r in frames], params.eval_clips, params.eval_clip_ids,
                                          params.split_seed)
    split_of = {**dict.fromkeys(train_clips, "train"), **dict.fromkeys(eval_clips, "eval")}
    system = prompts.system if params.system_prompt else ""
    encoder = Encoder(published_tokenizer(params.model_family), None, params.min_pixels, params.max_pixels,
                      max_length=10**9)
    prompt_token_counts: set[int] = set()
    counts = Counts()
    per_split: dict[str, list[tuple[Sample, dict[str, Any], list]]] = {"train": [], "eval": []}
    # sample id -> (shard, member under ``images``, rows cropped off the top, flipped)
    image_sources: dict[str, tuple[str, str, int, bool]] = {}
    image_sizes: set[tuple[int, int]] = set()
    answer_token_counts: list[int] = []
    image_token_counts: dict[str, list[int]] = {f: [] for f in tokens.MERGE_FACTOR}
    all_answers: list[list[dict[str, Any]]] = []
    shortest_over: dict[str, tuple[int, str]] = {}  # split -> tokens of its shortest sample over the budget
    candidates = []  # (record, sample, exact boxes, the answer's camera) of every frame with boxes
    for record in frame_views(sorted(frames, key=sample_id), split_of, params):
        if record.get(MIRRORED):
            counts.mirrored_frames += 1
        else:
            counts.frames_in += 1
        objects = order_boxes(record["objects"], params.box_order)
        if params.max_boxes is not None and len(objects) > params.max_boxes:
            counts.boxes_over_max_boxes += len(objects) - params.max_boxes
            objects = objects[: params.max_boxes]
        if not objects and not params.keep_empty_frames:
            counts.empty_frames_skipped += 1
            continue
        exact = [{"bbox_3d": o["bbox_3d"], "label": o["label"]} for o in objects]
        camera = answer_camera(record, params.camera_input, params.virtual_focal)
        written = exact if camera is None else camera.boxes_to_answer(exact)
        # A box the parser would drop (an image_centre pixel past its bound) is no target: left out, counted.
        answerable = [box for box in written if check_box(box)[0] is not None]
        counts.boxes_unanswerable += len(written) - len(answerable)
        answer = format_answer(answerable, style)
        user = user_prompt(prompts.user, record, params.camera_input, style)
        image_sizes.add((record["width"], record["height"]))
        for family in tokens.MERGE_FACTOR:
            image_token_counts[family].append(tokens.image_tokens(record["width"], record["height"], family,
                                                                  params.min_pixels, params.max_pixels))
        sid = sample_id(record)
        sample = Sample(sid, output / split_of[record["clip_id"]] / "images" / f"{sid}.jpg", system, user, answer)
        candidates.append((record, sample, exact, camera))
    budgets = sample_tokens(encoder, [sample for _, sample, _, _ in candidates],
                            image_token_counts[params.model_family])
    for (record, sample, exact, camera), budget in zip(candidates, budgets, strict=True):
        split = split_of[record["clip_id"]]
        total = sum(budget.values())
        prompt_token_counts.add(budget["prompt"])
        if total > params.model_max_length:
            counts.samples_over_max_length += 1
            parts = " + ".join(f"{part} {count}" for part, count in budget.items())
            shortest_over[split] = min(shortest_over.get(split, (total, parts)), (total, parts))
            continue
        answer_token_counts.append(budget["answer"])
        all_answers.append(exact)
        boxes = [{"label": b["label"], "bbox_3d": rounded(b["bbox_3d"], style)} for b in exact]
        virtual = {VIRTUAL_CAMERA: camera.serialize()} if camera is not None else {}
        per_split[split].append((sample, {**annotation_record(record, boxes), **virtual, "tokens": budget},
                                 conversation(f"images/{sample.id}.jpg", system, sample.user, sample.answer)))
        image_sources[sample.id] = (record["image_shard"], record["image_member"], record.get(CROP_TOP, 0),
                                    bool(record.get(MIRRORED)))
    check_every_split_keeps_a_sample(params, per_split, shortest_over)
    shards = ShardReader(images)
    with atomic_folder(output) as staging:  # replaced whole: no stale samples, no half-written ones
        def write_image(sample: Sample) -> None:
            shard, member, top, mirrored = image_sources[sample.id]
            image = view_jpeg(shards.read(shard, member), f"{images / shard}:{member}", top, mirrored)
            atomic_write_bytes(staging / sample.image.relative_to(output), image)

        for split, entries in per_split.items():
            # Threads: OpenCV decodes and encodes the views without the GIL (1.8 ms a 640x360 frame
            # on one core); each file is its own, so the bytes do not depend on the order.
            with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
                list(pool.map(write_image, [sample for sample, _, _ in entries]))
            write_cosmos(staging / split, [(s.id, record, messages) for s, record, messages in entries])
            write_qwen(staging / split, [s for s, _, _ in entries])
        write_json(staging / "split.json", {"train": train_clips, "eval": eval_clips,
                                            "samples": {k: len(v) for k, v in per_split.items()},
                                            "model_family": params.model_family})
    configured = {"configured": style}
    tiny = task_tokenizer(prompts.system, prompts.user)

    style_sample = evenly_spaced(all_answers, STYLE_SAMPLE)

    def tiny_count(text: str) -> int:
        return len(tiny(text, add_special_tokens=False)["input_ids"])

    summary = {
        "samples": {k: len(v) for k, v in per_split.items()},
        "clips": {"train": len(train_clips), "eval": len(eval_clips)},
        "boxes": sum(len(a) for a in all_answers),
        "frames_in": counts.frames_in,
        "mirrored_frames": counts.mirrored_frames,
        "empty_frames_skipped": counts.empty_frames_skipped,
        "boxes_over_max_boxes": counts.boxes_over_max_boxes,
        "boxes_unanswerable": counts.boxes_unanswerable,
        "samples_over_max_length": counts.samples_over_max_length,
        "share_over_max_length": round(counts.samples_over_max_length
                                       / max(counts.frames_in + counts.mirrored_frames, 1), 4),
        "tokens": {
            "vocabulary": "qwen2 (qwen.tiktoken, 151643 ranks)",
            "chat_template": f"trl/chat_templates/{params.model_family}.jinja",
            "answer_per_frame": distribution(answer_token_counts),
            "answer_per_box": {name: round(tokens_per_box(style_sample, s), 2)
                               for name, s in {**configured, **STYLE_VARIANTS}.items()},
            "answer_per_box_measured_on": len(style_sample),
            "recipe_sample_box": {name: tokens.count_qwen(format_answer(RECIPE_SAMPLE_BOX, s))
                                  for name, s in {**configured, **STYLE_VARIANTS}.items()},
            "prompt_per_sample": max(prompt_token_counts, default=0),
            "image_per_frame": {family: distribution(values) for family, values in image_token_counts.items()},
            "model_max_length": params.model_max_length,
            "task_tokenizer": {
                "answer_per_frame": distribution([tiny_count(format_answer(a, style)) + 1 for a in all_answers]),
                "answer_per_box": {name: round(tokens_per_box(style_sample, s, tiny_count), 2)
                                   for name, s in {**configured, **STYLE_VARIANTS}.items()},
            },
        },
    }
    write_report(metrics, summary)
    if plots:
        plot_answer_tokens(answer_token_counts, plots)
    tokens.print_image_budget(image_sizes, params.model_family, params.min_pixels,
                              params.max_pixels)
    return summary


def frame_views(records: list[dict[str, Any]], split_of: dict[str, str],
                params: FormatParams) -> Iterator[dict[str, Any]]:
    """The views ``format`` writes of ``records``, in order (``dataset.views``): each frame
    without its sky where ``params.crop_above_deg`` is set (else as it is), a training frame
    followed by its mirrored copy where ``params.mirror_train``."""
    for record in records:
        view = record if params.crop_above_deg is None else cropped_record(record, params.crop_above_deg)
        yield view
        if params.mirror_train and split_of[record["clip_id"]] == "train":
            yield mirror_record(view)


@functools.cache
def published_tokenizer(model_family: str):
    """The published checkpoints' tokenizer and chat template of the architecture (built once)."""
    return build_tokenizer(model_family)


def sample_tokens(encoder: Encoder, samples: list[Sample], image_tokens: list[int]) -> list[dict[str, int]]:
    """Each sample's tokens as the model sees them, given its image's token count: ``prompt``
    (chat template, system and user text, vision markers, the newline after the answer),
    ``image`` and ``answer`` (the labelled tokens: the answer and its ``<|im_end|>``)."""
    budgets = []
    for text, count in zip(encoder.texts(samples, image_tokens), image_tokens, strict=True):
        answer = sum(label != IGNORE for label in text.labels)
        budgets.append({"prompt": len(text.input_ids) - count - answer, "image": count, "answer": answer})
    return budgets


def plot_answer_tokens(counts: list[int], folder: Path) -> None:
    """Histogram of answer tokens per frame: PNG for people, CSV for `dvc plots`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    edges = np.arange(0, max(counts, default=0) + 50, 25)
    hist, _ = np.histogram(counts, bins=edges)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["answer_tokens", "frames"])
    writer.writerows(zip(edges[:-1].tolist(), hist.tolist()))
    atomic_write_bytes(folder / "answer_tokens.csv", buffer.getvalue().encode())
    figure, axis = plt.subplots(figsize=(6, 3.5), dpi=100)
    axis.bar(edges[:-1], hist, width=24, align="edge", color="#4477aa")
    axis.set_xlabel("answer tokens per frame (Qwen vocabulary)")
    axis.set_ylabel("frames")
    axis.set_title("Answer length")
    figure.tight_layout()
    png = io.BytesIO()
    figure.savefig(png, format="png", metadata={"Software": None})
    plt.close(figure)
    atomic_write_bytes(folder / "answer_tokens.png", png.getvalue())
