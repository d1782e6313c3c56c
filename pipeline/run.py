"""One hourly or daily run, stage by stage, without Airflow.

The DAGs call the same stage functions one task each; `run_hourly` chains them for `peerscale
run` and for laptop use, in process or each in a forked process of its own (`stage_processes`).
Each stage takes the run's interval and returns small, JSON-serialisable results (paths,
counts), never data.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from pipeline.common.config import Settings
from pipeline.common.intervals import DataInterval, parse_utc

Progress = Callable[[str], None]


def stage_ingest(interval: DataInterval, settings: Settings, datasets: list[str] | None = None) -> list[dict]:
    from pipeline.ingest.loader import ingest_all

    return [report.to_dict() for report in ingest_all(interval, settings, datasets)]


def stage_features(interval: DataInterval, settings: Settings) -> dict[str, str]:
    from pipeline.features.build import build_features

    return build_features(interval, settings)


def stage_forecast(interval: DataInterval, settings: Settings, kind: str = "hourly") -> dict:
    from pipeline.forecast import run_forecast
    from pipeline.ops.registry_alert import alert_on_fallback

    out = run_forecast(interval, settings, kind=kind)
    alert_on_fallback(settings, interval, out)  # the registry could not score (some) series
    return out


def stage_forecast_windows(interval: DataInterval, settings: Settings) -> dict:
    """The region forecast at `plan_window_minutes` over the plan's hours ({"run_id": None} for hourly windows)."""
    from pipeline.forecast.windows import run_window_forecast

    return run_window_forecast(interval, settings)


def stage_forecast_split(interval: DataInterval, settings: Settings, kind: str = "hourly",
                         max_map_length: int | None = None) -> list[dict]:
    """Fan-out, step 1: prepare the forecast inputs once and split the series into shards (one descriptor each).

    max_map_length: Airflow's [core] max_map_length (default: Airflow's default), the most shards a run can map over.
    """
    from pipeline.forecast.shards import MAX_MAP_LENGTH, split_shards

    limit = MAX_MAP_LENGTH if max_map_length is None else max_map_length
    return split_shards(interval, settings, kind, max_map_length=limit)


def stage_forecast_fit_global(run_id: str, settings: Settings) -> dict:
    """Fan-out: fit the global models once on all series (sharding them would change the model)."""
    from pipeline.forecast.shards import fit_global

    return fit_global(run_id, settings)


def stage_forecast_shard(run_id: str, shard: int, settings: Settings) -> dict:
    """Fan-out: the local models on one shard of series; a retry rewrites only this shard's part."""
    from pipeline.forecast.shards import forecast_shard

    return forecast_shard(run_id, shard, settings)


def stage_forecast_reduce(interval: DataInterval, settings: Settings, kind: str = "hourly") -> dict:
    """Fan-in: check every part is there, choose/calibrate/reconcile, publish the forecast as `stage_forecast` does."""
    from pipeline.forecast.shards import reduce_shards
    from pipeline.ops.registry_alert import alert_on_fallback

    out = reduce_shards(interval, settings, kind)
    alert_on_fallback(settings, interval, out)  # the registry could not score (some) series
    return out


def stage_train(interval_end: str | datetime, settings: Settings, models: tuple[str, ...] | None = None, *,
                promote: bool = True) -> dict:
    """Laptop mode / `peerscale train`: the features of the training window, then every training step in-process."""
    from pipeline.forecast.training import train

    interval = DataInterval.ending_at(parse_utc(interval_end) if isinstance(interval_end, str) else interval_end)
    stage_features(interval, settings)
    return train(interval, settings, models, promote=promote)


def stage_train_split(interval: DataInterval, settings: Settings) -> list[dict]:
    """Daily training, step 1: prepare once, split the series into shards (one descriptor each, for `expand`)."""
    from pipeline.forecast.training import train_split

    return train_split(interval, settings)


def stage_train_global(version: str, settings: Settings) -> dict:
    from pipeline.forecast.training import train_global

    return train_global(version, settings)


