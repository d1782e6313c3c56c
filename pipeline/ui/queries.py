"""DuckDB over the lake's Parquet files: every number the analyst app shows is computed here.

One in-memory connection per request (`Query`), closed after it: the app holds no state. Local files
are scanned by DuckDB itself (projection and Hive-partition pruning); s3:// files are read through
pyarrow's S3 filesystem (pipeline.common.storage, same endpoint and credentials as the pipeline) and
queried as Arrow tables, so no DuckDB extension has to be downloaded.
"""

from __future__ import annotations

import io
import itertools
from datetime import datetime, timedelta
from typing import Any

import duckdb
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from pipeline.common import lake, plan_files, storage
from pipeline.common.schemas import RESOURCE_TYPES
from pipeline.ui import lakeview

_names = itertools.count()
RESOURCE_LIST = ", ".join(RESOURCE_TYPES)


class Query:
    """One request's DuckDB connection over one lake root."""

    def __init__(self, root: str) -> None:
        self.root = root
        self.con = duckdb.connect(config={"threads": 2})
        self.con.execute("SET TimeZone = 'UTC'")

    def __enter__(self) -> Query:
        return self

    def __exit__(self, *exc: object) -> None:
        self.con.close()

    def df(self, sql: str, params: list[Any] | None = None) -> pd.DataFrame:
        return self.con.execute(sql, params or []).df()

    def view_files(self, uris: list[str]) -> str | None:
        """A view over Parquet files (None when there are none)."""
        if not uris:
            return None
        name = f"v{next(_names)}"
        if storage.is_s3(uris[0]):
            tables = [pq.read_table(io.BytesIO(storage.read_bytes(u))) for u in uris]
            self.con.register(name, pa.concat_tables(tables, promote_options="permissive"))
        else:
            self.con.read_parquet(uris).create_view(name)
        return name

    def view_table(self, table: pa.Table) -> str:
        name = f"t{next(_names)}"
        self.con.register(name, table)
        return name

    def view_partitioned(self, dataset: str, first: datetime, last: datetime, *, kind: str = "raw") -> str | None:
        """A view over the hour partitions of lake/<kind>/<dataset>/ dated first..last (inclusive days);
        only those days' directories are listed and read."""
        base = storage.join(self.root, kind, dataset)
        lo, hi = f"{first:%Y-%m-%d}", f"{last:%Y-%m-%d}"
        days = [name for name in storage.list_names(base) if name.startswith("date=") and lo <= name[len("date="):] <= hi]
        if not days:
            return None
        name = f"p{next(_names)}"
        if storage.is_s3(base):
            expr = (pads.field("date") >= lo) & (pads.field("date") <= hi)
            table = lake.read_partitioned(base, filter_expr=expr)
            if table.num_rows == 0:
                return None
            self.con.register(name, table)
            return name
        patterns = [storage.join(base, day, "hour=*", "part-*.parquet") for day in days]
        try:
            self.con.read_parquet(patterns, hive_partitioning=True, union_by_name=True).create_view(name)
        except duckdb.IOException:  # a day directory without files (being rewritten): nothing to show
            return None
        return name


# -- plans ------------------------------------------------------------------------------------

def plan_table(root: str, plan_id: str, attempt: int) -> pa.Table:
    """The plan's rows, from bytes verified against the manifest's sha256 (PlanIntegrityError otherwise)."""
    _, files = plan_files.read_attempt(root, plan_id, attempt)
    return pq.read_table(pa.BufferReader(files[plan_files.PLAN_FILE]))


def plan_cells(q: Query, plan: str, table: pa.Table) -> pd.DataFrame:
    """Per window, region and resource: the τ-quantile demand, what is pre-allocated (and counted), headroom, cost."""
    effective = "sum(effective_quantity)" if "effective_quantity" in table.column_names else "sum(quantity)"
    failover = "max(failover_quantity)" if "failover_quantity" in table.column_names else "NULL"
    return q.df(f"""
        SELECT valid_from, region, resource_type, any_value(demand_quantile) AS demand_quantile,
               sum(quantity) AS pre_allocated, {effective} AS counted, {failover} AS failover,
               sum(hourly_cost) AS hourly_cost, count(DISTINCT line_id) AS lines
        FROM {plan} GROUP BY ALL ORDER BY valid_from, region, resource_type""")


