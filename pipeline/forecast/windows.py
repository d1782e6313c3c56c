"""Region demand per plan window of `plan_window_minutes` (30 or 15): committed + what arrivals add, per lead.

Why: a window must cover its own peak. At the run's origin t the resources running sessions will
hold at each window's start are known exactly (their durations are declared: the committed level,
`committed_profile`); only what sessions begun from t on add is uncertain. The hourly run uses that
knowledge for its first step only and forecasts later hours' whole peak. Here every window gets it:

    demand(window k) ≤ committed(t, k) + added(t, k)

    committed(t, k)  held at window k's start by sessions running at t (known; it only decays)
    added(t, k)      the peak, inside window k, of what sessions begun at or after t hold

`added` is a feature of every hourly origin of the history and every lead k (`added_by_lead`,
sql/added_by_lead.sql), so each (region, resource, lead) is a series of its own, indexed by the hour
its value is complete (origin + ⌈(k + 1)·W / 60⌉ h): all series end at the run's interval end and the
engine forecasts them together (hourly, daily season) with per-series calibrated quantiles. Lead k's
value for the run's own origin is its forecast ⌈(k + 1)·W / 60⌉ steps ahead; the committed level is
added to every quantile. Short windows gain twice: the committed share of a short window's peak is
larger, and sessions that end free their capacity in the next window instead of the next hour.

Written as its own forecast run `windows<m>m-<token>` beside the hourly run; the planner reads its
region rows instead of the hourly run's when the plan's windows are shorter than an hour.
"""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from pipeline.common import lake, storage
from pipeline.common.config import Settings
from pipeline.common.intervals import DataInterval
from pipeline.common.schemas import FORECAST, RESOURCE_TYPES, region_series_id
from pipeline.features.build import read_features, window_feature
from pipeline.forecast.committed import VALUE_COLUMNS
from pipeline.forecast.engine import DEFAULT_MODELS, EngineOptions, earlier_regressor_decisions, planning_tau, run_engine
from pipeline.forecast.exog import exogenous_candidates

HOURS_PER_DAY = 24
TIME_COLUMN = "window_start"


def window_run_id(interval: DataInterval, minutes: int) -> str:
    """The forecast run of a plan's `minutes`-long windows for the run ending at `interval.end`."""
    return f"windows{minutes}m-{interval.token}"


def added_series_id(region: str, resource_type: str, lead: int) -> str:
    """Series id of what arrivals from an origin on add to window `lead` (internal to this module)."""
    return f"added{lead}:{region}:{resource_type}"


def hours_to_complete(lead: int, minutes: int) -> int:
    """Whole hours from an origin until window `lead` has ended (the step its forecast is taken at)."""
    return math.ceil((lead + 1) * minutes / 60)


def added_history(added: pd.DataFrame, minutes: int) -> pd.DataFrame:
    """Long `unique_id, ds, y` of every (region, resource, lead), `ds` = the hour its window has ended by."""
    shift = pd.to_timedelta(added["lead"].map(lambda k: hours_to_complete(int(k), minutes)), unit="h")
    ds = pd.to_datetime(added["origin"], utc=True) + shift
    parts = [pd.DataFrame({"unique_id": [added_series_id(r, k, int(lead)) for r, lead in zip(added["region"], added["lead"])],
                           "ds": ds.to_numpy(), "y": added[k].to_numpy(float)}) for k in RESOURCE_TYPES]
    frame = pd.concat(parts, ignore_index=True)
    frame["ds"] = pd.to_datetime(frame["ds"], utc=True)
    return frame.sort_values(["unique_id", "ds"], ignore_index=True)


def window_options(settings: Settings, regressors: dict[str, dict] | None = None) -> EngineOptions:
    """The engine's options: hourly series with a daily season, as far ahead as the plan's last window ends
    (`regressors`: the day's earlier decisions on the exogenous columns, `earlier_regressor_decisions`)."""
    return EngineOptions(horizon=hours_to_complete(settings.plan_window_count - 1, settings.plan_window_minutes),
                         season_length=HOURS_PER_DAY, freq="h", tau=planning_tau(settings), models=DEFAULT_MODELS,
                         regressors=regressors)


