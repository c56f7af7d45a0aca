"""FLOPs counted from the operations (``models/flops.py``) against PyTorch's own count
(``torch.utils.flop_counter.FlopCounterMode``: matrix products, convolutions and attention
kernels) on the tiny models of both architectures, forward, forward + backward and under
activation checkpointing (of every decoder layer or a share of them); Qwen2.5-VL's window layout
against transformers'; the throughput benchmark's device time counted once.

The models run with ``eager`` attention: on a CPU, SDPA's kernel has no FLOP formula in
FlopCounterMode (it would count 0), while eager attention's two matrix products are counted
over the full square, as SDPA's CUDA kernels are. The one product FlopCounterMode sees and the
module leaves out is the language model's rotary table (``inv_freq @ positions``: 3 x rows x
head_dim / 2 x tokens multiply-adds, under 0.1 % here); norms, activations and softmax are
counted by neither."""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils.flop_counter import FlopCounterMode

from av_grounding.models import hub
from av_grounding.models.builtin import SPECIAL_TOKENS, builtin_config
from av_grounding.models.checkpointing import use_checkpointing
from av_grounding.models.flops import (
    Flops,
    StepCounts,
    counts_of_batch,
    forward_flops,
    language_flops,
    layer_flops,
    mfu,
    training_flops,
    vision_flops,
    window_lengths,
)
from av_grounding.models.inputs import IGNORE, Encoded, answer_loss, collate

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks" / "train_throughput"  # train_throughput.py
TOLERANCE = 0.01  # relative; the rotary table is the only difference (module docstring)

# Per sample: (patch grid t, h, w; text tokens before the image; answer tokens). The first set has
# Qwen2.5-VL windows cut by the grid's edge (12 x 20 patches: 6 x 10 merged, windows of 4) and two
# lengths, so the shorter row is padded; the second one square image.
SHAPES = {"edge_windows_padded": (((1, 12, 20), 30, 10), ((1, 8, 8), 50, 7)),
          "one_square_image": (((1, 16, 16), 5, 3),)}


@pytest.fixture(scope="module", params=["tiny-qwen2_5_vl", "tiny-qwen3_vl"])
def model(request):
    from transformers import AutoModelForImageTextToText

    torch.manual_seed(0)
    built = AutoModelForImageTextToText.from_config(builtin_config(request.param), attn_implementation="eager")
    built.config.use_cache = False
    return built


def encoded(config, grid: tuple[int, int, int], before: int, answer: int, generator) -> Encoded:
    """A sample of random text around one image of ``grid`` patches, the last ``answer`` tokens labelled."""
    v = config.vision_config
    t, h, w = grid
    image = t * h * w // v.spatial_merge_size ** 2
    ids = torch.randint(0, 1000, (before + 2 + image + answer,), generator=generator)
    ids[before] = SPECIAL_TOKENS["<|vision_start|>"]
    ids[before + 1: before + 1 + image] = SPECIAL_TOKENS["<|image_pad|>"]
    ids[before + 1 + image] = SPECIAL_TOKENS["<|vision_end|>"]
    labels = torch.full_like(ids, IGNORE)
    labels[-answer:] = ids[-answer:]
    pixels = torch.randn(t * h * w, v.in_channels * v.temporal_patch_size * v.patch_size ** 2, generator=generator)
    return Encoded(ids.tolist(), labels.tolist(), pixels, torch.tensor([grid]))


def batch_of(config, shape: str) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    samples = [encoded(config, *sample, generator) for sample in SHAPES[shape]]
    return collate(samples, SPECIAL_TOKENS["<|endoftext|>"], SPECIAL_TOKENS["<|image_pad|>"])


def counted(model, inputs, backward: bool) -> FlopCounterMode:
    with FlopCounterMode(display=False) as counter:
        loss = answer_loss(model, inputs)
        if backward:
            loss.backward()
    model.zero_grad(set_to_none=True)
    return counter


def by_module(counter: FlopCounterMode) -> dict[str, int]:
    """FlopCounterMode's totals per module path, without the top-level class name."""
    return {name.partition(".")[2]: sum(ops.values()) for name, ops in counter.get_flop_counts().items()}


