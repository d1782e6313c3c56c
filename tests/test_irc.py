"""Behaviour of the Inter-Region Coordinator over a hand-built plan directory."""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.common import schemas
from pipeline.irc import Coordinator, PeeringRequest, PeeringResponse
from pipeline.irc.ledger import InMemoryLedger, open_ledger
from pipeline.irc.ondemand import PoolAllocator
from pipeline.irc.plan_source import PlanCorrupt, PlanMissing, load_latest_plan
from tests import plan_store

PLAN_ID = "plan-20250101T10"
T0 = datetime(2025, 1, 1, 10, tzinfo=UTC)
WINDOWS = [(T0, T0 + timedelta(hours=1)), (T0 + timedelta(hours=1), T0 + timedelta(hours=2))]
US, EU, AP = "us-east-1", "eu-west-1", "ap-southeast-2"

# Pre-allocation per window: eu-west-1 gets 8 vcpu (split over two plan lines), 32 GiB, 2 Gbps.
PREALLOCATED = {
    EU: [("vcpu", 4.0), ("vcpu", 4.0), ("memory_gib", 32.0), ("bandwidth_gbps", 2.0)],
    US: [("vcpu", 16.0), ("memory_gib", 64.0), ("bandwidth_gbps", 4.0)],
}
# On-demand capacity beyond it.
POOLS = {
    EU: {"vcpu": 8.0, "memory_gib": 32.0, "storage_gib": 500.0, "bandwidth_gbps": 2.0},
    US: {"vcpu": 32.0, "memory_gib": 128.0, "storage_gib": 1000.0, "bandwidth_gbps": 8.0},
    AP: {"vcpu": 4.0, "memory_gib": 16.0, "storage_gib": 100.0, "bandwidth_gbps": 1.0},
}


def write_plan(lake: Path, plan_id: str = PLAN_ID, *, latest: bool = True) -> Path:
    """Publish a small plan the way the plan stage does (rows, pools, manifest, then LATEST)."""
    rows = []
    for start, end in WINDOWS:
        for region, lines in PREALLOCATED.items():
            for n, (resource_type, quantity) in enumerate(lines):
                rows.append(
                    {
                        "plan_id": plan_id,
                        "valid_from": start,
                        "valid_to": end,
                        "region": region,
                        "resource_type": resource_type,
                        "quantity": quantity,
                        "instance_type": "m5.xlarge",
                        "purchase_option": "on_demand",
                        "count": 1,
                        "hourly_cost": 0.05,
                        "demand_quantile": quantity,
                        "line_id": f"{region}/{start:%H}/m5.xlarge/{n}",
                        "reason": "test",
                    }
                )
    pool_rows = [
        {"region": r, "resource_type": rt, "available_quantity": q, "total_quantity": q * 2}
        for r, quantities in POOLS.items()
        for rt, q in quantities.items()
    ]
    manifest = {
        "plan_id": plan_id,
        "valid_from": WINDOWS[0][0].isoformat().replace("+00:00", "Z"),
        "valid_to": WINDOWS[-1][1].isoformat().replace("+00:00", "Z"),
    }
    attempt = plan_store.write_plan(lake, plan_id, pa.Table.from_pylist(rows, schema=schemas.PLAN), manifest,
                                    pools=pa.Table.from_pylist(pool_rows, schema=schemas.RESOURCE_POOLS), latest=latest)
    return plan_store.attempt_path(lake, plan_id, attempt=attempt)


DEFAULT_CAPACITY = {
    "eu-west-1": {"vcpu": 8.0, "memory_gib": 32.0, "bandwidth_gbps": 2.0},
    "us-east-1": {"vcpu": 16.0, "memory_gib": 64.0, "bandwidth_gbps": 4.0},
}
DEFAULT_POOLS = {
    "eu-west-1": {"vcpu": 8.0, "memory_gib": 32.0, "storage_gib": 500.0, "bandwidth_gbps": 2.0},
    "us-east-1": {"vcpu": 32.0, "memory_gib": 128.0, "storage_gib": 1000.0, "bandwidth_gbps": 8.0},
    "ap-southeast-2": {"vcpu": 4.0, "memory_gib": 16.0, "storage_gib": 100.0, "bandwidth_gbps": 1.0},
}


