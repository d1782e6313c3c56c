"""Monitoring and alerting, evaluated at the end of every hourly run.

Each rule looks at the hour the run just covered, `[start, end)`, with data that exists by `end`:

- `hit_rate`: share of IRC requests served from pre-allocation (raw/irc_outcomes) below target;
  invalid requests (refused before capacity was looked at) are counted apart, never as misses;
- `forecast_error`: weighted absolute error of the previous run's 1-step-ahead forecast of region
  demand against what happened (WAPE of q50) above a threshold;
- `utilization`: peak demand / pre-allocated capacity of the plan that was live in the hour, below
  a floor (money spent on idle capacity);
- `stale_plan`: the published plan does not cover the hour after the run;
- `quarantine`: share of a dataset's rows quarantined by this run's ingest above a limit.

Alerts are written to `lake/alerts/<interval token>.json` (also when empty, so "no alerts" is a
recorded fact), optionally POSTed to a webhook, and raise `AlertsRaised` when the configured
severity is reached so a scheduler marks the task failed. The Airflow callbacks at the end
(`task_failed`, `deadline_missed`) record their alert in the same format, one file each.
"""

from __future__ import annotations

import json
import logging
import os
import re
import urllib.request
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import Any

import pandas as pd

from pipeline.common import lake, storage
from pipeline.common.config import Settings
from pipeline.common.env import env_float
from pipeline.common.intervals import DataInterval, parse_utc
from pipeline.common.schemas import RESOURCE_TYPES, region_series_id
from pipeline.ops import HIT_RATE_TARGET

log = logging.getLogger(__name__)
SEVERITIES = ("info", "warning", "critical")
CRITICAL_HIT_RATE_SHORTFALL = 0.2  # a region this far below the hit-rate target is critical, not a warning
NO_REGION = "(no region)"  # how an invalid request without a destination region is counted


