"""The apply gate's human approval answered inside a running Airflow (issue #19, item 1).

A real CeleryExecutor cluster (tests/celery_cluster.py: api-server, scheduler, dag-processor, a
triggerer for versions that defer the approval, one Celery worker) runs the hourly DAG with
PEERSCALE_APPLY=execute against the moto server: the demo plan's first apply is outside the default
gate (spend change), so the run waits in the HITL `approval` task; the test answers it through
Airflow's REST API (PATCH .../taskInstances/approval/-1/hitlDetails, "Approve"), the run goes on,
`apply` provisions the plan with CloudFormation on moto, and the manifest records `approved`.

Needs PostgreSQL on 127.0.0.1:5432 and Redis on 127.0.0.1:6379: runs under `make test-distributed`
(PEERSCALE_DISTRIBUTED=1).
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any

import boto3
import pytest

from pipeline.iac.apply import applied_plan_id, read_apply_records
from tests.celery_cluster import CeleryCluster, wait_until
from tests.conftest import RUN_END, RUN_START, settings_for
from tests.moto_server import aws_env, moto_server  # noqa: F401


@pytest.mark.slow
@pytest.mark.timeout(2400)
@pytest.mark.skipif(os.environ.get("PEERSCALE_DISTRIBUTED") != "1", reason="needs PostgreSQL + Redis: `make test-distributed`")
def test_hourly_run_waits_for_approval_and_applies_once_approved_through_the_api(
    seeded_copy: Path, tmp_path: Path, aws_env: Any,
) -> None:
    settings = settings_for(seeded_copy)
    prefix = f"a{uuid.uuid4().hex[:10]}"
    cluster = CeleryCluster(workdir=tmp_path / "cluster", lake_root=settings.lake_root, build_root=settings.build_root,
                            workers=1, worker_concurrency=2, triggerer=True,
                            extra_env={"PEERSCALE_APPLY": "execute", "PEERSCALE_APPLY_ENGINE": "cloudformation",
                                       "PEERSCALE_STACK_PREFIX": prefix, "PEERSCALE_CAPACITY_RESERVATIONS": "ledger"})
    dag_id, run_id = "peerscale_hourly", f"approval__{RUN_END}"
    base = f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances"
    try:
        cluster.start()
        cluster.wait_for_dag(dag_id)
        cluster.trigger(dag_id, run_id, f"{RUN_START}:00Z", f"{RUN_END}:00Z")

        def waiting() -> dict | None:
            states = {t["task_id"]: t["state"] for t in cluster.task_instances(dag_id, run_id)}
            if states.get("apply") in ("failed", "upstream_failed") or states.get("gate") == "failed":
                raise AssertionError(f"the run failed before the approval: {states}")
            # Airflow 3.3+ parks a HITL task in `awaiting_input`; older versions defer it to the triggerer.
            return states if states.get("approval") in ("awaiting_input", "deferred") else None

        wait_until("the approval to wait for a person", waiting, 1800, interval=3, alive=cluster.check_alive)
        detail = cluster.api("GET", f"{base}/approval/-1/hitlDetails")
        assert detail["options"] == ["Approve", "Reject"] and "outside the policy gate" in detail["subject"]
        assert "asks a person because" in detail["body"]
        cluster.api("PATCH", f"{base}/approval/-1/hitlDetails", {"chosen_options": ["Approve"]})
        run = cluster.wait_for_run(dag_id, run_id, timeout=1200)
        states = {t["task_id"]: t["state"] for t in cluster.task_instances(dag_id, run_id)}
        assert run["state"] == "success", states
        assert states["approval"] == "success" and states["apply"] == "success", states
    except BaseException:
        print(cluster.log_tails(60))
        raise
    finally:
        cluster.stop()

    plan_id = "plan-20260129T0000Z"
    record = read_apply_records(settings, plan_id)["provisioning"]
    assert record["decision"] == "approved" and record["outcome"] == "approved", record
    assert record["responder"] and record["gate"]["passed"] is False
    assert applied_plan_id(settings) == plan_id
    stacks = boto3.client("cloudformation", region_name="eu-west-1").describe_stacks()["Stacks"]
    assert any(s["StackName"].startswith(prefix) for s in stacks), [s["StackName"] for s in stacks]
