"""Daily peerscale run: refit and re-select models on the daily series, forecast 14 days ahead; and
train the hourly model zoo into the model registry (pipeline.forecast.training) for the hourly run to score.

The daily series are each region's peak concurrency per resource and each pair's request volume.
The forecast (lake/forecasts/run=daily-<day>) is the 14-day outlook of `plan show` and the report;
the hourly DAG keeps serving the plan. Wiring only; logic lives in `pipeline`.
"""

from __future__ import annotations

from datetime import timedelta

import pendulum
from airflow.sdk import dag, task
from airflow.timetables.interval import CronDataIntervalTimetable
from peerscale_callbacks import MODEL_FIT_POOL, task_failed

DAILY_HISTORY_DAYS = 28  # four weekly cycles for the daily models


def _interval(data_interval_start, data_interval_end):
    from pipeline.common.intervals import DataInterval

    return DataInterval.between(data_interval_start.isoformat(), data_interval_end.isoformat())


@dag(
    dag_id="peerscale_daily",
    schedule=CronDataIntervalTimetable("0 0 * * *", timezone="UTC"),
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    default_args={"retries": 2, "retry_delay": timedelta(minutes=1), "retry_exponential_backoff": True,
                  "on_failure_callback": task_failed},
    on_failure_callback=task_failed,
    tags=["peerscale", "daily"],
    doc_md=__doc__,
)
def peerscale_daily():
    @task
    def features(data_interval_start=None, data_interval_end=None) -> dict:
        from pipeline.common.config import Settings
        from pipeline.run import stage_features

        return stage_features(_interval(data_interval_start, data_interval_end), Settings.from_env(history_days=DAILY_HISTORY_DAYS))

    @task(pool=MODEL_FIT_POOL)
    def retrain_daily(feature_paths: dict, data_interval_start=None, data_interval_end=None) -> dict:
        from pipeline.common.config import Settings
        from pipeline.run import stage_forecast

        settings = Settings.from_env(history_days=DAILY_HISTORY_DAYS)
        return stage_forecast(_interval(data_interval_start, data_interval_end), settings, kind="daily")

    @task(pool=MODEL_FIT_POOL)
    def train_split(feature_paths: dict, data_interval_start=None, data_interval_end=None) -> list[dict]:
        from pipeline.common.config import Settings
        from pipeline.run import stage_train_split

        return stage_train_split(_interval(data_interval_start, data_interval_end), Settings.from_env(history_days=DAILY_HISTORY_DAYS))

    @task(pool=MODEL_FIT_POOL)
    def train_global(shards: list[dict]) -> dict:
        from pipeline.common.config import Settings
        from pipeline.run import stage_train_global

        return stage_train_global(shards[0]["version"], Settings.from_env()) if shards else {}

    @task(pool=MODEL_FIT_POOL)
    def train_shard(shard: dict) -> dict:
        from pipeline.common.config import Settings
        from pipeline.run import stage_train_shard

        return stage_train_shard(shard["version"], shard["shard"], Settings.from_env())

    @task
    def train_promote(shards: list[dict]) -> dict:
        from pipeline.common.config import Settings
        from pipeline.run import stage_train_finalize

        return stage_train_finalize(shards[0]["version"], Settings.from_env()) if shards else {}

    feature_paths = features()
    retrain_daily(feature_paths)
    # Train daily, score hourly: the zoo per series over mapped shards into a new registry version,
    # promoted (CURRENT) only after its completeness check; the hourly run scores with CURRENT.
    shards = train_split(feature_paths)
    trained = train_shard.expand(shard=shards)
    train_global(shards) >> trained >> train_promote(shards)


peerscale_daily()
