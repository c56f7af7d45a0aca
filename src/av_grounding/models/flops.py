"""FLOPs of a training step of Qwen2.5-VL (Cosmos Reason 1) and Qwen3-VL (Cosmos Reason 2),
counted from the operations that run, not as 6 x parameters x tokens.

6N charges every parameter for every token. In these models the vision tower runs on its
patches (four per image token, and it never sees text), the language model on its tokens, and
the output layer (hidden x 152k vocabulary: 0.55B of Cosmos-Reason1-7B's 8.29B parameters, most
of a small model's) only at the positions whose logits are computed: ``models.inputs.answer_loss``
computes them at the labelled (row, position) pairs alone. Counted here, per part (shapes from the transformers
modeling files of ``Qwen2_5_VLForConditionalGeneration`` and ``Qwen3VLForConditionalGeneration``):

vision (per image of t x h x w patches, hidden ``d``, MLP width ``i``, ``p = t*h*w`` patches):
  - patch embedding, a Conv3d with stride = kernel, i.e. a linear of
    ``c = in_channels * temporal_patch_size * patch_size**2`` inputs: ``2 p c d``;
  - per block, on every patch: qkv ``2 p d 3d``, output projection ``2 p d d``, MLP
    ``2 p d i`` per matrix (3 matrices in Qwen2.5-VL's gated SiLU MLP, 2 in Qwen3-VL's GELU MLP);
  - per block, attention within each segment of ``s`` patches: ``4 s^2 d`` (scores ``Q K^T`` and
    the weighted sum of values, ``2 s^2 d`` each). Segments: each frame (h x w patches) for
    Qwen3-VL and for Qwen2.5-VL's ``fullatt_block_indexes``; in Qwen2.5-VL's other blocks
    windows of ``window_size // spatial_merge_size // patch_size`` merged tokens a side
    (112 // 2 // 14 = 4, i.e. 8 x 8 = 64 patches), cut per frame from the top-left corner, the
    last row and column of windows smaller when the grid does not divide (transformers'
    ``get_vision_window_index``);
merger (on ``p / m^2`` merged tokens, ``m = spatial_merge_size``, output width ``D``):
  ``2 (p/m^2) (m^2 d)^2 + 2 (p/m^2) (m^2 d) D``; Qwen3-VL runs one more such merger per
  ``deepstack_visual_indexes`` entry;
language (per row of ``n`` tokens, hidden ``H``, ``a`` heads and ``k`` key/value heads of
``head_dim`` ``e``, MLP width ``I``, per layer):
  - projections ``2 n H (a e)`` (q), ``2 n H (k e)`` (k and v each), ``2 n (a e) H`` (o);
  - gated MLP ``3 x 2 n H I``;
  - attention ``4 n^2 a e`` over the full square, as ``torch.utils.flop_counter.FlopCounterMode``
    counts what SDPA (and eager attention) computes; with ``causal=True`` only the
    ``n (n + 1) / 2`` query-key pairs a causal kernel needs (``2 n (n + 1) a e``);
output: ``2 P H V`` for ``P`` (row, position) pairs with logits and vocabulary ``V``.

Units: FLOPs, floating-point operations, one multiply-add = 2 (FlopCounterMode's convention).
Norms, activations, rotary embeddings, softmax, the loss and the optimizer are not counted
(elementwise work, small beside the matrix products; FlopCounterMode does not count them
either), nor the additions of biases.

Training step = forward + backward = 3 x forward: the backward of each matrix product computes
the gradient of its input and of its weight, each as large as the forward product (every weight
trains: full fine-tuning). Exception: the patch embedding's input is the pixels, which need no
gradient, so it costs 2 x forward. Activation checkpointing (transformers' default, PyTorch's
non-reentrant checkpoint) runs the forward of every vision block and of every checkpointed
decoder layer (all of them, or the share ``train.checkpoint_fraction`` of them:
``models.checkpointing``) once more in the backward pass, stopping once it has every tensor the
backward needs: the MLP's last matrix product, whose output nothing saves, is not re-run. That
recomputation is reported apart (``Flops.recomputed``) and is not in ``total``: MFU counts the
model's work, not the re-run.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from .checkpointing import checkpointed_layers

ARCHITECTURES = ("qwen2_5_vl", "qwen3_vl")
# Dense (no sparsity) bf16 tensor-core FLOP/s from the vendor's datasheet, by
# torch.cuda.get_device_name(): the peak MFU divides by where the card is known (the throughput
# benchmark, and the train stage's timing file under bf16 autocast).
DATASHEET_BF16 = {"NVIDIA H200": 989e12, "NVIDIA H100 80GB HBM3": 989e12}  # both SXM: 1,979 with 2:4 sparsity


@dataclass(frozen=True)
class Flops:
    """FLOPs (multiply-add = 2) of one forward pass or one training step, by part.

    vision: patch embedding and vision blocks; merger: the patch merger (and Qwen3-VL's DeepStack
    mergers); language: the decoder layers; output: the output layer (``lm_head``) at the
    positions with logits; recomputed: forward FLOPs activation checkpointing runs again (vision
    blocks and checkpointed decoder layers), not part of ``total``."""

    vision: float
    merger: float
    language: float
    output: float
    recomputed: float = 0

    @property
    def total(self) -> float:
        """The model's work: vision + merger + language + output (no recomputation)."""
        return self.vision + self.merger + self.language + self.output

    def scaled(self, factor: float) -> Flops:
        """Every part times ``factor`` (e.g. 1 / samples for per-sample figures), as floats."""
        return Flops(*(value * factor for value in (self.vision, self.merger, self.language, self.output,
                                                    self.recomputed)))

    def as_dict(self) -> dict[str, float]:
        return {"vision": self.vision, "merger": self.merger, "language": self.language, "output": self.output,
                "total": self.total, "recomputed": self.recomputed}


