"""Operational wiring shared by the peerscale DAGs: pools, failure callbacks, the run deadline.

Not a DAG. The callbacks are thin: they import `pipeline.ops.monitoring` when called (never at parse
time) and record the alert there, in the lake, like every other alert rule. Names and limits come
from the environment (the same on every Airflow process), with defaults that `scripts/demo.sh` and
the tests create.
"""

from __future__ import annotations

import os
from datetime import timedelta
from typing import Any

from airflow.sdk import DeadlineAlert, DeadlineReference, SyncCallback


def _env(name: str, default: str) -> str:
    return os.environ.get(name, "").strip() or default


#: Pool of the model-fitting tasks (forecast shards, global model fit, daily retrain): each uses
#: every core of its worker, so its slots bound how many run at once across all DAG runs.
MODEL_FIT_POOL = _env("PEERSCALE_POOL_MODEL_FIT", "peerscale_model_fit")
#: Pool of the CP-SAT plan task (multi-threaded, memory-hungry on large fleets).
SOLVER_POOL = _env("PEERSCALE_POOL_SOLVER", "peerscale_solver")
#: Forecast shards of one run that may run at the same time (the pool bounds them across runs).
MAX_ACTIVE_SHARDS = int(_env("PEERSCALE_FORECAST_MAX_ACTIVE_SHARDS", "4"))
#: An hourly run must be done this long after it was queued (≈ after its data interval ended);
#: 0 turns the deadline off (needed for `airflow dags test`, see `run_deadline`).
DEADLINE_MINUTES = float(_env("PEERSCALE_DEADLINE_MINUTES", "45"))


def task_failed(context: Any) -> None:
    """Task- and DAG-level `on_failure_callback`: a `task_failed` alert in lake/alerts/ (+ webhook)."""
    from pipeline.ops.monitoring import task_failed as record

    record(context)


def deadline_missed(context: Any, deadline_minutes: float | None = None) -> None:
    """Deadline Alert callback (run by the executor, like a task): a `deadline_missed` alert."""
    from pipeline.ops.monitoring import deadline_missed as record

    record(context, deadline_minutes=deadline_minutes)


def run_deadline(minutes: float = DEADLINE_MINUTES) -> DeadlineAlert | None:
    """Alert when a run is not finished `minutes` after it was queued (None when minutes ≤ 0).

    Queued-at rather than logical date: a scheduled hourly run is queued when its interval ends,
    so this is "N minutes after the data interval end", while manual and backfill runs (whose
    logical dates are in the past) are not late the moment they are created.

    `airflow dags test` in 3.3.2 fails at the end of a successful run of any DAG with a deadline
    (it looks the alerts up by id in a DAG that was never stored: "'dict' object has no attribute
    'hex'"), so the demo and the DAG test run with PEERSCALE_DEADLINE_MINUTES=0; a scheduler
    handles deadlines correctly.
    """
    if minutes <= 0:
        return None
    return DeadlineAlert(
        reference=DeadlineReference.DAGRUN_QUEUED_AT,
        interval=timedelta(minutes=minutes),
        callback=SyncCallback(deadline_missed, kwargs={"deadline_minutes": minutes}),
        name="peerscale_run_late",
    )
