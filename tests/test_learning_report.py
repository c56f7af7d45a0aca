"""benchmarks/learning/learning_report.py: the lever table of levers.sh's runs (each lever scored
again against its base run on the same frames, paired), benchmarks/common.py's rescoring, and
benchmarks/learning/stopped_run.py (a run stopped during `infer`, scored on its complete columns)."""

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks" / "learning"))
from common import rescore
from learning_report import against_tables, changes, lever_tables, seed_mean, step_tables, training_samples
from stopped_run import paired_table

ROOT = Path(__file__).resolve().parents[1]
CAMERA = {"fx": 300.0, "fy": 300.0, "cx": 320.0, "cy": 180.0}  # a 640x360 image
CAR = [-3.0, 0.7, 15.0, 4.5, 1.9, 1.6, 0.0, 0.2, 0.0]
CLIPS = ("c0", "c1", "c2", "c3")


def pack(folder: Path, archive: Path, inside: str, files: dict) -> None:
    """``files`` ({name: document}) as JSON under ``inside`` in the .tar.gz ``archive``."""
    for name, document in files.items():
        path = folder / inside / f"{name}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(document))
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder / inside.split("/")[0], arcname=inside.split("/")[0])


def run_folder(root: Path, name: str, shift: float, overrides: dict, clips: tuple[str, ...] = CLIPS) -> Path:
    """A run folder as collect_run writes it: one car per clip in the truth, the final model's
    answer the car moved ``shift`` metres to the side."""
    folder = root / name
    (folder / "timing").mkdir(parents=True)
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    for key, value in overrides.items():
        section, field = key.split(".")
        params[section][field] = value
    (folder / "params.yaml").write_text(yaml.safe_dump(params))
    family = params["format"]["model_family"]
    (folder / "dataset.json").write_text(json.dumps({"tokens": {"image_per_frame": {family: {"mean": 220.0}}}}))
    (folder / "timing" / "train.json").write_text(json.dumps({"wall_s": 75.0}))
    (folder / "timing" / "infer.json").write_text(json.dumps({"final": {"wall_s": 30.0}}))
    (folder / "columns.json").write_text(json.dumps({"final": 600}))
    truth = {f"{clip}_000000": {"clip_id": clip, "camera": "camera_front_wide_120fov", "camera_params": CAMERA,
                                 "width": 640, "height": 360, "annotations": [{"label": "car", "bbox_3d": CAR}]}
             for clip in clips}
    answer = [CAR[0] + shift, *CAR[1:]]
    answers = {f"{clip}_000000": {"annotations": [{"label": "car", "bbox_3d": answer}]} for clip in clips}
    pack(root / "scratch" / name / "t", folder / "eval_truth.tar.gz", "data/dataset/eval/text", truth)
    pack(root / "scratch" / name / "p", folder / "predictions.tar.gz", "data/predictions/final", answers)
    return folder


def test_a_lever_that_finds_every_car_rises_against_a_base_that_misses_them(tmp_path):
    """One base and its one lever; a run of another seed is neither a lever of the unseeded base
    nor (without levers of its own) a base with a table."""
    base = run_folder(tmp_path, "small-qwen3_vl-base-600", 3.0, {})
    lever = run_folder(tmp_path, "small-qwen3_vl-prompt-600", 0.0, {"format.camera_input": "prompt",
                                                                     "format.workers": 7})
    seeded = [run_folder(tmp_path, "small-qwen3_vl-s1-base-600", 3.0, {}),
              run_folder(tmp_path, "small-qwen3_vl-s1-half_pixels-600", 3.0, {})]
    table = lever_tables([base, lever, *seeded], tmp_path / "work")
    assert table.count("## Levers against") == 2  # the unseeded base's and the seed-1 base's
    first = table.split("## Levers against `small-qwen3_vl-s1-base-600`")[0]
    rows = [line for line in first.splitlines() if line.startswith("| ") and not line.startswith("| lever")]
    assert len(rows) == 1 and rows[0].startswith("| prompt")
    assert "format.camera_input=prompt" in rows[0] and "workers" not in rows[0]
    assert "+1.000 [+1.000, +1.000]" in rows[0]  # AP2D50 0 -> 1 on every clip: every resampling agrees
    assert "- `prompt`: AP2D50 rises" in first
    assert "| half_pixels" in table.split("## Levers against `small-qwen3_vl-s1-base-600`")[1]


