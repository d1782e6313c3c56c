"""Live plan reloads: new plans are adopted without dropping requests; bad ones never replace a good one."""

from __future__ import annotations

import os
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from pipeline.irc import Coordinator, PeeringRequest, PeeringResponse
from pipeline.irc.plan_source import load_plan
from tests.test_irc import publish_plan

T0 = datetime(2025, 3, 1, 10, tzinfo=UTC)
EU = "eu-west-1"


def req(at: datetime, vcpu: float = 1.0, rid: str = "r", duration_s: float = 60.0, priority: str = "high") -> PeeringRequest:
    return PeeringRequest(rid, at, "us-east-1", EU, {"vcpu": vcpu}, duration_s, priority)


def make(lake: Path, **kwargs: object) -> Coordinator:
    kwargs.setdefault("reload_interval_s", None)
    kwargs.setdefault("outcomes", False)
    return Coordinator(lake, **kwargs)  # type: ignore[arg-type]


def bump_mtime(path: Path) -> None:
    later = path.stat().st_mtime + 5
    os.utime(path, (later, later))


def test_a_new_plan_is_adopted_and_the_previous_serves_earlier_requests(tmp_path: Path) -> None:
    publish_plan(tmp_path, "plan-a", T0, hours=2, capacity={EU: {"vcpu": 8.0}})
    irc = make(tmp_path)
    held = irc.handle_peering_request(req(T0 + timedelta(minutes=70), 5.0, duration_s=3600))
    assert held.path == "preallocated" and held.plan_id == "plan-a"
    assert irc.reload() is False  # nothing new

    publish_plan(tmp_path, "plan-b", T0 + timedelta(hours=1), hours=2, capacity={EU: {"vcpu": 6.0}})
    assert irc.reload() is True and irc.plan is not None and irc.plan.plan_id == "plan-b"
    assert irc.metrics()["plan_reloads"] == 2
    # A late request from before plan-b's validity is served by the previous plan.
    late = irc.handle_peering_request(req(T0 + timedelta(minutes=50), 2.0))
    assert late.path == "preallocated" and late.plan_id == "plan-a"
    # The session from plan-a still holds 5 vcpu of the shared window (usage is keyed by window)
    # and is carried into plan-b's new window (12:00): 6 - 5 leaves 1.
    assert irc.handle_peering_request(req(T0 + timedelta(minutes=125), 1.5)).path == "on_demand"
    later = irc.handle_peering_request(req(T0 + timedelta(minutes=125), 1.0))
    assert later.path == "preallocated" and later.plan_id == "plan-b"


