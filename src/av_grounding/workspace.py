"""One run at a time in a DVC workspace.

`dvc exp run` in a workspace where another one is running does not stop at once: it stashes the
workspace, writes its ``-S`` values into params.yaml and resets the files, under the running
experiment's feet (DVC releases its repository lock while stages run). The running experiment
then ends with a DVC error, or records in dvc.lock parameter values its outputs were not made
with. So a stage that DVC runs holds DVC's own experiment lock on the workspace for as long as
it works (the lock that `dvc exp run` takes before it touches a file): a second `dvc exp run`
stops with "'workspace' is busy, it is being blocked by: (PID ...) python stages/<stage>.py",
before it changes anything. Experiments in parallel go through `dvc exp run --queue` (then
`dvc queue start -j N`) or `--temp`, each in its own copy of the workspace.

A stage also checks, when it is done, that params.yaml still holds the values it ran with (an
edit by hand during a run): otherwise it fails instead of letting DVC record the new values.

Interrupted runs. The resumable stages (extract, train, infer) keep what a killed run finished
and decide by manifest what to reuse, and dvc.yaml marks their outputs ``persist: true``, so
`dvc repro` leaves them in place. `dvc exp run` does not: before it runs anything it checks out
every output as dvc.lock records it (``dvc checkout --force``), which deletes a killed run's
checkpoints. So an interrupted stage (Ctrl-C: SIGINT; preemption: SIGTERM, which must reach the
stage's process, as a terminal's Ctrl-C and a scheduler's signal to the process group do) moves
its output folder aside (``.<output>.interrupted`` beside it, where DVC never looks; a rename),
and the next run of the stage puts it back as hard links before it starts, dropping the set-aside
folder only once it completes: after ``dvc exp run`` the rerun continues from the newest
checkpoint, item or batch, as a rerun by hand does. A process killed with SIGKILL gets no such
chance: its rerun under `dvc exp run` starts over (under `dvc repro`, or by hand, it resumes).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .errors import PipelineError

DVC_STAGE = "DVC_STAGE"  # set by DVC for every stage command it runs
LOCK_FOLDER = Path(".dvc") / "tmp" / "exps"  # DVC's experiment locks (dvc.repo.experiments.utils)
WORKSPACE = "workspace"  # the name DVC locks for `dvc exp run` in the workspace


class WorkspaceError(PipelineError, RuntimeError):
    """Another run holds the workspace, or params.yaml changed while the stage ran."""


def run_by_rank_zero() -> bool:
    """Whether this is the stage's own process, not one torchrun started for it (``train.gpus``)."""
    return "LOCAL_RANK" not in os.environ


def run_by_dvc() -> bool:
    """Whether DVC started this stage (and not torchrun one of its training processes)."""
    return DVC_STAGE in os.environ and run_by_rank_zero()


@contextlib.contextmanager
def exclusive(root: Path = Path(".")) -> Iterator[None]:
    """Hold DVC's experiment lock on the workspace at ``root`` while the stage runs, when DVC
    runs it there (``run_by_dvc`` and ``root/.dvc`` exists); otherwise do nothing.

    Raises:
        WorkspaceError: another process holds the workspace (its PID and command named).
    """
    if not (run_by_dvc() and (root / ".dvc").is_dir()):
        yield
        return
    from dvc.fs import localfs
    from dvc.lock import LockError
    from dvc.rwlock import rwlock

    folder = root / LOCK_FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    command = " ".join(["python", *sys.argv]) if sys.argv and sys.argv[0] else "av-grounding stage"
    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(rwlock(str(folder), localfs, command, [], [WORKSPACE], False))
        except LockError as exc:
            blockers = " ".join(str(exc).split("\n\n")[0].split())  # DVC's message names PID and command
            raise WorkspaceError(f"{root.resolve().name}: another run holds this workspace ({blockers}); run "
                                 "experiments side by side with `dvc exp run --queue` or `--temp`") from None
        yield


def check_unchanged(used: dict[str, Any], reread: dict[str, Any], path: Path) -> None:
    """Fail when the parameters read again from ``path`` at the end of a stage differ from those
    it ran with (section -> params dataclass, both).

    Raises:
        WorkspaceError: naming the first key that changed, its two values and the file.
    """
    for section, before in used.items():
        after = reread[section]
        if after != before:
            key, old, new = next((name, getattr(before, name), getattr(after, name))
                                 for name in before.__dataclass_fields__
                                 if getattr(before, name) != getattr(after, name))
            raise WorkspaceError(f"{path}: {section}.{key} changed from {old!r} to {new!r} while the stage ran "
                                 "(another `dvc exp run` or an edit); its outputs were made with the first value, "
                                 "so DVC must not record the second: restore the file and rerun")


class Interrupted(KeyboardInterrupt):
    """SIGTERM, raised in the main thread like Ctrl-C's KeyboardInterrupt."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _raise_interrupted(signum, frame) -> None:
    raise Interrupted(signum)


@contextlib.contextmanager
def interruptible() -> Iterator[None]:
    """While inside, SIGTERM (how schedulers and `kill` stop a job) raises ``Interrupted`` in
    the main thread, as SIGINT raises KeyboardInterrupt, so the stage can set its work aside;
    the earlier handler is restored on the way out. Nothing changes when called from another
    thread, where Python allows no handler."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    earlier = signal.signal(signal.SIGTERM, _raise_interrupted)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, earlier)


def interrupted_path(output: Path) -> Path:
    """Where an interrupted stage sets aside its output folder: ``.<name>.interrupted`` beside it."""
    return output.with_name(f".{output.name}.interrupted")


def set_aside(output: Path) -> Path | None:
    """Move an interrupted stage's ``output`` folder to ``interrupted_path(output)`` (a rename:
    nothing is copied), replacing what an earlier interruption left there; the new path, or
    None when there is no output. SIGINT and SIGTERM wait until the move is done."""
    if not output.is_dir():
        return None
    target = interrupted_path(output)
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    try:
        shutil.rmtree(target, ignore_errors=True)
        output.rename(target)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
    return target


def put_back(output: Path) -> bool:
    """Replace ``output`` with hard links to what an interrupted run set aside (``set_aside``),
    if anything; whether it did. The set-aside folder stays until the stage completes
    (``done``), so a run that fails again loses nothing of it; the stage's own manifests decide
    what of the work to keep."""
    kept = interrupted_path(output)
    if not kept.is_dir():
        return False
    shutil.rmtree(output, ignore_errors=True)
    output.parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(kept, output, symlinks=True, copy_function=_link_or_copy)
    return True


def done(output: Path) -> None:
    """The stage completed: drop what an earlier interruption set aside."""
    shutil.rmtree(interrupted_path(output), ignore_errors=True)


def _link_or_copy(source: str, destination: str) -> None:
    try:
        os.link(source, destination)
    except OSError:  # another file system
        shutil.copy2(source, destination)