@dataclass(frozen=True)
class StepCounts:
    """What one step processes.

    grids: (t, h, w) in patches per image, as the rows of ``image_grid_thw``;
    tokens: per row of the language model's batch, the length it runs on (image tokens included;
    padding included: a padded row computes on its padding too);
    output_positions: (row, position) pairs whose logits are computed (``answer_loss``: the
    labelled ones)."""

    grids: tuple[tuple[int, int, int], ...]
    tokens: tuple[int, ...]
    output_positions: int


def counts_of_batch(inputs, padding: bool = True) -> StepCounts:
    """The StepCounts of a collated batch (``models.inputs.collate``'s dict: ``input_ids``
    (rows, width), ``labels`` (rows, width), ``attention_mask`` (rows, width), ``image_grid_thw``
    (images, 3)), with the output positions ``answer_loss`` computes logits at. ``padding``:
    each row counts the batch's width (the work the device does, as FlopCounterMode counts it);
    False: its own tokens only (the model FLOPs of MFU: padding is work, not model FLOPs)."""
    from .inputs import labelled_pairs, logit_columns

    ids, labels = inputs["input_ids"], inputs["labels"]
    rows, width = ids.shape
    positions = len(labelled_pairs(labels, logit_columns(labels)))
    grids = tuple((int(t), int(h), int(w)) for t, h, w in inputs["image_grid_thw"].tolist())
    tokens = (width,) * rows if padding else tuple(int(n) for n in inputs["attention_mask"].sum(dim=1).tolist())
    return StepCounts(grids, tokens, positions)


def _architecture(config) -> str:
    model_type = getattr(config, "model_type", None)
    if model_type not in ARCHITECTURES:
        raise ValueError(f"FLOPs are counted for model_type {' or '.join(ARCHITECTURES)}, not {model_type!r}")
    return model_type


def _grid(grid: Sequence[int]) -> tuple[int, int, int]:
    t, h, w = (int(x) for x in grid)
    if min(t, h, w) < 1:
        raise ValueError(f"image grid {tuple(grid)}: t, h and w in patches must be positive")
    return t, h, w


def window_lengths(grid: Sequence[int], window_size: int, patch_size: int, merge: int) -> list[int]:
    """Patches per attention window of one image in Qwen2.5-VL's windowed blocks: per frame,
    windows of ``window_size // merge // patch_size`` merged tokens a side from the top-left
    corner, the last ones cut by the grid's edge (transformers' ``get_vision_window_index``)."""
    t, h, w = _grid(grid)
    side = window_size // merge // patch_size
    if side < 1 or h % merge or w % merge:
        raise ValueError(f"grid {tuple(grid)} with window_size {window_size}, patch {patch_size}, merge {merge}: "
                         f"no window layout")
    rows, cols = h // merge, w // merge

    def cuts(n: int) -> list[int]:
        return [min(side, n - start) for start in range(0, n, side)]

    return [a * b * merge * merge for _ in range(t) for a in cuts(rows) for b in cuts(cols)]


def _attention(segments: Iterable[int], width: int) -> int:
    """Scores and weighted values within segments of the given lengths, ``width`` = heads x head_dim."""
    return sum(4 * s * s * width for s in segments)


