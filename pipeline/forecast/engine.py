"""The forecast stage: turn feature tables into per-series forecasts in the forecast contract.

Per series, every candidate model is scored on a holdout (the last day) by pinball loss at the
plan's τ; the winner is refit on the full history and forecasts the horizon. The choice and its
scores go into the forecast run manifest so an analyst can see why a model was used.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline import lake, storage
from pipeline.config import Settings
from pipeline.features import read_features
from pipeline.forecast.models import MODELS, OUTPUT_COLUMNS
from pipeline.forecast.quantiles import interpolate_quantile, pinball_loss
from pipeline.intervals import DataInterval
from pipeline.schemas import FORECAST, FORECAST_QUANTILES, RESOURCE_TYPES, pair_series_id, region_series_id

DEFAULT_MODELS: tuple[str, ...] = ("seasonal_naive", "auto_ets")


@dataclass
class ForecastResult:
    """Forecast rows (contract columns) plus the per-series model choice and its scores."""

    forecasts: pd.DataFrame
    selection: dict[str, dict] = field(default_factory=dict)


def series_from_features(pair_volume: pd.DataFrame, region_demand: pd.DataFrame) -> pd.DataFrame:
    """Long format `unique_id, ds, y` for every pair-volume and region-demand series."""
    pairs = pair_volume.assign(
        unique_id=[pair_series_id(s, d) for s, d in zip(pair_volume["source_region"], pair_volume["destination_region"])]
    )[["unique_id", "hour", "requests"]].rename(columns={"hour": "ds", "requests": "y"})
    regions = region_demand.melt(id_vars=["hour", "region"], value_vars=list(RESOURCE_TYPES), var_name="resource", value_name="y")
    regions["unique_id"] = [region_series_id(r, k) for r, k in zip(regions["region"], regions["resource"])]
    regions = regions[["unique_id", "hour", "y"]].rename(columns={"hour": "ds"})
    out = pd.concat([regions, pairs], ignore_index=True)
    out["y"] = out["y"].astype(float)
    return out.sort_values(["unique_id", "ds"]).reset_index(drop=True)


def _naive_ds(frame: pd.DataFrame) -> pd.DataFrame:
    """statsforecast wants tz-naive timestamps; everything here is UTC, so drop the zone."""
    frame = frame.copy()
    frame["ds"] = pd.to_datetime(frame["ds"], utc=True).dt.tz_localize(None)
    return frame


def _quantile_columns(frame: pd.DataFrame) -> dict[float, np.ndarray]:
    return {q: frame[f"q{int(round(q * 100))}"].to_numpy(float) for q in FORECAST_QUANTILES}


def select_and_forecast(
    history: pd.DataFrame,
    horizon: int,
    season_length: int,
    freq: str,
    tau: float,
    models: Sequence[str] = DEFAULT_MODELS,
    holdout: int | None = None,
) -> ForecastResult:
    """Score each model on the last `holdout` points per series, forecast with the winner."""
    unknown = [m for m in models if m not in MODELS]
    if unknown:
        raise ValueError(f"unknown models {unknown}; available: {sorted(MODELS)}")
    if history.empty:
        raise ValueError("history is empty: nothing to forecast (no feature rows for this run?)")
    # The holdout is the last points by time: order rows first (cumcount below follows row order).
    history = _naive_ds(history).sort_values(["unique_id", "ds"], kind="stable").reset_index(drop=True)
    holdout = holdout or season_length
    lengths = history.groupby("unique_id")["ds"].transform("size")
    cut = history.groupby("unique_id").cumcount() < lengths - holdout
    train, test = history[cut], history[~cut]
    scorable = set(train.groupby("unique_id").size().loc[lambda s: s >= 2 * season_length].index)

    scores: dict[str, dict[str, float]] = {sid: {} for sid in history["unique_id"].unique()}
    if scorable and len(models) > 1:
        train_s = train[train["unique_id"].isin(scorable)]
        test_s = test[test["unique_id"].isin(scorable)]
        for name in models:
            predicted = MODELS[name](season_length, freq).fit(train_s).predict(holdout)
            merged = test_s.merge(predicted, on=["unique_id", "ds"], how="inner")
            merged_q = merged.assign(q_tau=interpolate_quantile(_quantile_columns(merged), tau))
            for sid, group in merged_q.groupby("unique_id"):
                scores[sid][name] = pinball_loss(group["y"].to_numpy(), group["q_tau"].to_numpy(), tau)

    choice = {sid: (min(s, key=lambda m: (s[m], models.index(m))) if s else models[0]) for sid, s in scores.items()}
    frames = []
    for name in models:
        ids = [sid for sid, m in choice.items() if m == name]
        if not ids:
            continue
        fitted = MODELS[name](season_length, freq).fit(history[history["unique_id"].isin(ids)])
        frames.append(fitted.predict(horizon).assign(model=name))
    forecasts = pd.concat(frames, ignore_index=True).rename(columns={"unique_id": "series_id"})
    forecasts["ds"] = pd.to_datetime(forecasts["ds"]).dt.tz_localize("UTC")
    forecasts = forecasts.sort_values(["series_id", "ds"]).reset_index(drop=True)
    selection = {
        sid: {"model": choice[sid], "pinball_at_tau": {m: round(v, 6) for m, v in scores[sid].items()}}
        for sid in sorted(choice)
    }
    return ForecastResult(forecasts=forecasts[["series_id", "ds", "model", *OUTPUT_COLUMNS[2:]]], selection=selection)


def to_daily(history: pd.DataFrame) -> pd.DataFrame:
    """Daily peak of each hourly series: the daily horizon plans for the busiest hour of a day."""
    daily = history.assign(ds=pd.to_datetime(history["ds"], utc=True).dt.floor("D"))
    return daily.groupby(["unique_id", "ds"], as_index=False)["y"].max()


def forecast_run_id(kind: str, interval: DataInterval) -> str:
    return f"{kind}-{interval.token}"


def planning_tau(settings: Settings) -> float:
    """The τ the holdout scores at: the strictest of the plan's per-resource τ."""
    return max(settings.cost.tau(r) for r in RESOURCE_TYPES)


