"""SFT dataset script for cosmos-rl, copied verbatim next to the generated TOML by the `train` stage.

cosmos-rl runs in its own environment (transformers<5, av<19), so this file imports nothing of the
av_grounding package: it reads ``conversations.jsonl`` (written beside it by the stage after the
token-budget check, image paths relative to this file) and hands one conversation per item to
cosmos-rl's Qwen-VL data packer.

    python cosmos_rl_dataset.py --preview 2     # plain Python: print the first conversations
    cosmos-rl --config run.toml cosmos_rl_dataset.py
"""

import argparse
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
CONVERSATIONS = os.path.join(HERE, "conversations.jsonl")


class GroundingSFTDataset:
    """Conversations read lazily by line offset, so 80k samples cost only their offsets in memory."""

    def __init__(self, path=CONVERSATIONS):
        self.path = path
        self.offsets = []
        with open(path, "rb") as f:
            position = 0
            for line in f:
                if line.strip():
                    self.offsets.append(position)
                position += len(line)
        if not self.offsets:
            raise ValueError(f"{path}: no conversations")

    def setup(self, config, *args, **kwargs):
        """Called by cosmos-rl once the dataset is mounted; nothing to prepare."""

    def __len__(self):
        return len(self.offsets)

    def __getitem__(self, index):
        with open(self.path, "rb") as f:
            f.seek(self.offsets[index])
            line = f.readline()
        try:
            item = json.loads(line)
        except ValueError as exc:
            raise ValueError(f"{self.path}: conversation {index} (byte {self.offsets[index]}) is not JSON: "
                             f"{exc}") from None
        if not isinstance(item, list) or not all(isinstance(m, dict) and "role" in m and "content" in m for m in item):
            raise ValueError(f"{self.path}: conversation {index} is not a list of role/content messages")
        for message in item:
            if isinstance(message["content"], list):
                for part in message["content"]:
                    if part.get("type") == "image":
                        part["image"] = os.path.normpath(os.path.join(HERE, part["image"]))
        return item


def keep_sdpa_without_flash_attn():
    """cosmos-rl switches its wrapper of Hugging Face models to flash_attention_2 unconditionally,
    and building the model then fails where flash-attn is not installed: keep PyTorch's sdpa."""
    import importlib.util

    if importlib.util.find_spec("flash_attn") is not None:
        return
    from cosmos_rl.policy.model import hf_models

    switch_to_flash_attention = hf_models.pre_hf_models_patch

    def keep_sdpa(hf_config):
        switch_to_flash_attention(hf_config)
        hf_config._attn_implementation = "sdpa"

    hf_models.pre_hf_models_patch = keep_sdpa


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preview", type=int, default=0, help="print this many conversations as JSON and exit")
    args, _ = parser.parse_known_args(argv)  # cosmos-rl passes its own arguments (--config ...)
    if args.preview:
        dataset = GroundingSFTDataset()
        for index in range(min(args.preview, len(dataset))):
            print(json.dumps(dataset[index]))
        return 0
    from cosmos_rl.launcher.worker_entry import main as launch_worker

    keep_sdpa_without_flash_attn()
    launch_worker(dataset=lambda config: GroundingSFTDataset())
    return 0


if __name__ == "__main__":
    sys.exit(main())
