"""The `train` stage: resolve the base model, run a backend, place the result where `infer` looks.

Outputs under the training folder:
  base/         the model before fine-tuning (built here for the built-in models; absent for a hub id or path)
  checkpoints/  step_NNNNNN/ Hugging Face folders written during training
  model/        the fine-tuned model
  run.json      where fine-tuning started (base folder or hub id), how many steps it took, and
                the sha256 of inputs.json (what `infer` compares to know its answers are current)
  inputs.json   what the run was made from: every train parameter, the number of processes, the
                format parameters the encoder reads, the sha256 of the prompts, of the training split and of
                the code that trains (``sources.code_digest``). A rerun
                resumes from the newest checkpoint only when these match; otherwise it clears the
                earlier run's checkpoints and state and starts from the base model.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any

import yaml

from .. import numerics
from ..dataset.prompts import load_prompts
from ..errors import PipelineError
from ..models.builtin import ARCHITECTURES, BUILTIN_MODELS, build_builtin, split_name
from ..params import FormatParams, ParamsError, TrainParams
from ..sources import code_digest
from ..storage import dumps_json, folder_digest, remove_partials, stored_json, write_json
from ..training import distributed
from ..training.config import resolved
from ..training.cosmos_rl import RUN_FOLDER
from .outputs import Manifest, write_report
from .reporting import report_hooks

INPUTS = "inputs.json"

# Seconds to wait for the hub's answer about a model id that is not in the local cache.
HUB_TIMEOUT_S = 10.0


def looks_like_path(model: str) -> bool:
    """Whether ``train.model`` is written as a folder rather than a hub id (``org/name``): it
    starts with ``.``, ``/`` or ``~``, or holds more than one ``/`` or another path separator."""
    separators = {os.sep, os.altsep or os.sep} - {"/"}
    return model.startswith((".", "/", "~")) or model.count("/") > 1 or any(s in model for s in separators)


@functools.cache  # one question to the hub per id and process (only an answer that it loads is kept)
def check_hub_model(model: str) -> None:
    """``ParamsError`` unless the hub id ``model`` can load: from the local Hugging Face cache,
    or from the hub, asked once (HUB_TIMEOUT_S) instead of the retries of a download. With
    HF_HUB_OFFLINE set, only the cache counts."""
    import httpx
    from huggingface_hub import constants, get_hf_file_metadata, hf_hub_url, try_to_load_from_cache
    from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError, HFValidationError

    not_here = (f"train.model {model!r} is neither a built-in model ({', '.join(BUILTIN_MODELS)}), a local folder "
                f"nor in the local Hugging Face cache ({constants.HF_HUB_CACHE})")
    try:
        if isinstance(try_to_load_from_cache(model, "config.json"), str):
            return
    except HFValidationError as exc:
        raise ParamsError(f"train.model {model!r} is not a valid Hugging Face id: {exc}") from None
    if constants.HF_HUB_OFFLINE:
        raise ParamsError(f"{not_here}, and HF_HUB_OFFLINE is set: download it first (hf download {model}) "
                          "or name its folder")
    try:
        get_hf_file_metadata(hf_hub_url(model, "config.json"), timeout=HUB_TIMEOUT_S)
    except HfHubHTTPError as exc:
        raise ParamsError(f"{not_here}, and the hub answers: {str(exc).splitlines()[0]}") from None
    except (httpx.HTTPError, OSError, EntryNotFoundError) as exc:
        raise ParamsError(f"{not_here}, and the hub cannot be reached ({type(exc).__name__}: "
                          f"{str(exc).splitlines()[0] if str(exc) else 'no answer'})") from None


def model_source(model: str) -> str | None:
    """Where ``train.model`` loads from: None for a built-in model, else its local folder or hub
    id. ``ParamsError`` naming train.model for a missing folder, a name that is none of these, or
    a hub id neither cached nor reachable; checked before any work."""
    if model in BUILTIN_MODELS:
        return None
    local = Path(model).expanduser()
    if local.exists():
        from ..models.loading import missing_files

        missing = missing_files(local) if local.is_dir() else ["everything (it is a file)"]
        if missing:
            raise ParamsError(f"train.model {model!r}: not a model folder; it lacks {', '.join(missing)}")
        return model if local == Path(model) else str(local)
    if looks_like_path(model):
        raise ParamsError(f"train.model {model!r}: no such folder ({local.absolute()})")
    if "/" not in model:  # a typo, not a download
        raise ParamsError(f"train.model {model!r} is not a built-in model ({', '.join(BUILTIN_MODELS)}), "
                          "a local folder or a Hugging Face id (org/name)")
    check_hub_model(model)
    return model


def base_model(params: TrainParams, fmt: FormatParams, output: Path, build: bool = True) -> Path | str:
    """The folder or hub id fine-tuning starts from (a built-in model is built there unless
    ``build`` is false: other processes of a distributed launch wait for the first one to build it)."""
    if (source := model_source(params.model)) is not None:
        return source
    if build:
        prompts = load_prompts(fmt.prompts)
        build_builtin(params.model, output / "base", params.seed, prompts.system, prompts.user,
                      fmt.min_pixels, fmt.max_pixels)
    return output / "base"


def training_inputs(params: TrainParams, fmt: FormatParams, dataset: Path) -> dict[str, Any]:
    """What a training run is made of (see ``inputs.json`` above): equal inputs, equal run."""
    prompts = load_prompts(fmt.prompts)
    return {"train": dataclasses.asdict(params), "processes": distributed.position()[1],
            "format": {key: getattr(fmt, key) for key in ("min_pixels", "max_pixels", "model_max_length")},
            "prompts_sha256": hashlib.sha256(f"{prompts.system}\0{prompts.user}".encode()).hexdigest(),
            "train_split_sha256": folder_digest(dataset / "train"),
            # cosmos_rl_dataset.py is handed to cosmos-rl as a file, never imported here
            "code_sha256": code_digest(__name__, "av_grounding.training.cosmos_rl_dataset")}


def start_or_resume(inputs: dict[str, Any], output: Path) -> None:
    """Keep an earlier run's checkpoints only when it was made from ``inputs``; clear them (and
    the backends' resumable state) otherwise. Leftovers of killed writers go either way."""
    remove_partials(output)
    manifest = Manifest(output / INPUTS, inputs)
    if not manifest.matches():
        manifest.reset(*(output / stale for stale in ("checkpoints", "model", RUN_FOLDER)))


