"""The analyst's report: one self-contained HTML page per plan (plots inlined as PNG).

It answers at a glance: what will be held per region, against what demand, at what cost,
and why — forecast vs recent actuals with intervals, pre-allocation vs the demand quantile,
cost by region and purchase option, the data that was quarantined, and every line's reason.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Mapping
from datetime import datetime, timedelta
from pathlib import Path
from types import ModuleType
from typing import Any, Protocol

import pandas as pd
from jinja2 import Environment, FileSystemLoader, select_autoescape
from markupsafe import Markup

from pipeline.common import lake, storage
from pipeline.common.config import Settings
from pipeline.common.intervals import DataInterval
from pipeline.common.parallel import cores_available, fork_map
from pipeline.common.schemas import region_series_id
from pipeline.features.build import read_features
from pipeline.forecast import read_forecast
from pipeline.forecast.outlook import plan_outlook
from pipeline.plan import read_plan

TEMPLATES = str(Path(__file__).parent / "templates")


def _templates() -> Environment:
    """The report templates, every value HTML-escaped: a region, reason or id holding `<script>` is
    shown as text. `select_autoescape(["html"])` alone missed them (they end in `.html.j2`)."""
    return Environment(loader=FileSystemLoader(TEMPLATES), autoescape=select_autoescape(["html", "html.j2"], default=True))


def _pyplot() -> ModuleType:
    """matplotlib.pyplot on the headless Agg backend, imported only when a figure is drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png(fig: Any) -> Markup:
    """The figure as a data: URI, marked safe on purpose: base64 of our own PNG, the only raw HTML value."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    return Markup("data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii"))


MAX_FIGURE_REGIONS = 12  # subplots per figure; every region stays in the tables


def figure_regions(history: pd.DataFrame, regions: list[str], resource: str) -> list[str]:
    """The regions a figure draws: all of them up to MAX_FIGURE_REGIONS, else the busiest by recent peak
    demand (drawing hundreds of subplots costs minutes and shows nothing), in alphabetical order."""
    if len(regions) <= MAX_FIGURE_REGIONS:
        return regions
    peaks = history.groupby("region")[resource].max().reindex(regions).fillna(0.0)
    return sorted(peaks.sort_values(ascending=False, kind="stable").index[:MAX_FIGURE_REGIONS])


def _forecast_figure(history: pd.DataFrame, forecast: pd.DataFrame, plan: pd.DataFrame, regions: list[str], resource: str) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    regions = figure_regions(history, regions, resource)
    cols = 2
    rows = (len(regions) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(12, 2.6 * rows), squeeze=False, sharex=True)
    by_region = dict(tuple(history.groupby("region", sort=False)))  # one pass over the history, not one per region
    by_series = dict(tuple(forecast[forecast["series_id"].isin([region_series_id(r, resource) for r in regions])]
                           .groupby("series_id", sort=False)))
    empty = forecast.iloc[:0]
    for ax, region in zip(axes.flat, regions):
        h = by_region.get(region, history.iloc[:0])
        ax.plot(h["hour"], h[resource], color="#444", lw=1, label="actual (peak concurrent)")
        f = by_series.get(region_series_id(region, resource), empty)
        if not f.empty:
            ax.fill_between(f["ds"], f["lo_95"], f["hi_95"], color="#9ecae1", alpha=0.5, label="95% interval")
            ax.fill_between(f["ds"], f["lo_80"], f["hi_80"], color="#4292c6", alpha=0.5, label="80% interval")
            ax.plot(f["ds"], f["mean"], color="#08519c", lw=1.2, label=f"forecast ({f['model'].iloc[0]})")
        p = plan[(plan["region"] == region) & (plan["resource_type"] == resource)]
        if not p.empty:
            held = p.groupby("valid_from")["quantity"].sum()
            ax.step(held.index, held.values, where="post", color="#d94801", lw=2, label="pre-allocated")
            planned_for = p.groupby("valid_from")["demand_quantile"].first()  # per plan window, whatever its length
            ax.step(planned_for.index, planned_for.values, where="post", color="#6a51a3", lw=1, ls="--", label="τ-quantile planned for")
        ax.set_title(region, fontsize=10)
        ax.tick_params(labelsize=8)
    for ax in list(axes.flat)[len(regions):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7, loc="upper left")
    fig.suptitle(f"{resource}: recent demand, forecast with intervals, and the plan", fontsize=11)
    fig.autofmt_xdate()
    image = _png(fig)
    plt.close(fig)
    return image


def _cost_figure(plan: pd.DataFrame) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    first = plan[plan["valid_from"] == plan["valid_from"].min()]
    cost = first.groupby(["region", "purchase_option"])["hourly_cost"].sum().unstack(fill_value=0.0)
    fig, ax = plt.subplots(figsize=(8, 3))
    cost.plot(kind="bar", stacked=True, ax=ax, color={"on_demand": "#3182bd", "spot": "#fd8d3c"})
    ax.set_ylabel("USD per hour")
    ax.set_title("Hourly cost of the first window by region and purchase option", fontsize=10)
    ax.tick_params(axis="x", rotation=0, labelsize=8)
    image = _png(fig)
    plt.close(fig)
    return image


def _quarantine_counts(settings: Settings, interval: DataInterval) -> list[dict]:
    rows = []
    for dataset in ("peering_requests", "region_telemetry", "app_telemetry"):
        table = lake.read_partitioned(lake.quarantine_dir(settings.lake_root, dataset))
        if table.num_rows:
            frame = table.to_pandas()
            frame["reason_kind"] = frame["reason"].str.split(":").str[0]
            for reason, count in frame.groupby("reason_kind").size().items():
                rows.append({"dataset": dataset, "reason": reason, "rows": int(count)})
    return rows


def _quantile_diagnostics(settings: Settings, run_id: str) -> dict[str, Any]:
    """Per series: the quantile method the forecast chose and its CV pinball against seasonal
    naive's; and the share of series whose CV 80 % interval covered 70–90 % (issue 13)."""
    path = storage.join(lake.forecast_dir(settings.lake_root, run_id), "manifest.json")
    if not storage.exists(path):
        return {"series": [], "summary": {}}
    manifest = lake.read_json(path)
    rows = [{"series_id": uid, "model": sel.get("model", ""), "method": sel.get("quantile_method", ""),
             "vs_snaive": sel.get("quantile_cv_vs_snaive")}
            for uid, sel in sorted(manifest.get("selection", {}).items())]
    return {"series": rows, "summary": manifest.get("engine", {}).get("quantile_methods", {})}


