"""Vega-Lite specs built with Altair: every chart zooms and pans (a scale-bound interval), shows a
tooltip, and carries its data inline, so the page needs nothing but the vendored Vega scripts.
"""

from __future__ import annotations

from typing import Any

import altair as alt
import pandas as pd

WIDTH = "container"  # a single view fills its box
CONCAT_WIDTH = 900  # views of a concatenation: "container" would give each the whole box
_COLORS = {"demand quantile": "#1f77b4", "pre-allocated": "#d95f02", "counted": "#e6ab02", "actual": "#333333",
           "actual (later)": "#333333", "history": "#555555", "forecast mean": "#08519c", "q90": "#7b3294"}


def _iso(frame: pd.DataFrame, *columns: str) -> pd.DataFrame:
    """Times as ISO strings (Vega parses them; Altair would otherwise need pandas' tz handling)."""
    out = frame.copy()
    for column in columns:
        if column in out:
            out[column] = pd.to_datetime(out[column], utc=True).dt.strftime("%Y-%m-%dT%H:%M:%SZ")
    return out


def _spec(chart: alt.TopLevelMixin) -> dict[str, Any]:
    spec: dict[str, Any] = chart.to_dict()
    spec["background"] = None  # the page's own colours show through in light and dark mode
    return spec


def _zoom(name: str = "zoom") -> alt.Parameter:
    return alt.selection_interval(bind="scales", encodings=["x"], name=name)


def plan_region(cells: pd.DataFrame, actual: pd.DataFrame, region: str) -> dict[str, Any]:
    """One region of a plan: per resource, τ-quantile demand vs pre-allocated vs what actually occurred, per window."""
    rows = cells[cells["region"] == region]
    parts = [rows.assign(series="demand quantile", value=rows["demand_quantile"]),
             rows.assign(series="pre-allocated", value=rows["pre_allocated"])]
    long = pd.concat(parts)[["valid_from", "resource_type", "series", "value"]]
    seen = actual[actual["region"] == region].rename(columns={"hour": "valid_from", "actual": "value"})
    if not seen.empty:
        long = pd.concat([long, seen.assign(series="actual")[["valid_from", "resource_type", "series", "value"]]])
    data = _iso(long, "valid_from")
    color = alt.Color("series:N", scale=alt.Scale(domain=["demand quantile", "pre-allocated", "actual"],
                                                  range=[_COLORS["demand quantile"], _COLORS["pre-allocated"], _COLORS["actual"]]))
    charts: list[alt.LayerChart] = []
    for resource in sorted(data["resource_type"].unique()):
        base = alt.Chart(data[data["resource_type"] == resource]).encode(
            x=alt.X("valid_from:T", title="window (UTC)"), y=alt.Y("value:Q", title=resource), color=color,
            tooltip=["series:N", alt.Tooltip("valid_from:T", format="%Y-%m-%d %H:%M"), alt.Tooltip("value:Q", format=",.2f")])
        lines = base.transform_filter("datum.series != 'actual'").mark_line(interpolate="step-after", point=True)
        points = base.transform_filter("datum.series == 'actual'").mark_point(size=60, filled=True, shape="diamond")
        charts.append((lines + points).add_params(_zoom(f"zoom_{len(charts)}")).properties(width=260, height=160, title=resource))
    return _spec(alt.concat(*charts, columns=2))


def costs(frame: pd.DataFrame) -> dict[str, Any]:
    """Hourly cost of one window by instance type, stacked by purchase option."""
    chart = alt.Chart(frame).mark_bar().encode(
        x=alt.X("instance_type:N", sort="-y", title="instance type"), y=alt.Y("sum(hourly_cost):Q", title="USD per hour"),
        color=alt.Color("purchase_option:N", scale=alt.Scale(domain=["on_demand", "spot"], range=["#3182bd", "#fd8d3c"])),
        tooltip=["instance_type:N", "purchase_option:N", alt.Tooltip("hourly_cost:Q", format="$,.2f"), "instances:Q"],
    ).properties(width=WIDTH, height=220)
    return _spec(chart)


def plan_history(frame: pd.DataFrame) -> dict[str, Any]:
    """Cost and optimality gap of every listed plan over time (zoom on x)."""
    data = _iso(frame[["plan_id", "made_at", "hourly_cost_total", "gap", "status"]].dropna(subset=["made_at"]), "made_at")
    base = alt.Chart(data).encode(x=alt.X("made_at:T", title="plan made at (UTC)"),
                                  tooltip=["plan_id:N", "status:N", alt.Tooltip("hourly_cost_total:Q", format="$,.2f"),
                                           alt.Tooltip("gap:Q", format=".3%")])
    cost = base.mark_line(point=True).encode(y=alt.Y("hourly_cost_total:Q", title="plan cost, USD per hour"))
    gap = base.mark_line(point=True, color="#7b3294").encode(y=alt.Y("gap:Q", title="optimality gap", axis=alt.Axis(format="%")))
    return _spec(alt.vconcat(cost.add_params(_zoom()).properties(width=CONCAT_WIDTH, height=180),
                             gap.properties(width=CONCAT_WIDTH, height=110)))


