"""Walk-forward backtest on the lake: for several origins, fit strictly before the origin and score
the region-demand series' τ-quantile (pinball at each resource's τ) against what happened.

Used by `bench/backtest_samples.py` (the sample-data floor: the default engine must beat seasonal
naive) and handy for any lake: the same code path as the hourly run (features → engine).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

import numpy as np
import pandas as pd

from pipeline.common import lake
from pipeline.common.config import Settings
from pipeline.common.schemas import FORECAST_QUANTILES, PEERING_REQUESTS, parse_series_id
from pipeline.features.build import SESSION_CARRY_IN, FeatureWindow, compute_features
from pipeline.forecast.engine import pipeline_inputs, run_engine, series_from_features
from pipeline.forecast.quantiles import interpolate_quantile, quantile_column


@dataclass
class BacktestRow:
    origin: str
    variant: str
    series_id: str
    resource: str
    tau: float
    pinball: float
    mean_actual: float
    covered_80: float
    seconds: float


def features_history(settings: Settings, start: datetime, end: datetime) -> pd.DataFrame:
    """Long-format series over [start, end) computed from the lake's raw requests (no lake writes)."""
    requests = lake.read_time_range(settings.lake_root, "peering_requests", start - SESSION_CARRY_IN, end, "requested_at")
    if requests.num_rows == 0:
        requests = PEERING_REQUESTS.empty_table()
    pools = lake.read_reference(settings.lake_root, "resource_pools", end)
    regions = sorted(set(pools.column("region").to_pylist()))
    tables = compute_features(requests.select(PEERING_REQUESTS.names), regions, FeatureWindow(start, end))
    return series_from_features(tables["pair_volume_hourly"].to_pandas(), tables["region_demand_hourly"].to_pandas())


def _variants(models: Sequence[str]) -> dict[str, dict]:
    return {
        "engine": {"models": tuple(models)},
        "seasonal_naive (calibrated)": {"models": ("seasonal_naive",)},
        "seasonal_naive (own intervals)": {"models": ("seasonal_naive",), "combine": False, "n_windows": 0},
    }


def walk_forward(settings: Settings, origins: Sequence[datetime], horizon: int = 48, models: Sequence[str] = ("auto",),
                 variants: Sequence[str] | None = None) -> pd.DataFrame:
    """One row per (origin, variant, region series) with pinball loss at the resource's τ."""
    rows: list[BacktestRow] = []
    last = max(origins) + timedelta(hours=horizon)
    actual_all = features_history(settings, min(origins) - timedelta(days=settings.history_days), last)
    actual_all["ds"] = pd.to_datetime(actual_all["ds"], utc=True)
    chosen = _variants(models)
    for origin in origins:
        start = origin - timedelta(days=settings.history_days)
        hist = actual_all[(actual_all["ds"] >= start) & (actual_all["ds"] < origin)]
        inputs = pipeline_inputs(replace(settings, horizon_hours=horizon), origin, hist, "hourly", models)
        hist = inputs.engine_input
        actual = actual_all[(actual_all["ds"] >= origin) & (actual_all["ds"] < origin + timedelta(hours=horizon))]
        actual = actual[actual["unique_id"].str.startswith("region:")]
        for variant, kwargs in chosen.items():
            if variants and variant not in variants:
                continue
            kw = dict(kwargs)
            n_windows = kw.pop("n_windows", None)
            if n_windows == 0:
                # no cross-validation at all: the model's own intervals, as the old engine did
                from pipeline.forecast.models import MODELS

                t0 = time.perf_counter()
                pred = MODELS["seasonal_naive"](24, "h").fit(hist[["unique_id", "ds", "y"]]).predict(horizon)
                pred = pred.rename(columns={"unique_id": "series_id"})
                pred["ds"] = pd.to_datetime(pred["ds"]).dt.tz_localize("UTC")
                seconds = time.perf_counter() - t0
            else:
                t0 = time.perf_counter()
                options = replace(inputs.options, models=kw["models"], combine=kw.get("combine", True))
                result = run_engine(hist, options, future=inputs.future, hierarchy=inputs.hierarchy)
                pred = result.forecasts
                seconds = time.perf_counter() - t0
            merged = actual.rename(columns={"unique_id": "series_id"}).merge(pred, on=["series_id", "ds"], how="inner")
            for sid, group in merged.groupby("series_id"):
                resource = parse_series_id(sid)["measure"]
                tau = settings.cost.tau(resource)
                q = interpolate_quantile({p: group[quantile_column(p)].to_numpy(float) for p in FORECAST_QUANTILES}, tau)
                y = group["y"].to_numpy(float)
                diff = y - q
                rows.append(BacktestRow(origin.isoformat(), variant, sid, resource, tau,
                                        float(np.mean(np.maximum(tau * diff, (tau - 1) * diff))), float(np.mean(np.abs(y))),
                                        float(np.mean((y >= group["lo_80"]) & (y <= group["hi_80"]))), seconds))
    return pd.DataFrame([r.__dict__ for r in rows])


def summarize(rows: pd.DataFrame) -> pd.DataFrame:
    """Per variant: mean scaled pinball (pinball / mean actual, averaged over series and origins),
    its ratio to seasonal naive, 80 % coverage and seconds per run."""
    rows = rows.assign(scaled=rows["pinball"] / rows["mean_actual"].where(rows["mean_actual"] > 0, 1.0))
    per = rows.groupby("variant").agg(scaled_pinball=("scaled", "mean"), pinball=("pinball", "sum"),
                                      coverage_80=("covered_80", "mean"), seconds=("seconds", "mean"))
    per["seconds"] = rows.groupby(["variant", "origin"])["seconds"].first().groupby("variant").mean()
    return per.sort_values("scaled_pinball")


__all__ = ["features_history", "summarize", "walk_forward"]
