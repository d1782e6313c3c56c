"""The DAGs: they load cleanly, wire the stages in order, fan the forecast out, carry pools,
callbacks and a deadline, and really run under `airflow dags test`."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from pipeline.common.config import REPO_ROOT
from pipeline.plan import latest_plan_id, read_plan
from tests.conftest import settings_for
from tests.webhook import webhook_recorder

DAGS = REPO_ROOT / "dags"
AIRFLOW = Path(sys.executable).with_name("airflow")


@pytest.fixture(scope="module")
def dagbag():
    from airflow.dag_processing.dagbag import DagBag

    if str(DAGS) not in sys.path:  # Airflow puts the DAGs folder on sys.path; so does this test
        sys.path.insert(0, str(DAGS))
    return DagBag(dag_folder=str(DAGS))


def test_dags_import_without_errors(dagbag) -> None:
    assert dagbag.import_errors == {}
    assert {"peerscale_hourly", "peerscale_daily", "peerscale_plan_audit"} <= set(dagbag.dag_ids)


def test_hourly_dag_wires_the_stages_in_order(dagbag) -> None:
    from airflow.timetables.interval import CronDataIntervalTimetable

    dag = dagbag.dags["peerscale_hourly"]
    assert isinstance(dag.timetable, CronDataIntervalTimetable), "runs are keyed on real hourly data intervals"
    assert dag.catchup is False
    tasks = {t.task_id: t for t in dag.tasks}
    ingest_ids = {f"ingest_{name}" for name in ("peering_requests", "region_telemetry", "app_telemetry", "calendar",
                                                  "resource_pools", "instance_catalog")}
    forecast_ids = {"forecast_split", "forecast_fit_global", "forecast_shard", "forecast", "forecast_windows"}
    provisioning = {"gate", "route", "approval", "apply"}
    assert set(tasks) == ingest_ids | forecast_ids | provisioning | {
        "features", "feedback", "plan", "render_iac", "report", "publish", "monitor"}
    assert tasks["features"].upstream_task_ids == ingest_ids
    assert tasks["forecast_split"].upstream_task_ids == {"features"}
    assert tasks["forecast_fit_global"].upstream_task_ids == {"forecast_split"}
    assert tasks["forecast_shard"].upstream_task_ids == {"forecast_split"}
    assert tasks["forecast"].upstream_task_ids == {"forecast_fit_global", "forecast_shard"}
    assert tasks["forecast_windows"].upstream_task_ids == {"features"}  # sub-hourly plan windows (a no-op at 60 minutes)
    assert tasks["plan"].upstream_task_ids == {"forecast", "forecast_windows", "feedback"}
    assert tasks["publish"].upstream_task_ids == {"plan", "render_iac", "report"}
    assert tasks["monitor"].upstream_task_ids == {"publish"}
    # After publish: the gate, then straight to apply or through a person's approval.
    assert tasks["gate"].upstream_task_ids == {"plan", "publish"}
    assert tasks["route"].upstream_task_ids == {"gate"}
    assert tasks["approval"].upstream_task_ids == {"route"}
    assert tasks["apply"].upstream_task_ids == {"gate", "route", "approval"}
    assert tasks["apply"].trigger_rule == "none_failed_min_one_success"
    assert type(tasks["approval"]).__name__ == "HITLOperator" and tasks["approval"].options == ["Approve", "Reject"]
    assert tasks["approval"].defaults == ["Reject"]  # no answer in time: nothing is applied
    assert all(t.retries >= 1 for t in dag.tasks if t.task_id not in ("approval", "apply"))


def test_assets_wire_ingest_publish_and_the_audit(dagbag) -> None:
    hourly = dagbag.dags["peerscale_hourly"]
    outlets = {t.task_id: {a.name for a in t.outlets} for t in hourly.tasks if t.outlets}
    assert outlets["ingest_peering_requests"] == {"peerscale.raw.peering_requests"}
    assert outlets["publish"] == {"peerscale.plans.latest"}
    audit = dagbag.dags["peerscale_plan_audit"]
    assert [a.name for a in audit.timetable.asset_condition.objects] == ["peerscale.plans.latest"]


def test_daily_dag_retrains_on_a_daily_interval(dagbag) -> None:
    dag = dagbag.dags["peerscale_daily"]
    order = [t.task_id for t in dag.topological_sort()]
    assert order[0] == "features"
    assert set(order) == {"features", "retrain_daily", "train_split", "train_global", "train_shard", "train_promote"}
    assert order.index("train_shard") < order.index("train_promote")


def test_forecast_fans_out_over_mapped_shards_in_the_model_fit_pool(dagbag) -> None:
    from airflow.sdk.definitions.mappedoperator import MappedOperator

    tasks = {t.task_id: t for t in dagbag.dags["peerscale_hourly"].tasks}
    shard = tasks["forecast_shard"]
    assert isinstance(shard, MappedOperator), "dynamic task mapping: one task instance per shard"
    assert shard.pool == "peerscale_model_fit" and tasks["forecast_fit_global"].pool == "peerscale_model_fit"
    assert shard.max_active_tis_per_dagrun == 4, "bounded concurrency within a run"
    assert tasks["plan"].pool == "peerscale_solver"
    assert {t.pool for t in tasks.values()} == {"default_pool", "peerscale_model_fit", "peerscale_solver"}
    assert dagbag.dags["peerscale_daily"].get_task("retrain_daily").pool == "peerscale_model_fit"
    assert shard.retries >= 1 and shard.retry_exponential_backoff, "a failed shard retries alone, with backoff"


def _reparse(monkeypatch: pytest.MonkeyPatch, **env: str):
    """Parse the DAGs again with `env` (the shared wiring module is re-imported too)."""
    from airflow.dag_processing.dagbag import DagBag

    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delitem(sys.modules, "peerscale_callbacks", raising=False)
    bag = DagBag(dag_folder=str(DAGS))
    assert bag.import_errors == {}
    monkeypatch.delitem(sys.modules, "peerscale_callbacks", raising=False)  # the next import sees the real env
    return bag


def test_pool_names_limits_and_the_deadline_come_from_the_environment(dagbag, monkeypatch: pytest.MonkeyPatch) -> None:
    bag = _reparse(monkeypatch, PEERSCALE_POOL_MODEL_FIT="fit_pool", PEERSCALE_POOL_SOLVER="solver_pool",
                   PEERSCALE_FORECAST_MAX_ACTIVE_SHARDS="2", PEERSCALE_DEADLINE_MINUTES="20")
    hourly = bag.dags["peerscale_hourly"]
    assert hourly.get_task("forecast_shard").pool == "fit_pool" and hourly.get_task("plan").pool == "solver_pool"
    assert hourly.get_task("forecast_shard").max_active_tis_per_dagrun == 2
    assert hourly.deadline[0].interval == timedelta(minutes=20)
    assert _reparse(monkeypatch, PEERSCALE_DEADLINE_MINUTES="0").dags["peerscale_hourly"].deadline is None


def test_hourly_dag_carries_a_deadline_that_records_an_alert(dagbag) -> None:
    from airflow.sdk import DeadlineReference, SyncCallback

    (alert,) = dagbag.dags["peerscale_hourly"].deadline
    assert alert.reference == DeadlineReference.DAGRUN_QUEUED_AT
    assert alert.interval == timedelta(minutes=45)
    assert isinstance(alert.callback, SyncCallback), "run by the executor: no triggerer needed"
    assert alert.callback.path == "peerscale_callbacks.deadline_missed"
    assert alert.callback.kwargs == {"deadline_minutes": 45.0}


def _as_list(callbacks) -> list:
    return list(callbacks) if isinstance(callbacks, (list, tuple)) else [callbacks]  # mapped tasks keep the bare callable


def test_every_task_and_run_reports_failures_to_monitoring(dagbag) -> None:
    for dag_id in ("peerscale_hourly", "peerscale_daily", "peerscale_plan_audit"):
        dag = dagbag.dags[dag_id]
        assert [f"{c.__module__}.{c.__name__}" for c in _as_list(dag.on_failure_callback)] == ["peerscale_callbacks.task_failed"], dag_id
        for task in dag.tasks:
            names = [f"{c.__module__}.{c.__name__}" for c in _as_list(task.on_failure_callback)]
            assert names == ["peerscale_callbacks.task_failed"], (dag_id, task.task_id)


# ---- the callbacks, called with the context Airflow builds ------------------------------------------

UTC = UTC
RUN_ID = "scheduled__2026-01-28T23:00:00+00:00"


def _task_context(dag, task_id: str, map_index: int = -1, try_number: int = 3, run_type: str = "scheduled") -> dict:
    """The template context a task's failure callback gets (built like the task runner and the
    dag-processor build it: a RuntimeTaskInstance with the run context from the API server)."""
    from airflow.sdk.api.datamodels._generated import DagRun, TIRunContext
    from airflow.sdk.execution_time.task_runner import RuntimeTaskInstance

    run = DagRun(dag_id=dag.dag_id, run_id=RUN_ID, logical_date=datetime(2026, 1, 28, 23, tzinfo=UTC),
                 data_interval_start=datetime(2026, 1, 28, 23, tzinfo=UTC), data_interval_end=datetime(2026, 1, 29, tzinfo=UTC),
                 run_after=datetime(2026, 1, 29, tzinfo=UTC), start_date=datetime(2026, 1, 29, 0, 1, tzinfo=UTC), end_date=None,
                 run_type=run_type, state="running", consumed_asset_events=[], partition_key=None)
    ti = RuntimeTaskInstance.model_construct(
        id=uuid.uuid4(), task_id=task_id, dag_id=dag.dag_id, run_id=RUN_ID, try_number=try_number, map_index=map_index,
        dag_version_id=uuid.uuid4(), hostname="peerscale-worker-1", task=dag.get_task(task_id), max_tries=2,
        _ti_context_from_server=TIRunContext(dag_run=run, max_tries=2),
    )
    return ti.get_template_context()


def _deadline_context(run_type: str = "scheduled") -> dict:
    """What the scheduler hands a missed deadline's callback: the run as the REST API shows it, and the deadline."""
    from airflow.api_fastapi.core_api.datamodels.dag_run import DAGRunResponse

    run = DAGRunResponse.model_validate({
        "run_id": RUN_ID, "dag_id": "peerscale_hourly", "logical_date": datetime(2026, 1, 28, 23, tzinfo=UTC),
        "queued_at": datetime(2026, 1, 29, 0, 0, 5, tzinfo=UTC), "start_date": datetime(2026, 1, 29, 0, 0, 6, tzinfo=UTC),
        "end_date": None, "duration": None, "data_interval_start": datetime(2026, 1, 28, 23, tzinfo=UTC),
        "data_interval_end": datetime(2026, 1, 29, tzinfo=UTC), "run_after": datetime(2026, 1, 29, tzinfo=UTC),
        "last_scheduling_decision": None, "run_type": run_type, "state": "running", "triggered_by": "timetable",
        "triggering_user_name": None, "conf": {}, "note": None, "dag_versions": [], "bundle_version": None,
        "dag_model": {"dag_display_name": "peerscale_hourly"}, "partition_key": None, "partition_date": None,
    }).model_dump(mode="json")
    return {"dag_run": run, "deadline": {"id": str(uuid.uuid4()), "deadline_time": datetime(2026, 1, 29, 0, 45, 5, tzinfo=UTC)}}