def plan_lines(q: Query, plan: str, table: pa.Table, window: datetime | None) -> pd.DataFrame:
    """One row per instance line of a window (all windows when None), with its cost and the previous plan's count."""
    where = "WHERE valid_from = ?" if window is not None else ""
    previous = "any_value(previous_count)" if "previous_count" in table.column_names else "NULL"
    warm = "any_value(warm_count)" if "warm_count" in table.column_names else "NULL"  # plans before the warm tier lack it
    return q.df(f"""
        SELECT line_id, valid_from, region, instance_type, purchase_option, any_value(count) AS count,
               sum(hourly_cost) AS hourly_cost, {previous} AS previous_count, {warm} AS warm_count,
               {", ".join(f"sum(quantity) FILTER (WHERE resource_type = '{r}') AS {r}" for r in RESOURCE_TYPES)}
        FROM {plan} {where} GROUP BY ALL ORDER BY region, purchase_option, instance_type""",
                [window] if window is not None else None)


def plan_reasons(q: Query, plan: str, window: datetime | None) -> pd.DataFrame:
    where = "WHERE valid_from = ?" if window is not None else ""
    return q.df(f"""SELECT line_id, region, resource_type, instance_type, purchase_option, reason FROM {plan} {where}
                    ORDER BY region, instance_type, purchase_option, resource_type""",
                [window] if window is not None else None)


def plan_costs(q: Query, plan: str) -> pd.DataFrame:
    """Cost per window by instance type and purchase option."""
    return q.df(f"""SELECT valid_from, instance_type, purchase_option, sum(cost) AS hourly_cost, sum(count) AS instances
                    FROM (SELECT line_id, valid_from, instance_type, purchase_option, any_value(count) AS count,
                                 sum(hourly_cost) AS cost FROM {plan} GROUP BY ALL)
                    GROUP BY ALL ORDER BY valid_from, instance_type, purchase_option""")


def plan_windows(q: Query, plan: str) -> list[datetime]:
    return [row[0] for row in q.con.execute(f"SELECT DISTINCT valid_from FROM {plan} ORDER BY 1").fetchall()]


# -- actual demand ----------------------------------------------------------------------------

def _covering_run(root: str, name: str, start: datetime, end: datetime) -> str | None:
    """The feature run that holds the hours [start, end): the first one built at or after `end`
    (it saw them all), else the newest one built after `start` (it saw some)."""
    found = lakeview.runs(root, "features", name)
    later = [run for when, run in found if when >= end]
    if later:
        return later[0]
    partial = [run for when, run in found if when > start]
    return partial[-1] if partial else None


def actual_demand(q: Query, start: datetime, end: datetime, regions: list[str] | None = None) -> pd.DataFrame:
    """Peak concurrent demand per region, resource and hour in [start, end) as it happened (long format)."""
    run = _covering_run(q.root, "region_demand_hourly", start, end)
    empty = pd.DataFrame(columns=["hour", "region", "resource_type", "actual"])
    if run is None:
        return empty
    view = q.view_files([storage.join(q.root, "features", "region_demand_hourly", run, "part-0.parquet")])
    frame = q.df(f"""
        UNPIVOT (SELECT hour, region, {RESOURCE_LIST} FROM {view} WHERE hour >= ? AND hour < ?)
        ON {RESOURCE_LIST} INTO NAME resource_type VALUE actual ORDER BY hour, region""", [start, end])
    return frame[frame["region"].isin(regions)] if regions else frame


# -- forecasts --------------------------------------------------------------------------------

def forecast_runs(root: str) -> list[str]:
    """Forecast run ids, newest first."""
    return [run[len("run="):] for _, run in reversed(lakeview.runs(root, "forecasts"))]


def forecast_series(q: Query, run_id: str) -> pd.DataFrame:
    """Series of a forecast run with their model (from the forecast file)."""
    view = q.view_files([storage.join(lake.forecast_dir(q.root, run_id), "forecast.parquet")])
    return q.df(f"SELECT series_id, any_value(model) AS model, count(*) AS steps FROM {view} GROUP BY 1 ORDER BY 1")


def forecast_rows(q: Query, run_id: str, series_id: str) -> pd.DataFrame:
    view = q.view_files([storage.join(lake.forecast_dir(q.root, run_id), "forecast.parquet")])
    return q.df(f"SELECT * FROM {view} WHERE series_id = ? ORDER BY ds", [series_id])