def architecture(model: str) -> str:
    """``config.model_type`` of ``train.model``: read from a built-in model's name, else from the
    folder's or hub id's config.json (never from its name)."""
    from ..models.loading import model_type

    source = model_source(model)  # None for a built-in model
    if source is None:
        return split_name(model)[1]
    return model_type(source)


def check_family(model: str, fmt: FormatParams, dataset: Path) -> None:
    """``ParamsError`` before any work unless ``train.model`` is an architecture this pipeline
    trains and the one the dataset was formatted for (its split.json, else
    ``format.model_family``): the image sizes and token budgets depend on it."""
    kind = architecture(model)
    if kind not in ARCHITECTURES:
        raise ParamsError(f"train.model {model!r} is a {kind} model (config.json model_type); this pipeline trains "
                          f"{' and '.join(ARCHITECTURES)} (Cosmos Reason 1 and 2)")
    recorded = (stored_json(dataset / "split.json") or {}).get("model_family")
    family, where = (recorded, f"{dataset / 'split.json'}") if recorded else (fmt.model_family, "format.model_family")
    if kind != family:
        raise ParamsError(f"train.model {model!r} is a {kind} model (config.json model_type), but the dataset was "
                          f"formatted for {family} ({where}): its image sizes and token budgets are the other "
                          f"architecture's; set format.model_family: {kind} (or that model's preset) and rerun format")


class LaunchError(PipelineError, RuntimeError):
    """The processes a ``train.gpus`` launch started did not all complete (their own messages
    are printed above this one)."""


def train_processes(params: TrainParams, fmt: FormatParams, dataset: Path, output: Path, metrics: Path | None,
                    live: Path, timing: Path | None) -> dict[str, Any]:
    """``train.gpus`` processes of this stage under torchrun (one per GPU: data parallel, or
    ZeRO-3 with ``train.deepspeed``), given these parameters through a temporary params file;
    returns rank 0's summary. What ``dvc exp run -S train.gpus=N`` runs with the hf backend."""
    import torch

    if torch.cuda.is_available() and torch.cuda.device_count() < params.gpus:
        raise ParamsError(f"train.gpus {params.gpus}, but {torch.cuda.device_count()} GPU(s) are visible")
    if not torch.cuda.is_available():
        warnings.warn(f"train.gpus {params.gpus} on a machine without GPUs: {params.gpus} CPU processes (gloo)",
                      stacklevel=1)
    with tempfile.TemporaryDirectory(prefix="train-launch-") as tmp:
        params_file, summary = Path(tmp) / "params.yaml", Path(metrics) if metrics else Path(tmp) / "train.json"
        plain = json.loads(json.dumps({"train": dataclasses.asdict(params), "format": dataclasses.asdict(fmt)},
                                      default=str))  # tuples as lists, paths as strings; floats unrounded
        params_file.write_text(yaml.safe_dump(plain, sort_keys=False))
        status = distributed.run_under_torchrun(params.gpus, [
            "train", "--params", str(params_file), "--dataset", str(dataset), "--output", str(output),
            "--metrics", str(summary), "--live", str(live), *(["--timing", str(timing)] if timing else [])])
        if status != 0:
            raise LaunchError(f"train.gpus {params.gpus}: the training processes under torchrun exited with "
                              f"status {status}")
        return json.loads(summary.read_text())


