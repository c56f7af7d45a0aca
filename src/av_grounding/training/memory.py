"""Will a training run fit its GPU? Checked before the first step, with the numbers.

Weights, gradients and AdamW state are counted exactly from the loaded model (their dtypes and
which parameters train); activations are estimated from the shapes by counting what the
backward pass keeps per token in each decoder and vision block under bf16 autocast (the method
of Korthikanti et al. 2022, "Reducing Activation Recomputation in Large Transformer Models",
section 4.1, applied to the Qwen blocks: about 22 x hidden + 10 x MLP width bytes per token and
block without checkpointing; with checkpointing, each checkpointed block's fp32 input plus one
block's working set, the decoder layers that ``train.checkpoint_fraction`` leaves unchecked
keeping all of theirs: ``models.checkpointing``). Two parts come from the step's own choices:
the bf16 copies of fp32 matmul weights that autocast makes and the backward keeps (``cast_bytes``;
the train step turns autocast's weight cache off, which otherwise holds a copy of every trainable
fp32 weight until the forward ends, beside checkpointing, which would drop them: the 7B shape ran
out of an H200 in its second step's forward that way, with gradients accumulating), and
the fp32 scratch of the stochastic-rounding update (``update_scratch_bytes``), which is needed
after the forward, not during it. A fixed ``WORKSPACE_BYTES`` covers what no part counts
(library workspaces, the allocator's rounding, the loss's temporaries): without it the estimate
fell 0.17 GiB short of the 7B folder's measured peak on an H200 and 0.10 GiB short of the 8B
folder's stochastic-rounding run on an H100. The estimate and the measured peak are compared in
benchmarks/hub_checkpoints/results/hub_checkpoints.md.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..models.checkpointing import checkpointed_layers, unchecked_layers
from ..params import ParamsError
from .optim import UPDATE_CHUNK

GIB = 2**30
ADAM_STATES = 2  # exp_avg and exp_avg_sq, each in the parameter's dtype
WORKSPACE_BYTES = GIB // 2  # beside the counted parts: the measured peaks ran 0.10-0.17 GiB above them


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes a training step needs on one device, by part. Weights, optimizer state and the
    workspace are held throughout. With ``accumulating`` (several micro-batches a step, or
    data parallel, whose gradient buckets stay allocated) the gradients are held throughout too,
    beside the activations and weight casts at the end of a forward or the update's scratch
    during the optimizer step: the peak takes the larger of the two. With one micro-batch a step
    in one process the gradients do not exist during the forward (the step frees them after its
    update); the backward makes them as it frees the activations: one tensor at a time on top of
    the forward's activations and casts (at most ``largest_gradient`` bytes), and near its end,
    with nearly every gradient made, the first decoder layer's backward and the vision tower's
    still hold ``backward_end`` bytes (``backward_end_bytes``); the update's scratch comes on top
    of all the gradients. The 8B folder's bf16 run at 16 samples a micro-batch on an H100 peaked
    at 66.78 GiB: 1.5 GiB above its weights, gradients and AdamW state, where this rule puts 3.2
    (the backward's end, 2.7, and the workspace)."""

    weights: int
    gradients: int
    optimizer: int
    activations: int
    casts: int = 0
    update_scratch: int = 0
    workspace: int = 0
    accumulating: bool = True
    largest_gradient: int = 0
    backward_end: int = 0

    @property
    def total(self) -> int:
        held = self.weights + self.optimizer + self.workspace
        forward = self.activations + self.casts
        if self.accumulating:
            return held + self.gradients + max(forward, self.update_scratch)
        after_forward = max(self.largest_gradient, self.update_scratch, self.backward_end)
        return held + max(forward + self.largest_gradient, self.gradients + after_forward)

    def describe(self) -> str:
        names = ["weights", "gradients", "optimizer", "activations", "casts", "update_scratch", "workspace"]
        if not self.accumulating:
            names += ["largest_gradient", "backward_end"]
        parts = ", ".join(f"{name.replace('_', ' ')} {getattr(self, name) / GIB:.1f}" for name in names
                          if getattr(self, name) or name in names[:4])
        step = "" if self.accumulating else "; one micro-batch a step: no gradients held in the forward"
        return f"{self.total / GIB:.1f} GiB ({parts} GiB{step})"


