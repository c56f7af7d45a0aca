"""Will a training run fit its GPU? Checked before the first step, with the numbers.

Weights, gradients and AdamW state are counted exactly from the loaded model (their dtypes and
which parameters train); activations are estimated from the shapes by counting what the
backward pass keeps per token in each decoder and vision block under bf16 autocast (the method
of Korthikanti et al. 2022, "Reducing Activation Recomputation in Large Transformer Models",
section 4.1, applied to the Qwen blocks: about 22 x hidden + 10 x MLP width bytes per token and
block without checkpointing; with checkpointing, each block's fp32 input plus one block's
working set). The estimate and the measured peak are compared in
benchmarks/hub_checkpoints/results/hub_checkpoints.md.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..params import ParamsError

GIB = 2**30
ADAM_STATES = 2  # exp_avg and exp_avg_sq, each in the parameter's dtype


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes a training step needs on one device, by part."""

    weights: int
    gradients: int
    optimizer: int
    activations: int

    @property
    def total(self) -> int:
        return self.weights + self.gradients + self.optimizer + self.activations

    def describe(self) -> str:
        parts = ", ".join(f"{name} {getattr(self, name) / GIB:.1f}"
                          for name in ("weights", "gradients", "optimizer", "activations"))
        return f"{self.total / GIB:.1f} GiB ({parts} GiB)"


def _block_bytes(hidden: int, mlp: int) -> int:
    """Bytes per token that one transformer block keeps for the backward pass under bf16
    autocast: fp32 residual inputs of its two norms (2 x 4h), bf16 inputs and outputs of the
    attention projections, rotary, attention and output projection (about 14h), and the MLP's
    gate, up, activation and product (5 x 2 x mlp)."""
    return 22 * hidden + 10 * mlp


def activation_bytes(config, tokens: int, patches: int, labelled: int, checkpointing: bool) -> int:
    """Estimated activation bytes of one micro-batch: ``tokens`` language-model positions,
    ``patches`` vision patches (before the 2x2 merge) and ``labelled`` positions whose logits
    are computed (bf16 logits, their fp32 copy and its gradient: 10 bytes per vocabulary entry)."""
    text, vision = config.text_config, config.vision_config
    text_block = _block_bytes(text.hidden_size, text.intermediate_size) * tokens
    vision_block = _block_bytes(vision.hidden_size, vision.intermediate_size) * patches
    if checkpointing:
        kept = (4 * text.hidden_size * tokens * text.num_hidden_layers
                + 4 * vision.hidden_size * patches * vision.depth + max(text_block, vision_block))
    else:
        kept = text_block * text.num_hidden_layers + vision_block * vision.depth
    return kept + 10 * text.vocab_size * labelled


def estimate(model, checkpointing: bool, tokens: int, patches: int, labelled: int) -> MemoryEstimate:
    """The memory of training ``model`` (loaded, its trainable parameters chosen) with AdamW on
    micro-batches of ``tokens`` / ``patches`` / ``labelled`` positions (the largest batch)."""
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    trainable = [p for p in model.parameters() if p.requires_grad]
    gradients = sum(p.numel() * p.element_size() for p in trainable)
    return MemoryEstimate(weights, gradients, ADAM_STATES * gradients,
                          activation_bytes(model.config, tokens, patches, labelled, checkpointing))


def check_fits(needed: MemoryEstimate, available: int, device: str) -> None:
    """``ParamsError`` naming every part when ``needed`` exceeds ``available`` bytes of ``device``."""
    if needed.total > available:
        raise ParamsError(
            f"training needs about {needed.describe()} per step, but {device} has {available / GIB:.1f} GiB: "
            "train fewer parts (train.lora, train.train_vision false), enable train.gradient_checkpointing, "
            "halve weights, gradients and optimizer with train.precision bf16_stochastic, "
            "lower train.batch_size (raising train.grad_accum keeps the step), lower format.max_pixels, or "
            "shard over GPUs (train.gpus with train.deepspeed)")
