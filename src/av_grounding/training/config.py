"""Training configuration resolved for a run: the learning rate of ``train.lr: null``.

(Presets are applied when the params load: ``params.load``.)
"""

from __future__ import annotations

import dataclasses

from ..models.builtin import BUILTIN_MODELS, split_name
from ..params import TrainParams

# Peak learning rate of `train.lr: null` for a model that is not built in (a hub id or folder of a
# pretrained model): a common full fine-tuning rate for 3-8B vision-language models.
PRETRAINED_LR = 1e-5


def resolved(params: TrainParams) -> TrainParams:
    """The params a run uses: ``lr: null`` replaced by the built-in model size's learning rate
    (``models.builtin.MODEL_SIZES``) or PRETRAINED_LR. (A preset is applied when the params
    load: ``params.load``.)"""
    if params.lr is None:
        lr = split_name(params.model)[0].lr if params.model in BUILTIN_MODELS else PRETRAINED_LR
        params = dataclasses.replace(params, lr=lr)
    return params