def test_a_lever_that_cannot_be_scored_again_says_why(tmp_path):
    """No truth kept, or truth of other frames than the base's: a row of dashes and the reason."""
    base = run_folder(tmp_path, "r-base-10", 3.0, {})
    lost = run_folder(tmp_path, "r-lost-10", 0.0, {})
    (lost / "eval_truth.tar.gz").unlink()
    other = run_folder(tmp_path, "r-other-10", 0.0, {}, clips=("x0", "x1", "x2", "x3"))
    table = lever_tables([base, lost, other], tmp_path / "work")
    assert "- `lost`: no eval_truth.tar.gz" in table
    assert "- `other`: paired_change: the two bootstraps were not drawn on the same frames" in table
    assert table.count("| - ") >= 10


def test_changes_lists_differing_params_but_not_worker_counts(tmp_path):
    base = run_folder(tmp_path, "a-base-10", 0.0, {})
    other = run_folder(tmp_path, "a-half-10", 0.0, {"format.max_pixels": 115200, "extract.workers": 3})
    assert changes(base, other) == "format.max_pixels=115200"
    assert changes(base, base) == "none"


def test_a_param_one_run_lacks_is_a_change_only_off_its_default(tmp_path):
    """A run older than a param has no key for it: the newer run at the default changed nothing."""
    old = run_folder(tmp_path, "a-old-10", 0.0, {})
    params = yaml.safe_load((old / "params.yaml").read_text())
    del params["format"]["mirror_train"], params["rl"]["precision"]
    (old / "params.yaml").write_text(yaml.safe_dump(params))
    new = run_folder(tmp_path, "a-new-10", 0.0, {"format.mirror_train": False})
    mirrored = run_folder(tmp_path, "a-mirror-10", 0.0, {"format.mirror_train": True})
    assert changes(old, new) == changes(new, old) == "none"
    assert changes(old, mirrored) == "format.mirror_train=True"
    odd = run_folder(tmp_path, "a-odd-10", 0.0, {"rl.precision": "fp8"})  # a value no params take
    assert changes(old, odd) == "rl.precision=fp8"  # a change, not an error


def test_rescore_names_a_missing_column(tmp_path):
    run = run_folder(tmp_path, "r-base-1", 0.0, {})
    scored = rescore(run / "params.yaml", run / "eval_truth.tar.gz", run / "predictions.tar.gz", "final",
                     tmp_path / "s1")
    assert scored.intervals["recall"].value == 1.0 and scored.clips == len(CLIPS)
    with pytest.raises(KeyError, match="no prediction column 'step_000100'"):
        rescore(run / "params.yaml", run / "eval_truth.tar.gz", run / "predictions.tar.gz", "step_000100",
                tmp_path / "s2")


def test_the_seed_mean_has_an_interval_only_where_every_run_kept_its_truth(tmp_path):
    """A run that answers every car (recall 1) and one that misses every car by 30 m (recall 0):
    the mean recall 0.5, and its interval [0.5, 0.5], as each run's recall is the same on every
    resampling of its clips. Without one run's truth: the mean of the runs' own metrics, no
    interval; a metric a run lacks: a dash."""
    runs = [run_folder(tmp_path, "small-qwen3_vl-half-600", 0.0, {}),
            run_folder(tmp_path, "small-qwen3_vl-s1-half-600", 30.0, {"train.seed": 1})]
    for run, recall in zip(runs, (1.0, 0.0)):
        (run / "eval.json").write_text(json.dumps({"final": {"matching": {"recall": recall}}}))
    row = seed_mean("small-qwen3_vl-half-600", runs, tmp_path / "work")
    assert row["seeds"] == 2 and row["recall"] == "0.500 [0.500, 0.500]"
    runs = [run_folder(tmp_path / "b", name, shift, {}) for name, shift in (("a-half-6", 0.0), ("a-s1-half-6", 30.0))]
    for run, recall in zip(runs, (1.0, 0.0)):
        (run / "eval.json").write_text(json.dumps({"final": {"matching": {"recall": recall}}}))
    (runs[1] / "eval_truth.tar.gz").unlink()
    without = seed_mean("a-half-6", runs, tmp_path / "work2")
    assert without["recall"] == "0.500 (no interval: no eval_truth.tar.gz)" and without["AP2D50"] == "-"


