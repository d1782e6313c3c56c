"""The IRC's serving topology: destination, then its failover partner, then relocation targets.

Plans are written through tests/plan_store.py with the manifest keys the planner writes
(`redundancy.<region>.partner`, `relocations`), so the coordinator reads them as in production.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from pipeline.common import schemas
from pipeline.irc import Coordinator, PeeringRequest
from pipeline.irc.plan_source import load_latest_plan, read_topology
from tests import plan_store

EU, US, AP, CA = "eu-west-1", "us-east-1", "ap-southeast-2", "ca-central-1"
T0 = datetime(2025, 1, 1, 10, tzinfo=UTC)
HOURS = 2
PLAN_ID = "plan-20250101T10"
CAPACITY = {EU: {"vcpu": 4.0}, US: {"vcpu": 3.0}, AP: {"vcpu": 2.0}, CA: {"vcpu": 5.0}}
POOLS = {EU: {"vcpu": 1.0}, US: {"vcpu": 0.0}, AP: {"vcpu": 0.0}, CA: {"vcpu": 0.0}}
# EU fails over to US; in the first window the plan moved EU's flexible demand to CA (more) and AP.
TOPOLOGY: dict[str, Any] = {
    "redundancy": {EU: {"partner": US, "partner_rule": "lowest latency"}, US: {"partner": EU}, AP: {"partner": None}},
    "relocations": [
        {"window": T0.isoformat(), "from": EU, "to": AP, "share_of_flexible": 0.25, "quantity": {"vcpu": 1.0}},
        {"window": T0.isoformat(), "from": EU, "to": CA, "share_of_flexible": 0.5, "quantity": {"vcpu": 2.0}},
    ],
}


def publish(lake: Path, manifest_extra: dict[str, Any] | None = None, plan_id: str = PLAN_ID) -> None:
    rows = [
        {"plan_id": plan_id, "valid_from": T0 + timedelta(hours=h), "valid_to": T0 + timedelta(hours=h + 1),
         "region": region, "resource_type": rt, "quantity": q, "instance_type": "m5.xlarge",
         "purchase_option": "on_demand", "count": 1, "hourly_cost": 0.1, "demand_quantile": q,
         "line_id": f"{region}/{h}/{rt}", "reason": "test"}
        for h in range(HOURS) for region, quantities in CAPACITY.items() for rt, q in quantities.items()
    ]
    pools = [{"region": r, "resource_type": rt, "available_quantity": q, "total_quantity": q}
             for r, quantities in POOLS.items() for rt, q in quantities.items()]
    manifest = {"plan_id": plan_id, "created_at": T0.isoformat(), "valid_from": T0.isoformat(),
                "valid_to": (T0 + timedelta(hours=HOURS)).isoformat(), **(manifest_extra or {})}
    plan_store.write_plan(lake, plan_id, pa.Table.from_pylist(rows, schema=schemas.PLAN), manifest,
                          pools=pa.Table.from_pylist(pools, schema=schemas.RESOURCE_POOLS))


def coordinator(lake: Path, **kwargs: Any) -> Coordinator:
    return Coordinator(lake, reload_interval_s=None, outcomes=False, clock=None, **kwargs)


def ask(irc: Coordinator, rid: str, vcpu: float = 1.0, *, at: datetime = T0, region: str = EU,
        priority: str = "critical") -> Any:
    return irc.handle_peering_request(PeeringRequest(rid, at, AP if region != AP else EU, region, {"vcpu": vcpu}, 600.0, priority))


@pytest.fixture
def lake(tmp_path: Path) -> Path:
    publish(tmp_path / "lake", TOPOLOGY)
    return tmp_path / "lake"


def test_topology_is_read_from_the_manifest(lake: Path) -> None:
    plan = load_latest_plan(lake)
    assert dict(plan.partners) == {EU: US, US: EU}  # AP has no partner
    assert dict(plan.relocations) == {(int(T0.timestamp()), EU): (CA, AP)}  # most moved first


def test_malformed_topology_entries_are_skipped_not_fatal() -> None:
    topology = read_topology({
        "redundancy": {EU: {"partner": "not a region"}, US: "x", "bad": {"partner": EU}, AP: {"partner": AP}},
        "relocations": [{"window": "yesterday", "from": EU, "to": US}, "junk", {"window": T0.isoformat(), "from": EU},
                        {"window": T0.isoformat(), "from": EU, "to": US, "quantity": {"vcpu": "NaN?"}}],
    })
    assert dict(topology["partners"]) == {}
    assert dict(topology["relocations"]) == {(int(T0.timestamp()), EU): (US,)}


def test_order_destination_pool_partner_then_relocation_targets(lake: Path) -> None:
    """EU: 4 pre-allocated + 1 pool, then US's 3 (partner), then CA's 5, then AP's 2, then failure."""
    with coordinator(lake) as irc:
        decisions = [ask(irc, f"r{i}") for i in range(16)]
    paths = [(d.path, d.serving_region, d.latency_class) for d in decisions]
    assert paths == (
        [("preallocated", EU, "low")] * 4 + [("on_demand", EU, "medium")]
        + [("failover", US, "medium")] * 3 + [("relocated", CA, "medium")] * 5
        + [("relocated", AP, "medium")] * 2 + [("none", None, None)]
    )
    for d in decisions[5:15]:
        assert d.region == EU and d.status == "success" and d.provisioning_s == 0.0
        assert d.miss_reason == "exhausted" and d.short_resources == ("vcpu",)
        assert d.allocation_id and d.serving_region in d.message
    assert decisions[-1].status == "failure" and decisions[-1].message.startswith(f"Insufficient resources in {EU}")
    assert decisions[0].serving_region == EU and decisions[0].region == EU


