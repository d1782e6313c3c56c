"""`map` over forked worker processes, for independent CPU-bound tasks of one stage.

Why fork: the tasks read large inputs the parent already holds (plans, forecasts) and fork shares
them without pickling the parent's state; only each task's arguments and result cross the pipe.
Every caller's tasks are deterministic, so the results do not depend on the number of workers.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from typing import Any


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
    if (workers <= 1 or len(items) < min_items_per_worker * workers or "fork" not in multiprocessing.get_all_start_methods()
            or multiprocessing.current_process().daemon):
        return [fn(item) for item in items]
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork")) as pool:
        return list(pool.map(fn, items, chunksize=max(1, len(items) // (workers * 16))))


__all__ = ["cores_available", "fork_map"]