def _series_sql(series_id: str) -> tuple[str, str, list[Any]] | None:
    """(feature set, SELECT of hour and y, parameters) of the hourly history behind a series id."""
    kind, _, rest = series_id.partition(":")
    middle, _, measure = rest.rpartition(":")
    if kind == "region" and measure in RESOURCE_TYPES:
        return "region_demand_hourly", f"SELECT hour, {measure} AS y FROM {{v}} WHERE region = ?", [middle]
    if kind == "pair" and "→" in middle:
        src, dst = middle.split("→", 1)
        return ("pair_volume_hourly", "SELECT hour, sum(requests) AS y FROM {v} WHERE source_region = ? AND destination_region = ? "
                "GROUP BY hour", [src, dst])
    if kind == "inbound":
        return "pair_volume_hourly", "SELECT hour, sum(requests) AS y FROM {v} WHERE destination_region = ? GROUP BY hour", [middle]
    return None


def series_history(q: Query, series_id: str, start: datetime, end: datetime) -> pd.DataFrame:
    """The series' observed hourly values in [start, end) (empty for series without an hourly feature)."""
    spec = _series_sql(series_id)
    if spec is None:
        return pd.DataFrame(columns=["hour", "y"])
    feature, select, params = spec
    run = _covering_run(q.root, feature, start, end)
    if run is None:
        return pd.DataFrame(columns=["hour", "y"])
    view = q.view_files([storage.join(q.root, "features", feature, run, "part-0.parquet")])
    sql = f"SELECT * FROM ({select.format(v=view)}) WHERE hour >= ? AND hour < ? ORDER BY hour"
    return q.df(sql, [*params, start, end])


# -- operations -------------------------------------------------------------------------------

def irc_hit_rate(q: Query, start: datetime, end: datetime) -> pd.DataFrame:
    """Per destination region and hour: capacity decisions, served pre-allocated, hit rate (invalid requests apart)."""
    view = q.view_partitioned("irc_outcomes", start, end)
    if view is None:
        return pd.DataFrame(columns=["hour", "region", "decisions", "hits", "on_demand", "failures", "invalid", "hit_rate"])
    return q.df(f"""
        WITH o AS (SELECT *, status = 'failure' AND miss_reason IS NULL AS invalid FROM {view}
                   WHERE requested_at >= ? AND requested_at < ?)
        SELECT date_trunc('hour', requested_at) AS hour, coalesce(destination_region, '(none)') AS region,
               count(*) FILTER (WHERE NOT invalid) AS decisions,
               count(*) FILTER (WHERE NOT invalid AND path = 'preallocated') AS hits,
               count(*) FILTER (WHERE NOT invalid AND path = 'on_demand') AS on_demand,
               count(*) FILTER (WHERE NOT invalid AND status = 'failure') AS failures,
               count(*) FILTER (WHERE invalid) AS invalid,
               hits / nullif(decisions, 0) AS hit_rate
        FROM o GROUP BY ALL ORDER BY hour, region""", [start, end])


def quarantined(q: Query, start: datetime, end: datetime, search: str = "", limit: int = 500) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(counts per dataset and rule, up to `limit` rows matching `search`) of rows quarantined in [start, end]."""
    frames, counts = [], []
    for dataset in storage.list_names(storage.join(q.root, "quarantine")):
        view = q.view_partitioned(dataset, start, end, kind="quarantine")
        if view is None:
            continue
        kind = "coalesce(reason_kind, split_part(reason, ':', 1))"
        counts.append(q.df(f"SELECT dataset, {kind} AS rule, count(*) AS rows FROM {view} GROUP BY ALL"))
        frames.append(q.df(f"""SELECT date, hour, dataset, source_file, line_number, reason, raw FROM {view}
                               WHERE ? = '' OR contains(lower(reason), lower(?)) OR contains(lower(raw), lower(?))
                               ORDER BY date, hour, line_number LIMIT ?""", [search, search, search, limit]))
    rows = pd.concat(frames, ignore_index=True).head(limit) if frames else pd.DataFrame()
    totals = pd.concat(counts, ignore_index=True).sort_values("rows", ascending=False) if counts else pd.DataFrame()
    return totals, rows


def requests_for(q: Query, region: str, start: datetime, end: datetime, limit: int = 2000) -> pd.DataFrame:
    """Peering requests into `region` that were active in [start, end): the demand behind a plan window."""
    carry = timedelta(days=3)
    view = q.view_partitioned("peering_requests", start - carry, end)
    if view is None:
        return pd.DataFrame()
    return q.df(f"""SELECT request_id, requested_at, source_region, destination_region, {RESOURCE_LIST}, duration_s, priority
                    FROM {view} WHERE destination_region = ? AND requested_at < ?
                      AND requested_at + to_microseconds(CAST(duration_s * 1e6 AS BIGINT)) > ?
                    ORDER BY requested_at LIMIT ?""", [region, end, start, limit])
