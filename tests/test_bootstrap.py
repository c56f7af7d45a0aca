"""The clip bootstrap (``evaluation.bootstrap``): a replicate's metrics equal the evaluator's on
the resampled frames; a two-clip case computed by hand; deterministic; in the stage's metrics."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from av_grounding.evaluation.bootstrap import HEADLINE, clip_bootstrap, metric_functions
from av_grounding.evaluation.config import EvaluationConfig
from av_grounding.evaluation.evaluate import evaluate_frames
from av_grounding.evaluation.frames import load_frames
from av_grounding.params import EvaluateParams, ParamsError
from av_grounding.pipeline.evaluate import evaluate


@pytest.fixture(scope="module")
def noisy(dataset, tmp_path_factory):
    """The evaluation split's truth, answered with shifted centres (boxes 35 m and more away 6 m
    too deep, so that AP3D's far bin has misses), a dropped box in every third frame and a false
    positive in every fourth, scores by order of appearance."""
    rng = np.random.default_rng(0)
    predictions = tmp_path_factory.mktemp("bootstrap") / "pred"
    predictions.mkdir()
    for index, path in enumerate(sorted((dataset / "eval" / "text").glob("*.json"))):
        boxes = []
        for k, box in enumerate(json.loads(path.read_text())["annotations"]):
            if index % 3 == 0 and k == 0:
                continue
            values = list(box["bbox_3d"])
            values[0] += float(rng.normal(0, 0.6))
            values[2] += float(rng.normal(0, 1.5)) + (6.0 if values[2] >= 35.0 else 0.0)
            boxes.append({"label": box["label"], "bbox_3d": values})
        if index % 4 == 0:
            boxes.append({"label": "car", "bbox_3d": [3.0, 1.0, 20.0, 4.5, 1.9, 1.5, 0.0, 0.3, 0.0]})
        (predictions / path.name).write_text(json.dumps({"annotations": boxes}))
    # The test split holds one clip: its five cameras stand in for five clips here.
    return [dataclasses.replace(f, clip=f.id.split("_camera_")[1].rsplit("_", 1)[0])
            for f in load_frames(dataset / "eval" / "text", predictions, "cosmos")]


def test_a_replicates_metrics_are_the_evaluators_on_the_resampled_frames(noisy):
    config = EvaluationConfig()
    metrics = metric_functions(noisy, config)
    rng = np.random.default_rng(1)
    for chosen in (np.arange(len(noisy)), np.sort(rng.integers(0, len(noisy), len(noisy))),
                   rng.integers(0, len(noisy), len(noisy) // 2)):
        result, _ = evaluate_frames([noisy[i] for i in chosen], config)
        expected = {"ap2d50": result.ap2d.ap50, "ap3d": result.ap3d.ap, "ap3d_far": result.ap3d.by_depth["far"],
                    "center_distance_map": result.center_distance.map, "recall": result.matching.recall,
                    "precision": result.matching.precision}
        assert all(value is not None for value in expected.values())
        for name in HEADLINE:
            assert metrics[name](chosen) == pytest.approx(expected[name], abs=1e-12), name


def test_two_clips_one_found_one_missed_by_hand(noisy):
    """Clip A's truths all found, clip B's none, equal truth counts: a replicate's recall is the
    share of its two draws that are A: 0, 1/2, 1 with chances 1/4, 1/2, 1/4, so the 95 %
    interval is [0, 1] around 1/2; the all-frames value is 1/2. Both predict as many boxes as
    there are truths, so precision behaves alike."""
    first = noisy[0]
    found = dataclasses.replace(first, clip="A", pred=first.gt)
    missed = dataclasses.replace(first, clip="B", pred=dataclasses.replace(first.gt, centres=first.gt.centres + 50.0))
    result = clip_bootstrap([found, missed], EvaluationConfig(), 400, seed=0)
    recall = result.intervals["recall"]
    assert (recall.value, recall.low, recall.high) == (0.5, 0.0, 1.0)
    precision = result.intervals["precision"]
    assert (precision.value, precision.low, precision.high) == (0.5, 0.0, 1.0)
    assert result.clips == 2 and result.replicates == 400


def test_the_same_seed_gives_the_same_intervals_and_the_clips_are_the_records(noisy):
    config = EvaluationConfig()
    a, b = clip_bootstrap(noisy, config, 50, seed=3), clip_bootstrap(noisy, config, 50, seed=3)
    assert a == b and a.clips == len({f.clip for f in noisy}) >= 2
    for interval in a.intervals.values():
        assert interval.low <= interval.high
    assert clip_bootstrap(noisy, config, 50, seed=4) != a
    with pytest.raises(ValueError, match="at least 2 replicates"):
        clip_bootstrap(noisy, config, 1)
    with pytest.raises(ParamsError, match=r"evaluate\.bootstrap = 1"):
        EvaluateParams(bootstrap=1)


def test_the_stage_writes_the_intervals_of_each_column(noisy, dataset, tmp_path):
    pred = tmp_path / "pred"
    pred.mkdir()
    for frame in noisy:
        source = dataset / "eval" / "text" / f"{frame.id}.json"
        truth = json.loads(source.read_text())["annotations"]
        pred.joinpath(source.name).write_text(json.dumps({"annotations": truth}))
    out = evaluate(EvaluateParams(bootstrap=20), gt=dataset / "eval" / "text", pred=pred, out=tmp_path / "eval.json")
    written = json.loads((tmp_path / "eval.json").read_text())["intervals_95"]
    assert written == out["intervals_95"]
    assert written["replicates"] == 20 and written["level"] == 0.95
    none = evaluate(EvaluateParams(bootstrap=0), gt=dataset / "eval" / "text", pred=pred, out=tmp_path / "e0.json")
    assert "intervals_95" not in none
    assert written["clips"] == 1 and written["ap3d"] == [None, None]  # the files' one clip: no interval


def test_the_results_table_shows_each_columns_intervals():
    from av_grounding.evaluation.table import intervals_markdown

    block = {"level": 0.95, "replicates": 1000, "clips": 12, "seed": 0, "ap2d50": [0.35, 0.51], "ap3d": [0.3, 0.44],
             "center_distance_map": [None, None], "recall": [0.5, 0.66], "precision": [0.6, 0.7]}
    text = intervals_markdown({"step_000002": {"intervals_95": block}, "final": {"intervals_95": block}},
                              {"step_000002": 2, "final": 4})
    assert "1000 resamplings of 12 clips" in text
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
            for line in text.splitlines() if line.startswith("| ") and "step" not in line}
    assert rows["AP2D50"] == ["0.3500-0.5100"] * 2 and rows["centre-distance mAP"] == ["-", "-"]
    assert intervals_markdown({"final": {}}, {"final": 4}) == ""


def test_frames_without_a_clip_are_resampled_one_by_one_with_a_warning(noisy):
    from av_grounding.evaluation.frames import EvaluationWarning

    loose = [dataclasses.replace(frame, clip="") for frame in noisy]
    with pytest.warns(EvaluationWarning, match="no clip_id"):
        result = clip_bootstrap(loose, EvaluationConfig(), 20)
    assert result.clips == len(noisy)


def test_a_paired_change_is_exact_for_a_column_against_itself_and_rises_to_perfect_answers(noisy):
    """Against itself every replicate's difference is 0. The truth itself against the noisy
    answers, on the same draws: each metric rises (interval above 0), and the paired interval is
    narrower than the noisy column's own interval."""
    from av_grounding.evaluation.bootstrap import paired_change

    config = EvaluationConfig()
    before = clip_bootstrap(noisy, config, 200, seed=2)
    same = paired_change(before, before)
    assert all((i.value, i.low, i.high) == (0.0, 0.0, 0.0) for i in same.values())
    perfect = clip_bootstrap([dataclasses.replace(f, pred=f.gt) for f in noisy], config, 200, seed=2)
    rise = paired_change(before, perfect)
    for name in HEADLINE:
        assert rise[name].low > 0, name
        assert rise[name].value == pytest.approx(perfect.intervals[name].value - before.intervals[name].value)
    with pytest.raises(ValueError, match="not drawn on the same"):
        paired_change(before, clip_bootstrap(noisy, config, 200, seed=3))