def test_rescore_refuses_a_run_that_asked_for_no_intervals(tmp_path):
    run = run_folder(tmp_path, "r-base-1", 0.0, {"evaluate.bootstrap": 0})
    with pytest.raises(ValueError, match=r"evaluate\.bootstrap is 0"):
        rescore(run / "params.yaml", run / "eval_truth.tar.gz", run / "predictions.tar.gz", "final", tmp_path / "s")


def test_the_rl_report_scores_every_arm_on_the_base_runs_truth(tmp_path):
    """benchmarks/rl_vs_sft's report: the three arms (base, sft: column ``final``; rl:
    ``rl_final``) scored on ``base/eval_truth.tar.gz`` with the same draws, so they pair."""
    sys.path.insert(0, str(ROOT / "benchmarks" / "rl_vs_sft"))
    from rl_vs_sft_report import bootstraps

    from av_grounding.evaluation.bootstrap import paired_change

    run = tmp_path / "small-qwen3_vl"
    run_folder(run, "base", 3.0, {})
    run_folder(run, "sft", 3.0, {})
    rl = run_folder(tmp_path / "rl", "rl", 0.0, {})
    renamed = tmp_path / "rl-scratch"
    with tarfile.open(rl / "predictions.tar.gz") as tar:
        tar.extractall(renamed, filter="data")
    (renamed / "data" / "predictions" / "final").rename(renamed / "data" / "predictions" / "rl_final")
    (run / "rl").mkdir()
    with tarfile.open(run / "rl" / "predictions.tar.gz", "w:gz") as tar:
        tar.add(renamed / "data", arcname="data")
    (run / "rl" / "columns.json").write_text(json.dumps({"final": 600, "rl_final": 8}))
    for arm in ("base", "sft", "rl"):
        (run / arm / "eval.json").write_text("{}")  # what failure() asks of an arm that ran
    scored = bootstraps(run, tmp_path / "work")
    assert scored["SFT model"].intervals["recall"].value == 0.0 == scored["+ more SFT"].intervals["recall"].value
    assert paired_change(scored["+ more SFT"], scored["+ RL"])["recall"].value == 1.0