def window_demand(forecasts: pd.DataFrame, committed: pd.DataFrame, interval: DataInterval, minutes: int,
                  windows: int) -> pd.DataFrame:
    """Region rows (FORECAST contract) per window: the committed level plus each lead's forecast at the run's origin."""
    origin = pd.Timestamp(interval.end)
    keyed = forecasts.set_index(["unique_id", "ds"])
    held = committed.assign(window_start=pd.to_datetime(committed[TIME_COLUMN], utc=True)).set_index([TIME_COLUMN, "region"])
    rows = []
    for lead in range(windows):
        start = origin + pd.Timedelta(minutes=lead * minutes)
        at = origin + pd.Timedelta(hours=hours_to_complete(lead, minutes))
        for region in held.loc[start].index:
            for resource in RESOURCE_TYPES:
                found = keyed.loc[(added_series_id(region, resource, lead), at)]
                base = float(held.loc[(start, region), resource])
                rows.append({"series_id": region_series_id(region, resource), "ds": start, "model": f"committed+{found['model']}",
                             **{c: base + max(float(found[c]), 0.0) for c in VALUE_COLUMNS}})
    out = pd.DataFrame(rows)
    out[list(VALUE_COLUMNS)] = np.maximum(out[list(VALUE_COLUMNS)].to_numpy(float), 0.0)
    return out


def run_window_forecast(interval: DataInterval, settings: Settings) -> dict[str, Any]:
    """Forecast every region's demand per `plan_window_minutes` window of the plan and publish the run.

    Returns `{"run_id": None}` for hourly windows (the hourly run serves the plan)."""
    minutes = settings.plan_window_minutes
    if minutes == 60:
        return {"run_id": None, "minutes": minutes}
    t0 = time.perf_counter()
    added = read_features(settings, window_feature("added_by_lead", minutes), interval).to_pandas()
    committed = read_features(settings, window_feature("committed_profile", minutes), interval).to_pandas()
    history = added_history(added, minutes)
    if history.empty:
        raise ValueError(f"no {minutes}-minute feature rows for run {interval.token}: ingest history before forecasting")
    options = window_options(settings, earlier_regressor_decisions(settings, interval, lambda i: window_run_id(i, minutes)))
    # the calendar and the region's telemetry a week earlier, as for the hourly run's series
    engine_input, future = exogenous_candidates(settings.lake_root, interval.end, history, options.horizon, "h", telemetry=True)
    result = run_engine(engine_input, options, future=future)
    frame = result.forecasts.rename(columns={"series_id": "unique_id"})
    frame["ds"] = pd.to_datetime(frame["ds"], utc=True)
    forecasts = window_demand(frame, committed, interval, minutes, settings.plan_window_count)
    return _publish(interval, settings, forecasts, history, options, result.info, result.selection, t0)


def _publish(interval: DataInterval, settings: Settings, forecasts: pd.DataFrame, history: pd.DataFrame, options: EngineOptions,
             info: dict[str, Any], selection: dict[str, dict], t0: float) -> dict[str, Any]:
    """forecast.parquet, then manifest.json (data first, manifest last, as the hourly run)."""
    minutes = settings.plan_window_minutes
    run_id = window_run_id(interval, minutes)
    out_dir = lake.forecast_dir(settings.lake_root, run_id)
    table = pa.Table.from_pandas(forecasts[FORECAST.names], schema=FORECAST, preserve_index=False)
    lake.write_parquet_atomic(table, storage.join(out_dir, "forecast.parquet"))
    manifest = {
        "run_id": run_id, "kind": "windows", "window_minutes": minutes, "windows": settings.plan_window_count,
        "data_interval": {"start": interval.start.isoformat(), "end": interval.end.isoformat()},
        "history": {"start": str(history["ds"].min()), "end": str(history["ds"].max()), "series": int(history["unique_id"].nunique())},
        "horizon": options.horizon, "season_length": options.season_length, "tau": options.tau,
        "models": list(info.get("models", options.models)),
        "engine": {k: v for k, v in info.items() if k != "timings_s"},
        "selection": selection,
    }
    lake.write_json_atomic(storage.join(out_dir, "manifest.json"), manifest)
    return {"run_id": run_id, "minutes": minutes, "path": storage.join(out_dir, "forecast.parquet"),
            "series": int(forecasts["series_id"].nunique()), "seconds": round(time.perf_counter() - t0, 3)}


__all__ = ["added_history", "added_series_id", "hours_to_complete", "run_window_forecast", "window_demand", "window_options",
           "window_run_id"]
