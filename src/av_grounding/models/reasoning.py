"""Reasoning instructions of `infer` (``infer.reasoning``).

``none`` sends the prompts as the model was trained on them (plain JSON answers). ``model``
appends the reasoning instruction each model was published with, in the message that model
expects it in. The instructions are data: ``prompts/reasoning.yaml`` holds one entry per
``config.model_type`` (the message, ``system`` or ``user``, and the text, with its source), read
when a column is answered. The model is known by its folder's ``config.json``, never by its name.

Joining follows each model's own inference script:
  - ``system`` (Cosmos Reason 1): the system prompt and the instruction, each right-stripped, one
    blank line between them; a sample without a system prompt gets the instruction alone;
  - ``user`` (Cosmos Reason 2): the user prompt stripped, one blank line, the instruction.

The sample's text changes before it reaches ``models.inputs.Encoder``, the one place that
renders prompts. How answers of either form are read: ``evaluation.parse``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ..dataset.formats import Sample
from ..params import ParamsError

REASONING_PROMPTS = Path("prompts/reasoning.yaml")  # relative to the repository root, where stages run
PLACES = ("system", "user")


@dataclass(frozen=True)
class Instruction:
    """One model type's reasoning instruction and the message (``place``) it is appended to."""

    model_type: str
    place: str
    text: str


def _instruction(path: Path, model_type: Any, entry: Any) -> Instruction:
    if not isinstance(entry, dict) or entry.get("place") not in PLACES:
        raise ParamsError(f"{path}: {model_type!r}: needs 'place': one of {', '.join(PLACES)}")
    if not isinstance(entry.get("text"), str) or not entry["text"].strip():
        raise ParamsError(f"{path}: {model_type!r}: needs a non-empty string 'text'")
    return Instruction(str(model_type), entry["place"], entry["text"])


def load_instructions(path: str | Path = REASONING_PROMPTS) -> dict[str, Instruction]:
    """Every model type's instruction in ``path``; ParamsError naming the file when it is
    unreadable or an entry lacks its place or text."""
    path = Path(path)
    try:
        document = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ParamsError(f"{path} (infer.reasoning): cannot read the reasoning instructions: {exc}") from exc
    if not isinstance(document, dict) or not document:
        raise ParamsError(f"{path} (infer.reasoning): expected a mapping of model_type to {{place, text}}")
    return {str(key): _instruction(path, key, entry) for key, entry in document.items()}


def model_type_of(source: str | Path) -> str:
    """``config.model_type`` of a model folder or hub id (reads config.json only); ParamsError
    naming the model when its config cannot be read."""
    from .loading import model_type

    try:
        return model_type(source)
    except (OSError, ValueError) as exc:
        raise ParamsError(f"{source}: cannot read the model's config.json for infer.reasoning model: {exc}") from exc


def instruction_for(setting: str, model_type: str, path: str | Path = REASONING_PROMPTS) -> Instruction | None:
    """The instruction ``setting`` gives a model of ``model_type``: None for ``none``; for
    ``model`` the file's entry, ParamsError naming the file when it has none for this type."""
    if setting == "none":
        return None
    if setting != "model":
        raise ParamsError(f"infer.reasoning {setting!r}: one of none, model")
    instructions = load_instructions(path)
    if model_type not in instructions:
        raise ParamsError(f"{path}: no reasoning instruction for model_type {model_type!r} (infer.reasoning model); "
                          f"it has {', '.join(sorted(instructions))}")
    return instructions[model_type]


def with_instruction(sample: Sample, instruction: Instruction | None) -> Sample:
    """``sample`` with the instruction appended to its system or user text (module docstring);
    the sample itself, unchanged, without one. ParamsError when the prompt already asks for
    ``<think>``: a second format instruction would contradict the first."""
    if instruction is None:
        return sample
    system, user = sample.system or "", sample.user
    if "<think>" in system or "<think>" in user:
        raise ParamsError(f"sample {sample.id}: the prompt already asks for <think>; infer.reasoning model would "
                          "add a second format instruction (use infer.reasoning none)")
    if instruction.place == "system":
        parts = [part.rstrip() for part in (system, instruction.text)]
        return dataclasses.replace(sample, system="\n\n".join(part for part in parts if part))
    return dataclasses.replace(sample, user=f"{user.strip()}\n\n{instruction.text}")


def reasoning_record(setting: str, instruction: Instruction | None, with_text: bool = True) -> dict[str, Any]:
    """What a column's answers were asked for: the setting and, for ``model``, the model type,
    the message and (``with_text``, for manifests) the instruction's text."""
    if instruction is None:
        return {"setting": setting}
    record = {"setting": setting, "model_type": instruction.model_type, "place": instruction.place}
    return {**record, "text": instruction.text} if with_text else record
