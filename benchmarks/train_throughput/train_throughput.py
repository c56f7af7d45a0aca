"""Training-step throughput of the hf backend's step, per optimisation, on the same batch and seed.

    python benchmarks/train_throughput/train_throughput.py --shape 3b \\
        --out benchmarks/train_throughput/results/train_throughput_h200.json
    python benchmarks/train_throughput/train_throughput.py --shape 4b --out ...   # the Qwen3-VL-4B shape
    python benchmarks/train_throughput/train_throughput.py --shape 7b --out ...   # Cosmos-Reason1-7B's shape
    python benchmarks/train_throughput/train_throughput.py --shape 8b --out ...   # Cosmos-Reason2-8B's shape
    python benchmarks/train_throughput/train_throughput.py --shape small-qwen2_5_vl --batch-size 32 --out ...
    python benchmarks/train_throughput/train_throughput.py --shape tiny-qwen2_5_vl --device cpu --steps 3 \\
        --out /tmp/t.json  # dry run

Builds the real model class at a shape from its config (``3b``: the Qwen2.5-VL-3B shape, 3.75B
parameters, baseline figures in docs/recipe.md#reference-figures; ``4b``: the Qwen3-VL-4B shape;
``7b`` / ``8b``: the published Cosmos-Reason1-7B / Cosmos-Reason2-8B shapes; or any built-in model
name),
random weights, and times the step `train` runs: answer-only loss (``models.inputs.answer_loss``),
AdamW, gradient clipping. Samples are 1078 tokens, 576 of them image tokens (a 672x672 image, 48x48
patches), with a 200-token answer. Each variant switches one more optimisation on, as the train
params do (``vision_attention``, ``fused_kernels``, ``gradient_checkpointing``; pure bf16 weights and
``torch.compile`` of each layer are not train params);
every variant starts from the same weights and batch, so its first loss and gradient norm must
equal the baseline's within bf16 resolution (reported as relative differences). ``--profile``
adds a torch.profiler summary (GPU busy time, top kernels, attention kernels) of the baseline and
the last variant.

FLOP/s count the operations that run (``av_grounding.models.flops``: vision tower on its patches,
language model on its tokens, output layer at the positions with logits; forward + backward, the
recomputation of checkpointing apart), per second of the median step; MFU divides them by the
card's dense bf16 matrix-product rate, measured first in the same process (``matmul_peak``: the
best of several timed rounds of a large bf16 product), and by the datasheet rate where the card
is known (``flops.DATASHEET_BF16``). ``model_tflops_6N`` (6 x parameters x tokens, which charges the
output layer and the vision tower for every token) is kept for comparison with older results.
"""

from __future__ import annotations

import argparse
import functools
import json
import platform
import shlex
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from av_grounding.models.flops import DATASHEET_BF16, counts_of_batch, mfu, training_flops
from av_grounding.models.inputs import IGNORE, answer_loss

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: common.py
# device_time stays importable from here (tests/test_flops.py)
from common import device_name, device_time, profile_summary, synchronize, write_json  # noqa: F401

IMAGE_PAD, VISION_START, VISION_END = 151655, 151652, 151653


@dataclass(frozen=True)
class Variant:
    name: str
    vision_attention: str = "per_segment"
    fused_kernels: str = "none"
    gradient_checkpointing: bool = True
    master_fp32: bool = True  # fp32 weights with bf16 autocast, as `train` does; False: pure bf16 weights
    compiled: bool = False  # torch.compile of every vision block and language-model layer (not a train param yet)


VARIANTS = (
    Variant("baseline"),
    Variant("packed_vision", vision_attention="packed"),
    Variant("packed_no_ckpt", vision_attention="packed", gradient_checkpointing=False),
    Variant("packed_no_ckpt_compiled", vision_attention="packed", gradient_checkpointing=False, compiled=True),
    Variant("packed_liger", vision_attention="packed", fused_kernels="liger"),
    Variant("packed_liger_no_ckpt", vision_attention="packed", fused_kernels="liger", gradient_checkpointing=False),
    Variant("packed_liger_no_ckpt_bf16", vision_attention="packed", fused_kernels="liger", gradient_checkpointing=False,
            master_fp32=False),
)
# Liger patches transformers' modeling module (rotary, RMSNorm and MLP classes) for the rest of the
# process, so every variant without Liger must run before the first one with it.
assert [v.fused_kernels for v in VARIANTS] == sorted((v.fused_kernels for v in VARIANTS), key=lambda k: k != "none")