def publish_plan(
    lake: Path,
    plan_id: str,
    start: datetime,
    hours: int = 2,
    capacity: dict[str, dict[str, float]] | None = None,
    pools: dict[str, dict[str, float]] | None = None,
    *,
    lines_per_resource: int = 1,
    hourly_cost: float = 0.5,
    latest: bool = True,
    manifest: bool = True,
) -> Path:
    """Write plan.parquet, resource_pools.parquet, manifest.json (published), then LATEST."""
    capacity = capacity or DEFAULT_CAPACITY
    pools = pools or DEFAULT_POOLS
    rows = []
    for h in range(hours):
        window_start, window_end = start + timedelta(hours=h), start + timedelta(hours=h + 1)
        for region, quantities in capacity.items():
            for resource_type, quantity in quantities.items():
                for n in range(lines_per_resource):
                    rows.append({
                        "plan_id": plan_id, "valid_from": window_start, "valid_to": window_end, "region": region,
                        "resource_type": resource_type, "quantity": quantity / lines_per_resource,
                        "instance_type": "m5.xlarge", "purchase_option": "on_demand", "count": 1,
                        "hourly_cost": hourly_cost / lines_per_resource, "demand_quantile": quantity,
                        "line_id": f"{region}/{h}/{resource_type}/{n}", "reason": "test",
                    })
    pool_rows = [
        {"region": r, "resource_type": rt, "available_quantity": q, "total_quantity": q * 2}
        for r, quantities in pools.items()
        for rt, q in quantities.items()
    ]
    attempt = plan_store.write_plan(
        lake, plan_id, pa.Table.from_pylist(rows, schema=schemas.PLAN),
        {"plan_id": plan_id, "created_at": start.isoformat(), "valid_from": start.isoformat(),
         "valid_to": (start + timedelta(hours=hours)).isoformat()},
        pools=pa.Table.from_pylist(pool_rows, schema=schemas.RESOURCE_POOLS), latest=latest)
    plan_dir = plan_store.attempt_path(lake, plan_id, attempt=attempt)
    if not manifest:
        (plan_dir / "manifest.json").unlink()
    return plan_dir


def request(
    *,
    at: datetime = T0 + timedelta(minutes=5),
    src: str = US,
    dst: str = EU,
    request_id: str = "r1",
    duration_s: float = 600.0,
    priority: str = "normal",
    **requirements: float,
) -> PeeringRequest:
    return PeeringRequest(
        request_id=request_id,
        requested_at=at,
        source_region=src,
        destination_region=dst,
        resource_requirements=requirements or {"vcpu": 2.0, "memory_gib": 8.0},
        duration_s=duration_s,
        priority=priority,
    )


def coordinator(lake: Path, **kwargs: object) -> Coordinator:
    """A coordinator without watcher thread or outcome log (tests that need them ask)."""
    kwargs.setdefault("reload_interval_s", None)
    kwargs.setdefault("outcomes", False)
    return Coordinator(lake, **kwargs)  # type: ignore[arg-type]


@pytest.fixture
def lake(tmp_path: Path) -> Path:
    write_plan(tmp_path)
    return tmp_path


@pytest.fixture
def irc(lake: Path) -> Coordinator:
    return coordinator(lake)


def assert_preallocated(response: PeeringResponse) -> None:
    assert (response.status, response.path, response.latency_class) == ("success", "preallocated", "low")
    assert response.allocation_id and response.region == EU and response.plan_id == PLAN_ID


def assert_on_demand(response: PeeringResponse) -> None:
    assert (response.status, response.path, response.latency_class) == ("success", "on_demand", "medium")
    assert response.allocation_id


def assert_failure(response: PeeringResponse, *fragments: str) -> None:
    assert (response.status, response.path, response.latency_class, response.allocation_id) == (
        "failure", "none", None, None,
    )
    for fragment in fragments:
        assert fragment in response.message, response.message


# -- plan loading --------------------------------------------------------------------------------


def test_plan_loads_windows_summed_per_region(lake: Path) -> None:
    plan = load_latest_plan(lake)
    assert plan.plan_id == PLAN_ID
    assert len(plan.windows) == 2
    assert plan.windows[0].allocation[EU]["vcpu"] == 8.0  # two plan lines summed
    assert plan.pools[AP]["vcpu"] == 4.0
    assert plan.regions == {US, EU, AP}
    assert plan.window_at(T0 + timedelta(minutes=90)) is plan.windows[1]
    assert plan.window_at(T0 + timedelta(hours=2)) is None
    with pytest.raises(TypeError):
        plan.windows[0].allocation[EU]["vcpu"] = 99.0  # type: ignore[index]