def test_failover_uses_the_partner_ledger_and_release_returns_it(lake: Path) -> None:
    with coordinator(lake) as irc:
        for i in range(5):
            ask(irc, f"fill{i}")
        moved = ask(irc, "moved", 2.0)
        start = int(T0.timestamp())
        assert moved.path == "failover" and irc.ledger.usage(start, US)["vcpu"] == pytest.approx(2.0)
        # the partner's own requests now find 1 vcpu left of its 3
        assert ask(irc, "us-own", 2.0, region=US).path != "preallocated"
        assert irc.release(moved.allocation_id) and irc.ledger.usage(start, US)["vcpu"] == pytest.approx(0.0)
        assert ask(irc, "us-own-again", 2.0, region=US).path == "preallocated"
        metrics = irc.metrics()
        assert metrics["failover"] == 1 and metrics["served_failover"] == 1
        assert "peerscale_irc_decision_duration_seconds_count{path=\"failover\"} 1" in irc.metrics_text()


def test_relocations_apply_only_to_their_window(lake: Path) -> None:
    """In the second window the plan relocated nothing: after EU and US, the request fails."""
    later = T0 + timedelta(hours=1, minutes=5)
    with coordinator(lake) as irc:
        paths = [ask(irc, f"r{i}", at=later).path for i in range(9)]
    assert paths == ["preallocated"] * 4 + ["on_demand"] + ["failover"] * 3 + ["none"]


def test_priority_ceiling_applies_at_the_partner_too(lake: Path) -> None:
    """A low-priority request may fill only 85 % of the partner's pre-allocation."""
    with coordinator(lake) as irc:
        for i in range(5):
            ask(irc, f"fill{i}")
        low = ask(irc, "low", 3.0, priority="low")  # 3 > 0.85 x 3 at US; 3 <= 0.85 x 5 at CA
        assert low.path == "relocated" and low.serving_region == CA
        critical = ask(irc, "critical", 3.0)  # the whole of US's 3 is open to a critical request
        assert critical.path == "failover" and critical.serving_region == US


def test_unhealthy_destination_goes_straight_to_its_partner(lake: Path) -> None:
    with coordinator(lake) as irc:
        irc.mark_unhealthy(EU, "AZ outage  INC-42")
        assert irc.unhealthy_regions == {EU: "AZ outage INC-42"}  # on one line
        first = ask(irc, "a")
        assert (first.path, first.serving_region, first.miss_reason) == ("failover", US, "region_unhealthy")
        assert "AZ outage INC-42" in first.message
        assert irc.ledger.usage(int(T0.timestamp()), EU).get("vcpu", 0.0) == 0.0  # the destination is not touched
        assert irc.on_demand.available(EU) == {"vcpu": 1.0}
        irc.mark_unhealthy(US)  # the partner is down too: relocation targets
        assert ask(irc, "b").serving_region == CA
        irc.mark_unhealthy(CA)
        irc.mark_unhealthy(AP)
        refused = ask(irc, "c")
        assert refused.status == "failure" and refused.message.startswith("Region unavailable: eu-west-1 is marked")
        assert refused.miss_reason == "region_unhealthy"
        # a request to the partner itself is refused while it is unhealthy, then served again
        assert ask(irc, "us", region=US).status == "failure"
        irc.mark_healthy(US)
        assert ask(irc, "us2", region=US).path == "preallocated"
        assert irc.metrics()["miss_region_unhealthy"] >= 3


