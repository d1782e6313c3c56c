"""Committed demand: the part of the coming hours' concurrent demand that is already known.

A peering request declares its duration, so at a run's origin t the resources that running
sessions will still hold at t, t + 1 h, … are known exactly (`sql/committed_demand.sql`). On the
samples about 70 % of an hour's peak is carried in from earlier hours. Forecasting the whole peak
throws that knowledge away; peerscale forecasts only what new arrivals add:

    peak(h) = carried(h) + fresh(h)       carried(h): held at h's start by sessions begun before h
                                          fresh(h) ≥ 0: what the hour's arrivals add on top

- `carried_levels`, `committed_profile` (`pipeline.features.committed_levels`): carried(h), and the
  levels running sessions hold at t + k.
- `fresh_history`: the region-demand series minus carried, as series `fresh:<region>:<resource>`,
  forecast by the engine next to the peak series.
- `apply_committed`: the first step's region forecast becomes carried(t) + the fresh forecast
  (every quantile and interval bound); later steps keep the engine's own peak forecast, floored by
  committed + fresh (demand already committed never forecasts lower).
"""

from __future__ import annotations

from datetime import datetime

import numpy as np
import pandas as pd

from pipeline.common.schemas import RESOURCE_TYPES, region_series_id

FRESH = "fresh"
VALUE_COLUMNS = ("mean", "q50", "q80", "q90", "q95", "q99", "lo_80", "hi_80", "lo_95", "hi_95")


def fresh_series_id(region: str, resource_type: str) -> str:
    """Series id of what a region's new arrivals add to its hourly peak (internal to forecasting)."""
    return f"{FRESH}:{region}:{resource_type}"


def fresh_history(region_demand: pd.DataFrame, carried: pd.DataFrame) -> pd.DataFrame:
    """Long `unique_id, ds, y` of peak − carried per region and resource (never below 0)."""
    merged = region_demand.merge(carried, on=["hour", "region"], how="left", suffixes=("", "_carried"))
    rows = []
    for rt in RESOURCE_TYPES:
        fresh = np.clip(merged[rt].to_numpy(float) - merged[f"{rt}_carried"].fillna(0.0).to_numpy(float), 0.0, None)
        rows.append(pd.DataFrame({
            "unique_id": [fresh_series_id(r, rt) for r in merged["region"]],
            "ds": merged["hour"].to_numpy(),
            "y": fresh,
        }))
    return pd.concat(rows, ignore_index=True)


def apply_committed(forecasts: pd.DataFrame, committed: pd.DataFrame, origin: datetime) -> pd.DataFrame:
    """Region forecasts with the committed demand folded in (see the module docstring); fresh series dropped.

    forecasts: the engine's output (`series_id, ds, model, mean, q…, lo/hi…`) holding both the
    `region:` peak series and the `fresh:` series. committed: `committed_profile` at `origin`.
    """
    is_fresh = forecasts["series_id"].str.startswith(f"{FRESH}:")
    fresh = forecasts[is_fresh]
    out = forecasts[~is_fresh].copy()
    if fresh.empty:
        return out.reset_index(drop=True)
    long = committed.melt(id_vars=["hour", "region"], value_vars=list(RESOURCE_TYPES), var_name="resource_type", value_name="held")
    held = pd.Series(long["held"].to_numpy(float),
                     index=pd.MultiIndex.from_arrays([[region_series_id(r, k) for r, k in zip(long["region"], long["resource_type"])],
                                                      pd.to_datetime(long["hour"], utc=True)]))
    peak_ids = fresh["series_id"].str.replace(f"{FRESH}:", "region:", n=1, regex=False)
    fresh_values = fresh.assign(series_id=peak_ids).set_index(["series_id", "ds"])
    keys = pd.MultiIndex.from_frame(out[["series_id", "ds"]])
    has_fresh = keys.isin(fresh_values.index)
    if not has_fresh.any():
        return out.reset_index(drop=True)
    sel = np.flatnonzero(has_fresh)
    sel_keys = keys[sel]
    base = held.reindex(sel_keys).fillna(0.0).to_numpy()
    first = (out["ds"].iloc[sel] == pd.Timestamp(origin)).to_numpy()  # forecasts are tz-aware UTC
    for col in VALUE_COLUMNS:
        combined = base + fresh_values[col].reindex(sel_keys).to_numpy(float)
        current = out[col].to_numpy(float)[sel]
        out.iloc[sel, out.columns.get_loc(col)] = np.where(first, combined, np.maximum(current, combined))
    models = out["model"].to_numpy(object)
    fresh_models = fresh_values["model"].reindex(sel_keys).to_numpy(object)
    models[sel[first]] = [f"committed+{m}" for m in fresh_models[first]]
    out["model"] = models
    return out.reset_index(drop=True)


__all__ = ["apply_committed", "fresh_history", "fresh_series_id"]
