"""The whole hourly run with sources AND lake on s3:// (a real S3 API on loopback: moto server).

History: the session's seeded lake (the same samples, ingested locally by conftest) is uploaded,
then the last day is ingested again from the S3 sources into the S3 lake with
``pipeline.run.backfill_ingest``, then ``run_hourly`` runs every stage against S3. The plan it
publishes must equal the plan of the same run on local disk, ``LATEST`` must be written after
every other object of the plan, and the IRC must serve from it.
"""

from __future__ import annotations

import logging
import re
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import unquote

import pandas as pd
import pytest

from pipeline.common import storage
from pipeline.common.config import Settings
from pipeline.irc import Coordinator, PeeringRequest
from pipeline.plan import latest_plan_id, read_plan
from pipeline.run import backfill_ingest, run_hourly
from tests.conftest import RUN_END, RUN_START, SAMPLES, settings_for
from tests.moto_server import REGION, aws_env, moto_server, s3_bucket  # noqa: F401

pytestmark = pytest.mark.slow

PLAN_ID = "plan-20260129T0000Z"
REINGEST_FROM = "2026-01-28T00:00"  # the last day of history comes from the S3 sources
SOURCE_DAYS = ("2026-01-28", "2026-01-29")


def _upload_tree(bucket: str, root: Path, prefix: str, keep=lambda p: True) -> int:
    import boto3

    s3 = boto3.client("s3", region_name=REGION)
    files = [p for p in sorted(root.rglob("*")) if p.is_file() and keep(p)]
    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(lambda p: s3.put_object(Bucket=bucket, Key=f"{prefix}/{p.relative_to(root).as_posix()}",
                                              Body=p.read_bytes()), files))
    return len(files)


def _is_needed_source(path: Path) -> bool:
    """Reference files, and the daily files of the days the S3 ingest reads."""
    if path.suffix not in (".csv", ".jsonl"):
        return False
    day = path.stem
    return not re.fullmatch(r"\d{4}-\d{2}-\d{2}", day) or day in SOURCE_DAYS


@pytest.mark.long
def test_hourly_run_on_s3_publishes_the_same_plan(
    seeded_root: Path, published_root: Path, s3_bucket: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    lake_uri, source_uri = f"s3://{s3_bucket}/lake", f"s3://{s3_bucket}/sources"
    assert _upload_tree(s3_bucket, seeded_root / "lake", "lake") > 100
    assert _upload_tree(s3_bucket, SAMPLES, "sources", _is_needed_source) > 5
    settings = Settings(source_root=source_uri, lake_root=lake_uri, build_root=str(tmp_path / "build"))

    reports = backfill_ingest(REINGEST_FROM, RUN_START, settings)
    assert {r["dataset"] for r in reports} >= {"peering_requests", "resource_pools"}
    assert all(r["source_files"][0].startswith(source_uri) for r in reports)

    caplog.set_level(logging.INFO, logger="werkzeug")  # the server's access log, in request order
    summary = run_hourly(RUN_END, settings)

    # Published on S3, pointer included.
    assert summary.pointer == f"{lake_uri}/plans/LATEST"
    assert storage.read_text(summary.pointer).strip() == f"plan_id={PLAN_ID}/attempt=1"
    assert latest_plan_id(settings) == PLAN_ID
    plan, manifest = read_plan(settings, PLAN_ID)
    assert manifest["status"] == "published"

    # The same plan as the identical run on local disk (same code, other storage).
    local_plan, local_manifest = read_plan(settings_for(published_root), PLAN_ID)
    pd.testing.assert_frame_equal(plan, local_plan)
    ignore = {"artifacts"}
    assert {k: v for k, v in manifest.items() if k not in ignore} == {
        k: v for k, v in local_manifest.items() if k not in ignore
    }
    assert Path(manifest["artifacts"]["terraform"], "plan.json").is_file()

    # LATEST is the last object of the plan to be written: a reader never sees half a plan.
    writes = []
    for record in caplog.records:
        match = re.search(r'"(PUT|POST) (/[^ ?]+)', unquote(record.getMessage()))
        if match and f"/{s3_bucket}/lake/plans/" in match.group(2):
            writes.append(match.group(2).split("/lake/plans/", 1)[1])
    assert writes, "the server's access log shows the plan's writes"
    assert writes[-1] == "LATEST"
    assert {f"plan_id={PLAN_ID}/attempt=1/{name}" for name in ("plan.parquet", "resource_pools.parquet", "manifest.json")} <= set(writes)
    first_manifest = min(i for i, key in enumerate(writes) if key.endswith("manifest.json"))
    assert all(i < first_manifest for i, key in enumerate(writes) if key.endswith(".parquet"))  # data, then manifest
    last_manifest = max(i for i, key in enumerate(writes) if key.endswith("manifest.json"))
    assert last_manifest < len(writes) - 1

    # The IRC reads the published plan straight from S3.
    coordinator = Coordinator(lake_root=lake_uri)
    try:
        response = coordinator.handle_peering_request(PeeringRequest(
            request_id="s3-a", requested_at=datetime(2026, 1, 29, 0, 30, tzinfo=UTC),
            source_region="us-east-1", destination_region="eu-west-1",
            resource_requirements={"vcpu": 4, "memory_gib": 16, "bandwidth_gbps": 1}, duration_s=1800,
        ))
    finally:
        coordinator.close()  # flushes its outcome log while the loopback server is still configured
    assert (response.status, response.path) == ("success", "preallocated")


def test_missing_source_bucket_fails_the_ingest_with_the_key(aws_env, tmp_path: Path) -> None:
    """A source root in a bucket that does not exist: the task fails and names the file."""
    settings = Settings(source_root="s3://peerscale-absent-bucket/sources", lake_root=str(tmp_path / "lake"),
                        build_root=str(tmp_path / "build"))
    with pytest.raises(FileNotFoundError) as excinfo:
        backfill_ingest(REINGEST_FROM, "2026-01-28T01:00", settings)
    assert "s3://peerscale-absent-bucket/sources/inventory/pools.csv" in str(excinfo.value)


def test_lake_in_a_missing_bucket_fails_with_the_key(aws_env, tmp_path: Path) -> None:
    from pipeline.common.intervals import DataInterval
    from pipeline.ingest.loader import ingest

    settings = Settings(source_root=str(SAMPLES), lake_root="s3://peerscale-absent-bucket/lake",
                        build_root=str(tmp_path / "build"))
    with pytest.raises(storage.StoragePermanentError) as excinfo:
        ingest("resource_pools", DataInterval.between(REINGEST_FROM, "2026-01-28T01:00"), settings)
    assert "s3://peerscale-absent-bucket/lake/" in str(excinfo.value)
