"""The plan stage: forecast quantiles → per-region demand → CP-SAT allocation → plan rows + manifest.

A plan covers `plan_windows` hourly windows from the run's interval end. Rows follow the plan
contract in pipeline.schemas.PLAN; `manifest.json` records where every number came from.
"""

from __future__ import annotations

import hashlib
from datetime import timedelta

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline import lake, storage
from pipeline.config import Settings
from pipeline.forecast.engine import read_forecast
from pipeline.intervals import DataInterval
from pipeline.plan.allocate import CAPACITY_COLUMN, COMPUTE_POOL_RESOURCES, Allocation, Offer, allocate
from pipeline.plan.quantile import region_demand_quantiles, tau_by_resource
from pipeline.schemas import PLAN, RESOURCE_POOLS, RESOURCE_TYPES

MAX_SPOT_SHARE = 0.3


def plan_id_for(interval: DataInterval) -> str:
    """Plans are named by the interval they were made at, so a re-run replaces the same plan."""
    return f"plan-{interval.token}"


def offers_for(catalog: pd.DataFrame, region: str) -> list[Offer]:
    """On-demand and spot offers of every instance type sold in `region`."""
    offers = []
    for row in catalog[catalog["region"] == region].sort_values("instance_type").itertuples(index=False):
        capacity = {r: float(getattr(row, CAPACITY_COLUMN[r])) for r in RESOURCE_TYPES}
        offers.append(Offer(row.instance_type, "on_demand", float(row.on_demand_hourly), capacity))
        offers.append(Offer(row.instance_type, "spot", float(row.spot_hourly), capacity, float(row.spot_interruption_rate)))
    return offers


def _fingerprint(payload: bytes) -> str:
    return "sha256:" + hashlib.sha256(payload).hexdigest()[:16]


def _table_fingerprint(table: pa.Table) -> str:
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    return _fingerprint(sink.getvalue().to_pybytes())


def _reason(region: str, window: pd.Timestamp, resource: str, demand: float, tau: float, model: str, line_qty: float,
            offer: Offer, alloc: Allocation) -> str:
    option = (
        f"spot at ${offer.hourly_price:.4f}/h (≤{int(MAX_SPOT_SHARE * 100)}% of vCPU may be spot)"
        if offer.purchase_option == "spot" else f"on-demand at ${offer.hourly_price:.4f}/h"
    )
    short = f"; SHORTFALL {alloc.shortfall[resource]:.2f} {resource} beyond the pool" if resource in alloc.shortfall else ""
    return (
        f"{region} {window:%Y-%m-%dT%H:%MZ}: q{tau:.2f} of {resource} demand = {demand:.2f} ({model} forecast); "
        f"this line holds {line_qty:.2f}; {offer.instance_type} {option}, chosen by CP-SAT "
        f"({alloc.status.lower()}, region cost ${alloc.cost:.4f}/h){short}"
    )


