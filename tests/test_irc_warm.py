"""The IRC's warm path: pre-allocated → warm → on demand → failure, warm capacity held in the ledger."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pytest

from pipeline.common import schemas
from pipeline.irc import Coordinator, PeeringRequest
from pipeline.irc.coordinator import WARM_START_SHARE
from pipeline.irc.ledger.sqlite import SQLiteLedger
from tests import plan_store

PLAN_ID = "plan-20250101T10"
T0 = datetime(2025, 1, 1, 10, tzinfo=UTC)
EU = "eu-west-1"
WARM_PLAN = schemas.PLAN.append(pa.field("warm_count", pa.int64()))
POOLS = {EU: {"vcpu": 64.0, "memory_gib": 256.0, "storage_gib": 500.0, "bandwidth_gbps": 8.0},
         "us-east-1": {"vcpu": 64.0, "memory_gib": 256.0, "storage_gib": 500.0, "bandwidth_gbps": 8.0}}


def publish(lake: Path, *, warm: int | list[int] | None, hours: int = 2) -> None:
    """Per window one eu-west-1 line of 2 instances (8 vCPU, 32 GiB in all) with `warm` stopped ones beside it
    (one figure per window, or the same in each; None: a plan made before the warm tier, without the column)."""
    rows = []
    per_hour = warm if isinstance(warm, list) else [warm] * hours
    for h in range(hours):
        start = T0 + timedelta(hours=h)
        for resource_type, quantity in (("vcpu", 8.0), ("memory_gib", 32.0)):
            rows.append({"plan_id": PLAN_ID, "valid_from": start, "valid_to": start + timedelta(hours=1), "region": EU,
                         "resource_type": resource_type, "quantity": quantity, "instance_type": "m5.xlarge",
                         "purchase_option": "on_demand", "count": 2, "hourly_cost": 0.2, "demand_quantile": quantity,
                         "line_id": f"{EU}/{h}/m5.xlarge/on_demand", "reason": "test", "warm_count": per_hour[h]})
    table = pa.Table.from_pylist(rows, schema=WARM_PLAN if warm is not None else schemas.PLAN)
    pools = [{"region": r, "resource_type": rt, "available_quantity": q, "total_quantity": q * 2}
             for r, per in POOLS.items() for rt, q in per.items()]
    plan_store.write_plan(lake, PLAN_ID, table, {"plan_id": PLAN_ID, "created_at": T0.isoformat(), "valid_from": T0.isoformat(),
                                                 "valid_to": (T0 + timedelta(hours=hours)).isoformat()},
                          pools=pa.Table.from_pylist(pools, schema=schemas.RESOURCE_POOLS))


def ask(irc: Coordinator, rid: str, vcpu: float, mem: float, *, minutes: int = 5, duration_s: float = 600.0) -> object:
    return irc.handle_peering_request(PeeringRequest(
        request_id=rid, requested_at=T0 + timedelta(minutes=minutes), source_region="us-east-1", destination_region=EU,
        resource_requirements={"vcpu": vcpu, "memory_gib": mem}, duration_s=duration_s))


def coordinator(lake: Path, **kwargs: object) -> Coordinator:
    return Coordinator(lake, reload_interval_s=None, outcomes=False, **kwargs)  # type: ignore[arg-type]


def test_a_miss_starts_warm_capacity_before_going_on_demand(tmp_path: Path) -> None:
    publish(tmp_path, warm=1)  # warm: 1 of the line's 2 instances → 4 vCPU, 16 GiB
    with coordinator(tmp_path) as irc:
        assert ask(irc, "fill", 7.5, 30).path == "preallocated"
        warm = ask(irc, "w1", 3, 8)
        assert (warm.status, warm.path, warm.latency_class) == ("success", "warm", "warm")
        assert warm.miss_reason == "exhausted" and warm.allocation_id.startswith("warm-")
        cold = ask(irc, "c1", 3, 8)  # 1 vCPU of warm capacity left
        assert (cold.path, cold.latency_class) == ("on_demand", "medium")
        assert warm.provisioning_s == pytest.approx(cold.provisioning_s * WARM_START_SHARE)
        assert 0 < warm.provisioning_s < cold.provisioning_s
        assert irc.release(warm.allocation_id) and not irc.release(warm.allocation_id)
        assert ask(irc, "w2", 3, 8).path == "warm", "released warm capacity serves again"
        assert 'path="warm"' in irc.metrics_text()


def test_warm_capacity_must_cover_every_window_the_session_overlaps(tmp_path: Path) -> None:
    publish(tmp_path, warm=[1, 0])  # warm capacity in the first window only
    with coordinator(tmp_path) as irc:
        ask(irc, "fill", 7.5, 30, duration_s=7200)
        assert ask(irc, "inside", 2, 4).path == "warm"
        assert ask(irc, "into the next window", 1, 1, minutes=30, duration_s=3600).path == "on_demand"


@pytest.mark.parametrize("warm", [None, 0])
def test_no_warm_path_without_planned_warm_capacity(tmp_path: Path, warm: int | None) -> None:
    publish(tmp_path, warm=warm)
    with coordinator(tmp_path) as irc:
        ask(irc, "fill", 7.5, 30)
        assert ask(irc, "miss", 1, 1).path == "on_demand"


def test_replicas_sharing_a_ledger_never_start_more_warm_capacity_than_planned(tmp_path: Path) -> None:
    publish(tmp_path / "lake", warm=1)
    path = tmp_path / "ledger.sqlite"
    replicas = [coordinator(tmp_path / "lake", ledger=SQLiteLedger(path)) for _ in range(4)]
    try:
        assert ask(replicas[0], "fill", 7.5, 30).path == "preallocated"
        paths: list[str] = []
        lock = threading.Lock()

        def burst(irc: Coordinator, k: int) -> None:
            for i in range(3):
                got = ask(irc, f"r{k}-{i}", 1.0, 4.0).path
                with lock:
                    paths.append(got)

        threads = [threading.Thread(target=burst, args=(irc, k)) for k, irc in enumerate(replicas)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert paths.count("warm") == 4 and paths.count("on_demand") == 8, "4 vCPU / 16 GiB warm: exactly four 1-vCPU/4-GiB starts"
    finally:
        for irc in replicas:
            irc.close()