def test_plan_errors_are_typed(tmp_path: Path) -> None:
    with pytest.raises(PlanMissing):
        load_latest_plan(tmp_path)
    plan_dir = write_plan(tmp_path)
    (plan_dir / "plan.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(PlanCorrupt):
        load_latest_plan(tmp_path)


# -- decision paths ------------------------------------------------------------------------------


def test_inside_preallocation_is_low_latency(irc: Coordinator) -> None:
    response = irc.handle_peering_request(request())
    assert_preallocated(response)


def test_beyond_preallocation_goes_on_demand_then_fails(irc: Coordinator) -> None:
    # 8 vcpu pre-allocated in eu-west-1 for the window, 8 more in the on-demand pool.
    assert_preallocated(irc.handle_peering_request(request(vcpu=6.0)))
    second = irc.handle_peering_request(request(vcpu=6.0))
    assert_on_demand(second)
    assert "exhausted" in second.message
    third = irc.handle_peering_request(request(vcpu=6.0))
    assert_failure(third, "Insufficient resources", "vcpu")
    assert "memory_gib" not in third.message.split(";")[0]  # only the short resource is named
    assert irc.metrics()["failed_insufficient"] == 1


def test_request_larger_than_everything_fails(irc: Coordinator) -> None:
    response = irc.handle_peering_request(request(vcpu=1.0, bandwidth_gbps=50.0))
    assert_failure(response, "Insufficient resources", "bandwidth_gbps")
    assert response.region == EU


def test_unplanned_resource_goes_on_demand(irc: Coordinator) -> None:
    response = irc.handle_peering_request(request(vcpu=1.0, storage_gib=10.0))
    assert_on_demand(response)
    assert "storage_gib" in response.message


def test_windows_have_separate_capacity(irc: Coordinator) -> None:
    assert_preallocated(irc.handle_peering_request(request(vcpu=8.0, priority="high")))
    assert_preallocated(irc.handle_peering_request(request(vcpu=8.0, priority="high", at=T0 + timedelta(minutes=61))))


def test_release_makes_capacity_reusable_on_both_paths(irc: Coordinator) -> None:
    pre = irc.handle_peering_request(request(vcpu=8.0, priority="critical"))
    od = irc.handle_peering_request(request(vcpu=8.0, priority="critical"))
    assert_preallocated(pre)
    assert_on_demand(od)
    assert_failure(irc.handle_peering_request(request(vcpu=8.0, priority="critical")), "Insufficient resources")

    assert irc.release(od.allocation_id) is True
    assert_on_demand(irc.handle_peering_request(request(vcpu=8.0, priority="critical")))
    assert irc.release(pre.allocation_id) is True
    assert_preallocated(irc.handle_peering_request(request(vcpu=8.0, priority="critical")))


def test_double_and_unknown_release_return_false(irc: Coordinator) -> None:
    response = irc.handle_peering_request(request())
    assert irc.release(response.allocation_id) is True
    assert irc.release(response.allocation_id) is False
    assert irc.release("pre-doesnotexist") is False
    assert irc.release("od-doesnotexist") is False
    assert irc.release("garbage") is False
    assert irc.release(None) is False  # type: ignore[arg-type]


# -- validation ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("req", "fragment"),
    [
        (request(dst="eu-north-9"), "unknown region"),
        (request(dst="Not A Region"), "not a valid region"),
        (request(dst=US), "both"),
        (request(vcpu=-1.0), "negative quantity for vcpu"),
        (request(vcpu=None), "missing quantity for vcpu"),  # type: ignore[arg-type]
        (request(vcpu="lots"), "non-numeric quantity for vcpu"),  # type: ignore[arg-type]
        (request(gpus=1.0), "unknown resource type 'gpus'"),
        (request(vcpu=0.0), "requests no resources"),
        (request(at=datetime(2025, 1, 1, 10, 5)), "naive"),
    ],
)
def test_validation_failures(irc: Coordinator, req: PeeringRequest, fragment: str) -> None:
    response = irc.handle_peering_request(req)
    assert_failure(response, "Invalid request", fragment)
    assert response.region is None


def test_garbage_request_is_a_failure_not_an_exception(irc: Coordinator) -> None:
    assert_failure(irc.handle_peering_request("not a request"), "Invalid request")  # type: ignore[arg-type]
    empty = PeeringRequest("r", T0, US, EU, {}, 60.0)
    assert_failure(irc.handle_peering_request(empty), "missing or empty")
    bad_priority = PeeringRequest("r", T0, US, EU, {"vcpu": 1.0}, 60.0, priority="urgent")
    assert_failure(irc.handle_peering_request(bad_priority), "priority")


def test_from_row_parses_flat_source_rows(irc: Coordinator) -> None:
    row = {
        "request_id": "csv-1",
        "requested_at": "2025-01-01T10:30:00Z",
        "source_region": US,
        "destination_region": EU,
        "vcpu": "2",
        "memory_gib": 4.0,
        "storage_gib": "",
        "bandwidth_gbps": 0.5,
        "duration_s": "300",
        "priority": None,
    }
    req = PeeringRequest.from_row(row)
    assert req.requested_at == T0 + timedelta(minutes=30)
    assert req.resource_requirements == {"vcpu": 2.0, "memory_gib": 4.0, "storage_gib": None, "bandwidth_gbps": 0.5}
    assert req.priority == "normal" and req.duration_s == 300.0
    assert_failure(irc.handle_peering_request(req), "missing quantity for storage_gib")

    row["storage_gib"] = 0
    assert_preallocated(irc.handle_peering_request(PeeringRequest.from_row(row)))
    row["requested_at"] = "yesterday"
    assert_failure(irc.handle_peering_request(PeeringRequest.from_row(row)), "requested_at")


