"""What every stage writes besides its data: its reports (``write_report``: the metrics file DVC
tracks, the timing file), and for a resumable stage one rule for every reuse decision: a manifest
records what an output was made from, and the output is reused only while that equals what this
run would make it from.

``extract`` keeps one per item (``manifests/<clip_id>/<camera>.json``, written last, with the
item's result), ``train`` one per run (``inputs.json``, written first), ``infer`` one per column
(``manifests/<column>.json``, written first).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import PipelineError
from ..storage import as_stored, stored_json, write_json

RESULT = "result"  # the key under which ``finish`` stores what the output holds


class MissingInputError(PipelineError, FileNotFoundError):
    """An earlier stage's output this stage reads is missing or unreadable; the message names it."""


def read_run(train: Path) -> dict[str, Any]:
    """The training run's ``run.json`` (base, steps, inputs_sha256); ``MissingInputError`` naming
    it when it is missing or unreadable."""
    try:
        return json.loads((train / "run.json").read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise MissingInputError(f"{train / 'run.json'}: unreadable ({exc}); run train first") from exc


def write_report(path: Path | None, content: Any) -> None:
    """A stage's report (its summary as the metrics file, or its timing file) written as strict,
    canonical JSON (``storage.write_json``, atomically) where the caller gave its path; nothing
    where it gave None (a stage run from Python for its return value)."""
    if path is not None:
        write_json(path, content)


@dataclass(frozen=True)
class Manifest:
    """The manifest at ``path`` and what this run's output is made from (``expected``: JSON-able,
    compared as ``write_json`` stores it)."""

    path: Path
    expected: dict[str, Any]

    def stored(self) -> Any | None:
        """What the manifest holds; None when it is absent or unreadable."""
        return stored_json(self.path)

    def matches(self) -> bool:
        """Whether the stored manifest records ``expected`` (its ``result``, if any, aside)."""
        stored = self.stored()
        return isinstance(stored, dict) and {k: v for k, v in stored.items() if k != RESULT} == as_stored(self.expected)

    def reset(self, *stale: Path) -> None:
        """Clear the earlier output (``stale`` folders and files; absent ones are skipped), then
        record ``expected``: the output is now being made from it."""
        _remove(stale)
        write_json(self.path, self.expected)

    def invalidate(self, *stale: Path) -> None:
        """Remove the manifest, then the ``stale`` output it described (for an output whose
        manifest is written last, by ``finish``)."""
        _remove((self.path, *stale))

    def finish(self, result: Any) -> None:
        """Record ``expected`` and the output's ``result``: the output is complete."""
        write_json(self.path, {**self.expected, RESULT: result})


def _remove(paths: tuple[Path, ...]) -> None:
    for path in paths:
        if Path(path).is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            Path(path).unlink(missing_ok=True)
