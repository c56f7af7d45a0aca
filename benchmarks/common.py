"""What several benchmarks share, written once: the machine a run measured on, the command that
produced a result file, timing (host clock, GPU synchronisation, profiler device time), and the
JSON and markdown writers of the result files.

A benchmark script in ``benchmarks/<name>/`` imports it after putting ``benchmarks/`` on the path:

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: common.py
    from common import machine, write_json

so that ``python benchmarks/<name>/<script>.py`` runs from the repository root. Folder digests
(every file's path and bytes) come from ``av_grounding.storage.folder_digest``.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

# the evaluator's headline metrics (evaluation.bootstrap.HEADLINE) as result tables name them
HEADLINE_NAMES = {"ap2d50": "AP2D50", "ap3d": "AP3D", "ap3d_far": "AP3D far", "center_distance_map": "centre mAP",
                  "recall": "recall", "precision": "precision"}
BENCHMARKS = Path(__file__).resolve().parent
REPO = BENCHMARKS.parent


def machine() -> dict:
    """CPU model name (``/proc/cpuinfo``), logical cores, Python version and platform string."""
    cpuinfo = Path("/proc/cpuinfo")
    lines = cpuinfo.read_text().splitlines() if cpuinfo.exists() else []
    cpu = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")),
               platform.processor())
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()}


def video_machine() -> dict:
    """``machine()`` with the PyAV and libavcodec versions that decode the videos."""
    import av

    return {**machine(), "pyav": av.__version__, "ffmpeg": av.library_versions.get("libavcodec")}


def device_name(device: str) -> str:
    """The card's name (``torch.cuda.get_device_name()``) for a CUDA device, else the CPU's model
    name (``machine()``)."""
    if device.startswith("cuda"):
        import torch

        return torch.cuda.get_device_name()
    return machine()["cpu"]


def command_line(script: str | Path, args: list[str] | None = None) -> str:
    """``python <script, relative to the repository root> <args>`` (``sys.argv[1:]`` unless
    given), as a result file records the command that wrote it."""
    path = Path(script).resolve()
    shown = path.relative_to(REPO) if path.is_relative_to(REPO) else path
    return " ".join(["python", shown.as_posix(), *(sys.argv[1:] if args is None else args)]).strip()


def timed(function: Callable, *args) -> tuple[Any, float]:
    """``function(*args)`` and its wall seconds (host clock)."""
    started = time.perf_counter()
    result = function(*args)
    return result, time.perf_counter() - started


def synchronize(device: str) -> None:
    """Wait for the GPU's queued work (a no-op off CUDA), before reading the host clock."""
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def is_device_work(event) -> bool:
    """A profiler event that is device work itself (a kernel, memcpy or memset on the GPU), not a host
    operator (whose ``self_device_time_total`` repeats the kernels it launched) nor a GPU-side user
    annotation (a span around other kernels, e.g. ``Optimizer.step``)."""
    return event.device_type.name != "CPU" and not getattr(event, "is_user_annotation", False)


def device_time(events) -> tuple[float, float]:
    """(kernel seconds, busy seconds) of profiler events: the sum of the device work's durations,
    each counted once, and the length of the union of their intervals (kernels overlapping on
    several streams count once)."""
    spans = sorted((e.time_range.start, e.time_range.end) for e in events if is_device_work(e))
    total = sum(end - start for start, end in spans)
    busy, reach = 0.0, float("-inf")
    for start, end in spans:
        if end > reach:
            busy += end - max(start, reach)
            reach = end
    return total / 1e6, busy / 1e6


ATTENTION_KERNEL_WORDS = ("attention", "flash", "fmha", "sdpa")
# Calls that make the host wait for the device. On CUDA every wait goes through
# ``cudaStreamSynchronize`` (its count is the total); the operators say which kind: a value read
# on the host (``.item()``, ``int()``: ``_local_scalar_dense``; ``.tolist()`` shows only as a copy
# and the synchronisation) and a data-dependent shape (``nonzero``).
HOST_SYNC_CALLS = ("aten::_local_scalar_dense", "aten::nonzero", "cudaStreamSynchronize", "cudaDeviceSynchronize",
                   "cudaEventSynchronize")