@pytest.mark.parametrize("shape", SHAPES)
def test_forward_flops_per_part_equal_flop_counter_mode(model, shape):
    inputs = batch_of(model.config, shape)
    counts = counts_of_batch(inputs)
    ours = forward_flops(model.config, counts)
    theirs = by_module(counted(model, inputs, backward=False))
    deepstack = getattr(model.config.vision_config, "deepstack_visual_indexes", [])  # Qwen3-VL's extra mergers
    mergers = theirs["model.visual.merger"] + sum(theirs[f"model.visual.deepstack_merger_list.{i}"]
                                                  for i in range(len(deepstack)))
    assert ours.merger == mergers
    assert ours.vision + ours.merger == theirs["model.visual"]  # patch embedding, blocks and mergers
    assert ours.language == pytest.approx(theirs["model.language_model"], rel=TOLERANCE)
    assert ours.output == theirs["lm_head"]
    assert ours.total == pytest.approx(theirs[""], rel=TOLERANCE)


@pytest.mark.parametrize("shape", SHAPES)
def test_training_step_flops_equal_flop_counter_mode(model, shape):
    """Backward FLOPs land on other modules in FlopCounterMode's per-module view, so the whole
    step is compared: 3 x forward, the patch embedding 2 x."""
    inputs = batch_of(model.config, shape)
    plain = training_flops(model.config, counts_of_batch(inputs))
    assert plain.recomputed == 0
    assert plain.total == pytest.approx(counted(model, inputs, backward=True).get_total_flops(), rel=TOLERANCE)


@pytest.mark.parametrize("fraction", [1.0, 0.5, 0.0])
def test_recomputation_under_checkpointing_equals_flop_counter_mode(model, fraction):
    """transformers' (non-reentrant) checkpointing re-runs each vision block and checkpointed
    decoder layer (of the tiny models' two: both, the second, none) but its MLP's last product;
    the recomputation is reported apart from the step's total."""
    inputs = batch_of(model.config, "edge_windows_padded")
    counts = counts_of_batch(inputs)
    use_checkpointing(model, fraction)
    try:
        model.train()
        with_recompute = counted(model, inputs, backward=True).get_total_flops()
    finally:
        model.gradient_checkpointing_disable()
    ours = training_flops(model.config, counts, checkpointing=True, checkpoint_fraction=fraction)
    assert ours.total == training_flops(model.config, counts).total and ours.recomputed > 0
    assert ours.total + ours.recomputed == pytest.approx(with_recompute, rel=TOLERANCE)


@pytest.mark.parametrize("model_type", ["qwen2_5_vl", "qwen3_vl"])
def test_recomputation_follows_the_checkpointed_share_of_decoder_layers(model_type):
    """At the published shapes (28 and 36 decoder layers, 32 and 27 vision blocks): at share 0
    the vision blocks alone recompute, at 1 every layer as well (the count before the share
    existed), and in between each checkpointed layer adds one layer's forward but its MLP output
    projection."""
    config = hub.config_object(model_type)
    v, c = config.vision_config, config.text_config
    counts = StepCounts(((1, 32, 48), (1, 24, 24)), (1078, 700), 400)
    _, blocks, _ = vision_flops(config, counts.grids)
    patches, tokens = 32 * 48 + 24 * 24, 1078 + 700
    vision = blocks - v.depth * 2 * patches * v.intermediate_size * v.hidden_size
    layer = layer_flops(config, counts.tokens) - 2 * tokens * c.intermediate_size * c.hidden_size
    assert language_flops(config, counts.tokens) == c.num_hidden_layers * layer_flops(config, counts.tokens)

    def recomputed(fraction: float) -> int:
        return training_flops(config, counts, checkpointing=True, checkpoint_fraction=fraction).recomputed

    assert recomputed(0.0) == vision > 0
    assert recomputed(1.0) == vision + c.num_hidden_layers * layer  # blocks + language - their last products
    for fraction in (0.25, 1 / 3, 0.5, 0.9):
        assert recomputed(fraction) == vision + int(c.num_hidden_layers * fraction) * layer
    assert training_flops(config, counts, checkpoint_fraction=0.5).recomputed == 0  # no checkpointing


def test_counts_of_batch_follow_padding_and_answer_loss_positions():
    config = builtin_config("tiny-qwen2_5_vl")
    inputs = batch_of(config, "edge_windows_padded")
    counts = counts_of_batch(inputs)
    width = inputs["input_ids"].shape[1]
    assert counts.grids == ((1, 12, 20), (1, 8, 8))
    assert counts.tokens == (width, width)  # the shorter row runs on its padding too
    # The answers (10 and 7 tokens) end at different positions: logits at the labelled pairs alone.
    assert counts.output_positions == 10 + 7


