"""Shared fixtures: a small synthetic RDS-HQ root built once per test session. Tests run with
the CPU numerics the stages pin (``av_grounding.numerics``), set here before anything computes a
tensor, so exact training outcomes hold on every x86-64 CPU."""

from __future__ import annotations

from av_grounding import numerics

numerics.pin_torch()

from pathlib import Path  # noqa: E402 (imports after the pin: some load PyTorch)

import pytest  # noqa: E402

from av_grounding.models.builtin import BUILTIN_MODELS  # noqa: E402
from av_grounding.pipeline.extract import extract  # noqa: E402
from av_grounding.pipeline.filter import filter_boxes  # noqa: E402
from av_grounding.pipeline.format import format_dataset  # noqa: E402
from av_grounding.pipeline.transform import transform  # noqa: E402
from av_grounding.pipeline.validate import validate  # noqa: E402
from av_grounding.params import (ExtractParams, FilterParams, FormatParams, SynthesizeParams,  # noqa: E402
                                 TransformParams, ValidateParams)
from av_grounding.pipeline.synthesize import synthesize  # noqa: E402

REPO = Path(__file__).resolve().parents[1]

SMALL = SynthesizeParams(num_clips=2, cameras=("camera_front_wide_120fov", "camera_cross_left_120fov"),
                         duration_s=1.0, width=320, height=180, num_vehicles=8, num_pedestrians=2,
                         workers=1)
# The built-in models that train in tens of milliseconds a step on a CPU.
TINY = tuple(name for name in BUILTIN_MODELS if name.startswith("tiny-"))
# How the training, inference and cosmos-rl tests format the curated frames (one eval clip).
TRAINING_FORMAT = FormatParams(prompts=str(REPO / "prompts/av_grounding.yaml"), eval_clips=1)


def format_for(model: str) -> FormatParams:
    """TRAINING_FORMAT with the model family of a built-in model name (train checks they agree)."""
    import dataclasses

    return dataclasses.replace(TRAINING_FORMAT, model_family=model.partition("-")[2])


@pytest.fixture(scope="session")
def small_params() -> SynthesizeParams:
    return SMALL


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("synthetic")
    synthesize(SMALL, root)
    return root




def curate(params: ExtractParams, work: Path) -> tuple[dict, dict]:
    """Extract, transform and filter into ``work`` (extracted/, transformed/, filtered/,
    curation.json); returns the extract and curation metrics."""
    extracted = extract(params, work / "extracted")
    transform(TransformParams(), work / "extracted", work / "transformed")
    return extracted, filter_boxes(FilterParams(), work / "transformed", work / "filtered", work / "curation.json")


def validated(work: Path, output: Path, sample_count: int) -> dict:
    """`validate` over a ``curate`` folder, plots and metrics under ``output``; its summary."""
    return validate(ValidateParams(sample_count=sample_count), work / "filtered", work / "extracted",
                    output / "plots", output / "validation.json")


@pytest.fixture(scope="session")
def curated(synthetic_root, tmp_path_factory) -> tuple[Path, dict]:
    """Extract (every 3rd frame), transform and filter the small synthetic root once:
    (work folder with extracted/, transformed/, filtered/, curation.json; curation metrics)."""
    work = tmp_path_factory.mktemp("curated")
    _, curation = curate(ExtractParams(input_root=str(synthetic_root), cameras=SMALL.cameras, skip_frames=3,
                                       workers=1), work)
    return work, curation


@pytest.fixture(scope="session")
def dataset(curated, tmp_path_factory) -> Path:
    """The curated frames in both training layouts, formatted with TRAINING_FORMAT."""
    folder = tmp_path_factory.mktemp("training") / "dataset"
    format_dataset(TRAINING_FORMAT, curated[0] / "filtered", curated[0] / "extracted", folder)
    return folder
