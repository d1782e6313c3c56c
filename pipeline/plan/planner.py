"""The plan stage: forecast quantiles → per-region demand → CP-SAT allocation → plan rows + manifest.

A plan covers `plan_windows` hourly windows from the run's interval end. Rows follow the plan
contract in pipeline.common.schemas.PLAN; `manifest.json` records where every number came from.
"""

from __future__ import annotations

import hashlib
from datetime import timedelta

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.common import lake, storage
from pipeline.common.config import Settings
from pipeline.common.intervals import DataInterval
from pipeline.common.schemas import PLAN, RESOURCE_POOLS, RESOURCE_TYPES
from pipeline.forecast.engine import read_forecast
from pipeline.plan.allocate import CAPACITY_COLUMN, COMPUTE_POOL_RESOURCES, Offer
from pipeline.plan.core import PlanningProblem, PlanResult, solve_plan
from pipeline.plan.explain import held, row_reason
from pipeline.plan.inputs import previous_counts, previous_plan, request_mix
from pipeline.plan.policy import PlannerConfig, load_planner_config
from pipeline.plan.quantile import region_demand_quantiles, tau_by_resource

# plan.parquet: the PLAN contract plus the planner's own columns (readers select PLAN's by name).
PLAN_FILE_SCHEMA = PLAN.append(pa.field("effective_quantity", pa.float64()))  # capacity counted toward demand (spot: risk-discounted)
PLAN_FILE_SCHEMA = PLAN_FILE_SCHEMA.append(pa.field("failover_quantity", pa.float64()))  # N+1 headroom the region keeps (per region/window/resource)
PLAN_FILE_SCHEMA = PLAN_FILE_SCHEMA.append(pa.field("relocated_quantity", pa.float64()))  # flexible demand moved in (+) or out (−)
PLAN_FILE_SCHEMA = PLAN_FILE_SCHEMA.append(pa.field("previous_count", pa.int64()))  # the line's count in the previous plan (null: none)


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


def _cell_offers(catalog: pd.DataFrame) -> dict[str, list[Offer]]:
    return {region: offers_for(catalog, region) for region in sorted(catalog["region"].unique())}