def sync_sources(prof, frames: int = 4, top: int = 15) -> list[dict]:
    """Where the host read device values, from a ``torch.profiler.profile`` made with
    ``with_stack=True``: the ``top`` (operator, innermost ``frames`` Python frames) pairs of the
    waiting operators among ``HOST_SYNC_CALLS`` (``_local_scalar_dense``, ``nonzero``: the
    runtime's own synchronisations carry no Python stack, and ``.tolist()`` shows only as a
    copy), most calls first; frames inside torch itself and module annotations are left out, so
    each names the model or project code that asked."""
    sources: dict[tuple[str, tuple[str, ...]], int] = {}
    for event in prof.events():
        if event.name not in HOST_SYNC_CALLS or not event.stack:
            continue
        stack = tuple(line for line in event.stack if not line.startswith(("torch/", "<built-in", "nn.Module:"))
                      and "/torch/" not in line)[:frames]
        sources[event.name, stack] = sources.get((event.name, stack), 0) + 1
    ranked = sorted(sources.items(), key=lambda item: (-item[1], item[0]))
    return [{"name": name, "calls": calls, "stack": list(stack)} for (name, stack), calls in ranked[:top]]


def profile_summary(work, device: str) -> dict:
    """``summarize_profile`` of one call of ``work()`` (train_throughput.py and infer_throughput.py)."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.startswith("cuda") else [])
    synchronize(device)
    started = time.perf_counter()
    with profile(activities=activities) as prof:
        work()
        synchronize(device)
    return summarize_profile(prof, time.perf_counter() - started)


def summarize_profile(prof, wall: float) -> dict:
    """GPU busy time of a finished ``torch.profiler.profile`` against ``wall`` seconds, the top
    kernels, the host operators that launched the most device time, the most host time (self and
    within annotated spans such as ``Optimizer.step`` or a DataLoader's ``__next__``), the GPU-side
    spans of those annotations, and the attention kernels launched. Device time counts each
    kernel once (``device_time``); the summary of before issue 24 also added each host operator's
    share of its kernels, about twice the truth."""
    kernel_s, busy = device_time(prof.events())
    averages = prof.key_averages()
    kernels = sorted((e for e in averages if is_device_work(e)), key=lambda e: -e.self_device_time_total)
    operators = sorted((e for e in averages if e.device_type.name == "CPU" and not e.is_user_annotation),
                       key=lambda e: -e.self_device_time_total)
    spans = [e for e in averages if e.is_user_annotation]
    attention = sum(e.count for e in kernels if any(w in e.key.lower() for w in ATTENTION_KERNEL_WORDS))
    syncs = {e.key: e.count for e in averages if e.key in HOST_SYNC_CALLS}

    def rows(events, field: str, unit: str) -> list[dict]:
        return [{"name": e.key[:80], unit: round(getattr(e, field) / 1e3, 2), "calls": e.count} for e in events[:12]]

    return {"wall_s": round(wall, 4), "gpu_busy_s": round(busy, 4), "gpu_busy_share": round(busy / wall, 3),
            "gpu_kernel_s": round(kernel_s, 4), "attention_kernels": attention, "kernel_kinds": len(kernels),
            "host_sync_calls": syncs, "top_kernels": rows(kernels, "self_device_time_total", "gpu_ms"),
            "top_operators_by_gpu_time": rows(operators, "self_device_time_total", "gpu_ms"),
            "top_host_calls": rows(sorted(averages, key=lambda e: -e.self_cpu_time_total), "self_cpu_time_total",
                                   "cpu_ms"),
            "annotated_host_spans": rows(sorted((e for e in spans if e.device_type.name == "CPU"),
                                                key=lambda e: -e.cpu_time_total), "cpu_time_total", "cpu_ms"),
            "annotated_gpu_spans": rows(sorted((e for e in spans if e.device_type.name != "CPU"),
                                               key=lambda e: -e.device_time_total), "device_time_total", "gpu_ms")}


def write_json(path: str | Path, report: dict) -> None:
    """``report`` as indented JSON and a final newline, the folder made first, written atomically
    (``storage.atomic_write_bytes``: a run killed mid-write leaves the old file or none)."""
    from av_grounding.storage import atomic_write_bytes

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, (json.dumps(report, indent=2) + "\n").encode())


def markdown_table(header: list[str], rows: list[list]) -> list[str]:
    """Lines of a markdown table: the header, its ``|---|`` rule, then one line per row."""
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *("| " + " | ".join(str(cell) for cell in row) + " |" for row in rows)]


def unpack(archive: Path, into: Path) -> Path:
    """``archive`` (a .tar.gz a benchmark script wrote) unpacked into ``into``; returns ``into``."""
    import tarfile

    with tarfile.open(archive) as tar:
        tar.extractall(into, filter="data")
    return into


def rescore(params: Path, truth: Path, predictions: Path, column: str, scratch: Path):
    """The model version ``column`` of a run scored again with the evaluator's clip bootstrap
    (``evaluation.bootstrap.clip_bootstrap``, a ``BootstrapResult``), under the run's own
    ``evaluate`` params (``params``: its params.yaml; codec, thresholds, replicates, seed).
    ``truth``: the evaluation split's truth as ``eval_truth.tar.gz`` (``data/dataset/eval/text``,
    learning_common.sh's ``collect_run``); ``predictions``: ``predictions.tar.gz``
    (``data/predictions/<column>/``); both unpacked under ``scratch``. Runs scored on the same
    frames with the same params share their draws, so their differences pair
    (``bootstrap.paired_change``). Raises ``EvaluationError`` (from ``load_frames``) for a
    prediction that is not a prediction file, ``KeyError`` for a column the archive lacks,
    ``ValueError`` for a run whose ``evaluate.bootstrap`` asked for no intervals (under 2)."""
    from av_grounding.evaluation.bootstrap import clip_bootstrap
    from av_grounding.evaluation.config import EvaluationConfig
    from av_grounding.evaluation.frames import load_frames
    from av_grounding.params import EvaluateParams, load

    settings = load(EvaluateParams, "evaluate", params)
    if settings.bootstrap < 2:
        raise ValueError(f"{params}: evaluate.bootstrap is {settings.bootstrap}: the run asked for no intervals")
    config = EvaluationConfig.from_params(settings)
    text = unpack(truth, scratch / "truth") / "data" / "dataset" / "eval" / "text"
    folder = unpack(predictions, scratch / "predictions") / "data" / "predictions" / column
    if not folder.is_dir():
        raise KeyError(f"{predictions}: no prediction column '{column}'")
    return clip_bootstrap(load_frames(text, folder, config.codec), config, settings.bootstrap, settings.bootstrap_seed)


def interval_cell(interval, sign: bool = False) -> str:
    """``0.430 [0.350, 0.510]`` (``sign``: ``+0.012 [-0.020, +0.045]``) for a
    ``bootstrap.Interval``; ``-`` when its value is None, the value alone without bounds."""
    if interval.value is None:
        return "-"
    if sign:
        value = f"{interval.value:+.3f}"
        return value if interval.low is None else f"{value} [{interval.low:+.3f}, {interval.high:+.3f}]"
    return f"{interval.value:.3f}" + ("" if interval.low is None else f" [{interval.low:.3f}, {interval.high:.3f}]")


def seed_group(name: str) -> str:
    """A run folder's name without its seed part (``-s<seed>``, as learning.sh names runs): the
    runs that differ by seed only share it."""
    return "-".join(part for part in name.split("-") if not (part[:1] == "s" and part[1:].isdigit()))