def config_of(shape: str):
    """``3b``: the Qwen2.5-VL-3B shape; ``4b``: the Qwen3-VL-4B shape; ``7b``: Qwen2.5-VL-7B = Cosmos-Reason1-7B
    (8.29B parameters); ``8b``: Qwen3-VL-8B = Cosmos-Reason2-8B (8.77B); all from their published configs
    (the 7B and 8B have untied output layers); else a built-in model name."""
    from transformers import Qwen2_5_VLConfig, Qwen3VLConfig

    from av_grounding.models.builtin import builtin_config

    special = dict(image_token_id=IMAGE_PAD, vision_start_token_id=VISION_START, vision_end_token_id=VISION_END,
                   tie_word_embeddings=True)
    if shape == "3b":
        return Qwen2_5_VLConfig(
            text_config=dict(vocab_size=151936, hidden_size=2048, intermediate_size=11008, num_hidden_layers=36,
                             num_attention_heads=16, num_key_value_heads=2, max_position_embeddings=32768,
                             rope_parameters={"rope_type": "default", "rope_theta": 1000000.0,
                                              "mrope_section": [16, 24, 24]}),
            vision_config=dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, out_hidden_size=2048,
                               fullatt_block_indexes=[7, 15, 23, 31], window_size=112),
            **special)
    if shape == "4b":
        return Qwen3VLConfig(
            text_config=dict(vocab_size=151936, hidden_size=2560, intermediate_size=9728, num_hidden_layers=36,
                             num_attention_heads=32, num_key_value_heads=8, head_dim=128, max_position_embeddings=32768,
                             rope_parameters={"rope_type": "default", "rope_theta": 5000000.0,
                                              "mrope_section": [24, 20, 20], "mrope_interleaved": True}),
            vision_config=dict(depth=24, hidden_size=1024, intermediate_size=4096, num_heads=16, out_hidden_size=2560,
                               patch_size=16, num_position_embeddings=2304, deepstack_visual_indexes=[5, 11, 17]),
            **special)
    if shape in ("7b", "8b"):  # the published shapes, as models/hub.py writes their config.json
        from av_grounding.models.hub import config_object

        return config_object("qwen2_5_vl" if shape == "7b" else "qwen3_vl")
    return builtin_config(shape)


def batch(size: int, patch: int, device: str, grid: int = 48) -> dict[str, torch.Tensor]:
    """``size`` samples of one image of grid x grid patches each (merged 2x2 into image tokens)."""
    generator = torch.Generator().manual_seed(0)
    text_before, answer, image = 300, 200, grid * grid // 4
    total = text_before + 2 + image + answer
    ids = torch.randint(0, 150000, (size, total), generator=generator)
    ids[:, text_before] = VISION_START
    ids[:, text_before + 1: text_before + 1 + image] = IMAGE_PAD
    ids[:, text_before + 1 + image] = VISION_END
    labels = torch.full_like(ids, IGNORE)
    labels[:, -answer:] = ids[:, -answer:]
    return {"input_ids": ids.to(device), "attention_mask": torch.ones_like(ids).to(device),
            "mm_token_type_ids": (ids == IMAGE_PAD).long().to(device), "labels": labels.to(device),
            "pixel_values": torch.randn(size * grid * grid, 3 * 2 * patch * patch, generator=generator).to(device),
            "image_grid_thw": torch.tensor([[1, grid, grid]] * size).to(device)}


def build(shape: str, variant: Variant, device: str):
    from transformers import AutoModelForImageTextToText

    from av_grounding.models.attention import use_packed_vision_attention
    from av_grounding.models.kernels import use_liger_kernels

    torch.manual_seed(0)
    dtype = torch.float32 if variant.master_fp32 else torch.bfloat16
    with torch.device(device):  # random init on the device itself: seconds instead of minutes for 3.75B parameters
        model = AutoModelForImageTextToText.from_config(config_of(shape), dtype=dtype, attn_implementation="sdpa")
    if variant.vision_attention == "packed":
        use_packed_vision_attention(model)
    if variant.fused_kernels == "liger":
        use_liger_kernels(model)
    if variant.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    if variant.compiled:  # layer by layer: identical layers share one compiled graph
        for layer in (*model.model.visual.blocks, *model.model.language_model.layers):
            layer.compile()
    model.config.use_cache = False
    return model


def step(model, optimizer, inputs, autocast: bool, device: str) -> tuple[float, float]:
    with torch.autocast(device.split(":")[0], dtype=torch.bfloat16, enabled=autocast):
        loss = answer_loss(model, inputs)
    loss.backward()
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return float(loss.detach()), float(norm)


def matmul_peak(device: str, size: int = 8192, rounds: int = 5, repeats: int = 20) -> float:
    """The card's dense bf16 matrix-product rate in FLOP/s: the best of ``rounds`` timings (CUDA events)
    of ``repeats`` products of two size x size bf16 matrices (2 size^3 FLOPs each), after a warm-up.
    On a CPU (a dry run) fp32, timed with the host clock."""
    cuda = device.startswith("cuda")
    dtype = torch.bfloat16 if cuda else torch.float32
    a, b = (torch.randn(size, size, device=device, dtype=dtype) for _ in range(2))
    for _ in range(3):
        a @ b
    best = float("inf")
    for _ in range(rounds):
        synchronize(device)
        if cuda:
            begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            begin.record()
            for _ in range(repeats):
                a @ b
            end.record()
            end.synchronize()
            seconds = begin.elapsed_time(end) / 1e3
        else:
            started = time.perf_counter()
            for _ in range(repeats):
                a @ b
            seconds = time.perf_counter() - started
        best = min(best, seconds)
    return 2 * size ** 3 * repeats / best