def run_forecast(interval: DataInterval, settings: Settings, kind: str = "hourly", models: Sequence[str] = DEFAULT_MODELS) -> dict:
    """Forecast every series for the run ending at `interval.end`; writes forecast + manifest."""
    pair_volume = read_features(settings, "pair_volume_hourly", interval).to_pandas()
    region_demand = read_features(settings, "region_demand_hourly", interval).to_pandas()
    history = series_from_features(pair_volume, region_demand)
    if history.empty:
        raise ValueError(f"no feature rows for run {interval.token}: ingest history before forecasting")
    tau = planning_tau(settings)
    if kind == "hourly":
        result = select_and_forecast(history, settings.horizon_hours, 24, "h", tau, models)
        horizon, season = settings.horizon_hours, 24
    elif kind == "daily":
        result = select_and_forecast(to_daily(history), settings.daily_horizon_days, 7, "D", tau, models, holdout=7)
        horizon, season = settings.daily_horizon_days, 7
    else:
        raise ValueError(f"kind must be 'hourly' or 'daily', got {kind!r}")

    run_id = forecast_run_id(kind, interval)
    out_dir = lake.forecast_dir(settings.lake_root, run_id)
    table = pa.Table.from_pandas(result.forecasts, schema=FORECAST, preserve_index=False)
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd")
    storage.write_bytes_atomic(storage.join(out_dir, "forecast.parquet"), sink.getvalue().to_pybytes())
    manifest = {
        "run_id": run_id,
        "kind": kind,
        "data_interval": {"start": interval.start.isoformat(), "end": interval.end.isoformat()},
        "history": {"start": str(history["ds"].min()), "end": str(history["ds"].max()), "series": int(history["unique_id"].nunique())},
        "horizon": horizon,
        "season_length": season,
        "tau": tau,
        "models": list(models),
        "selection": result.selection,
    }
    lake.write_json_atomic(storage.join(out_dir, "manifest.json"), manifest)
    return {"run_id": run_id, "path": storage.join(out_dir, "forecast.parquet"), "series": len(result.selection)}


def read_forecast(settings: Settings, run_id: str) -> pd.DataFrame:
    path = storage.join(lake.forecast_dir(settings.lake_root, run_id), "forecast.parquet")
    if not storage.exists(path):
        raise FileNotFoundError(f"forecast run {run_id!r} not found at {path}: run the forecast stage first")
    fs, p = storage.filesystem(path)
    return pq.read_table(p, filesystem=fs).to_pandas()


__all__ = ["ForecastResult", "run_forecast", "read_forecast", "select_and_forecast", "series_from_features"]
