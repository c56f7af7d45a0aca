"""The two dataset layouts written by `format` (docs/formats.md#datasets), and their readers.

Cosmos-RL: ``meta.json`` = list of ``{"id", "media": "images/<id>.jpg", "conversations":
"text/<id>.json"}``; ``text/<id>.json`` = the annotation record plus ``conversations`` (a list
holding one conversation: system, user with the image, assistant with the answer).
Qwen-VL fine-tune: ``annotations.json`` = list of ``{"image", "conversations": [human, gpt]}``;
the system prompt rides along under ``system`` (the recipe's script trained without it).

Both readers return the same ``Sample`` objects and refuse bad entries with a clear error.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import PipelineError
from ..storage import write_json

IMAGE_TOKEN = "<image>"


class DatasetError(PipelineError, ValueError):
    """A dataset entry is malformed or points outside its folder; the message names the file."""


@dataclass(frozen=True)
class Sample:
    """One training or evaluation sample: its id, the absolute path of its image, the system and
    user prompts and the answer as the model should write it; ``record``: the Cosmos-RL
    annotation record it was read from (truth in the real camera, camera, ``virtual_camera``),
    None for a sample read from the Qwen-VL layout or built in memory."""

    id: str
    image: Path
    system: str
    user: str
    answer: str
    record: dict[str, Any] | None = field(default=None, compare=False, repr=False)


def conversation(image: str, system: str, user: str, answer: str | None = None) -> list[dict[str, Any]]:
    """The one conversation of a sample, for the dataset files, training, inference and the token
    budget alike: system (absent when ``system`` is empty), user (the image at path ``image``,
    then the text) and the assistant's answer (absent when ``answer`` is None: a prompt)."""
    messages: list[dict[str, Any]] = []
    if system:
        messages.append({"role": "system", "content": [{"type": "text", "text": system}]})
    messages.append({"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": user}]})
    if answer is not None:
        messages.append({"role": "assistant", "content": [{"type": "text", "text": answer}]})
    return messages


def write_cosmos(folder: Path, entries: list[tuple[str, dict[str, Any], list[dict[str, Any]]]]) -> None:
    """``entries``: (id, annotation record, conversation)."""
    for sample_id, record, messages in entries:
        write_json(folder / "text" / f"{sample_id}.json", {**record, "conversations": [messages]})
    write_json(folder / "meta.json", [{"id": sid, "media": f"images/{sid}.jpg", "conversations": f"text/{sid}.json"}
                                      for sid, _, _ in entries])


def write_qwen(folder: Path, samples: list[Sample]) -> None:
    write_json(folder / "annotations.json", [
        {"image": f"images/{s.id}.jpg", **({"system": s.system} if s.system else {}),
         "conversations": [{"from": "human", "value": f"{IMAGE_TOKEN}\n{s.user}"}, {"from": "gpt", "value": s.answer}]}
        for s in samples])


def _load_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise DatasetError(f"{path}: missing") from exc
    except (OSError, json.JSONDecodeError) as exc:
        raise DatasetError(f"{path}: malformed JSON: {exc}") from exc


def _inside(folder: Path, relative: Any, source: str) -> Path:
    """Resolve a media/text path of an entry, refusing anything outside the dataset folder."""
    if not isinstance(relative, str) or not relative:
        raise DatasetError(f"{source}: path {relative!r} is not a non-empty string")
    root = folder.resolve()
    path = (root / relative).resolve()
    if Path(relative).is_absolute() or not path.is_relative_to(root):
        raise DatasetError(f"{source}: path {relative!r} escapes the dataset folder {folder}")
    if not path.is_file():
        raise DatasetError(f"{source}: {relative!r} does not exist")
    return path


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(part.get("text", "") for part in content
                       if isinstance(part, dict) and part.get("type") == "text")
    raise DatasetError(f"message content {content!r} is neither text nor a list of parts")


def _entries(path: Path) -> list[tuple[str, Any]]:
    """(source description, entry) of an index file that must hold a JSON list."""
    entries = _load_json(path)
    if not isinstance(entries, list):
        raise DatasetError(f"{path}: expected a list of entries")
    return [(f"{path} entry {index}", entry) for index, entry in enumerate(entries)]


def read_cosmos(folder: Path) -> list[Sample]:
    folder = Path(folder)
    samples = []
    for source, entry in _entries(folder / "meta.json"):
        if not isinstance(entry, dict) or "id" not in entry or "media" not in entry:
            raise DatasetError(f"{source}: needs 'id' and 'media'")
        image = _inside(folder, entry["media"], source)
        text_path = _inside(folder, entry.get("conversations", entry.get("text")), source)
        document = _load_json(text_path)
        conversations = document.get("conversations") if isinstance(document, dict) else document
        if not isinstance(conversations, list) or not conversations or not isinstance(conversations[0], list):
            raise DatasetError(f"{text_path}: expected 'conversations': [[messages]]")
        roles = {m.get("role"): m.get("content") for m in conversations[0] if isinstance(m, dict)}
        if not {"user", "assistant"} <= set(roles):
            raise DatasetError(f"{text_path}: conversation needs user and assistant messages")
        record = {k: v for k, v in document.items() if k != "conversations"} if isinstance(document, dict) else None
        samples.append(Sample(str(entry["id"]), image, _text_of(roles.get("system", "")),
                              _text_of(roles["user"]), _text_of(roles["assistant"]), record))
    return samples


def read_qwen(folder: Path) -> list[Sample]:
    folder = Path(folder)
    samples = []
    for source, entry in _entries(folder / "annotations.json"):
        if not isinstance(entry, dict) or not isinstance(entry.get("conversations"), list):
            raise DatasetError(f"{source}: needs 'image' and 'conversations'")
        image = _inside(folder, entry.get("image"), source)
        turns = {t.get("from"): t.get("value") for t in entry["conversations"] if isinstance(t, dict)}
        human, answer = turns.get("human"), turns.get("gpt")
        if not isinstance(human, str) or not isinstance(answer, str) or not human.startswith(IMAGE_TOKEN):
            raise DatasetError(f"{source}: needs a human turn starting with {IMAGE_TOKEN!r} and a gpt turn")
        samples.append(Sample(Path(image).stem, image, str(entry.get("system", "")),
                              human[len(IMAGE_TOKEN):].lstrip("\n"), answer))
    return samples
