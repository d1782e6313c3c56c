"""Data contracts shared by every stage: source formats, lake layout, forecast and plan schemas.

This module is the single source of truth for column names, types and the bounds ingest
enforces. It imports only pyarrow (and `common.numeric`) so that the request-time IRC can use it too.
"""

from __future__ import annotations

import re
from datetime import date

import pyarrow as pa

from pipeline.common.numeric import SECONDS_PER_DAY

RESOURCE_TYPES: tuple[str, ...] = ("vcpu", "memory_gib", "storage_gib", "bandwidth_gbps")
PRIORITIES: tuple[str, ...] = ("low", "normal", "high", "critical")
PURCHASE_OPTIONS: tuple[str, ...] = ("on_demand", "spot")

# Names that reach file paths, templates and SQL are validated against these first.
REGION_PATTERN = re.compile(r"^[a-z]{2}(?:-[a-z]+)+-\d{1,2}$")
INSTANCE_TYPE_PATTERN = re.compile(r"^[a-z][a-z0-9-]*\.[a-z0-9]+$")
PLAN_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")

UTC_TS = pa.timestamp("us", tz="UTC")

# ---------------------------------------------------------------------------------------------
# Source datasets (what a user points peerscale at). Time-partitioned datasets are one file per
# UTC day named <dataset>/<YYYY-MM-DD>.<ext>; reference datasets are single files.
# ---------------------------------------------------------------------------------------------

PEERING_REQUESTS = pa.schema(
    [
        ("request_id", pa.string()),
        ("requested_at", UTC_TS),
        ("source_region", pa.string()),
        ("destination_region", pa.string()),
        ("vcpu", pa.float64()),
        ("memory_gib", pa.float64()),
        ("storage_gib", pa.float64()),
        ("bandwidth_gbps", pa.float64()),
        ("duration_s", pa.float64()),
        ("priority", pa.string()),
    ]
)

REGION_TELEMETRY = pa.schema(
    [
        ("ts", UTC_TS),
        ("region", pa.string()),
        ("cpu_utilization", pa.float64()),
        ("memory_utilization", pa.float64()),
        ("bandwidth_utilization", pa.float64()),
    ]
)

APP_TELEMETRY = pa.schema(
    [
        ("ts", UTC_TS),
        ("region", pa.string()),
        ("active_users", pa.float64()),
        ("transactions_per_s", pa.float64()),
    ]
)

CALENDAR = pa.schema(
    [
        ("event_id", pa.string()),
        ("name", pa.string()),
        ("kind", pa.string()),  # campaign | holiday | season
        ("regions", pa.string()),  # ';'-separated region names, or '*' for all
        ("start_date", pa.date32()),
        ("end_date", pa.date32()),  # inclusive
        ("expected_uplift", pa.float64()),  # multiplicative: 0.3 means +30 %
    ]
)

RESOURCE_POOLS = pa.schema(
    [
        ("region", pa.string()),
        ("resource_type", pa.string()),
        ("available_quantity", pa.float64()),
        ("total_quantity", pa.float64()),
    ]
)

INSTANCE_CATALOG = pa.schema(
    [
        ("region", pa.string()),
        ("instance_type", pa.string()),
        ("vcpu", pa.float64()),
        ("memory_gib", pa.float64()),
        ("storage_gib", pa.float64()),
        ("network_gbps", pa.float64()),
        ("on_demand_hourly", pa.float64()),
        ("spot_hourly", pa.float64()),
        ("spot_interruption_rate", pa.float64()),  # probability of interruption per hour
    ]
)

# ---------------------------------------------------------------------------------------------
# Bounds enforced at ingest (poison containment). Each is about 1000 × the largest value in the
# committed samples, rounded up to a power of ten: generous for any real estate, but finite, so a
# typo such as 1e300 is quarantined with the bound's name instead of reaching the forecasters and
# the planner. A row beyond a bound is quarantined; data_samples/*/README.md lists them.
# ---------------------------------------------------------------------------------------------

