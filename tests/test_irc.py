"""Behaviour of the Inter-Region Coordinator over a hand-built plan directory."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline import schemas
from pipeline.irc import Coordinator, PeeringRequest, PeeringResponse
from pipeline.irc.ledger import InMemoryLedger
from pipeline.irc.ondemand import PoolAllocator
from pipeline.irc.plan_source import PlanCorrupt, PlanMissing, load_latest_plan

PLAN_ID = "plan-20250101T10"
T0 = datetime(2025, 1, 1, 10, tzinfo=timezone.utc)
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
    plan_dir = lake / "plans" / f"plan_id={plan_id}"
    plan_dir.mkdir(parents=True)
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
    pq.write_table(pa.Table.from_pylist(rows, schema=schemas.PLAN), plan_dir / "plan.parquet")
    pool_rows = [
        {"region": r, "resource_type": rt, "available_quantity": q, "total_quantity": q * 2}
        for r, quantities in POOLS.items()
        for rt, q in quantities.items()
    ]
    pq.write_table(
        pa.Table.from_pylist(pool_rows, schema=schemas.RESOURCE_POOLS), plan_dir / "resource_pools.parquet"
    )
    manifest = {
        "plan_id": plan_id,
        "status": "published",
        "valid_from": WINDOWS[0][0].isoformat().replace("+00:00", "Z"),
        "valid_to": WINDOWS[-1][1].isoformat().replace("+00:00", "Z"),
    }
    (plan_dir / "manifest.json").write_text(json.dumps(manifest))
    if latest:
        (lake / "plans" / "LATEST").write_text(plan_id + "\n")
    return plan_dir


def request(
    *,
    at: datetime = T0 + timedelta(minutes=5),
    src: str = US,
    dst: str = EU,
    request_id: str = "r1",
    **requirements: float,
) -> PeeringRequest:
    return PeeringRequest(
        request_id=request_id,
        requested_at=at,
        source_region=src,
        destination_region=dst,
        resource_requirements=requirements or {"vcpu": 2.0, "memory_gib": 8.0},
        duration_s=600.0,
    )


@pytest.fixture
def lake(tmp_path: Path) -> Path:
    write_plan(tmp_path)
    return tmp_path


@pytest.fixture
def irc(lake: Path) -> Coordinator:
    return Coordinator(lake)


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
    assert_preallocated(irc.handle_peering_request(request(vcpu=8.0)))
    assert_preallocated(irc.handle_peering_request(request(vcpu=8.0, at=T0 + timedelta(minutes=61))))


def test_release_makes_capacity_reusable_on_both_paths(irc: Coordinator) -> None:
    pre = irc.handle_peering_request(request(vcpu=8.0))
    od = irc.handle_peering_request(request(vcpu=8.0))
    assert_preallocated(pre)
    assert_on_demand(od)
    assert_failure(irc.handle_peering_request(request(vcpu=8.0)), "Insufficient resources")

    assert irc.release(od.allocation_id) is True
    assert_on_demand(irc.handle_peering_request(request(vcpu=8.0)))
    assert irc.release(pre.allocation_id) is True
    assert_preallocated(irc.handle_peering_request(request(vcpu=8.0)))


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
    response = Coordinator(tmp_path).handle_peering_request(request(at=T0 + timedelta(hours=3)))
    assert_on_demand(response)
    assert "no window" in response.message


def test_missing_latest_goes_on_demand(tmp_path: Path) -> None:
    write_plan(tmp_path, latest=False)
    irc = Coordinator(tmp_path, on_demand=PoolAllocator(POOLS))
    assert irc.plan is None and "LATEST" in (irc.plan_error or "")
    response = irc.handle_peering_request(request(dst="eu-north-9"))  # pattern-only region check
    assert response.status == "failure"  # not in the given pool
    response = irc.handle_peering_request(request())
    assert_on_demand(response)
    assert "no plan" in response.message
    assert irc.metrics()["served_without_plan"] == 2


def test_missing_latest_without_any_pool_is_unverified_on_demand(tmp_path: Path) -> None:
    irc = Coordinator(tmp_path)
    response = irc.handle_peering_request(request(vcpu=10_000.0))
    assert_on_demand(response)
    assert "not verified" in response.message
    assert irc.release(response.allocation_id) is True
    assert irc.release(response.allocation_id) is False


def test_corrupt_plan_parquet_goes_on_demand_from_pools(tmp_path: Path) -> None:
    plan_dir = write_plan(tmp_path)
    (plan_dir / "plan.parquet").write_bytes(b"PAR1 truncated garbage")
    irc = Coordinator(tmp_path)
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
    irc = Coordinator(tmp_path)
    assert irc.plan is None and irc.plan_error
    response = irc.handle_peering_request(request())
    assert response.path == "on_demand", response.message


def test_ledger_failure_degrades_to_on_demand(lake: Path) -> None:
    class BrokenLedger(InMemoryLedger):
        def try_reserve(self, *args: object, **kwargs: object) -> bool:
            raise ConnectionError("database gone")

    response = Coordinator(lake, ledger=BrokenLedger()).handle_peering_request(request())
    assert_on_demand(response)
    assert "ledger unavailable" in response.message


# -- concurrency ---------------------------------------------------------------------------------


def test_concurrent_requests_never_overgrant_preallocation(lake: Path) -> None:
    irc = Coordinator(lake)
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
    assert irc._ledger.usage(plan.windows[0].key, EU)["vcpu"] == pytest.approx(8.0)  # noqa: SLF001


# -- import hygiene ------------------------------------------------------------------------------


def test_import_pulls_no_batch_stack() -> None:
    heavy = ["pandas", "airflow", "prophet", "ortools", "great_expectations", "duckdb", "statsforecast", "sklearn"]
    code = (
        "import sys, json, pipeline.irc\n"
        f"print(json.dumps(sorted(m for m in {heavy!r} if m in sys.modules)))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=Path(__file__).parents[1]
    )
    assert json.loads(out.stdout) == []
