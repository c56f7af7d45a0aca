"""The table of benchmarks/hub_checkpoints/results/hub_checkpoints.md from the run folders that
benchmarks/hub_checkpoints/hub_checkpoints.sh writes (one per TAG):

    python benchmarks/hub_checkpoints/hub_report.py benchmarks/hub_checkpoints/results

Each folder holds ``params.yaml`` as the experiment ran, ``metrics/`` (train.json, timing/train.json,
timing/infer.json, eval.json), ``curves/*.tsv`` (DVCLive) and ``dvc-exp-run.log``. Prints a
markdown table, one row per run: what ran (model folder, preset, LoRA, precision, checkpointing
and its share of decoder layers, samples a micro-batch x micro-batches a step),
the train stage's rates over the steps after the first (samples/s, model TFLOP/s counted from the
operations, MFU against the card's datasheet bf16 rate and against its dense bf16 matrix-product
rate measured on the same machine, ``matmul_peak.json`` beside the run folders), its peak memory
against the pre-check's estimate, minutes per 1,000 samples, loss at the first and last step,
and infer's images/s. A second table gives the generation speed of each published-shape folder at
batch 1 and batched (``infer-<model>.json``, from benchmarks/infer_throughput/infer_throughput.py),
a third the train stage's profiled steps (``profile-*.json``, from profile_train.py).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: common.py
from common import markdown_table

from av_grounding.models.flops import DATASHEET_BF16, mfu
from av_grounding.params import TrainParams, load

HEADER = ["run", "model", "preset", "trains", "precision", "ckpt", "micro x accum", "steps", "samples/s (steps 2+)",
          "min / 1k samples", "TFLOP/s (ops)", "MFU (datasheet)", "MFU (measured)", "peak GiB", "estimated GiB",
          "loss first -> last", "infer images/s", "exp run"]


def _json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {}


def _loss(folder: Path) -> str:
    path = folder / "curves" / "loss.tsv"
    if not path.exists():
        return "-"
    values = [float(line.split("\t")[-1]) for line in path.read_text().splitlines()[1:] if line.strip()]
    return f"{values[0]:.3f} -> {values[-1]:.3f}" if values else "-"


def _log(folder: Path) -> tuple[str, str]:
    """(estimated peak GiB, exit and wall time of the experiment) from the run's log."""
    path = folder / "dvc-exp-run.log"
    text = path.read_text(errors="replace") if path.exists() else ""
    estimate = re.search(r"estimated peak memory ([0-9.]+) GiB", text)
    ended = re.search(r"dvc exp run exit (\d+) after (\d+) s", text)
    return (estimate.group(1) if estimate else "-",
            f"exit {ended.group(1)}, {int(ended.group(2)) / 60:.1f} min" if ended else "did not end")


def steady_rates(timing: dict) -> tuple[float | None, float | None]:
    """(samples/s, model TFLOP/s) over the steps after the first (its CUDA start, allocator growth
    and first kernel launches are not the steady state), from ``timing/train.json``'s per-step
    columns; the run's overall rates where it made one step only."""
    per_step = timing.get("per_step", {})
    seconds = per_step.get("seconds", [])[1:]
    if not seconds or sum(seconds) <= 0:
        return timing.get("samples_per_s"), timing.get("model_tflops_per_s")
    samples = sum(rate * s for rate, s in zip(per_step["samples_per_s"][1:], seconds))
    tflops = per_step.get("model_tflops_per_s", [])[1:]
    work = None if not tflops or None in tflops else sum(t * s for t, s in zip(tflops, seconds))
    return round(samples / sum(seconds), 3), (round(work / sum(seconds), 2) if work is not None else None)


def _checkpointing(train: TrainParams) -> str:
    """The ckpt column: no, yes (every decoder layer) or the share of decoder layers checkpointed."""
    if not train.gradient_checkpointing:
        return "no"
    return "yes" if train.checkpoint_fraction == 1 else f"{train.checkpoint_fraction:g} of layers"


def row(folder: Path, matmul_tflops: float | None) -> list:
    """One table row of the run in ``folder``; ``matmul_tflops`` is the card's measured dense bf16 rate."""
    preset = yaml.safe_load((folder / "params.yaml").read_text()).get("preset")
    train = load(TrainParams, "train", folder / "params.yaml")  # with the preset's values
    metrics = _json(folder / "metrics" / "train.json")
    timing = _json(folder / "metrics" / "timing" / "train.json")
    infer = _json(folder / "metrics" / "timing" / "infer.json")
    rate, tflops = steady_rates(timing)
    measured = f"{tflops / matmul_tflops:.3f}" if tflops and matmul_tflops else "-"
    peak = DATASHEET_BF16.get(timing.get("device", ""))
    datasheet = f"{mfu(tflops * 1e12, 1.0, peak):.3f}" if tflops and peak else "-"
    estimate, ended = _log(folder)
    return [folder.name, Path(train.model).name, preset or "-", f"LoRA r{train.lora_rank}" if train.lora else "all",
            train.precision, _checkpointing(train),
            f"{train.batch_size} x {train.grad_accum}",
            timing.get("steps_run", "-"), rate or "-", f"{1000 / rate / 60:.1f}" if rate else "-",
            tflops or "-", datasheet, measured,
            metrics.get("peak_gpu_memory_gib", "-"), estimate, _loss(folder),
            infer.get("final", {}).get("images_per_s", "-"), ended]


