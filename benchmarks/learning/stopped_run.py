"""Score the model versions a learning run answered before it stopped (the device's time ran out
during `infer`, so `evaluate` never ran), each against the same version of the run it changes.

    python benchmarks/learning/stopped_run.py benchmarks/learning/stopped/<run> \\
        --against benchmarks/learning/results/<base run> --out benchmarks/learning/stopped/<run>/paired.md

``<run>`` holds what learning_common.sh's ``collect_run`` collects (``params.yaml``,
``predictions.tar.gz``, ``eval_truth.tar.gz``); ``--against`` is a complete run folder scored on
the same frames. A column (``step_000400``, ...) counts when it answered every frame of the
evaluation split; the others are listed with how many they answered. Each complete column is
scored again with the evaluator's clip bootstrap under each run's own ``evaluate`` params
(``common.rescore``) and compared, paired, with the base's column of the same name
(``bootstrap.paired_change``).
"""

from __future__ import annotations

import argparse
import sys
import tarfile
import tempfile
from pathlib import Path, PurePosixPath

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: common.py
from common import HEADLINE_NAMES as NAMES
from common import interval_cell, rescore

from av_grounding.evaluation.bootstrap import HEADLINE, paired_change
from av_grounding.storage import atomic_write_bytes

TRUTH = PurePosixPath("data/dataset/eval/text")
PREDICTIONS = PurePosixPath("data/predictions")


def answered(run: Path) -> tuple[int, dict[str, int]]:
    """The evaluation frames of ``run`` (files in ``eval_truth.tar.gz``) and the frames each
    prediction column of ``predictions.tar.gz`` answered. Raises ``FileNotFoundError`` naming a
    missing archive."""
    for name in ("eval_truth.tar.gz", "predictions.tar.gz"):
        if not (run / name).is_file():
            raise FileNotFoundError(f"{run / name}: missing (collect_run archives the truth and the predictions)")
    with tarfile.open(run / "eval_truth.tar.gz") as tar:
        frames = sum(1 for m in tar.getmembers() if m.isfile() and PurePosixPath(m.name).parent == TRUTH)
    columns: dict[str, int] = {}
    with tarfile.open(run / "predictions.tar.gz") as tar:
        for member in tar.getmembers():
            path = PurePosixPath(member.name)
            if member.isfile() and path.suffix == ".json" and path.parent.parent == PREDICTIONS:
                columns[path.parent.name] = columns.get(path.parent.name, 0) + 1
    columns.pop("manifests", None)
    return frames, dict(sorted(columns.items()))


def paired_table(run: Path, against: Path, scratch: Path) -> str:
    """Markdown: one row per complete column of ``run`` (its scores and their change against
    ``against``'s column of the same name, with the paired 95 % interval), then a line for each
    incomplete column. Raises ``SystemExit`` when no column is complete or the base lacks one
    of the complete columns or holds it in part, ``ValueError`` when the two were not scored on
    the same frames."""
    frames, columns = answered(run)
    complete = [name for name, count in columns.items() if count == frames]
    if not complete:
        raise SystemExit(f"{run}: no prediction column answered all {frames} evaluation frames ({columns})")
    base_frames, base_columns = answered(against)
    for column in complete:
        if base_frames != frames or base_columns.get(column) != frames:
            raise SystemExit(f"{against / 'predictions.tar.gz'}: column '{column}' answered "
                             f"{base_columns.get(column, 0)} of {base_frames} evaluation frames; the stopped run's "
                             f"answered all {frames}: the base must hold the same column whole")
    rows = []
    for column in complete:
        before = rescore(against / "params.yaml", against / "eval_truth.tar.gz", against / "predictions.tar.gz",
                         column, scratch / "against" / column)
        after = rescore(run / "params.yaml", run / "eval_truth.tar.gz", run / "predictions.tar.gz", column,
                        scratch / "run" / column)
        change = paired_change(before, after)
        rows.append({"column": column, **{NAMES[n]: interval_cell(after.intervals[n]) for n in HEADLINE},
                     **{f"{NAMES[n]} change": interval_cell(change[n], sign=True) for n in HEADLINE}})
    heading = (f"`{run.name}` against `{against.name}`: each column the run answered in full, scored again on "
               f"the same {frames} held-out frames, with its change against the base's column of the same name and "
               "the paired clip-bootstrap 95 % interval (docs/metrics.md#intervals-how-sure-a-number-is).")
    lines = [heading, "", pd.DataFrame(rows).to_markdown(index=False, disable_numparse=True), ""]
    lines += [f"- `{name}`: {count} of {frames} frames answered when the run stopped; not scored."
              for name, count in columns.items() if count != frames]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path)
    parser.add_argument("--against", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        table = paired_table(args.run, args.against, Path(scratch))
    atomic_write_bytes(args.out, table.encode())


if __name__ == "__main__":
    main()
