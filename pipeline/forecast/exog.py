"""Exogenous inputs for the pipeline's forecasts, built from the lake: calendar uplifts, lagged
telemetry, and the pair → destination hierarchy.

- `event_uplift`: the calendar's expected multiplicative uplift of every event active on the
  series' region-local date (destination region for pairs), combined as ∏(1 + u) - 1. It is known
  in advance, so it is given for the horizon too.
- telemetry regressors (every numeric column of the region and application telemetry) are lagged
  by one week (168 h), so their values over a ≤ 168 h horizon are already observed: no peeking, no
  need to forecast them. They are candidates: cross-validation decides which models use them.
"""

from __future__ import annotations

from datetime import datetime

import numpy as np
import pandas as pd

from pipeline.common import lake
from pipeline.common.schemas import parse_series_id
from pipeline.forecast.prep import EVENT_COLUMN

# Standard-time UTC offsets of the regions (hours): events apply on local dates.
REGION_UTC_OFFSET: dict[str, float] = {
    "us-east-1": -5, "us-east-2": -5, "us-west-1": -8, "us-west-2": -8, "ca-central-1": -5, "sa-east-1": -3,
    "eu-west-1": 0, "eu-west-2": 0, "eu-west-3": 1, "eu-central-1": 1, "eu-north-1": 1, "ap-south-1": 5.5,
    "ap-southeast-1": 8, "ap-southeast-2": 10, "ap-northeast-1": 9, "ap-northeast-2": 9, "me-south-1": 4, "af-south-1": 2,
}
TELEMETRY_LAG_HOURS = 168


def series_region(uid: str) -> str | None:
    """The region whose calendar and telemetry apply: the destination for pair/inbound series."""
    try:
        parts = parse_series_id(uid)
    except ValueError:
        return None
    return parts.get("destination_region") or parts.get("region")


def inbound_hierarchy(history: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, list[str]]]:
    """Add `inbound:<dst>:requests` = Σ pair requests into dst; return it with the hierarchy."""
    pairs = history[history["unique_id"].str.startswith("pair:")]
    if pairs.empty:
        return history, {}
    ids = pairs["unique_id"].unique()  # parse each id once, not once per row
    parent = pd.Series({u: f"inbound:{parse_series_id(u)['destination_region']}:requests" for u in ids})
    agg = pairs.assign(unique_id=pairs["unique_id"].map(parent)).groupby(["unique_id", "ds"], as_index=False)["y"].sum()
    hierarchy = {a: sorted(kids) for a, kids in parent.index.to_series().groupby(parent.to_numpy()).agg(list).items()}
    out = pd.concat([history, agg], ignore_index=True).sort_values(["unique_id", "ds"]).reset_index(drop=True)
    return out, dict(sorted(hierarchy.items()))


def uplift_table(events: pd.DataFrame, uids: list[str], stamps: pd.DatetimeIndex) -> pd.DataFrame:
    """`unique_id, ds, event_uplift` for every series and (UTC, tz-naive) timestamp.

    The uplift depends only on a series' region, so it is computed once per region and repeated
    over that region's series (thousands of pair series share a few dozen regions)."""
    region_of = {uid: series_region(uid) for uid in uids}
    factors = {region: _region_uplift(events, region, stamps) for region in dict.fromkeys(region_of.values())}
    if not uids:
        return pd.DataFrame({"unique_id": pd.Series(dtype=str), "ds": pd.Series(dtype="datetime64[ns]"), EVENT_COLUMN: []})
    return pd.DataFrame({"unique_id": np.repeat(np.array(uids, dtype=object), len(stamps)),
                         "ds": np.tile(stamps.to_numpy(), len(uids)),
                         EVENT_COLUMN: np.concatenate([factors[region_of[uid]] for uid in uids]) - 1.0})


