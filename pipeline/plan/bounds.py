"""Poison containment: every quantity the planner reads is clamped to the contract's bounds before
it reaches CP-SAT, and every clamp is named.

CP-SAT works on 64-bit integers (quantities in hundredths, prices in micro-dollars): one inf, NaN
or 1e300 in a forecast quantile, a pool or the catalog used to raise TypeError/OverflowError and
stop every hourly plan. Ingest already quarantines such rows, but a forecast can still produce a
huge or non-finite quantile, and a lake written before the bounds may hold anything. The bounds
are those of pipeline.common.schemas:

| what | field | clamped to | NaN becomes |
|---|---|---|---|
| demand quantile per (window, region, resource) | `demand` | [0, MAX_QUANTITY[resource]] | 0 |
| pool per (region, resource) | `available_quantity`, `total_quantity` | [0, MAX_QUANTITY[resource]] | 0 (no capacity) |
| catalog instance size | `vcpu`, `memory_gib`, `storage_gib`, `network_gbps` | [0, MAX_INSTANCE_SIZE[column]] | 0 |
| catalog price | `on_demand_hourly`, `spot_hourly` | [0, MAX_HOURLY_PRICE_USD] | the bound (never bought) |
| spot interruption rate | `spot_interruption_rate` | [0, 1] | 1 |
| request size / duration (request mix) | `vcpu` … `bandwidth_gbps`, `duration_s` | [0, MAX_QUANTITY] / [0, MAX_DURATION_S] | 0 |

Each clamp is one entry `{source, region, resource_type, field, value, bound, rows}` (value: the
worst offending value, non-finite ones as "inf", "-inf" or "nan"; rows: how many were clamped) in
the plan manifest's `clamped` list and in one warning log line.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np
import pandas as pd

from pipeline.common.schemas import MAX_DURATION_S, MAX_HOURLY_PRICE_USD, MAX_INSTANCE_SIZE, MAX_QUANTITY

log = logging.getLogger(__name__)

UNKNOWN_RESOURCE_BOUND = max(MAX_QUANTITY.values())  # a resource type the contract does not name
CATALOG_BOUNDS: dict[str, tuple[float, float]] = {
    **{c: (MAX_INSTANCE_SIZE[c], 0.0) for c in MAX_INSTANCE_SIZE},  # column -> (upper bound, NaN becomes)
    "on_demand_hourly": (MAX_HOURLY_PRICE_USD, MAX_HOURLY_PRICE_USD),
    "spot_hourly": (MAX_HOURLY_PRICE_USD, MAX_HOURLY_PRICE_USD),
    "spot_interruption_rate": (1.0, 1.0),
}


def json_number(value: float) -> float | str:
    """A float as JSON can hold it: finite as is, otherwise "inf", "-inf" or "nan"."""
    if math.isnan(value):
        return "nan"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return float(value)


def clamp_series(values: pd.Series, upper: float, nan_to: float) -> tuple[pd.Series, pd.Series]:
    """(clamped values, mask of the rows that changed): NaN → `nan_to`, then into [0, upper]."""
    raw = pd.to_numeric(values, errors="coerce").astype(float)
    fixed = raw.fillna(nan_to).clip(lower=0.0, upper=upper)
    changed = raw.isna() | (raw != fixed)
    return fixed, changed


def _worst(values: pd.Series) -> float:
    """The most offending of the clamped values: NaN first, then the largest magnitude."""
    array = values.to_numpy(float)
    if np.isnan(array).any():
        return float("nan")
    return float(array[np.argmax(np.abs(array))])


def _entries(frame: pd.DataFrame, changed: pd.Series, field: str, source: str, bound: float | pd.Series,
             resource_column: str | None) -> list[dict[str, Any]]:
    """One clamp entry per (region, resource_type) among the changed rows of `frame[field]`."""
    if not changed.any():
        return []
    bad = frame.loc[changed]
    keys = ["region"] + ([resource_column] if resource_column else [])
    out = []
    for key, group in bad.groupby(keys, sort=True, dropna=False):
        region, resource = (key if isinstance(key, tuple) else (key,)) + ((None,) if not resource_column else ())
        limit = bound.loc[group.index].iloc[0] if isinstance(bound, pd.Series) else bound
        out.append({"source": source, "region": str(region), "resource_type": None if resource is None else str(resource),
                    "field": field, "value": json_number(_worst(group[field])), "bound": float(limit), "rows": len(group)})
    return out


def _resource_bound(resource_types: pd.Series) -> pd.Series:
    return resource_types.map(lambda r: MAX_QUANTITY.get(r, UNKNOWN_RESOURCE_BOUND)).astype(float)


def clamp_demand(demand: pd.DataFrame) -> tuple[pd.DataFrame, list[dict[str, Any]]]:
    """Demand quantiles (window, region, resource_type, demand, …) into [0, MAX_QUANTITY[resource]]."""
    if demand.empty:
        return demand, []
    bound = _resource_bound(demand["resource_type"])
    raw = pd.to_numeric(demand["demand"], errors="coerce").astype(float)
    fixed = raw.fillna(0.0).clip(lower=0.0).where(lambda v: v <= bound, bound)
    changed = raw.isna() | (raw != fixed)
    entries = _entries(demand, changed, "demand", "forecast", bound, "resource_type")
    return demand.assign(demand=fixed), entries


def clamp_pools(pools: pd.DataFrame) -> tuple[pd.DataFrame, list[dict[str, Any]]]:
    """Pool quantities into [0, MAX_QUANTITY[resource]]; NaN is no capacity."""
    if pools.empty:
        return pools, []
    bound = _resource_bound(pools["resource_type"])
    entries: list[dict[str, Any]] = []
    out = pools.copy()
    for field in ("available_quantity", "total_quantity"):
        raw = pd.to_numeric(out[field], errors="coerce").astype(float)
        fixed = raw.fillna(0.0).clip(lower=0.0).where(lambda v: v <= bound, bound)
        changed = raw.isna() | (raw != fixed)
        entries += _entries(out, changed, field, "resource_pools", bound, "resource_type")
        out[field] = fixed
    return out, entries


def clamp_catalog(catalog: pd.DataFrame) -> tuple[pd.DataFrame, list[dict[str, Any]]]:
    """Instance sizes, prices and interruption rates into their bounds (see the module table)."""
    if catalog.empty:
        return catalog, []
    entries: list[dict[str, Any]] = []
    out = catalog.copy()
    for field, (upper, nan_to) in CATALOG_BOUNDS.items():
        if field not in out.columns:
            continue
        fixed, changed = clamp_series(out[field], upper, nan_to)
        entries += [{**e, "resource_type": None, "instance_type": _types(out, changed, e["region"])}
                    for e in _entries(out, changed, field, "instance_catalog", upper, None)]
        out[field] = fixed
    return out, entries


def _types(frame: pd.DataFrame, changed: pd.Series, region: str) -> str:
    return ",".join(sorted(frame.loc[changed & (frame["region"] == region), "instance_type"].astype(str).unique()))


def clamp_requests(frame: pd.DataFrame, columns: tuple[str, ...]) -> tuple[pd.DataFrame, list[dict[str, Any]]]:
    """Request sizes and durations of the request mix (keyed by destination region) into their bounds."""
    if frame.empty:
        return frame, []
    entries: list[dict[str, Any]] = []
    out = frame.copy()
    keyed = out.assign(region=out["destination_region"])
    for field in (*columns, "duration_s"):
        upper = MAX_DURATION_S if field == "duration_s" else MAX_QUANTITY.get(field, UNKNOWN_RESOURCE_BOUND)
        fixed, changed = clamp_series(out[field], upper, 0.0)
        entries += [{**e, "resource_type": None if field == "duration_s" else field}
                    for e in _entries(keyed, changed, field, "peering_requests", upper, None)]
        out[field] = fixed
    return out, entries


def log_clamps(plan_id: str, clamped: list[dict[str, Any]]) -> None:
    """One warning line naming every clamp (the manifest's `clamped` list holds the detail)."""
    if clamped:
        names = "; ".join(f"{c['source']} {c['region']}/{c.get('resource_type') or c.get('instance_type') or '-'} "
                          f"{c['field']}={c['value']} -> bound {c['bound']:g} ({c['rows']} row(s))" for c in clamped)
        log.warning("plan %s: %d input value group(s) outside the contract's bounds were clamped: %s",
                    plan_id, len(clamped), names)