@dataclass(frozen=True)
class AlertRules:
    """Thresholds; defaults suit hourly capacity planning, all overridable from the environment."""

    hit_rate_target: float = HIT_RATE_TARGET
    max_forecast_wape: float = 0.50
    min_utilization: float = 0.30
    max_quarantine_share: float = 0.01
    fail_on: str | None = None  # "warning" or "critical": raise when an alert at or above it fires
    webhook_url: str | None = None

    @classmethod
    def from_env(cls) -> AlertRules:
        fail_on = os.environ.get("PEERSCALE_ALERT_FAIL_ON", "").strip() or None
        if fail_on is not None and fail_on not in SEVERITIES:
            raise ValueError(f"PEERSCALE_ALERT_FAIL_ON must be one of {SEVERITIES}, got {fail_on!r}")
        return cls(
            hit_rate_target=env_float("PEERSCALE_ALERT_HIT_RATE_TARGET", cls.hit_rate_target),
            max_forecast_wape=env_float("PEERSCALE_ALERT_MAX_FORECAST_WAPE", cls.max_forecast_wape),
            min_utilization=env_float("PEERSCALE_ALERT_MIN_UTILIZATION", cls.min_utilization),
            max_quarantine_share=env_float("PEERSCALE_ALERT_MAX_QUARANTINE_SHARE", cls.max_quarantine_share),
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
    invalid_requests: dict[str, int] = field(default_factory=dict)  # destination region (or NO_REGION) -> invalid requests

    def to_dict(self) -> dict:
        out = {"interval_end": self.interval_end, "alerts": [asdict(a) for a in self.alerts], "checked": self.checked}
        if self.invalid_requests:  # only when there were some: callback records keep their format
            out["invalid_requests"] = self.invalid_requests
        return out


class AlertsRaised(RuntimeError):
    """Alerts at or above the configured severity fired; the message lists them."""


def _plan_for_hour(settings: Settings, hour_start) -> tuple[pd.DataFrame, dict] | None:
    """The plan published by the run that ended at `hour_start` (the one live during the hour)."""
    from pipeline.plan import read_plan
    from pipeline.plan.planner import plan_id_for

    try:
        return read_plan(settings, plan_id_for(DataInterval.ending_at(hour_start)))
    except (FileNotFoundError, ValueError):  # absent, or it no longer verifies (PlanIntegrityError): nothing to compare
        return None


def _actual_demand(settings: Settings, interval: DataInterval) -> pd.DataFrame | None:
    from pipeline.features.build import read_features

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


def invalid_requests(frame: pd.DataFrame) -> pd.Series:
    """Which outcomes answer an invalid request: a failure the IRC decided before it looked at capacity
    (no miss reason: "Invalid request: …", or an internal error). They say nothing about the plan, so
    they are neither hits nor misses."""
    if "status" not in frame.columns or "miss_reason" not in frame.columns:
        return pd.Series(False, index=frame.index)
    return (frame["status"] == "failure") & frame["miss_reason"].isna()


def check_hit_rate(settings: Settings, interval: DataInterval, rules: AlertRules, report: MonitoringReport) -> None:
    """Share of capacity decisions served pre-allocated, per region; invalid requests are counted apart
    (`report.invalid_requests`), never as capacity misses."""
    outcomes = lake.read_time_range(settings.lake_root, "irc_outcomes", interval.start, interval.end, "requested_at")
    frame = outcomes.to_pandas()
    if frame.empty or "path" not in frame.columns:
        report.checked["hit_rate"] = "no data: no IRC requests in the hour"
        return
    region_column = "region" if "region" in frame.columns else "destination_region"
    invalid = invalid_requests(frame)
    counts = frame.loc[invalid, region_column].fillna(NO_REGION).astype(str).value_counts().sort_index()
    report.invalid_requests = {str(region): int(count) for region, count in counts.items()}
    frame = frame[frame[region_column].notna() & ~invalid]
    if frame.empty:
        report.checked["hit_rate"] = "no data: only invalid IRC requests in the hour"
        return
    by_region = frame.groupby(region_column)["path"].apply(lambda p: float((p == "preallocated").mean()))
    for region, rate in by_region.items():
        if rate < rules.hit_rate_target:
            severity = "critical" if rate < rules.hit_rate_target - CRITICAL_HIT_RATE_SHORTFALL else "warning"
            report.alerts.append(Alert(
                "hit_rate", severity, str(region), round(rate, 4), rules.hit_rate_target,
                f"{region}: {rate:.0%} of requests served from pre-allocation (target {rules.hit_rate_target:.0%})",
            ))
    report.checked["hit_rate"] = "ok"


def check_stale_plan(settings: Settings, interval: DataInterval, rules: AlertRules, report: MonitoringReport) -> None:
    from pipeline.plan import latest_plan_id, read_plan

    try:
        _, manifest = read_plan(settings, latest_plan_id(settings))
    except (FileNotFoundError, ValueError) as exc:  # ValueError: LATEST garbled or its plan fails its hash check
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


# ---------------------------------------------------------------------------------------------
# Airflow callbacks: task / run failures and missed deadlines, recorded like the rules above
# ---------------------------------------------------------------------------------------------

def _field(obj: Any, name: str) -> Any:
    """`obj.name` or `obj[name]`: Airflow hands callbacks objects (task SDK) or JSON dicts (deadlines)."""
    if obj is None:
        return None
    if isinstance(obj, Mapping):
        return obj.get(name)
    return getattr(obj, name, None)


def _utc(value: Any) -> datetime:
    """A plain UTC datetime from a datetime, a pendulum DateTime (via ISO: its arithmetic drops the zone) or a string."""
    return parse_utc(value.isoformat() if isinstance(value, datetime) else str(value))


def _token(interval_end: Any, run_id: str | None) -> str:
    """The interval token the monitor uses for the same hour, else a path-safe run id."""
    if interval_end:
        try:
            return DataInterval.ending_at(_utc(interval_end)).token
        except ValueError:
            pass
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", run_id or "unknown-run")


def record_alert(settings: Settings, alert: Alert, interval_end: Any, key: str, source: dict[str, Any],
                 rules: AlertRules | None = None) -> dict:
    """Write one alert as lake/alerts/<token>.<key>.json in the monitor's record format (its own file:
    the monitor task rewrites <token>.json), and POST it to the webhook if one is configured."""
    rules = rules or AlertRules.from_env()
    end = _utc(interval_end).isoformat() if interval_end else None
    payload = {**MonitoringReport(interval_end=end or "", alerts=[alert], checked={alert.rule: "ok"}).to_dict(), "source": source}
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", key)
    path = storage.join(settings.lake_root, "alerts", f"{_token(interval_end, source.get('run_id'))}.{slug}.json")
    lake.write_json_atomic(path, payload)
    delivered = post_webhook(rules.webhook_url, payload) if rules.webhook_url else None
    return {"path": path, "alert": asdict(alert), "webhook_delivered": delivered}


def _run_context(context: Mapping[str, Any]) -> dict[str, Any]:
    """dag_id, run_id, run_type and interval end from a task, DAG or deadline callback context."""
    dag_run = context.get("dag_run")
    ti = context.get("ti") or context.get("task_instance")
    dag = context.get("dag")
    run_type = _field(dag_run, "run_type")
    return {
        "dag_id": _field(dag, "dag_id") or _field(dag_run, "dag_id") or _field(ti, "dag_id"),
        "run_id": context.get("run_id") or _field(dag_run, "run_id") or _field(dag_run, "dag_run_id") or _field(ti, "run_id"),
        "run_type": str(getattr(run_type, "value", run_type)) if run_type else None,  # an enum or its value
        "interval_end": context.get("data_interval_end") or _field(dag_run, "data_interval_end"),
    }


def task_failed(context: Mapping[str, Any], settings: Settings | None = None, rules: AlertRules | None = None) -> dict | None:
    """`on_failure_callback` (task and DAG level): record a `task_failed` alert for the run's hour.

    A failed hourly run publishes no plan, so the IRC keeps serving the previous one; the alert
    says which task failed and why. Never raises: a broken alert path must not hide the failure.
    """
    try:
        run = _run_context(context)
        ti = context.get("ti") or context.get("task_instance")
        task_id = _field(ti, "task_id")
        map_index = _field(ti, "map_index")
        map_index = map_index if isinstance(map_index, int) and map_index >= 0 else None
        try_number = _field(ti, "try_number")
        exception = context.get("exception")
        reason = context.get("reason")
        run_level = "reason" in context  # the DAG-level callback (Airflow adds the run's end reason)
        subject = f"{task_id}[{map_index}]" if task_id and map_index is not None else (task_id or run["dag_id"] or "?")
        what = f"{exception.__class__.__name__}: {exception}" if exception is not None else (reason or "failed")
        if run_level:
            message = f"DAG run {run['dag_id']}/{run['run_id']} failed ({reason})" + (f"; last task {subject}" if task_id else "")
        else:
            message = f"task {run['dag_id']}.{subject} failed after try {try_number} in run {run['run_id']}: {what}"
        alert = Alert("task_failed", "critical", subject, float(try_number or 0), 0.0, message[:2000])
        source = {**run, "task_id": task_id, "map_index": map_index, "try_number": try_number, "callback": "dag" if run_level else "task"}
        source["interval_end"] = str(run["interval_end"]) if run["interval_end"] else None
        key = f"task_failed.{run['dag_id']}." + ("run" if run_level else subject)
        return record_alert(settings or Settings.from_env(), alert, run["interval_end"], key, source, rules)
    except Exception:
        log.exception("could not record the task_failed alert")
        return None


def deadline_missed(context: Mapping[str, Any], deadline_minutes: float | None = None, settings: Settings | None = None,
                    rules: AlertRules | None = None) -> dict | None:
    """Deadline Alert callback: the run was not done `deadline_minutes` after it was queued.

    Backfill runs are skipped: they are queued together and wait for each other by design, and
    a late backfill does not leave the live hour without a plan.
    """
    try:
        run = _run_context(context)
        if run["run_type"] == "backfill":
            log.info("deadline missed by backfill run %s: not alerting", run["run_id"])
            return None
        deadline = _field(context.get("deadline"), "deadline_time")
        minutes = float(deadline_minutes) if deadline_minutes is not None else 0.0
        state = _field(context.get("dag_run"), "state")
        message = (f"DAG run {run['dag_id']}/{run['run_id']} was not finished by its deadline {deadline}"
                   f" ({minutes:g} min after it was queued; state {state}): the plan for the hour after "
                   f"{run['interval_end']} is late and the IRC serves from the previous one")
        alert = Alert("deadline_missed", "warning", str(run["dag_id"]), minutes, minutes, message)
        source = {**run, "interval_end": str(run["interval_end"]) if run["interval_end"] else None,
                  "deadline_time": str(deadline) if deadline else None, "callback": "deadline"}
        return record_alert(settings or Settings.from_env(), alert, run["interval_end"], f"deadline_missed.{run['dag_id']}", source, rules)
    except Exception:
        log.exception("could not record the deadline_missed alert")
        return None
