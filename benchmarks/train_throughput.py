"""Training-step throughput of the hf backend's step on a GPU, Qwen2.5-VL-3B shape, random init.

    python benchmarks/train_throughput.py --out benchmarks/results/train_throughput_h100.json

Builds the real Qwen2_5_VLForConditionalGeneration at the 3B shape (3.75B parameters; baseline
in docs/recipe.md#reference-figures) from its config, random weights, and times the same step
`train` runs: answer-only loss from ``training.collate.answer_loss``, AdamW, gradient clipping,
gradient checkpointing.
Samples are 1078 tokens, 576 of them image tokens (a 672x672 image), with a 200-token answer.
Modes: fp32 master weights with bf16 autocast (what `train` does) and pure bf16 weights.
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import torch

from av_grounding.training.collate import IGNORE, answer_loss

IMAGE_PAD, VISION_START, VISION_END = 151655, 151652, 151653


def config_3b():
    from transformers import Qwen2_5_VLConfig

    return Qwen2_5_VLConfig(
        text_config=dict(vocab_size=151936, hidden_size=2048, intermediate_size=11008, num_hidden_layers=36,
                         num_attention_heads=16, num_key_value_heads=2, max_position_embeddings=32768,
                         rope_parameters={"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [16, 24, 24]}),
        vision_config=dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, out_hidden_size=2048,
                           fullatt_block_indexes=[7, 15, 23, 31], window_size=112),
        image_token_id=IMAGE_PAD, vision_start_token_id=VISION_START, vision_end_token_id=VISION_END,
        tie_word_embeddings=True)


def batch(size: int, device: str) -> dict[str, torch.Tensor]:
    grid = torch.tensor([[1, 48, 48]] * size)  # 48x48 patches of 14 px, merged 2x2: 576 tokens
    text_before, answer, image = 300, 200, 576
    total = text_before + 2 + image + answer
    ids = torch.randint(0, 150000, (size, total))
    ids[:, text_before] = VISION_START
    ids[:, text_before + 1: text_before + 1 + image] = IMAGE_PAD
    ids[:, text_before + 1 + image] = VISION_END
    labels = torch.full_like(ids, IGNORE)
    labels[:, -answer:] = ids[:, -answer:]
    return {"input_ids": ids.to(device), "attention_mask": torch.ones_like(ids).to(device),
            "mm_token_type_ids": (ids == IMAGE_PAD).long().to(device), "labels": labels.to(device),
            "pixel_values": torch.randn(size * 48 * 48, 3 * 2 * 14 * 14).to(device),
            "image_grid_thw": grid.to(device)}


def run(mode: str, batch_size: int, steps: int, attn: str) -> dict:
    from transformers import AutoModelForImageTextToText

    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    torch.manual_seed(0)
    dtype = torch.float32 if mode == "fp32_master_bf16_autocast" else torch.bfloat16
    model = AutoModelForImageTextToText.from_config(config_3b(), dtype=dtype, attn_implementation=attn).cuda()
    model.gradient_checkpointing_enable()
    model.config.use_cache = False
    params = sum(p.numel() for p in model.parameters())
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=True)
    inputs = batch(batch_size, "cuda")
    inputs["pixel_values"] = inputs["pixel_values"].to(dtype)
    times = []
    for step in range(steps):
        torch.cuda.synchronize()
        start = time.perf_counter()
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=dtype == torch.float32):
            loss, _ = answer_loss(model, inputs)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    steady = sorted(times[2:])[len(times[2:]) // 2]  # median after warm-up
    tokens = batch_size * inputs["input_ids"].shape[1]
    result = {"mode": mode, "attn": attn, "batch_size": batch_size, "parameters": params, "tokens_per_sample": tokens // batch_size,
              "step_s_median": round(steady, 4), "steps_per_s": round(1 / steady, 3),
              "samples_per_s": round(batch_size / steady, 2), "tokens_per_s": round(tokens / steady, 1),
              # 6 * N * tokens for forward + backward, plus one more forward for checkpointing: 8 * N * tokens.
              "model_tflops_6N": round(6 * params * tokens / steady / 1e12, 1),
              "peak_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 1), "final_loss": round(float(loss), 3)}
    del model, optimizer
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True)
    parser.add_argument("--steps", type=int, default=8)
    args = parser.parse_args()
    import transformers

    report = {"command": "python benchmarks/train_throughput.py --out " + args.out,
              "device": torch.cuda.get_device_name(), "torch": torch.__version__,
              "transformers": transformers.__version__, "python": platform.python_version(), "runs": []}
    for mode, size, attn in (("fp32_master_bf16_autocast", 4, "sdpa"), ("bf16", 4, "sdpa"), ("bf16", 16, "sdpa"),
                             ("bf16", 4, "eager")):
        try:
            report["runs"].append(run(mode, size, args.steps, attn))
        except torch.OutOfMemoryError as exc:
            report["runs"].append({"mode": mode, "attn": attn, "batch_size": size, "error": f"out of memory: {str(exc)[:120]}"})
        print(json.dumps(report["runs"][-1]), flush=True)
    with open(args.out, "w") as handle:
        json.dump(report, handle, indent=2)


if __name__ == "__main__":
    main()
