"""Monitoring and alerting, evaluated at the end of every hourly run.

Each rule looks at the hour the run just covered, `[start, end)`, with data that exists by `end`:

- `hit_rate`: share of IRC requests served from pre-allocation (raw/irc_outcomes) below target;
- `forecast_error`: weighted absolute error of the previous run's 1-step-ahead forecast of region
  demand against what happened (WAPE of q50) above a threshold;
- `utilization`: peak demand / pre-allocated capacity of the plan that was live in the hour, below
  a floor (money spent on idle capacity);
- `stale_plan`: the published plan does not cover the hour after the run;
- `quarantine`: share of a dataset's rows quarantined by this run's ingest above a limit.

Alerts are written to `lake/alerts/<interval token>.json` (also when empty, so "no alerts" is a
recorded fact), optionally POSTed to a webhook, and raise `AlertsRaised` when the configured
severity is reached so a scheduler marks the task failed.
"""

from __future__ import annotations

import json
import logging
import os
import urllib.request
from dataclasses import asdict, dataclass, field
from datetime import timedelta

import pandas as pd

from pipeline import lake, storage
from pipeline.config import Settings
from pipeline.intervals import DataInterval
from pipeline.schemas import RESOURCE_TYPES, region_series_id

log = logging.getLogger(__name__)
SEVERITIES = ("info", "warning", "critical")


@dataclass(frozen=True)
class AlertRules:
    """Thresholds; defaults suit hourly capacity planning, all overridable from the environment."""

    hit_rate_target: float = 0.90
    max_forecast_wape: float = 0.50
    min_utilization: float = 0.30
    max_quarantine_share: float = 0.01
    fail_on: str | None = None  # "warning" or "critical": raise when an alert at or above it fires
    webhook_url: str | None = None

    @classmethod
    def from_env(cls) -> "AlertRules":
        def number(name: str, default: float) -> float:
            value = os.environ.get(name, "").strip()
            return float(value) if value else default

        fail_on = os.environ.get("PEERSCALE_ALERT_FAIL_ON", "").strip() or None
        if fail_on is not None and fail_on not in SEVERITIES:
            raise ValueError(f"PEERSCALE_ALERT_FAIL_ON must be one of {SEVERITIES}, got {fail_on!r}")
        return cls(
            hit_rate_target=number("PEERSCALE_ALERT_HIT_RATE_TARGET", cls.hit_rate_target),
            max_forecast_wape=number("PEERSCALE_ALERT_MAX_FORECAST_WAPE", cls.max_forecast_wape),
            min_utilization=number("PEERSCALE_ALERT_MIN_UTILIZATION", cls.min_utilization),
            max_quarantine_share=number("PEERSCALE_ALERT_MAX_QUARANTINE_SHARE", cls.max_quarantine_share),
            fail_on=fail_on,
            webhook_url=os.environ.get("PEERSCALE_ALERT_WEBHOOK", "").strip() or None,
        )


@dataclass(frozen=True)
class Alert:
    """One rule that fired, with the numbers behind it."""

    rule: str
    severity: str
    subject: str
    value: float
    threshold: float
    message: str


@dataclass
class MonitoringReport:
    interval_end: str
    alerts: list[Alert] = field(default_factory=list)
    checked: dict[str, str] = field(default_factory=dict)  # rule -> "ok" | "no data: why"

    def to_dict(self) -> dict:
        return {"interval_end": self.interval_end, "alerts": [asdict(a) for a in self.alerts], "checked": self.checked}


class AlertsRaised(RuntimeError):
    """Alerts at or above the configured severity fired; the message lists them."""


def _plan_for_hour(settings: Settings, hour_start) -> tuple[pd.DataFrame, dict] | None:
    """The plan published by the run that ended at `hour_start` (the one live during the hour)."""
    from pipeline.plan import read_plan
    from pipeline.plan.planner import plan_id_for

    try:
        return read_plan(settings, plan_id_for(DataInterval.ending_at(hour_start)))
    except FileNotFoundError:
        return None