# -- degraded plans ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("at", "fragment"),
    [(T0 + timedelta(hours=3), "expired"), (T0 - timedelta(hours=1), "not valid before")],
)
def test_outside_plan_validity_goes_on_demand(irc: Coordinator, at: datetime, fragment: str) -> None:
    response = irc.handle_peering_request(request(at=at))
    assert_on_demand(response)
    assert fragment in response.message


def test_gap_between_windows_goes_on_demand(tmp_path: Path) -> None:
    plan_dir = write_plan(tmp_path)
    manifest = json.loads((plan_dir / "manifest.json").read_text())
    manifest["valid_to"] = (T0 + timedelta(hours=5)).isoformat()
    (plan_dir / "manifest.json").write_text(json.dumps(manifest))
    response = coordinator(tmp_path).handle_peering_request(request(at=T0 + timedelta(hours=3)))
    assert_on_demand(response)
    assert "no window" in response.message and response.miss_reason == "no_window"


def test_missing_latest_goes_on_demand(tmp_path: Path) -> None:
    write_plan(tmp_path, latest=False)
    irc = coordinator(tmp_path, on_demand=PoolAllocator(POOLS))
    assert irc.plan is None and "LATEST" in (irc.plan_error or "")
    response = irc.handle_peering_request(request(dst="eu-north-9"))  # pattern-only region check
    assert response.status == "failure"  # not in the given pool
    response = irc.handle_peering_request(request())
    assert_on_demand(response)
    assert "no plan" in response.message
    assert irc.metrics()["served_without_plan"] == 2


def test_missing_latest_without_any_pool_is_unverified_on_demand(tmp_path: Path) -> None:
    irc = coordinator(tmp_path)
    response = irc.handle_peering_request(request(vcpu=10_000.0))
    assert_on_demand(response)
    assert "not verified" in response.message
    assert irc.release(response.allocation_id) is True
    assert irc.release(response.allocation_id) is False


def test_corrupt_plan_parquet_goes_on_demand_from_pools(tmp_path: Path) -> None:
    plan_dir = write_plan(tmp_path)
    (plan_dir / "plan.parquet").write_bytes(b"PAR1 truncated garbage")
    irc = coordinator(tmp_path)
    assert irc.plan is None and "plan.parquet" in (irc.plan_error or "")
    response = irc.handle_peering_request(request())
    assert_on_demand(response)
    assert "no plan loaded" in response.message
    assert_failure(irc.handle_peering_request(request(dst="eu-north-9")), "unknown region")  # pools know regions
    assert_failure(irc.handle_peering_request(request(vcpu=9.0)), "Insufficient resources", "vcpu")


@pytest.mark.parametrize(
    "breakage",
    ["manifest_garbage", "manifest_draft", "latest_garbage", "pools_missing", "plan_missing_column", "bad_quantity"],
)
def test_broken_publications_never_raise(tmp_path: Path, breakage: str) -> None:
    plan_dir = write_plan(tmp_path)
    if breakage == "manifest_garbage":
        (plan_dir / "manifest.json").write_text("{not json")
    elif breakage == "manifest_draft":
        (plan_dir / "manifest.json").write_text(json.dumps({"plan_id": PLAN_ID, "status": "draft"}))
    elif breakage == "latest_garbage":
        (tmp_path / "plans" / "LATEST").write_text("../../etc/passwd")
    elif breakage == "pools_missing":
        (plan_dir / "resource_pools.parquet").unlink()
    elif breakage == "plan_missing_column":
        pq.write_table(pa.table({"plan_id": [PLAN_ID]}), plan_dir / "plan.parquet")
    elif breakage == "bad_quantity":
        table = pq.read_table(plan_dir / "plan.parquet")
        quantities = pa.array([-1.0] * table.num_rows)
        pq.write_table(table.set_column(table.schema.get_field_index("quantity"), "quantity", quantities),
                       plan_dir / "plan.parquet")
    irc = coordinator(tmp_path)
    if breakage == "latest_garbage":  # the plan itself verifies: the IRC falls back to it, counted and explained
        assert irc.plan is not None and irc.plan.plan_id == PLAN_ID and "LATEST unusable" in (irc.plan_error or "")
        assert "peerscale_irc_plan_fallbacks_total 1" in irc.metrics_text()
        return
    assert irc.plan is None and irc.plan_error
    response = irc.handle_peering_request(request())
    assert response.path == "on_demand", response.message