def build_plan(interval: DataInterval, settings: Settings, forecast_run_id: str, *, config: PlannerConfig | None = None,
               tau_overrides: dict[str, dict[str, float]] | None = None) -> dict:
    """Plan the windows after `interval.end` and write plan.parquet, pools and manifest.json.

    `config` defaults to `<source_root>/inventory/planner.json` over the built-in defaults;
    `tau_overrides` ({region: {resource_type: τ}}) replace the cost-derived τ where given.
    """
    forecast = read_forecast(settings, forecast_run_id)
    catalog = lake.read_reference(settings.lake_root, "instance_catalog", interval.end).to_pandas()
    pools_table = lake.read_reference(settings.lake_root, "resource_pools", interval.end)
    pools = pools_table.to_pandas()
    if config is None:
        config, config_source = load_planner_config(settings.source_root)
    else:
        config_source = {"source": "argument", "fingerprint": None}
    taus = tau_by_resource(settings.cost)
    windows = [pd.Timestamp(interval.end + timedelta(hours=k)) for k in range(settings.plan_windows)]
    demand = region_demand_quantiles(forecast, taus, windows, overrides=tau_overrides)
    demand["window"] = pd.to_datetime(demand["window"], utc=True)
    plan_id = plan_id_for(interval)
    regions = sorted(demand["region"].unique())
    meta = {(w, r, k): (d, t, m) for w, r, k, d, t, m in demand[["window", "region", "resource_type", "demand", "tau", "model"]]
            .itertuples(index=False)}
    pool_map = {r: g.set_index("resource_type")["available_quantity"].astype(float).to_dict() for r, g in pools.groupby("region")}
    mix = request_mix(settings.lake_root, interval.end, config.mix_lookback_days, regions, config.critical_share_default)
    prev = previous_plan(settings, interval.end)
    problem = PlanningProblem(
        windows=windows, regions=regions,
        demand={(w, r): {k: meta[(w, r, k)][0] for k in RESOURCE_TYPES if (w, r, k) in meta} for w in windows for r in regions},
        offers=_cell_offers(catalog), pools=pool_map, mix=mix,
        c_under=dict(settings.cost.c_under), c_over=dict(settings.cost.c_over),
        previous=previous_counts(prev[1], windows, regions) if prev else None,
        previous_plan_id=prev[0] if prev else None,
    )
    result = solve_plan(problem, config)

    rows: list[dict] = []
    for (window, region), cell in sorted(result.cells.items()):
        by_key = {o.key: o for o in cell.offers}
        provided = held(cell, effective=False)
        pool = pool_map.get(region, {})
        # Storage and bandwidth come with the instances but are reserved only as far as the demand quantile plus
        # failover headroom needs (and the pool allows): what instances bring beyond that stays in the pool for
        # on-demand requests instead of being held idle.
        scale = {}
        for r in RESOURCE_TYPES:
            if r in COMPUTE_POOL_RESOURCES or provided[r] <= 0:
                scale[r] = 1.0
                continue
            target = cell.demand.get(r, 0.0) + cell.failover.get(r, 0.0)
            if r in pool:
                target = min(target, pool[r])
            scale[r] = min(1.0, max(target, 0.0) / provided[r])
        for (itype, option), count in sorted(cell.counts.items()):
            offer = by_key[(itype, option)]
            line_id = f"{region}/{window:%Y%m%dT%H%MZ}/{itype}/{option}"
            for resource in RESOURCE_TYPES:
                qty = round(offer.capacity[resource] * count * scale[resource], 6)
                d, tau, model = meta.get((window, region, resource), (0.0, taus[resource], "none"))
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
                    "hourly_cost": round(offer.hourly_price * count / len(RESOURCE_TYPES), 8),
                    "demand_quantile": round(float(d), 6),
                    "line_id": line_id,
                    "reason": row_reason(cell, offer, count, resource, qty, float(tau), str(model), result, config, problem.previous_plan_id),
                    "effective_quantity": round(qty * offer.counted, 6),
                    "failover_quantity": round(cell.failover.get(resource, 0.0), 6),
                    "relocated_quantity": round(cell.result.relocated.get(resource, 0.0), 6),
                    "previous_count": None if cell.previous is None else int(cell.previous.get((itype, option), 0)),
                })

    plan = pa.Table.from_pylist(rows, schema=PLAN_FILE_SCHEMA) if rows else PLAN_FILE_SCHEMA.empty_table()
    held_q = plan.to_pandas().groupby(["valid_from", "region", "resource_type"])["quantity"].sum() if rows else pd.Series(dtype=float)
    peak_held = held_q.groupby(level=["region", "resource_type"]).max().to_dict() if rows else {}
    remaining = pools.assign(
        available_quantity=[max(a - peak_held.get((r, t), 0.0), 0.0) for r, t, a in
                            zip(pools["region"], pools["resource_type"], pools["available_quantity"])]
    )
    remaining_table = pa.Table.from_pandas(remaining[RESOURCE_POOLS.names], schema=RESOURCE_POOLS, preserve_index=False)

    forecast_manifest = lake.read_json(storage.join(lake.forecast_dir(settings.lake_root, forecast_run_id), "manifest.json"))
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
        "tau_by_region": {r: {k: round(float(demand[(demand["region"] == r) & (demand["resource_type"] == k)]["tau"].iloc[0]), 6)
                              for k in RESOURCE_TYPES if ((demand["region"] == r) & (demand["resource_type"] == k)).any()}
                          for r in regions},
        "tau_overrides": {r: dict(v) for r, v in sorted((tau_overrides or {}).items())},
        "cost_model": {"c_over": settings.cost.c_over, "c_under": settings.cost.c_under,
                       "tau_rule": "tau = c_under / (c_under + c_over) per resource"},
        "max_spot_share": config.max_spot_share,
        "planner_config": {**config.to_dict(), **{"_source": config_source["source"], "_fingerprint": config_source["fingerprint"]}},
        "objective": round(result.objective, 6),
        "lower_bound": round(result.lower_bound, 6),
        "gap": round(result.gap, 6),
        "bound_source": "sum over the window models of CP-SAT's proven objective bound (valid for packable plans too)",
        "allocation": {"objective": round(result.allocation["objective"], 6), "lower_bound": round(result.allocation["lower_bound"], 6),
                       "gap": round(result.allocation_gap, 6), "cost": round(result.allocation["cost"], 6),
                       "packing_premium": round(result.cost / result.allocation["cost"] - 1, 6) if result.allocation["cost"] > 0 else 0.0},
        "hourly_cost_total": round(result.cost, 6),
        "solver_status": sorted({s for w in result.windows.values() for s in w.statuses}),
        "windows_detail": [
            {"window": w.isoformat(), "mode": info.mode, "models": info.models, "objective": round(info.objective, 6),
             "lower_bound": round(info.lower_bound, 6), "cost": round(info.cost, 6), "status": info.statuses,
             "budget_binding": info.budget_binding,
             "unconstrained_cost": None if info.unconstrained_cost is None else round(info.unconstrained_cost, 6)}
            for w, info in sorted(result.windows.items())
        ],
        "shortfall": result.shortfalls,
        "left_to_on_demand": result.left_to_on_demand,
        "redundancy": _redundancy_summary(result, mix, config),
        "relocations": result.relocations,
        "churn": _churn_summary(result, problem.previous_plan_id),
        "packing": [
            {"window": w.isoformat(), "region": r, **c.packing, "unhosted_sessions": c.unhosted_sessions}
            for (w, r), c in sorted(result.cells.items()) if c.packing
        ],
        "request_mix": {r: {"source": m.source, "requests": m.requests} for r, m in sorted(mix.items())},
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
        lake.write_parquet_atomic(table, storage.join(out_dir, name))
    lake.write_json_atomic(storage.join(out_dir, "manifest.json"), manifest)
    return {"plan_id": plan_id, "path": storage.join(out_dir, "plan.parquet"), "rows": plan.num_rows,
            "hourly_cost_total": manifest["hourly_cost_total"], "shortfall": len(result.shortfalls)}


