"""What each page shows, as plain dicts for the templates: lake look-ups (lakeview), DuckDB queries
(queries), comparisons (compare) and chart specs (charts) put together. No HTTP here.
"""

from __future__ import annotations

import math
from datetime import datetime, timedelta
from typing import Any

import pandas as pd

from pipeline.common import plan_files
from pipeline.common.intervals import parse_utc
from pipeline.common.schemas import PLAN_ID_PATTERN
from pipeline.ui import charts, compare, lakeview, queries

DEFAULT_DAYS = 7
MAX_LIST = 2000
REASONS_SHOWN = 600


class NotFound(LookupError):
    """What the analyst asked for is not in the lake."""


def parse_time(value: str | None, name: str) -> datetime | None:
    """An optional UTC time from a query parameter (ValueError names the parameter)."""
    if not value:
        return None
    try:
        return parse_utc(value)
    except ValueError as exc:
        raise ValueError(f"{name}: {exc}") from exc


def records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """Rows for a template, NaN as None and times as text."""
    out = []
    for row in frame.to_dict("records"):
        out.append({k: (None if isinstance(v, float) and math.isnan(v) else
                        v.strftime("%Y-%m-%d %H:%M") if isinstance(v, datetime | pd.Timestamp) else v) for k, v in row.items()})
    return out


# -- plans ------------------------------------------------------------------------------------

def plans_list(root: str, start: datetime | None, end: datetime | None, status: str = "", applied_only: bool = False) -> dict[str, Any]:
    """Plans made in [start, end) (default: the week before the newest plan), newest first."""
    refs = lakeview.plan_refs(root)
    newest = max((r.made_at for r in refs if r.made_at), default=None)
    if start is None and end is None and newest is not None:
        start, end = newest - timedelta(days=DEFAULT_DAYS) + timedelta(hours=1), newest + timedelta(hours=1)
    chosen = [r for r in refs if r.made_at is None or ((start is None or r.made_at >= start) and (end is None or r.made_at < end))]
    latest, applied = lakeview.pointer(root, plan_files.LATEST_FILE), lakeview.pointer(root, "APPLIED")
    alerts = lakeview.alerts_by_token(root, start, end)
    rows = []
    for ref in reversed(chosen[-MAX_LIST:]):
        summary = lakeview.plan_summary(root, ref.plan_id)
        token = f"{ref.made_at:%Y%m%dT%H%MZ}" if ref.made_at else ""
        rows.append({**summary, "made_at": ref.made_at, "latest": ref.plan_id == latest, "applied": ref.plan_id == applied,
                     "alerts": len(alerts.get(token, []))})
    if status:
        rows = [r for r in rows if r.get("status") == status]
    if applied_only:
        rows = [r for r in rows if r["applied"]]
    frame = pd.DataFrame(rows)
    chart = charts.plan_history(frame) if not frame.empty and "hourly_cost_total" in frame else None
    return {"plans": rows, "start": start, "end": end, "latest": latest, "applied": applied, "status": status,
            "applied_only": applied_only, "chart_history": chart, "total": len(refs), "truncated": len(chosen) > MAX_LIST}


def _load_plan(root: str, plan_id: str) -> tuple[int, dict[str, Any]]:
    if not PLAN_ID_PATTERN.match(plan_id):
        raise NotFound(f"{plan_id[:140]!r} is not a plan id")
    try:
        return lakeview.reader_attempt(root, plan_id)
    except FileNotFoundError as exc:
        raise NotFound(str(exc)) from exc


def plan_detail(root: str, plan_id: str, window: int = 0, region: str = "", search: str = "") -> dict[str, Any]:
    """One plan: per region and resource demand quantile vs pre-allocated vs actual, costs, tiers, lines and reasons."""
    attempt, manifest = _load_plan(root, plan_id)
    table = queries.plan_table(root, plan_id, attempt)
    with queries.Query(root) as q:
        view = q.view_table(table)
        windows = queries.plan_windows(q, view)
        if windows and not 0 <= window < len(windows):
            raise ValueError(f"window {window} out of range: the plan has {len(windows)} windows (0..{len(windows) - 1})")
        at = windows[window] if windows else None
        cells = queries.plan_cells(q, view, table)
        regions = sorted(cells["region"].unique()) if not cells.empty else []
        region = region if region in regions else (regions[0] if regions else "")
        actual = queries.actual_demand(q, windows[0], windows[-1] + timedelta(hours=1)) if windows else pd.DataFrame()
        lines = queries.plan_lines(q, view, table, at) if at is not None else pd.DataFrame()
        costs = queries.plan_costs(q, view)
        reasons = _reasons(q, view, at, region, search)
    shown = _with_actual(cells[cells["valid_from"] == at] if at is not None else cells, actual)
    cost_window = costs[costs["valid_from"] == at] if at is not None else costs
    return {
        "plan_id": plan_id, "attempt": attempt, "manifest": manifest, "windows": [w.strftime("%Y-%m-%d %H:%M") for w in windows],
        "window": window, "regions": regions,
        "window_start": f"{at:%Y-%m-%dT%H:%M}" if at else "",
        "window_end": f"{at + timedelta(hours=1):%Y-%m-%dT%H:%M}" if at else "", "region": region, "search": search,
        "cells": records(shown), "lines": records(_tiers(lines)), "costs": records(cost_window),
        "reasons": records(reasons.head(REASONS_SHOWN)), "reasons_total": len(reasons),
        "has_actual": not actual.empty,
        "chart_region": charts.plan_region(cells, actual, region) if region else None,
        "chart_costs": charts.costs(cost_window) if not cost_window.empty else None,
        "applied": lakeview.pointer(root, "APPLIED") == plan_id, "latest": lakeview.pointer(root, plan_files.LATEST_FILE) == plan_id,
    }