@pytest.mark.parametrize("breakage", ["no_manifest", "truncated_parquet", "draft", "missing_dir", "garbage_pointer"])
def test_a_broken_publication_keeps_the_current_plan(tmp_path: Path, breakage: str) -> None:
    publish_plan(tmp_path, "plan-a", T0, hours=2)
    irc = make(tmp_path)
    if breakage == "missing_dir":
        (tmp_path / "plans" / "LATEST").write_text("plan-zzz\n")
    elif breakage == "garbage_pointer":
        (tmp_path / "plans" / "LATEST").write_text("\x00\x01 not a plan")
    else:
        plan_dir = publish_plan(tmp_path, "plan-b", T0, hours=2, manifest=breakage != "no_manifest")
        if breakage == "truncated_parquet":
            data = (plan_dir / "plan.parquet").read_bytes()
            (plan_dir / "plan.parquet").write_bytes(data[: len(data) // 2])
        elif breakage == "draft":
            (plan_dir / "manifest.json").write_text('{"plan_id": "plan-b", "status": "draft"}')
    assert irc.reload() is False
    assert irc.plan is not None and irc.plan.plan_id == "plan-a"
    assert irc.plan_error  # says why the new one was not adopted
    assert irc.handle_peering_request(req(T0 + timedelta(minutes=5))).plan_id == "plan-a"
    assert irc.metrics()["plan_reload_failures"] == 1
    irc.reload()  # retried every poll while LATEST is unchanged, counted each time
    assert irc.metrics()["plan_reload_failures"] == 2


def test_a_half_written_plan_is_adopted_once_complete(tmp_path: Path) -> None:
    publish_plan(tmp_path, "plan-a", T0, hours=2)
    irc = make(tmp_path)
    plan_dir = publish_plan(tmp_path, "plan-b", T0 + timedelta(hours=1), hours=2)
    manifest = (plan_dir / "manifest.json").read_bytes()
    (plan_dir / "manifest.json").unlink()  # LATEST names an attempt whose manifest has not landed
    assert irc.reload() is False and irc.plan.plan_id == "plan-a"  # type: ignore[union-attr]
    (plan_dir / "manifest.json").write_bytes(manifest)  # manifest lands
    assert irc.reload() is True and irc.plan.plan_id == "plan-b"  # type: ignore[union-attr]
    assert irc.plan_error is None


def test_republishing_the_same_plan_id_is_detected(tmp_path: Path) -> None:
    publish_plan(tmp_path, "plan-a", T0, hours=2, capacity={EU: {"vcpu": 8.0}})
    irc = make(tmp_path)
    publish_plan(tmp_path, "plan-a", T0, hours=2, capacity={EU: {"vcpu": 20.0}})
    bump_mtime(tmp_path / "plans" / "LATEST")
    assert irc.reload() is True
    assert irc.handle_peering_request(req(T0 + timedelta(minutes=5), 15.0)).path == "preallocated"


def test_the_watcher_thread_picks_up_a_new_plan(tmp_path: Path) -> None:
    publish_plan(tmp_path, "plan-a", T0, hours=2)
    irc = make(tmp_path, reload_interval_s=0.02)
    try:
        publish_plan(tmp_path, "plan-b", T0, hours=3)
        deadline = time.monotonic() + 30
        while irc.plan.plan_id != "plan-b" and time.monotonic() < deadline:  # type: ignore[union-attr]
            time.sleep(0.01)
        assert irc.plan.plan_id == "plan-b"  # type: ignore[union-attr]
    finally:
        irc.close()


def test_no_request_is_dropped_or_overgranted_while_plans_change(tmp_path: Path) -> None:
    capacity = {EU: {"vcpu": 10.0}}
    pools = {EU: {"vcpu": 1e6}, "us-east-1": {"vcpu": 1.0}}  # on demand never runs out here
    publish_plan(tmp_path, "plan-a", T0, hours=1, capacity=capacity, pools=pools)
    irc = make(tmp_path)
    responses: list[PeeringResponse] = []
    lock = threading.Lock()
    stop = threading.Event()

    def client(worker: int) -> None:
        n = 0
        while not stop.is_set() or n < 50:
            r = irc.handle_peering_request(req(T0 + timedelta(minutes=5), 0.1, f"{worker}-{n}", duration_s=3000))
            with lock:
                responses.append(r)
            n += 1

    threads = [threading.Thread(target=client, args=(w,)) for w in range(6)]
    for t in threads:
        t.start()
    for i in range(20):  # re-publish plans with the same window while requests flow
        publish_plan(tmp_path, f"plan-{'ab'[i % 2]}{i:02d}", T0, hours=1, capacity=capacity, pools=pools)
        assert irc.reload() is True
    stop.set()
    for t in threads:
        t.join()
    assert all(r.status == "success" for r in responses), {r.message for r in responses if r.status != "success"}
    pre = [r for r in responses if r.path == "preallocated"]
    assert len(pre) == 100  # 10 vcpu in 0.1 steps: used to the full, never beyond
    assert {r.plan_id for r in responses} <= {"plan-a"} | {f"plan-{'ab'[i % 2]}{i:02d}" for i in range(20)}
    assert irc.metrics().get("internal_errors", 0) == 0


def test_requests_after_the_plan_validity_go_on_demand_and_are_counted(tmp_path: Path) -> None:
    publish_plan(tmp_path, "plan-a", T0, hours=1)
    irc = make(tmp_path)
    response = irc.handle_peering_request(req(T0 + timedelta(hours=1)))
    assert response.path == "on_demand" and response.miss_reason == "plan_expired"
    assert irc.metrics()["plan_expired"] == 1


def test_a_large_plan_loads_with_exact_sums(tmp_path: Path) -> None:
    regions = {f"eu-west-{i}": {"vcpu": 8.0 + i, "memory_gib": 32.0, "storage_gib": 1.5, "bandwidth_gbps": 0.25}
               for i in range(1, 26)}
    plan_dir = publish_plan(tmp_path, "plan-big", T0, hours=6, capacity=regions, lines_per_resource=35, hourly_cost=3.5)
    assert pq.read_metadata(plan_dir / "plan.parquet").num_rows == 6 * 25 * 4 * 35  # 21,000 lines
    plan = load_plan(tmp_path, "plan-big")
    assert len(plan.windows) == 6
    for window in plan.windows:
        assert window.allocation["eu-west-7"]["vcpu"] == pytest.approx(15.0)
        assert window.cost_per_hour == pytest.approx(25 * 4 * 3.5)
    assert plan.cost_between(T0.timestamp(), T0.timestamp() + 1800) == pytest.approx(25 * 4 * 3.5 / 2)
