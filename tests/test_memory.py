"""The memory pre-check of training (``training.memory``): exact static bytes, an activation
estimate that checkpointing lowers (the more decoder layers it recomputes, the lower), the weight
casts of autocast, the stochastic update's scratch, and a refusal that names every part."""

from __future__ import annotations

import dataclasses
import itertools
from types import SimpleNamespace

import pytest
import torch

from av_grounding.models import hub
from av_grounding.params import ParamsError
from av_grounding.training.memory import (
    GIB,
    UPDATE_SCRATCH_BYTES,
    WORKSPACE_BYTES,
    MemoryEstimate,
    activation_bytes,
    cast_bytes,
    check_fits,
    estimate,
    vision_activation_bytes,
)
from av_grounding.training.optim import UPDATE_CHUNK


def meta_model(model_type: str, weights: str = "full"):
    """The published shape on the meta device (no memory), fp32 as the train stage loads it."""
    from transformers import AutoModelForImageTextToText

    config = hub.config_object(model_type, weights)
    with torch.device("meta"):
        return AutoModelForImageTextToText.from_config(config, dtype=torch.float32)


@pytest.mark.parametrize("model_type, parameters", [("qwen2_5_vl", 8_292_166_656), ("qwen3_vl", 8_767_123_696)])
def test_full_fine_tuning_of_the_published_shapes_keeps_16_bytes_a_parameter(model_type, parameters):
    """fp32 weights, fp32 gradients and two fp32 AdamW moments: the 7B shape's 123.6 GiB is the
    measured 124 GiB peak with checkpointing on one H200 (issue 24) less its activations."""
    model = meta_model(model_type)
    needed = estimate(model, checkpointing=True, tokens=4 * 1078, patches=4 * 4 * 441, labelled=4 * 200)
    assert (needed.weights, needed.gradients, needed.optimizer) == (4 * parameters, 4 * parameters, 8 * parameters)
    without = estimate(model, checkpointing=False, tokens=4 * 1078, patches=4 * 4 * 441, labelled=4 * 200)
    assert needed.activations < without.activations < 60 * GIB


def test_the_7b_run_that_ran_out_of_memory_is_estimated_with_its_weight_casts():
    """The first `train` run on the 7B folder (one H200, cr1-cosmos-rl, checkpointing; the
    pre-check's four largest samples of that run's dataset: 1,840 tokens, 720 patches, 1,104
    labelled positions) was estimated at 126.4 GiB without the casts and ran out in its second
    step with autocast's weight cache on, which held a bf16 copy of every trainable linear
    weight: the casts without checkpointing. With the cache off and checkpointing, only the
    copies outside the blocks (the output layer and the vision merger) and one block's remain."""
    model = meta_model("qwen2_5_vl")
    linear = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    assert cast_bytes(model, checkpointing=False) == 2 * linear  # 14.4 GiB: what the cache held
    assert round(cast_bytes(model, checkpointing=False) / GIB, 1) == 14.4
    output_layer = model.lm_head.weight.numel()
    assert 2 * output_layer < cast_bytes(model, checkpointing=True) < 2 * GIB
    run = {"tokens": 1840, "patches": 720, "labelled": 1104}
    without_casts = estimate(model, checkpointing=True, autocast=False, **run)
    assert without_casts.casts == 0  # the run's log: 126.4 GiB, before the workspace was counted
    assert round((without_casts.total - WORKSPACE_BYTES) / GIB, 1) == 126.4
    needed = estimate(model, checkpointing=True, **run)
    assert needed.casts == cast_bytes(model, checkpointing=True)
    # the second 7B run (the casts counted, the same largest micro-batch) peaked at 128.09 GiB
    assert round((needed.total - WORKSPACE_BYTES) / GIB, 1) == 127.9 < 128.09 < needed.total / GIB


def test_bf16_weights_have_no_casts_and_the_stochastic_update_needs_scratch_after_the_forward():
    model = meta_model("qwen3_vl", "tiny").to(torch.bfloat16)
    assert cast_bytes(model, checkpointing=False) == 0
    needed = estimate(model, checkpointing=False, tokens=100, patches=80, labelled=10, stochastic_update=True)
    largest = max(p.numel() for p in model.parameters())
    assert needed.update_scratch == UPDATE_SCRATCH_BYTES * largest
    # scratch and activations are not alive together: the peak takes the larger one
    static = needed.weights + needed.gradients + needed.optimizer + WORKSPACE_BYTES
    assert needed.total == static + max(needed.activations, needed.update_scratch)
    parameters = sum(p.numel() for p in model.parameters())
    assert (needed.weights, needed.gradients, needed.optimizer) == (2 * parameters, 2 * parameters, 4 * parameters)


