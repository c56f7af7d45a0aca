"""Training data in optimizer steps: which samples each step takes, and a data loader whose worker
processes decode and resize the images while the accelerator trains.

The order is a function of (seed, epoch) alone, so a run resumed at step N takes exactly the
batches an uninterrupted run takes from step N on, whatever the number of loader workers.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from ..dataset.formats import Sample
from ..models.inputs import Encoder, Text, collate


def global_batch(batch_size: int, grad_accum: int, world: int) -> int:
    """Samples of one optimizer step over all processes."""
    return batch_size * grad_accum * world


@dataclass(frozen=True)
class StepPlan:
    """Which samples each optimizer step takes: ``samples`` shuffled per epoch with
    ``seed``; a step takes ``batch_size x grad_accum x world`` of them (the global batch), split
    into micro-batches of ``batch_size``, micro-batch m of rank r being the (m x world + r)-th.
    An epoch's leftover that does not fill a step is skipped."""

    samples: int
    batch_size: int
    grad_accum: int
    world: int
    seed: int

    @property
    def per_step(self) -> int:
        return global_batch(self.batch_size, self.grad_accum, self.world)

    @property
    def steps_per_epoch(self) -> int:
        return max(1, self.samples // self.per_step)

    def step_samples(self, step: int) -> np.ndarray:
        """Indices of the samples of optimizer step ``step`` (0-based), all ranks together."""
        epoch, position = divmod(step, self.steps_per_epoch)
        order = np.random.default_rng([self.seed, epoch]).permutation(self.samples)
        return order[position * self.per_step: (position + 1) * self.per_step]

    def micro_batches(self, step: int, rank: int) -> list[list[int]]:
        """This rank's ``grad_accum`` micro-batches of step ``step``."""
        chunk = self.step_samples(step)
        return [chunk[(m * self.world + rank) * self.batch_size:][: self.batch_size].tolist()
                for m in range(self.grad_accum)]


class _StepBatches(torch.utils.data.Sampler):
    """Micro-batches of steps ``start``..``stop - 1`` for one rank, in training order."""

    def __init__(self, plan: StepPlan, rank: int, start: int, stop: int):
        self.plan, self.rank, self.start, self.stop = plan, rank, start, stop

    def __iter__(self) -> Iterator[list[int]]:
        for step in range(self.start, self.stop):
            yield from self.plan.micro_batches(step, self.rank)

    def __len__(self) -> int:
        return (self.stop - self.start) * self.plan.grad_accum


class _WithPixels(torch.utils.data.Dataset):
    """Budget-checked samples; items load their image's pixels (in a loader worker)."""

    def __init__(self, encoder: Encoder, examples: list[tuple[Sample, Text]]):
        self.encoder, self.examples = encoder, examples

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int):
        return self.encoder.with_pixels(*self.examples[index])


def loader_workers(requested: int | None, device: str) -> int:
    """``train.loader_workers``; null: up to 8 worker processes on a GPU (bounded by the CPU
    cores), none on a CPU, where the training step itself needs the cores."""
    if requested is not None:
        return requested
    return min(8, max(0, (os.cpu_count() or 1) - 1)) if device != "cpu" else 0


def padding_multiple(requested: int | None, device: str) -> int:
    """``train.pad_to_multiple_of``; null: 64 on a GPU (a few lengths repeat, so cuDNN and cuBLAS
    plan each once), 1 on a CPU (no padding: nothing to plan, and the padding would cost)."""
    if requested is not None:
        return requested
    return 64 if device != "cpu" else 1


def step_loader(encoder: Encoder, examples: list[tuple[Sample, Text]], plan: StepPlan, rank: int, start: int,
                stop: int, workers: int, pin_memory: bool, multiple: int = 1) -> torch.utils.data.DataLoader:
    """Collated micro-batches (dicts of tensors, right-padded to a multiple of ``multiple``
    tokens) of steps ``start``..``stop - 1``."""
    return torch.utils.data.DataLoader(
        _WithPixels(encoder, examples), batch_sampler=_StepBatches(plan, rank, start, stop),
        collate_fn=functools.partial(collate, pad_id=encoder.tokenizer.pad_token_id, image_pad_id=encoder.image_pad,
                                     multiple=multiple),
        num_workers=workers, pin_memory=pin_memory, persistent_workers=False,
        prefetch_factor=4 if workers else None,
        # Its own generator: starting an iteration then draws its worker seed from it, not from the
        # global torch RNG that checkpoints save and a resume restores (a resumed run would end one
        # draw off an uninterrupted one, and dropout would differ after it).
        generator=torch.Generator().manual_seed(0))
