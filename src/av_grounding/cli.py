"""One command line for every stage: ``av-grounding <stage> --help``.

Each stage takes its parameters from its section of ``params.yaml``; any of them can be
overridden with ``--<name> VALUE`` (VALUE is read as YAML: ``7``, ``null``, ``[a, b]`` or ``a,b``).
Input and output paths are explicit options with the defaults that ``dvc.yaml`` uses.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from . import params as params_module
from .params import ExtractParams, ParamsError, SynthesizeParams


@dataclass(frozen=True)
class StageSpec:
    params_cls: type
    entry: str  # "module:function" taking (params, output, metrics_path)
    output: str
    metrics: str
    summary: str


STAGES: dict[str, StageSpec] = {
    "synthesize": StageSpec(SynthesizeParams, "av_grounding.synth.clips:synthesize", "data/synthetic",
                            "metrics/synthesize.json",
                            "Write synthetic clips in the RDS-HQ layout (videos, poses, labels, render truth)."),
    "extract": StageSpec(ExtractParams, "av_grounding.curation.extract:extract", "data/extracted",
                         "metrics/extract.json",
                         "Decode every skip_frames-th frame by exact index and write JPEGs plus frame records."),
}


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="av-grounding", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="stage", required=True, metavar="STAGE")
    for name, spec in STAGES.items():
        sub = commands.add_parser(name, help=spec.summary, description=spec.summary)
        sub.add_argument("--params", default="params.yaml", help="parameter file (default: %(default)s)")
        sub.add_argument("--output", default=spec.output, help="output folder (default: %(default)s)")
        sub.add_argument("--metrics", default=spec.metrics, help="metrics JSON file (default: %(default)s)")
        group = sub.add_argument_group(f"parameters (section '{name}' of the params file)")
        for field in dataclasses.fields(spec.params_cls):
            default = field.default
            shown = ",".join(default) if isinstance(default, tuple) else default
            group.add_argument(_flag(field.name), dest=f"param_{field.name}", metavar="VALUE",
                               help=f"{field.metadata.get('help', '')} (built-in default: {shown})")
    return parser


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    values = {}
    for key, raw in vars(args).items():
        if key.startswith("param_") and raw is not None:
            values[key[len("param_"):]] = yaml.safe_load(raw)
    return values


def run(argv: list[str] | None = None) -> dict[str, Any]:
    args = build_parser().parse_args(argv)
    spec = STAGES[args.stage]
    stage_params = params_module.load(spec.params_cls, args.stage, args.params, _overrides(args))
    module, function = spec.entry.split(":")
    entry = getattr(importlib.import_module(module), function)
    return entry(stage_params, Path(args.output), Path(args.metrics))


def main(argv: list[str] | None = None) -> int:
    try:
        result = run(argv)
    except (ParamsError, FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    failures = result.pop("failures", [])
    for failure in failures:
        print(f"FAILED {failure.describe()}", file=sys.stderr)
    print(yaml.safe_dump(result, sort_keys=False).rstrip())
    if failures:
        print(f"{len(failures)} item(s) failed; the rest completed", file=sys.stderr)
    return 0
