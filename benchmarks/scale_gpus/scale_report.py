"""Write benchmarks/scale_gpus/results/scale_gpus.md and its loss plot from the folder
benchmarks/scale_gpus/scale_gpus.sh fills.

    python benchmarks/scale_gpus/scale_report.py benchmarks/scale_gpus/results \\
        --out benchmarks/scale_gpus/results/scale_gpus.md

Per run: samples/s (median over the steps after the first ``WARMUP_STEPS``: start-up, CUDA and
Triton compilation), the ratio to its one-GPU reference and the scaling efficiency
(two-GPU samples/s over twice one GPU's), peak GPU memory of rank 0, and the loss against the run
that takes the same samples per step on one GPU (relative difference per step).
"""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

WARMUP_STEPS = 10


@dataclass(frozen=True)
class Comparison:
    """A run and the one-GPU runs it is measured against: ``speed`` for samples/s (the fastest
    one-GPU way to take the same global batch), ``loss`` for the loss curve (the one-GPU run
    taking the same samples per step in the same micro-batches)."""

    run: str
    speed: str
    loss: str


COMPARISONS = (
    Comparison("one-gpu", "one-gpu-b32", "one-gpu"),
    Comparison("one-gpu-b32", "one-gpu-b32", "one-gpu"),
    Comparison("ddp-2gpu", "one-gpu-b32", "one-gpu"),
    Comparison("zero3-2gpu", "one-gpu-b32", "one-gpu"),
    Comparison("cosmos-rl-1gpu", "cosmos-rl-1gpu", "cosmos-rl-1gpu"),
    Comparison("cosmos-rl-2gpu", "cosmos-rl-1gpu", "cosmos-rl-1gpu"),
    Comparison("3b-one-gpu", "3b-one-gpu", "3b-one-gpu"),
    Comparison("3b-zero3-2gpu", "3b-one-gpu", "3b-one-gpu"),
)

GROUP_TITLES = {"one-gpu-b32": "small model, hf backend", "cosmos-rl-1gpu": "small model, cosmos-rl",
                "3b-one-gpu": "3B shape"}


def curve(root: Path, run: str, metric: str) -> pd.Series | None:
    """A run's DVCLive curve by step, or None where the run left none."""
    path = root / f"{run}-{metric}.tsv"
    if not path.exists():
        return None
    table = pd.read_csv(path, sep="\t")
    return table.set_index("step")[metric]


def median_rate(root: Path, run: str) -> float | None:
    rates = curve(root, run, "samples_per_s")
    if rates is None or rates.empty:
        return None
    steady = rates[rates.index >= WARMUP_STEPS]
    return float((steady if not steady.empty else rates).median())


def loss_difference(root: Path, run: str, reference: str) -> tuple[float | None, float | None]:
    """Median and maximum over common steps of |loss - reference loss| / reference loss."""
    loss, ref = curve(root, run, "loss"), curve(root, reference, "loss")
    if loss is None or ref is None or run == reference:
        return None, None
    common = loss.index.intersection(ref.index)
    if common.empty:
        return None, None
    relative = ((loss[common] - ref[common]).abs() / ref[common].abs()).to_numpy()
    return float(np.median(relative)), float(relative.max())


def rows(root: Path) -> list[dict]:
    table = []
    for c in COMPARISONS:
        metrics_path = root / f"{c.run}.json"
        if not metrics_path.exists():
            continue
        metrics = json.loads(metrics_path.read_text())
        rate, reference_rate = median_rate(root, c.run), median_rate(root, c.speed)
        processes = metrics.get("processes") or 1
        ratio = rate / reference_rate if rate and reference_rate else None
        median_diff, max_diff = loss_difference(root, c.run, c.loss)
        loss = curve(root, c.run, "loss")
        table.append({
            "run": c.run, "backend": metrics.get("backend"), "processes": processes,
            "samples/s": rate, "x one GPU": ratio,
            "scaling efficiency": ratio / processes if ratio is not None and processes > 1 else None,
            "peak GiB (rank 0)": metrics.get("peak_gpu_memory_gib"),
            "loss, last 20 steps": float(loss.iloc[-20:].mean()) if loss is not None else None,
            "loss vs " + "one GPU": None if median_diff is None else f"{median_diff:.1e} / {max_diff:.1e}",
        })
    return table


def plot(root: Path, image: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups: dict[str, list[str]] = {}  # runs measured against the same one-GPU run share a panel
    for c in COMPARISONS:
        groups.setdefault(GROUP_TITLES[c.speed], []).append(c.run)
    figure, axes = plt.subplots(1, len(groups), figsize=(5 * len(groups), 3.8))
    for axis, (title, runs) in zip(axes, groups.items()):
        for run in runs:
            loss = curve(root, run, "loss")
            if loss is not None:
                axis.plot(loss.index + 1, loss.to_numpy(), linewidth=0.8, label=run)
        axis.set(title=title, xlabel="optimizer step", ylabel="training loss", yscale="log")
        if axis.lines:
            axis.legend(fontsize=8)
        else:
            axis.text(0.5, 0.5, "not run", ha="center", va="center", transform=axis.transAxes)
    figure.tight_layout()
    figure.savefig(image, dpi=100, metadata={"Software": None})
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("root", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    image = args.out.with_suffix(".png")
    plot(args.root, image)
    table = pd.DataFrame(rows(args.root))
    header = (args.root / "README.md").read_text() if (args.root / "README.md").exists() else ""
    table = table.astype(object).where(table.notna(), None)  # nothing to measure: a dash, not nan
    body = table.to_markdown(index=False, floatfmt=".3g", missingval="-") if not table.empty else "(no runs)"
    args.out.write_text(f"{header}\n{body}\n\nLoss vs one GPU: median / maximum over the steps of the relative "
                        f"difference per step.\n\n![loss curves]({os.path.relpath(image, args.out.parent)})\n")


if __name__ == "__main__":
    main()