SPEED_HEADER = ["model folder", "frames", "batch", "images/s", "tokens/s", "answers as at batch 1"]


def speed_rows(results: Path) -> list[list]:
    """One row per batch size of every ``infer-<model>.json`` in ``results``."""
    rows = []
    for path in sorted(results.glob("infer-*.json")):
        report = _json(path)
        rows += [[path.stem.removeprefix("infer-"), report["frames"], run["batch_size"], run["images_per_s"],
                  run["tokens_per_s"], f"{run['answers_identical_to_first_run']}/{report['frames']}"]
                 for run in report["runs"]]
    return rows


PROFILE_HEADER = ["profile", "micro x accum", "pad to", "update", "fused kernels", "positions", "s / step",
                  "TFLOP/s (ops)", "MFU (measured)", "update s / step", "GPU busy", "host syncs / step", "peak GiB"]


def profile_rows(results: Path, matmul_tflops: float | None) -> list[list]:
    """One row per ``profile-*.json`` (benchmarks/hub_checkpoints/profile_train.py) in ``results``:
    the profiled steps' mean wall time, model TFLOP/s and MFU against the measured matmul rate,
    the optimizer update's synchronised time (its kind: compiled or plain StochasticAdamW, ``-``
    for torch's AdamW), where the rotary positions were computed (``host``, the training step's;
    ``device``, in the forward; ``-`` for profiles made before the choice existed), the GPU's busy
    share and the host's waits for the device per step (``cudaStreamSynchronize`` calls; where
    none were recorded, the ``.item()`` and ``nonzero`` calls). A profile recorded with Python
    stacks (``--stacks``) runs slower: its times read ``(stacks)``, not comparable with the rest."""
    rows = []
    for path in sorted(results.glob("profile-*.json")):
        report = _json(path)
        profiled = report["steps"][-report["profiled_steps"]:]
        seconds = sum(step["seconds"] for step in profiled)
        tflops = sum(step["model_tflops"] * step["seconds"] for step in profiled) / seconds
        update = report["optimizer_s"][-report["profiled_steps"]:]
        syncs = report["profile"]["host_sync_calls"]
        waits = syncs.get("cudaStreamSynchronize") or syncs.get("aten::_local_scalar_dense", 0) + syncs.get(
            "aten::nonzero", 0)
        per_step = waits / len(profiled)
        rows.append([path.stem.removeprefix("profile-"), f"{report['batch_size']} x {report['grad_accum']}",
                     report.get("pad_to_multiple_of", 1),
                     {True: "compiled", False: "plain"}.get(report.get("optimizer_compiled", False), "-"),
                     report["fused_kernels"],
                     {True: "host", False: "device"}.get(report.get("host_positions"), "-"),
                     f"{seconds / len(profiled):.2f}" + (" (stacks)" if "sync_sources" in report["profile"] else ""),
                     f"{tflops:.1f}",
                     f"{tflops / matmul_tflops:.3f}" if matmul_tflops else "-",
                     f"{sum(update) / len(update):.2f}", report["profile"]["gpu_busy_share"], f"{per_step:.0f}",
                     report["peak_gpu_memory_gib"]])
    return rows


def sync_lines(results: Path) -> list[str]:
    """For each profile made with ``--stacks``: where its host reads came from (the profile's
    ``sync_sources``), one line each: the calls per profiled step, the operator and the frames
    that tell the sources apart."""
    lines = []
    for path in sorted(results.glob("profile-*.json")):
        report = _json(path)
        sources = report["profile"].get("sync_sources")
        if not sources:
            continue
        lines.append(f"\n{path.stem.removeprefix('profile-')}: host reads a step, by source")
        lines += [f"- {s['calls'] / report['profiled_steps']:g} `{s['name']}` <- {' <- '.join(s['stack'])}"
                  for s in sources]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path)
    args = parser.parse_args()
    folders = sorted(p for p in args.results.iterdir() if (p / "params.yaml").exists())
    matmul_tflops = _json(args.results / "matmul_peak.json").get("bf16_matmul_tflops")
    print("\n".join(markdown_table(HEADER, [row(folder, matmul_tflops) for folder in folders])))
    speeds = speed_rows(args.results)
    if speeds:
        print("\n" + "\n".join(markdown_table(SPEED_HEADER, speeds)))
    profiles = profile_rows(args.results, matmul_tflops)
    if profiles:
        print("\n" + "\n".join(markdown_table(PROFILE_HEADER, profiles) + sync_lines(args.results)))


if __name__ == "__main__":
    main()
