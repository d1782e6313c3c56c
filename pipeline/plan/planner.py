"""The plan stage: forecast quantiles → per-region demand → CP-SAT allocation → plan rows + manifest.

A plan covers `plan_windows` hours from the run's interval end, in windows of `plan_window_minutes`
(an hour each, or 30 / 15 minutes planned from the sub-hourly forecast run, pipeline.forecast.windows).
Rows follow the plan contract in pipeline.common.schemas.PLAN (`hourly_cost` is a rate, USD per hour,
whatever the window's length); `manifest.json` records where every number came from.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.common import lake, plan_files, storage
from pipeline.common.config import Settings
from pipeline.common.intervals import DataInterval
from pipeline.common.schemas import PLAN, RESOURCE_POOLS, RESOURCE_TYPES
from pipeline.forecast.engine import read_forecast
from pipeline.plan.allocate import CAPACITY_COLUMN, COMPUTE_POOL_RESOURCES, Offer
from pipeline.plan.bounds import clamp_catalog, clamp_demand, clamp_pools, log_clamps
from pipeline.plan.core import CellPlan, PlanningProblem, PlanResult, RegionMix, solve_plan
from pipeline.plan.costs import CostLayer, ResolvedCosts, layer_from_dict, layer_from_text, resolve_costs
from pipeline.plan.explain import held, row_reason
from pipeline.plan.inputs import previous_counts, previous_plan, request_mix
from pipeline.plan.policy import PlannerConfig, load_planner_config
from pipeline.plan.quantile import check_tau_overrides, region_demand_quantiles, shift_tau, tau_by_resource
from pipeline.plan.warm import WarmCosts, resolve_warm, tier_taus
from pipeline.plan.zones import RegionZones, ZoneCatalog, ZoneLayer, load_zone_catalog, resolve_zones, spread_rows, zones_manifest
from pipeline.plan.zones import layer_from_dict as zone_layer_from_dict
from pipeline.plan.zones import layer_from_text as zone_layer_from_text

# plan.parquet: the PLAN contract plus the planner's own columns (readers select PLAN's by name):
#   effective_quantity  capacity counted toward demand (spot: risk-discounted)
#   failover_quantity   N+1 headroom the region keeps (per region/window/resource)
#   relocated_quantity  flexible demand moved in (+) or out (−)
#   previous_count      the line's count in the previous plan (null: none)
#   warm_count          warm (stopped, pre-initialised) instances beside the line (pipeline.plan.warm); plans
#                       made before the warm tier lack the column (the IaC falls back to WARM_POOL_FRACTION)
#   warm_hourly_cost    what holding them costs per hour, split over the line's rows like hourly_cost
#   zone_counts         the line's instances per availability zone, JSON {zone: n} (null: one unnamed zone)
#   zone_spare_count    instances beyond `count` for N+1 across zones (pipeline.plan.zones)
#   zone_spare_hourly_cost  their share of `hourly_cost` (which includes them: they are billed)
PLAN_FILE_SCHEMA = (PLAN.append(pa.field("effective_quantity", pa.float64()))
                    .append(pa.field("failover_quantity", pa.float64()))
                    .append(pa.field("relocated_quantity", pa.float64()))
                    .append(pa.field("previous_count", pa.int64()))
                    .append(pa.field("warm_count", pa.int64()))
                    .append(pa.field("warm_hourly_cost", pa.float64()))
                    .append(pa.field("zone_counts", pa.string()))
                    .append(pa.field("zone_spare_count", pa.int64()))
                    .append(pa.field("zone_spare_hourly_cost", pa.float64())))


def plan_id_for(interval: DataInterval) -> str:
    """Plans are named by the interval they were made at; a re-run writes a new attempt of the same plan."""
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


@dataclass
class _PlanInputs:
    """What the plan stage read for one interval, and the planning problem made of it."""

    plan_id: str
    windows: list[pd.Timestamp]
    window_length: pd.Timedelta
    forecast: pd.DataFrame  # the region demand forecast the windows are planned from
    window_forecast_run_id: str | None  # the sub-hourly forecast run it came from (None: the hourly run)
    catalog: pd.DataFrame
    pools_table: pa.Table
    pools: pd.DataFrame
    config: PlannerConfig
    config_source: dict[str, Any]
    taus: dict[str, float]
    costs: ResolvedCosts
    demand: pd.DataFrame  # window, region, resource_type, demand, tau, model
    meta: dict[tuple[pd.Timestamp, str, str], tuple[float, float, str]]  # (window, region, resource) -> (demand, τ, model)
    pool_map: dict[str, dict[str, float]]  # region -> resource -> available quantity
    mix: dict[str, RegionMix]
    problem: PlanningProblem
    clamped: list[dict[str, Any]]  # inputs outside the contract's bounds, clamped (pipeline.plan.bounds)
    warm: WarmCosts
    warm_taus: dict[str, dict[str, float]]  # region -> resource -> τ_warm where the warm tier pays
    zones: dict[str, RegionZones]  # each region's availability zones (pipeline.plan.zones)
    zone_catalog: ZoneCatalog
    zone_layers: list[ZoneLayer]


def build_plan(interval: DataInterval, settings: Settings, forecast_run_id: str, *, config: PlannerConfig | None = None,
               tau_overrides: dict[str, dict[str, float]] | None = None, window_forecast_run_id: str | None = None) -> dict:
    """Plan the windows after `interval.end` and write plan.parquet, pools and manifest.json.

    `config` defaults to `<source_root>/inventory/planner.json` over the built-in defaults;
    `tau_overrides` ({region: {resource_type: τ}}) replace the cost-derived τ where given;
    `window_forecast_run_id` names the sub-hourly forecast run (default: the interval's).
    """
    inputs = _read_inputs(interval, settings, forecast_run_id, config=config, tau_overrides=tau_overrides,
                          window_forecast_run_id=window_forecast_run_id)
    log_clamps(inputs.plan_id, inputs.clamped)
    result = solve_plan(inputs.problem, inputs.config)
    rows = spread_rows(_plan_rows(result, inputs), inputs.zones)
    plan = pa.Table.from_pylist(rows, schema=PLAN_FILE_SCHEMA) if rows else PLAN_FILE_SCHEMA.empty_table()
    manifest = _manifest(inputs, result, interval=interval, settings=settings, forecast_run_id=forecast_run_id,
                         tau_overrides=tau_overrides, rows=plan.num_rows)
    manifest["zones"] = zones_manifest(rows, inputs.zones, inputs.zone_catalog, inputs.zone_layers, result.cost, inputs.pool_map)
    # every window's hourly rate for as long as the window lasts: the plan's cost in USD over its windows
    manifest["hourly_cost_total"] = round((result.cost + manifest["zones"]["hourly_cost_zone_headroom"]) * _hours(inputs), 6)
    files = {"plan.parquet": _parquet_bytes(plan), "resource_pools.parquet": _parquet_bytes(_remaining_pools(inputs.pools, plan))}
    attempt = plan_files.write_attempt(settings.lake_root, inputs.plan_id, files, manifest)
    out_dir = plan_files.attempt_dir(settings.lake_root, inputs.plan_id, attempt)
    return {"plan_id": inputs.plan_id, "attempt": attempt, "path": storage.join(out_dir, "plan.parquet"), "rows": plan.num_rows,
            "hourly_cost_total": manifest["hourly_cost_total"], "shortfall": len(result.shortfalls),
            "plan_sha256": plan_files.sha256_hex(files["plan.parquet"])}


def _hours(inputs: _PlanInputs) -> float:
    """A window's length in hours."""
    return float(inputs.window_length / pd.Timedelta(hours=1))


def plan_windows_for(interval: DataInterval, settings: Settings) -> tuple[list[pd.Timestamp], pd.Timedelta]:
    """The plan's window starts from the interval end, and their length."""
    length = pd.Timedelta(minutes=settings.plan_window_minutes)
    return [pd.Timestamp(interval.end) + k * length for k in range(settings.plan_window_count)], length


def _region_forecast(interval: DataInterval, settings: Settings, forecast_run_id: str,
                     window_forecast_run_id: str | None) -> tuple[pd.DataFrame, str | None]:
    """The forecast the windows are planned from: the hourly run, or for sub-hourly windows the
    windows run (pipeline.forecast.windows; named after the interval unless given)."""
    if settings.plan_window_minutes == 60:
        return read_forecast(settings, forecast_run_id), None
    from pipeline.forecast.windows import window_run_id

    run_id = window_forecast_run_id or window_run_id(interval, settings.plan_window_minutes)
    try:
        return read_forecast(settings, run_id), run_id
    except FileNotFoundError as exc:
        raise FileNotFoundError(f"{exc}; plans of {settings.plan_window_minutes}-minute windows need the windows forecast "
                                "(pipeline.run.stage_forecast_windows, run by `peerscale run` and the hourly DAG)") from None


def _parquet_bytes(table: pa.Table) -> bytes:
    """One Parquet file (zstd) as bytes: the same table gives the same bytes, so a re-run's hash matches."""
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd")
    return bytes(sink.getvalue().to_pybytes())


def _read_inputs(interval: DataInterval, settings: Settings, forecast_run_id: str, *, config: PlannerConfig | None,
                 tau_overrides: dict[str, dict[str, float]] | None, window_forecast_run_id: str | None = None) -> _PlanInputs:
    """The forecast's τ-quantile demand per region and window, the catalog, pools, request mix and
    previous plan as of `interval.end`, and the planner config (with where it came from)."""
    forecast, window_forecast_run_id = _region_forecast(interval, settings, forecast_run_id, window_forecast_run_id)
    catalog, clamped = clamp_catalog(lake.read_reference(settings.lake_root, "instance_catalog", interval.end).to_pandas())
    pools_table = lake.read_reference(settings.lake_root, "resource_pools", interval.end)
    pools, pool_clamps = clamp_pools(pools_table.to_pandas())
    clamped += pool_clamps
    if config is None:
        config, config_source = load_planner_config(settings.source_root)
    else:
        config_source = {"source": "argument", "fingerprint": None}
    taus = tau_by_resource(settings.cost)
    planned_regions = forecast_regions(forecast)
    costs = resolve_costs(catalog, planned_regions, cost_layers(config, settings), reference=settings.cost)
    warm = resolve_warm(config.costs, settings.warm_texts)
    region_taus, warm_taus = _tier_taus(costs, planned_regions, warm)
    for region, per_resource in check_tau_overrides(tau_overrides).items():  # the feedback controller's offset, on the region's τ
        for resource, override in per_resource.items():
            cost_tau = region_taus.get(region, {}).get(resource, taus[resource])
            region_taus.setdefault(region, {})[resource] = shift_tau(cost_tau, override, taus[resource])
    windows, window_length = plan_windows_for(interval, settings)
    demand, demand_clamps = clamp_demand(region_demand_quantiles(forecast, taus, windows, overrides=region_taus))
    clamped = demand_clamps + clamped
    demand["window"] = pd.to_datetime(demand["window"], utc=True)
    regions = sorted(demand["region"].unique())
    meta = {(w, r, k): (d, t, m) for w, r, k, d, t, m in demand[["window", "region", "resource_type", "demand", "tau", "model"]]
            .itertuples(index=False)}
    pool_map = {r: g.set_index("resource_type")["available_quantity"].astype(float).to_dict() for r, g in pools.groupby("region")}
    mix = request_mix(settings.lake_root, interval.end, config.mix_lookback_days, regions, config.critical_share_default,
                      clamped=clamped)
    prev = previous_plan(settings, interval.end)
    warm_demand = _warm_demand(forecast, taus, windows, warm_taus)
    zone_catalog, zone_layers = load_zone_catalog(settings.source_root), zone_layers_for(config, settings)
    problem = PlanningProblem(
        windows=windows, regions=regions,
        demand={(w, r): {k: meta[(w, r, k)][0] for k in RESOURCE_TYPES if (w, r, k) in meta} for w in windows for r in regions},
        offers=_cell_offers(catalog), pools=pool_map, mix=mix,
        c_under=dict(settings.cost.c_under), c_over=dict(settings.cost.c_over),
        c_under_by_region=costs.kind_by_region("c_under", regions), c_over_by_region=costs.kind_by_region("c_over", regions),
        previous=previous_counts(prev[1], windows, regions) if prev else None,
        previous_plan_id=prev[0] if prev else None,
        warm_demand=warm_demand, warm_hold_fraction=warm.hold_fraction,
    )
    return _PlanInputs(plan_id=plan_id_for(interval), windows=windows, window_length=window_length, forecast=forecast,
                       window_forecast_run_id=window_forecast_run_id, catalog=catalog, pools_table=pools_table,
                       pools=pools, config=config, config_source=config_source, taus=taus, costs=costs, demand=demand, meta=meta,
                       pool_map=pool_map, mix=mix, problem=problem, clamped=clamped, warm=warm, warm_taus=warm_taus,
                       zones=resolve_zones(zone_catalog, regions, zone_layers), zone_catalog=zone_catalog, zone_layers=zone_layers)


Taus = dict[str, dict[str, float]]  # region -> resource -> τ


def _tier_taus(costs: ResolvedCosts, regions: list[str], warm: WarmCosts) -> tuple[Taus, Taus]:
    """Per region and resource the running τ and, where the warm tier pays, τ_warm (pipeline.plan.warm).
    Without the tier the running τ is the cost τ (`ResolvedCosts.taus_by_region`)."""
    if not warm.enabled:
        return costs.taus_by_region(regions), {}
    running: dict[str, dict[str, float]] = {}
    warm_taus: dict[str, dict[str, float]] = {}
    for region in regions:
        for r in RESOURCE_TYPES:
            run, top = tier_taus(costs.value("c_over", region, r), costs.value("c_under", region, r), warm)
            running.setdefault(region, {})[r] = round(run, 6)
            if top is not None:
                warm_taus.setdefault(region, {})[r] = round(top, 6)
    return running, warm_taus


def _warm_demand(forecast: pd.DataFrame, taus: dict[str, float], windows: list[pd.Timestamp],
                 warm_taus: dict[str, dict[str, float]]) -> dict[tuple[pd.Timestamp, str], dict[str, float]]:
    """The τ_warm quantile of each region's demand per window: what running plus warm capacity covers."""
    if not warm_taus:
        return {}
    quantiles, _ = clamp_demand(region_demand_quantiles(forecast, taus, windows, overrides=warm_taus))
    quantiles["window"] = pd.to_datetime(quantiles["window"], utc=True)
    out: dict[tuple[pd.Timestamp, str], dict[str, float]] = {}
    for w, region, r, d in quantiles[["window", "region", "resource_type", "demand"]].itertuples(index=False):
        if r in warm_taus.get(region, {}):
            out.setdefault((w, region), {})[r] = float(d)
    return out


def forecast_regions(forecast: pd.DataFrame) -> list[str]:
    """The regions with region demand series in the forecast (`region:<r>:<resource>`)."""
    ids = pd.Series(forecast["series_id"].unique())
    return sorted({sid.split(":")[1] for sid in ids[ids.str.startswith("region:")]})


def cost_layers(config: PlannerConfig, settings: Settings) -> list[CostLayer]:
    """The cost settings over the catalog's defaults, in order: planner.json, then env and CLI (pipeline.plan.costs)."""
    return [layer_from_dict(config.costs or None, "planner config"),
            *(layer_from_text(under, over, source) for source, under, over in settings.cost_texts)]


def zone_layers_for(config: PlannerConfig, settings: Settings) -> list[ZoneLayer]:
    """The zone settings over the zone catalog, in order: planner.json, then env and CLI (pipeline.plan.zones)."""
    return [zone_layer_from_dict(config.zones or None, "planner config"),
            *(zone_layer_from_text(text, source) for source, text in settings.zone_texts)]


def _plan_rows(result: PlanResult, inputs: _PlanInputs) -> list[dict]:
    """One row per (cell, instance line, resource), in cell and line order (the PLAN contract plus the planner's columns)."""
    rows: list[dict] = []
    for (_, region), cell in sorted(result.cells.items()):
        by_key = {o.key: o for o in cell.offers}
        scale = _reserved_share(cell, inputs.pool_map.get(region, {}))
        for (itype, option), count in sorted(cell.counts.items()):
            rows.extend(_line_rows(cell, by_key[(itype, option)], count, scale=scale, result=result, inputs=inputs,
                                   warm=cell.warm.get((itype, option), 0)))
    return rows


def _reserved_share(cell: CellPlan, pool: dict[str, float]) -> dict[str, float]:
    """Share of what the instances bring that the plan reserves, per resource. Storage and bandwidth come
    with the instances but are reserved only as far as the demand quantile plus failover headroom needs
    (and the pool allows): what instances bring beyond that stays in the pool for on-demand requests
    instead of being held idle."""
    provided = held(cell, effective=False)
    scale = {}
    for r in RESOURCE_TYPES:
        if r in COMPUTE_POOL_RESOURCES or provided[r] <= 0:
            scale[r] = 1.0
            continue
        target = cell.demand.get(r, 0.0) + cell.failover.get(r, 0.0)
        if r in pool:
            target = min(target, pool[r])
        scale[r] = min(1.0, max(target, 0.0) / provided[r])
    return scale


def _line_rows(cell: CellPlan, offer: Offer, count: int, *, scale: dict[str, float], result: PlanResult,
               inputs: _PlanInputs, warm: int = 0) -> list[dict]:
    """The rows of one instance line (`count` instances of one offer in one cell), one per resource."""
    window, region, (itype, option) = cell.window, cell.region, offer.key
    line_id = f"{region}/{window:%Y%m%dT%H%MZ}/{itype}/{option}"
    rows = []
    for resource in RESOURCE_TYPES:
        qty = round(offer.capacity[resource] * count * scale[resource], 6)
        d, tau, model = inputs.meta.get((window, region, resource), (0.0, inputs.taus[resource], "none"))
        reason = row_reason(plan=cell, offer=offer, count=count, resource=resource, quantity=qty, tau=float(tau), model=str(model),
                            result=result, config=inputs.config, previous_plan_id=inputs.problem.previous_plan_id)
        rows.append({
            "plan_id": inputs.plan_id,
            "valid_from": window.to_pydatetime(),
            "valid_to": (window + inputs.window_length).to_pydatetime(),
            "region": region,
            "resource_type": resource,
            "quantity": qty,
            "instance_type": itype,
            "purchase_option": option,
            "count": count,
            "hourly_cost": round(offer.hourly_price * count / len(RESOURCE_TYPES), 8),
            "demand_quantile": round(float(d), 6),
            "line_id": line_id,
            "reason": reason,
            "effective_quantity": round(qty * offer.counted, 6),
            "failover_quantity": round(cell.failover.get(resource, 0.0), 6),
            "relocated_quantity": round(cell.result.relocated.get(resource, 0.0), 6),
            "previous_count": None if cell.previous is None else int(cell.previous.get((itype, option), 0)),
            "warm_count": warm if inputs.warm.enabled else None,  # null: no warm plan (the IaC keeps its default pool)
            "warm_hourly_cost": (round(offer.hourly_price * inputs.warm.hold_fraction * warm / len(RESOURCE_TYPES), 8)
                                 if inputs.warm.enabled else None),
        })
    return rows


def _remaining_pools(pools: pd.DataFrame, plan: pa.Table) -> pa.Table:
    """The pools less the most the plan holds of each resource in any window (what on-demand requests can still use)."""
    peak_held: dict = {}
    if plan.num_rows:
        held_q = plan.to_pandas().groupby(["valid_from", "region", "resource_type"])["quantity"].sum()
        peak_held = held_q.groupby(level=["region", "resource_type"]).max().to_dict()
    remaining = pools.assign(
        available_quantity=[max(a - peak_held.get((r, t), 0.0), 0.0) for r, t, a in
                            zip(pools["region"], pools["resource_type"], pools["available_quantity"])]
    )
    return pa.Table.from_pandas(remaining[RESOURCE_POOLS.names], schema=RESOURCE_POOLS, preserve_index=False)


def _manifest(inputs: _PlanInputs, result: PlanResult, *, interval: DataInterval, settings: Settings, forecast_run_id: str,
              tau_overrides: dict[str, dict[str, float]] | None, rows: int) -> dict:
    """Where every number of the plan came from: inputs and their fingerprints, τ, config, the solver's
    objective and bound, shortfalls, redundancy, relocations, churn, packing."""
    forecast_manifest = lake.read_json(storage.join(lake.forecast_dir(settings.lake_root, forecast_run_id), "manifest.json"))
    windows, config, mix = inputs.windows, inputs.config, inputs.mix
    return {
        "plan_id": inputs.plan_id,
        "created_at": interval.end.isoformat(),
        "data_interval": {"start": interval.start.isoformat(), "end": interval.end.isoformat()},
        "valid_from": windows[0].isoformat(),
        "valid_to": (windows[-1] + inputs.window_length).isoformat(),
        "windows": len(windows),
        "window_minutes": int(inputs.window_length / pd.Timedelta(minutes=1)),
        "forecast_run_id": forecast_run_id,
        "window_forecast_run_id": inputs.window_forecast_run_id,
        "model_per_series": {sid: sel["model"] for sid, sel in forecast_manifest["selection"].items()},
        "tau": inputs.taus,
        "tau_by_region": _tau_by_region(inputs.demand, inputs.problem.regions),
        "tau_overrides": {r: dict(v) for r, v in sorted((tau_overrides or {}).items())},
        "cost_model": inputs.costs.to_manifest(inputs.problem.regions),
        "warm_tier": {**inputs.warm.to_manifest(), "tau_warm_by_region": inputs.warm_taus,
                      "warm_hourly_cost_total": round(float(sum(
                          o.hourly_price * inputs.warm.hold_fraction * n for c in result.cells.values()
                          for o in c.offers for k, n in c.warm.items() if o.key == k)) * _hours(inputs), 6)},
        "max_spot_share": config.max_spot_share,
        "planner_config": {**config.to_dict(), **{"_source": inputs.config_source["source"],
                                                  "_fingerprint": inputs.config_source["fingerprint"]}},
        **_solver_summary(result),
        "shortfall": result.shortfalls,
        "left_to_on_demand": result.left_to_on_demand,
        "redundancy": _redundancy_summary(result, mix, config),
        "relocations": result.relocations,
        "churn": _churn_summary(result, inputs.problem.previous_plan_id),
        "packing": [
            {"window": w.isoformat(), "region": r, **c.packing, "unhosted_sessions": c.unhosted_sessions}
            for (w, r), c in sorted(result.cells.items()) if c.packing
        ],
        "request_mix": {r: {"source": m.source, "requests": m.requests} for r, m in sorted(mix.items())},
        "input_fingerprints": {
            "forecast": _table_fingerprint(pa.Table.from_pandas(inputs.forecast, preserve_index=False)),
            "instance_catalog": _table_fingerprint(pa.Table.from_pandas(inputs.catalog, preserve_index=False)),
            "resource_pools": _table_fingerprint(inputs.pools_table),
        },
        "clamped": inputs.clamped,
        "rows": rows,
        "status": "planned",
    }


def _tau_by_region(demand: pd.DataFrame, regions: list[str]) -> dict[str, dict[str, float]]:
    return {r: {k: round(float(demand[(demand["region"] == r) & (demand["resource_type"] == k)]["tau"].iloc[0]), 6)
                for k in RESOURCE_TYPES if ((demand["region"] == r) & (demand["resource_type"] == k)).any()}
            for r in regions}


def _solver_summary(result: PlanResult) -> dict[str, Any]:
    """Objective, bound and gap of the plan (and of the allocation before the packing check), cost, per-window detail."""
    allocation = result.allocation
    return {
        "objective": round(result.objective, 6),
        "lower_bound": round(result.lower_bound, 6),
        "gap": round(result.gap, 6),
        "bound_source": "sum over the window models of CP-SAT's proven objective bound (valid for packable plans too)",
        "allocation": {"objective": round(allocation["objective"], 6), "lower_bound": round(allocation["lower_bound"], 6),
                       "gap": round(result.allocation_gap, 6), "cost": round(allocation["cost"], 6),
                       "packing_premium": round(result.cost / allocation["cost"] - 1, 6) if allocation["cost"] > 0 else 0.0},
        "hourly_cost_total": round(result.cost, 6),
        "solver_status": sorted({s for w in result.windows.values() for s in w.statuses}),
        "windows_detail": [
            {"window": w.isoformat(), "mode": info.mode, "models": info.models, "objective": round(info.objective, 6),
             "lower_bound": round(info.lower_bound, 6), "cost": round(info.cost, 6), "status": info.statuses,
             "budget_binding": info.budget_binding,
             "unconstrained_cost": None if info.unconstrained_cost is None else round(info.unconstrained_cost, 6)}
            for w, info in sorted(result.windows.items())
        ],
    }


def _redundancy_summary(result: PlanResult, mix: dict, config: PlannerConfig) -> dict:
    out = {}
    absorbs: dict[str, list[str]] = {}
    for region, (partner, _) in result.partners.items():
        if partner:
            absorbs.setdefault(partner, []).append(region)
    for region, (partner, how) in sorted(result.partners.items()):
        m = mix.get(region)
        critical = m.share(config.critical_priorities) if m else {}
        headroom: dict[str, float] = {}
        for (_, r), cell in result.cells.items():
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


def read_plan(settings: Settings, plan_id: str, attempt: int | None = None) -> tuple[pd.DataFrame, dict]:
    """A plan's rows and manifest (with its apply records, kept beside it) by id, hashes verified.

    `attempt` defaults to the newest published attempt (else the newest complete one). FileNotFoundError
    when the plan does not exist; PlanIntegrityError (a ValueError) when its files do not match their hashes.
    """
    root = settings.lake_root
    attempt = plan_files.default_attempt(root, plan_id) if attempt is None else attempt
    manifest, files = plan_files.read_attempt(root, plan_id, attempt)
    records_path = storage.join(lake.plan_dir(root, plan_id), "apply.json")
    if storage.exists(records_path):
        manifest = {**manifest, **lake.read_json(records_path)}
    return pq.read_table(pa.BufferReader(files["plan.parquet"])).to_pandas(), manifest


def latest_plan_id(settings: Settings) -> str:
    """The plan_id LATEST names (FileNotFoundError when nothing is published yet)."""
    pointer = plan_files.latest_pointer(settings.lake_root)
    if not storage.exists(pointer):
        raise FileNotFoundError(f"no published plan: {pointer} does not exist yet (run `peerscale run` or `make demo`)")
    return plan_files.read_latest(settings.lake_root)[0]


__all__ = ["build_plan", "latest_plan_id", "plan_id_for", "read_plan"]