def _diff_to_applied(settings: Settings, plan_id: str, plan: pd.DataFrame) -> dict[str, Any] | None:
    """First-window diff from the APPLIED plan (nothing applied: from empty); None when it cannot be read."""
    from pipeline.iac.apply import applied_plan_id
    from pipeline.publish.diff import diff_plans

    try:
        applied = applied_plan_id(settings)
        old = read_plan(settings, applied)[0] if applied else None
    except (OSError, ValueError):
        return None
    return diff_plans(old, plan, applied, plan_id)


def write_plan_report(plan_id: str, interval: DataInterval, settings: Settings, *, attempt: int | None = None) -> str:
    """Render the report for `plan_id` (its `attempt`, default the newest) to build/reports/<plan_id>.html; returns its path."""
    plan, manifest = read_plan(settings, plan_id, attempt)
    forecast = read_forecast(settings, manifest["forecast_run_id"])
    demand = read_features(settings, "region_demand_hourly", interval).to_pandas()
    recent = demand[demand["hour"] >= pd.Timestamp(interval.end - timedelta(days=3))]
    regions = sorted(demand["region"].unique())
    horizon_end = pd.Timestamp(interval.end + timedelta(hours=24))
    near = forecast[forecast["ds"] < horizon_end]

    first = plan[plan["valid_from"] == plan["valid_from"].min()] if not plan.empty else plan
    summary = (
        first.groupby(["region", "resource_type"]).agg(pre_allocated=("quantity", "sum"), demand_quantile=("demand_quantile", "first"))
        .reset_index() if not first.empty else pd.DataFrame(columns=["region", "resource_type", "pre_allocated", "demand_quantile"])
    )
    lines = (
        first.drop_duplicates("line_id")[["region", "instance_type", "purchase_option", "count", "line_id"]]
        .merge(first.groupby("line_id")["hourly_cost"].sum().rename("line_cost"), on="line_id")
        if not first.empty else pd.DataFrame()
    )
    html = _templates().get_template("plan_report.html.j2").render(
        manifest=manifest,
        summary=summary.to_dict("records"),
        lines=lines.to_dict("records") if not lines.empty else [],
        reasons=first[["region", "resource_type", "reason"]].to_dict("records") if not first.empty else [],
        quarantine=_quarantine_counts(settings, interval),
        plan_diff=_diff_to_applied(settings, plan_id, plan),
        quantiles=_quantile_diagnostics(settings, manifest["forecast_run_id"]),
        outlook=plan_outlook(settings, manifest),
        figure_note=(f"The figures draw the {MAX_FIGURE_REGIONS} regions of {len(regions)} with the highest recent peak demand; "
                     "the tables list every region." if len(regions) > MAX_FIGURE_REGIONS else ""),
        figures=_plan_figures(recent, near, plan, regions),
    )
    path = storage.join(settings.build_root, "reports", f"{plan_id}.html")
    storage.write_text_atomic(path, html)
    return path


