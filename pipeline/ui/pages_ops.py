"""Forecast, operations and request pages, as plain dicts for the templates (see pipeline.ui.pages)."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from typing import Any

import pandas as pd

from pipeline.common import storage
from pipeline.common.schemas import REGION_PATTERN
from pipeline.ui import charts, lakeview, queries
from pipeline.ui.pages import NotFound, records

KINDS = ("region", "pair", "inbound", "fresh")
SERIES_SHOWN = 500
CHART_POINTS = 2000  # points of the hit-rate chart (SVG stays light; Altair inlines at most 5,000 rows)
HISTORY_DAYS = 7


def _run_or_newest(root: str, run_id: str | None) -> tuple[str | None, list[str]]:
    runs = queries.forecast_runs(root)
    if run_id and run_id not in runs:
        raise NotFound(f"forecast run {run_id[:140]!r} is not in {storage.join(root, 'forecasts')}")
    return (run_id or (runs[0] if runs else None)), runs


def _selection_row(series_id: str, sel: dict[str, Any]) -> dict[str, Any]:
    pinball = sel.get("pinball_at_tau") or {}
    model = sel.get("model", "")
    return {"series_id": series_id, "kind": series_id.split(":", 1)[0], "model": model, "members": ", ".join(sel.get("members") or []),
            "quantile_method": sel.get("quantile_method"), "vs_snaive": sel.get("quantile_cv_vs_snaive"),
            "pinball": pinball.get(model), "pinball_snaive": pinball.get("seasonal_naive"),
            "coverage80": (sel.get("quantile_cv_coverage") or {}).get("80")}


def forecast_search(root: str, run_id: str | None, search: str = "", kind: str = "") -> dict[str, Any]:
    """Series of a forecast run matching `search` (region, pair or aggregate), with the chosen model,
    quantile method and CV pinball against seasonal naive."""
    run_id, runs = _run_or_newest(root, run_id)
    out: dict[str, Any] = {"run": run_id, "runs": runs, "search": search, "kind": kind, "kinds": KINDS, "series": [], "engine": {}}
    if run_id is None:
        return out
    manifest = lakeview.forecast_manifest(root, run_id)
    selection = manifest.get("selection") or {}
    with queries.Query(root) as q:
        listed = queries.forecast_series(q, run_id)
    ids = sorted(set(selection) | set(listed["series_id"]))
    needle = search.strip().lower().replace("->", "→")
    rows = [_selection_row(sid, selection.get(sid, {})) for sid in ids
            if (not needle or needle in sid.lower()) and (not kind or sid.startswith(kind + ":"))]
    charted = set(listed["series_id"])
    for row in rows:
        row["charted"] = row["series_id"] in charted
    out.update(series=rows[:SERIES_SHOWN], matched=len(rows), engine=manifest.get("engine") or {},
               models=manifest.get("models") or [], tau=manifest.get("tau"))
    return out


def forecast_series(root: str, run_id: str | None, series_id: str) -> dict[str, Any]:
    """One series: history, forecast with intervals and later actuals on one chart; its CV scores."""
    run_id, runs = _run_or_newest(root, run_id)
    if run_id is None:
        raise NotFound("no forecast run in the lake")
    manifest = lakeview.forecast_manifest(root, run_id)
    sel = (manifest.get("selection") or {}).get(series_id, {})
    with queries.Query(root) as q:
        rows = queries.forecast_rows(q, run_id, series_id)
        made = lakeview.token_time(run_id)
        if rows.empty and not sel:
            raise NotFound(f"series {series_id[:200]!r} is not in forecast run {run_id}")
        history = later = pd.DataFrame(columns=["hour", "y"])
        if made is not None:
            history = queries.series_history(q, series_id, made - timedelta(days=HISTORY_DAYS), made)
            if not rows.empty:
                horizon_end = rows["ds"].max().to_pydatetime() + timedelta(hours=1)
                later = queries.series_history(q, series_id, made, horizon_end)
    scores = [{"model": m, "pinball": v, "mase": (sel.get("mase") or {}).get(m), "score": (sel.get("score") or {}).get(m)}
              for m, v in sorted((sel.get("pinball_at_tau") or {}).items(), key=lambda kv: kv[1])]
    methods = sorted((sel.get("quantile_cv_pinball") or {}).items(), key=lambda kv: kv[1])
    return {"run": run_id, "runs": runs, "series_id": series_id, "selection": _selection_row(series_id, sel) if sel else None,
            "scores": scores, "methods": [{"method": k, "pinball": v} for k, v in methods],
            "coverage": sel.get("quantile_cv_coverage") or {}, "steps": len(rows), "later": len(later),
            "forecast": records(rows.head(72)), "chart_series": charts.forecast(history, rows, later, series_id)}


def operations(root: str, start: datetime | None, end: datetime | None, search: str = "") -> dict[str, Any]:
    """Backtests, IRC outcomes (hit rate over time per region), quarantined rows with reasons, alerts."""
    end = end or _newest_hour(root)
    start = start or end - timedelta(days=HISTORY_DAYS)
    with queries.Query(root) as q:
        hits = queries.irc_hit_rate(q, start, end)
        totals, rows = queries.quarantined(q, start, end, search)
    by_region = (hits.groupby("region", as_index=False)[["decisions", "hits", "on_demand", "failures", "invalid"]].sum()
                 if not hits.empty else pd.DataFrame())
    if not by_region.empty:
        by_region["hit_rate"] = by_region["hits"] / by_region["decisions"].where(by_region["decisions"] > 0)
    alerts = [a for token, items in sorted(lakeview.alerts_by_token(root, start, end + timedelta(hours=1)).items(), reverse=True)
              for a in items]
    tests = lakeview.backtests(root)
    policies = pd.DataFrame([{"policy": name, "hit_rate": p.get("hit_rate"), "requests": p.get("requests"),
                              "failures": p.get("failures"), "cost_vs_oracle": p.get("cost_vs_oracle"), **(p.get("cost") or {})}
                             for name, p in (tests[0].get("policies") or {}).items()]) if tests else pd.DataFrame()
    return {"start": start, "end": end, "search": search, "hit_by_region": records(by_region),
            "chart_hits": charts.hit_rate(_coarsen(hits)) if not hits.empty else None, "bucket_hours": _bucket_hours(hits),
            "quarantine_totals": records(totals), "quarantine": records(rows), "alerts": alerts,
            "backtest": tests[0] if tests else None, "policies": records(policies),
            "chart_backtest": charts.backtest(policies) if not policies.empty else None}


def _bucket_hours(hits: pd.DataFrame) -> int:
    """Hours per charted point: hourly while the chart holds at most CHART_POINTS points, else coarser."""
    return max(1, math.ceil(len(hits) / CHART_POINTS))


def _coarsen(hits: pd.DataFrame) -> pd.DataFrame:
    """Hit rate per region over buckets of _bucket_hours() hours (counts summed, the rate recomputed)."""
    hours = _bucket_hours(hits)
    frame = hits.assign(hour=pd.to_datetime(hits["hour"], utc=True).dt.floor(f"{hours}h")) if hours > 1 else hits
    counts = ["decisions", "hits", "on_demand", "failures", "invalid"]
    out = frame.groupby(["hour", "region"], as_index=False)[counts].sum()
    out["hit_rate"] = out["hits"] / out["decisions"].where(out["decisions"] > 0)
    return out.dropna(subset=["hit_rate"])


def _newest_hour(root: str) -> datetime:
    """The end of the newest plan's interval (data-relative, never the wall clock)."""
    refs = [r.made_at for r in lakeview.plan_refs(root) if r.made_at]
    if refs:
        return max(refs) + timedelta(hours=1)
    found = lakeview.runs(root, "forecasts")
    if found:
        return found[-1][0] + timedelta(hours=1)
    return datetime.now(UTC).replace(minute=0, second=0, microsecond=0)  # an empty lake: nothing to be relative to


def requests_page(root: str, region: str, start: datetime, end: datetime) -> dict[str, Any]:
    """Peering requests into `region` active in [start, end): what a plan window's demand was made of."""
    if not REGION_PATTERN.match(region):
        raise ValueError(f"region: {region[:100]!r} is not a region name")
    if end <= start or end - start > timedelta(days=2):
        raise ValueError("the window must be positive and at most 2 days long")
    with queries.Query(root) as q:
        frame = queries.requests_for(q, region, start, end)
    return {"region": region, "start": start, "end": end, "requests": records(frame), "count": len(frame)}
