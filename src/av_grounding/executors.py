"""Run independent items (clips, videos) in parallel with a progress bar; failures are collected
per item instead of stopping the whole stage."""

from __future__ import annotations

import traceback
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from tqdm import tqdm


@dataclass(frozen=True)
class Failure:
    item: str
    error: str

    def describe(self) -> str:
        return f"{self.item}: {self.error}"


@dataclass
class Outcome:
    results: list[Any] = field(default_factory=list)  # successful results, in item order
    failures: list[Failure] = field(default_factory=list)


def _describe(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}"
    return text if str(exc) else text + " " + traceback.format_exc(limit=2).strip().splitlines()[-1]


def run_items(fn: Callable[..., Any], items: Sequence[tuple], workers: int, desc: str,
              labels: Sequence[str] | None = None) -> Outcome:
    """Call ``fn(*item)`` for every item, in ``workers`` processes (1: in this process)."""
    labels = list(labels) if labels is not None else [str(i) for i in range(len(items))]
    slots: list[Any] = [None] * len(items)
    failed: dict[int, Failure] = {}
    progress = tqdm(total=len(items), desc=desc, unit="item", dynamic_ncols=True)
    if workers <= 1 or len(items) <= 1:
        for i, item in enumerate(items):
            try:
                slots[i] = fn(*item)
            except Exception as exc:  # noqa: BLE001 - reported per item
                failed[i] = Failure(labels[i], _describe(exc))
            progress.update()
    else:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            futures = {pool.submit(fn, *item): i for i, item in enumerate(items)}
            for future in as_completed(futures):
                i = futures[future]
                try:
                    slots[i] = future.result()
                except Exception as exc:  # noqa: BLE001 - reported per item
                    failed[i] = Failure(labels[i], _describe(exc))
                progress.update()
    progress.close()
    return Outcome([s for i, s in enumerate(slots) if i not in failed],
                   [failed[i] for i in sorted(failed)])
