"""Monitoring rules: each fires on the condition it names, records to the lake, notifies, and can fail a run."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow as pa
import pytest

from pipeline.common import lake
from pipeline.common.intervals import DataInterval
from pipeline.ops.monitoring import AlertRules, AlertsRaised, evaluate, monitor
from pipeline.run import run_hourly
from tests.conftest import settings_for
from tests.webhook import webhook_recorder

FIRST_HOUR = DataInterval.ending_at("2026-01-29T01:00")  # the first hour the published plan was live


@pytest.fixture(scope="module")
def two_runs(published_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The published lake plus the next hourly run, so the 00:00 hour has forecast, plan and actuals."""
    root = tmp_path_factory.mktemp("monitored")
    shutil.copytree(published_root / "lake", root / "lake")
    run_hourly(FIRST_HOUR.end, settings_for(root))
    return root


def _copy(root: Path, tmp_path: Path) -> Path:
    shutil.copytree(root / "lake", tmp_path / "lake")
    return tmp_path


def test_forecast_error_and_utilization_rules_are_evaluated_against_actuals(two_runs: Path) -> None:
    settings = settings_for(two_runs)
    quiet = evaluate(FIRST_HOUR, settings, AlertRules(max_forecast_wape=100.0, min_utilization=0.0, hit_rate_target=0.0))
    assert quiet.checked["forecast_error"] == "ok" and quiet.checked["utilization"] == "ok"
    assert [a for a in quiet.alerts if a.rule in ("forecast_error", "utilization")] == []

    loud = evaluate(FIRST_HOUR, settings, AlertRules(max_forecast_wape=0.0, min_utilization=100.0))
    errors = {a.subject for a in loud.alerts if a.rule == "forecast_error"}
    assert errors == {"vcpu", "memory_gib", "storage_gib", "bandwidth_gbps"}
    assert {a.subject for a in loud.alerts if a.rule == "utilization"} == {
        "us-east-1", "us-west-2", "eu-west-1", "eu-central-1", "ap-southeast-1", "ap-northeast-1"
    }
    util = next(a for a in loud.alerts if a.rule == "utilization")
    assert 0.0 <= util.value < 5.0


def test_stale_plan_fires_when_the_plan_does_not_cover_the_next_hour(published_root: Path) -> None:
    settings = settings_for(published_root)
    fresh = evaluate(DataInterval.ending_at("2026-01-29T00:00"), settings)
    assert not [a for a in fresh.alerts if a.rule == "stale_plan"]
    late = evaluate(DataInterval.ending_at("2026-01-29T06:00"), settings)  # plan valid until 06:00 only
    stale = [a for a in late.alerts if a.rule == "stale_plan"]
    assert len(stale) == 1 and stale[0].severity == "critical"


def test_hit_rate_rule_reads_irc_outcomes(published_root: Path, tmp_path: Path) -> None:
    settings = settings_for(_copy(published_root, tmp_path))
    hour = DataInterval.ending_at("2026-01-29T01:00")
    outcomes = pa.table({
        "requested_at": pa.array([hour.start] * 10, pa.timestamp("us", tz="UTC")),
        "region": ["eu-west-1"] * 4 + ["us-east-1"] * 6,
        "path": ["preallocated", "on_demand", "on_demand", "none"] + ["preallocated"] * 6,
    })
    lake.write_hour_partitions(outcomes, lake.raw_dir(settings.lake_root, "irc_outcomes"), "requested_at", hour)
    report = evaluate(hour, settings, AlertRules(hit_rate_target=0.9))
    hits = [a for a in report.alerts if a.rule == "hit_rate"]
    assert [(a.subject, a.value, a.severity) for a in hits] == [("eu-west-1", 0.25, "critical")]


