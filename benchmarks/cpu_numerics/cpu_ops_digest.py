"""A digest of every CPU operator the tiny models' training and inference rely on, under the
stages' pinned numerics (``av_grounding.numerics``): run it on two machines and compare the files
to find an operator whose result depends on the CPU.

    python benchmarks/cpu_numerics/cpu_ops_digest.py OUT.json [--model-folder DIR]

Inputs are exact binary fractions drawn with numpy's integer generator (the same on every
machine). Covers matrix products, attention forward and backward, element-wise functions,
reductions, normalisations, convolution, loss, initialisers, random draws, the three AdamW
implementations and, with ``--model-folder``, the built-in Qwen2.5-VL model (weights, tokenizer,
pixels, first loss, every gradient) built there from seed 0 on ``data/dataset/train``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

from av_grounding import numerics

numerics.pin_torch()

import numpy as np  # noqa: E402 (after the pin)
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

RNG = np.random.default_rng(0)


def digest(tensor: torch.Tensor) -> str:
    return hashlib.sha256(tensor.detach().contiguous().view(torch.uint8).numpy().tobytes()).hexdigest()[:12]


def exact(*shape: int, scale: float = 1.0) -> torch.Tensor:
    """float32 values k / 2^20 * scale, k uniform in [-2^20, 2^20)."""
    return torch.from_numpy((RNG.integers(-2**20, 2**20, size=shape) / 2**20 * scale).astype(np.float32))


def operators() -> dict[str, str]:
    out = {"mm_small": digest(exact(300, 64) @ exact(64, 256)),
           "mm_large": digest(exact(512, 1024) @ exact(1024, 768)),
           "mm_long_k": digest(exact(16, 4096) @ exact(4096, 16)),
           "bmm": digest(torch.bmm(exact(8, 30, 16), exact(8, 16, 30))),
           "linear": digest(F.linear(exact(77, 64), exact(192, 64), exact(192)))}
    q, k, v = (exact(2, 4, 300, 16).requires_grad_(True) for _ in range(3))
    attended = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    attended.sum().backward()
    out.update(sdpa=digest(attended), sdpa_grad_q=digest(q.grad), sdpa_grad_k=digest(k.grad))
    x, positive = exact(300, 64, scale=4), exact(64, 64).abs() + 0.1
    functions = {"exp": torch.exp, "log": lambda t: torch.log(t.abs() + 0.1), "sin": torch.sin, "cos": torch.cos,
                 "tanh": torch.tanh, "sigmoid": torch.sigmoid, "silu": F.silu, "gelu": F.gelu,
                 "gelu_tanh": lambda t: F.gelu(t, approximate="tanh"), "erf": torch.erf,
                 "sqrt": lambda t: torch.sqrt(t.abs() + 0.1), "rsqrt": lambda t: torch.rsqrt(t.abs() + 0.1),
                 "pow": lambda t: torch.pow(t.abs() + 0.1, 1.7), "softmax": lambda t: torch.softmax(t, -1),
                 "log_softmax": lambda t: torch.log_softmax(t, -1), "sum": lambda t: t.sum(0),
                 "mean": lambda t: t.mean(-1),
                 "norm": lambda t: t.norm(dim=-1), "cumsum": lambda t: t.cumsum(0), "var": lambda t: t.var(-1),
                 "layer_norm": lambda t: F.layer_norm(t, (64,)),
                 "rms_norm": lambda t: t * torch.rsqrt(t.pow(2).mean(-1, keepdim=True) + 1e-6)}
    out.update({name: digest(function(x)) for name, function in functions.items()})
    out["sqrt_exactly_rounded"] = bool(torch.equal(positive.sqrt(), positive.double().sqrt().float()))
    big = exact(1000, 1000)
    out.update(sum_big=digest(big.sum().reshape(1)), norm_big=digest(torch.linalg.vector_norm(big).reshape(1)),
               conv3d=digest(F.conv3d(exact(720, 3, 2, 14, 14), exact(64, 3, 2, 14, 14), stride=(2, 14, 14))),
               cross_entropy=digest(F.cross_entropy(exact(50, 500, scale=3), torch.from_numpy(RNG.integers(0, 500, 50)))
                                    .reshape(1)))
    generator = torch.Generator().manual_seed(0)
    out.update(randn=digest(torch.randn(1000, generator=generator)),
               randn_short=digest(torch.randn(7, generator=generator)),
               rand=digest(torch.rand(1000, generator=generator)))
    torch.manual_seed(1)
    out["normal_init"] = digest(torch.nn.init.normal_(torch.empty(500, 64)))
    out["kaiming_init"] = digest(torch.nn.init.kaiming_uniform_(torch.empty(64, 64)))
    out["trunc_normal_init"] = digest(torch.nn.init.trunc_normal_(torch.empty(64, 64), std=0.02))
    for kind in ("single_tensor", "foreach", "fused"):
        parameter = torch.nn.Parameter(exact(64, 64))
        optimizer = torch.optim.AdamW([parameter], lr=1e-3, weight_decay=0.01, foreach=kind == "foreach",
                                      fused=True if kind == "fused" else None)
        for _ in range(3):
            parameter.grad = exact(64, 64)
            optimizer.step()
        out[f"adamw_{kind}"] = digest(parameter.data)
    parameters = [torch.nn.Parameter(exact(100, 10)) for _ in range(5)]
    for parameter in parameters:
        parameter.grad = exact(100, 10)
    out["clip_grad_norm"] = digest(torch.nn.utils.clip_grad_norm_(parameters, 1.0).reshape(1))
    return out


def built_in_model(folder: Path) -> dict[str, object]:
    from safetensors.numpy import load_file

    from av_grounding.dataset.formats import read_cosmos
    from av_grounding.dataset.prompts import load_prompts
    from av_grounding.models.builtin import build_builtin
    from av_grounding.models.inputs import Encoder, answer_loss, collate
    from av_grounding.models.loading import load_model

    prompts = load_prompts(Path("prompts/av_grounding.yaml"))
    build_builtin("tiny-qwen2_5_vl", folder, 0, prompts.system, prompts.user, 3136, 40960)
    weights = load_file(str(folder / "model.safetensors"))
    out: dict[str, object] = {
        "model_weights": hashlib.sha256(b"".join(weights[name].tobytes() for name in sorted(weights))).hexdigest()[:12],
        "tokenizer": hashlib.sha256((folder / "tokenizer.json").read_bytes()).hexdigest()[:12]}
    loaded = load_model(folder, "float32", "cpu", "sdpa", "packed")
    encoder = Encoder(loaded.tokenizer, loaded.image_processor, 3136, 40960, 4096)
    encoded = [encoder.encode(sample) for sample in read_cosmos(Path("data/dataset/train"))[:4]]
    out["pixels"] = digest(torch.cat([e.pixel_values for e in encoded]))
    loss = answer_loss(loaded.model, collate(encoded, loaded.tokenizer.pad_token_id, encoder.image_pad))
    loss.backward()
    out["loss"] = float(loss.detach())
    out.update({f"grad:{name}": digest(p.grad) for name, p in sorted(loaded.model.named_parameters())
                if p.grad is not None})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path)
    parser.add_argument("--model-folder", type=Path)
    args = parser.parse_args()
    report = {"torch": torch.__version__, "kernels": torch.backends.cpu.get_cpu_capability(),
              "threads": torch.get_num_threads(), **operators()}
    if args.model_folder:
        report.update(built_in_model(args.model_folder))
    args.out.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