# One request, and one resource pool, per resource type (largest sample pool total × 1000).
MAX_QUANTITY: dict[str, float] = {"vcpu": 1e7, "memory_gib": 1e7, "storage_gib": 1e8, "bandwidth_gbps": 1e6}
MAX_DURATION_S = 30.0 * SECONDS_PER_DAY  # longest plausible peering session (the samples' longest is 2 days)
# One instance type of the catalog (largest sample type × 1000).
MAX_INSTANCE_SIZE: dict[str, float] = {"vcpu": 1e5, "memory_gib": 1e6, "storage_gib": 1e7, "network_gbps": 1e5}
MAX_HOURLY_PRICE_USD = 1e4  # on-demand or spot price of one instance-hour
MAX_ACTIVE_USERS = 1e9  # app telemetry, per region and 15 minutes
MAX_TRANSACTIONS_PER_S = 1e7
MAX_UPLIFT = 10.0  # calendar: +1000 %; the lower end is > -1 (demand cannot fall below zero)
MAX_EVENT_DAYS = 366  # a calendar event spans at most a year
CALENDAR_DATES = (date(2000, 1, 1), date(2099, 12, 31))  # what the forecasters' time axis holds
MAX_TEXT_LENGTH = 1024  # characters of an id, a name or a region list (every AWS region fits)

# dataset name -> (schema, time column or None, file extension, partitioned by day?)
SOURCES: dict[str, dict] = {
    "peering_requests": {"schema": PEERING_REQUESTS, "time_column": "requested_at", "ext": "csv"},
    "region_telemetry": {"schema": REGION_TELEMETRY, "time_column": "ts", "ext": "csv"},
    "app_telemetry": {"schema": APP_TELEMETRY, "time_column": "ts", "ext": "jsonl"},
    "calendar": {"schema": CALENDAR, "time_column": None, "ext": "csv", "path": "calendar/events.csv"},
    "resource_pools": {"schema": RESOURCE_POOLS, "time_column": None, "ext": "csv", "path": "inventory/pools.csv"},
    "instance_catalog": {"schema": INSTANCE_CATALOG, "time_column": None, "ext": "csv", "path": "inventory/catalog.csv"},
}
TIME_PARTITIONED_SOURCES: tuple[str, ...] = tuple(k for k, v in SOURCES.items() if v["time_column"])
REFERENCE_SOURCES: tuple[str, ...] = tuple(k for k, v in SOURCES.items() if not v["time_column"])

# ---------------------------------------------------------------------------------------------
# Lake contracts
# ---------------------------------------------------------------------------------------------

QUARANTINE = pa.schema(
    [
        ("dataset", pa.string()),
        ("source_file", pa.string()),
        ("line_number", pa.int64()),
        ("reason", pa.string()),  # what is wrong, with the offending values ("; "-separated)
        ("raw", pa.string()),  # the line as read (bytes that are not UTF-8, and NULs, as \xNN), at most 4 KiB with a note of its length
        ("reason_kind", pa.string()),  # the rules broken, without values ("; "-separated): what reports group by
    ]
)

FORECAST_QUANTILES: tuple[float, ...] = (0.5, 0.8, 0.9, 0.95, 0.99)
FORECAST_LEVELS: tuple[int, ...] = (80, 95)

FORECAST = pa.schema(
    [
        ("series_id", pa.string()),
        ("ds", UTC_TS),
        ("model", pa.string()),
        ("mean", pa.float64()),
        ("q50", pa.float64()),
        ("q80", pa.float64()),
        ("q90", pa.float64()),
        ("q95", pa.float64()),
        ("q99", pa.float64()),
        ("lo_80", pa.float64()),
        ("hi_80", pa.float64()),
        ("lo_95", pa.float64()),
        ("hi_95", pa.float64()),
    ]
)

PLAN = pa.schema(
    [
        ("plan_id", pa.string()),
        ("valid_from", UTC_TS),
        ("valid_to", UTC_TS),
        ("region", pa.string()),
        ("resource_type", pa.string()),
        ("quantity", pa.float64()),  # capacity of this resource that the line pre-allocates
        ("instance_type", pa.string()),
        ("purchase_option", pa.string()),
        ("count", pa.int64()),  # instances on the line (the same on each of its resource rows)
        ("hourly_cost", pa.float64()),  # the line's cost split evenly over its resource rows
        ("demand_quantile", pa.float64()),  # the region's τ-quantile demand for this resource
        ("line_id", pa.string()),  # region/window/instance/option: groups a line's resource rows
        ("reason", pa.string()),
    ]
)


def pair_series_id(source_region: str, destination_region: str) -> str:
    """Series id of a region pair's hourly request count."""
    return f"pair:{source_region}→{destination_region}:requests"


def region_series_id(region: str, resource_type: str) -> str:
    """Series id of a region's concurrent demand for one resource type."""
    return f"region:{region}:{resource_type}"


def parse_series_id(series_id: str) -> dict[str, str]:
    """Split a series id back into its parts (kind, regions, measure)."""
    kind, middle, measure = series_id.split(":")
    if kind == "pair":
        src, dst = middle.split("→")
        return {"kind": kind, "source_region": src, "destination_region": dst, "measure": measure}
    return {"kind": kind, "region": middle, "measure": measure}