def build_plan(interval: DataInterval, settings: Settings, forecast_run_id: str) -> dict:
    """Plan the windows after `interval.end` and write plan.parquet, pools and manifest.json."""
    forecast = read_forecast(settings, forecast_run_id)
    catalog = lake.read_reference(settings.lake_root, "instance_catalog", interval.end).to_pandas()
    pools_table = lake.read_reference(settings.lake_root, "resource_pools", interval.end)
    pools = pools_table.to_pandas()
    taus = tau_by_resource(settings.cost)
    windows = [pd.Timestamp(interval.end + timedelta(hours=k)) for k in range(settings.plan_windows)]
    demand = region_demand_quantiles(forecast, taus, windows)
    plan_id = plan_id_for(interval)

    rows: list[dict] = []
    totals = {"objective": 0.0, "lower_bound": 0.0, "cost": 0.0}
    shortfalls: list[dict] = []
    statuses: set[str] = set()
    for (window, region), group in demand.groupby(["window", "region"], sort=True):
        need = dict(zip(group["resource_type"], group["demand"]))
        meta = group.set_index("resource_type")
        pool = pools[pools["region"] == region].set_index("resource_type")["available_quantity"].to_dict()
        offers = offers_for(catalog, region)
        if not offers:
            shortfalls.append({"window": window.isoformat(), "region": region, "resource_type": "*", "shortfall": None,
                               "why": "no instance types in the catalog for this region"})
            continue
        alloc = allocate(need, offers, pool, MAX_SPOT_SHARE)
        statuses.add(alloc.status)
        totals["objective"] += alloc.objective
        totals["lower_bound"] += alloc.lower_bound
        totals["cost"] += alloc.cost
        for resource, amount in alloc.shortfall.items():
            shortfalls.append({"window": window.isoformat(), "region": region, "resource_type": resource,
                               "shortfall": round(amount, 4), "why": "demand quantile exceeds what the region's pool can provide"})
        by_key = {(o.instance_type, o.purchase_option): o for o in offers}
        # Storage and bandwidth are reserved up to the region's pool, even when instances bring more.
        provided = {r: sum(by_key[k].capacity[r] * c for k, c in alloc.counts.items()) for r in RESOURCE_TYPES}
        scale = {
            r: min(1.0, pool[r] / provided[r]) if r not in COMPUTE_POOL_RESOURCES and r in pool and provided[r] > 0 else 1.0
            for r in RESOURCE_TYPES
        }
        for (itype, option), count in sorted(alloc.counts.items()):
            offer = by_key[(itype, option)]
            line_id = f"{region}/{window:%Y%m%dT%H%MZ}/{itype}/{option}"
            line_cost = offer.hourly_price * count
            for resource in RESOURCE_TYPES:
                qty = round(offer.capacity[resource] * count * scale[resource], 6)
                rows.append({
                    "plan_id": plan_id,
                    "valid_from": window.to_pydatetime(),
                    "valid_to": (window + pd.Timedelta(hours=1)).to_pydatetime(),
                    "region": region,
                    "resource_type": resource,
                    "quantity": qty,
                    "instance_type": itype,
                    "purchase_option": option,
                    "count": count,
                    "hourly_cost": round(line_cost / len(RESOURCE_TYPES), 8),
                    "demand_quantile": round(float(meta.loc[resource, "demand"]), 6),
                    "line_id": line_id,
                    "reason": _reason(region, window, resource, float(meta.loc[resource, "demand"]),
                                      float(meta.loc[resource, "tau"]), str(meta.loc[resource, "model"]), qty, offer, alloc),
                })

    plan = pa.Table.from_pylist(rows, schema=PLAN) if rows else PLAN.empty_table()
    held = plan.to_pandas().groupby(["valid_from", "region", "resource_type"])["quantity"].sum() if rows else pd.Series(dtype=float)
    peak_held = held.groupby(level=["region", "resource_type"]).max().to_dict() if rows else {}
    remaining = pools.assign(
        available_quantity=[max(a - peak_held.get((r, t), 0.0), 0.0) for r, t, a in
                            zip(pools["region"], pools["resource_type"], pools["available_quantity"])]
    )
    remaining_table = pa.Table.from_pandas(remaining[RESOURCE_POOLS.names], schema=RESOURCE_POOLS, preserve_index=False)

    forecast_manifest = lake.read_json(storage.join(lake.forecast_dir(settings.lake_root, forecast_run_id), "manifest.json"))
    gap = 0.0 if totals["objective"] <= 0 else max(totals["objective"] - totals["lower_bound"], 0.0) / totals["objective"]
    manifest = {
        "plan_id": plan_id,
        "created_at": interval.end.isoformat(),
        "data_interval": {"start": interval.start.isoformat(), "end": interval.end.isoformat()},
        "valid_from": windows[0].isoformat(),
        "valid_to": (windows[-1] + pd.Timedelta(hours=1)).isoformat(),
        "windows": len(windows),
        "forecast_run_id": forecast_run_id,
        "model_per_series": {sid: sel["model"] for sid, sel in forecast_manifest["selection"].items()},
        "tau": taus,
        "cost_model": {"c_over": settings.cost.c_over, "c_under": settings.cost.c_under},
        "max_spot_share": MAX_SPOT_SHARE,
        "objective": round(totals["objective"], 6),
        "lower_bound": round(totals["lower_bound"], 6),
        "gap": round(gap, 6),
        "hourly_cost_total": round(totals["cost"], 6),
        "solver_status": sorted(statuses),
        "shortfall": shortfalls,
        "input_fingerprints": {
            "forecast": _table_fingerprint(pa.Table.from_pandas(forecast, preserve_index=False)),
            "instance_catalog": _table_fingerprint(pa.Table.from_pandas(catalog, preserve_index=False)),
            "resource_pools": _table_fingerprint(pools_table),
        },
        "rows": plan.num_rows,
        "status": "planned",
    }
    out_dir = lake.plan_dir(settings.lake_root, plan_id)
    for name, table in (("plan.parquet", plan), ("resource_pools.parquet", remaining_table)):
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink, compression="zstd")
        storage.write_bytes_atomic(storage.join(out_dir, name), sink.getvalue().to_pybytes())
    lake.write_json_atomic(storage.join(out_dir, "manifest.json"), manifest)
    return {"plan_id": plan_id, "path": storage.join(out_dir, "plan.parquet"), "rows": plan.num_rows,
            "hourly_cost_total": manifest["hourly_cost_total"], "shortfall": len(shortfalls)}


def read_plan(settings: Settings, plan_id: str) -> tuple[pd.DataFrame, dict]:
    """A plan's rows and manifest by id."""
    out_dir = lake.plan_dir(settings.lake_root, plan_id)
    path = storage.join(out_dir, "plan.parquet")
    if not storage.exists(path):
        raise FileNotFoundError(f"plan {plan_id!r} not found at {path}")
    fs, p = storage.filesystem(path)
    return pq.read_table(p, filesystem=fs).to_pandas(), lake.read_json(storage.join(out_dir, "manifest.json"))


def latest_plan_id(settings: Settings) -> str:
    pointer = lake.latest_pointer(settings.lake_root)
    if not storage.exists(pointer):
        raise FileNotFoundError(f"no published plan: {pointer} does not exist yet (run `peerscale run` or `make demo`)")
    return storage.read_text(pointer).strip()


__all__ = ["build_plan", "latest_plan_id", "plan_id_for", "read_plan"]
