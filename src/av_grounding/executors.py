"""Run independent items (clips, videos) in parallel with a progress bar; failures are collected
per item instead of stopping the whole stage.

Two executors give the same results:
- ``local``: a process pool on this machine (``workers`` processes; 1: in this process). Pool
  workers exit when the main process dies, even by SIGKILL, instead of running on as orphans.
  (The pool is created in the calling thread, which outlives it: Linux ties the workers to
  that thread.)
- ``ray``: one Ray task per item on a Ray cluster (``ray.init(address)``; no address: the
  ``RAY_ADDRESS`` environment variable, else a new Ray instance on this machine). Each task runs
  in the driver's working folder, so relative input and output paths mean what they mean here;
  on a cluster of several machines they must name storage every node sees (a shared file
  system, or ``s3://`` inputs). Ray retries a task whose worker process died (the items write
  their outputs atomically, so a retry is safe); an exception raised by an item is not retried
  and is reported like a local one.
"""

from __future__ import annotations

import os
import signal
import threading
import time
import traceback
import typing
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from typing import Any

from tqdm import tqdm

from .errors import PipelineError
from .params import Executor
from .processes import signal_on_parent_death

EXECUTORS: tuple[str, ...] = typing.get_args(Executor)
PARENT_POLL_S = 0.5  # where prctl is missing: how often a pool worker checks that its parent lives

# (item index, (result, CPU seconds) or None, exception): one settled item, in the order items finish.
Settled = tuple[int, "tuple[Any, float] | None", "BaseException | None"]


class ExecutorError(PipelineError, ValueError):
    """The executor cannot run: an unknown name, or Ray is not installed."""


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
    cores: int = 1  # processes (local) or cluster CPUs (ray) that ran the items
    wall_s: float = 0.0  # seconds from the first submission to the last item settled
    cpu_s: float = 0.0  # CPU seconds of the successful items, all threads of the processes running them


def _describe(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}"
    return text if str(exc) else text + " " + "".join(traceback.format_exception(exc, limit=2)).strip().splitlines()[-1]


def run_items(fn: Callable[..., Any], items: Sequence[tuple], workers: int, desc: str,
              labels: Sequence[str] | None = None, executor: Executor = "local",
              address: str | None = None) -> Outcome:
    """Call ``fn(*item)`` for every item with ``executor`` (``local``: in ``workers`` processes,
    1: in this process; ``ray``: one task per item on the cluster at ``address``). ``fn`` must
    be a module-level function and the items picklable. Raises ``ExecutorError`` for an unknown
    executor or a missing Ray before running anything."""
    if executor not in EXECUTORS:
        raise ExecutorError(f"executor must be one of {EXECUTORS}, got {executor!r}")
    labels = list(labels) if labels is not None else [str(i) for i in range(len(items))]
    slots: list[Any] = [None] * len(items)
    failed: dict[int, Failure] = {}
    cpu_s = 0.0
    started = time.perf_counter()
    if executor == "ray":
        cores, settled = _ray_tasks(fn, items, address)
    elif workers <= 1 or len(items) <= 1:
        cores, settled = 1, _in_process(fn, items)
    else:
        cores, settled = min(workers, len(items)), _process_pool(fn, items, workers)
    with tqdm(total=len(items), desc=desc, unit="item", dynamic_ncols=True) as progress:
        try:
            for index, measured, exc in settled:
                if exc is None:
                    assert measured is not None  # a settled item has its result or its exception
                    slots[index], cpu = measured
                    cpu_s += cpu
                else:
                    failed[index] = Failure(labels[index], _describe(exc))
                progress.update()
        finally:  # interrupted: items not started are dropped now, not run to the end
            close = getattr(settled, "close", None)
            if close is not None:
                close()
    return Outcome([s for i, s in enumerate(slots) if i not in failed], [failed[i] for i in sorted(failed)],
                   cores, time.perf_counter() - started, cpu_s)


def _measured(folder: str | None, fn: Callable[..., Any], *args: Any) -> tuple[Any, float]:
    """``fn(*args)`` and the CPU seconds this process spent on it (all its threads: a video
    decoder may run several). ``folder``: change to it first (Ray tasks run in the driver's
    working folder)."""
    if folder is not None:
        os.chdir(folder)
    start = time.process_time()
    return fn(*args), time.process_time() - start


def _in_process(fn: Callable[..., Any], items: Sequence[tuple]) -> Iterator[Settled]:
    for index, item in enumerate(items):
        try:
            yield index, _measured(None, fn, *item), None
        except Exception as exc:  # noqa: BLE001 - reported per item
            yield index, None, exc


def _exit_with_parent(parent: int) -> None:
    """Pool worker initializer: end this worker when ``parent`` dies, SIGKILL included. On Linux
    the kernel sends it SIGKILL then, even while it is blocked in C code; elsewhere a daemon
    thread watches for its parent process id to change. Ctrl-C is the parent's to handle (it
    stops submitting and waits for the items in progress); SIGTERM ends a worker at once."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if signal_on_parent_death(signal.SIGKILL):
        if os.getppid() != parent:  # the parent died before the request took effect
            os._exit(1)
        return

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(PARENT_POLL_S)
        os._exit(1)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def _process_pool(fn: Callable[..., Any], items: Sequence[tuple], workers: int) -> Iterator[Settled]:
    with ProcessPoolExecutor(max_workers=workers, initializer=_exit_with_parent,
                             initargs=(os.getpid(),)) as pool:
        futures = {pool.submit(_measured, None, fn, *item): index for index, item in enumerate(items)}
        try:
            for future in as_completed(futures):
                try:
                    yield futures[future], future.result(), None
                except Exception as exc:  # noqa: BLE001 - reported per item
                    yield futures[future], None, exc
        except BaseException:  # interrupted, or closed early: cancel what has not started
            pool.shutdown(wait=False, cancel_futures=True)
            raise


def _import_ray():
    try:
        import ray
    except ImportError as exc:
        raise ExecutorError("executor 'ray' needs Ray: pip install 'av-grounding[ray]'") from exc
    return ray


def _ray_tasks(fn: Callable[..., Any], items: Sequence[tuple], address: str | None) -> tuple[int, Iterator[Settled]]:
    """Join (or start) Ray, submit one task per item; the cluster's CPUs and the settled items.
    A Ray instance started here is shut down when the last item settles."""
    ray = _import_ray()
    started_here = not ray.is_initialized()
    if started_here:
        if address or os.environ.get("RAY_ADDRESS"):
            ray.init(address=address, logging_level="WARNING")
        else:
            ray.init(include_dashboard=False, logging_level="WARNING")
    cores = int(ray.cluster_resources().get("CPU", 1))

    def settle() -> Iterator[Settled]:
        try:
            task = ray.remote(num_cpus=1)(_measured)
            folder = os.getcwd()
            pending = {task.remote(folder, fn, *item): index for index, item in enumerate(items)}
            while pending:
                (ref,), _ = ray.wait(list(pending), num_returns=1)
                index = pending.pop(ref)
                try:
                    yield index, ray.get(ref), None
                except ray.exceptions.RayTaskError as exc:  # the item raised: report its own exception
                    yield index, None, exc.cause if exc.cause is not None else exc
                except ray.exceptions.RayError as exc:  # the task could not run (worker or node lost)
                    yield index, None, exc
        finally:
            if started_here:
                ray.shutdown()

    return cores, settle()