def test_the_stochastic_update_of_the_8b_shape_needs_one_piece_of_scratch():
    """The first bf16 stochastic-rounding run of the 8B folder (one H100, batch 2, checkpointing)
    was refused at 84.4 GiB: 19.1 GiB of it the scratch of updating the 622M-element embedding
    at once. Updated in pieces of ``UPDATE_CHUNK`` elements, the scratch is 0.75 GiB."""
    model = meta_model("qwen3_vl").to(torch.bfloat16)
    needed = estimate(model, checkpointing=True, tokens=2 * 1078, patches=2 * 4 * 441, labelled=2 * 200,
                      stochastic_update=True)
    assert max(p.numel() for p in model.parameters()) > UPDATE_CHUNK
    assert needed.update_scratch == UPDATE_SCRATCH_BYTES * UPDATE_CHUNK < GIB
    assert needed.total < 70 * GIB  # fits an H100's 79.2 GiB


def test_frozen_parts_need_no_gradients_or_optimizer_state():
    model = meta_model("qwen2_5_vl", "tiny")
    everything = estimate(model, checkpointing=False, tokens=100, patches=80, labelled=10)
    for parameter in model.model.visual.parameters():
        parameter.requires_grad_(False)
    frozen = sum(p.numel() for p in model.model.visual.parameters()) * 4
    language_only = estimate(model, checkpointing=False, tokens=100, patches=80, labelled=10)
    assert everything.gradients - language_only.gradients == frozen
    assert everything.optimizer - language_only.optimizer == 2 * frozen
    assert language_only.weights == everything.weights


def test_a_run_that_does_not_fit_is_refused_with_its_parts():
    needed = MemoryEstimate(weights=40 * GIB, gradients=40 * GIB, optimizer=80 * GIB, activations=3 * GIB)
    with pytest.raises(ParamsError, match=r"about 163.0 GiB \(weights 40.0, gradients 40.0, optimizer 80.0, "
                                          r"activations 3.0 GiB\) per step, but NVIDIA H200 has 139.8 GiB: "
                                          r".*train.lora"):
        check_fits(needed, int(139.8 * GIB), "NVIDIA H200")
    check_fits(needed, 164 * GIB, "NVIDIA H200")


def test_activations_of_a_share_of_checkpointed_decoder_layers_by_hand():
    """Hidden 10 / MLP 20 (420 bytes a token and block) over 4 decoder layers, hidden 6 / MLP 8
    (212 bytes a patch and block) over 2 vision blocks; 3 tokens, 5 patches, 2 labelled positions
    (2,000 bytes of logits). Each checkpointed layer keeps 4 x 10 bytes a token instead of 420;
    the largest recomputed block's working set (a decoder layer's 1,260 bytes, or at share 0 a
    vision block's 1,060) comes on top."""
    text = SimpleNamespace(hidden_size=10, intermediate_size=20, num_hidden_layers=4, vocab_size=100)
    vision = SimpleNamespace(hidden_size=6, intermediate_size=8, depth=2)
    config = SimpleNamespace(text_config=text, vision_config=vision)

    def activations(checkpointing: bool, fraction: float = 1.0) -> int:
        return activation_bytes(config, tokens=3, patches=5, labelled=2, checkpointing=checkpointing,
                                checkpoint_fraction=fraction)

    assert activations(False) == 4 * 1260 + 2 * 1060 + 2000 == 9160
    vision_inputs = 2 * 4 * 6 * 5
    assert activations(True, 1.0) == 4 * 120 + vision_inputs + 1260 + 2000 == 3980  # as before the share
    assert activations(True, 0.75) == 3 * 120 + 1 * 1260 + vision_inputs + 1260 + 2000 == 5120
    assert activations(True, 0.5) == 2 * 120 + 2 * 1260 + vision_inputs + 1260 + 2000 == 6260
    assert activations(True, 0.25) == 1 * 120 + 3 * 1260 + vision_inputs + 1260 + 2000 == 7400
    assert activations(True, 0.0) == 4 * 1260 + vision_inputs + 1060 + 2000 == 8340