def test_ledger_failure_degrades_to_on_demand(lake: Path) -> None:
    class BrokenLedger(InMemoryLedger):
        def reserve(self, *args: object, **kwargs: object) -> tuple[str, ...]:
            raise ConnectionError("database gone")

    irc = coordinator(lake, ledger=BrokenLedger())
    response = irc.handle_peering_request(request())
    assert_on_demand(response)
    assert "ledger unavailable" in response.message and response.miss_reason == "ledger_error"
    assert irc.metrics()["ledger_errors"] == 1


# -- concurrency ---------------------------------------------------------------------------------


def test_concurrent_requests_never_overgrant_preallocation(lake: Path) -> None:
    irc = coordinator(lake, priority_ceilings={"normal": 1.0})
    results: list[PeeringResponse] = []
    results_lock = threading.Lock()
    start = threading.Barrier(16)

    def hammer(worker: int) -> None:
        start.wait()
        for n in range(25):
            r = irc.handle_peering_request(request(request_id=f"{worker}-{n}", vcpu=0.25, memory_gib=0.5))
            with results_lock:
                results.append(r)

    threads = [threading.Thread(target=hammer, args=(w,)) for w in range(16)]
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible to provoke races
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        sys.setswitchinterval(interval)

    pre = [r for r in results if r.path == "preallocated"]
    od = [r for r in results if r.path == "on_demand"]
    assert len(results) == 400
    granted_vcpu = 0.25 * len(pre)
    assert granted_vcpu <= 8.0  # the plan's vcpu for eu-west-1 in the window
    assert len(pre) == 32  # and the pre-allocation is used to the full
    assert len(od) == 32  # the pool then gives its 8 vcpu
    assert all(r.status == "failure" for r in results if r.path == "none")
    assert len({r.allocation_id for r in pre + od}) == 64
    plan = irc.plan
    assert plan is not None
    assert irc.ledger.usage(plan.windows[0].start_s, EU)["vcpu"] == pytest.approx(8.0)


# -- sessions span windows, expire, and respect priority ------------------------------------------


def test_a_session_reserves_every_window_it_overlaps(irc: Coordinator) -> None:
    plan = irc.plan
    assert plan is not None
    w0, w1 = plan.windows[0].start_s, plan.windows[1].start_s
    crossing = irc.handle_peering_request(request(at=T0 + timedelta(minutes=50), duration_s=1800, vcpu=3.0))
    assert_preallocated(crossing)
    assert irc.ledger.usage(w0, EU)["vcpu"] == pytest.approx(3.0)
    assert irc.ledger.usage(w1, EU)["vcpu"] == pytest.approx(3.0)

    # Window 1 nearly full: a session starting in window 0 that runs into it no longer fits.
    assert_preallocated(irc.handle_peering_request(request(at=T0 + timedelta(minutes=70), vcpu=4.5)))
    blocked = irc.handle_peering_request(request(at=T0 + timedelta(minutes=30), duration_s=3600, vcpu=1.0))
    assert_on_demand(blocked)
    assert blocked.miss_reason == "exhausted" and blocked.short_resources == ("vcpu",)
    assert irc.ledger.usage(w0, EU)["vcpu"] == pytest.approx(3.0)  # all or nothing: window 0 untouched

    assert irc.release(crossing.allocation_id)
    assert irc.ledger.usage(w0, EU).get("vcpu") == 0.0 and irc.ledger.usage(w1, EU)["vcpu"] == pytest.approx(4.5)


def test_a_session_outliving_the_plan_is_charged_to_its_windows_only(irc: Coordinator) -> None:
    long = irc.handle_peering_request(request(at=T0 + timedelta(minutes=90), duration_s=6 * 3600, vcpu=2.0))
    assert_preallocated(long)
    plan = irc.plan
    assert plan is not None
    assert irc.ledger.usage(plan.windows[1].start_s, EU)["vcpu"] == pytest.approx(2.0)
    assert irc.ledger.usage(plan.windows[0].start_s, EU).get("vcpu", 0.0) == 0.0


def test_expired_allocations_come_back_without_release(irc: Coordinator) -> None:
    first = irc.handle_peering_request(request(at=T0 + timedelta(minutes=1), duration_s=600, vcpu=7.0))
    assert_preallocated(first)
    # Still held 5 minutes later...
    assert irc.handle_peering_request(request(at=T0 + timedelta(minutes=6), vcpu=7.0)).path == "on_demand"
    # ...and back once the session has ended (requested_at + duration_s), without any release.
    assert_preallocated(irc.handle_peering_request(request(at=T0 + timedelta(minutes=12), vcpu=7.0)))
    assert irc.release(first.allocation_id) is False  # already returned by expiry, exactly once
    assert irc.metrics()["expired"] >= 1


