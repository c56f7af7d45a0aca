"""cosmos-rl's exports made into model folders that `infer` loads like the `hf` backend's.

cosmos-rl 0.4.7 exports a step to ``<output_dir>/safetensors/step_N`` in one of two forms:

- full fine-tuning: the weights in chunks (``00000.safetensors``, ...) with
  ``model.safetensors.index.json``, its config and generation config;
- LoRA: ``adapter_model.safetensors`` (the trained LoRA factors, keys
  ``base_model.model.<module>.lora_A.weight`` of shape r x in and ``lora_B.weight`` of shape
  out x r) and ``adapter_config.json`` (cosmos-rl's LoRA settings: ``r``, ``lora_alpha``,
  ``use_rslora``, ...), beside files copied from the base folder, among them the base's
  ``model.safetensors.index.json``, which names shards the export does not hold.

Its wrapper of the Hugging Face classes names the weights by reversing transformers 4's checkpoint
conversion mapping, and for Qwen2.5-VL that reversal writes the mapping's lookahead pattern into
the names (``reverse_hf_conversion_mapping`` in its log): every language-model weight comes out
as ``model(?!\\.(language_model|visual)).layers.0...`` instead of ``model.layers.0...``.
transformers loads such a folder with a randomly initialised language model and no error
(benchmarks/hub_checkpoints/results/hub_checkpoints.md, the cosmos-rl LoRA call). Here every
exported name is repaired (``hub_key``) and checked against the base model's weights, and a LoRA
export is merged into the base weights, so the placed folder holds a whole model.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

from ..errors import PipelineError, some_names
from ..storage import atomic_folder

INDEX = "model.safetensors.index.json"
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_PREFIX = "base_model.model."
# The prefix cosmos-rl 0.4.7 gives Qwen2.5-VL's language-model weights: transformers 4's mapping
# ``^model(?!\.(language_model|visual)) -> model.language_model`` reversed with the pattern as the
# replacement text. The published checkpoints name these weights ``model.<...>``.
MANGLED_PREFIX = "model(?!\\.(language_model|visual))"
SHOWN_KEYS = 3  # key names quoted in an error


class ExportError(PipelineError, ValueError):
    """A cosmos-rl export that does not fit its base model; the message names the export folder."""


def read_json(path: Path) -> dict:
    """A JSON object from ``path``; ``ExportError`` naming the file when it is absent or unreadable."""
    try:
        content = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ExportError(f"{path}: cannot read it as JSON ({exc})") from exc
    if not isinstance(content, dict):
        raise ExportError(f"{path}: expected a JSON object, found {type(content).__name__}")
    return content


def read_tensors(path: Path) -> dict:
    """Every tensor of one safetensors file; ``ExportError`` naming the file when it is absent or
    not a safetensors file."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(path)
    except (OSError, SafetensorError) as exc:
        raise ExportError(f"{path}: cannot read it as safetensors ({exc})") from exc


def hub_key(key: str) -> str:
    """A weight name as the published checkpoints spell it: cosmos-rl's mangled language-model
    prefix (``MANGLED_PREFIX``) replaced by ``model``; every other name unchanged."""
    return "model" + key[len(MANGLED_PREFIX):] if key.startswith(MANGLED_PREFIX) else key


def weight_files(folder: Path) -> dict[str, str]:
    """Weight name -> the safetensors file in ``folder`` that holds it (index or single file).

    Raises ``ExportError`` when the folder has no weights, or an index without a ``weight_map`` or
    naming files the folder lacks."""
    from safetensors import SafetensorError, safe_open

    index = folder / INDEX
    if index.is_file():
        files = read_json(index).get("weight_map")
        if not isinstance(files, dict):
            raise ExportError(f"{index}: no weight_map")
        absent = {name for name in files.values() if not (folder / name).is_file()}
        if absent:
            raise ExportError(f"{index}: names weight files the folder lacks: {some_names(absent, SHOWN_KEYS)}")
        return dict(files)
    files = {}
    for path in sorted(folder.glob("*.safetensors")):
        try:
            with safe_open(str(path), "pt") as handle:
                files.update(dict.fromkeys(handle.keys(), path.name))
        except (OSError, SafetensorError) as exc:
            raise ExportError(f"{path}: cannot read it as safetensors ({exc})") from exc
    if not files:
        raise ExportError(f"{folder}: no safetensors weights")
    return files