def _region_uplift(events: pd.DataFrame, region: str | None, stamps: pd.DatetimeIndex) -> np.ndarray:
    """The product of (1 + uplift) of the events active in `region` at each stamp (local calendar days)."""
    offset = pd.Timedelta(hours=REGION_UTC_OFFSET.get(region or "", 0))
    local = (stamps + offset).normalize()
    factor = np.ones(len(stamps))
    for ev in events.itertuples(index=False):
        regions = str(ev.regions)
        if regions.strip() != "*" and (region is None or region not in regions.split(";")):
            continue
        active = (local >= pd.Timestamp(ev.start_date)) & (local <= pd.Timestamp(ev.end_date))
        factor = np.where(active, factor * (1.0 + float(ev.expected_uplift)), factor)
    return factor


def calendar_uplift(lake_root: str, as_of: datetime, history: pd.DataFrame, horizon: int,
                    freq: str) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """History with an `event_uplift` column and the future frame for the horizon.

    Without a calendar snapshot in the lake the history is returned unchanged (and no future).
    """
    try:
        events = lake.read_reference(lake_root, "calendar", as_of).to_pandas()
    except FileNotFoundError:
        return history, None
    if events.empty:
        return history, None
    hist = history.copy()
    ds = pd.to_datetime(hist["ds"], utc=True).dt.tz_localize(None)
    step = pd.tseries.frequencies.to_offset(freq)
    stamps = pd.date_range(ds.min(), ds.max() + horizon * pd.Timedelta(step), freq=step)
    table = uplift_table(events, sorted(hist["unique_id"].unique()), stamps)
    hist = hist.assign(ds=ds).merge(table, on=["unique_id", "ds"], how="left")
    hist[EVENT_COLUMN] = hist[EVENT_COLUMN].fillna(0.0)
    last = hist.groupby("unique_id")["ds"].max()
    future = table.merge(last.rename("last").reset_index(), on="unique_id")
    future = future[(future["ds"] > future["last"]) & (future["ds"] <= future["last"] + horizon * pd.Timedelta(step))]
    return hist, future.drop(columns="last").reset_index(drop=True)


def prophet_holidays(lake_root: str, as_of: datetime, uids: list[str]) -> pd.DataFrame | None:
    """The calendar as Prophet holidays (one row per event day), restricted per series by region:
    `unique_id` is the series the row applies to, or "*" for events in every region."""
    try:
        events = lake.read_reference(lake_root, "calendar", as_of).to_pandas()
    except FileNotFoundError:
        return None
    rows = []
    for ev in events.itertuples(index=False):
        days = pd.date_range(pd.Timestamp(ev.start_date), pd.Timestamp(ev.end_date), freq="D")
        regions = str(ev.regions).strip()
        targets = ["*"] if regions == "*" else [u for u in uids if series_region(u) in regions.split(";")]
        for uid in targets:
            rows.append(pd.DataFrame({"holiday": str(ev.name), "ds": days, "lower_window": 0, "upper_window": 0, "unique_id": uid}))
    return pd.concat(rows, ignore_index=True) if rows else None


#: the telemetry datasets whose numeric columns become regressors (`telemetry_regressor_name`)
TELEMETRY_DATASETS = ("region_telemetry", "app_telemetry")


def telemetry_regressor_name(column: str) -> str:
    """`cpu_utilization` → `cpu_util_lag168`: the regressor a telemetry column becomes."""
    return f"{column.replace('_utilization', '_util')}_lag{TELEMETRY_LAG_HOURS}"


def telemetry_columns() -> dict[str, list[str]]:
    """Per telemetry dataset, its numeric columns (from the ingest schemas: a new column becomes a
    candidate regressor without a change here)."""
    import pyarrow as pa

    from pipeline.common.schemas import SOURCES

    return {d: [f.name for f in SOURCES[d]["schema"] if pa.types.is_floating(f.type) or pa.types.is_integer(f.type)]
            for d in TELEMETRY_DATASETS}


