"""Decision log (raw/irc_outcomes) and the τ feedback controller (pipeline.ops.feedback)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow.dataset as ds
import pytest

from pipeline.common.config import Settings
from pipeline.common.intervals import DataInterval
from pipeline.irc import Coordinator, OutcomeLog, PeeringRequest
from pipeline.irc.outcomes import COLUMNS
from pipeline.ops.feedback import (
    ControllerConfig,
    load_tau_overrides,
    read_outcomes,
    run_feedback,
    stage_feedback,
    tau_path,
)
from tests.test_irc import publish_plan

T0 = datetime(2025, 3, 1, 10, tzinfo=UTC)
EU, US = "eu-west-1", "us-east-1"
BASE_VCPU_TAU = Settings().cost.tau("vcpu")


def settings(lake: Path) -> Settings:
    return Settings(lake_root=str(lake))


def record(rid: str, at: datetime, region: str, path: str, miss: str | None = None, short: str | None = None) -> tuple:
    values = {
        "request_id": rid, "requested_at": at.timestamp(), "decided_at": at.timestamp() + 0.001, "source_region": US,
        "destination_region": region, "priority": "normal", "vcpu": 2.0, "memory_gib": 4.0, "storage_gib": 0.0,
        "bandwidth_gbps": 0.1, "duration_s": 600.0, "status": "success" if path != "none" else "failure",
        "path": path, "latency_class": {"preallocated": "low", "on_demand": "medium"}.get(path), "miss_reason": miss,
        "short_resources": short, "allocation_id": None, "plan_id": "plan-x", "decision_us": 12.0,
        "provisioning_s": 0.0, "instance": "test", "serving_region": region if path != "none" else None,
    }
    return tuple(values[c] for c in COLUMNS)


def log_hour(lake: Path, hour: datetime, region: str, hits: int, misses: int, short: str = "vcpu",
             miss: str = "exhausted", prefix: str = "") -> None:
    with OutcomeLog(lake) as outcomes:
        for i in range(hits):
            outcomes.submit(record(f"{prefix}{region}-{hour:%H}-h{i}", hour + timedelta(seconds=10 * i), region, "preallocated"))
        for i in range(misses):
            outcomes.submit(record(f"{prefix}{region}-{hour:%H}-m{i}", hour + timedelta(seconds=10 * i + 5), region,
                                   "on_demand", miss, short))


# -- outcome log -----------------------------------------------------------------------------------


def test_every_decision_is_logged_by_hour_of_request(tmp_path: Path) -> None:
    publish_plan(tmp_path, "plan-a", T0, hours=2)
    irc = Coordinator(tmp_path, reload_interval_s=None)
    requests = [
        PeeringRequest("a", T0 + timedelta(minutes=5), US, EU, {"vcpu": 2.0}, 600.0),
        PeeringRequest("b", T0 + timedelta(minutes=65), US, EU, {"vcpu": 20.0}, 600.0),  # beyond everything
        PeeringRequest("c", T0 + timedelta(minutes=66), US, "mars-north-1", {"vcpu": 1.0}, 600.0),  # invalid
        "garbage",  # type: ignore[list-item]
    ]
    for r in requests:
        irc.handle_peering_request(r)  # type: ignore[arg-type]
    irc.close()  # flushes
    base = tmp_path / "raw" / "irc_outcomes"
    files = sorted(p.relative_to(base).parts[:2] for p in base.rglob("part-*.parquet"))
    assert ("date=2025-03-01", "hour=10") in files and ("date=2025-03-01", "hour=11") in files
    assert not list(base.rglob(".*"))  # no temporary files left behind
    table = ds.dataset(base, format="parquet", partitioning="hive").to_table()
    assert table.num_rows == 4
    rows = {r["request_id"]: r for r in table.to_pylist()}
    assert rows["a"]["path"] == "preallocated" and rows["a"]["vcpu"] == 2.0 and rows["a"]["hour"] == 10
    assert rows["b"]["status"] == "failure" and rows["b"]["miss_reason"] == "exhausted" and rows["b"]["hour"] == 11
    assert rows["c"]["status"] == "failure" and rows["c"]["destination_region"] == "mars-north-1"
    assert rows[""]["status"] == "failure"  # even a non-request is accounted for
    assert all(r["decision_us"] > 0 and r["instance"] for r in rows.values())
    assert irc.metrics()["outcomes_written"] == 4


def test_a_full_queue_drops_and_counts_instead_of_blocking(tmp_path: Path) -> None:
    outcomes = OutcomeLog(tmp_path, max_queue=5, flush_interval_s=3600, batch_size=10**6)
    accepted = [outcomes.submit(record(f"r{i}", T0, EU, "preallocated")) for i in range(12)]
    assert accepted.count(True) == 5 and outcomes.stats()["dropped"] == 7
    outcomes.close()
    assert outcomes.stats()["written"] == 5
    assert outcomes.submit(record("late", T0, EU, "preallocated")) is False  # closed


def test_odd_records_are_normalised_not_lost(tmp_path: Path) -> None:
    with OutcomeLog(tmp_path) as outcomes:
        outcomes.submit(record("ok", T0, EU, "preallocated"))
        odd = list(record("odd", T0, EU, "preallocated"))
        odd[COLUMNS.index("request_id")] = 42
        odd[COLUMNS.index("vcpu")] = "lots"
        odd[COLUMNS.index("requested_at")] = T0 + timedelta(minutes=1)  # a datetime instead of seconds
        outcomes.submit(tuple(odd))
    table = read_outcomes(str(tmp_path), T0, T0 + timedelta(hours=1))
    rows = {r["request_id"]: r for r in table.to_pylist()}
    assert set(rows) == {"ok", "42"} and rows["42"]["vcpu"] is None and rows["ok"]["vcpu"] == 2.0
    assert rows["42"]["requested_at"] == T0 + timedelta(minutes=1)


def test_a_write_failure_is_counted_not_raised(tmp_path: Path) -> None:
    blocker = tmp_path / "lake"
    blocker.write_text("a file where the lake directory should be")
    outcomes = OutcomeLog(blocker)
    outcomes.submit(record("r", T0, EU, "preallocated"))
    outcomes.close()
    stats = outcomes.stats()
    assert stats["write_errors"] == 1 and stats["dropped"] == 1 and stats["written"] == 0


# -- controller ------------------------------------------------------------------------------------


def test_low_hit_rate_raises_tau_of_the_short_resource_only(tmp_path: Path) -> None:
    log_hour(tmp_path, T0, EU, hits=20, misses=30, short="vcpu")  # 40 % hits, all misses short on vcpu
    doc = run_feedback(DataInterval(T0, T0 + timedelta(hours=1)), settings(tmp_path))
    eu = doc["regions"][EU]
    assert (eu["requests"], eu["hits"], eu["hit_rate"]) == (50, 20, 0.4)
    assert eu["tau"]["vcpu"] > BASE_VCPU_TAU
    assert eu["tau"]["memory_gib"] == pytest.approx(Settings().cost.tau("memory_gib"), abs=1e-6)
    assert load_tau_overrides(str(tmp_path), T0 + timedelta(hours=1)) == doc["tau"]


def test_high_hit_rate_keeps_the_cost_tau_by_default(tmp_path: Path) -> None:
    log_hour(tmp_path, T0, EU, hits=50, misses=0)
    doc = run_feedback(DataInterval(T0, T0 + timedelta(hours=1)), settings(tmp_path))
    assert doc["tau"][EU] == pytest.approx({rt: Settings().cost.tau(rt) for rt in doc["tau"][EU]}, abs=1e-6)


def test_high_hit_rate_lowers_tau_when_allowed(tmp_path: Path) -> None:
    log_hour(tmp_path, T0, EU, hits=50, misses=0)
    doc = run_feedback(DataInterval(T0, T0 + timedelta(hours=1)), settings(tmp_path), ControllerConfig(lower_below_cost=True))
    assert all(doc["tau"][EU][rt] < Settings().cost.tau(rt) for rt in doc["tau"][EU])


def test_after_a_miss_streak_perfect_hours_bring_tau_back_to_the_cost_tau_not_below(tmp_path: Path) -> None:
    for h in range(100):
        hour = T0 + timedelta(hours=h)
        log_hour(tmp_path, hour, EU, hits=0 if h < 5 else 100, misses=100 if h < 5 else 0)
        doc = run_feedback(DataInterval(hour, hour + timedelta(hours=1)), settings(tmp_path))
        if h == 4:
            assert doc["tau"][EU]["vcpu"] > BASE_VCPU_TAU
    assert doc["tau"][EU]["vcpu"] == pytest.approx(BASE_VCPU_TAU, abs=1e-6)


def test_tau_stays_within_bounds_and_carries_over_quiet_hours(tmp_path: Path) -> None:
    config = ControllerConfig(lower_below_cost=True)
    taus = []
    for h in range(30):
        hour = T0 + timedelta(hours=h)
        if h < 20:
            log_hour(tmp_path, hour, EU, hits=0, misses=100)  # always missing
        doc = run_feedback(DataInterval(hour, hour + timedelta(hours=1)), settings(tmp_path), config)
        taus.append(doc["tau"][EU]["vcpu"])
    assert all(config.tau_min <= t <= config.tau_max for t in taus)
    assert taus[:10] == sorted(taus[:10]) and taus[0] < taus[9]  # monotone rise while missing
    assert taus[19] == pytest.approx(config.tau_max)  # saturates at the bound, no wind-up beyond it
    assert taus[20:] == [taus[20]] * 10  # quiet hours keep the last adjustment
    for h in range(30, 90):  # then a long run of perfect hours brings it down, not below the floor
        hour = T0 + timedelta(hours=h)
        log_hour(tmp_path, hour, EU, hits=100, misses=0)
        doc = run_feedback(DataInterval(hour, hour + timedelta(hours=1)), settings(tmp_path), config)
    assert config.tau_min <= doc["tau"][EU]["vcpu"] < BASE_VCPU_TAU


def test_no_look_ahead_and_idempotent_reruns(tmp_path: Path) -> None:
    interval = DataInterval(T0, T0 + timedelta(hours=1))
    log_hour(tmp_path, T0, EU, hits=10, misses=10)
    log_hour(tmp_path, T0 + timedelta(hours=1), EU, hits=0, misses=500, prefix="future-")  # after the interval
    log_hour(tmp_path, T0 + timedelta(minutes=59, seconds=59), EU, hits=0, misses=1, prefix="edge-")  # at 10:59:59+5 s
    doc = run_feedback(interval, settings(tmp_path))
    assert doc["regions"][EU]["requests"] == 20  # the 11:00:04 record and the next hour are not read
    first = Path(tau_path(str(tmp_path), interval)).read_bytes()
    again = run_feedback(interval, settings(tmp_path))
    assert again == doc and Path(tau_path(str(tmp_path), interval)).read_bytes() == first
    # The override for a plan made at 10:30 or before 11:00 is not the one computed at 11:00.
    assert load_tau_overrides(str(tmp_path), T0 + timedelta(minutes=59)) == {}
    assert load_tau_overrides(str(tmp_path), "2025-03-01T11:00") == doc["tau"]
    assert load_tau_overrides(str(tmp_path / "elsewhere"), T0) == {}


def test_misses_the_planner_cannot_fix_are_not_counted(tmp_path: Path) -> None:
    log_hour(tmp_path, T0, EU, hits=5, misses=0)
    for reason in ("no_plan", "plan_expired", "ledger_error"):
        log_hour(tmp_path, T0, EU, hits=0, misses=30, miss=reason, short="", prefix=f"{reason}-")
    log_hour(tmp_path, T0, US, hits=0, misses=3, miss="not_planned", short="storage_gib")
    doc = run_feedback(DataInterval(T0, T0 + timedelta(hours=1)), settings(tmp_path))
    assert doc["regions"][EU]["requests"] == 5 and doc["regions"][EU]["hit_rate"] == 1.0
    assert doc["regions"][US]["short"] == {"storage_gib": 3}
    assert doc["tau"][US]["storage_gib"] > Settings().cost.tau("storage_gib")


def test_retried_requests_count_once(tmp_path: Path) -> None:
    with OutcomeLog(tmp_path) as outcomes:
        outcomes.submit(record("same", T0 + timedelta(minutes=1), EU, "on_demand", "exhausted", "vcpu"))
        later = list(record("same", T0 + timedelta(minutes=1), EU, "preallocated"))
        later[COLUMNS.index("decided_at")] = T0.timestamp() + 120
        outcomes.submit(tuple(later))
    table = read_outcomes(str(tmp_path), T0, T0 + timedelta(hours=1))
    assert table.num_rows == 1 and table["path"][0].as_py() == "preallocated"


def test_closed_loop_from_coordinator_decisions_to_tau(tmp_path: Path) -> None:
    """A plan too small for the traffic: the IRC's own log makes the controller raise vcpu's τ."""
    publish_plan(tmp_path, "plan-a", T0, hours=1, capacity={EU: {"vcpu": 4.0, "memory_gib": 64.0}})
    with Coordinator(tmp_path, reload_interval_s=None) as irc:
        for i in range(30):
            irc.handle_peering_request(
                PeeringRequest(f"r{i}", T0 + timedelta(minutes=i), US, EU, {"vcpu": 1.0, "memory_gib": 1.0}, 3600.0)
            )
    doc = run_feedback(DataInterval(T0, T0 + timedelta(hours=1)), settings(tmp_path))
    eu = doc["regions"][EU]
    assert eu["requests"] == 30 and eu["hits"] == 3  # 95 % of 4 vcpu for normal requests
    assert eu["short"] == {"vcpu": 27}
    assert eu["tau"]["vcpu"] > BASE_VCPU_TAU and eu["tau"]["memory_gib"] == pytest.approx(Settings().cost.tau("memory_gib"), abs=1e-6)
    stored = json.loads(Path(tau_path(str(tmp_path), DataInterval(T0, T0 + timedelta(hours=1)))).read_text())
    assert stored["tau"] == doc["tau"]
    summary = stage_feedback(DataInterval(T0, T0 + timedelta(hours=1)), settings(tmp_path))  # what a DAG task returns
    assert summary == {"path": tau_path(str(tmp_path), DataInterval(T0, T0 + timedelta(hours=1))),
                       "outcomes_read": 30, "regions": [EU]}