def flops_report(config, inputs, variant: Variant, steady: float, peak: float, datasheet: float | None) -> dict:
    """FLOPs per sample by part, FLOP/s of the median step and MFU (module docstring)."""
    size = inputs["input_ids"].shape[0]
    flops = training_flops(config, counts_of_batch(inputs), checkpointing=variant.gradient_checkpointing)
    report = {"tflop_per_sample": {k: round(v / size / 1e12, 4) for k, v in flops.as_dict().items()},
              "tflops": round(flops.total / steady / 1e12, 2),
              "tflops_with_recompute": round((flops.total + flops.recomputed) / steady / 1e12, 2),
              "mfu_measured_peak": round(mfu(flops.total, steady, peak), 4)}
    if datasheet:
        report["mfu_datasheet"] = round(mfu(flops.total, steady, datasheet), 4)
    return report


def run(shape: str, variant: Variant, size: int, steps: int, device: str, with_profile: bool, peak: float,
        datasheet: float | None = None) -> dict:
    """One variant: build, ``steps`` timed steps (median of the steps after the first two), optional
    profile; ``peak`` (FLOP/s, measured) and ``datasheet`` (FLOP/s or None) for MFU."""
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    model = build(shape, variant, device)
    params = sum(p.numel() for p in model.parameters())
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=device.startswith("cuda"))
    inputs = batch(size, model.config.vision_config.patch_size, device)
    inputs["pixel_values"] = inputs["pixel_values"].to(next(model.parameters()).dtype)
    autocast = variant.master_fp32 and device != "cpu"
    times, first = [], None
    for _ in range(steps):
        synchronize(device)
        started = time.perf_counter()
        result = step(model, optimizer, inputs, autocast, device)
        synchronize(device)
        times.append(time.perf_counter() - started)
        first = first or result
    steady = sorted(times[2:] or times)[len(times[2:] or times) // 2]
    tokens = size * inputs["input_ids"].shape[1]
    report = {**asdict(variant), "batch_size": size, "parameters": params, "tokens_per_sample": tokens // size,
              "step_s_median": round(steady, 4), "samples_per_s": round(size / steady, 2),
              **flops_report(model.config, inputs, variant, steady, peak, datasheet),
              "model_tflops_6N": round(6 * params * tokens / steady / 1e12, 2),  # older figures' count, see docstring
              "first_loss": first[0], "first_grad_norm": first[1],
              "peak_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 1) if device != "cpu" else None}
    if with_profile:
        report["profile"] = profile_summary(functools.partial(step, model, optimizer, inputs, autocast, device), device)
    del model, optimizer
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True)
    parser.add_argument("--shape", default="3b", help="3b, 4b, 7b, 8b or a built-in model name (small-qwen3_vl, ...)")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--variants", default=",".join(v.name for v in VARIANTS))
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--peak-size", type=int, help="matrix side of the bf16 rate measurement (8192; 512 on a CPU)")
    args = parser.parse_args()
    import transformers

    chosen = [v for v in VARIANTS if v.name in args.variants.split(",")]
    card = device_name(args.device)
    peak_size = args.peak_size or (8192 if args.device.startswith("cuda") else 512)
    peak = matmul_peak(args.device, peak_size)  # before any model: the card to itself
    datasheet = DATASHEET_BF16.get(card) if args.device.startswith("cuda") else None
    report = {"command": shlex.join(["python", *sys.argv]), "device": card,
              "torch": torch.__version__, "transformers": transformers.__version__,
              "python": platform.python_version(), "shape": args.shape,
              "peak_tflops_measured": round(peak / 1e12, 1),
              "peak_measured_as": f"best of 5 rounds of 20 {peak_size}x{peak_size} "
                                  f"{'bf16' if args.device.startswith('cuda') else 'fp32'} matrix products",
              "peak_tflops_datasheet": datasheet and round(datasheet / 1e12, 1), "runs": []}
    print(json.dumps({k: v for k, v in report.items() if k != "runs"}), flush=True)
    for index, variant in enumerate(chosen):
        profile = args.profile and index in (0, len(chosen) - 1)
        try:
            result = run(args.shape, variant, args.batch_size, args.steps, args.device, profile, peak, datasheet)
        except Exception as exc:  # noqa: BLE001 - one variant failing (out of memory, a kernel's version) leaves the others
            result = {**asdict(variant), "error": f"{type(exc).__name__}: {str(exc)[:300]}"}
        base = report["runs"][0] if report["runs"] else result
        if "first_loss" in result and "first_loss" in base:
            result["loss_rel_diff"] = abs(result["first_loss"] - base["first_loss"]) / abs(base["first_loss"])
            result["grad_norm_rel_diff"] = (abs(result["first_grad_norm"] - base["first_grad_norm"])
                                            / base["first_grad_norm"])
        report["runs"].append(result)
        print(json.dumps({k: v for k, v in result.items() if k != "profile"}), flush=True)
        write_json(args.out, report)  # after every variant: a run stopped early keeps what it measured


if __name__ == "__main__":
    main()
