"""One command line for every stage: ``av-grounding <stage> --help``.

Each stage takes its parameters from its section of ``params.yaml``; any of them can be
overridden with ``--<name> VALUE`` (VALUE is read as YAML: ``7``, ``null``, ``[a, b]`` or ``a,b``).
Input and output paths are explicit options with the defaults that ``dvc.yaml`` uses.
Conventions, file formats and metric definitions: docs/README.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import signal
import sys
import typing
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from . import numerics, workspace
from . import params as params_module
from .errors import PipelineError
from .params import (
    FROM_FILE,
    PRESET_SECTIONS,
    PRESETS,
    EvaluateParams,
    ExtractParams,
    FilterParams,
    FormatParams,
    InferParams,
    RLParams,
    SynthesizeParams,
    TrainParams,
    TransformParams,
    ValidateParams,
    choices,
    field_default,
)


@dataclass(frozen=True)
class StageSpec:
    params_cls: type
    entry: str  # "module:function" taking (params, **paths)
    paths: dict[str, str | None]  # keyword -> default path (None: none), each an option --<keyword>
    summary: str
    sections: dict[str, tuple[str, type]] = dataclasses.field(default_factory=dict)  # keyword -> other params read
    # The path keyword of the folder where it keeps finished work (set aside when interrupted).
    resumable: str | None = None


STAGES: dict[str, StageSpec] = {
    "synthesize": StageSpec(
        SynthesizeParams, "av_grounding.pipeline.synthesize:synthesize",
        {"output": "data/synthetic", "metrics": "metrics/synthesize.json"},
        "Write synthetic clips in the RDS-HQ layout (videos, poses, labels, render truth)."),
    "extract": StageSpec(
        ExtractParams, "av_grounding.pipeline.extract:extract",
        {"output": "data/extracted", "metrics": "metrics/extract.json", "timing": "metrics/timing/extract.json"},
        "Decode every skip_frames-th frame by exact index; write JPEG shards and frame records.", resumable="output"),
    "transform": StageSpec(
        TransformParams, "av_grounding.pipeline.transform:transform",
        {"input": "data/extracted", "output": "data/transformed"},
        "Turn world-frame labels into camera-frame boxes (FLU -> RDF) with the chosen box codec."),
    "filter": StageSpec(
        FilterParams, "av_grounding.pipeline.filter:filter_boxes",
        {"input": "data/transformed", "output": "data/filtered", "metrics": "metrics/curation.json"},
        "Drop boxes by distance, field of view, occlusion and depth; count each reason."),
    "validate": StageSpec(
        ValidateParams, "av_grounding.pipeline.validate:validate",
        {"input": "data/filtered", "images": "data/extracted", "plots": "plots/validation",
         "metrics": "metrics/validation.json"},
        "Draw kept boxes on sample frames and check their re-projection residual in pixels."),
    "format": StageSpec(
        FormatParams, "av_grounding.pipeline.format:format_dataset",
        {"input": "data/filtered", "images": "data/extracted", "output": "data/dataset",
         "metrics": "metrics/dataset.json", "plots": "plots/dataset"},
        "Write train/eval datasets (Cosmos-RL and Qwen-VL layouts) with a measured token budget."),
    "train": StageSpec(
        TrainParams, "av_grounding.pipeline.train:train",
        {"dataset": "data/dataset", "output": "data/train", "metrics": "metrics/train.json", "live": "dvclive/train",
         "timing": "metrics/timing/train.json"},
        "Fine-tune a Cosmos Reason architecture (hf or cosmos-rl backend) on the training split.",
        {"fmt": ("format", FormatParams)}, resumable="output"),
    "rl": StageSpec(
        RLParams, "av_grounding.pipeline.rl:rl",
        {"dataset": "data/dataset", "train": "data/train", "output": "data/rl", "metrics": "metrics/rl.json",
         "live": "dvclive/rl", "timing": "metrics/timing/rl.json"},
        "Reinforcement learning after fine-tuning: GRPO (TRL) rewarded by the project's 3D matching.",
        {"fmt": ("format", FormatParams)}, resumable="output"),
    "infer": StageSpec(
        InferParams, "av_grounding.pipeline.infer:infer",
        {"dataset": "data/dataset", "train": "data/train", "rl": "data/rl", "output": "data/predictions",
         "metrics": "metrics/infer.json", "timing": "metrics/timing/infer.json"},
        "Answer the evaluation split with the base model, every checkpoint, the final model and the RL policies.",
        {"fmt": ("format", FormatParams)}, resumable="output"),
    "evaluate": StageSpec(
        EvaluateParams, "av_grounding.pipeline.evaluate:evaluate",
        {"dataset": "data/dataset", "predictions": "data/predictions", "metrics": "metrics/eval.json",
         "headline": "metrics/headline.json", "plots": "plots/eval", "gt": None, "pred": None, "out": None},
        "Score predictions (COCO AP2D, oriented AP3D, centre-distance mAP, recipe metrics); "
        "standalone: --gt DIR --pred DIR --out FILE."),
}


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def sections_read(stage: str) -> set[str]:
    """The params sections ``stage`` reads: its own and the others of its ``StageSpec``."""
    return {stage} | {section for section, _ in STAGES[stage].sections.values()}


def reads_preset(stage: str) -> bool:
    """Whether a preset can change what ``stage`` reads (it then takes ``--preset`` and tracks the
    top-level ``preset`` in dvc.yaml)."""
    return bool(sections_read(stage) & set(PRESET_SECTIONS))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="av-grounding", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="stage", required=True, metavar="STAGE")
    for name, spec in STAGES.items():
        sub = commands.add_parser(name, help=spec.summary, description=spec.summary)
        sub.add_argument("--params", default="params.yaml", help="parameter file (default: %(default)s)")
        if reads_preset(name):
            sub.add_argument("--preset", dest="preset_name", metavar="NAME",
                             help=f"the recipe's settings for one of its training paths ({', '.join(PRESETS)}) in "
                                  f"the {' and '.join(PRESET_SECTIONS)} sections, or null; instead of the params "
                                  "file's top-level preset (docs/recipe.md#presets). The --<key> options win over it")
        for keyword, default in spec.paths.items():
            sub.add_argument(_flag(keyword), dest=f"path_{keyword}", default=default,
                             help=f"{keyword} path (default: %(default)s)")
        group = sub.add_argument_group(f"parameters (section '{name}' of the params file)")
        hints = typing.get_type_hints(spec.params_cls)
        for field in dataclasses.fields(spec.params_cls):
            default = field_default(field)
            shown = ",".join(map(str, default)) if isinstance(default, tuple) else (
                dict(default) if isinstance(default, Mapping) else default)
            allowed = choices(hints[field.name])
            one_of = f"; one of: {', '.join(map(str, allowed))}" if allowed else ""
            group.add_argument(_flag(field.name), dest=f"param_{field.name}", metavar="VALUE",
                               help=f"{field.metadata.get('help', '')}{one_of} (built-in default: {shown})")
    return parser


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    values = {}
    for key, raw in vars(args).items():
        if key.startswith("param_") and raw is not None:
            values[key[len("param_"):]] = yaml.safe_load(raw)
    return values


def run(argv: list[str] | None = None) -> dict[str, Any]:
    """Parse ``argv``, load the stage's parameters and call its entry point; its summary.
    CPU numerics are pinned first (``numerics``), before any stage module is imported. Under DVC
    the stage holds the workspace (``workspace.exclusive``) and checks params.yaml did not change;
    a resumable stage first puts back what an interrupted run set aside, and sets its output
    aside when interrupted (``workspace.set_aside``; KeyboardInterrupt propagates)."""
    numerics.pin_environment()
    args = build_parser().parse_args(argv)
    spec = STAGES[args.stage]
    module, function = spec.entry.split(":")
    paths = {key: Path(value) if (value := getattr(args, f"path_{key}")) else None for key in spec.paths}
    with workspace.exclusive():
        stage_params, others = _stage_params(spec, args)
        entry = getattr(importlib.import_module(module), function)
        output = paths.get(spec.resumable) if spec.resumable and workspace.run_by_rank_zero() else None
        if output is not None:
            workspace.put_back(output)
        try:
            result = entry(stage_params, **others, **paths)
        except KeyboardInterrupt:
            if output is not None and workspace.set_aside(output):
                print(f"interrupted: {output}'s finished work is set aside in {workspace.interrupted_path(output)}; "
                      "the next run of the stage continues from it", file=sys.stderr)
            raise
        if output is not None:
            workspace.done(output)
        if workspace.run_by_dvc():
            reread, reread_others = _stage_params(spec, args)
            workspace.check_unchanged(
                {args.stage: stage_params, **{spec.sections[k][0]: v for k, v in others.items()}},
                {args.stage: reread, **{spec.sections[k][0]: v for k, v in reread_others.items()}},
                Path(args.params))
    return result


def _stage_params(spec: StageSpec, args: argparse.Namespace) -> tuple[Any, dict[str, Any]]:
    """The stage's own params (command-line overrides applied), and the other sections it reads
    by the keyword its entry point takes each with."""
    raw = getattr(args, "preset_name", None)
    preset = FROM_FILE if raw is None else yaml.safe_load(raw)  # --preset null: none, whatever the file names
    return (params_module.load(spec.params_cls, args.stage, args.params, _overrides(args), preset),
            {key: params_module.load(cls, section, args.params, preset=preset)
             for key, (section, cls) in spec.sections.items()})


def main(argv: list[str] | None = None) -> int:
    """Run one stage; exit status 0 when it completed, 2 when a parameter or the input was bad or
    too many of its items failed (one message naming the key or file), 128 + the signal's number
    when interrupted (130: Ctrl-C, 143: SIGTERM). Any other exception is a bug and propagates with its traceback.
    Warnings (input scored, but maybe not as meant) print as one ``warning:`` line each."""
    warnings.formatwarning = lambda message, category, *args, **kwargs: f"warning: {message}\n"
    try:
        with workspace.interruptible():
            result = run(argv)
    except PipelineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        signum = getattr(exc, "signum", signal.SIGINT)
        print(f"interrupted ({signal.Signals(signum).name})", file=sys.stderr)
        return 128 + signum
    failures = result.pop("failures", [])
    for failure in failures:
        print(f"FAILED {failure.describe()}", file=sys.stderr)
    print(yaml.safe_dump(result, sort_keys=False).rstrip())
    if failures:
        print(f"{len(failures)} item(s) failed; the rest completed", file=sys.stderr)
    return 0


if __name__ == "__main__":  # python -m av_grounding.cli STAGE ... (how train.gpus starts its processes)
    sys.exit(main())