def test_the_rl_report_lists_an_arm_that_failed_with_its_reason_and_compares_the_others(tmp_path):
    """An arm whose ``dvc exp run`` failed (rl_vs_sft.sh leaves its log and ``failed.txt``) gets a
    row of dashes and its reason; the arms that ran are still scored and compared, and the goal
    is said to be unmeasured."""
    sys.path.insert(0, str(ROOT / "benchmarks" / "rl_vs_sft"))
    from rl_vs_sft_report import bootstraps, run_section

    run = tmp_path / "small-qwen3_vl"
    for arm, shift in (("base", 3.0), ("sft", 0.0)):
        folder = run_folder(run, arm, shift, {})
        (folder / "eval.json").write_text(json.dumps({"final": {"reward": {"total": 0.5, "predicted": 4}}}))
    (run / "sft" / "timing" / "train.json").write_text(json.dumps({"step_seconds": 130.0, "steps_run": 1000}))
    (run / "plan.json").write_text(json.dumps({"more_sft_steps": 1000, "sft_step_s": 0.13, "rl_time_budget_s": 130.0,
                                                "sft_lr": "1e-4", "rl_lr": "1e-4"}))
    (run / "versions.txt").write_text("python 3.12.3\ntorch 2.11.0\n")
    (run / "rl").mkdir()
    (run / "rl" / "failed.txt").write_text("dvc exp run exit 255\n12:00:01   ModuleNotFoundError:  No module named "
                                           "'datasets'\n")
    scored = bootstraps(run, tmp_path / "work")
    assert set(scored) == {"SFT model", "+ more SFT"}
    section = run_section(run, scored, tmp_path / "curves.png", "curves.png")
    assert ("`+ RL` has no model: dvc exp run exit 255; 12:00:01 ModuleNotFoundError: No module named 'datasets'"
            in section)
    assert "| + RL       | -" in section
    assert "+ more SFT minus SFT model | +0.000" not in section and "+ more SFT minus SFT model" in section
    assert "+ RL minus" not in section
    assert "The goal is not measured" in section and "no equal-time comparison" in section
    assert "Versions: python 3.12.3, torch 2.11.0. Plan:" in section
    assert "learning rates: more SFT 1e-4, GRPO 1e-4." in section
    assert "Command: not recorded (command.txt)." in section
    (run / "command.txt").write_text("")
    with pytest.raises(SystemExit, match=r"command\.txt: empty"):
        run_section(run, scored, tmp_path / "curves.png", "curves.png")
    (run / "command.txt").write_text("ARCH=qwen3_vl SEED=1 benchmarks/rl_vs_sft/rl_vs_sft.sh\ntree 26a7da3\n")
    assert ("(tree 26a7da3): `OUT=FOLDER ARCH=qwen3_vl SEED=1 benchmarks/rl_vs_sft/rl_vs_sft.sh`"
            in run_section(run, scored, tmp_path / "curves.png", "curves.png"))


def test_a_run_trained_longer_is_compared_with_the_same_run_of_the_next_fewer_steps(tmp_path):
    """``<name>-<steps>`` runs of one name: each against the one of the next fewer steps, paired;
    a name with one run, or a base and its levers, make no steps table of their own."""
    short = run_folder(tmp_path, "small-qwen3_vl-half-pixels-600", 3.0, {"format.max_pixels": 115200})
    long = run_folder(tmp_path, "small-qwen3_vl-half-pixels-2000", 0.0, {"format.max_pixels": 115200,
                                                                         "train.steps": 2000})
    longer = run_folder(tmp_path, "small-qwen3_vl-half-pixels-3000", 3.0, {"format.max_pixels": 115200,
                                                                           "train.steps": 3000})
    alone = run_folder(tmp_path, "small-qwen3_vl-base-600", 3.0, {})
    table = step_tables([alone, longer, long, short], tmp_path / "work")
    assert table.count("## More steps") == 1 and "## More steps: `small-qwen3_vl-half-pixels`" in table
    rows = [line for line in table.splitlines() if line.startswith("| small")]
    assert len(rows) == 2 and "max_pixels" not in "".join(rows)
    assert "train.steps=2000" in rows[0] and "+1.000 [+1.000, +1.000]" in rows[0]
    assert "train.steps=3000" in rows[1] and "-1.000 [-1.000, -1.000]" in rows[1]
    assert "- `small-qwen3_vl-half-pixels-2000`: AP2D50 rises" in table
    assert "- `small-qwen3_vl-half-pixels-3000`: AP2D50 falls" in table
    assert "(small-qwen3_vl-half-pixels-600: 75 and 30 s; small-qwen3_vl-half-pixels-2000: 75 and 30 s)" in table