_FigureJob = tuple[str, pd.DataFrame, pd.DataFrame, pd.DataFrame, list[str]]  # name, recent demand, forecast, plan, regions


def _draw_plan_figure(job: _FigureJob) -> str:
    """One figure of the plan report (a forecast figure per resource, or the cost figure)."""
    name, recent, near, plan, regions = job
    if name == "cost":
        return _cost_figure(plan) if not plan.empty else ""
    return _forecast_figure(recent, near, plan, regions, name)


def _plan_figures(recent: pd.DataFrame, near: pd.DataFrame, plan: pd.DataFrame, regions: list[str]) -> dict[str, str]:
    """The plan report's figures, drawn on forked workers: each is a second or two of matplotlib at a dozen
    subplots, independent of the others, and the report waits for all of them."""
    names = ["vcpu", "bandwidth_gbps", "cost"]
    jobs: list[_FigureJob] = [(name, recent, near, plan, regions) for name in names]
    drawn = fork_map(_draw_plan_figure, jobs, min(cores_available(), len(jobs)), min_items_per_worker=1)
    return dict(zip(names, drawn))


class _ReplayWindow(Protocol):
    @property
    def start(self) -> datetime: ...

    @property
    def end(self) -> datetime: ...


class _PolicyReplay(Protocol):
    @property
    def hourly(self) -> list[dict]: ...  # hour, requests, hit_rate

    @property
    def capacity(self) -> list[dict]: ...  # hour, region, resource_type, quantity


class BacktestView(Protocol):
    """What the report reads of a `pipeline.ops.backtest.BacktestResult` (a protocol, so that the
    report does not import the replay machinery)."""

    @property
    def config(self) -> _ReplayWindow: ...

    @property
    def results(self) -> Mapping[str, _PolicyReplay]: ...

    @property
    def demand(self) -> pd.DataFrame: ...

    @property
    def forecasts(self) -> pd.DataFrame | None: ...

    def summary(self) -> dict: ...


_POLICY_COLORS = {"predictive": "#08519c", "predictive_tiered": "#3182bd",
                  "reactive": "#a50f15", "static": "#fd8d3c", "oracle": "#31a354", "aws_predictive": "#756bb1"}


def write_backtest_report(result: BacktestView, path: str) -> str:
    """Render a backtest (pipeline.ops.backtest.BacktestResult) as one self-contained HTML page."""
    _pyplot()
    summary = result.summary()
    demand = result.demand
    start, end = pd.Timestamp(result.config.start), pd.Timestamp(result.config.end)
    shown = demand[(demand["hour"] >= start) & (demand["hour"] < end)]
    figures = {
        "cost": _policy_cost_figure(summary),
        "hit_rate": _hit_rate_figure(result),
        "capacity": _capacity_figure(result, shown),
        "forecast": _forecast_vs_actual_figure(result, shown),
    }
    html = _templates().get_template("backtest_report.html.j2").render(summary=summary, figures=figures)
    storage.write_text_atomic(path, html)
    return path


