"""Prompts live in a YAML file in the repository (``system_prompt``, ``user_prompt``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

from ..params import ParamsError


@dataclass(frozen=True)
class Prompts:
    system: str
    user: str


def load_prompts(path: str | Path) -> Prompts:
    path = Path(path)
    try:
        document = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ParamsError(f"{path} (format.prompts): cannot read prompts: {exc}") from exc
    if not isinstance(document, dict) or not all(isinstance(document.get(k), str)
                                                 for k in ("system_prompt", "user_prompt")):
        raise ParamsError(f"{path} (format.prompts): needs string keys 'system_prompt' and 'user_prompt'")
    return Prompts(document["system_prompt"], document["user_prompt"])
