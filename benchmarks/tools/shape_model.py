"""Save a random-init model of a published shape as a model folder the `train` and `infer`
stages read (weights in bf16, the task tokenizer, the architecture's image processor):

    python benchmarks/tools/shape_model.py 3b /tmp/m3b    # Qwen2.5-VL-3B shape, 3.75B parameters
    python benchmarks/tools/shape_model.py 4b /tmp/m4b    # Qwen3-VL-4B shape, 4.44B parameters

Shapes as in ``config_of`` of ``benchmarks/train_throughput/train_throughput.py``. The weights are
initialised on ``--device`` (a GPU takes seconds for billions of parameters).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from transformers import AutoModelForImageTextToText

from av_grounding.dataset.prompts import load_prompts
from av_grounding.models.builtin import build_builtin
from av_grounding.params import FormatParams

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "train_throughput"))  # the shapes
from train_throughput import config_of


def save_shape(shape: str, folder: Path, device: str) -> int:
    """Write the folder; returns the parameter count."""
    config = config_of(shape)
    fmt = FormatParams()
    prompts = load_prompts(fmt.prompts)
    # The tiny model of the same architecture brings the tokenizer and image processor.
    build_builtin(f"tiny-{config.model_type}", folder, 0, prompts.system, prompts.user, fmt.min_pixels, fmt.max_pixels)
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForImageTextToText.from_config(config, dtype=torch.bfloat16)
    (folder / "model.safetensors").unlink()
    model.save_pretrained(folder)
    return sum(p.numel() for p in model.parameters())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("shape", help="3b, 4b or a built-in model name")
    parser.add_argument("folder", type=Path)
    parser.add_argument("--device", default="cuda")
    args = parser.parse_args()
    print(f"{args.shape}: {save_shape(args.shape, args.folder, args.device):,} parameters in {args.folder}")


if __name__ == "__main__":
    main()