def check_names(export: Path, found: set[str], expected: set[str]) -> None:
    """Raise ``ExportError`` unless the export's (repaired) weight names are the base's."""
    missing, unexpected = expected - found, found - expected
    if missing or unexpected:
        raise ExportError(f"{export}: the exported weights are not the base model's: "
                          f"{len(missing)} missing ({some_names(missing, SHOWN_KEYS)}), {len(unexpected)} unknown "
                          f"({some_names(unexpected, SHOWN_KEYS)})")


def copy_full_export(export: Path, base: Path | None, destination: Path) -> None:
    """The weights of a full fine-tuning export into ``destination`` under their hub names, shard
    by shard (each file keeps its name; the index is rewritten). Checked against ``base``'s
    weight names when the base is a local folder."""
    from safetensors.torch import save_file

    files = weight_files(export)
    if base is not None:
        check_names(export, {hub_key(key) for key in files}, set(weight_files(base)))
    for name in sorted(set(files.values())):
        tensors = read_tensors(export / name)
        if any(hub_key(key) != key for key in tensors):
            save_file({hub_key(key): tensor for key, tensor in tensors.items()}, destination / name,
                      metadata={"format": "pt"})
        else:
            shutil.copy2(export / name, destination / name)
    if (export / INDEX).is_file():
        index = read_json(export / INDEX)
        index["weight_map"] = {hub_key(key): name for key, name in files.items()}
        (destination / INDEX).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")


def lora_scale(config: dict, rank: int) -> float:
    """The factor of a LoRA product B @ A: ``lora_alpha / r``, or ``lora_alpha / sqrt(r)`` with
    rank-stabilised LoRA (Kalajdzievski 2023; cosmos-rl's ``LoraInjectedLinear``, PEFT's ``LoraLayer``)."""
    alpha = float(config["lora_alpha"])
    return alpha / math.sqrt(rank) if config.get("use_rslora") else alpha / rank


def adapter_factors(export: Path, base_names: set[str]) -> dict[str, tuple]:
    """Base weight name -> (A, B) of the adapter on that weight (A: r x in, B: out x r).

    Raises ``ExportError`` naming the export's file for per-module ranks or scales (cosmos-rl's
    ``r_pattern`` / ``alpha_pattern``), names that are not LoRA factors, a factor without its
    pair, factors that are not r x in and out x r matrices of one rank, or a module the base
    model does not have."""
    config = read_json(export / ADAPTER_CONFIG)
    for key in ("r_pattern", "alpha_pattern", "modules_to_save"):
        if config.get(key):
            raise ExportError(f"{export / ADAPTER_CONFIG}: {key} is not supported (one rank and scale for every "
                              "module, no fully trained modules)")
    if not isinstance(config.get("lora_alpha"), (int, float)):
        raise ExportError(f"{export / ADAPTER_CONFIG}: no numeric lora_alpha")
    halves: dict[str, dict[str, Any]] = {}
    for key, tensor in read_tensors(export / ADAPTER_WEIGHTS).items():
        name = hub_key(key.removeprefix(ADAPTER_PREFIX))
        module, _, half = name.rpartition(".lora_")
        if half not in ("A.weight", "B.weight"):
            raise ExportError(f"{export / ADAPTER_WEIGHTS}: {key} is not a LoRA factor "
                              "(<module>.lora_A.weight / lora_B.weight)")
        halves.setdefault(f"{module}.weight", {})[half[0]] = tensor
    unknown = set(halves) - base_names
    unpaired = [name for name, pair in halves.items() if len(pair) != 2]
    if unknown or unpaired:
        raise ExportError(f"{export / ADAPTER_WEIGHTS}: {len(unknown)} adapted weights the base model lacks "
                          f"({some_names(unknown, SHOWN_KEYS)}), {len(unpaired)} factors without their pair "
                          f"({some_names(unpaired, SHOWN_KEYS)})")
    factors = {name: (pair["A"], pair["B"]) for name, pair in halves.items()}
    for name, (down, up) in factors.items():
        if down.ndim != 2 or up.ndim != 2 or down.shape[0] != up.shape[1]:
            raise ExportError(f"{export / ADAPTER_WEIGHTS}: the factors of {name} are not r x in and out x r "
                              f"(A {tuple(down.shape)}, B {tuple(up.shape)})")
    return factors


