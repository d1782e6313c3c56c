"""The Airflow Assets peerscale publishes: one per raw dataset in the lake, and the published plan.

Not a DAG: the hourly DAG's ingest tasks and its publish task declare these as outlets, and
downstream DAGs schedule on them (data-aware scheduling).
"""

from __future__ import annotations

from airflow.sdk import Asset

SOURCE_DATASETS = ["resource_pools", "instance_catalog", "calendar", "peering_requests", "region_telemetry", "app_telemetry"]

RAW_ASSETS: dict[str, Asset] = {
    name: Asset(name=f"peerscale.raw.{name}", uri=f"peerscale://lake/raw/{name}", group="peerscale")
    for name in SOURCE_DATASETS
}
PLAN_ASSET = Asset(name="peerscale.plans.latest", uri="peerscale://lake/plans/LATEST", group="peerscale")
