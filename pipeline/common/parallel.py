"""Forked processes: `fork_map` for independent CPU-bound tasks of one stage, `in_child_process`
for a whole stage.

Why fork: the tasks read large inputs the parent already holds (plans, forecasts) and fork shares
them without pickling the parent's state; only each task's arguments and result cross the pipe.
Every caller's tasks are deterministic, so the results do not depend on the number of workers.
"""

from __future__ import annotations

import builtins
import logging
import multiprocessing
import os
import pickle
import traceback
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from multiprocessing.connection import Connection
from typing import Any, TypeVar

T = TypeVar("T")
log = logging.getLogger(__name__)


def cores_available() -> int:
    """The cores this process may run on (its CPU affinity where the OS tells it, else the count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def fork_map(fn: Callable[[Any], Any], items: list, workers: int, min_items_per_worker: int = 4) -> list:
    """`[fn(item) for item in items]` over `workers` forked processes when it pays (at least
    `min_items_per_worker` items each). In a daemonic process (a Celery prefork worker's task)
    multiprocessing may not start children, and where fork is unavailable: the map runs in process."""
    if workers <= 1 or len(items) < min_items_per_worker * workers or not can_fork():
        return [fn(item) for item in items]
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork")) as pool:
        return list(pool.map(fn, items, chunksize=max(1, len(items) // (workers * 16))))


def fork_map_telling(fn: Callable[[Any, Callable[[Any], None]], T], items: list, workers: int,
                     report: Callable[[Any], None]) -> list[T]:
    """`[fn(item, tell) for item in items]` over `workers` forked processes, one task per item, where a
    task's `tell(message)` calls `report(message)` in the parent while the tasks run.

    Why: a progress bar over long tasks spread across processes (a replay's policies). Tasks are
    handed out as workers free up, so unequal tasks still share the cores; the results come back in
    the order of `items`, and a task's exception is raised here. In process where `can_fork()` says
    no, or with one worker or one item."""
    if workers <= 1 or len(items) < 2 or not can_fork():
        return [fn(item, report) for item in items]
    ctx = multiprocessing.get_context("fork")
    messages = ctx.SimpleQueue()  # put() writes to the pipe at once: a message is read before its task's result
    with ProcessPoolExecutor(min(workers, len(items)), mp_context=ctx, initializer=_keep_messages,
                             initargs=(messages,)) as pool:
        futures = [pool.submit(_run_telling, fn, item) for item in items]
        pending = set(futures)
        while pending:
            _, pending = wait(pending, timeout=0.2, return_when=FIRST_COMPLETED)
            while not messages.empty():
                report(messages.get())
        return [future.result() for future in futures]


_MESSAGES: Any = None  # a forked worker's end of fork_map_telling's message queue


def _keep_messages(messages: Any) -> None:
    global _MESSAGES
    _MESSAGES = messages


def _run_telling(fn: Callable[[Any, Callable[[Any], None]], T], item: Any) -> T:
    return fn(item, _MESSAGES.put)


def can_fork() -> bool:
    """Whether this process may fork workers (not where fork is unavailable, nor in a daemonic
    process such as a Celery prefork worker's task, where multiprocessing refuses children)."""
    return "fork" in multiprocessing.get_all_start_methods() and not multiprocessing.current_process().daemon


def in_child_process(fn: Callable[..., T], *args: Any, setup: Callable[[], None] | None = None,
                     meanwhile: Callable[[], None] | None = None) -> T:
    """`fn(*args)` in a forked child process; its result, or its exception, comes back pickled.
    `setup` runs in the child first (process-wide settings that must not leak into the parent);
    `meanwhile` runs in the parent while the child works (preparing what later children inherit).

    Why: what a stage allocates leaves with its process, so a run's peak memory is its largest
    stage's, not everything every earlier stage left in the allocator (Airflow runs each stage as
    a task of its own for the same reason). The child is not daemonic: it may fork workers itself.
    Runs in process where `can_fork()` says no."""
    if not can_fork():
        if meanwhile is not None:
            _prepare(meanwhile)
        return fn(*args)
    ctx = multiprocessing.get_context("fork")
    reader, writer = ctx.Pipe(duplex=False)
    name = getattr(fn, "__name__", "task")
    child = ctx.Process(target=_child_main, args=(writer, fn, args, setup), name=f"peerscale-{name}")
    child.start()
    writer.close()
    try:
        if meanwhile is not None:
            _prepare(meanwhile)
        ok, payload = reader.recv()
    except EOFError:
        child.join()
        raise ChildProcessError(f"{name} ended without a result (its process exited with code {child.exitcode}: "
                                "killed, e.g. out of memory?)") from None
    finally:
        reader.close()
    child.join()
    if ok:
        return payload
    raise payload


def _prepare(meanwhile: Callable[[], None]) -> None:
    """Run `meanwhile`; a failure there is logged, not raised: it only prepares what a later stage would
    otherwise do itself (and will then raise with its own context), and the child is still working."""
    try:
        meanwhile()
    except Exception as exc:
        log.warning("preparing the next stage failed (%s: %s); it will do that itself", type(exc).__name__, exc)


def _child_main(conn: Connection, fn: Callable[..., Any], args: tuple, setup: Callable[[], None] | None) -> None:
    try:
        if setup is not None:
            setup()
        message: tuple[bool, Any] = (True, fn(*args))
    except BaseException as exc:  # every exception goes back to the parent
        message = (False, _portable(exc))
    try:
        conn.send(message)
    except Exception as exc:  # an unpicklable result
        conn.send((False, ChildProcessError(f"{getattr(fn, '__name__', 'task')}'s result could not be sent back: {exc}")))
    finally:
        conn.close()


def _portable(exc: BaseException) -> BaseException:
    """`exc` with the child's traceback as a note, or, when it does not survive pickling, its nearest
    built-in base class with the same message (so the parent's `except ValueError` still holds)."""
    exc.add_note("raised in the stage's own process:\n" + "".join(traceback.format_exception(exc)).rstrip())
    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:  # any failure to round-trip
        base = next(k for k in type(exc).__mro__ if getattr(builtins, k.__name__, None) is k)
        plain = base(f"{type(exc).__name__}: {exc}")
        for note in getattr(exc, "__notes__", []):
            plain.add_note(note)
        return plain


__all__ = ["can_fork", "cores_available", "fork_map", "fork_map_telling", "in_child_process"]
