"""Batched generation with left padding, greedy by default, through the same prompt builder as
training (``models.inputs.Encoder``), so images and text match what the model learned."""

from __future__ import annotations

import typing
from dataclasses import dataclass

import torch

from ..dataset.formats import Sample
from ..params import KVCache
from .inputs import Encoder, collate

KV_CACHES: tuple[str, ...] = typing.get_args(KVCache)


@dataclass
class Generated:
    text: str
    token_ids: list[int]
    token_logprobs: list[float]  # log-probability of each generated token under the model


class GreedyLogProbs:
    """A logits processor that records, at each decoding step, the log-probability of the token
    greedy decoding picks (the highest score), so nothing of size batch x vocabulary is kept per
    step: ``output_scores`` would keep 300 frames x 152k entries x 512 steps, 93 GB."""

    def __init__(self):
        self.steps: list[torch.Tensor] = []

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        self.steps.append(torch.log_softmax(scores.float(), dim=-1).max(dim=-1).values)
        return scores


@torch.no_grad()
def generate(model, encoder: Encoder, samples: list[Sample], max_new_tokens: int, device: str = "cpu",
             kv_cache: KVCache = "static") -> list[Generated]:
    """Greedy answers to ``samples`` in one left-padded batch, each cut at its ``<|im_end|>``,
    with every generated token's log-probability; the model folder's sampling settings
    (``generation_config.json``) are not used. ``kv_cache``: transformers' cache kind;
    ``static`` preallocates it at the longest length, which lets transformers compile the decoding
    step on CUDA (82M model on an H200: 3.3x the dynamic cache at batch 1, 20x at batch 32,
    ``benchmarks/infer_throughput/results/infer_throughput.md``); ``dynamic`` grows it token by token. In fp32 on
    CPU, where transformers does not compile, both give the same answers (tested); in bf16 the
    compiled step rounds differently, so near-ties between tokens may flip."""
    from transformers import GenerationConfig, LogitsProcessorList

    if kv_cache not in KV_CACHES:
        raise ValueError(f"kv_cache {kv_cache!r}: one of {', '.join(KV_CACHES)}")
    tokenizer = encoder.tokenizer
    batch = collate([encoder.encode(s, with_answer=False) for s in samples], tokenizer.pad_token_id, encoder.image_pad,
                    left_pad=True)
    inputs = {k: v.to(device) for k, v in batch.items() if k != "labels"}
    model.eval()
    recorder = GreedyLogProbs()
    # A whole generation config, not overrides of the folder's: the published checkpoints' own
    # (generation_config.json) sample, and Qwen2.5-VL's applies a repetition penalty of 1.05,
    # which would bend greedy answers full of repeated digits.
    config = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False, num_beams=1, repetition_penalty=1.0,
                              eos_token_id=encoder.im_end, pad_token_id=tokenizer.pad_token_id,
                              cache_implementation=kv_cache, return_dict_in_generate=True)
    out = model.generate(**inputs, generation_config=config, logits_processor=LogitsProcessorList([recorder]))
    new = out.sequences[:, inputs["input_ids"].shape[1]:]
    chosen = torch.stack(recorder.steps, dim=1).cpu()
    results = []
    for row in range(len(samples)):
        ids = new[row].tolist()
        length = ids.index(encoder.im_end) if encoder.im_end in ids else len(ids)
        results.append(Generated(tokenizer.decode(ids[:length], skip_special_tokens=False), ids[:length],
                                 chosen[row, :length].tolist()))
    return results
