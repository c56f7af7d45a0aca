"""The format stage: answers, split, both layouts and their readers, token budgets."""

from __future__ import annotations

import json
import re
import shutil

import cv2
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from av_grounding.dataset.answers import AnswerStyle, format_answer, format_number, rounded
from av_grounding.dataset.formats import (
    DatasetError,
    Sample,
    conversation,
    read_cosmos,
    read_qwen,
    write_cosmos,
    write_qwen,
)
from av_grounding.dataset.split import split_clips
from av_grounding.dataset.tokens import count_qwen, image_tokens
from av_grounding.geometry.cameras import camera_from_record
from av_grounding.params import FormatParams
from av_grounding.pipeline.format import RECIPE_SAMPLE_BOX, format_dataset
from av_grounding.shards import ShardError, ShardReader, member_table

REPO_PROMPTS = "prompts/av_grounding.yaml"


def test_number_format():
    assert format_number(18.004, 2, True) == "18"
    assert format_number(5.301, 2, True) == "5.3"
    assert format_number(5.301, 2, False) == "5.30"
    assert format_number(-0.001, 2, True) == "0" and format_number(-0.001, 2, False) == "0.00"
    assert format_number(-8.9624, 2, True) == "-8.96"
    assert format_number(0.1 + 0.2, None, True) == repr(0.1 + 0.2)


@given(st.lists(st.floats(-200, 200, allow_nan=False), min_size=9, max_size=9), st.integers(0, 4),
       st.booleans(), st.booleans())
def test_answer_parses_back_to_the_rounded_numbers_within_the_decimals(values, decimals, trim, compact):
    style = AnswerStyle(decimals, None, trim, compact)
    answer = format_answer([{"bbox_3d": values, "label": "car"}], style)
    parsed = json.loads(answer)[0]["bbox_3d"]
    assert parsed == pytest.approx(rounded(values, style), abs=1e-12)
    assert np.abs(np.array(parsed) - values).max() <= 0.5 * 10.0**-decimals + 1e-9


def test_size_decimals_apply_to_sizes_only():
    style = AnswerStyle(2, 1, True, True)
    answer = format_answer([{"bbox_3d": [1.234] * 9, "label": "bus"}], style)
    assert answer == '[{"bbox_3d":[1.23,1.23,1.23,1.2,1.2,1.2,1.23,1.23,1.23],"label":"bus"}]'


def test_recipe_sample_box_token_counts_with_the_real_vocabulary():
    # docs/conventions.md#rounding-of-targets: 196 tokens at full precision with the recipe's spacing.
    assert count_qwen(format_answer(RECIPE_SAMPLE_BOX, AnswerStyle(None, None, False, False))) == 196
    assert count_qwen(format_answer(RECIPE_SAMPLE_BOX, AnswerStyle())) <= 55  # the defaults


def test_image_tokens():
    assert image_tokens(640, 360, "qwen2_5_vl", 3136, 40960) == 45  # ~45 at the recipe's 40960 pixels
    full = image_tokens(1920, 1080, "qwen2_5_vl", 3136, 1920 * 1080)
    assert 0.8 * 1920 * 1080 <= full * 28**2 <= 1920 * 1080  # scaled to fit, aspect ratio kept
    assert image_tokens(28, 28, "qwen2_5_vl", 3136, 40960) == 4  # small images are scaled up to min_pixels
    assert image_tokens(1920, 1080, "qwen3_vl", 3136, 40960) <= 40960 // 32**2


def test_split_by_clip():
    ids = [f"c{i}_1_2" for i in range(10)]
    train, held = split_clips(ids * 3, 3, seed=1)
    assert len(held) == 3 and not set(train) & set(held) and sorted(train + held) == sorted(ids)
    assert split_clips(ids, 3, seed=1) == (train, held)
    assert split_clips(ids, 3, ("c4_1_2",))[1] == ["c4_1_2"]
    with pytest.raises(ValueError, match="not among"):
        split_clips(ids, 0, ("nope_1_2",))
    with pytest.raises(ValueError, match="at least one"):
        split_clips(ids, 10)


def make_samples(folder, count=3):
    samples = []
    for i in range(count):
        sid = f"s{i}"
        (folder / "images").mkdir(parents=True, exist_ok=True)
        (folder / "images" / f"{sid}.jpg").write_bytes(b"jpeg")
        samples.append(Sample(sid, folder / "images" / f"{sid}.jpg", "system text", "user text", f'[{{"n":{i}}}]'))
    write_cosmos(folder, [(s.id, {"frame_id": i}, conversation(f"images/{s.id}.jpg", s.system, s.user, s.answer))
                          for i, s in enumerate(samples)])
    write_qwen(folder, samples)
    return samples