@pytest.fixture()
def alert_sink(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A lake for the alerts and a webhook that records what it receives."""
    with webhook_recorder() as (url, received):
        monkeypatch.setenv("PEERSCALE_LAKE", str(tmp_path / "lake"))
        monkeypatch.setenv("PEERSCALE_ALERT_WEBHOOK", url)
        yield tmp_path / "lake" / "alerts", received


def test_task_failure_callback_records_a_task_failed_alert(dagbag, alert_sink) -> None:
    alerts, received = alert_sink
    dag = dagbag.dags["peerscale_hourly"]
    context = _task_context(dag, "forecast_shard", map_index=1)
    context["exception"] = RuntimeError("worker lost")
    for callback in _as_list(dag.get_task("forecast_shard").on_failure_callback):  # as the task runner calls them
        callback(context)

    record = json.loads((alerts / "20260129T0000Z.task_failed.peerscale_hourly.forecast_shard_1_.json").read_text())
    assert set(record) == {"interval_end", "alerts", "checked", "source"}, "the monitor's record format (+ where it came from)"
    assert record["interval_end"] == "2026-01-29T00:00:00+00:00" and record["checked"] == {"task_failed": "ok"}
    (alert,) = record["alerts"]
    assert alert["rule"] == "task_failed" and alert["severity"] == "critical" and alert["subject"] == "forecast_shard[1]"
    assert "RuntimeError: worker lost" in alert["message"] and alert["value"] == 3
    assert record["source"]["run_id"] == RUN_ID and record["source"]["map_index"] == 1 and record["source"]["callback"] == "task"
    assert received == [record], "the same record is posted to the webhook"


def test_dag_failure_callback_records_the_run_failure(dagbag, alert_sink) -> None:
    alerts, _ = alert_sink
    dag = dagbag.dags["peerscale_hourly"]
    context = _task_context(dag, "plan")  # the dag-processor builds it from the run's last task …
    context["reason"] = "task_failure"  # … and adds why the run ended
    for callback in _as_list(dag.on_failure_callback):
        callback(context)

    record = json.loads((alerts / "20260129T0000Z.task_failed.peerscale_hourly.run.json").read_text())
    (alert,) = record["alerts"]
    assert alert["rule"] == "task_failed" and alert["subject"] == "plan"
    assert alert["message"].startswith(f"DAG run peerscale_hourly/{RUN_ID} failed (task_failure)")
    assert record["source"]["callback"] == "dag"


def test_deadline_callback_records_a_deadline_missed_alert(dagbag, alert_sink) -> None:
    """Run the DAG's deadline callback the way an executor does (import by path, kwargs + context)."""
    import structlog
    from airflow.sdk.execution_time.callback_supervisor import execute_callback

    alerts, received = alert_sink
    callback = dagbag.dags["peerscale_hourly"].deadline[0].callback
    ok, error = execute_callback(callback.path, {**callback.kwargs, "context": _deadline_context()}, "peerscale_hourly.py",
                                 str(DAGS), structlog.get_logger())
    assert ok, error
    record = json.loads((alerts / "20260129T0000Z.deadline_missed.peerscale_hourly.json").read_text())
    (alert,) = record["alerts"]
    assert alert["rule"] == "deadline_missed" and alert["severity"] == "warning" and alert["threshold"] == 45.0
    assert "2026-01-29 00:45:05" in alert["message"] and record["source"]["run_type"] == "scheduled"
    assert received == [record]

    # A backfill's runs are queued together and wait for each other: their lateness is not alerted.
    ok, error = execute_callback(callback.path, {**callback.kwargs, "context": _deadline_context("backfill")},
                                 "peerscale_hourly.py", str(DAGS), structlog.get_logger())
    assert ok, error
    assert len(list(alerts.iterdir())) == 1


def test_callbacks_never_raise(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from pipeline.ops.monitoring import deadline_missed, task_failed

    (tmp_path / "lake").write_text("a file where the lake should be")
    monkeypatch.setenv("PEERSCALE_LAKE", str(tmp_path / "lake"))
    assert task_failed({"run_id": RUN_ID, "exception": ValueError("x")}) is None
    assert deadline_missed({"dag_run": {"dag_id": "peerscale_hourly", "run_type": "scheduled"}}, 45) is None


def test_dag_files_only_wire_tasks() -> None:
    """Heavy libraries are imported inside task bodies, never at DAG-parse time."""
    heavy = ("pandas", "pipeline", "prophet", "statsforecast", "ortools", "great_expectations", "duckdb")
    for path in DAGS.glob("*.py"):
        top_level = [line for line in path.read_text().splitlines() if line.startswith(("import ", "from "))]
        for line in top_level:
            assert not any(lib in line for lib in heavy), (path.name, line)


@pytest.mark.long
@pytest.mark.slow
def test_hourly_dag_runs_end_to_end_with_airflow_dags_test(seeded_copy: Path, tmp_path: Path) -> None:
    airflow_home = tmp_path / "airflow-home"
    airflow_home.mkdir()
    env = {
        **os.environ,
        "AIRFLOW_HOME": str(airflow_home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "PEERSCALE_LAKE": str(seeded_copy / "lake"),
        "PEERSCALE_BUILD": str(seeded_copy / "build"),
        "PEERSCALE_SOURCE": str(REPO_ROOT / "data_samples"),
        # `airflow dags test` 3.3.2 crashes at the end of a successful run of a DAG with a deadline
        # (see dags/peerscale_callbacks.py); the scheduler-driven tests run with it.
        "PEERSCALE_DEADLINE_MINUTES": "0",
    }
    # `airflow dags test` runs tasks without checking pools (3.3.2): the model-fit and solver pools
    # need not exist here, unlike under a scheduler (tests/celery_cluster.py, scripts/demo.sh create them).
    migrate = subprocess.run([str(AIRFLOW), "db", "migrate"], env=env, capture_output=True, text=True, timeout=300)
    assert migrate.returncode == 0, migrate.stdout[-3000:] + migrate.stderr[-3000:]
    run = subprocess.run(
        [str(AIRFLOW), "dags", "test", "peerscale_hourly", "2026-01-29T00:00:00+00:00"],
        env=env, capture_output=True, text=True, timeout=600,
    )
    log = run.stdout + run.stderr
    assert run.returncode == 0, log[-5000:]
    assert "state=success" in log, log[-5000:]

    settings = settings_for(seeded_copy)
    plan_id = latest_plan_id(settings)
    assert plan_id == "plan-20260129T0000Z", "the run covering [23:00, 00:00) publishes the plan from 00:00"
    plan, manifest = read_plan(settings, plan_id)
    assert manifest["status"] == "published" and len(plan) > 0
    assert Path(manifest["artifacts"]["report"]).exists()
    assert (Path(manifest["artifacts"]["terraform"]) / "plan.json").exists()
    # After publish: the gate decided and the apply ran as a dry run (the default), asking nobody.
    provisioning = manifest["provisioning"]
    assert provisioning["outcome"] == "dry_run" and provisioning["mode"] == "dry-run", provisioning
    # The forecast ran fanned out: four mapped shards (60 + 24 fresh series, 25 a shard) and the reduce step.
    assert all(f"task_id=forecast_shard map_index={i}" in log for i in range(4)), "mapped shard tasks ran"
    forecast_work = Path(settings.lake_root) / "forecasts" / "run=hourly-20260129T0000Z" / "_work" / "shards.json"
    assert len(json.loads(forecast_work.read_text())["shards"]) == 4
    shutil.rmtree(airflow_home, ignore_errors=True)
