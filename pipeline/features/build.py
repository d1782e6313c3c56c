"""Features: DuckDB runs `sql/*.sql` over the lake to build hourly series for forecasting.

`pair_volume_hourly` counts requests per ordered region pair and hour; `region_demand_hourly`
is the peak of resources held concurrently per region and hour (what capacity must cover);
`region_carried_hourly` the part of it carried in from earlier hours, and `committed_profile`
what sessions running at the interval end will still hold over the horizon (known, not forecast:
see pipeline.forecast.committed).

With `plan_window_minutes` below 60 two more tables feed the per-window forecast
(pipeline.forecast.windows): `committed_profile_<m>m` (held at each plan window's start by sessions
running at the interval end) and `added_by_lead_<m>m` (at each hourly origin of the last
`WINDOW_HISTORY_DAYS`, what sessions begun from it on add to each window ahead).
Only data strictly before the run's interval end is read: a run never sees its future.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.common import lake, storage
from pipeline.common.config import Settings
from pipeline.common.intervals import DataInterval
from pipeline.common.schemas import PEERING_REQUESTS
from pipeline.features.committed_levels import added_by_lead, carried_levels, committed_profile
from pipeline.features.sessions import session_connection, utc_column

SQL_DIR = Path(__file__).resolve().parent / "sql"  # ships inside the package
FEATURE_SETS = ("pair_volume_hourly", "region_demand_hourly")
# Sessions that began up to this long before the window still hold resources inside it.
SESSION_CARRY_IN = timedelta(days=3)
# History of the per-window tables: a week of hourly origins is 168 points per (region, resource,
# lead) series, its daily season seven times over, at half the work of the hourly run's 14 days.
WINDOW_HISTORY_DAYS = 7
HOURLY_MINUTES = 60


@dataclass(frozen=True)
class FeatureWindow:
    """The hours a feature build covers: `history_days` ending at the run's interval end."""

    start: datetime
    end: datetime

    @classmethod
    def for_run(cls, interval_end: datetime, history_days: int) -> FeatureWindow:
        return cls(interval_end - timedelta(days=history_days), interval_end)


def sql_text(name: str) -> str:
    return (SQL_DIR / f"{name}.sql").read_text()


def window_starts(window: FeatureWindow, minutes: int) -> list[datetime]:
    """The start of every `minutes`-long window in `window` (its bounds fall on whole hours)."""
    step = timedelta(minutes=minutes)
    count = int((window.end - window.start) / step)
    return [window.start + k * step for k in range(count)]


def compute_features(requests: pa.Table, regions: list[str], window: FeatureWindow,
                     window_minutes: int = HOURLY_MINUTES) -> dict[str, pa.Table]:
    """Run every feature query over an in-memory requests table (pure: no lake access).

    At `window_minutes` 60 the hourly sets; below, the region peaks at that resolution only
    (`region_demand_<m>m`, time column `window_start`: what a plan's windows are scored against)."""
    starts = window_starts(window, window_minutes)
    params: dict[str, object] = {"window_start": window.start, "window_end": window.end}
    names = FEATURE_SETS if window_minutes == HOURLY_MINUTES else ("region_demand_hourly",)
    out = {}
    with session_connection(requests, regions, hours=pa.table({"hour": utc_column(starts)})) as con:
        for name in names:
            extra = {"window_minutes": window_minutes} if name == "region_demand_hourly" else {}
            out[name] = _utc(con.sql(sql_text(name), params={**params, **extra}).to_arrow_table())
    if window_minutes != HOURLY_MINUTES:
        demand = out["region_demand_hourly"]
        return {window_feature("region_demand", window_minutes): demand.rename_columns(
            ["window_start" if n == "hour" else n for n in demand.column_names])}
    carried = carried_levels(requests, regions, starts)
    return {**out, "region_carried_hourly": _utc(pa.Table.from_pandas(carried, preserve_index=False))}


def window_feature(name: str, minutes: int) -> str:
    """The name of a region table built at `minutes` resolution (e.g. `region_demand_15m`)."""
    return f"{name}_{minutes}m"


def _utc(table: pa.Table) -> pa.Table:
    """DuckDB returns TIMESTAMPTZ in its session zone; pin the lake's `timestamp[us, UTC]`."""
    fields = []
    for fld in table.schema:
        if pa.types.is_timestamp(fld.type):
            fld = fld.with_type(pa.timestamp("us", tz="UTC"))
        fields.append(fld)
    return table.cast(pa.schema(fields))


def build_features(interval: DataInterval, settings: Settings) -> dict[str, str]:
    """Build every feature set for the run ending at `interval.end`; returns lake paths."""
    window = FeatureWindow.for_run(interval.end, settings.history_days)
    requests = lake.read_time_range(
        settings.lake_root, "peering_requests", window.start - SESSION_CARRY_IN, window.end, "requested_at"
    )
    if requests.num_rows == 0:
        requests = PEERING_REQUESTS.empty_table()
    pools = lake.read_reference(settings.lake_root, "resource_pools", interval.end)
    regions = sorted(set(pools.column("region").to_pylist()))
    requests = requests.select(PEERING_REQUESTS.names)
    tables = compute_features(requests, regions, window)
    profile = committed_profile(requests, regions, window.end, settings.horizon_hours)
    tables["committed_profile"] = _utc(pa.Table.from_pandas(profile, preserve_index=False))
    if settings.plan_window_minutes != HOURLY_MINUTES:
        tables.update(_window_tables(requests, regions, interval, settings))
    paths = {}
    for name, table in tables.items():
        path = lake.features_path(settings.lake_root, name, _run_token(interval, settings))
        lake.write_parquet_atomic(table, path)
        paths[name] = path
    return paths


def _window_tables(requests: pa.Table, regions: list[str], interval: DataInterval, settings: Settings) -> dict[str, pa.Table]:
    """For plans of `plan_window_minutes` windows (pipeline.forecast.windows): what sessions running at the
    interval end hold at each window's start, and what sessions begun from each hourly origin of the last
    WINDOW_HISTORY_DAYS on add to each window ahead of it."""
    minutes = settings.plan_window_minutes
    window = FeatureWindow.for_run(interval.end, min(settings.history_days, WINDOW_HISTORY_DAYS))
    origins = window_starts(window, HOURLY_MINUTES)
    added = added_by_lead(requests, regions, origins, minutes, settings.plan_window_count, interval.end)
    profile = committed_profile(requests, regions, interval.end, settings.plan_window_count, step=timedelta(minutes=minutes))
    return {window_feature("added_by_lead", minutes): _utc(pa.Table.from_pandas(added, preserve_index=False)),
            window_feature("committed_profile", minutes): _utc(pa.Table.from_pandas(
                profile.rename(columns={"hour": "window_start"}), preserve_index=False))}


def _run_token(interval: DataInterval, settings: Settings) -> str:
    """Feature builds differ by history length (hourly 14 d, daily 28 d): both are in the key."""
    return f"{interval.token}-{settings.history_days}d"



def read_features(settings: Settings, name: str, interval: DataInterval) -> pa.Table:
    path = lake.features_path(settings.lake_root, name, _run_token(interval, settings))
    if not storage.exists(path):
        raise FileNotFoundError(f"features {name!r} for run {interval.token} not found at {path}: run the features stage first")
    fs, p = storage.filesystem(path)
    return pq.read_table(p, filesystem=fs)


__all__ = ["FEATURE_SETS", "WINDOW_HISTORY_DAYS", "FeatureWindow", "build_features", "compute_features", "read_features",
           "window_feature", "window_starts"]