def _hourly_telemetry(lake_root: str, start: datetime, end: datetime) -> list[pd.Series]:
    """Every telemetry column as an hourly mean per region, shifted a week later (one read per dataset)."""
    lag = pd.Timedelta(hours=TELEMETRY_LAG_HOURS)
    out = []
    for dataset, columns in telemetry_columns().items():
        table = lake.read_time_range(lake_root, dataset, start - lag, end, "ts").to_pandas()
        present = [c for c in columns if c in table.columns]
        if table.empty or not present:
            continue
        table["hour"] = pd.to_datetime(table["ts"], utc=True).dt.tz_localize(None).dt.floor("h") + lag
        means = table.groupby(["region", "hour"])[present].mean()
        out += [means[c].rename(telemetry_regressor_name(c)) for c in present]
    return out


def telemetry_regressors(lake_root: str, start: datetime, end: datetime, history: pd.DataFrame,
                         horizon_hours: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Add every region and application telemetry column, as the hourly mean of the series' region
    one week earlier (`cpu_util_lag168`, `memory_util_lag168`, ..., `active_users_lag168`,
    `transactions_per_s_lag168`), to every series; returns (history, future) for a horizon ≤ 168 h.

    Lagged a week because that is how far ahead they are known for any horizon the hourly run
    forecasts (and the same hour of the week); they are candidates: cross-validation decides which
    model uses them (pipeline.forecast.regressors)."""
    if horizon_hours > TELEMETRY_LAG_HOURS:
        raise ValueError(f"telemetry regressors are lagged {TELEMETRY_LAG_HOURS} h: horizon {horizon_hours} h is too long")
    frames = _hourly_telemetry(lake_root, start, end)
    hist = history.copy()
    hist["ds"] = pd.to_datetime(hist["ds"], utc=True).dt.tz_localize(None)
    idx_last = hist.groupby("unique_id")["ds"].max()
    steps = np.tile(np.arange(1, horizon_hours + 1) * pd.Timedelta(hours=1), len(idx_last))  # one frame, not one per series
    fut = pd.DataFrame({"unique_id": np.repeat(idx_last.index.to_numpy(), horizon_hours),
                        "ds": np.repeat(idx_last.to_numpy(), horizon_hours) + steps})
    region_of = {uid: series_region(uid) for uid in idx_last.index}  # parse each id once, not once per row
    for frame in (hist, fut):
        frame["_region"] = frame["unique_id"].map(region_of)
    if frames:
        table = pd.concat(frames, axis=1).reset_index().rename(columns={"region": "_region", "hour": "ds"})
        hist = hist.merge(table, on=["_region", "ds"], how="left")
        fut = fut.merge(table, on=["_region", "ds"], how="left")
        names = [f.name for f in frames]
        for frame in (hist, fut):
            filled = frame.groupby("unique_id", sort=False)[names].ffill()
            frame[names] = filled.groupby(frame["unique_id"], sort=False).bfill().fillna(0.0)
    return hist.drop(columns="_region"), fut.drop(columns="_region")


def exogenous_candidates(lake_root: str, as_of: datetime, history: pd.DataFrame, horizon: int, freq: str,
                         telemetry: bool) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """History and future with the calendar uplift and, when `telemetry` and the horizon is within the
    week the telemetry is lagged, every telemetry column: the candidates cross-validation decides on."""
    hist, future = calendar_uplift(lake_root, as_of, history, horizon, freq)
    if telemetry and horizon <= TELEMETRY_LAG_HOURS:  # lagged a week: known over the horizon
        start = pd.to_datetime(hist["ds"]).min().to_pydatetime()
        hist, tel_future = telemetry_regressors(lake_root, start, as_of, hist, horizon)
        future = tel_future if future is None else future.merge(tel_future, on=["unique_id", "ds"], how="outer")
    return hist, future


__all__ = ["calendar_uplift", "exogenous_candidates", "inbound_hierarchy", "prophet_holidays", "series_region", "telemetry_columns",
           "telemetry_regressor_name", "telemetry_regressors", "uplift_table"]