def join_launch(params: TrainParams) -> int:
    """This process's rank in its torchrun launch, the process group joined (by DeepSpeed with
    ``train.deepspeed``)."""
    if params.deepspeed is not None:
        from ..training import zero3

        rank, world, _ = zero3.distributed_context()
    else:
        rank, world, _ = distributed.join()
    if params.gpus > 1 and params.gpus != world:
        raise ParamsError(f"train.gpus {params.gpus}, but this launch has {world} processes")
    return rank


def train(params: TrainParams, fmt: FormatParams, dataset: Path, output: Path, metrics: Path | None = None,
          live: Path = Path("dvclive/train"), timing: Path | None = None) -> dict[str, Any]:
    """The `train` stage: fine-tune from the base model, or resume a run made from the same
    inputs, with the ``params.backend`` backend (``hf``; ``cosmos-rl``); with ``train.gpus`` > 1
    and the hf backend, as that many processes under torchrun. CPU numerics are pinned first
    (``numerics.pin_torch``), so the weights are the same on every x86-64 CPU.

    Args:
        params: the ``train`` section (model, backend, steps, batch, learning rate: ``null``
            resolves to the model's, ``training.config.resolved``).
        fmt: the ``format`` section (image pixel limits, ``model_max_length``, model family, prompts).
        dataset: format's output folder (its ``train/`` split is trained on).
        output: the training folder (module docstring: ``base/``, ``checkpoints/``, ``model/``,
            ``run.json``, ``inputs.json``).
        metrics: the summary as JSON (rank 0), when given.
        live: the DVCLive folder (loss, learning rate, gradient norm per optimizer step).
        timing: wall time, samples/s, tokens/s and model TFLOP/s per step, when given.

    Returns:
        The backend's summary (``steps``, ``samples``, ``samples_over_max_length``, trainable
        parameters, device, processes, peak GPU memory in GiB, ...) with ``model`` and the
        resolved ``lr``.

    Raises:
        ParamsError: a model that is not built in, no model folder and no reachable hub id; an
            architecture this pipeline does not train or other than the dataset's; batch
            settings the data or the memory cannot hold; more ``gpus`` than are visible.
        LaunchError: a process of a ``train.gpus`` launch failed.
        TrainingDivergedError: the loss or gradient norm became non-finite more often than
            ``max_nonfinite_steps`` allows.
        CosmosRLError: the cosmos-rl backend's launcher is missing or its run failed.
    """
    # A missing folder, an unreachable hub id or another architecture fails before any work.
    check_family(params.model, fmt, dataset)
    if params.backend == "hf" and params.gpus > 1 and not distributed.launched():
        return train_processes(params, fmt, dataset, output, metrics, live, timing)
    numerics.pin_torch()
    params = resolved(params)
    rank = 0
    inputs = training_inputs(params, fmt, dataset)
    if distributed.position()[0] == 0:
        start_or_resume(inputs, output)
    if params.backend == "hf" and (params.deepspeed is not None or distributed.launched()):
        rank = join_launch(params)
        base = base_model(params, fmt, output, build=rank == 0)
        distributed.barrier()
    else:
        base = base_model(params, fmt, output)
    hooks = report_hooks(live, timing)
    if params.backend == "hf":
        from ..training.hf import train_hf

        summary = train_hf(params, fmt, base, dataset, output, hooks)
    else:
        from ..training.cosmos_rl import train_cosmos_rl

        summary = train_cosmos_rl(params, fmt, base, dataset, output, hooks)
    summary["model"] = params.model
    summary["lr"] = params.lr
    if rank == 0:
        write_json(output / "run.json", {"base": str(base), "steps": summary["steps"],
                                         "inputs_sha256": hashlib.sha256(dumps_json(inputs).encode()).hexdigest()})
        write_report(metrics, summary)
    return summary
