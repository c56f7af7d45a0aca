"""The project's own errors: what a user can cause (a bad parameter, a bad input file, a stage
whose items failed). ``av-grounding`` reports these in one line and exits with status 2; any
other exception is a bug and shows its traceback.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path


def some_names(names: Iterable[object], shown: int = 5) -> str:
    """``names`` sorted as text, the first ``shown`` joined by commas and "and N more" for the rest
    (for messages that quote what failed without listing thousands)."""
    listed = sorted(map(str, names))
    return ", ".join(listed[:shown]) + (f" and {len(listed) - shown} more" if len(listed) > shown else "")


class PipelineError(Exception):
    """Base of every error caused by parameters or input data; the message names the
    parameter key, or the file and the record inside it."""


class StageFailed(PipelineError):
    """More of a stage's items failed than its ``max_failed_fraction`` allows."""


SHOWN_FAILURES = 5  # failures quoted in a StageFailed message (all of them are in the failure file)


def check_failed_fraction(failed: Sequence[str], total: int, max_fraction: float, key: str,
                          report: Path | None) -> None:
    """Raise ``StageFailed`` when more than ``max_fraction`` of ``total`` items failed, and
    always when every item failed (``total > 0``).

    ``failed``: one line per failed item (the first ``SHOWN_FAILURES`` are quoted); ``key``: the
    parameter that sets the limit (``extract.max_failed_fraction``); ``report``: the file that
    lists every failure."""
    if not failed or total == 0:
        return
    if len(failed) < total and len(failed) <= max_fraction * total:
        return
    reason = "every item failed" if len(failed) == total else f"more than {key} = {max_fraction} of them"
    shown = "\n  ".join(failed[:SHOWN_FAILURES])
    more = f"\n  ... and {len(failed) - SHOWN_FAILURES} more" if len(failed) > SHOWN_FAILURES else ""
    where = f"; all failures are listed in {report}" if report else ""
    raise StageFailed(f"{len(failed)} of {total} items failed ({reason}){where}:\n  {shown}{more}")
