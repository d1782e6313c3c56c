"""Hourly peerscale run: ingest the last hour → features → forecast 48 h → τ feedback → plan → Terraform + report → publish → monitor,
and after publish: policy gate → (outside the gate) a person approves or rejects → apply.

Wiring only: every task calls one stage in `pipeline.run` with the run's data interval and
passes lake paths (never data) through XCom. Heavy imports live inside the tasks.

Provisioning (pipeline.iac.provision): `gate` diffs the plan against the applied one and runs the
policy gate; `route` sends a change within the gate straight to `apply`, any other to `approval`,
a human-in-the-loop task showing the plan diff (Reject after PEERSCALE_APPROVAL_HOURS, default 4).
`apply` records the outcome; it is a dry run unless PEERSCALE_APPLY=execute.

The forecast fans out (pipeline.forecast.shards): `forecast_split` splits the series into shards,
`forecast_shard` is mapped over them while `forecast_fit_global` fits the global model once, and
`forecast` reduces the parts into the run's forecast. Model fitting runs in the model-fit pool,
the plan in the solver pool; failures and a late run are recorded as alerts (peerscale_callbacks).
"""

from __future__ import annotations

import os
from datetime import timedelta

import pendulum
from airflow.providers.standard.operators.hitl import HITLOperator
from airflow.sdk import dag, task
from airflow.timetables.interval import CronDataIntervalTimetable
from peerscale_assets import PLAN_ASSET, RAW_ASSETS, SOURCE_DATASETS
from peerscale_callbacks import MAX_ACTIVE_SHARDS, MODEL_FIT_POOL, SOLVER_POOL, run_deadline, task_failed


def _interval(data_interval_start, data_interval_end):
    from pipeline.common.intervals import DataInterval

    return DataInterval.between(data_interval_start.isoformat(), data_interval_end.isoformat())


