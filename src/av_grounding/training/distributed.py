"""Processes of one torchrun launch: whether this process is one, joining their process group,
and the collectives the training paths share.

    torchrun --standalone --nproc_per_node 2 stages/train.py ...                       # data parallel
    torchrun --standalone --nproc_per_node 2 stages/train.py --deepspeed configs/deepspeed_zero3.json ...

NCCL joins the processes on GPUs (one GPU per process, ``LOCAL_RANK``), gloo on CPUs, which is
how the tests run two processes on a machine without a GPU.
"""

from __future__ import annotations

import datetime
import os
import signal
import subprocess
import sys

import torch

from ..processes import signal_on_parent_death

COLLECTIVE_TIMEOUT = datetime.timedelta(hours=1)


def run_under_torchrun(processes: int, argv: list[str]) -> int:
    """Run ``av-grounding <argv>`` as ``processes`` processes of one torchrun launch on this
    machine (rendezvous on localhost) and wait; returns torchrun's exit status. If this process
    dies, even by SIGKILL, torchrun gets SIGTERM; if it is interrupted (SIGINT, SIGTERM), torchrun
    gets SIGTERM and is waited for. torchrun then ends its processes: none runs on orphaned."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}",
               "-m", "av_grounding.cli", *argv]
    # prctl(PR_SET_PDEATHSIG) must run in the child, between fork and exec: only preexec_fn can do that
    launcher = subprocess.Popen(command, preexec_fn=lambda: signal_on_parent_death(signal.SIGTERM))  # noqa: PLW1509
    try:
        return launcher.wait()
    except BaseException:  # KeyboardInterrupt, or SIGTERM turned into an exception: let torchrun clean up
        launcher.terminate()
        launcher.wait()
        raise


def launched() -> bool:
    """Whether torchrun (or another launcher setting ``LOCAL_RANK``) started this process."""
    return "LOCAL_RANK" in os.environ


def position() -> tuple[int, int]:
    """This process's rank and its launch's number of processes, read from torchrun's environment
    before any process group is joined; (0, 1) outside a launch."""
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def join() -> tuple[int, int, str]:
    """Join the launch's process group (once): rank, world size and this process's device
    (``cuda:<LOCAL_RANK>``, or ``cpu`` without GPUs)."""
    local_rank = int(os.environ["LOCAL_RANK"])
    device = f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"
    if device != "cpu":
        torch.cuda.set_device(local_rank)
    signal_on_parent_death(signal.SIGTERM)  # torchrun killed outright: this process ends too
    if not torch.distributed.is_initialized():
        # Rank 0 alone builds the base model and writes checkpoints while the others wait at a
        # barrier: allow an hour (the default, 10 minutes, is short for a large model on a slow disk).
        torch.distributed.init_process_group("nccl" if device != "cpu" else "gloo", timeout=COLLECTIVE_TIMEOUT)
    return torch.distributed.get_rank(), torch.distributed.get_world_size(), device


def barrier() -> None:
    torch.distributed.barrier()


def sum_over_processes(values: list[float], device: str) -> list[float]:
    """Element-wise sums of a few numbers over all processes, in one all-reduce (every process
    calls it; float64, exact for counts below 2**53)."""
    total = torch.tensor(values, dtype=torch.float64, device=device)
    torch.distributed.all_reduce(total)
    return total.tolist()
