"""Audit every newly published plan: runs when the plan Asset is updated, not on a clock.

It loads the plan exactly as the request-time IRC will (pyarrow only, published status, all
windows readable) and fails loudly if the IRC could not serve from it.
"""

from __future__ import annotations

from datetime import timedelta

import pendulum
from airflow.sdk import dag, task
from peerscale_assets import PLAN_ASSET
from peerscale_callbacks import task_failed


@dag(
    dag_id="peerscale_plan_audit",
    schedule=[PLAN_ASSET],
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    default_args={"retries": 1, "retry_delay": timedelta(seconds=30), "on_failure_callback": task_failed},
    on_failure_callback=task_failed,
    tags=["peerscale", "audit"],
    doc_md=__doc__,
)
def peerscale_plan_audit():
    @task
    def audit_latest_plan() -> dict:
        from pipeline.common.config import Settings
        from pipeline.publish.audit import audit_latest_plan as audit

        return audit(Settings.from_env())

    audit_latest_plan()


peerscale_plan_audit()
