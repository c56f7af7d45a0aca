"""Selective activation checkpointing (``models/checkpointing.py``, ``train.checkpoint_fraction``):
which decoder layers recompute, and that the hf backend's model recomputes exactly those and
trains to the same loss and gradients as with every layer checkpointed and with none."""

from __future__ import annotations

import pytest
import torch
from conftest import TINY, TRAINING_FORMAT

from av_grounding.dataset.prompts import load_prompts
from av_grounding.models.builtin import build_builtin
from av_grounding.models.checkpointing import checkpointed_layers
from av_grounding.models.inputs import answer_loss
from av_grounding.params import ParamsError, TrainParams
from av_grounding.training.hf import Process, _setup_model

from test_flops import batch_of


def spread(count: int, chosen: int) -> tuple[int, ...]:
    """``chosen`` of ``count`` layers evenly spread, in integers: layer i when floor((i + 1) chosen / count) steps."""
    return tuple(i for i in range(count) if (i + 1) * chosen // count > i * chosen // count)


@pytest.mark.parametrize("count, fraction, expected", [
    (36, 0.0, ()),
    (36, 1.0, tuple(range(36))),
    (36, 0.5, tuple(range(1, 36, 2))),
    (36, 1 / 3, tuple(range(2, 36, 3))),
    (1, 0.0, ()),
    (1, 0.5, ()),  # floor(0.5) layers
    (1, 1.0, (0,)),
    (4, 0.75, (1, 2, 3)),
    (5, 0.4, (2, 4)),
    (22, 15 / 22, spread(22, 15)),  # 22 x (15 / 22) is 14.999... in floats, and means 15
    (100, 0.29, spread(100, 29)),  # 100 x 0.29 likewise
])
def test_checkpointed_layers_are_the_rounded_down_share_spread_evenly(count, fraction, expected):
    assert checkpointed_layers(count, fraction) == expected


@pytest.mark.parametrize("count, fraction", [(36, -0.1), (36, 1.5), (-1, 0.5)])
def test_checkpointed_layers_refuse_a_share_outside_0_1(count, fraction):
    with pytest.raises(ValueError, match=r"must lie in \[0, 1\]"):
        checkpointed_layers(count, fraction)


@pytest.mark.parametrize("fraction", [-0.5, 1.01])
def test_the_param_is_checked_when_it_loads(fraction):
    with pytest.raises(ParamsError, match=r"'checkpoint_fraction' must be >= 0.0 and <= 1.0"):
        TrainParams(checkpoint_fraction=fraction)


@pytest.mark.parametrize("changes", [{"gradient_checkpointing": False}, {"backend": "cosmos-rl"}])
def test_a_share_that_nothing_reads_is_warned_about(changes):
    with pytest.warns(UserWarning, match=r"checkpoint_fraction = 0.5 applies to the hf backend with "
                                         r"train.gradient_checkpointing; ignored"):
        TrainParams(**{"gradient_checkpointing": True, "checkpoint_fraction": 0.5, **changes})


@pytest.fixture(scope="module", params=TINY)
def tiny_folder(request, tmp_path_factory):
    prompts = load_prompts(TRAINING_FORMAT.prompts)
    folder = tmp_path_factory.mktemp(request.param)
    build_builtin(request.param, folder, 0, prompts.system, prompts.user, TRAINING_FORMAT.min_pixels,
                  TRAINING_FORMAT.max_pixels)
    return request.param, folder


def trained_step(name: str, folder, checkpointing: bool, fraction: float = 1.0):
    """The hf backend's model of ``folder`` (``_setup_model``) after one forward and backward on a
    fixed batch: (the model, self-attention calls per decoder layer, loss, gradients by name)."""
    params = TrainParams(model=name, gradient_checkpointing=checkpointing, checkpoint_fraction=fraction)
    _, model = _setup_model(params, folder, None, Process(0, 1, "cpu"))
    layers = model.model.language_model.layers
    calls = [0] * len(layers)
    for index, layer in enumerate(layers):
        layer.self_attn.register_forward_pre_hook(lambda *_, index=index: calls.__setitem__(index, calls[index] + 1))
    model.train()
    loss = answer_loss(model, batch_of(model.config, "edge_windows_padded"))
    loss.backward()
    return model, calls, loss.detach(), {key: p.grad for key, p in model.named_parameters() if p.grad is not None}


def test_a_share_of_the_decoder_layers_recomputes_and_trains_alike(tiny_folder):
    """Of the tiny models' two decoder layers, 0.5 checkpoints the second: its self-attention
    runs twice (forward, then the recomputation), the first layer's once; every vision block
    keeps checkpointing. Loss and gradients equal those of full checkpointing and of none."""
    name, folder = tiny_folder
    runs = {"half": trained_step(name, folder, True, 0.5), "all": trained_step(name, folder, True, 1.0),
            "none": trained_step(name, folder, False)}
    flags = {key: [layer.gradient_checkpointing for layer in model.model.language_model.layers]
             for key, (model, *_) in runs.items()}
    assert flags == {"half": [False, True], "all": [True, True], "none": [False, False]}
    assert {key: calls for key, (_, calls, *_) in runs.items()} == {"half": [1, 2], "all": [2, 2], "none": [1, 1]}
    assert all(block.gradient_checkpointing for block in runs["half"][0].model.visual.blocks)
    _, _, loss, gradients = runs["half"]
    for _, _, reference_loss, reference_gradients in (runs["all"], runs["none"]):
        torch.testing.assert_close(loss, reference_loss)
        assert gradients.keys() == reference_gradients.keys()
        for key, gradient in gradients.items():
            torch.testing.assert_close(gradient, reference_gradients[key], msg=key)
