"""Bad-input corpus, IRC Python API: `Coordinator.handle_peering_request` and `release` never raise,
name what is wrong, log every decision, and never let the ledger hold more than the plan.

The plan is tests/test_irc.py's (2025-01-01 10:00-12:00; eu-west-1: 8 vcpu, 32 GiB, 2 Gbps per
window, an 8-vcpu on-demand pool). The coordinator runs on the default clock (the wall clock).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from pipeline.irc import Coordinator, OutcomeLog, PeeringRequest, PeeringResponse
from pipeline.irc.ledger.protocol import over_capacity
from tests.test_irc import EU, PLAN_ID, T0, US, request, write_plan

AT = T0 + timedelta(minutes=5)


@dataclass(frozen=True)
class Expected:
    """What a case must come back as: an invalid request, a miss, or a grant, with a message fragment."""

    kind: str  # invalid | insufficient | on_demand | preallocated
    fragment: str = ""


def invalid(fragment: str) -> Expected:
    return Expected("invalid", fragment)


# (case id, request built lazily, expected). Cases marked NEW failed on the code before issue #14.
CASES: list[tuple[str, Callable[[], Any], Expected]] = [
    ("none_instead_of_a_request", lambda: None, invalid("not a PeeringRequest: NoneType")),
    ("dict_instead_of_a_request", lambda: {"request_id": "x", "vcpu": 1}, invalid("not a PeeringRequest: dict")),
    ("object_missing_fields", lambda: SimpleNamespace(request_id="x"), invalid("not a PeeringRequest: SimpleNamespace")),
    ("empty_request_id", lambda: request(request_id="  "), invalid("request_id must be a non-empty string")),
    ("numeric_request_id", lambda: PeeringRequest(7, AT, US, EU, {"vcpu": 1.0}, 60.0),  # type: ignore[arg-type]
     invalid("request_id must be a non-empty string")),
    ("nan_quantity", lambda: request(vcpu=math.nan), invalid("missing quantity for vcpu")),
    ("inf_quantity", lambda: request(vcpu=math.inf), invalid("non-finite quantity for vcpu: inf")),
    ("negative_quantity", lambda: request(vcpu=-2.0), invalid("negative quantity for vcpu: -2.0")),
    ("int_beyond_float_quantity", lambda: request(vcpu=10**400), invalid("non-finite quantity for vcpu: <int of")),  # NEW
    ("bool_quantity", lambda: request(vcpu=True), invalid("non-numeric quantity for vcpu: True")),
    ("string_quantity", lambda: request(vcpu="4"), invalid("non-numeric quantity for vcpu: '4'")),  # type: ignore[arg-type]
    ("unknown_resource_type", lambda: request(gpu=1.0), invalid("unknown resource type 'gpu'")),
    ("all_zero_quantities", lambda: request(vcpu=0.0, memory_gib=0.0), invalid("requests no resources")),
    ("requirements_not_a_mapping", lambda: PeeringRequest("r", AT, US, EU, [("vcpu", 1.0)], 60.0),  # type: ignore[arg-type]
     invalid("resource_requirements is missing or empty")),
    ("huge_finite_quantity", lambda: request(vcpu=1e300), invalid("above the largest request the contract admits")),
    ("unknown_region", lambda: request(dst="eu-north-9"), invalid("unknown region 'eu-north-9' in destination_region")),
    ("malformed_region", lambda: request(dst="EU West; DROP TABLE"), invalid("is not a valid region name")),
    ("long_region_name_quoted_short", lambda: request(dst="x" * 100_000), invalid("'xxxxxxxx")),  # NEW: message cut short
    ("same_source_and_destination", lambda: request(src=EU), invalid("both 'eu-west-1'")),
    ("unknown_priority", lambda: request(priority="urgent"), invalid("unknown priority 'urgent'")),
    ("priority_none", lambda: request(priority=None), invalid("unknown priority None")),  # type: ignore[arg-type]
    ("naive_requested_at", lambda: request(at=datetime(2025, 1, 1, 10, 5)), invalid("naive datetime")),
    ("string_requested_at", lambda: request(at="2025-01-01T10:05:00Z"), invalid("requested_at must be a datetime")),  # type: ignore[arg-type]
    ("requested_at_2099", lambda: request(at=datetime(2099, 1, 1, tzinfo=UTC)),
     invalid("ahead of this coordinator's clock")),  # NEW: was served on demand, and expired live sessions
    ("requested_at_off_the_utc_calendar", lambda: request(at=datetime(1, 1, 1, 1, tzinfo=timezone(timedelta(hours=5)))),
     invalid("outside the calendar in UTC")),  # NEW: was an internal error
    ("requested_at_1970", lambda: request(at=datetime(1970, 1, 1, tzinfo=UTC)), Expected("on_demand", "not valid before")),
    ("requested_at_other_timezone", lambda: request(at=AT.astimezone(timezone(timedelta(hours=-5)))), Expected("preallocated")),
    ("zero_duration", lambda: request(duration_s=0.0), invalid("duration_s must be a positive")),
    ("negative_duration", lambda: request(duration_s=-60.0), invalid("duration_s must be a positive")),
    ("nan_duration", lambda: request(duration_s=math.nan), invalid("duration_s must be a positive")),
    ("string_duration", lambda: request(duration_s="600"), invalid("got '600'")),  # type: ignore[arg-type]
    ("duration_1e300", lambda: request(duration_s=1e300), invalid("longer than the longest session")),  # NEW: held forever
    ("duration_31_days", lambda: request(duration_s=31 * 86400.0), invalid("2,592,000 s, 30 days")),  # NEW
    ("int_beyond_float_duration", lambda: request(duration_s=10**400), invalid("got <int of")),  # NEW: was an internal error
]


@pytest.fixture
def irc(tmp_path: Path) -> Iterator[Coordinator]:
    write_plan(tmp_path)
    coordinator = Coordinator(tmp_path, reload_interval_s=None, outcomes=OutcomeLog(tmp_path))
    yield coordinator
    coordinator.close()


def assert_within_plan(irc: Coordinator) -> None:
    """No window of the plan holds more than it pre-allocates, for any region and resource."""
    plan = irc.plan
    assert plan is not None and plan.plan_id == PLAN_ID
    for window in plan.windows:
        for region, capacities in window.allocation.items():
            for resource_type, used in irc.ledger.usage(window.start_s, region).items():
                assert not over_capacity(used, 0.0, capacities.get(resource_type, 0.0)), (region, resource_type, used)


def assert_logged(irc: Coordinator, decisions: int) -> None:
    """Every decision was logged, none was an internal error."""
    log = irc.outcome_log
    assert log is not None
    log.flush()
    metrics = irc.metrics()
    assert metrics.get("internal_errors", 0) == 0, metrics
    assert (metrics["requests"], metrics["outcomes_written"], metrics["outcomes_dropped"]) == (decisions, decisions, 0)


def check(response: PeeringResponse, expected: Expected) -> None:
    if expected.kind == "invalid":
        assert (response.status, response.path, response.region, response.allocation_id) == ("failure", "none", None, None)
        assert response.message.startswith("Invalid request: "), response.message
    elif expected.kind == "insufficient":
        assert (response.status, response.path) == ("failure", "none") and response.region == EU
        assert response.message.startswith("Insufficient resources in eu-west-1"), response.message
    else:
        assert (response.status, response.path) == ("success", expected.kind), response.message
    assert expected.fragment in response.message, response.message
    assert len(response.message) < 1000


@pytest.mark.parametrize(("build", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_request_is_decided_and_named(irc: Coordinator, build: Callable[[], Any], expected: Expected) -> None:
    held = irc.handle_peering_request(request(request_id="held", vcpu=5.0))  # a live session the case must not free
    assert held.path == "preallocated"
    check(irc.handle_peering_request(build()), expected)
    assert irc.ledger.usage(int(T0.timestamp()), EU)["vcpu"] >= 5.0
    assert_within_plan(irc)
    assert_logged(irc, 2)


def test_duplicate_request_ids_are_separate_sessions_within_the_plan(irc: Coordinator) -> None:
    """The IRC does not deduplicate: each request is its own session with its own allocation id;
    together they still get no more than the plan (then the pool, then nothing)."""
    decisions = [irc.handle_peering_request(request(request_id="same", vcpu=3.0)) for _ in range(6)]
    assert [d.path for d in decisions] == ["preallocated", "preallocated", "on_demand", "on_demand", "none", "none"]
    assert {d.request_id for d in decisions} == {"same"}
    ids = [d.allocation_id for d in decisions if d.allocation_id]
    assert len(set(ids)) == len(ids) == 4
    assert irc.ledger.usage(int(T0.timestamp()), EU)["vcpu"] == 6.0
    assert_within_plan(irc)
    assert_logged(irc, 6)


def test_release_twice_unknown_or_not_an_id(irc: Coordinator) -> None:
    granted = irc.handle_peering_request(request(vcpu=4.0))
    assert granted.allocation_id is not None
    assert irc.release(granted.allocation_id) is True
    assert irc.release(granted.allocation_id) is False  # exactly once
    for bogus in ("pre-never-granted", "od-never-granted", "", "x" * 10_000, None, 42, {"a": 1}, ["pre-1"]):
        assert irc.release(bogus) is False  # type: ignore[arg-type]
    assert irc.ledger.usage(int(T0.timestamp()), EU)["vcpu"] == 0.0
    assert irc.metrics()["released"] == 1
    assert_within_plan(irc)


def test_clock_skew_inside_the_bound_is_served_and_beyond_it_refused(tmp_path: Path) -> None:
    write_plan(tmp_path)
    now = T0.timestamp() + 60
    irc = Coordinator(tmp_path, reload_interval_s=None, outcomes=False, clock=lambda: now, max_clock_skew_s=300)
    held = irc.handle_peering_request(request(at=T0 + timedelta(minutes=1), vcpu=6.0, duration_s=120))
    inside = irc.handle_peering_request(request(at=T0 + timedelta(minutes=5), vcpu=1.0))  # 4 min ahead
    beyond = irc.handle_peering_request(request(at=T0 + timedelta(minutes=7), vcpu=1.0))  # 6 min ahead
    assert (held.path, inside.path) == ("preallocated", "preallocated")
    check(beyond, invalid("ahead of this coordinator's clock"))
    assert irc.ledger.usage(int(T0.timestamp()), EU)["vcpu"] == 7.0  # the 2-minute session was not expired early
    assert_within_plan(irc)
    irc.close()


def test_a_burst_of_hostile_requests_frees_no_live_session(irc: Coordinator) -> None:
    """Every case of the corpus, one after the other, beside sessions that hold the whole window."""
    held = [irc.handle_peering_request(request(request_id=f"h{i}", vcpu=1.0, memory_gib=1.0, priority="critical"))
            for i in range(8)]
    assert [h.path for h in held] == ["preallocated"] * 8
    for _, build, _expected in CASES:
        irc.handle_peering_request(build())
    assert irc.ledger.usage(int(T0.timestamp()), EU)["vcpu"] == 8.0
    assert irc.handle_peering_request(request(vcpu=1.0, priority="critical")).path == "on_demand"
    assert_within_plan(irc)
    assert_logged(irc, 8 + len(CASES) + 1)
