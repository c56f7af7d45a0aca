"""Processes of one torchrun launch: whether this process is one, joining their process group,
and the collectives the training paths share.

    torchrun --standalone --nproc_per_node 2 stages/train.py ...                       # data parallel
    torchrun --standalone --nproc_per_node 2 stages/train.py --deepspeed configs/deepspeed_zero3.json ...

NCCL joins the processes on GPUs (one GPU per process, ``LOCAL_RANK``), gloo on CPUs, which is
how the tests run two processes on a machine without a GPU.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import torch

from ..executors import signal_on_parent_death


def run_under_torchrun(processes: int, argv: list[str]) -> int:
    """Run ``av-grounding <argv>`` as ``processes`` processes of one torchrun launch on this
    machine (rendezvous on localhost) and wait; returns torchrun's exit status. If this process
    dies, even by SIGKILL, torchrun gets SIGTERM and ends its processes: none runs on orphaned."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}",
               "-m", "av_grounding.cli", *argv]
    return subprocess.run(command, preexec_fn=lambda: signal_on_parent_death(signal.SIGTERM)).returncode


def launched() -> bool:
    """Whether torchrun (or another launcher setting ``LOCAL_RANK``) started this process."""
    return "LOCAL_RANK" in os.environ


def join() -> tuple[int, int, str]:
    """Join the launch's process group (once): rank, world size and this process's device
    (``cuda:<LOCAL_RANK>``, or ``cpu`` without GPUs)."""
    local_rank = int(os.environ["LOCAL_RANK"])
    device = f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"
    if device != "cpu":
        torch.cuda.set_device(local_rank)
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if device != "cpu" else "gloo")
    return torch.distributed.get_rank(), torch.distributed.get_world_size(), device


def barrier() -> None:
    torch.distributed.barrier()


def mean_over_processes(value: torch.Tensor) -> torch.Tensor:
    """The mean of a tensor over all processes (every process calls it)."""
    total = value.detach().clone()
    torch.distributed.all_reduce(total)
    return total / torch.distributed.get_world_size()


def sum_over_processes(values: list[int], device: str) -> list[int]:
    """Element-wise sums of small integer counts over all processes (every process calls it)."""
    total = torch.tensor(values, dtype=torch.int64, device=device)
    torch.distributed.all_reduce(total)
    return total.tolist()