def test_unchecked_decoder_layers_keep_their_weight_casts():
    """The 8B shape: a Qwen3-VL decoder layer has 192,937,984 linear weights (q and o 4096 x 4096,
    k and v 1024 x 4096, the MLP 3 x 4096 x 12288), a vision block 15,224,832 (qkv 3 x 1152^2,
    projection 1152^2, MLP 2 x 1152 x 4304). Each unchecked layer keeps its bf16 copy; at share
    0 the largest recomputed block is a vision block."""
    model = meta_model("qwen3_vl")
    layer, block = 192_937_984, 15_224_832
    assert sum(m.weight.numel() for m in model.model.language_model.layers[0].modules()
               if isinstance(m, torch.nn.Linear)) == layer
    full = cast_bytes(model, checkpointing=True)
    assert cast_bytes(model, checkpointing=True, checkpoint_fraction=1.0) == full
    assert cast_bytes(model, checkpointing=True, checkpoint_fraction=0.5) - full == 2 * 18 * layer
    assert cast_bytes(model, checkpointing=True, checkpoint_fraction=0.0) - full == 2 * (36 * layer - layer + block)
    assert cast_bytes(model, checkpointing=True, checkpoint_fraction=0.0) < cast_bytes(model, checkpointing=False)


def test_the_estimate_falls_as_the_checkpointed_share_grows():
    """The 8B shape in bf16 with stochastic rounding at 16 samples a micro-batch: every decoder
    layer more that recomputes lowers the estimate; share 0 (the vision blocks alone) stays below
    no checkpointing, share 1 is full checkpointing."""
    model = meta_model("qwen3_vl").to(torch.bfloat16)
    run = {"tokens": 16 * 1078, "patches": 16 * 4 * 441, "labelled": 16 * 200, "stochastic_update": True}
    totals = [estimate(model, checkpointing=True, checkpoint_fraction=k / 36, **run).total for k in range(37)]
    assert all(a > b for a, b in itertools.pairwise(totals))
    assert totals[0] < estimate(model, checkpointing=False, **run).total
    assert totals[-1] == estimate(model, checkpointing=True, **run).total


def test_one_micro_batch_a_step_holds_no_gradients_during_its_forward():
    """The 8B folder's bf16 run at 16 x 1 on an H100 (h100-calls/profile-fused/cr2-bf16sr-mb16):
    the pre-check, counting gradients beside the forward's 13.2 GiB of activations, said 79.0 GiB;
    the run peaked at 66.78. With one micro-batch a step the peak is the backward's end or the
    update: the gradients plus the largest one's making (the embedding's, 1.16 GiB) or the
    update's scratch."""
    model = meta_model("qwen3_vl").to(torch.bfloat16)
    run = {"tokens": 16 * 700, "patches": 16 * 4 * 220, "labelled": 16 * 60, "stochastic_update": True}
    logged = {"activations": int(13.2 * GIB)}  # the run's log: activations 13.2 GiB
    accumulating = dataclasses.replace(estimate(model, checkpointing=True, **run), **logged)
    single = dataclasses.replace(estimate(model, checkpointing=True, accumulating=False, **run), **logged)
    assert round(accumulating.total / GIB, 1) == 79.0
    assert single.largest_gradient == model.model.language_model.embed_tokens.weight.numel() * 2
    static = single.weights + single.gradients + single.optimizer + single.workspace
    # the backward's end: the first decoder layer's recomputation and the vision tower's held
    # inputs (fp32 counted; these weights are bf16) above the largest gradient, with every
    # gradient made but the vision tower's and the embedding's
    assert single.backward_end > max(single.largest_gradient, single.update_scratch)
    assert single.total == static + single.backward_end
    assert 66.78 < single.total / GIB < 69
    # activations above the gradients make the forward side the peak
    heavy = dataclasses.replace(single, activations=40 * GIB)
    assert heavy.total == heavy.weights + heavy.optimizer + heavy.workspace + 40 * GIB + heavy.largest_gradient


