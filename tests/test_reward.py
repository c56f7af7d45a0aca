"""The GRPO reward (evaluation/reward.py) on hand-made answers whose rewards are worked out here by
hand, its properties over generated frames, and its TRL and cosmos-rl entry points called with
the arguments those trainers pass (neither trainer is imported)."""

from __future__ import annotations

import json
import math
import pickle
from types import SimpleNamespace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from av_grounding.dataset.answers import AnswerStyle, format_answer
from av_grounding.evaluation.config import ConfigError
from av_grounding.evaluation.reward import RewardConfig, reward
from av_grounding.geometry.codecs import get_codec
from av_grounding.training.rewards import GroundingReward, component_means, cosmos_rl_reward, read_truth

# cosmos codec, zero angles: width 2 m along camera x, height 1.5 m along y, length 4 m along z.
CAR = [0.0, 1.0, 10.0, 4.0, 2.0, 1.5, 0.0, 0.0, 0.0]
TRUCK = [6.0, 1.0, 20.0, 8.0, 2.5, 3.0, 0.0, 0.0, 0.0]
TRUTH = [{"label": "car", "bbox_3d": CAR}, {"label": "truck", "bbox_3d": TRUCK}]
# Default weights: match 0.5 IoU + 0.4 centre + 0.1 label, format 0.1; penalties false positive
# 0.5, duplicate 0.5, malformed 0.5, truncated 0.5, over-long 0.25.
MAX = 1.1


def moved(values: list[float], dx: float = 0.0, dy: float = 0.0, dz: float = 0.0) -> list[float]:
    return [values[0] + dx, values[1] + dy, values[2] + dz, *values[3:]]


def answer(*boxes: tuple[str, list[float]]) -> str:
    return json.dumps([{"bbox_3d": values, "label": label} for label, values in boxes])


def total(text: str, truth=TRUTH, **kwargs) -> float:
    return reward(text, truth, **kwargs).total


def test_a_perfect_answer_scores_the_maximum_in_any_order():
    result = reward(answer(("car", CAR), ("truck", TRUCK)), TRUTH)
    assert (result.iou, result.centre, result.label, result.format) == pytest.approx((0.5, 0.4, 0.1, 0.1))
    assert result.total == pytest.approx(MAX) and RewardConfig().maximum == pytest.approx(MAX)
    assert total(answer(("truck", TRUCK), ("car", CAR))) == pytest.approx(MAX)
    counts = (result.truth, result.predicted, result.matched, result.false_positives, result.duplicates)
    assert counts == (2, 2, 2, 0, 0)


def test_a_box_shifted_sideways_by_half_its_width():
    # 1 m along x of a 2 m wide box: overlap 1 x 1.5 x 4 = 6 m3 of a union 12 + 12 - 6 = 18 -> IoU 1/3;
    # ground-plane distance 1 m of 2 -> centre term 1/2. Averaged over the two truth boxes.
    result = reward(answer(("car", moved(CAR, dx=1.0)), ("truck", TRUCK)), TRUTH)
    assert result.iou == pytest.approx(0.5 * (1 / 3 + 1) / 2)
    assert result.centre == pytest.approx(0.4 * (0.5 + 1) / 2)
    assert result.total == pytest.approx(0.5 * (1 / 3 + 1) / 2 + 0.4 * 0.75 + 0.1 + 0.1)


def test_a_box_shifted_along_its_length_and_one_shifted_up():
    # 1 m along z of 4 m: overlap 3 x 2 x 1.5 = 9 of 24 - 9 = 15 -> IoU 0.6, distance 1 m.
    assert total(answer(("car", moved(CAR, dz=1.0))), TRUTH[:1]) == pytest.approx(0.5 * 0.6 + 0.4 * 0.5 + 0.2)
    # 0.5 m up (camera y) of 1.5 m: IoU 8 / 16 = 0.5; the ground-plane distance is 0: centre term full.
    assert total(answer(("car", moved(CAR, dy=-0.5))), TRUTH[:1]) == pytest.approx(0.5 * 0.5 + 0.4 + 0.2)


def test_a_box_beyond_the_match_distance_is_a_false_positive():
    result = reward(answer(("car", moved(CAR, dx=3.0))), TRUTH[:1])
    assert (result.matched, result.false_positives, result.false_positive) == (0, 1, 0.5)
    assert result.total == pytest.approx(0.1 - 0.5)


def test_a_wrong_label_loses_only_the_label_term():
    assert total(answer(("truck", CAR)), TRUTH[:1]) == pytest.approx(0.5 + 0.4 + 0.1)