def vision_flops(config, grids: Iterable[Sequence[int]]) -> tuple[int, int, int]:
    """Forward FLOPs of the vision tower on the images of patch grids ``grids``: (patch embedding,
    blocks, mergers)."""
    arch = _architecture(config)
    v = config.vision_config
    d, i, merge = v.hidden_size, v.intermediate_size, v.spatial_merge_size
    grids = [_grid(g) for g in grids]
    patches = sum(t * h * w for t, h, w in grids)
    embed = 2 * patches * v.in_channels * v.temporal_patch_size * v.patch_size ** 2 * d
    mlp_matrices = 3 if arch == "qwen2_5_vl" else 2
    linear = 2 * patches * (3 * d * d + d * d + mlp_matrices * d * i)
    frames = [h * w for t, h, w in grids for _ in range(t)]
    full = _attention(frames, d)
    if arch == "qwen2_5_vl":
        windowed = _attention((s for g in grids for s in window_lengths(g, v.window_size, v.patch_size, merge)), d)
        attention = sum(full if b in v.fullatt_block_indexes else windowed for b in range(v.depth))
    else:
        attention = v.depth * full
    merged = patches // merge ** 2
    wide = d * merge ** 2
    one_merger = 2 * merged * wide * wide + 2 * merged * wide * v.out_hidden_size
    mergers = 1 + (len(v.deepstack_visual_indexes) if arch == "qwen3_vl" else 0)
    return embed, v.depth * linear + attention, mergers * one_merger


def language_flops(config, tokens: Iterable[int], causal: bool = False) -> int:
    """Forward FLOPs of the decoder layers on rows of the given lengths (square attention, or
    the causal half with ``causal``)."""
    return config.text_config.num_hidden_layers * layer_flops(config, tokens, causal)


def layer_flops(config, tokens: Iterable[int], causal: bool = False) -> int:
    """Forward FLOPs of one decoder layer (all are alike) on rows of the given lengths."""
    _architecture(config)
    c = config.text_config
    hidden, heads, kv = c.hidden_size, c.num_attention_heads, c.num_key_value_heads
    head_dim = getattr(c, "head_dim", None) or hidden // heads
    q, k = heads * head_dim, kv * head_dim
    per_token = 2 * (hidden * q + 2 * hidden * k + q * hidden + 3 * hidden * c.intermediate_size)
    total = 0
    for n in tokens:
        pairs = n * (n + 1) // 2 if causal else n * n
        total += n * per_token + 4 * pairs * q
    return total


def output_flops(config, positions: int) -> int:
    """Forward FLOPs of the output layer at ``positions`` (row, position) pairs."""
    _architecture(config)
    c = config.text_config
    return 2 * positions * c.hidden_size * c.vocab_size


def forward_flops(config, counts: StepCounts, causal: bool = False) -> Flops:
    """FLOPs of one forward pass over ``counts`` (see the module docstring for the formulas)."""
    embed, blocks, mergers = vision_flops(config, counts.grids)
    return Flops(embed + blocks, mergers, language_flops(config, counts.tokens, causal),
                 output_flops(config, counts.output_positions))


def training_flops(config, counts: StepCounts, causal: bool = False, checkpointing: bool = False,
                   checkpoint_fraction: float = 1.0) -> Flops:
    """FLOPs of one training step (forward + backward, every weight trained) over ``counts``:
    3 x forward, the patch embedding 2 x (no gradient for pixels). ``recomputed``: the forward of
    the vision blocks and of the share ``checkpoint_fraction`` (0 to 1) of the decoder layers
    (``models.checkpointing.checkpointed_layers``) but their MLP output projections, run again
    under activation checkpointing (0 without); ValueError for a share outside [0, 1]."""
    embed, blocks, mergers = vision_flops(config, counts.grids)
    layer = layer_flops(config, counts.tokens, causal)
    recomputed = _recomputed(config, counts, blocks, layer, checkpoint_fraction) if checkpointing else 0
    return Flops(2 * embed + 3 * blocks, 3 * mergers, 3 * config.text_config.num_hidden_layers * layer,
                 3 * output_flops(config, counts.output_positions), recomputed)


def _recomputed(config, counts: StepCounts, blocks: int, layer: int, fraction: float) -> int:
    """Forward FLOPs a non-reentrant checkpoint runs again: the vision blocks (``blocks``, all of
    them) and each checkpointed decoder layer (``layer``, one of them) less their MLP output
    projections, which the recomputation stops before (their outputs are not saved for the
    backward)."""
    v, c = config.vision_config, config.text_config
    patches = sum(t * h * w for t, h, w in (_grid(g) for g in counts.grids))
    vision = blocks - v.depth * 2 * patches * v.intermediate_size * v.hidden_size
    text = layer - 2 * sum(counts.tokens) * c.intermediate_size * c.hidden_size
    return vision + len(checkpointed_layers(c.num_hidden_layers, fraction)) * text


def mfu(flops: float, seconds: float, peak_flops_per_s: float) -> float:
    """Model FLOPs utilisation: achieved FLOP/s (``flops`` in ``seconds``) / the peak FLOP/s."""
    if seconds <= 0 or peak_flops_per_s <= 0:
        raise ValueError(f"MFU needs positive time and peak, got {seconds} s and {peak_flops_per_s} FLOP/s")
    return flops / seconds / peak_flops_per_s