@dag(
    dag_id="peerscale_hourly",
    schedule=CronDataIntervalTimetable("0 * * * *", timezone="UTC"),
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    default_args={
        "retries": 2,
        "retry_delay": timedelta(seconds=30),
        "retry_exponential_backoff": True,
        "on_failure_callback": task_failed,
    },
    on_failure_callback=task_failed,
    deadline=run_deadline(),
    tags=["peerscale", "hourly"],
    doc_md=__doc__,
)
def peerscale_hourly():
    @task
    def ingest(dataset: str, data_interval_start=None, data_interval_end=None) -> dict:
        from pipeline.common.config import Settings
        from pipeline.run import stage_ingest

        return stage_ingest(_interval(data_interval_start, data_interval_end), Settings.from_env(), [dataset])[0]

    @task
    def features(ingested: list[dict], data_interval_start=None, data_interval_end=None) -> dict:
        from pipeline.common.config import Settings
        from pipeline.run import stage_features

        return stage_features(_interval(data_interval_start, data_interval_end), Settings.from_env())

    @task
    def forecast_split(feature_paths: dict, data_interval_start=None, data_interval_end=None) -> list[dict]:
        from airflow.sdk.configuration import conf

        from pipeline.common.config import Settings
        from pipeline.run import stage_forecast_split

        return stage_forecast_split(_interval(data_interval_start, data_interval_end), Settings.from_env(), kind="hourly",
                                    max_map_length=conf.getint("core", "max_map_length"))

    @task(pool=MODEL_FIT_POOL)
    def forecast_fit_global(shards: list[dict]) -> dict:
        from pipeline.common.config import Settings
        from pipeline.run import stage_forecast_fit_global

        return stage_forecast_fit_global(shards[0]["run_id"], Settings.from_env())

    @task(pool=MODEL_FIT_POOL, max_active_tis_per_dagrun=MAX_ACTIVE_SHARDS)
    def forecast_shard(shard: dict) -> dict:
        from pipeline.common.config import Settings
        from pipeline.run import stage_forecast_shard

        return stage_forecast_shard(shard["run_id"], shard["shard"], Settings.from_env())

    @task
    def forecast(data_interval_start=None, data_interval_end=None) -> dict:
        from pipeline.common.config import Settings
        from pipeline.run import stage_forecast_reduce

        return stage_forecast_reduce(_interval(data_interval_start, data_interval_end), Settings.from_env(), kind="hourly")

    @task(pool=MODEL_FIT_POOL)
    def forecast_windows(feature_paths: dict, data_interval_start=None, data_interval_end=None) -> dict:
        from pipeline.common.config import Settings
        from pipeline.run import stage_forecast_windows

        return stage_forecast_windows(_interval(data_interval_start, data_interval_end), Settings.from_env())

    @task
    def feedback(data_interval_start=None, data_interval_end=None) -> dict:
        from pipeline.common.config import Settings
        from pipeline.run import stage_feedback

        return stage_feedback(_interval(data_interval_start, data_interval_end), Settings.from_env())

    @task(pool=SOLVER_POOL)
    def plan(forecast_run: dict, window_run: dict, tau_feedback: dict, data_interval_start=None, data_interval_end=None) -> dict:
        from pipeline.common.config import Settings
        from pipeline.run import stage_plan

        return stage_plan(_interval(data_interval_start, data_interval_end), Settings.from_env(), forecast_run["run_id"],
                          window_run["run_id"])

    @task
    def render_iac(planned: dict) -> dict:
        from pipeline.common.config import Settings
        from pipeline.run import stage_render

        return stage_render(planned["plan_id"], Settings.from_env(), planned.get("attempt"))

    @task
    def report(planned: dict, data_interval_start=None, data_interval_end=None) -> str:
        from pipeline.common.config import Settings
        from pipeline.run import stage_report

        return stage_report(planned["plan_id"], _interval(data_interval_start, data_interval_end), Settings.from_env(),
                            planned.get("attempt"))

    @task(outlets=[PLAN_ASSET])
    def publish(planned: dict, rendered: dict, report_path: str) -> str:
        from pipeline.common.config import Settings
        from pipeline.run import stage_publish

        return stage_publish(planned["plan_id"], Settings.from_env(), {"terraform": rendered["terraform_dir"], "report": report_path},
                             planned.get("attempt"))

    @task
    def monitor(pointer: str, data_interval_start=None, data_interval_end=None) -> dict:
        from pipeline.common.config import Settings
        from pipeline.run import stage_monitor

        return stage_monitor(_interval(data_interval_start, data_interval_end), Settings.from_env())

    @task
    def gate(planned: dict, pointer: str) -> dict:
        from pipeline.common.config import Settings
        from pipeline.iac.provision import gate_plan

        return gate_plan(planned["plan_id"], Settings.from_env())

    @task.branch
    def route(decision: dict) -> str:
        return "approval" if decision["needs_approval"] else "apply"

    approval = HITLOperator(
        task_id="approval",
        subject="{{ ti.xcom_pull(task_ids='gate')['subject'] }}",
        body="{{ ti.xcom_pull(task_ids='gate')['text'] }}",
        options=["Approve", "Reject"],
        defaults=["Reject"],
        response_timeout=timedelta(hours=float(os.environ.get("PEERSCALE_APPROVAL_HOURS", "4"))),
        retries=0,
    )

    @task(trigger_rule="none_failed_min_one_success", retries=0)
    def apply(decision: dict, ti=None) -> dict:
        from pipeline.common.config import Settings
        from pipeline.iac.provision import provision

        answer = None if decision["passed"] else ti.xcom_pull(task_ids="approval")
        chosen = (answer or {}).get("chosen_options") or [None]
        responder = (answer or {}).get("responded_by_user")
        return provision(decision["plan_id"], Settings.from_env(), decision, approval=chosen[0],
                         responder=str(responder) if responder else None)

    ingested = [
        ingest.override(task_id=f"ingest_{name}", outlets=[RAW_ASSETS[name]])(name) for name in SOURCE_DATASETS
    ]
    feature_paths = features(ingested)
    shards = forecast_split(feature_paths)
    forecast_run = forecast()
    [forecast_fit_global(shards), forecast_shard.expand(shard=shards)] >> forecast_run
    planned = plan(forecast_run, forecast_windows(feature_paths), feedback())
    pointer = publish(planned, render_iac(planned), report(planned))
    monitor(pointer)
    decision = gate(planned, pointer)
    applied = apply(decision)
    route(decision) >> [approval, applied]
    approval >> applied


peerscale_hourly()