def test_expired_on_demand_grants_return_to_the_pool(irc: Coordinator) -> None:
    assert_preallocated(irc.handle_peering_request(request(vcpu=7.5, priority="high", duration_s=3600)))
    od = irc.handle_peering_request(request(vcpu=8.0, duration_s=300))
    assert_on_demand(od)
    assert_failure(irc.handle_peering_request(request(at=T0 + timedelta(minutes=6), vcpu=7.0)), "Insufficient")
    assert_on_demand(irc.handle_peering_request(request(at=T0 + timedelta(minutes=11), vcpu=7.0)))


def test_priority_ceilings_keep_the_last_of_the_window_for_urgent_requests(irc: Coordinator) -> None:
    # eu-west-1 holds 8 vcpu: low may fill 85 % (6.8), normal 95 % (7.6), high/critical 100 %.
    low = irc.handle_peering_request(request(vcpu=7.0, priority="low"))
    assert_on_demand(low)
    assert low.miss_reason == "exhausted" and "low priority may use 85%" in low.message
    assert irc.release(low.allocation_id)
    assert_preallocated(irc.handle_peering_request(request(vcpu=6.0, priority="low")))
    assert irc.handle_peering_request(request(vcpu=1.0, priority="low")).path == "on_demand"  # 7 > 6.8
    assert_preallocated(irc.handle_peering_request(request(vcpu=1.5, priority="normal")))  # 7.5 <= 7.6
    assert irc.handle_peering_request(request(vcpu=0.5, priority="normal")).path == "on_demand"  # 8 > 7.6
    assert_preallocated(irc.handle_peering_request(request(vcpu=0.5, priority="critical")))  # 8 <= 8


def test_priority_ceilings_are_configurable_and_checked(lake: Path) -> None:
    irc = coordinator(lake, priority_ceilings={"normal": 1.0})
    assert_preallocated(irc.handle_peering_request(request(vcpu=7.0)))
    with pytest.raises(ValueError, match="ceiling"):
        coordinator(lake, priority_ceilings={"low": 1.5})


def test_on_demand_carries_a_modeled_provisioning_time(irc: Coordinator) -> None:
    pre = irc.handle_peering_request(request(vcpu=1.0))
    assert pre.provisioning_s == 0.0
    small = irc.handle_peering_request(request(vcpu=1.0, storage_gib=10.0))  # storage is not pre-allocated
    assert small.path == "on_demand" and small.miss_reason == "not_planned" and small.short_resources == ("storage_gib",)
    assert small.provisioning_s == 60.0  # an instance launch
    big = irc.handle_peering_request(request(vcpu=7.0, priority="low"))  # draws > 80 % of the 8-vcpu pool
    assert big.path == "on_demand" and big.provisioning_s == 240.0  # new nodes


# -- metrics --------------------------------------------------------------------------------------


def test_metrics_text_is_prometheus_exposition(irc: Coordinator) -> None:
    irc.handle_peering_request(request())
    irc.handle_peering_request(request(vcpu=6.0))
    irc.handle_peering_request(request(dst="eu-north-9"))
    # Utilization is reported for the window of the latest request time: 2 of eu-west-1's 8 vcpu.
    assert 'peerscale_irc_preallocation_utilization{region="eu-west-1",resource_type="vcpu"} 0.25' in irc.metrics_text()
    irc.handle_peering_request(request(at=T0 + timedelta(hours=5)))
    text = irc.metrics_text()
    sample = re.compile(r'^[a-z_]+(\{[a-z_]+="[^"]*"(,[a-z_]+="[^"]*")*\})? (-?[0-9.e+-]+|\+Inf|NaN)$')
    for line in text.splitlines():
        assert line.startswith("# HELP ") or line.startswith("# TYPE ") or sample.match(line), line
    assert 'peerscale_irc_requests_total{path="preallocated",status="success"} 1' in text
    assert 'peerscale_irc_requests_total{path="on_demand",status="success"} 2' in text
    assert 'peerscale_irc_failures_total{kind="invalid"} 1' in text
    assert 'peerscale_irc_preallocation_misses_total{reason="plan_expired"} 1' in text
    assert "peerscale_irc_requests_after_plan_validity_total 1" in text
    assert 'peerscale_irc_decision_duration_seconds_count{path="on_demand"} 2' in text
    assert 'peerscale_irc_decision_duration_seconds_bucket{path="none",le="+Inf"} 1' in text
    assert 'peerscale_irc_plan_info{plan_id="plan-20250101T10"} 1' in text
    assert "peerscale_irc_plan_age_seconds " in text
    assert "peerscale_irc_preallocation_utilization" not in text  # past the plan: no window