def test_duplicates_are_penalised_and_never_matched():
    # An exact copy: 1 duplicate of 2 boxes -> 0.5 * 1/2.
    assert total(answer(("car", CAR), ("car", CAR)), TRUTH[:1]) == pytest.approx(MAX - 0.25)
    # Two copies: 0.5 * 2/3; a copy with another label is a duplicate too (the same place).
    assert total(answer(("car", CAR), ("car", CAR), ("truck", CAR)), TRUTH[:1]) == pytest.approx(MAX - 1 / 3)
    # 0.2 m aside: IoU 1.8 / 2.2 > 0.5. The earlier box is kept and matched (IoU 9/11, 0.2 m), the exact one is
    # the duplicate: order of appearance decides.
    result = reward(answer(("car", moved(CAR, dx=0.2)), ("car", CAR)), TRUTH[:1])
    assert result.duplicates == 1 and result.matched == 1
    assert result.total == pytest.approx(0.5 * 9 / 11 + 0.4 * 0.9 + 0.1 + 0.1 - 0.25)
    # Repeating a box does not buy the second truth box: recall stays at one of two.
    assert total(answer(("car", CAR), ("car", CAR))) == pytest.approx(0.5 + 0.1 - 0.25)


def test_hallucinated_boxes_on_an_empty_frame():
    # Nothing to miss: match terms full (1.0) + format; every kept box unmatched -> 0.5 * 2/2.
    result = reward(answer(("car", CAR), ("truck", TRUCK)), [])
    assert (result.iou, result.centre, result.label, result.false_positive) == pytest.approx((0.5, 0.4, 0.1, 0.5))
    assert result.total == pytest.approx(MAX - 0.5)
    assert total(answer(("car", CAR), ("truck", TRUCK)), TRUTH[:1]) == pytest.approx(MAX - 0.5 * 1 / 2)


def test_empty_answers():
    assert total("[]", []) == pytest.approx(MAX)  # an empty frame answered empty: perfect
    assert total("[]") == pytest.approx(0.1)  # all missed, format kept
    assert total("") == pytest.approx(-0.5)  # no answer at all: malformed
    assert total("", []) == pytest.approx(1.0 - 0.5)


def test_malformed_answers():
    repaired = '[{"bbox_3d": [0, 1, 10, 4, 2, 1.5, 0, 0, 0], "label": "car",}]'  # trailing comma
    result = reward(repaired, TRUTH[:1])
    assert (result.status, result.format, result.malformed) == ("repaired", 0.0, 0.5)
    assert result.total == pytest.approx(1.0 - 0.5)
    assert total("I see one car.", TRUTH[:1]) == pytest.approx(-0.5)
    assert total("<think>a car ahead", TRUTH[:1]) == pytest.approx(-0.5)  # cut off while reasoning
    # Valid JSON with one invalid item: not malformed, but no format term either.
    assert total(answer(("car", CAR))[:-1] + ', {"bbox_3d": [1, 2], "label": "car"}]', TRUTH[:1]) == pytest.approx(1.0)
    # Reasoning is left out, as evaluate does.
    assert total("<think>[1, 2]</think>" + answer(("car", CAR)), TRUTH[:1]) == pytest.approx(MAX)


def test_truncated_answers():
    assert total(answer(("car", CAR), ("truck", TRUCK)), finished=False) == pytest.approx(MAX - 0.5)
    # Cut inside the second box: the first is kept (half the truth), the answer needed repair.
    cut = answer(("car", CAR), ("truck", TRUCK))[:100]
    result = reward(cut, TRUTH, finished=False)
    assert (result.predicted, result.status) == (1, "repaired")
    assert result.total == pytest.approx((0.5 + 0.4 + 0.1) / 2 - 0.5 - 0.5)


def test_over_long_answers():
    text = answer(("car", CAR))
    assert total(text, TRUTH[:1], n_tokens=1024) == pytest.approx(MAX)
    assert total(text, TRUTH[:1], n_tokens=1025) == pytest.approx(MAX - 0.25)
    assert total(text, TRUTH[:1], config=RewardConfig(max_answer_chars=len(text) - 1)) == pytest.approx(MAX - 0.25)
    assert total(text, TRUTH[:1], config=RewardConfig(max_answer_chars=None), n_tokens=10**6) == pytest.approx(0.85)