def test_the_mean_change_over_runs_pairs_common_draws_and_combines_independent_ones(noisy):
    """One run: ``paired_change``'s numbers. The same run twice (same frames, same draws): the
    same numbers again. A second run on other frames (the ids renamed and the order reversed, as
    another data seed would give): the mean of the two changes, with the replicates of the second
    run reordered, so the interval differs from the one run's but still excludes 0 for a rise to
    the truth."""
    from av_grounding.evaluation.bootstrap import mean_change, paired_change

    config = EvaluationConfig()

    def run(frames):
        return (clip_bootstrap(frames, config, 200, seed=2),
                clip_bootstrap([dataclasses.replace(f, pred=f.gt) for f in frames], config, 200, seed=2))

    first = run(noisy)
    assert mean_change([first]) == paired_change(*first)
    assert mean_change([first, first]) == paired_change(*first)
    other = run([dataclasses.replace(f, id=f"other_{f.id}") for f in reversed(noisy)])
    both, alone = mean_change([first, other]), paired_change(*other)
    for name in HEADLINE:
        expected = (paired_change(*first)[name].value + alone[name].value) / 2
        assert both[name].value == pytest.approx(expected) and both[name].low > 0, name
    assert any(both[name] != paired_change(*first)[name] for name in HEADLINE)  # the draws were reordered
    with pytest.raises(ValueError, match="no runs"):
        mean_change([])
    with pytest.raises(ValueError, match="replicate counts"):
        mean_change([first, (clip_bootstrap(noisy, config, 100, seed=2), clip_bootstrap(noisy, config, 100, seed=2))])


