"""The IRC's warm path: pre-allocated → warm → on demand → failure, warm capacity held in the ledger."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pytest

from pipeline.common import schemas
from pipeline.irc import Coordinator, PeeringRequest
from pipeline.irc.coordinator import WARM_START_SHARE
from pipeline.irc.ledger import open_ledger
from pipeline.irc.ledger.sqlite import SQLiteLedger
from tests import plan_store
from tests.test_irc_ledgers import drop_postgres, postgres_url

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


def bursts(replicas: list[Coordinator], per_replica: int, vcpu: float, mem: float) -> list[object]:
    """Every replica asks `per_replica` times at once (a thread each): the decisions, in no set order."""
    decisions: list[object] = []
    lock = threading.Lock()

    def burst(irc: Coordinator, k: int) -> None:
        for i in range(per_replica):
            got = ask(irc, f"r{k}-{i}", vcpu, mem)
            with lock:
                decisions.append(got)

    threads = [threading.Thread(target=burst, args=(irc, k)) for k, irc in enumerate(replicas)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return decisions


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
        paths = [d.path for d in bursts(replicas, 3, 1.0, 4.0)]  # type: ignore[attr-defined]
        assert paths.count("warm") == 4 and paths.count("on_demand") == 8, "4 vCPU / 16 GiB warm: exactly four 1-vCPU/4-GiB starts"
    finally:
        for irc in replicas:
            irc.close()


def _used(irc: Coordinator, region: str) -> dict[str, float]:
    """What the first window of `region` (or `<region>/warm`) holds of the two resources the plan has."""
    used = irc._ledger.usage(int(T0.timestamp()), region)
    return {r: used.get(r, 0.0) for r in ("vcpu", "memory_gib")}


@pytest.fixture(params=["memory", "sqlite", "postgres"])
def ledger_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param != "postgres":
        yield "memory" if request.param == "memory" else f"sqlite://{tmp_path / 'ledger.db'}"
        return
    url = postgres_url()
    yield url
    drop_postgres(url)


def test_a_request_larger_than_either_tier_starts_warm_on_top_of_what_the_preallocation_still_holds(
        tmp_path: Path, ledger_url: str) -> None:
    publish(tmp_path / "lake", warm=1)  # pre-allocated 8 vCPU / 32 GiB (normal priority: 95 %), warm 4 / 16
    with coordinator(tmp_path / "lake", ledger=open_ledger(ledger_url)) as irc:
        assert ask(irc, "fill", 6, 24).path == "preallocated"  # left: 1.6 vCPU, 6.4 GiB
        big = ask(irc, "big", 5, 20)  # neither tier alone: 1.6 < 5 pre-allocated, 4 < 5 warm
        assert (big.status, big.path, big.latency_class) == ("success", "warm", "warm")
        assert big.preallocated_part == pytest.approx({"vcpu": 1.6, "memory_gib": 6.4})
        assert "from the pre-allocation, the rest warm" in big.message
        assert _used(irc, EU) == pytest.approx({"vcpu": 7.6, "memory_gib": 30.4})
        assert _used(irc, f"{EU}/warm") == pytest.approx({"vcpu": 3.4, "memory_gib": 13.6})
        assert ask(irc, "small", 0.5, 1).path == "warm", "whole from what warm capacity has left"
        assert ask(irc, "none left", 1, 1).path == "on_demand", "nothing pre-allocated left to top up 0.1 vCPU of warm"
        assert irc.release(big.allocation_id)
        assert _used(irc, EU) == pytest.approx({"vcpu": 6.0, "memory_gib": 24.0}), "both parts came back"
        assert _used(irc, f"{EU}/warm") == pytest.approx({"vcpu": 0.5, "memory_gib": 1.0})
        too_big = ask(irc, "too big", 5.5, 4)  # 1.6 + 3.5 vCPU together < 5.5
        assert too_big.path == "on_demand" and too_big.preallocated_part is None
        assert _used(irc, EU) == pytest.approx({"vcpu": 6.0, "memory_gib": 24.0}), "a failed top-up holds nothing"
        assert _used(irc, f"{EU}/warm") == pytest.approx({"vcpu": 0.5, "memory_gib": 1.0})


def test_replicas_topping_up_warm_starts_never_grant_more_than_either_tier_holds(tmp_path: Path) -> None:
    publish(tmp_path / "lake", warm=1)
    replicas = [coordinator(tmp_path / "lake", ledger=SQLiteLedger(tmp_path / "ledger.sqlite")) for _ in range(4)]
    try:
        assert ask(replicas[0], "fill", 6, 24).path == "preallocated"
        warm = [d for d in bursts(replicas, 4, 2.5, 2.5) if d.path == "warm"]  # type: ignore[attr-defined]
        from_pre = sum(d.preallocated_part["vcpu"] for d in warm if d.preallocated_part)  # type: ignore[attr-defined]
        pre, held_warm = _used(replicas[0], EU), _used(replicas[0], f"{EU}/warm")
        assert pre["vcpu"] <= 7.6 + 1e-9 and held_warm["vcpu"] <= 4.0 + 1e-9, "neither tier over its limit"
        assert pre["vcpu"] == pytest.approx(6.0 + from_pre) and held_warm["vcpu"] == pytest.approx(2.5 * len(warm) - from_pre)
        assert len(warm) == 2, "5.6 vCPU in both tiers: two 2.5-vCPU sessions, then nothing"
    finally:
        for irc in replicas:
            irc.close()