def merge_lora_export(export: Path, base: Path, destination: Path) -> None:
    """The base weights with a LoRA export merged, W + scale * B @ A (computed in fp32, stored in
    W's dtype), written into ``destination`` shard by shard as the base stores them. Raises
    ``ExportError`` (``adapter_factors``; B @ A not of W's shape).

    Stored in bf16 (the published checkpoints' dtype), a change below W's resolution (2^-8 of its
    magnitude) is lost: the merged model is the trained one only to bf16 precision, as it is when
    `infer` runs in bf16 on a GPU anyway."""
    import torch
    from safetensors.torch import save_file

    files = weight_files(base)
    factors = adapter_factors(export, set(files))
    config = read_json(export / ADAPTER_CONFIG)
    for name in sorted(set(files.values())):
        tensors = read_tensors(base / name)
        for key in tensors.keys() & factors.keys():
            down, up = factors[key]
            if (up.shape[0], down.shape[1]) != tuple(tensors[key].shape):
                raise ExportError(f"{export / ADAPTER_WEIGHTS}: B @ A of {key} is {up.shape[0]} x {down.shape[1]}, "
                                  f"the weight {tuple(tensors[key].shape)}")
            delta = lora_scale(config, down.shape[0]) * (up.to(torch.float32) @ down.to(torch.float32))
            tensors[key] = (tensors[key].to(torch.float32) + delta).to(tensors[key].dtype)
        save_file(tensors, destination / name, metadata={"format": "pt"})
    if (base / INDEX).is_file():
        shutil.copy2(base / INDEX, destination / INDEX)


def place_export(export: Path, base: Path | str, destination: Path) -> None:
    """An exported step as a whole model folder at ``destination`` (written atomically): the
    weights under their hub names (a LoRA export merged into the base weights), and the other
    files of the base (configuration, tokenizer, processor: training changes none of them; cosmos-rl
    rewrites ``config.json`` with transformers 4) or, where the base is not a local folder or lacks
    one, of the export.

    Raises ``ExportError`` when the weights do not fit the base model, or when a LoRA export's base
    is not a local folder (its weights are needed for the merge)."""
    local = Path(base) if Path(base).is_dir() else None
    lora = (export / ADAPTER_CONFIG).is_file()
    if lora and local is None:
        raise ExportError(f"{export}: a LoRA export is merged into its base model's weights, and the base {base!r} "
                          "is not a local folder")
    weights = {ADAPTER_CONFIG, ADAPTER_WEIGHTS, INDEX}
    with atomic_folder(destination) as tmp:
        tmp.mkdir()
        if lora:
            assert local is not None  # checked above
            merge_lora_export(export, local, tmp)
        else:
            copy_full_export(export, local, tmp)
        for source in (local, export):
            for extra in sorted(source.iterdir()) if source is not None else ():
                if (extra.is_file() and not extra.name.endswith(".safetensors") and extra.name not in weights
                        and not (tmp / extra.name).exists()):
                    shutil.copy2(extra, tmp / extra.name)
