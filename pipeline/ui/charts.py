"""Vega-Lite specs built with Altair: every chart zooms and pans (a scale-bound interval), shows a
tooltip, and carries its data inline, so the page needs nothing but the vendored Vega scripts.

Altair builds each chart's specification once per shape (which resources, which series title): the
views read named datasets (`{"name": "main"}`), and a request only puts its rows into the spec's
top-level `datasets`. Building and validating with Altair costs 0.1–0.7 s a chart; filling data, a
few milliseconds.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Hashable
from typing import Any

import altair as alt
import pandas as pd

VALIDATE = False  # the tests switch it on: every spec built is then checked against the Vega-Lite schema
WIDTH = "container"  # a single view fills its box
CONCAT_WIDTH = 900  # views of a concatenation: "container" would give each the whole box
_COLORS = {"demand quantile": "#1f77b4", "pre-allocated": "#d95f02", "actual": "#333333",
           "actual (later)": "#333333", "history": "#555555", "forecast mean": "#08519c", "q90": "#7b3294"}
_SKELETONS: dict[Hashable, str] = {}


def _iso(frame: pd.DataFrame, *columns: str) -> pd.DataFrame:
    """Times as ISO strings (Vega parses them; Altair would otherwise need pandas' tz handling)."""
    out = frame.copy()
    for column in columns:
        if column in out:
            out[column] = pd.to_datetime(out[column], utc=True).dt.strftime("%Y-%m-%dT%H:%M:%SZ")
    return out


def _rows(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """JSON-safe rows: NaN and NA become null (JSON has no NaN), numpy scalars plain numbers."""
    rows = json.loads(frame.to_json(orient="records", date_format="iso"))
    return [{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()} for r in rows]


def _filled(key: Hashable, build: Callable[[], alt.TopLevelMixin], **datasets: pd.DataFrame) -> dict[str, Any]:
    """The spec of `build()` (built once per `key`) with this request's rows as its named datasets."""
    if key not in _SKELETONS or VALIDATE:
        spec: dict[str, Any] = build().to_dict(validate=VALIDATE)
        spec["background"] = None  # the page's own colours show through in light and dark mode
        spec.pop("datasets", None)
        _SKELETONS[key] = json.dumps(spec)
    filled: dict[str, Any] = json.loads(_SKELETONS[key])
    filled["datasets"] = {name: _rows(frame) for name, frame in datasets.items()}
    return filled


def _data(name: str = "main") -> alt.NamedData:
    return alt.NamedData(name=name)


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
    resources = tuple(sorted(data["resource_type"].unique()))
    return _filled(("plan_region", resources), lambda: _plan_region_chart(resources), main=data)


def _plan_region_chart(resources: tuple[str, ...]) -> alt.ConcatChart:
    domain = ["demand quantile", "pre-allocated", "actual"]
    color = alt.Color("series:N", scale=alt.Scale(domain=domain, range=[_COLORS[s] for s in domain]))
    charts: list[alt.LayerChart | alt.FacetChart] = []
    for resource in resources:
        base = alt.Chart(_data()).transform_filter(alt.datum.resource_type == resource).encode(
            x=alt.X("valid_from:T", title="window (UTC)"), y=alt.Y("value:Q", title=resource), color=color,
            tooltip=["series:N", alt.Tooltip("valid_from:T", format="%Y-%m-%d %H:%M"), alt.Tooltip("value:Q", format=",.2f")])
        lines = base.transform_filter("datum.series != 'actual'").mark_line(interpolate="step-after", point=True)
        points = base.transform_filter("datum.series == 'actual'").mark_point(size=60, filled=True, shape="diamond")
        charts.append(alt.layer(lines, points).add_params(_zoom(f"zoom_{len(charts)}")).properties(width=260, height=160, title=resource))
    return alt.concat(*charts, columns=2)


def costs(frame: pd.DataFrame) -> dict[str, Any]:
    """Hourly cost of one window by instance type, stacked by purchase option."""
    def build() -> alt.Chart:
        return alt.Chart(_data()).mark_bar().encode(
            x=alt.X("instance_type:N", sort="-y", title="instance type"), y=alt.Y("sum(hourly_cost):Q", title="USD per hour"),
            color=alt.Color("purchase_option:N", scale=alt.Scale(domain=["on_demand", "spot"], range=["#3182bd", "#fd8d3c"])),
            tooltip=["instance_type:N", "purchase_option:N", alt.Tooltip("hourly_cost:Q", format="$,.2f"), "instances:Q"],
        ).properties(width=WIDTH, height=220)

    return _filled("costs", build, main=_iso(frame, "valid_from"))


def plan_history(frame: pd.DataFrame) -> dict[str, Any]:
    """Cost and optimality gap of every listed plan over time (zoom on x)."""
    def build() -> alt.VConcatChart:
        base = alt.Chart(_data()).encode(x=alt.X("made_at:T", title="plan made at (UTC)"),
                                         tooltip=["plan_id:N", "status:N", alt.Tooltip("hourly_cost_total:Q", format="$,.2f"),
                                                  alt.Tooltip("gap:Q", format=".3%")])
        cost = base.mark_line(point=True).encode(y=alt.Y("hourly_cost_total:Q", title="plan cost, USD per hour"))
        gap = base.mark_line(point=True, color="#7b3294").encode(y=alt.Y("gap:Q", title="optimality gap", axis=alt.Axis(format="%")))
        return alt.vconcat(cost.add_params(_zoom()).properties(width=CONCAT_WIDTH, height=180),
                           gap.properties(width=CONCAT_WIDTH, height=110))

    data = _iso(frame[["plan_id", "made_at", "hourly_cost_total", "gap", "status"]].dropna(subset=["made_at"]), "made_at")
    return _filled("plan_history", build, main=data)


def forecast(history: pd.DataFrame, rows: pd.DataFrame, later: pd.DataFrame, series_id: str) -> dict[str, Any]:
    """History, forecast mean, q90 and 80/95 % intervals, and what actually happened after the run, on one zoomable chart."""
    band = _iso(rows, "ds")
    lines = []
    if not history.empty:
        lines.append(_iso(history, "hour").rename(columns={"hour": "ds"}).assign(series="history"))
    if not band.empty:
        lines.append(band[["ds", "mean"]].rename(columns={"mean": "y"}).assign(series="forecast mean"))
        lines.append(band[["ds", "q90"]].rename(columns={"q90": "y"}).assign(series="q90"))
    if not later.empty:
        lines.append(_iso(later, "hour").rename(columns={"hour": "ds"}).assign(series="actual (later)"))
    data = pd.concat(lines)[["ds", "y", "series"]] if lines else pd.DataFrame(columns=["ds", "y", "series"])
    domain = tuple(s for s in ("history", "forecast mean", "q90", "actual (later)") if s in set(data["series"]))
    band_columns = ["ds", "lo_95", "hi_95", "lo_80", "hi_80"]
    return _filled(("forecast", series_id, domain), lambda: _forecast_chart(series_id, domain),
                   band=band[band_columns] if not band.empty else pd.DataFrame(columns=band_columns), main=data)


def _forecast_chart(series_id: str, domain: tuple[str, ...]) -> alt.LayerChart | alt.FacetChart:
    area = alt.Chart(_data("band")).encode(x=alt.X("ds:T", title="hour (UTC)"))
    enc = alt.Chart(_data()).encode(
        x=alt.X("ds:T", title="hour (UTC)"), y=alt.Y("y:Q", title=series_id),
        color=alt.Color("series:N", scale=alt.Scale(domain=list(domain), range=[_COLORS[s] for s in domain])),
        tooltip=["series:N", alt.Tooltip("ds:T", format="%Y-%m-%d %H:%M"), alt.Tooltip("y:Q", format=",.2f")])
    return alt.layer(
        area.mark_area(opacity=0.25, color="#9ecae1").encode(y=alt.Y("lo_95:Q", title=series_id), y2="hi_95:Q"),
        area.mark_area(opacity=0.35, color="#4292c6").encode(y="lo_80:Q", y2="hi_80:Q"),
        enc.transform_filter("datum.series != 'actual (later)'").mark_line(),
        enc.transform_filter("datum.series == 'actual (later)'").mark_point(filled=True, size=40),
    ).add_params(_zoom()).properties(width=WIDTH, height=320)


def hit_rate(frame: pd.DataFrame) -> dict[str, Any]:
    """IRC hit rate per destination region over time, zoomable; a legend click isolates a region."""
    def build() -> alt.Chart:
        pick = alt.selection_point(fields=["region"], bind="legend")
        return alt.Chart(_data()).mark_line(point=True).encode(
            x=alt.X("hour:T", title="UTC"), y=alt.Y("hit_rate:Q", title="served pre-allocated", axis=alt.Axis(format="%")),
            color="region:N", opacity=alt.when(pick).then(alt.value(1.0)).otherwise(alt.value(0.15)),
            tooltip=["region:N", alt.Tooltip("hour:T", format="%Y-%m-%d %H:%M"), alt.Tooltip("hit_rate:Q", format=".1%"),
                     "decisions:Q", "hits:Q", "on_demand:Q", "failures:Q"],
        ).add_params(_zoom(), pick).properties(width=WIDTH, height=260)

    return _filled("hit_rate", build, main=_iso(frame, "hour"))


def backtest(policies: pd.DataFrame) -> dict[str, Any]:
    """Cost per policy stacked by what it paid for, beside its hit rate."""
    paid_for = ["preallocation", "on_demand", "cold_start_penalty", "shortfall_penalty"]
    parts = policies.melt(id_vars=["policy", "hit_rate"], value_vars=paid_for, var_name="part", value_name="usd")

    def build() -> alt.HConcatChart:
        cost = alt.Chart(_data("parts")).mark_bar().encode(
            x=alt.X("policy:N"), y=alt.Y("sum(usd):Q", title="USD"), color="part:N",
            tooltip=["policy:N", "part:N", alt.Tooltip("usd:Q", format="$,.2f")])
        rate = alt.Chart(_data()).mark_bar(color="#31a354").encode(
            x="policy:N", y=alt.Y("hit_rate:Q", axis=alt.Axis(format="%"), title="hit rate"),
            tooltip=["policy:N", alt.Tooltip("hit_rate:Q", format=".1%")])
        return alt.hconcat(cost.properties(width=260, height=200), rate.properties(width=200, height=200))

    return _filled("backtest", build, parts=parts, main=policies[["policy", "hit_rate"]])