def test_unhealthy_without_plan_fails_with_the_reason(tmp_path: Path) -> None:
    with coordinator(tmp_path / "empty", health_file=False) as irc:
        irc.mark_unhealthy(EU)
        decision = ask(irc, "x")
        assert decision.status == "failure" and "marked unhealthy" in decision.message
        assert not (tmp_path / "empty" / "irc").exists()  # health_file=False: in this process only


def test_health_file_is_shared_by_replicas_and_read_at_each_poll(lake: Path) -> None:
    with coordinator(lake) as first, coordinator(lake) as second:
        first.mark_unhealthy(EU, "drain")
        text = (lake / "irc" / "unhealthy_regions").read_text()
        assert f"{EU} drain" in text.splitlines()
        assert second.unhealthy_regions == {}  # not yet polled
        assert second.refresh_health() and second.unhealthy_regions == {EU: "drain"}
        assert ask(second, "a").path == "failover"
        second.mark_unhealthy(AP)  # keeps the first replica's mark
        first.refresh_health()
        assert first.unhealthy_regions == {EU: "drain", AP: "marked by an operator"}
        first.mark_healthy(EU)
        second.refresh_health()
        assert second.unhealthy_regions == {AP: "marked by an operator"}
        assert ask(second, "b").path == "preallocated"


def test_a_hand_edited_health_file_and_a_broken_one(lake: Path) -> None:
    path = lake / "irc" / "unhealthy_regions"
    path.parent.mkdir(parents=True)
    path.write_text("# maintenance\nus-east-1   region-wide incident  # paged\n\n")
    with coordinator(lake) as irc:
        assert irc.unhealthy_regions == {US: "region-wide incident"}
        path.write_text("eu-west-1\nnot a region\n")
        assert not irc.refresh_health()
        assert irc.unhealthy_regions == {US: "region-wide incident"}  # the marks in force stay
        assert "line 2" in (irc.health_error or "")
        assert irc.metrics()["health_read_failures"] == 1
        path.unlink()
        assert irc.refresh_health() and irc.unhealthy_regions == {} and irc.health_error is None
        with pytest.raises(ValueError, match="invalid region name"):
            irc.mark_unhealthy("EU West")


def test_explicit_health_file_path(lake: Path, tmp_path: Path) -> None:
    shared = tmp_path / "ops" / "health.txt"
    with coordinator(lake, health_file=shared) as irc:
        irc.mark_unhealthy(EU)
        assert shared.read_text().splitlines()[1] == f"{EU} marked by an operator"
        assert not (lake / "irc").exists()


def test_plan_without_topology_serves_as_before(tmp_path: Path) -> None:
    publish(tmp_path / "lake")
    with coordinator(tmp_path / "lake") as irc:
        paths = [ask(irc, f"r{i}").path for i in range(6)]
    assert paths == ["preallocated"] * 4 + ["on_demand", "none"]


def test_watcher_picks_up_health_marks(lake: Path) -> None:
    import time

    with Coordinator(lake, reload_interval_s=0.05, outcomes=False, clock=None) as irc:
        (lake / "irc").mkdir()
        (lake / "irc" / "unhealthy_regions").write_text(f"{EU} test\n")
        for _ in range(200):
            if irc.unhealthy_regions:
                break
            time.sleep(0.02)
        assert irc.unhealthy_regions == {EU: "test"}


def test_cli_marks_regions_for_every_replica(lake: Path) -> None:
    import json

    from typer.testing import CliRunner

    from pipeline.cli.app import app

    runner = CliRunner()
    with coordinator(lake) as irc:
        result = runner.invoke(app, ["irc", "health", "--lake", str(lake), "--unhealthy", EU, "--note", "INC-7"])
        assert result.exit_code == 0, result.output
        assert json.loads(result.stdout)["unhealthy"] == {EU: "INC-7"}
        irc.refresh_health()
        assert ask(irc, "a").serving_region == US
        shown = runner.invoke(app, ["irc", "health", "--lake", str(lake), "--healthy", EU])
        assert json.loads(shown.stdout)["unhealthy"] == {}
        bad = runner.invoke(app, ["irc", "health", "--lake", str(lake), "--unhealthy", "Europe"])
        assert bad.exit_code == 2 and "invalid region name" in bad.output