def _actual_demand(settings: Settings, interval: DataInterval) -> pd.DataFrame | None:
    from pipeline.features import read_features

    try:
        demand = read_features(settings, "region_demand_hourly", interval).to_pandas()
    except FileNotFoundError:
        return None
    return demand[demand["hour"] == pd.Timestamp(interval.start)]


def check_forecast_error(settings: Settings, interval: DataInterval, rules: AlertRules, report: MonitoringReport) -> None:
    from pipeline.forecast import read_forecast
    from pipeline.forecast.engine import forecast_run_id

    actual = _actual_demand(settings, interval)
    try:
        previous = read_forecast(settings, forecast_run_id("hourly", DataInterval.ending_at(interval.start)))
    except FileNotFoundError:
        report.checked["forecast_error"] = "no data: no forecast from the previous run"
        return
    if actual is None or actual.empty:
        report.checked["forecast_error"] = "no data: no actual demand for the hour"
        return
    errors: dict[str, tuple[float, float]] = {}
    for row in actual.itertuples(index=False):
        for resource in RESOURCE_TYPES:
            sid = region_series_id(row.region, resource)
            match = previous[(previous["series_id"] == sid) & (previous["ds"] == pd.Timestamp(interval.start))]
            if match.empty:
                continue
            value = float(getattr(row, resource))
            err, total = errors.get(resource, (0.0, 0.0))
            errors[resource] = (err + abs(value - float(match["q50"].iloc[0])), total + value)
    for resource, (err, total) in sorted(errors.items()):
        wape = err / total if total > 0 else 0.0
        if wape > rules.max_forecast_wape:
            report.alerts.append(Alert(
                "forecast_error", "warning", resource, round(wape, 4), rules.max_forecast_wape,
                f"1-step forecast of {resource} demand missed by {wape:.0%} (WAPE over regions) in the hour from "
                f"{interval.start:%Y-%m-%dT%H:%MZ}; threshold {rules.max_forecast_wape:.0%}",
            ))
    report.checked["forecast_error"] = "ok"


def check_utilization(settings: Settings, interval: DataInterval, rules: AlertRules, report: MonitoringReport) -> None:
    live = _plan_for_hour(settings, interval.start)
    actual = _actual_demand(settings, interval)
    if live is None or actual is None or actual.empty:
        report.checked["utilization"] = "no data: no plan was live in the hour, or no demand features"
        return
    plan, _ = live
    window = plan[plan["valid_from"] == pd.Timestamp(interval.start)]
    held = window[window["resource_type"] == "vcpu"].groupby("region")["quantity"].sum()
    for row in actual.itertuples(index=False):
        capacity = float(held.get(row.region, 0.0))
        if capacity <= 0:
            continue
        utilization = float(row.vcpu) / capacity
        if utilization < rules.min_utilization:
            report.alerts.append(Alert(
                "utilization", "warning", row.region, round(utilization, 4), rules.min_utilization,
                f"{row.region}: peak vCPU demand {row.vcpu:.0f} used {utilization:.0%} of the {capacity:.0f} pre-allocated "
                f"in the hour from {interval.start:%Y-%m-%dT%H:%MZ}",
            ))
    report.checked["utilization"] = "ok"


def check_hit_rate(settings: Settings, interval: DataInterval, rules: AlertRules, report: MonitoringReport) -> None:
    outcomes = lake.read_time_range(settings.lake_root, "irc_outcomes", interval.start, interval.end, "requested_at")
    frame = outcomes.to_pandas()
    if frame.empty or "path" not in frame.columns:
        report.checked["hit_rate"] = "no data: no IRC requests in the hour"
        return
    region_column = "region" if "region" in frame.columns else "destination_region"
    frame = frame[frame[region_column].notna()]
    by_region = frame.groupby(region_column)["path"].apply(lambda p: float((p == "preallocated").mean()))
    for region, rate in by_region.items():
        if rate < rules.hit_rate_target:
            report.alerts.append(Alert(
                "hit_rate", "critical" if rate < rules.hit_rate_target - 0.2 else "warning", str(region), round(rate, 4),
                rules.hit_rate_target,
                f"{region}: {rate:.0%} of requests served from pre-allocation (target {rules.hit_rate_target:.0%})",
            ))
    report.checked["hit_rate"] = "ok"