def forecast(history: pd.DataFrame, rows: pd.DataFrame, later: pd.DataFrame, series_id: str) -> dict[str, Any]:
    """History, forecast mean, q90 and 80/95 % intervals, and what actually happened after the run, on one zoomable chart."""
    band = _iso(rows, "ds")
    layers: list[alt.Chart] = []
    if not band.empty:
        area = alt.Chart(band).encode(x=alt.X("ds:T", title="hour (UTC)"))
        layers += [area.mark_area(opacity=0.25, color="#9ecae1").encode(y=alt.Y("lo_95:Q", title=series_id), y2="hi_95:Q"),
                   area.mark_area(opacity=0.35, color="#4292c6").encode(y="lo_80:Q", y2="hi_80:Q")]
    lines = []
    if not history.empty:
        lines.append(_iso(history, "hour").rename(columns={"hour": "ds"}).assign(series="history"))
    if not band.empty:
        lines.append(band[["ds", "mean"]].rename(columns={"mean": "y"}).assign(series="forecast mean"))
        lines.append(band[["ds", "q90"]].rename(columns={"q90": "y"}).assign(series="q90"))
    if not later.empty:
        lines.append(_iso(later, "hour").rename(columns={"hour": "ds"}).assign(series="actual (later)"))
    if lines:
        data = pd.concat(lines)[["ds", "y", "series"]]
        domain = [s for s in ("history", "forecast mean", "q90", "actual (later)") if s in set(data["series"])]
        enc = alt.Chart(data).encode(
            x=alt.X("ds:T", title="hour (UTC)"), y=alt.Y("y:Q", title=series_id),
            color=alt.Color("series:N", scale=alt.Scale(domain=domain, range=[_COLORS[s] for s in domain])),
            tooltip=["series:N", alt.Tooltip("ds:T", format="%Y-%m-%d %H:%M"), alt.Tooltip("y:Q", format=",.2f")])
        layers.append(enc.transform_filter("datum.series != 'actual (later)'").mark_line())
        layers.append(enc.transform_filter("datum.series == 'actual (later)'").mark_point(filled=True, size=40))
    chart = alt.layer(*layers).add_params(_zoom()).properties(width=WIDTH, height=320)
    return _spec(chart)


def hit_rate(frame: pd.DataFrame) -> dict[str, Any]:
    """IRC hit rate per destination region over time (hour), zoomable; a legend click isolates a region."""
    pick = alt.selection_point(fields=["region"], bind="legend")
    chart = alt.Chart(_iso(frame, "hour")).mark_line(point=True).encode(
        x=alt.X("hour:T", title="hour (UTC)"), y=alt.Y("hit_rate:Q", title="served pre-allocated", axis=alt.Axis(format="%")),
        color="region:N", opacity=alt.condition(pick, alt.value(1.0), alt.value(0.15)),
        tooltip=["region:N", alt.Tooltip("hour:T", format="%Y-%m-%d %H:%M"), alt.Tooltip("hit_rate:Q", format=".1%"),
                 "decisions:Q", "hits:Q", "on_demand:Q", "failures:Q"],
    ).add_params(_zoom(), pick).properties(width=WIDTH, height=260)
    return _spec(chart)


def backtest(policies: pd.DataFrame) -> dict[str, Any]:
    """Cost per policy stacked by what it paid for, beside its hit rate."""
    paid_for = ["preallocation", "on_demand", "cold_start_penalty", "shortfall_penalty"]
    parts = policies.melt(id_vars=["policy", "hit_rate"], value_vars=paid_for, var_name="part", value_name="usd")
    cost = alt.Chart(parts).mark_bar().encode(x=alt.X("policy:N"), y=alt.Y("sum(usd):Q", title="USD"), color="part:N",
                                              tooltip=["policy:N", "part:N", alt.Tooltip("usd:Q", format="$,.2f")])
    rate = alt.Chart(policies).mark_bar(color="#31a354").encode(
        x="policy:N", y=alt.Y("hit_rate:Q", axis=alt.Axis(format="%"), title="hit rate"),
        tooltip=["policy:N", alt.Tooltip("hit_rate:Q", format=".1%")])
    return _spec(alt.hconcat(cost.properties(width=260, height=200), rate.properties(width=200, height=200)))
