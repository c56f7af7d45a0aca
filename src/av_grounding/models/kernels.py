"""Fused GPU kernels from the ``liger-kernel`` package (Triton) for the two architectures.

``use_liger_kernels`` swaps, in a loaded Qwen2.5-VL or Qwen3-VL model, the rotary position
embedding, the RMSNorms and (Qwen2.5-VL) the SwiGLU MLPs of the language model for Liger's fused
kernels, which do in one kernel what PyTorch's modules do in several elementwise passes (the
rotary and norm multiplications were 12 % of the GPU time of a Qwen2.5-VL-3B training step).
The loss stays the project's own (``models.inputs.answer_loss``, logits only at answer
positions), so Liger's fused linear cross-entropy is not used. Triton kernels run on CUDA only.
"""

from __future__ import annotations

from ..params import ParamsError

# Liger's own choice per architecture: it fuses Qwen3-VL's MLP only in its MoE variant.
SWIGLU = {"qwen2_5_vl": True, "qwen3_vl": False}


def use_liger_kernels(model) -> None:
    """Patch ``model`` (a ``Qwen2_5_VLForConditionalGeneration`` or ``Qwen3VLForConditionalGeneration``
    on a CUDA device) in place; the rotary function and the RMSNorm and MLP classes are also
    replaced in transformers' modeling module, so every model of that architecture built later in
    this process gets them too. ValueError for another model type,
    ParamsError when liger-kernel is not installed."""
    try:
        from liger_kernel.transformers import apply_liger_kernel_to_qwen2_5_vl, apply_liger_kernel_to_qwen3_vl
    except ImportError as exc:
        raise ParamsError(f"train.fused_kernels liger needs the liger-kernel package (pip install '.[gpu]'): {exc}") \
            from None

    apply = {"qwen2_5_vl": apply_liger_kernel_to_qwen2_5_vl, "qwen3_vl": apply_liger_kernel_to_qwen3_vl}
    kind = model.config.model_type
    if kind not in apply:
        raise ValueError(f"liger kernels: model type {kind!r} is neither qwen2_5_vl nor qwen3_vl")
    apply[kind](rope=True, rms_norm=True, swiglu=SWIGLU[kind], cross_entropy=False, fused_linear_cross_entropy=False,
                model=model)