def check_stale_plan(settings: Settings, interval: DataInterval, rules: AlertRules, report: MonitoringReport) -> None:
    from pipeline.plan import latest_plan_id, read_plan

    try:
        _, manifest = read_plan(settings, latest_plan_id(settings))
    except FileNotFoundError as exc:
        report.alerts.append(Alert("stale_plan", "critical", "LATEST", 0.0, 0.0, f"no published plan: {exc}"))
        report.checked["stale_plan"] = "ok"
        return
    valid_to = pd.Timestamp(manifest["valid_to"])
    next_hour_end = pd.Timestamp(interval.end + timedelta(hours=1))
    if valid_to < next_hour_end:
        report.alerts.append(Alert(
            "stale_plan", "critical", manifest["plan_id"], 0.0, 0.0,
            f"the published plan {manifest['plan_id']} is valid only until {valid_to.isoformat()}: the hour after "
            f"{interval.end.isoformat()} would be served on demand",
        ))
    report.checked["stale_plan"] = "ok"


def check_quarantine(settings: Settings, interval: DataInterval, rules: AlertRules, report: MonitoringReport) -> None:
    found = False
    for dataset in ("peering_requests", "region_telemetry", "app_telemetry", "calendar", "resource_pools", "instance_catalog"):
        path = lake.ingest_manifest_path(settings.lake_root, dataset, interval)
        if not storage.exists(path):
            continue
        found = True
        ingest = lake.read_json(path)
        seen = ingest["rows_valid"] + ingest["rows_quarantined"]
        share = ingest["rows_quarantined"] / seen if seen else 0.0
        if share > rules.max_quarantine_share:
            reasons = ", ".join(f"{k} ×{v}" for k, v in sorted(ingest["quarantine_reasons"].items()))
            report.alerts.append(Alert(
                "quarantine", "warning", dataset, round(share, 4), rules.max_quarantine_share,
                f"{dataset}: {ingest['rows_quarantined']} of {seen} rows quarantined ({share:.1%}): {reasons}",
            ))
    report.checked["quarantine"] = "ok" if found else "no data: no ingest reports for the interval"


CHECKS = (check_hit_rate, check_forecast_error, check_utilization, check_stale_plan, check_quarantine)


def evaluate(interval: DataInterval, settings: Settings, rules: AlertRules | None = None) -> MonitoringReport:
    """Run every rule for the hour `interval` and return what fired (does not write or raise)."""
    rules = rules or AlertRules()
    report = MonitoringReport(interval_end=interval.end.isoformat())
    for check in CHECKS:
        check(settings, interval, rules, report)
    return report


def post_webhook(url: str, payload: dict, timeout_s: float = 5.0) -> bool:
    """POST the alerts as JSON; a failing webhook is logged, never fatal to the run."""
    request = urllib.request.Request(
        url, data=json.dumps(payload).encode(), headers={"Content-Type": "application/json"}, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            return 200 <= response.status < 300
    except OSError as exc:
        log.warning("alert webhook %s failed: %s", url, exc)
        return False


def monitor(interval: DataInterval, settings: Settings, rules: AlertRules | None = None) -> dict:
    """Evaluate, record to lake/alerts/<token>.json, notify, and raise if configured to."""
    rules = rules or AlertRules.from_env()
    report = evaluate(interval, settings, rules)
    payload = report.to_dict()
    path = storage.join(settings.lake_root, "alerts", f"{interval.token}.json")
    lake.write_json_atomic(path, payload)
    if rules.webhook_url and report.alerts:
        payload["webhook_delivered"] = post_webhook(rules.webhook_url, payload)
    if rules.fail_on:
        floor = SEVERITIES.index(rules.fail_on)
        serious = [a for a in report.alerts if SEVERITIES.index(a.severity) >= floor]
        if serious:
            raise AlertsRaised("; ".join(f"[{a.severity}] {a.message}" for a in serious) + f" (recorded in {path})")
    return {"path": path, "alerts": len(report.alerts), "checked": report.checked}