def test_both_layouts_round_trip(tmp_path):
    samples = make_samples(tmp_path)
    resolved = [Sample(s.id, s.image.resolve(), s.system, s.user, s.answer) for s in samples]
    assert read_cosmos(tmp_path) == resolved
    assert read_qwen(tmp_path) == resolved


def test_readers_refuse_bad_entries(tmp_path):
    make_samples(tmp_path)
    meta = json.loads((tmp_path / "meta.json").read_text())
    (tmp_path.parent / "outside.jpg").write_bytes(b"x")
    meta[1]["media"] = "../outside.jpg"
    (tmp_path / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(DatasetError, match="escapes the dataset folder"):
        read_cosmos(tmp_path)
    meta[1]["media"] = "images/absent.jpg"
    (tmp_path / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(DatasetError, match=r"entry 1: 'images/absent\.jpg' does not exist"):
        read_cosmos(tmp_path)
    (tmp_path / "text" / "s0.json").write_text("{not json")
    meta[1]["media"] = "images/s1.jpg"
    (tmp_path / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(DatasetError, match=r"s0\.json: malformed JSON"):
        read_cosmos(tmp_path)
    annotations = json.loads((tmp_path / "annotations.json").read_text())
    annotations[0]["image"] = "/etc/passwd"
    (tmp_path / "annotations.json").write_text(json.dumps(annotations))
    with pytest.raises(DatasetError, match="escapes"):
        read_qwen(tmp_path)


@pytest.fixture(scope="module")
def filtered(curated, tmp_path_factory):
    """A work folder with the curated data (extracted/, filtered/) and room for datasets."""
    work = tmp_path_factory.mktemp("format")
    for name in ("extracted", "filtered"):
        (work / name).symlink_to(curated[0] / name)
    return work


def test_format_stage_writes_split_datasets(filtered):
    out = filtered / "dataset"
    summary = format_dataset(FormatParams(prompts=REPO_PROMPTS, eval_clips=1), filtered / "filtered",
                             filtered / "extracted", out, filtered / "dataset.json", filtered / "plots")
    split = json.loads((out / "split.json").read_text())
    assert len(split["eval"]) == 1 and not set(split["train"]) & set(split["eval"])
    for name in ("train", "eval"):
        cosmos, qwen = read_cosmos(out / name), read_qwen(out / name)
        assert [s.id for s in cosmos] == [s.id for s in qwen] and len(cosmos) == summary["samples"][name]
        assert all(s.id.startswith(tuple(split[name])) for s in cosmos)
        assert {s.answer for s in cosmos} == {s.answer for s in qwen}
    text = json.loads(next((out / "train" / "text").glob("*.json")).read_text())
    image = f"images/{text['clip_id']}_{text['camera']}_{text['frame_id']:06d}.jpg"
    assert text["conversations"][0][1]["content"][0] == {"type": "image", "image": image}
    answer = json.loads(text["conversations"][0][2]["content"][0]["text"])
    assert [a["bbox_3d"] for a in answer] == [a["bbox_3d"] for a in text["annotations"]]
    per_box = summary["tokens"]["answer_per_box"]
    assert per_box["configured"] < per_box["full_precision_spaced"]
    assert (filtered / "plots" / "answer_tokens.png").exists()


def test_format_copies_the_exact_jpeg_of_each_frame_and_names_a_missing_shard(filtered, tmp_path):
    params = FormatParams(prompts=REPO_PROMPTS, eval_clips=1)
    format_dataset(params, filtered / "filtered", filtered / "extracted", tmp_path / "dataset")
    shards = ShardReader(filtered / "extracted")
    for name in ("train", "eval"):
        for sample in read_cosmos(tmp_path / "dataset" / name):
            text = json.loads((tmp_path / "dataset" / name / "text" / f"{sample.id}.json").read_text())
            stored = shards.read(f"images/{text['clip_id']}/{text['camera']}.tar", f"{text['frame_id']:06d}.jpg")
            assert sample.image.read_bytes() == stored
    with pytest.raises(ShardError, match=r"no-images/images/.+\.tar: missing shard"):
        format_dataset(params, filtered / "filtered", tmp_path / "no-images", tmp_path / "out")


def test_more_decimals_cost_more_tokens(filtered):
    two = format_dataset(FormatParams(prompts=REPO_PROMPTS, eval_clips=1), filtered / "filtered",
                         filtered / "extracted", filtered / "d2")
    three = format_dataset(FormatParams(prompts=REPO_PROMPTS, eval_clips=1, decimals=3), filtered / "filtered",
                           filtered / "extracted", filtered / "d3")
    assert three["tokens"]["answer_per_box"]["configured"] > two["tokens"]["answer_per_box"]["configured"]


def test_over_long_samples_are_dropped_and_counted(filtered):
    # 237 keeps samples in both splits (230 dropped every eval sample: now an error, see below)
    summary = format_dataset(FormatParams(prompts=REPO_PROMPTS, eval_clips=1, model_max_length=237),
                             filtered / "filtered", filtered / "extracted", filtered / "short")
    assert summary["samples_over_max_length"] > 0
    assert sum(summary["samples"].values()) + summary["samples_over_max_length"] == summary["frames_in"]
    for name in ("train", "eval"):
        for sample in read_cosmos(filtered / "short" / name):
            assert count_qwen(sample.answer + "<|im_end|>") + 139 + 45 <= 237


def test_answer_styles_are_compared_on_an_evenly_spaced_sample():
    from av_grounding.pipeline.format import evenly_spaced

    assert evenly_spaced(list(range(10)), 20) == list(range(10))
    assert evenly_spaced(list(range(10)), 5) == [0, 2, 4, 6, 8]
    assert evenly_spaced(list(range(10)), 4) == [0, 3, 6, 9]
    assert len(evenly_spaced(list(range(20000)), 2000)) == 2000


def test_a_budget_that_drops_every_sample_fails_naming_the_shortest(filtered, tmp_path):
    """``model_max_length`` 10 dropped every sample with exit 0 (and train then blamed its own
    budget): format fails, naming the key and the shortest sample's tokens, and writes nothing."""
    from av_grounding.params import ParamsError

    split = r"(train|eval) \(the shortest: (\d+) tokens, prompt \d+ \+ image \d+ \+ answer \d+\)"
    message = rf"^format.model_max_length = 10 drops every sample of {split}( and {split})?; raise it to at least \d+$"
    with pytest.raises(ParamsError, match=message) as raised:
        format_dataset(FormatParams(prompts=REPO_PROMPTS, eval_clips=1, model_max_length=10), filtered / "filtered",
                       filtered / "extracted", tmp_path / "dataset", tmp_path / "dataset.json")
    assert not (tmp_path / "dataset").exists() and not (tmp_path / "dataset.json").exists()
    needed = int(re.search(r"at least (\d+)$", str(raised.value))[1])
    assert needed == max(int(n) for n in re.findall(r"the shortest: (\d+) tokens", str(raised.value)))
    fits = format_dataset(FormatParams(prompts=REPO_PROMPTS, eval_clips=1, model_max_length=needed),
                          filtered / "filtered", filtered / "extracted", tmp_path / "fits")
    assert fits["samples"]["train"] >= 1 and fits["samples"]["eval"] >= 1


def test_format_adds_one_mirrored_sample_per_training_frame(filtered, tmp_path):
    plain = format_dataset(FormatParams(prompts=REPO_PROMPTS, eval_clips=1), filtered / "filtered",
                           filtered / "extracted", tmp_path / "plain")
    params = FormatParams(prompts=REPO_PROMPTS, eval_clips=1, mirror_train=True)
    out = tmp_path / "mirrored"
    summary = format_dataset(params, filtered / "filtered", filtered / "extracted", out)
    assert summary["samples"] == {"train": 2 * plain["samples"]["train"], "eval": plain["samples"]["eval"]}
    assert summary["mirrored_frames"] == plain["samples"]["train"] and plain["mirrored_frames"] == 0
    assert summary["frames_in"] == plain["frames_in"]
    assert not any(s.id.endswith("_mirrored") for s in read_cosmos(out / "eval"))
    samples = {s.id: s for s in read_cosmos(out / "train")}
    assert [s.id for s in read_qwen(out / "train")] == list(samples)
    shards = ShardReader(filtered / "extracted")
    mirrored_ids = [sid for sid in samples if sid.endswith("_mirrored")]
    assert len(mirrored_ids) == plain["samples"]["train"]
    for sid in mirrored_ids:
        original, mirrored = samples[sid.removesuffix("_mirrored")], samples[sid]
        text, flipped_text = (json.loads((out / "train" / "text" / f"{s.id}.json").read_text())
                              for s in (original, mirrored))
        assert flipped_text["mirrored"] is True and "mirrored" not in text
        lens = camera_from_record(text["camera_model"], text["intrinsics"])
        np.testing.assert_allclose(flipped_text["intrinsics"], lens.mirrored().to_array())
        stored = shards.read(f"images/{text['clip_id']}/{text['camera']}.tar", f"{text['frame_id']:06d}.jpg")
        assert original.image.read_bytes() == stored
        pixels = [cv2.imread(str(s.image)).astype(int) for s in (original, mirrored)]
        assert np.abs(pixels[1] - pixels[0][:, ::-1]).mean() < 3.0
        boxes = np.array([a["bbox_3d"] for a in text["annotations"]]).reshape(-1, 9)
        flipped = np.array([a["bbox_3d"] for a in flipped_text["annotations"]]).reshape(-1, 9)
        assert [a["label"] for a in text["annotations"]] == [a["label"] for a in flipped_text["annotations"]]
        np.testing.assert_allclose(flipped[:, :6], boxes[:, :6] * [-1, 1, 1, 1, 1, 1], atol=0.0101)
        assert json.loads(mirrored.answer) == [{"bbox_3d": a["bbox_3d"], "label": a["label"]}
                                               for a in flipped_text["annotations"]]
    budget = int(plain["tokens"]["answer_per_frame"]["p50"]) + 200
    dropping = format_dataset(FormatParams(prompts=REPO_PROMPTS, eval_clips=1, mirror_train=True,
                                           keep_empty_frames=False, model_max_length=budget),
                              filtered / "filtered", filtered / "extracted", tmp_path / "dropping")
    left_out = dropping["empty_frames_skipped"] + dropping["samples_over_max_length"]
    assert dropping["empty_frames_skipped"] and dropping["samples_over_max_length"]  # copies left out like frames
    assert dropping["frames_in"] + dropping["mirrored_frames"] == sum(dropping["samples"].values()) + left_out
    assert dropping["share_over_max_length"] == round(dropping["samples_over_max_length"] / (
        dropping["frames_in"] + dropping["mirrored_frames"]), 4)
    again = format_dataset(params, filtered / "filtered", filtered / "extracted", tmp_path / "again")
    assert again == summary
    for path in sorted((out / "train").rglob("*")):
        if path.is_file():
            assert path.read_bytes() == (tmp_path / "again" / path.relative_to(out)).read_bytes(), path


def test_a_frame_that_does_not_decode_stops_mirroring_naming_its_shard(filtered, tmp_path):
    images = tmp_path / "extracted"
    shutil.copytree(filtered / "extracted", images, symlinks=False)
    for shard in (images / "images").rglob("*.tar"):
        with open(shard, "r+b") as handle:
            for offset, size in member_table(shard).values():
                handle.seek(offset)
                handle.write(bytes(size))  # zeros: no JPEG
    params = FormatParams(prompts=REPO_PROMPTS, eval_clips=1, mirror_train=True)
    with pytest.raises(DatasetError, match=r"extracted/images/.+\.tar:\d{6}\.jpg: not a JPEG image"):
        format_dataset(params, filtered / "filtered", images, tmp_path / "dataset")
    assert not (tmp_path / "dataset").exists()


def test_the_sky_crop_cuts_train_and_eval_frames_and_their_cameras_alike(filtered, tmp_path):
    params = FormatParams(prompts=REPO_PROMPTS, eval_clips=1, crop_above_deg=20.0, mirror_train=True)
    out = tmp_path / "cropped"
    summary = format_dataset(params, filtered / "filtered", filtered / "extracted", out)
    shards = ShardReader(filtered / "extracted")
    tops = set()
    for name in ("train", "eval"):
        for sample in read_cosmos(out / name):
            text = json.loads((out / name / "text" / f"{sample.id}.json").read_text())
            stored = cv2.imdecode(np.frombuffer(shards.read(f"images/{text['clip_id']}/{text['camera']}.tar",
                                                            f"{text['frame_id']:06d}.jpg"), np.uint8), cv2.IMREAD_COLOR)
            top = text["crop_top"]
            tops.add((text["camera"], top))
            lens = camera_from_record(text["camera_model"], text["intrinsics"])
            size = (stored.shape[1], stored.shape[0] - top)
            assert (lens.width, lens.height) == (text["width"], text["height"]) == size
            expected = stored[top:, ::-1] if text.get("mirrored") else stored[top:]
            view = cv2.imread(str(sample.image)).astype(int)
            assert view.shape == expected.shape and np.abs(view - expected).mean() < 3.0
    cameras = [camera for camera, _ in tops]
    assert all(top > 0 for _, top in tops) and len(cameras) == len(set(cameras))  # one crop per camera
    assert summary["samples"]["eval"] > 0 and summary["mirrored_frames"] == summary["samples"]["train"] // 2
