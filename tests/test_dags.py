"""The DAGs: they load cleanly, wire the stages in order, and really run under `airflow dags test`."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.config import REPO_ROOT
from pipeline.plan import latest_plan_id, read_plan
from tests.conftest import settings_for

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
    assert set(tasks) == ingest_ids | {"features", "forecast", "feedback", "plan", "render_iac", "report", "publish", "monitor"}
    assert tasks["features"].upstream_task_ids == ingest_ids
    assert tasks["forecast"].upstream_task_ids == {"features"}
    assert tasks["plan"].upstream_task_ids == {"forecast", "feedback"}
    assert tasks["publish"].upstream_task_ids == {"plan", "render_iac", "report"}
    assert tasks["monitor"].upstream_task_ids == {"publish"}
    assert all(t.retries >= 1 for t in dag.tasks)


def test_assets_wire_ingest_publish_and_the_audit(dagbag) -> None:
    hourly = dagbag.dags["peerscale_hourly"]
    outlets = {t.task_id: {a.name for a in t.outlets} for t in hourly.tasks if t.outlets}
    assert outlets["ingest_peering_requests"] == {"peerscale.raw.peering_requests"}
    assert outlets["publish"] == {"peerscale.plans.latest"}
    audit = dagbag.dags["peerscale_plan_audit"]
    assert [a.name for a in audit.timetable.asset_condition.objects] == ["peerscale.plans.latest"]


def test_daily_dag_retrains_on_a_daily_interval(dagbag) -> None:
    dag = dagbag.dags["peerscale_daily"]
    assert [t.task_id for t in dag.topological_sort()] == ["features", "retrain_daily"]


def test_dag_files_only_wire_tasks() -> None:
    """Heavy libraries are imported inside task bodies, never at DAG-parse time."""
    for path in DAGS.glob("*.py"):
        top_level = [line for line in path.read_text().splitlines() if line.startswith(("import ", "from "))]
        for line in top_level:
            assert not any(lib in line for lib in ("pandas", "pipeline", "prophet", "statsforecast", "ortools", "great_expectations", "duckdb")), (path.name, line)


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
    }
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
    assert (Path(manifest["artifacts"]["terraform"]) / "main.tf").exists()
    shutil.rmtree(airflow_home, ignore_errors=True)
