"""Greedy generation at batch 1 against batched, on the same frames: images/s, tokens/s, and
whether the answers are identical.

    python benchmarks/infer_throughput/infer_throughput.py --model data/train/model --dataset data/dataset \
        --frames 64 --batch-sizes 1,8,32,64 --decodings static --out small.json
    ... --decodings dynamic,static --profile   # both KV caches (the static one compiles its
                                               # decoding on CUDA), a profile of decoding per batch size

Runs the `infer` stage's own generation (``models.generate``: left padding, greedy, one
log-probability per token) over the first ``--frames`` evaluation frames, once per batch size,
and compares every run's token ids with the first run's (put batch size 1 first: left padding
must not change greedy answers; in bf16 a different batch shape can flip a near-tie, which is
counted, not hidden; ``--dtype float32`` shows what batching alone changes). The first call of a
batch shape with a static cache includes its compilation, so each static run is preceded by a
warm-up with its first batch (a last batch of another size, or another padded prompt length, may
still compile inside the timed run); the profiles are preceded by a warm-up of their own.
``--profile`` runs torch.profiler over one batch answering 8 and then 40 tokens (answers cut at
their end token are not extended) and reports the difference per decoding step, which leaves out
the vision tower and the prompt's prefill. ``encode_s`` is the wall time of preparing every
frame's prompt and pixels on the CPU (``Encoder.encode``), which each run spends inside its
generation calls.
"""

from __future__ import annotations

import argparse
import functools
import json
import shlex
import sys
import time
from pathlib import Path

import torch
import transformers

from av_grounding.dataset.formats import read_cosmos
from av_grounding.models.generate import KV_CACHES, generate
from av_grounding.models.inputs import Encoder
from av_grounding.models.loading import load_model
from av_grounding.params import FormatParams

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: common.py
from common import device_name, profile_summary, synchronize, write_json


def run(model, encoder, samples, batch_size: int, max_new_tokens: int, device: str,
        kv_cache: str) -> tuple[list[list[int]], float]:
    answers = []
    synchronize(device)
    started = time.perf_counter()
    for begin in range(0, len(samples), batch_size):
        answers += [g.token_ids for g in generate(model, encoder, samples[begin: begin + batch_size], max_new_tokens,
                                                  device, kv_cache)]
    synchronize(device)
    return answers, time.perf_counter() - started


PROFILED_TOKENS = (8, 40)  # the difference of the two profiles is decoding alone, without the prefill


def decode_step_profile(model, encoder, batch, device: str, kv_cache: str) -> dict:
    """Per decoding step, wall and GPU-busy seconds from profiles of PROFILED_TOKENS new tokens
    (each generation run once before it is profiled: a static cache's length compiles anew)."""
    calls = [functools.partial(generate, model, encoder, batch, tokens, device, kv_cache)
             for tokens in PROFILED_TOKENS]
    for call in calls:
        call()
    short, long = (profile_summary(call, device) for call in calls)
    steps = PROFILED_TOKENS[1] - PROFILED_TOKENS[0]
    return {"wall_s_per_step": round((long["wall_s"] - short["wall_s"]) / steps, 5),
            "gpu_busy_s_per_step": round((long["gpu_busy_s"] - short["gpu_busy_s"]) / steps, 5),
            f"profile_{PROFILED_TOKENS[1]}_tokens": long}


def kv_caches(text: str) -> list[str]:
    """``--decodings``: comma-separated KV cache kinds, checked before the model loads."""
    chosen = text.split(",")
    if not set(chosen) <= set(KV_CACHES):
        raise argparse.ArgumentTypeError(f"{text!r}: comma-separated, each one of {', '.join(KV_CACHES)}")
    return chosen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="a model folder (e.g. data/train/model)")
    parser.add_argument("--dataset", type=Path, required=True)
    parser.add_argument("--frames", type=int, default=256)
    parser.add_argument("--batch-sizes", default="1,64,256")
    parser.add_argument("--max-new-tokens", type=int, default=512)
    parser.add_argument("--decodings", default="static", type=kv_caches,
                        help=f"comma-separated KV caches: {', '.join(KV_CACHES)}")
    parser.add_argument("--dtype", choices=("bfloat16", "float32"),
                        help="bfloat16 on CUDA, float32 on CPU unless given")
    parser.add_argument("--profile", action="store_true", help="profile decoding steps per batch size")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    fmt = FormatParams()
    dtype = args.dtype or ("bfloat16" if device == "cuda" else "float32")
    loaded = load_model(args.model, dtype, device)
    encoder = Encoder(loaded.tokenizer, loaded.image_processor, fmt.min_pixels, fmt.max_pixels, fmt.model_max_length)
    samples = read_cosmos(args.dataset / "eval")[: args.frames]
    generate(loaded.model, encoder, samples[:2], 8, device, "dynamic")  # warm-up
    started = time.perf_counter()
    for sample in samples:
        encoder.encode(sample, with_answer=False)
    report = {"command": shlex.join(["python", *sys.argv]),
              "device": device_name(device),
              "torch": torch.__version__, "transformers": transformers.__version__, "dtype": dtype,
              "frames": len(samples),
              "encode_s": round(time.perf_counter() - started, 2), "runs": []}
    reference = None
    for kv_cache in args.decodings:  # the flag's name is kept: committed result files record it
        for size in (int(s) for s in args.batch_sizes.split(",")):
            if kv_cache == "static":
                generate(loaded.model, encoder, samples[:size], args.max_new_tokens, device, kv_cache)
            answers, seconds = run(loaded.model, encoder, samples, size, args.max_new_tokens, device, kv_cache)
            reference = reference or answers
            result = {"decoding": kv_cache, "batch_size": size, "seconds": round(seconds, 2),
                      "images_per_s": round(len(samples) / seconds, 2),
                      "tokens_per_s": round(sum(map(len, answers)) / seconds, 1),
                      "answers_identical_to_first_run": sum(a == b for a, b in zip(answers, reference))}
            if args.profile:
                result["profile"] = decode_step_profile(loaded.model, encoder, samples[:size], device, kv_cache)
            report["runs"].append(result)
            print(json.dumps({k: v for k, v in result.items() if k != "profile"}), flush=True)
            write_json(args.out, report)  # a run stopped early keeps what it measured


if __name__ == "__main__":
    main()
