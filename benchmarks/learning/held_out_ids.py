"""The clips a smaller synthetic dataset holds out for evaluation, as a value for
``format.eval_clip_ids``: a run on more clips (learning.sh's CLIPS) then scores on the same
frames as the runs on the smaller one, so learning_report.py can pair them.

``synthesize`` draws clip i from the seed and i alone (``synth.clips.clip_rng``), so the first
``--clips`` clips of a larger dataset are the smaller one's, to the byte; the held-out ones are
those ``format`` picks among them (``dataset.split.split_clips``: ``--eval-clips`` of them with
``--split-seed``). Assumes every clip survives curation, as in the learning benchmark (212 of 212
in each committed run's ``dataset.json``); ``format`` stops with the unknown ids otherwise.

Prints a list in Hydra's override grammar (which DVC's ``-S`` parses), e.g. ``['<id>','<id>']``,
for ``dvc exp run -S format.eval_clip_ids=...``.
"""

from __future__ import annotations

import argparse

from av_grounding.dataset.split import split_clips
from av_grounding.params import FormatParams, ParamsError, SynthesizeParams
from av_grounding.synth.clips import clip_id


def held_out_ids(seed: int, clips: int, duration_s: float, eval_clips: int, split_seed: int) -> list[str]:
    """The held-out clip ids of ``clips`` synthetic clips of ``duration_s`` seconds from ``seed``
    (RDS-HQ layout), ``eval_clips`` of them chosen with ``split_seed``; sorted. Raises
    ``ParamsError`` for params ``synthesize`` or ``format`` would refuse, and for fewer than one
    held-out clip (an empty ``format.eval_clip_ids`` means "choose them", not "these")."""
    FormatParams(eval_clips=eval_clips, split_seed=split_seed)  # format's own checks of the two
    params = SynthesizeParams(seed=seed, num_clips=clips, duration_s=duration_s)
    return split_clips([clip_id(params, index) for index in range(clips)], eval_clips, seed=split_seed)[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, required=True, help="synthesize.seed")
    parser.add_argument("--clips", type=int, required=True, help="synthesize.num_clips of the smaller dataset")
    parser.add_argument("--duration", type=float, required=True, help="synthesize.duration_s")
    parser.add_argument("--eval-clips", type=int, required=True, help="format.eval_clips of the smaller dataset")
    parser.add_argument("--split-seed", type=int, required=True, help="format.split_seed")
    args = parser.parse_args()
    try:
        ids = held_out_ids(args.seed, args.clips, args.duration, args.eval_clips, args.split_seed)
    except ParamsError as exc:
        parser.error(str(exc))
    print("[" + ",".join(f"'{clip}'" for clip in ids) + "]")


if __name__ == "__main__":
    main()
