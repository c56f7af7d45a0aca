"""Batched generation with left padding, greedy by default, through the same prompt builder as
training (``training.collate.Encoder``), so images and text match what the model learned."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..dataset.formats import Sample
from ..training.collate import Encoder, collate


@dataclass
class Generated:
    text: str
    token_ids: list[int]
    token_logprobs: list[float]  # log-probability of each generated token under the model


@torch.no_grad()
def generate(model, encoder: Encoder, samples: list[Sample], max_new_tokens: int, device: str = "cpu") -> list[Generated]:
    tokenizer = encoder.tokenizer
    batch = collate([encoder.encode(s, with_answer=False) for s in samples], tokenizer.pad_token_id, encoder.image_pad, left_pad=True)
    inputs = {k: v.to(device) for k, v in batch.items() if k != "labels"}
    model.eval()
    out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                         output_scores=True, return_dict_in_generate=True,
                         eos_token_id=encoder.im_end, pad_token_id=tokenizer.pad_token_id)
    new = out.sequences[:, inputs["input_ids"].shape[1]:]
    logprobs = torch.stack([torch.log_softmax(s.float(), dim=-1) for s in out.scores], dim=1)
    chosen = logprobs.gather(2, new[:, : logprobs.shape[1]].unsqueeze(-1)).squeeze(-1)
    results = []
    for row in range(len(samples)):
        ids = new[row].tolist()
        length = ids.index(encoder.im_end) if encoder.im_end in ids else len(ids)
        results.append(Generated(tokenizer.decode(ids[:length], skip_special_tokens=False), ids[:length],
                                 chosen[row, :length].tolist()))
    return results