def _reasons(q: queries.Query, view: str, at: datetime | None, region: str, search: str) -> pd.DataFrame:
    """With a search: matching reasons of every window and region; without: the shown window's, one region."""
    if search:
        return q.df(f"""SELECT line_id, valid_from, region, resource_type, instance_type, purchase_option, reason FROM {view}
                        WHERE contains(lower(reason), lower(?)) OR contains(lower(line_id), lower(?))
                        ORDER BY valid_from, region, instance_type, purchase_option, resource_type""", [search, search])
    return q.df(f"""SELECT line_id, valid_from, region, resource_type, instance_type, purchase_option, reason FROM {view}
                    WHERE valid_from = ? AND region = ? ORDER BY instance_type, purchase_option, resource_type""", [at, region])


def _with_actual(cells: pd.DataFrame, actual: pd.DataFrame) -> pd.DataFrame:
    out = cells.copy()
    if actual.empty:
        out["actual"] = None
    else:
        seen = actual.rename(columns={"hour": "valid_from"})
        out = out.merge(seen, on=["valid_from", "region", "resource_type"], how="left")
    out["covered"] = [None if a is None or pd.isna(a) else bool(h + 1e-9 >= a) for a, h in zip(out["actual"], out["pre_allocated"])]
    return out


def _tiers(lines: pd.DataFrame) -> pd.DataFrame:
    """Running instances per line, and the warm pool the IaC keeps beside it (pipeline.iac.model: the
    plan's warm_count, or the fixed fraction for plans without a warm tier)."""
    if lines.empty:
        return lines
    from pipeline.iac.model import warm_pool_size

    out = lines.copy()
    out["running"] = out["count"]
    planned = [None if w is None or pd.isna(w) else int(w) for w in out.get("warm_count", pd.Series([None] * len(out)))]
    out["warm"] = [warm_pool_size(int(c), o, w) for c, o, w in zip(out["count"], out["purchase_option"], planned)]
    return out


# -- compare ----------------------------------------------------------------------------------

def default_pair(root: str) -> tuple[str | None, str | None]:
    """(A, B) when none is named: the applied plan vs LATEST; without an applied one, the plan before LATEST."""
    latest = lakeview.pointer(root, plan_files.LATEST_FILE)
    applied = lakeview.pointer(root, "APPLIED")
    if applied and applied != latest:
        return applied, latest
    ids = [r.plan_id for r in lakeview.plan_refs(root)]
    if latest in ids and ids.index(latest) > 0:
        return ids[ids.index(latest) - 1], latest
    return (ids[-2], ids[-1]) if len(ids) > 1 else (None, latest)


def _plan_frame(root: str, plan_id: str) -> tuple[pd.DataFrame, dict[str, Any]]:
    attempt, manifest = _load_plan(root, plan_id)
    return queries.plan_table(root, plan_id, attempt).to_pandas(), manifest


def compare_page(root: str, a: str | None, b: str | None, window: int = 0) -> dict[str, Any]:
    """Two plans side by side; A and B default to default_pair()."""
    da, db = default_pair(root)
    a, b = a or da, b or db
    ids = [r.plan_id for r in reversed(lakeview.plan_refs(root))]
    out: dict[str, Any] = {"a": a, "b": b, "window": window, "plan_ids": ids, "result": None}
    if not a or not b:
        return out
    (pa_, ma), (pb, mb) = _plan_frame(root, a), _plan_frame(root, b)
    result = compare.compare(pa_, pb, window)
    out["result"] = {**result, "regions": records(result["regions"]), "lines": records(result["lines"]),
                     "capacity": records(result["capacity"])}
    out["summary_a"], out["summary_b"] = lakeview.summarise(ma), lakeview.summarise(mb)
    return out