def test_a_clock_keeps_future_dated_requests_from_expiring_live_sessions(lake: Path) -> None:
    now = [T0.timestamp() + 60]
    irc = coordinator(lake, clock=lambda: now[0], max_clock_skew_s=3600)
    held = irc.handle_peering_request(request(at=T0 + timedelta(minutes=1), duration_s=600, vcpu=7.0))
    assert_preallocated(held)
    # A request dated 30 minutes ahead of the clock (within the allowed skew) does not expire the
    # 10-minute session: expiry runs at min(requested_at, clock), not at the claimed time.
    assert irc.handle_peering_request(request(at=T0 + timedelta(minutes=31), vcpu=7.0)).path == "on_demand"
    assert irc.sweep(T0.timestamp() + 3600) == 0  # nor does an explicit sweep ahead of the clock
    now[0] = T0.timestamp() + 12 * 60  # the clock passes the session's end: it comes back
    assert_preallocated(irc.handle_peering_request(request(at=T0 + timedelta(minutes=12), vcpu=7.0)))


def test_a_request_dated_beyond_the_skew_bound_is_invalid_and_frees_nothing(lake: Path) -> None:
    now = [T0.timestamp() + 60]
    irc = coordinator(lake, clock=lambda: now[0], max_clock_skew_s=60)
    assert_preallocated(irc.handle_peering_request(request(at=T0 + timedelta(minutes=1), duration_s=600, vcpu=7.0)))
    ahead = irc.handle_peering_request(request(at=T0 + timedelta(minutes=31), request_id="ahead", vcpu=7.0))
    assert_failure(ahead, "Invalid request: requested_at 2025-01-01T10:31:00+00:00 is 1,800 s ahead of this coordinator's clock",
                   "at most 60 s of clock skew")
    assert ahead.request_id == "ahead" and ahead.region is None
    assert irc.ledger.usage(int(T0.timestamp()), EU)["vcpu"] == 7.0
    assert irc.metrics()["failed_invalid"] == 1
    # Within the bound a request dated ahead is served (and held from its own start).
    assert irc.handle_peering_request(request(at=T0 + timedelta(minutes=1, seconds=50), vcpu=0.5)).path == "preallocated"


def test_the_default_clock_is_the_wall_clock_and_replays_pass_their_own(tmp_path: Path) -> None:
    """Default: far-future requests are refused, past ones decided as of their date; REQUEST_TIME
    replays a future-dated stream deterministically, expiring by the stream's own times."""
    from pipeline.irc.coordinator import REQUEST_TIME

    future = datetime(2090, 6, 1, 10, tzinfo=UTC)
    publish_plan(tmp_path / "future", "plan-future", future)
    live = coordinator(tmp_path / "future")
    assert_failure(live.handle_peering_request(request(at=future + timedelta(minutes=5))), "ahead of this coordinator's clock")
    replay = coordinator(tmp_path / "future", clock=REQUEST_TIME)
    first = replay.handle_peering_request(request(at=future + timedelta(minutes=5), duration_s=600, vcpu=7.0))
    assert first.path == "preallocated"
    assert replay.handle_peering_request(request(at=future + timedelta(minutes=10), vcpu=7.0)).path == "on_demand"
    assert replay.handle_peering_request(request(at=future + timedelta(minutes=16), vcpu=7.0)).path == "preallocated"
    # A historical plan under the default clock: requests dated in its windows are served from it.
    publish_plan(tmp_path / "past", "plan-past", T0)
    past = coordinator(tmp_path / "past")
    assert past.handle_peering_request(request(at=T0 + timedelta(minutes=5), vcpu=7.0)).path == "preallocated"
    assert past.handle_peering_request(request(at=T0 + timedelta(minutes=6), vcpu=7.0)).path == "on_demand"
    assert past.handle_peering_request(request(at=T0 + timedelta(minutes=16), vcpu=7.0)).path == "preallocated"


# -- contract and import hygiene ------------------------------------------------------------------


def test_contract_matches_schemas() -> None:
    from pipeline.irc import contract

    assert contract.RESOURCE_TYPES == schemas.RESOURCE_TYPES
    assert contract.PRIORITIES == schemas.PRIORITIES
    assert contract.REGION_PATTERN.pattern == schemas.REGION_PATTERN.pattern
    assert contract.PLAN_ID_PATTERN.pattern == schemas.PLAN_ID_PATTERN.pattern
    from pipeline.ingest import expectations  # GE itself is imported only when a suite is built

    assert contract.MAX_DURATION_S == schemas.MAX_DURATION_S == expectations.MAX_DURATION_S  # the IRC refuses what ingest quarantines
    assert contract.MAX_QUANTITY == schemas.MAX_QUANTITY