def stage_train_shard(version: str, shard: int, settings: Settings) -> dict:
    from pipeline.forecast.training import train_shard

    return train_shard(version, shard, settings)


def stage_train_finalize(version: str, settings: Settings) -> dict:
    """Completeness check, manifest, and CURRENT moved to the new version."""
    from pipeline.forecast.training import train_finalize

    return train_finalize(version, settings, promote=True)


def stage_feedback(interval: DataInterval, settings: Settings) -> dict:
    """Step the τ controller from the hour's IRC outcomes (closed loop, see pipeline.ops.feedback)."""
    from pipeline.ops.feedback import stage_feedback as feedback

    return feedback(interval, settings)


def stage_plan(interval: DataInterval, settings: Settings, forecast_run_id: str, window_run_id: str | None = None) -> dict:
    """Plan with τ per region from the feedback controller where it has spoken, else from cost
    (`window_run_id`: the sub-hourly forecast run of `stage_forecast_windows`, if any)."""
    from pipeline.ops.feedback import load_tau_overrides
    from pipeline.plan import build_plan

    return build_plan(interval, settings, forecast_run_id, tau_overrides=load_tau_overrides(settings.lake_root, interval.end),
                      window_forecast_run_id=window_run_id)


def stage_render(plan_id: str, settings: Settings, attempt: int | None = None) -> dict[str, str]:
    """Render the plan (its `attempt`, as the plan stage returned it) into build/iac/<plan_id>/{terraform,cloudformation}."""
    from pipeline.iac.render import render_plan

    return render_plan(plan_id, settings, attempt)


def stage_report(plan_id: str, interval: DataInterval, settings: Settings, attempt: int | None = None) -> str:
    from pipeline.report.html import write_plan_report

    return write_plan_report(plan_id, interval, settings, attempt=attempt)


def stage_publish(plan_id: str, settings: Settings, artifacts: dict[str, str], attempt: int | None = None) -> str:
    """Verify the attempt's hashes, mark it published, move LATEST to it last (see pipeline.publish.pointer)."""
    from pipeline.publish.pointer import publish

    return publish(plan_id, settings, artifacts, attempt=attempt)


def stage_monitor(interval: DataInterval, settings: Settings) -> dict:
    """Evaluate the alert rules for the hour just covered (see pipeline.ops.monitoring)."""
    from pipeline.ops.monitoring import monitor

    return monitor(interval, settings)


@dataclass
class RunSummary:
    """What an in-process run produced, for the CLI to print."""

    interval: str
    ingest: list[dict] = field(default_factory=list)
    features: dict[str, str] = field(default_factory=dict)
    forecast: dict = field(default_factory=dict)
    forecast_windows: dict = field(default_factory=dict)
    feedback: dict = field(default_factory=dict)
    plan: dict = field(default_factory=dict)
    terraform_dir: str = ""
    report: str = ""
    pointer: str = ""
    monitoring: dict = field(default_factory=dict)


def run_hourly(interval_end: str | datetime, settings: Settings, progress: Progress | None = None, *,
               stage_processes: bool = False) -> RunSummary:
    """Ingest the hour before `interval_end`, then features → forecast → feedback → plan → IaC → report → publish → monitor.

    stage_processes: run each stage in a forked process of its own, as the DAG's tasks are: a run's
    peak memory is then its largest stage's, not the sum of what every stage left resident
    (`peerscale run` does; in process where the OS or a daemonic caller cannot fork)."""
    say = progress or (lambda _msg: None)
    stage = _stage_runner(stage_processes)
    interval = DataInterval.ending_at(interval_end, hours=1)
    summary = RunSummary(interval=str(interval))
    say(f"ingest {interval}")
    summary.ingest = stage(stage_ingest, interval, settings)
    say("features")
    summary.features = stage(stage_features, interval, settings)
    say("forecast")
    summary.forecast = stage(stage_forecast, interval, settings)
    if settings.plan_window_minutes != 60:
        say(f"forecast {settings.plan_window_minutes}-minute windows")
        summary.forecast_windows = stage(stage_forecast_windows, interval, settings)
    say("feedback")
    summary.feedback = stage(stage_feedback, interval, settings)
    return plan_and_publish(interval, settings, summary, progress=say, stage_processes=stage_processes)