def _redundancy_summary(result: PlanResult, mix: dict, config: PlannerConfig) -> dict:
    out = {}
    absorbs: dict[str, list[str]] = {}
    for region, (partner, _) in result.partners.items():
        if partner:
            absorbs.setdefault(partner, []).append(region)
    for region, (partner, how) in sorted(result.partners.items()):
        m = mix.get(region)
        critical = m.share(config.critical_priorities) if m else {}
        headroom = {}
        for (w, r), cell in result.cells.items():
            if r == region:
                for k, v in cell.failover.items():
                    headroom[k] = max(headroom.get(k, 0.0), v)
        out[region] = {"partner": partner, "partner_rule": how, "absorbs": sorted(absorbs.get(region, [])),
                       "critical_share": {k: round(v, 4) for k, v in critical.items()},
                       "max_headroom": {k: round(v, 4) for k, v in sorted(headroom.items())}}
    return out


def _churn_summary(result: PlanResult, previous_plan_id: str | None) -> dict:
    if previous_plan_id is None:
        return {"previous_plan_id": None}
    kept = changed = added = removed = 0
    for cell in result.cells.values():
        before = cell.previous or {}
        for key in set(before) | set(cell.counts):
            b, a = before.get(key, 0), cell.counts.get(key, 0)
            if a == b:
                kept += a > 0
            else:
                changed += 1
                added += max(a - b, 0)
                removed += max(b - a, 0)
    return {"previous_plan_id": previous_plan_id, "lines_kept": kept, "lines_changed": changed,
            "instances_added": added, "instances_removed": removed}


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