def test_a_run_is_compared_with_the_run_its_against_file_names(tmp_path):
    """``against.txt`` pairs a run with the folder it names, whatever the names; a name that is
    not a folder beside it stops the report, naming the file."""
    base = run_folder(tmp_path, "small-qwen3_vl-half-pixels-2000", 3.0, {})
    more = run_folder(tmp_path, "small-qwen3_vl-clips-424-2000", 0.0,
                      {"synthesize.num_clips": 424, "format.eval_clip_ids": list(CLIPS)})
    (more / "against.txt").write_text("small-qwen3_vl-half-pixels-2000\n")
    table = against_tables([base, more], tmp_path / "work")
    assert table.count("## Against") == 1 and "## Against `small-qwen3_vl-half-pixels-2000`" in table
    rows = [line for line in table.splitlines() if line.startswith("| small")]
    assert len(rows) == 1 and "synthesize.num_clips=424" in rows[0] and "+1.000 [+1.000, +1.000]" in rows[0]
    assert "format.eval_clip_ids=[4 items]" in rows[0]  # a long list by its length
    assert "- `small-qwen3_vl-clips-424-2000`: AP2D50 rises" in table
    assert against_tables([base], tmp_path / "work") == ""
    for wrong in ("small-qwen3_vl-gone", "small-qwen3_vl-clips-424-2000"):  # missing, itself
        (more / "against.txt").write_text(wrong + "\n")
        with pytest.raises(SystemExit, match=rf"against\.txt: names '{wrong}', which is not another run folder"):
            against_tables([base, more], tmp_path / "work")


def test_held_out_ids_are_the_clips_format_holds_out_of_the_smaller_data(data_baseline):
    """The ids held_out_ids.py prints for the shrunk pipeline's params are the eval clips its
    format stage wrote, and a larger dataset's first clips are the smaller one's."""
    from held_out_ids import held_out_ids

    from av_grounding.params import SynthesizeParams
    from av_grounding.synth.clips import clip_id

    params = yaml.safe_load((data_baseline / "params.yaml").read_text())
    synth, fmt = params["synthesize"], params["format"]
    split = json.loads((data_baseline / "data" / "dataset" / "split.json").read_text())
    assert held_out_ids(synth["seed"], synth["num_clips"], synth["duration_s"], fmt["eval_clips"],
                        fmt["split_seed"]) == split["eval"]
    smaller = SynthesizeParams(seed=3, num_clips=2, duration_s=1.5)
    larger = SynthesizeParams(seed=3, num_clips=5, duration_s=1.5)
    assert [clip_id(smaller, i) for i in range(2)] == [clip_id(larger, i) for i in range(2)]


def test_held_out_ids_print_a_value_dvc_sets_as_the_list_of_ids(tmp_path):
    """What held_out_ids.py prints, given to ``dvc exp run -S format.eval_clip_ids=...`` (DVC's
    own Hydra override), becomes exactly those ids in params.yaml."""
    from dvc.utils.hydra import apply_overrides
    from held_out_ids import held_out_ids

    from av_grounding.params import FormatParams, load

    script = ROOT / "benchmarks" / "learning" / "held_out_ids.py"
    printed = subprocess.run([sys.executable, str(script), "--seed", "1", "--clips", "30", "--duration", "2.0",
                              "--eval-clips", "3", "--split-seed", "1"], check=True, capture_output=True, text=True,
                             env={**os.environ, "PYTHONPATH": str(ROOT / "src")}).stdout.strip()
    params = tmp_path / "params.yaml"
    params.write_text((ROOT / "params.yaml").read_text())
    apply_overrides(params, [f"format.eval_clip_ids={printed}"])
    expected = held_out_ids(1, 30, 2.0, 3, 1)
    assert len(expected) == 3 and list(load(FormatParams, "format", params).eval_clip_ids) == expected
    # An empty list would mean "choose them" to format: refused, as is what format would refuse.
    for eval_clips, clips, error in (("0", "30", "the eval split must hold at least one clip"),
                                     ("30", "30", "must leave at least one of 30 clips for training")):
        refused = subprocess.run([sys.executable, str(script), "--seed", "1", "--clips", clips, "--duration", "2.0",
                                  "--eval-clips", eval_clips, "--split-seed", "1"], check=False,
                                 capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
        assert refused.returncode == 2 and error in refused.stderr and "Traceback" not in refused.stderr


def test_mirrored_copies_are_counted_as_samples_not_frames():
    assert training_samples({"samples": {"train": 20000}, "mirrored_frames": 0}) == "20,000 training frames"
    assert training_samples({"samples": {"train": 20000}}) == "20,000 training frames"  # runs before the key
    assert training_samples({"samples": {"train": 39998}, "mirrored_frames": 20000}) == \
        "39,998 training samples (of them mirrored copies: up to 20,000)"


def shell_function(script: str, name: str) -> str:
    """The text of the bash function ``name`` in benchmarks/learning/``script`` (sourcing the
    script would set up a device machine)."""
    text = (ROOT / "benchmarks" / "learning" / script).read_text()
    start = text.index(f"{name}() {{")
    return text[start:text.index("\n}\n", start) + 3]


def test_collected_archives_hold_the_same_bytes_for_the_same_files(tmp_path):
    """learning_common.sh's ``archive`` (predictions and truth of every collected run): files
    written again later, in another order, give the same .tar.gz bytes, which unpack to them."""
    def write(order):
        for name in order:
            (tmp_path / "data" / name).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / "data" / name).write_text(name * 3)

    function = shell_function("learning_common.sh", "archive")

    def archive(out):
        subprocess.run(["bash", "-c", f'set -o pipefail; {function} archive "{out}" data'], cwd=tmp_path, check=True)
        return (tmp_path / out).read_bytes()

    write(["b/2.json", "a.json", "b/1.json"])
    first = archive("one.tar.gz")
    for path in (tmp_path / "data").rglob("*"):
        os.utime(path, (1e9, 1e9))
    write(["b/1.json", "a.json", "b/2.json"])
    os.chmod(tmp_path / "data" / "a.json", 0o600)
    assert archive("two.tar.gz") == first
    with tarfile.open(tmp_path / "one.tar.gz") as tar:
        names = sorted(m.name for m in tar.getmembers() if m.isfile())
        assert names == ["data/a.json", "data/b/1.json", "data/b/2.json"]
        assert tar.extractfile("data/b/1.json").read() == b"b/1.json" * 3