def test_quarantine_growth_is_alerted(tmp_path: Path) -> None:
    from pipeline.ingest.loader import ingest
    from tests.conftest import SAMPLES
    from tests.test_ingest import BAD, GOOD, HEADER

    source = tmp_path / "source"
    shutil.copytree(SAMPLES / "inventory", source / "inventory")
    (source / "peering_requests").mkdir(parents=True)
    (source / "peering_requests" / "2026-01-05.csv").write_text("\n".join([HEADER, *GOOD, *BAD.values()]) + "\n")
    settings = settings_for(tmp_path, source)
    hour = DataInterval.ending_at("2026-01-05T01:00")
    ingest("peering_requests", hour, settings)
    report = evaluate(hour, settings)
    quarantine = [a for a in report.alerts if a.rule == "quarantine"]
    assert len(quarantine) == 1 and quarantine[0].subject == "peering_requests" and quarantine[0].value > 0.5


def test_monitor_records_notifies_and_fails_when_configured(published_root: Path, tmp_path: Path) -> None:
    with webhook_recorder() as (url, received):
        settings = settings_for(_copy(published_root, tmp_path))
        late = DataInterval.ending_at("2026-01-29T06:00")
        rules = AlertRules(webhook_url=url, fail_on="critical")
        with pytest.raises(AlertsRaised, match=r"stale_plan|valid only until"):
            monitor(late, settings, rules)
    recorded = json.loads((tmp_path / "lake" / "alerts" / f"{late.token}.json").read_text())
    assert any(a["rule"] == "stale_plan" for a in recorded["alerts"])
    assert received and any(a["rule"] == "stale_plan" for a in received[0]["alerts"])

    ok = monitor(DataInterval.ending_at("2026-01-29T00:00"), settings, AlertRules(fail_on="critical"))
    assert ok["checked"]["stale_plan"] == "ok"


def test_rules_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PEERSCALE_ALERT_HIT_RATE_TARGET", "0.8")
    monkeypatch.setenv("PEERSCALE_ALERT_FAIL_ON", "warning")
    rules = AlertRules.from_env()
    assert rules.hit_rate_target == 0.8 and rules.fail_on == "warning"
    monkeypatch.setenv("PEERSCALE_ALERT_FAIL_ON", "sometimes")
    with pytest.raises(ValueError, match="PEERSCALE_ALERT_FAIL_ON"):
        AlertRules.from_env()


def test_invalid_requests_are_their_own_category_not_capacity_misses(tmp_path: Path) -> None:
    """An invalid request (refused before capacity was looked at: failure, no miss reason) says nothing
    about the plan: it must not pull a region's hit rate down. Capacity failures still do."""
    settings = settings_for(tmp_path)
    hour = DataInterval.ending_at("2026-01-29T01:00")
    n = 20
    outcomes = pa.table({
        "requested_at": pa.array([hour.start] * n, pa.timestamp("us", tz="UTC")),
        "destination_region": ["eu-west-1"] * 12 + ["us-east-1"] * 6 + [None, "us-east-1"],
        "status": ["success"] * 9 + ["failure"] * 3 + ["success"] * 5 + ["failure"] + ["failure"] * 2,
        "path": ["preallocated"] * 9 + ["none"] * 3 + ["preallocated"] * 5 + ["none"] + ["none"] * 2,
        "miss_reason": [None] * 12 + [None] * 5 + ["exhausted"] + [None] * 2,
    })
    lake.write_hour_partitions(outcomes, lake.raw_dir(settings.lake_root, "irc_outcomes"), "requested_at", hour)
    report = evaluate(hour, settings, AlertRules(hit_rate_target=0.9))
    hits = [(a.subject, a.value) for a in report.alerts if a.rule == "hit_rate"]
    assert hits == [("us-east-1", round(5 / 6, 4))], hits  # eu-west-1: 9 of 9 capacity decisions pre-allocated
    assert report.invalid_requests == {"(no region)": 1, "eu-west-1": 3, "us-east-1": 1}
    assert report.to_dict()["invalid_requests"] == report.invalid_requests