def test_the_codec_is_the_truths():
    codec = get_codec("qwen3vl")
    values = [float(v) for v in codec.encode(get_codec("cosmos").decode(CAR))]
    truth = [{"label": "car", "bbox_3d": values}]
    assert total(answer(("car", values)), truth, codec="qwen3vl") == pytest.approx(MAX)
    assert total(answer(("car", values)), truth, config=RewardConfig(codec="qwen3vl")) == pytest.approx(MAX)


def test_bad_truth_and_bad_configs_raise():
    with pytest.raises(ValueError, match=r"truth box 1 is invalid \(size_not_positive\)"):
        reward("[]", [TRUTH[0], {"label": "car", "bbox_3d": [0, 0, 5, -1, 2, 1, 0, 0, 0]}])
    with pytest.raises(ValueError, match="unknown box codec"):
        reward("[]", TRUTH, codec="kitti")
    for bad in [{"iou_weight": 0.6}, {"duplicate_weight": -0.1}, {"malformed_weight": math.nan},
                {"duplicate_iou": 1.0}, {"match_distance_m": 0.0}, {"max_answer_tokens": 0}, {"codec": "kitti"}]:
        with pytest.raises(ConfigError, match=next(iter(bad)).split("_weight")[0]):
            RewardConfig(**bad)
    with pytest.raises(ConfigError, match="unknown key"):
        RewardConfig.from_mapping({"iou": 0.5})
    assert RewardConfig.from_mapping({"iou_weight": 0.6, "centre_weight": 0.3}).maximum == pytest.approx(MAX)
    assert RewardConfig().minimum == pytest.approx(-2.25)


def test_the_breakdown_serialises_to_json():
    result = reward(answer(("car", CAR)), TRUTH)
    data = json.loads(json.dumps(result.serialize()))
    assert data["total"] == result.total and data["status"] == "ok" and data["matched"] == 1
    assert result.total == pytest.approx(sum(data[k] for k in ("iou", "centre", "label", "format"))
                                         - sum(data[k] for k in ("false_positive", "duplicate", "malformed",
                                                                 "truncated", "overlong")))


# Properties over generated frames: boxes 12 m apart along x never overlap (the largest is 10 m long).
LABELS = ("car", "truck", "bus")


@st.composite
def frames(draw) -> list[dict]:
    count = draw(st.integers(0, 4))
    boxes = []
    for i in range(count):
        centre = [12.0 * i - 20 + draw(st.floats(-0.5, 0.5)), draw(st.floats(-1, 2)), draw(st.floats(3, 60))]
        size = [draw(st.floats(1, 10)), draw(st.floats(1, 3)), draw(st.floats(1, 4))]
        boxes.append({"label": draw(st.sampled_from(LABELS)),
                      "bbox_3d": [*centre, *size, 0.0, draw(st.floats(-math.pi, math.pi)), 0.0]})
    return boxes


def perturbed(draw, truth: list[dict]) -> list[dict]:
    """Drop, move, relabel or add boxes."""
    out = []
    for box in truth:
        if draw(st.booleans()):
            continue
        values = moved(box["bbox_3d"], dx=draw(st.floats(-3, 3)), dz=draw(st.floats(-3, 3)))
        out.append({"label": draw(st.sampled_from(LABELS)), "bbox_3d": values})
    out += draw(frames())
    return out


TEXT = AnswerStyle(decimals=None)  # full precision: a perfect answer is the truth to the last bit


@settings(max_examples=40, deadline=None)
@given(truth=frames(), data=st.data())
def test_no_answer_beats_the_perfect_one(truth, data):
    config = RewardConfig()
    perfect = total(format_answer(truth, TEXT), truth)
    assert perfect == pytest.approx(config.maximum, abs=1e-9)
    other = data.draw(st.text(max_size=80)) if data.draw(st.booleans()) else format_answer(perturbed(data.draw,
                                                                                                   truth), TEXT)
    result = reward(other, truth, finished=data.draw(st.booleans()), n_tokens=data.draw(st.integers(0, 2000)))
    assert config.minimum - 1e-9 <= result.total <= perfect + 1e-9


@settings(max_examples=40, deadline=None)
@given(truth=frames(), data=st.data())
def test_adding_a_duplicate_never_raises_the_reward(truth, data):
    boxes = perturbed(data.draw, truth)
    if not boxes:
        boxes = [{"label": "car", "bbox_3d": CAR}]
    copy = dict(boxes[data.draw(st.integers(0, len(boxes) - 1))])
    before = reward(format_answer(boxes, TEXT), truth)
    after = reward(format_answer(boxes + [copy], TEXT), truth)
    assert after.duplicates == before.duplicates + 1
    assert after.total <= before.total + 1e-12


# The trainers' entry points, called with what the trainers pass.
EOS = 7