def stopped_folder(root: Path, name: str, shift: float, answered: dict[str, int]) -> Path:
    """A run folder as collect_run writes it for a run stopped during `infer`: the truth of
    ``run_folder`` and, per column, the car moved ``shift`` metres in the first ``answered[column]``
    frames."""
    folder = run_folder(root, name, shift, {})
    answer = {"annotations": [{"label": "car", "bbox_3d": [CAR[0] + shift, *CAR[1:]]}]}
    frames = [f"{clip}_000000" for clip in CLIPS]
    scratch = root / "scratch" / name / "columns"
    manifest = scratch / "data" / "predictions" / "manifests" / "step_000400.json"
    manifest.parent.mkdir(parents=True, exist_ok=True)
    manifest.write_text("{}")
    for column, count in answered.items():
        for frame in frames[:count]:
            path = scratch / "data" / "predictions" / column / f"{frame}.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(answer))
    with tarfile.open(folder / "predictions.tar.gz", "w:gz") as tar:
        tar.add(scratch / "data", arcname="data")
    return folder


def test_a_stopped_run_is_scored_on_its_complete_columns_against_the_same_columns_of_its_base(tmp_path):
    base = stopped_folder(tmp_path, "base", 3.0, {"step_000400": 4, "step_000800": 4})
    run = stopped_folder(tmp_path, "run", 0.0, {"step_000400": 4, "step_000800": 2})
    table = paired_table(run, base, tmp_path / "work")
    rows = [line for line in table.splitlines() if line.startswith("| step")]
    assert len(rows) == 1 and rows[0].startswith("| step_000400 ") and "+1.000 [+1.000, +1.000]" in rows[0], table
    assert "- `step_000800`: 2 of 4 frames answered when the run stopped; not scored." in table
    assert "manifests" not in table  # infer's manifests folder is not a column
    for name, base_columns in (("missing", {"step_000800": 4}), ("part", {"step_000400": 3})):
        wrong = stopped_folder(tmp_path, name, 3.0, base_columns)
        with pytest.raises(SystemExit, match=rf"{name}/predictions\.tar\.gz: column 'step_000400' answered "
                                             rf"{base_columns.get('step_000400', 0)} of 4"):
            paired_table(run, wrong, tmp_path / "work")
    nothing = stopped_folder(tmp_path, "nothing", 0.0, {"step_000400": 3})
    with pytest.raises(SystemExit, match="no prediction column answered all 4 evaluation frames"):
        paired_table(nothing, base, tmp_path / "work")
    (nothing / "eval_truth.tar.gz").unlink()
    with pytest.raises(FileNotFoundError, match=r"nothing/eval_truth\.tar\.gz: missing"):
        paired_table(nothing, base, tmp_path / "work")