def test_import_pulls_no_batch_stack() -> None:
    """`import pipeline.irc` loads the stdlib only: no pandas, Airflow, Prophet, OR-Tools, GE - nor even pyarrow."""
    heavy = ["pandas", "airflow", "prophet", "ortools", "great_expectations", "duckdb", "statsforecast", "sklearn",
             "pyarrow", "numpy", "psycopg", "typer", "rich"]
    code = (
        "import sys, json, pipeline.irc\n"
        f"print(json.dumps(sorted(m for m in {heavy!r} if m in sys.modules)))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=Path(__file__).parents[1]
    )
    assert json.loads(out.stdout) == []


def _decision(response: PeeringResponse) -> dict[str, object]:
    """A response without its allocation id (random per coordinator)."""
    return {k: v for k, v in response.to_dict().items() if k != "allocation_id"}


def _batch_stream() -> list[PeeringRequest]:
    """Enough demand to exhaust eu-west-1's pre-allocation and pool: grants, on-demand grants and failures. At one
    instant: a failed batch may have moved expiry time on (never past the clock), which a replay at distinct times
    would see."""
    return [request(request_id=f"b{i}", vcpu=1.5 + (i % 3), memory_gib=4.0,
                    priority="high" if i % 4 == 0 else "normal") for i in range(14)]


def test_handle_batch_decides_like_one_by_one_in_one_sqlite_transaction(tmp_path: Path) -> None:
    publish_plan(tmp_path, "plan-a", T0)
    stream = _batch_stream()
    with contextlib.closing(open_ledger(f"sqlite://{tmp_path / 'one.db'}")) as one, \
            contextlib.closing(open_ledger(f"sqlite://{tmp_path / 'batch.db'}")) as both:
        alone, batched = coordinator(tmp_path, ledger=one), coordinator(tmp_path, ledger=both)
        expected = [alone.handle_peering_request(r) for r in stream]
        got = batched.handle_batch(stream[:5]) + batched.handle_batch(stream[5:])
        assert [_decision(r) for r in got] == [_decision(r) for r in expected]
        assert {r.path for r in got} == {"preallocated", "on_demand", "none"}
        assert both.usage(int(T0.timestamp()), EU) == one.usage(int(T0.timestamp()), EU)
        assert batched.metrics()["requests"] == len(stream)
        alone.close()
        batched.close()


def test_handle_batch_whose_commit_fails_grants_nothing_and_decides_again_one_by_one(tmp_path: Path) -> None:
    import sqlite3

    publish_plan(tmp_path, "plan-a", T0)
    stream = _batch_stream()
    with contextlib.closing(open_ledger(f"sqlite://{tmp_path / 'one.db'}")) as one, \
            contextlib.closing(open_ledger(f"sqlite://{tmp_path / 'batch.db'}")) as both:
        real = both.batch

        @contextlib.contextmanager
        def failing_commit() -> Iterator[None]:
            with real():
                yield
                raise sqlite3.OperationalError("disk I/O error")  # as if COMMIT failed: the batch rolls back

        both.batch = failing_commit  # type: ignore[method-assign]
        alone, batched = coordinator(tmp_path, ledger=one), coordinator(tmp_path, ledger=both)
        expected = [alone.handle_peering_request(r) for r in stream]
        got = batched.handle_batch(stream)
        assert [_decision(r) for r in got] == [_decision(r) for r in expected]
        assert both.usage(int(T0.timestamp()), EU) == one.usage(int(T0.timestamp()), EU)  # the rolled-back grants are gone
        assert both.live_allocations() == one.live_allocations()
        counts = batched.metrics()
        assert counts["requests"] == len(stream) and counts["ledger_errors"] == 1  # each decision counted once
        alone.close()
        batched.close()


def test_the_fast_preallocated_response_is_the_constructors() -> None:
    """The hot path's `preallocated_response` must stay equal, field for field, to `PeeringResponse(...)`."""
    from pipeline.irc.messages import _RESPONSE_FIELDS, preallocated_response

    fast = preallocated_response("r1", "pre-1", "Pre-allocated in eu-west-1", EU, "plan-a")
    built = PeeringResponse(request_id="r1", status="success", path="preallocated", latency_class="low",
                            allocation_id="pre-1", message="Pre-allocated in eu-west-1", region=EU, plan_id="plan-a",
                            provisioning_s=0.0, serving_region=EU)
    assert fast == built and fast.to_dict() == built.to_dict() and tuple(vars(fast)) == _RESPONSE_FIELDS
    assert hash(fast) == hash(built) and repr(fast) == repr(built)
    with pytest.raises(AttributeError):
        fast.status = "failure"  # type: ignore[misc]  # still frozen