@settings(max_examples=60, deadline=None)
@given(t=st.integers(1, 2), h=st.integers(1, 20), w=st.integers(1, 20), window=st.sampled_from([56, 112, 224]))
def test_window_lengths_equal_transformers_window_layout(t, h, w, window):
    from transformers.vision_utils import get_vision_window_index

    grid = (t, 2 * h, 2 * w)
    _, boundaries = get_vision_window_index(torch.tensor([grid]), spatial_merge_size=2, window_size=window,
                                            patch_size=14)
    assert window_lengths(grid, window, 14, 2) == torch.diff(boundaries).tolist()


def test_causal_attention_counts_the_lower_triangle():
    config = builtin_config("tiny-qwen3_vl")
    c = config.text_config
    width = c.num_attention_heads * c.head_dim
    square, causal = (language_flops(config, [10, 3], causal=flag) for flag in (False, True))
    pairs_dropped = (100 - 55) + (9 - 6)
    assert square - causal == c.num_hidden_layers * 4 * pairs_dropped * width


def test_published_shapes_per_sample():
    """Cosmos-Reason1-7B's shape at the benchmark's samples (1,078 tokens, a 48 x 48 patch image,
    200 answer tokens): the language model dominates, the vision tower on its 2,304 patches is a
    sixth, the output layer at 200 positions about 1 %."""
    sys.path.insert(0, str(BENCHMARKS))
    from train_throughput import batch, config_of

    config = config_of("7b")
    flops = training_flops(config, counts_of_batch(batch(4, config.vision_config.patch_size, "cpu"))).scaled(1 / 4)
    assert flops.total == pytest.approx(53.5e12, rel=1e-3)
    assert flops.language / flops.total == pytest.approx(0.815, abs=0.005)
    assert flops.vision / flops.total == pytest.approx(0.170, abs=0.005)
    assert flops.output / flops.total == pytest.approx(0.012, abs=0.001)


def test_errors_name_the_problem():
    config = builtin_config("tiny-qwen2_5_vl")
    with pytest.raises(ValueError, match="model_type"):
        forward_flops(SimpleNamespace(model_type="llava"), StepCounts(((1, 2, 2),), (4,), 1))
    with pytest.raises(ValueError, match="must be positive"):
        forward_flops(config, StepCounts(((0, 2, 2),), (4,), 1))
    with pytest.raises(ValueError, match="positive time"):
        mfu(1e12, 0, 1e15)
    assert mfu(4e14, 1.0, 8e14) == 0.5
    assert Flops(1, 2, 3, 4, recomputed=5).total == 10


def fake_event(device: str, start: float, end: float, annotation: bool = False) -> SimpleNamespace:
    return SimpleNamespace(device_type=SimpleNamespace(name=device), is_user_annotation=annotation,
                           time_range=SimpleNamespace(start=start, end=end))


def test_benchmark_counts_device_time_once():
    """Host operators (whose self device time repeats their kernels) and GPU-side annotations are
    left out; overlapping kernels count once in the busy time."""
    sys.path.insert(0, str(BENCHMARKS))
    from train_throughput import device_time

    events = [fake_event("CPU", 0, 100),  # aten::mm, launching the first kernel
              fake_event("CUDA", 10, 30), fake_event("CUDA", 20, 40), fake_event("CUDA", 60, 70),
              fake_event("CUDA", 0, 100, annotation=True)]  # e.g. Optimizer.step on the GPU timeline
    kernels, busy = device_time(events)
    assert kernels == pytest.approx(50e-6) and busy == pytest.approx(40e-6)


def test_benchmark_reports_flops_mfu_and_a_profile_on_cpu():
    sys.path.insert(0, str(BENCHMARKS))
    from train_throughput import VARIANTS, batch, config_of, flops_report, matmul_peak, profile_summary

    peak = matmul_peak("cpu", size=64, rounds=2, repeats=2)
    assert peak > 0
    config = config_of("tiny-qwen3_vl")
    inputs = batch(2, config.vision_config.patch_size, "cpu", grid=8)
    report = flops_report(config, inputs, VARIANTS[0], 1e-3, 1e12, 989e12)
    total = training_flops(config, counts_of_batch(inputs)).total
    assert report["tflops"] == round(total / 1e-3 / 1e12, 2)
    assert report["mfu_measured_peak"] == round(total / 1e-3 / 1e12, 4)
    assert report["tflops_with_recompute"] > report["tflops"]  # the baseline checkpoints
    summary = profile_summary(lambda: torch.ones(8) @ torch.ones(8), "cpu")
    assert summary["gpu_busy_s"] == 0 and summary["gpu_kernel_s"] == 0 and summary["wall_s"] > 0
