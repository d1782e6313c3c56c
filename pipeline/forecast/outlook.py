"""The 14-day outlook: what the daily run forecasts, shaped for capacity reviews.

The daily run (`peerscale_daily`, forecast runs `daily-<token>`) forecasts each region's daily peak
concurrency per resource and each pair's daily request volume. `plan show` and the plan report read
the newest daily run made at or before the plan, so a capacity engineer sees today's pre-allocation
next to the two weeks ahead.
"""

from __future__ import annotations

import pandas as pd

from pipeline.common import lake, storage
from pipeline.common.config import Settings
from pipeline.common.schemas import FORECAST_QUANTILES, parse_series_id
from pipeline.forecast.engine import read_forecast
from pipeline.forecast.quantiles import interpolate_quantile, quantile_column

DAILY_PREFIX = "run=daily-"


def latest_daily_run(settings: Settings, as_of: pd.Timestamp | None = None) -> str | None:
    """The newest daily forecast run id whose interval ended at or before `as_of` (None: no such run)."""
    root = storage.join(settings.lake_root, "forecasts")
    if not storage.exists(root):
        return None
    cutoff = None if as_of is None else pd.Timestamp(as_of).tz_convert("UTC")
    runs = []
    for name in storage.list_names(root):
        if not name.startswith(DAILY_PREFIX):
            continue
        try:
            end = pd.Timestamp(name[len(DAILY_PREFIX):].replace("Z", ""), tz="UTC")
        except ValueError:
            continue  # not a run this code wrote
        if (cutoff is None or end <= cutoff) and storage.exists(storage.join(lake.forecast_dir(settings.lake_root, name[4:]),
                                                                            "forecast.parquet")):
            runs.append((end, name[4:]))
    return max(runs)[1] if runs else None


def daily_outlook(settings: Settings, as_of: pd.Timestamp | None, tau: float) -> tuple[str | None, pd.DataFrame]:
    """(run id, rows kind, region or pair, measure, day, q50, q_tau, q95) of the newest daily run at `as_of`."""
    run_id = latest_daily_run(settings, as_of)
    if run_id is None:
        return None, pd.DataFrame(columns=["kind", "name", "measure", "day", "q50", "q_tau", "q95"])
    forecast = read_forecast(settings, run_id)
    parts = forecast["series_id"].map(parse_series_id)
    kind = parts.map(lambda p: p["kind"])
    name = parts.map(lambda p: p.get("region") or f"{p.get('source_region')}→{p.get('destination_region')}")
    quantiles = {q: forecast[quantile_column(q)].to_numpy(float) for q in FORECAST_QUANTILES}
    out = pd.DataFrame({
        "kind": kind, "name": name, "measure": parts.map(lambda p: p["measure"]),
        "day": pd.to_datetime(forecast["ds"], utc=True),
        "q50": forecast[quantile_column(0.5)].to_numpy(float),
        "q_tau": interpolate_quantile(quantiles, tau),
        "q95": forecast[quantile_column(0.95)].to_numpy(float),
    })
    out = out[out["kind"].isin(["region", "pair"])]
    return run_id, out.sort_values(["kind", "name", "measure", "day"], ignore_index=True)


def outlook_summary(outlook: pd.DataFrame, kind: str = "region") -> list[dict]:
    """Per series of `kind`: the busiest day and its q50 / q_tau / q95, and the days' total for volumes."""
    rows = []
    for (name, measure), group in outlook[outlook["kind"] == kind].groupby(["name", "measure"], sort=True):
        busiest = group.loc[group["q_tau"].idxmax()]
        rows.append({"name": name, "measure": measure, "days": len(group), "busiest_day": busiest["day"].date().isoformat(),
                     "q50": round(float(busiest["q50"]), 3), "q_tau": round(float(busiest["q_tau"]), 3),
                     "q95": round(float(busiest["q95"]), 3), "total_q50": round(float(group["q50"].sum()), 3)})
    return rows


def plan_outlook(settings: Settings, manifest: dict) -> dict | None:
    """The outlook next to a plan: the newest daily run made at or before it, at the plan's strictest τ
    (None when no daily run exists yet). JSON-ready: what `plan show --json` and the report print."""
    as_of = pd.Timestamp(manifest.get("data_interval", {}).get("end") or manifest.get("valid_from"))
    tau = max((manifest.get("tau") or {"vcpu": 0.9}).values())
    run_id, frame = daily_outlook(settings, as_of, tau)
    if run_id is None:
        return None
    pairs = sorted(outlook_summary(frame, "pair"), key=lambda p: -p["total_q50"])
    return {"daily_run": run_id, "tau": tau, "regions": outlook_summary(frame, "region"), "pairs": pairs,
            "daily": [{**r, "day": r["day"].date().isoformat()} for r in frame.to_dict("records")]}


__all__ = ["daily_outlook", "latest_daily_run", "outlook_summary", "plan_outlook"]