def test_collect_adds_a_stopped_runs_files_without_the_commits_stale_metrics(tmp_path):
    """learning.sh's COLLECT=1 (``collect_stopped``) on a clone whose run wrote train.json and
    part of the final column: the predictions and truth archived, the metrics the run wrote kept,
    the committed ones it has not rewritten yet (eval.json, timing/infer.json) left out, no
    depth_errors.md of a partial column; no clone is an error naming the folder."""
    clone = tmp_path / "clone"
    files = {"metrics/eval.json": "{}", "metrics/train.json": "{}", "metrics/timing/infer.json": "{}",
             "metrics/timing/train.json": "{}", "params.yaml": "evaluate:\n  codec: x\n", "dvc.lock": "",
             ".dvc/config": "",
             # stands in for the clone's depth_errors.py: writes the file it is given (--out)
             "benchmarks/learning/depth_errors.py": "import sys; open(sys.argv[-1], 'w').write('depth')\n"}
    for name, text in files.items():
        (clone / name).parent.mkdir(parents=True, exist_ok=True)
        (clone / name).write_text(text)
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t.invalid"]
    for command in (["init", "--quiet"], ["add", "-A"], ["commit", "--quiet", "-m", "base"]):
        subprocess.run([*git, *command], cwd=clone, check=True)
    for name in ("metrics/train.json", "metrics/timing/train.json"):  # what the run wrote so far
        (clone / name).write_text('{"run": 1}')
    (clone / "data" / "dataset" / "eval" / "text").mkdir(parents=True)
    (clone / "data" / "predictions" / "final").mkdir(parents=True)
    for frame in ("a", "b"):
        (clone / "data" / "dataset" / "eval" / "text" / f"{frame}.json").write_text("{}")
    (clone / "data" / "predictions" / "final" / "a.json").write_text("{}")
    (clone / "data" / "predictions" / "columns.json").write_text('{"final": 4}')
    functions = "".join(shell_function(script, name) for script, name in (
        ("learning_common.sh", "archive"), ("learning_common.sh", "collect_run"), ("learning.sh", "collect_stopped")))

    def collect(source: Path, result: Path) -> subprocess.CompletedProcess:
        return subprocess.run(["bash", "-c", f'{functions} collect_stopped "{source}" "{result}"'], cwd=tmp_path,
                              capture_output=True, text=True, check=False)

    assert collect(clone, tmp_path / "out").returncode == 0
    kept = sorted(str(p.relative_to(tmp_path / "out")) for p in (tmp_path / "out").rglob("*") if p.is_file())
    assert "eval.json" not in kept and "timing/infer.json" not in kept and "depth_errors.md" not in kept, kept
    assert {"train.json", "timing/train.json", "columns.json", "predictions.tar.gz", "eval_truth.tar.gz"} <= set(kept)
    assert json.loads((tmp_path / "out" / "train.json").read_text()) == {"run": 1}
    with tarfile.open(tmp_path / "out" / "predictions.tar.gz") as tar:
        assert "data/predictions/final/a.json" in tar.getnames()
    (clone / "data" / "predictions" / "final" / "b.json").write_text("{}")  # the column whole: its depth errors
    assert collect(clone, tmp_path / "whole").returncode == 0 and (tmp_path / "whole" / "depth_errors.md").exists()
    missing = collect(tmp_path / "gone", tmp_path / "other")
    assert missing.returncode != 0 and f"no learning run in {tmp_path / 'gone'}" in missing.stderr
