"""Train/eval split by sequence (clip), never by frame."""

from __future__ import annotations

import numpy as np

from ..params import ParamsError


def split_clips(clip_ids: list[str], eval_count: int, eval_clip_ids: tuple[str, ...] = (),
                seed: int = 0) -> tuple[list[str], list[str]]:
    """(train, eval) clip ids. An explicit list wins over a count; the count picks clips with a
    seeded permutation of the sorted ids, so the split does not depend on file order."""
    ids = sorted(set(clip_ids))
    if eval_clip_ids:
        unknown = sorted(set(eval_clip_ids) - set(ids))
        if unknown:
            raise ParamsError(f"format.eval_clip_ids: not among the curated clips: {unknown}")
        held_out = sorted(set(eval_clip_ids))
    else:
        if not 0 <= eval_count < len(ids) or (eval_count == 0 and not ids):
            raise ParamsError(f"format.eval_clips = {eval_count} must leave at least one of {len(ids)} clips "
                              "for training")
        order = np.random.default_rng(seed).permutation(len(ids))
        held_out = sorted(ids[i] for i in order[:eval_count])
    return [c for c in ids if c not in held_out], held_out