def _policy_cost_figure(summary: dict) -> str:
    """Total cost per policy, stacked by what it paid for."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 3.2))
    parts = ("preallocation", "on_demand", "cold_start_penalty", "shortfall_penalty")
    bottom = [0.0] * len(summary["policies"])
    names = list(summary["policies"])
    for part, color in zip(parts, ("#3182bd", "#9ecae1", "#fd8d3c", "#de2d26")):
        values = [summary["policies"][n]["cost"][part] for n in names]
        ax.bar(names, values, bottom=bottom, label=part.replace("_", " "), color=color)
        bottom = [b + v for b, v in zip(bottom, values)]
    ax.set_ylabel("USD")
    ax.legend(fontsize=8)
    image = _png(fig)
    plt.close(fig)
    return image


def _hit_rate_figure(result: BacktestView) -> str:
    """Share of each hour's requests served from pre-allocation, per policy."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(11, 3.2))
    for name, res in result.results.items():
        hourly = pd.DataFrame(res.hourly)
        if not hourly.empty:
            ax.plot(pd.to_datetime(hourly["hour"]), hourly["hit_rate"], label=name, color=_POLICY_COLORS.get(name), lw=1.2)
    ax.set_ylim(-0.02, 1.02)
    ax.set_ylabel("served pre-allocated")
    ax.legend(fontsize=8, ncol=4)
    fig.autofmt_xdate()
    image = _png(fig)
    plt.close(fig)
    return image


def _capacity_figure(result: BacktestView, shown: pd.DataFrame) -> str:
    """Per region: peak vCPU demand against what each policy pre-allocated."""
    plt = _pyplot()
    regions = sorted(result.demand["region"].unique())
    cols = 2
    rows = (len(regions) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(12, 2.4 * rows), squeeze=False, sharex=True)
    for ax, region in zip(axes.flat, regions):
        d = shown[shown["region"] == region]
        ax.plot(d["hour"], d["vcpu"], color="#222", lw=1, label="peak demand")
        for name, res in result.results.items():
            cap = pd.DataFrame(res.capacity)
            if cap.empty:
                continue
            c = cap[(cap["region"] == region) & (cap["resource_type"] == "vcpu")]
            ax.step(pd.to_datetime(c["hour"]), c["quantity"], where="post", lw=1, color=_POLICY_COLORS.get(name), label=name)
        ax.set_title(region, fontsize=10)
        ax.tick_params(labelsize=8)
    for ax in list(axes.flat)[len(regions):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    fig.autofmt_xdate()
    image = _png(fig)
    plt.close(fig)
    return image


def _forecast_vs_actual_figure(result: BacktestView, shown: pd.DataFrame) -> str:
    """The predictive policy's vCPU forecasts against actual demand in the four busiest regions ("" without forecasts)."""
    forecasts = result.forecasts
    if forecasts is None or forecasts.empty:
        return ""
    plt = _pyplot()
    top = result.demand.groupby("region")["vcpu"].mean().sort_values(ascending=False).index[:4]
    fig, axes = plt.subplots(len(top), 1, figsize=(11, 2.3 * len(top)), squeeze=False, sharex=True)
    for ax, region in zip(axes.flat, top):
        f = forecasts[forecasts["series_id"] == region_series_id(region, "vcpu")].sort_values("ds")
        d = shown[shown["region"] == region]
        ax.fill_between(f["ds"], f["lo_95"], f["hi_95"], color="#9ecae1", alpha=0.5, label="95% interval")
        ax.fill_between(f["ds"], f["lo_80"], f["hi_80"], color="#4292c6", alpha=0.5, label="80% interval")
        ax.plot(f["ds"], f["mean"], color="#08519c", lw=1.1, label="forecast")
        ax.plot(d["hour"], d["vcpu"], color="#222", lw=1, label="actual")
        ax.set_title(region, fontsize=10)
    axes.flat[0].legend(fontsize=7, ncol=4)
    fig.autofmt_xdate()
    image = _png(fig)
    plt.close(fig)
    return image
