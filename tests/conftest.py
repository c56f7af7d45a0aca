"""Shared fixtures: a small synthetic RDS-HQ root built once per test session. Tests run with
the CPU numerics the stages pin (``av_grounding.numerics``), set here before anything computes a
tensor, so exact training outcomes hold on every x86-64 CPU."""

from __future__ import annotations

from av_grounding import numerics

numerics.pin_torch()

# Imports after the pin (some load PyTorch); pyproject.toml lets E402 pass in this file.
from pathlib import Path

import pytest

from av_grounding.local_s3 import moto_server
from av_grounding.models.builtin import BUILTIN_MODELS
from av_grounding.params import (
    ExtractParams,
    FilterParams,
    FormatParams,
    SynthesizeParams,
    TransformParams,
    ValidateParams,
)
from av_grounding.pipeline.extract import extract
from av_grounding.pipeline.filter import filter_boxes
from av_grounding.pipeline.format import format_dataset
from av_grounding.pipeline.synthesize import synthesize
from av_grounding.pipeline.transform import transform
from av_grounding.pipeline.validate import validate

REPO = Path(__file__).resolve().parents[1]

# Every test this session collected (node ids), before -k, -m or --lf deselect any.
COLLECTED = pytest.StashKey[frozenset[str]]()


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    config.stash[COLLECTED] = frozenset(item.nodeid for item in items)

SMALL = SynthesizeParams(num_clips=2, cameras=("camera_front_wide_120fov", "camera_cross_left_120fov"),
                         duration_s=1.0, width=320, height=180, num_vehicles=8, num_pedestrians=2,
                         workers=1)
# The built-in models that train in tens of milliseconds a step on a CPU.
TINY = tuple(name for name in BUILTIN_MODELS if name.startswith("tiny-"))
# How the training, inference and cosmos-rl tests format the curated frames (one eval clip).
TRAINING_FORMAT = FormatParams(prompts=str(REPO / "prompts/av_grounding.yaml"), eval_clips=1)


def safetensors_weights(folder: Path) -> dict:
    """Every tensor of a model folder's safetensors files (one file or shards), by name."""
    from safetensors.torch import load_file

    return {name: tensor for shard in sorted(folder.glob("*.safetensors")) for name, tensor in load_file(shard).items()}


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


def params_for(root: Path, small_params, **changes) -> ExtractParams:
    """Extract params for ``root`` (every 7th frame of the small clips' cameras), with ``changes``."""
    values = dict(input_root=str(root), cameras=small_params.cameras, skip_frames=7, workers=1)
    values.update(changes)
    return ExtractParams(**values)


@pytest.fixture(scope="module")
def extracted(synthetic_root, small_params, tmp_path_factory) -> tuple[Path, dict]:
    """The small synthetic root extracted with ``params_for``'s defaults: (output folder, metrics)."""
    out = tmp_path_factory.mktemp("extracted")
    metrics = extract(params_for(synthetic_root, small_params), out, out / "metrics.json")
    return out, metrics


@pytest.fixture(scope="module")
def s3_endpoint():
    """The URL of a moto_server (an S3-compatible server) on a free local port."""
    with moto_server() as endpoint:
        yield endpoint


@pytest.fixture
def aws_env(monkeypatch):
    """Test credentials for the moto_server, in the environment."""
    for key, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                       "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(key, value)




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


@pytest.fixture(scope="session")
def data_baseline(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A pipeline copy with the shrunk params (``dvc_workspace.SHRUNK_PARAMS``) whose data stages
    (``DATA_STAGES``) ran and were committed, once per session: tests copy it
    (``dvc_workspace.copy_workspace``) rather than run the data stages again."""
    from dvc_workspace import DATA_STAGES, commit_all, dvc, make_workspace

    workspace = make_workspace(tmp_path_factory.mktemp("data-baseline") / "repo")
    dvc(workspace, "repro", *DATA_STAGES)
    commit_all(workspace, "Baseline data")
    return workspace