def _block_bytes(hidden: int, mlp: int) -> int:
    """Bytes per token that one transformer block keeps for the backward pass under bf16
    autocast: fp32 residual inputs of its two norms (2 x 4h), bf16 inputs and outputs of the
    attention projections, rotary, attention and output projection (about 14h), and the MLP's
    gate, up, activation and product (5 x 2 x mlp)."""
    return 22 * hidden + 10 * mlp


def activation_bytes(config, tokens: int, patches: int, labelled: int, checkpointing: bool,
                     checkpoint_fraction: float = 1.0) -> int:
    """Estimated activation bytes of one micro-batch: ``tokens`` language-model positions,
    ``patches`` vision patches (before the 2x2 merge) and ``labelled`` positions whose logits
    are computed (bf16 logits, their fp32 copy and its gradient: 10 bytes per vocabulary entry).
    Each block keeps ``_block_bytes`` a token or patch; under ``checkpointing``, each vision block
    and each checkpointed decoder layer (the share ``checkpoint_fraction``, 0 to 1:
    ``models.checkpointing.checkpointed_layers``) keeps its fp32 input (4 x hidden) instead, and
    the largest recomputed block's working set comes on top. ValueError for a share outside
    [0, 1]."""
    text = config.text_config
    text_block = _block_bytes(text.hidden_size, text.intermediate_size) * tokens
    logits = 10 * text.vocab_size * labelled
    if not checkpointing:
        return text_block * text.num_hidden_layers + vision_activation_bytes(config, patches, False) + logits
    recomputed = len(checkpointed_layers(text.num_hidden_layers, checkpoint_fraction))
    vision_inputs = vision_activation_bytes(config, patches, True) - _vision_block(config, patches)
    kept = (4 * text.hidden_size * tokens * recomputed + text_block * (text.num_hidden_layers - recomputed)
            + vision_inputs + max(text_block if recomputed else 0, _vision_block(config, patches)))
    return kept + logits


def _vision_block(config, patches: int) -> int:
    """Bytes one vision block keeps for the backward over ``patches`` patches (``_block_bytes``)."""
    vision = config.vision_config
    return _block_bytes(vision.hidden_size, vision.intermediate_size) * patches


def vision_activation_bytes(config, patches: int, checkpointing: bool) -> int:
    """The vision tower's share of ``activation_bytes``, held until its backward ends (after the
    language model's): every block's activations, or under ``checkpointing`` every block's fp32
    input plus one block's working set while it is recomputed."""
    vision = config.vision_config
    if not checkpointing:
        return _vision_block(config, patches) * vision.depth
    return 4 * vision.hidden_size * patches * vision.depth + _vision_block(config, patches)


def backward_end_bytes(model, tokens: int, patches: int, checkpointing: bool, autocast: bool) -> int:
    """Bytes held beside the gradients made so far while the first decoder layer's backward
    runs, the language model's last before the vision tower's: that layer's activations over
    ``tokens`` positions (its working set, recomputed under ``checkpointing``, and then its fp32
    input), its bf16 weight casts under ``autocast``, and the vision tower's activations over
    ``patches`` patches (``vision_activation_bytes``), less the gradients not made yet (the
    vision tower's and the input embedding's, as far as they train); at least 0."""
    text = model.config.text_config
    first = model.get_decoder().layers[0]
    held_input = 4 * text.hidden_size if checkpointing else 0  # the recomputed layer's fp32 input
    layer = (_block_bytes(text.hidden_size, text.intermediate_size) + held_input) * tokens
    casts = 2 * _fp32_matmul_weights(first) if autocast else 0
    embedding = {id(p) for p in model.get_input_embeddings().parameters()}
    pending = sum(p.numel() * p.element_size() for name, p in model.named_parameters()
                  if p.requires_grad and (id(p) in embedding or ".visual." in f".{name}"))
    return max(0, layer + casts + vision_activation_bytes(model.config, patches, checkpointing) - pending)


def _fp32_matmul_weights(module) -> int:
    """Elements of the fp32 ``nn.Linear`` weights inside ``module``."""
    import torch

    return sum(m.weight.numel() for m in module.modules()
               if isinstance(m, torch.nn.Linear) and m.weight.dtype == torch.float32)


