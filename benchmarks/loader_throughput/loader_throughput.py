"""CPU cost of the training data per sample, in one process: what each data-loader worker of the
`train` stage does (decode the JPEG, resize and patch it with the model's image processor) and what
the main process adds per micro-batch (collation), split into its parts.

    python benchmarks/loader_throughput/loader_throughput.py --dataset data/dataset --model small-qwen2_5_vl \
        --max-pixels 230400 --samples 256 --out benchmarks/loader_throughput/results/loader_throughput.json

With W loader workers on as many free cores, the loader feeds about W times the per-process rate;
a training step that needs more samples per second than that waits for data. The token budget
check (tokenisation of every sample) runs once before training and is timed too.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from PIL import Image

from av_grounding.dataset.formats import read_cosmos
from av_grounding.dataset.prompts import load_prompts
from av_grounding.models.builtin import image_processor_for, task_tokenizer
from av_grounding.models.inputs import Encoder, collate, within_budget
from av_grounding.params import FormatParams

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: common.py
from common import command_line, machine, timed, write_json


def decode(path: Path) -> Image.Image:
    with Image.open(path) as image:
        return image.convert("RGB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", type=Path, default=Path("data/dataset"))
    parser.add_argument("--model", default="small-qwen2_5_vl", help="a built-in model name (its image processor)")
    parser.add_argument("--max-pixels", type=int, default=230400)
    parser.add_argument("--samples", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    fmt = FormatParams()
    prompts = load_prompts(fmt.prompts)
    encoder = Encoder(task_tokenizer(prompts.system, prompts.user), image_processor_for(args.model, fmt.min_pixels,
                      args.max_pixels), fmt.min_pixels, args.max_pixels, fmt.model_max_length)
    samples = read_cosmos(args.dataset / "train")
    samples = (samples * (args.samples // len(samples) + 1))[: args.samples]
    (examples, _), budget_s = timed(within_budget, encoder, samples)
    decode_s = process_s = 0.0
    encoded = []
    for sample, text in examples:
        decode_s += timed(decode, sample.image)[1]
        item, seconds = timed(encoder.with_pixels, sample, text)  # decodes again, then the image processor
        process_s += seconds
        encoded.append(item)
    collate_s = 0.0
    for begin in range(0, len(encoded), args.batch_size):
        _, seconds = timed(collate, encoded[begin: begin + args.batch_size], encoder.tokenizer.pad_token_id,
                           encoder.image_pad)
        collate_s += seconds
    n = len(examples)
    with Image.open(examples[0][0].image) as first:
        size = first.size
    report = {
        "command": command_line(__file__, [f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items()]),
        **machine(),
        "samples": n, "image_size": list(size), "model": args.model, "max_pixels": args.max_pixels,
        "per_sample_ms": {"jpeg_decode": round(1e3 * decode_s / n, 2),
                          "decode_and_image_processor": round(1e3 * process_s / n, 2),
                          "collate": round(1e3 * collate_s / n, 2),
                          "token_budget_check_once": round(1e3 * budget_s / n, 2)},
        "worker_samples_per_s": round(n / process_s, 1),
        "main_process_collate_samples_per_s": round(n / collate_s, 1),
    }
    write_json(args.out, report)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