def test_the_plain_update_allocates_at_most_its_counted_scratch():
    """``adamw_piece`` unfused on a bf16 piece, its allocations and frees from torch's profiler
    in time order: the peak above the inputs stays within ``UPDATE_SCRATCH_BYTES`` an element."""
    from torch.profiler import ProfilerActivity, profile

    from av_grounding.training.optim import adamw_piece, noise_key

    n = 1 << 18
    weight, grad, exp_avg, exp_avg_sq = (torch.randn(n).bfloat16() for _ in range(4))
    exp_avg_sq.abs_()
    scalars = torch.tensor([1.0, 0.1, 0.999, 0.001, 1.0, 1e-8, -1e-3])
    counters = torch.tensor([noise_key(0, 0, 1), 0], dtype=torch.int32)
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        adamw_piece(weight, grad, exp_avg, exp_avg_sq, counters, scalars)
    changes = sorted((e.time_range.start, e.cpu_memory_usage if e.name == "[memory]" else e.self_cpu_memory_usage)
                     for e in prof.events() if e.name == "[memory]" or e.self_cpu_memory_usage > 0)
    levels = list(itertools.accumulate(change for _, change in changes))
    assert 16 * n < max(levels) <= UPDATE_SCRATCH_BYTES * n  # at least the fp32 copies, at most the count


def test_data_parallel_and_the_backwards_end_keep_the_gradients_counted(monkeypatch):
    """One micro-batch a step in one process holds no gradients in its forward; in data parallel
    (world 2) DistributedDataParallel's gradient buckets stay allocated, so ``check_memory``
    counts them as held. And when what the backward's end holds (the first decoder layer's
    backward, the vision tower's still to run) exceeds the largest gradient, that is what the
    estimate takes."""
    from av_grounding.params import TrainParams
    from av_grounding.training import hf, memory

    model = meta_model("qwen3_vl").to(torch.bfloat16)
    text = SimpleNamespace(input_ids=[model.config.image_token_id] * 220 + [1] * 200, labels=[1] * 60 + [-100] * 360)
    examples = [(None, text)] * 16
    params = TrainParams(batch_size=16, grad_accum=1, precision="bf16_stochastic", gradient_checkpointing=True)
    seen = []
    monkeypatch.setattr(memory, "check_fits", lambda needed, available, device: seen.append(needed))
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: SimpleNamespace(total_memory=80 * GIB))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device: "a card")
    for world in (1, 2):
        hf.check_memory(model, params, examples, "cuda:0", world)
    single, parallel = seen
    assert not single.accumulating and parallel.accumulating
    assert parallel == dataclasses.replace(single, accumulating=True) and parallel.total > single.total
    later = dataclasses.replace(single, backward_end=single.backward_end + GIB)
    assert later.total == single.total + GIB  # the backward's end is the peak here
    assert "one micro-batch a step" in single.describe() and "largest gradient 1.2" in single.describe()


def test_the_backwards_end_counts_the_gradients_not_yet_made():
    """``backward_end_bytes``: the gradients of the vision tower and the input embedding are made
    after the first decoder layer's backward, so freezing them raises what that moment holds
    beside the gradients by exactly their bytes; the layer's fp32 weight casts count under
    autocast only, and its fp32 input under checkpointing only."""
    from av_grounding.training.memory import backward_end_bytes

    model = meta_model("qwen3_vl").to(torch.bfloat16)
    shape = {"tokens": 16 * 1078, "patches": 16 * 4 * 441}  # enough for more than the late gradients
    trained = backward_end_bytes(model, checkpointing=True, autocast=True, **shape)
    late = [p for name, p in model.named_parameters() if ".visual." in f".{name}"]
    late += list(model.get_input_embeddings().parameters())
    for p in late:
        p.requires_grad_(False)
    frozen = backward_end_bytes(model, checkpointing=True, autocast=True, **shape)
    assert frozen - trained == sum(p.numel() * p.element_size() for p in late) > 0 and trained > 0
    hidden = model.config.text_config.hidden_size
    assert frozen - backward_end_bytes(model, checkpointing=False, autocast=True, **shape) == (
        4 * hidden * shape["tokens"] + vision_activation_bytes(model.config, shape["patches"], True)
        - vision_activation_bytes(model.config, shape["patches"], False))
    assert backward_end_bytes(model, checkpointing=True, autocast=False, **shape) == frozen  # bf16: no casts
    fp32 = meta_model("qwen3_vl")
    for p in fp32.parameters():
        p.requires_grad_(False)
    casts = 2 * sum(m.weight.numel() for m in fp32.get_decoder().layers[0].modules() if isinstance(m, torch.nn.Linear))
    assert (backward_end_bytes(fp32, checkpointing=True, autocast=True, **shape)
            - backward_end_bytes(fp32, checkpointing=True, autocast=False, **shape)) == casts > 0