def plan_and_publish(interval: DataInterval, settings: Settings, summary: RunSummary, progress: Progress | None = None, *,
                     stage_processes: bool = False) -> RunSummary:
    """The run from its forecast on: plan (a new attempt) → IaC → report → publish (LATEST last) → monitor.

    Every write under lake/plans/ happens here; a crash at any point leaves LATEST on a complete,
    verified plan, and running this again writes one more attempt with the same rows.
    """
    say = progress or (lambda _msg: None)
    stage = _stage_runner(stage_processes)
    say("plan")
    summary.plan = stage(stage_plan, interval, settings, summary.forecast["run_id"], summary.forecast_windows.get("run_id"))
    plan_id, attempt = summary.plan["plan_id"], summary.plan["attempt"]
    say("render IaC")
    summary.terraform_dir = stage(stage_render, plan_id, settings, attempt)["terraform_dir"]
    say("report")
    summary.report = stage(stage_report, plan_id, interval, settings, attempt)
    say("publish")
    summary.pointer = stage(stage_publish, plan_id, settings, {"terraform": summary.terraform_dir, "report": summary.report}, attempt)
    say("monitor")
    summary.monitoring = stage(stage_monitor, interval, settings)
    return summary


def _stage_runner(stage_processes: bool) -> Callable[..., Any]:
    """How a run calls its stages: `fn(*args)` in process, or in a forked process each. The data
    libraries every stage uses are imported here first, once, so each stage's process inherits them."""
    if not stage_processes:
        return lambda fn, *args: fn(*args)
    import pandas  # noqa: F401
    import pyarrow.parquet  # noqa: F401

    from pipeline.common.parallel import in_child_process

    return lambda fn, *args: in_child_process(fn, *args, setup=_system_allocator, meanwhile=_IMPORT_WHILE.get(fn))


def _import_forecast_libraries() -> None:
    """scikit-learn (~1.3 s) and the forecast engine, imported in the run's process while the ingest
    works in its own on one core: the forecast stage's process inherits them."""
    import sklearn.ensemble  # noqa: F401  (the global model)

    from pipeline.forecast import engine  # noqa: F401


def _import_report_libraries() -> None:
    """matplotlib and the report (~1 s), imported in the run's process while the plan is solved in its
    own: the report stage's process inherits them. Not before the forecast, whose stage is the run's
    peak of memory."""
    import matplotlib

    from pipeline.iac import render  # noqa: F401
    from pipeline.report import html  # noqa: F401

    matplotlib.use("Agg")  # headless, as the report draws
    import matplotlib.pyplot


# What the run's process imports while a stage works in its own (a later stage's process inherits it).
_IMPORT_WHILE: dict[Callable[..., Any], Callable[[], None]] = {
    stage_ingest: _import_forecast_libraries, stage_plan: _import_report_libraries,
}


def _system_allocator() -> None:
    """Arrow's buffers from the C library's malloc in a stage's forked process. Arrow's default,
    mimalloc, did not reuse memory freed across threads there: the 100-region features stage
    peaked at 4.2 GB in a forked process, 2.8 GB with this, 2.2 GB in process (bench/RESULTS.md)."""
    import pyarrow as pa

    pa.set_memory_pool(pa.system_memory_pool())


def backfill_ingest(start: str | datetime, end: str | datetime, settings: Settings, progress: Progress | None = None) -> list[dict]:
    """Ingest a whole range day by day (the same ingest code, larger intervals): seeds the lake's history."""
    say = progress or (lambda _msg: None)
    whole = DataInterval.between(start, end)
    reports: list[dict] = []
    cursor = whole.start
    while cursor < whole.end:
        nxt = min(cursor.replace(hour=0) + timedelta(days=1), whole.end)
        chunk = DataInterval(cursor, nxt)
        say(f"ingest {chunk}")
        reports.extend(stage_ingest(chunk, settings))
        cursor = nxt
    return reports