def test_the_mean_over_runs_of_one_run_is_that_run_and_of_two_on_other_frames_combines_independent_draws(noisy):
    """One run (or the same run twice): its own values and intervals. Two runs on other frames
    (another data seed): the mean of their values, and the percentiles of the mean of their
    replicates, each run's reordered by its frames' permutation, whose variance is a quarter of
    the sum of the two runs' (independent draws)."""
    from av_grounding.evaluation.bootstrap import _order_of, mean_over_runs

    config = EvaluationConfig()
    first = clip_bootstrap(noisy, config, 400, seed=2)
    assert mean_over_runs([first]) == first.intervals == mean_over_runs([first, first])
    other = clip_bootstrap([dataclasses.replace(f, id=f"other_{f.id}") for f in reversed(noisy)], config, 400, seed=2)
    both = mean_over_runs([first, other])
    for name in HEADLINE:
        assert both[name].value == pytest.approx((first.intervals[name].value + other.intervals[name].value) / 2)
        draws = [r.values[name][_order_of(r.frames, 400)] for r in (first, other)]
        variances = [np.nanvar(d) for d in draws]
        if name == "ap3d_far":  # one frame holds the far truth: the same value wherever it is drawn
            assert max(variances) < 1e-24 and np.isnan(draws[0]).any()
        else:  # independent draws: the mean's variance is a quarter of the sum (common draws add a covariance)
            assert np.var((draws[0] + draws[1]) / 2) == pytest.approx(sum(variances) / 4, rel=0.25), name
        assert both[name].low <= both[name].value <= both[name].high, name
    one_clip = clip_bootstrap([dataclasses.replace(f, clip="one") for f in noisy], config, 400, seed=2)
    assert all(i.low is None and i.high is None for i in mean_over_runs([first, one_clip]).values())
    with pytest.raises(ValueError, match="no runs"):
        mean_over_runs([])
    with pytest.raises(ValueError, match="replicate counts"):
        mean_over_runs([first, clip_bootstrap(noisy, config, 100, seed=2)])


def test_the_stage_writes_each_columns_change_from_the_column_before(noisy, dataset, tmp_path):
    """Three columns (noisy answers, noisy again, the truth) on the test split (one clip: values,
    no intervals): the second's change is exactly 0, the third's positive; the results table
    has the comparison."""
    from av_grounding.pipeline.evaluate import evaluate

    predictions = tmp_path / "predictions"
    columns = {"step_000001": 1, "step_000002": 2, "final": 3}
    for name in columns:
        (predictions / name).mkdir(parents=True)
    for frame in noisy:
        source = dataset / "eval" / "text" / f"{frame.id}.json"
        truth = json.loads(source.read_text())["annotations"]
        answer = [{"label": label, "bbox_3d": [float(v) for v in values]}
                  for label, values in zip(frame.pred.labels, frame.pred.values)]
        for name, boxes in (("step_000001", answer), ("step_000002", answer), ("final", truth)):
            (predictions / name / source.name).write_text(json.dumps({"annotations": boxes}))
    (predictions / "columns.json").write_text(json.dumps(columns))
    results = evaluate(EvaluateParams(bootstrap=100, overlays=0), dataset, predictions, tmp_path / "eval.json",
                       plots=tmp_path / "plots")
    assert "change_95" not in results["step_000001"]
    assert results["step_000002"]["change_95"]["from"] == "step_000001"
    for name in HEADLINE:
        assert results["step_000002"]["change_95"][name] == {"change": 0.0, "interval": [None, None]}
        assert results["final"]["change_95"][name]["change"] > 0
    table = (tmp_path / "plots" / "results_table.md").read_text()
    assert "Change from the column before" in table and "final (step 3) vs step 2" in table


def test_the_table_calls_a_change_only_with_enough_clips():
    from av_grounding.evaluation.table import VERDICT_MIN_CLIPS, changes_markdown

    def results(clips):
        block = {"replicates": 100, "clips": clips, "level": 0.95, "seed": 0}
        change = {"from": "step_000001", "recall": {"change": 0.1, "interval": [0.05, 0.15]},
                  "ap2d50": {"change": -0.1, "interval": [-0.2, -0.01]}}
        return {"step_000001": {"intervals_95": block}, "final": {"intervals_95": block, "change_95": change}}

    steps = {"step_000001": 1, "final": 2}
    many, few = changes_markdown(results(VERDICT_MIN_CLIPS), steps), changes_markdown(results(2), steps)
    assert "+0.1000 [+0.0500, +0.1500] rises" in many and "-0.1000 [-0.2000, -0.0100] falls" in many
    import re

    assert re.search(r"\[\+0\.0500, \+0\.1500\]\s*\|", few) and re.search(r"\[-0\.2000, -0\.0100\]\s*\|", few)
    assert "2 clips: too few" in few
