"""Where the `train` stage's step time goes (issue 24, item 6): the hf backend's own steps
(``training.hf.train_hf``, the stage's code path) under ``torch.profiler``.

It reads the train and format sections of a params file (``dvc exp run`` leaves the run's own in
the workspace, presets and ``-S`` overrides applied), trains on format's output for ``--wait``
unprofiled steps (CUDA start, allocator growth, first kernel launches) and then ``--active``
profiled ones, and stops there: no model is saved. It writes one JSON file:

- ``steps``: every step's wall seconds, samples, tokens and model TFLOP/s (the stage's timing);
- ``optimizer_s``: each step's optimizer update, timed between two device synchronisations
  (``--plain-update``: StochasticAdamW unfused), and whether it ran compiled;
- ``compiled_update_check`` (``--check-update``): the compiled update against the plain one;
- ``profile``: ``common.summarize_profile`` of the profiled steps (GPU busy share, top kernels,
  host operators, annotated spans: ``Optimizer.step``, the DataLoader's ``__next__``).

Usage, on the GPU machine, after a ``dvc exp run`` that formatted the data for the model
(``hub_checkpoints.sh profile`` does both):

    PYTHONPATH=src:benchmarks python benchmarks/hub_checkpoints/profile_train.py \\
        -S train.batch_size=8 -S train.grad_accum=2 --out /tmp/out/profile-mb8.json

A CPU run with a tiny folder tries the flow (``tests/test_hub.py``).
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import sys
import time
from pathlib import Path

import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: common.py
from common import command_line, device_name, summarize_profile, sync_sources, synchronize, write_json

from av_grounding.params import FormatParams, ParamsError, TrainParams, load
from av_grounding.pipeline.train import base_model, check_family
from av_grounding.training import hf
from av_grounding.training.config import resolved
from av_grounding.training.data import padding_multiple
from av_grounding.training.hf import train_hf
from av_grounding.training.loop import HookBase, StepResult


class ProfiledEnough(Exception):
    """Raised after the last profiled step: the run ends there, before saving a model."""


class ProfileHook(HookBase):
    """Profiles steps ``wait + 1`` to ``wait + active`` (1-based) and stops the run after them."""

    def __init__(self, wait: int, active: int, stacks: bool = False):
        self.wait, self.active, self.stacks = wait, active, stacks
        self.steps: list[dict] = []
        self.profiler: torch.profiler.profile | None = None
        self.started = 0.0
        self.summary: dict | None = None

    def after_step(self, trainer, result: StepResult) -> None:
        self.steps.append({"step": result.step, "seconds": round(result.seconds, 4), "samples": result.samples,
                           "tokens": result.tokens, "model_tflops": round(result.flops / result.seconds / 1e12, 2),
                           "loss": round(result.loss, 4)})
        print(self.steps[-1], flush=True)
        if result.step == self.wait:
            activities = [torch.profiler.ProfilerActivity.CPU]
            if trainer.device.startswith("cuda"):
                activities.append(torch.profiler.ProfilerActivity.CUDA)
            synchronize(trainer.device)
            # Python stacks reach the operators' events only with the verbose experimental config
            verbose = torch._C._profiler._ExperimentalConfig(verbose=True) if self.stacks else None
            self.profiler = torch.profiler.profile(activities=activities, with_stack=self.stacks,
                                                   experimental_config=verbose)
            self.profiler.start()
            self.started = time.perf_counter()
        elif result.step == self.wait + self.active and self.profiler is not None:
            synchronize(trainer.device)
            wall = time.perf_counter() - self.started
            self.profiler.stop()
            self.summary = summarize_profile(self.profiler, wall)
            if self.stacks:
                self.summary["sync_sources"] = sync_sources(self.profiler)
            raise ProfiledEnough


def timed_optimizer_steps(device: str, plain_update: bool) -> tuple[list[float], dict]:
    """Seconds of every optimizer update from now on, between two device synchronisations (wraps
    ``step`` of torch's AdamW and of ``StochasticAdamW``; the synchronisations cost the step
    whatever overlap it had, which the profile's own figures do not), and a dict that gets
    ``compiled``: whether StochasticAdamW's last update ran compiled. ``plain_update``:
    StochasticAdamW with ``compiled=False`` (the unfused update, for comparison)."""
    from av_grounding.training.optim import StochasticAdamW

    seconds: list[float] = []
    seen: dict = {}
    for cls in (torch.optim.AdamW, StochasticAdamW):
        plain = cls.step

        def step(self, *args, _plain=plain, **kwargs):
            if plain_update and isinstance(self, StochasticAdamW):
                self.compiled = False
            synchronize(device)
            started = time.perf_counter()
            out = _plain(self, *args, **kwargs)
            synchronize(device)
            seconds.append(round(time.perf_counter() - started, 4))
            seen["compiled"] = (self._compiled is not None and self.compiled is not False
                                if isinstance(self, StochasticAdamW) else None)
            return out

        cls.step = step
    return seconds, seen


def compiled_update_check(device: str, n: int = 1 << 22) -> dict:
    """``adamw_piece`` compiled against plain on ``n`` random bf16 weights (one step from random
    moments, the same noise): how many stored values differ and by how much (fp32 rounding that
    turns a stochastic rounding the other way); and whether the rounding noise made on
    ``device``, plain and compiled, equals the CPU's (the same integer hash everywhere)."""
    from av_grounding.training.optim import ROWS, adamw_piece, noise_key, rounding_noise

    generator = torch.Generator(device=device).manual_seed(0)

    def inputs():
        g = generator.manual_seed(0)
        w, grad, m = (torch.randn(n, device=device, generator=g).mul(s).bfloat16() for s in (0.02, 1.0, 1e-3))
        v = torch.rand(n, device=device, generator=g).mul(1e-6).bfloat16()
        return w, grad, m, v

    key = noise_key(0, 0, 3)
    scalars = torch.tensor([1 - 2e-7 * 0.01, 0.1, 0.999, 0.001, (1 - 0.999**3) ** 0.5, 1e-8, -2e-7 / (1 - 0.9**3)],
                           device=device)
    counters = torch.tensor([key, 0], dtype=torch.int32, device=device)
    plain, fused = inputs(), inputs()
    adamw_piece(*plain, counters, scalars)
    torch.compile(adamw_piece, dynamic=True)(*fused, counters, scalars)
    out: dict = {"elements": n}
    for name, a, b in zip(("weight", "exp_avg", "exp_avg_sq"), plain, fused):
        out[name] = {"differing": int((a != b).sum()), "max_abs_difference": float((a.float() - b.float()).abs().max())}
    compiled_noise = torch.compile(rounding_noise, dynamic=True)
    key_start = torch.tensor([key, 5], dtype=torch.int32, device=device).unbind()  # as the optimizer passes them
    out["noise_equals_cpu"] = all(
        torch.equal(make(*key_start, n, row, device).cpu(), rounding_noise(key, 5, n, row))
        for row in range(ROWS) for make in (rounding_noise, compiled_noise))
    return out


MARKER = ".profile_train"  # in the training folder: what a rerun may empty


def work_folder(work: Path) -> None:
    """Make ``work`` an empty training folder marked as this script's, emptying one it made
    before; ``SystemExit`` for a file or a folder with anything else in it."""
    if work.exists() and (not work.is_dir() or (any(work.iterdir()) and not (work / MARKER).exists())):
        raise SystemExit(f"--work {work}: not an empty folder or one this script made before; name a new one")
    shutil.rmtree(work, ignore_errors=True)  # no resume from an earlier profile
    work.mkdir(parents=True)
    (work / MARKER).touch()


def overrides(pairs: list[str]) -> dict[str, dict]:
    """``section.key=value`` strings as {section: {key: value}} (values parsed as YAML)."""
    out: dict[str, dict] = {}
    for pair in pairs:
        key, _, value = pair.partition("=")
        section, _, name = key.partition(".")
        if not name or section not in ("train", "format"):
            raise SystemExit(f"-S {pair}: expected train.<key>=<value> or format.<key>=<value>")
        out.setdefault(section, {})[name] = yaml.safe_load(value)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("-S", dest="set", action="append", default=[], help="section.key=value (train, format)")
    parser.add_argument("--dataset", default="data/dataset", help="format's output folder")
    parser.add_argument("--work", default="/tmp/profile-train",
                        help="the training folder: new, empty, or one this script made (emptied first)")
    parser.add_argument("--wait", type=int, default=2, help="steps before the profiled ones")
    parser.add_argument("--active", type=int, default=2, help="profiled steps")
    parser.add_argument("--plain-update", action="store_true",
                        help="StochasticAdamW unfused (compiled=False; needs train.precision bf16_stochastic)")
    parser.add_argument("--check-update", action="store_true", help="also compare the compiled update with the plain")
    parser.add_argument("--device-positions", action="store_true",
                        help="rotary positions, vision inputs and logit columns computed in the forward, on the device "
                             "(the step before it computed them on the host copy of each micro-batch), for comparison")
    parser.add_argument("--stacks", action="store_true",
                        help="record Python stacks: where the host reads device values (slows the profiled steps)")
    parser.add_argument("--out", required=True, help="the JSON file written")
    args = parser.parse_args()
    if args.wait < 1 or args.active < 1:
        parser.error("--wait and --active must be at least 1 (the profile starts after step --wait)")
    if not Path(args.params).is_file():
        parser.error(f"--params {args.params}: no such file")
    changes = overrides(args.set)
    params = load(TrainParams, "train", args.params, {**changes.get("train", {}),
                                                      "max_steps": args.wait + args.active + 1, "save_every": 0})
    fmt = load(FormatParams, "format", args.params, changes.get("format"))
    if args.plain_update and params.precision != "bf16_stochastic":
        parser.error("--plain-update compares StochasticAdamW's update: it needs train.precision bf16_stochastic "
                     f"(the params give {params.precision})")
    params = resolved(params)
    dataset, work = Path(args.dataset), Path(args.work)
    try:
        check_family(params.model, fmt, dataset)  # the stage's checks: the folder, its architecture and the data's
    except ParamsError as exc:
        parser.error(str(exc))
    work_folder(work)
    base = base_model(params, fmt, work)  # a built-in model is built there, as the stage builds it
    hook = ProfileHook(args.wait, args.active, args.stacks)
    if args.device_positions:  # the trainer's batches as collate made them: the forward finds the positions
        hf.with_host_positions = lambda owner, batch, pin=False: batch
    device = "cuda" if torch.cuda.is_available() else "cpu"
    optimizer_s, seen = timed_optimizer_steps(device, args.plain_update)
    with contextlib.suppress(ProfiledEnough):
        train_hf(params, fmt, base, dataset, work, [hook])
    if hook.summary is None:
        raise SystemExit(f"{args.out}: the run ended after {len(hook.steps)} steps, before the profiled ones")
    write_json(args.out, {
        "command": command_line(__file__), "device": device_name(device), "torch": torch.__version__,
        "model": params.model, "precision": params.precision, "gradient_checkpointing": params.gradient_checkpointing,
        "checkpoint_fraction": params.checkpoint_fraction,
        "fused_kernels": params.fused_kernels, "batch_size": params.batch_size, "grad_accum": params.grad_accum,
        "max_pixels": fmt.max_pixels, "loader_workers": params.loader_workers,
        "pad_to_multiple_of": padding_multiple(params.pad_to_multiple_of, device),
        "host_positions": not args.device_positions,
        "optimizer_compiled": seen.get("compiled"),  # None: torch's AdamW
        "compiled_update_check": compiled_update_check(device) if args.check_update else None,
        "peak_gpu_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if device == "cuda" else None,
        "steps": hook.steps, "optimizer_s": optimizer_s, "profiled_steps": args.active, "profile": hook.summary})
    print(f"wrote {args.out}: GPU busy {hook.summary['gpu_busy_share']} of {hook.summary['wall_s']} s")


if __name__ == "__main__":
    main()