def conversation(text: str) -> list[dict]:
    return [{"role": "assistant", "content": text}]


def test_trl_reward_function_takes_grpo_trainers_arguments():
    metrics: dict[str, float] = {}
    function = GroundingReward(eos_token_ids=[EOS, 8])
    perfect = answer(("car", CAR), ("truck", TRUCK))
    rewards = function(prompts=[[{"role": "user", "content": "boxes?"}]] * 3,
                       completions=[conversation(perfect), conversation(perfect), perfect],
                       completion_ids=[[1, 2, EOS], [1, 2, 3], [1, 8]],
                       annotations=[TRUTH, json.dumps(TRUTH), json.dumps({"annotations": [], "box_codec": "cosmos"})],
                       box_codec=["cosmos", None, None], image=[None] * 3, trainer_state=None,
                       log_extra=lambda column, values: None, log_metric=metrics.__setitem__)
    # The second was cut off (no end-of-sequence id); the third hallucinates on an empty frame.
    assert rewards == pytest.approx([MAX, MAX - 0.5, MAX - 0.5])
    assert metrics["grounding/total"] == pytest.approx((3 * MAX - 1.0) / 3)
    assert metrics["grounding/truncated"] == pytest.approx(0.5 / 3)
    assert [b.total for b in function.last] == rewards
    assert component_means(function.last) == metrics
    assert pickle.loads(pickle.dumps(function)).eos_token_ids == {EOS, 8}  # TRL's picklable reward forms


def test_trl_reward_function_counts_tokens_without_the_end_token():
    function = GroundingReward(RewardConfig(max_answer_tokens=3), eos_token_ids=[EOS])
    text = answer(("car", CAR))
    assert function([""] * 2, [text, text], [[1, 2, 3, EOS], [1, 2, 3, 4, EOS]],
                    annotations=[TRUTH[:1]] * 2) == pytest.approx([MAX, MAX - 0.25])
    assert function([""], [text], None, annotations=[TRUTH[:1]]) == pytest.approx([MAX])  # nothing to judge
    with pytest.raises(ValueError, match="'annotations' column"):
        function([""], [text], None)
    with pytest.raises(ValueError, match="eos_token_ids"):
        GroundingReward(eos_token_ids=[])


class CharacterTokenizer:
    """One token per character: enough to count an answer's length as cosmos-rl's tokenizer would."""

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return [ord(c) for c in text]


def cosmos_config(max_response_length: int, **reward_fields) -> SimpleNamespace:
    return SimpleNamespace(custom={"grounding_reward": reward_fields},
                           rollout=SimpleNamespace(max_response_length=max_response_length))


def test_cosmos_rl_reward_function_takes_its_arguments():
    record = json.dumps({"frame_id": 0, "camera_params": {"fx": 1.0}, "annotations": TRUTH, "box_codec": "cosmos"})
    perfect = answer(("car", CAR), ("truck", TRUCK))
    # As Reward.compute_per_reward_func calls it: (completion, reference, prompt=, data_packer=, config=, tokenizer=).
    value, metrics = cosmos_rl_reward(perfect, record, prompt="boxes?", data_packer=None,
                                      config=cosmos_config(4096), tokenizer=CharacterTokenizer())
    assert value == pytest.approx(MAX) and metrics["grounding/total"] == value
    # An answer as long as max_response_length was cut off; the [custom.grounding_reward] table sets the weights.
    value, metrics = cosmos_rl_reward(perfect, record, config=cosmos_config(len(perfect), truncated_weight=0.2),
                                      tokenizer=CharacterTokenizer())
    assert value == pytest.approx(MAX - 0.2) and metrics["grounding/truncated"] == pytest.approx(0.2)
    # group_reward_calculation: the group's completions at once, a box list as reference, no tokenizer.
    values, per_item = cosmos_rl_reward([perfect, "[]"], json.dumps(TRUTH), prompt=None, config=None)
    assert values == pytest.approx([MAX, 0.1]) and len(per_item) == 2


def test_cosmos_rl_reward_function_refuses_bad_references_and_configs():
    with pytest.raises(ValueError, match="reference"):
        cosmos_rl_reward("[]", None)
    with pytest.raises(ValueError, match="not JSON"):
        cosmos_rl_reward("[]", "car at 10 m")
    with pytest.raises(ConfigError, match="unknown key"):
        cosmos_rl_reward("[]", "[]", config=cosmos_config(100, iou=1.0))
    assert read_truth({"annotations": [], "box_codec": "qwen3vl"}) == ([], "qwen3vl", None)