def cast_bytes(model, checkpointing: bool, checkpoint_fraction: float = 1.0) -> int:
    """Bytes of the bf16 copies of fp32 matmul weights that bf16 autocast makes and the backward
    keeps (2 bytes an element; 0 for bf16 weights), with autocast's weight cache off: every
    linear layer's copy without checkpointing; with it, the copies outside the checkpointed
    blocks (transformers' ``GradientCheckpointingLayer``s: the vision blocks and the share
    ``checkpoint_fraction`` of the decoder layers, ``models.checkpointing``; outside them the
    output layer, the vision merger and the unchecked decoder layers) plus the largest
    checkpointed block's while it is recomputed. ValueError for a share outside [0, 1]."""
    from transformers.modeling_layers import GradientCheckpointingLayer

    everything = _fp32_matmul_weights(model)
    if not checkpointing:
        return 2 * everything
    unchecked = {id(layer) for layer in unchecked_layers(model, checkpoint_fraction)}
    blocks = [_fp32_matmul_weights(m) for m in model.modules()
              if isinstance(m, GradientCheckpointingLayer) and id(m) not in unchecked]
    return 2 * (everything - sum(blocks) + max(blocks, default=0))


# adamw_piece unfused (the plain path, the fallback of a failed compilation): fp32 gradient,
# moments and weight (4 x 4), the temporaries of the weight's expression, a rounding's noise
# (its int32 counters and one shift's temporary) and the rounding's own: 48 bytes an element at
# the peak that tests/test_memory.py measures; compiled, the noise is computed in the kernel and
# nothing is allocated
UPDATE_SCRATCH_BYTES = 48


def update_scratch_bytes(model) -> int:
    """Bytes that ``StochasticAdamW`` allocates while it updates its largest piece (one piece of
    at most ``UPDATE_CHUNK`` elements at a time: ``UPDATE_SCRATCH_BYTES`` an element, the plain
    update's, which bounds the compiled one's)."""
    largest = max((p.numel() for p in model.parameters() if p.requires_grad), default=0)
    return UPDATE_SCRATCH_BYTES * min(largest, UPDATE_CHUNK)


def estimate(model, checkpointing: bool, tokens: int, patches: int, labelled: int, autocast: bool = True,
             stochastic_update: bool = False, checkpoint_fraction: float = 1.0,
             accumulating: bool = True) -> MemoryEstimate:
    """The memory of training ``model`` (loaded, its trainable parameters chosen) with AdamW on
    micro-batches of ``tokens`` / ``patches`` / ``labelled`` positions (the largest batch), under
    bf16 autocast when ``autocast``, updated by ``StochasticAdamW`` when ``stochastic_update``
    (torch's fused AdamW, otherwise, updates in place), with activation checkpointing of the
    vision blocks and the share ``checkpoint_fraction`` of the decoder layers when
    ``checkpointing``, with several micro-batches a step when ``accumulating`` (``MemoryEstimate``),
    plus ``WORKSPACE_BYTES``. ValueError for a share outside [0, 1]."""
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    trainable = [p for p in model.parameters() if p.requires_grad]
    gradients = sum(p.numel() * p.element_size() for p in trainable)
    return MemoryEstimate(weights, gradients, ADAM_STATES * gradients,
                          activation_bytes(model.config, tokens, patches, labelled, checkpointing,
                                           checkpoint_fraction),
                          cast_bytes(model, checkpointing, checkpoint_fraction) if autocast else 0,
                          update_scratch_bytes(model) if stochastic_update else 0, WORKSPACE_BYTES,
                          accumulating, max((p.numel() * p.element_size() for p in trainable), default=0),
                          backward_end_bytes(model, tokens, patches, checkpointing, autocast))


def check_fits(needed: MemoryEstimate, available: int, device: str) -> None:
    """``ParamsError`` naming every part when ``needed`` exceeds ``available`` bytes of ``device``."""
    if needed.total > available:
        raise ParamsError(
            f"training needs about {needed.describe()} per step, but {device} has {available / GIB:.1f} GiB: "
            "train fewer parts (train.lora, train.train_vision false), enable train.gradient_checkpointing "
            "(or raise train.checkpoint_fraction), "
            "halve weights, gradients and optimizer with train.precision bf16_stochastic, "
            "lower train.batch_size (raising train.grad_accum keeps the step), lower format.max_pixels, or "
            "shard over GPUs (train.gpus with train.deepspeed)")
