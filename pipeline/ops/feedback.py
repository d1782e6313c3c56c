"""Close the loop: IRC decisions (`raw/irc_outcomes`) → per-region τ for the next plan.

The IRC logs every decision, partitioned by the hour of `requested_at`. Each hourly run calls
`run_feedback(interval, settings)`, which reads the decisions of its data interval
`[start, end)` only (never a later hour), measures each destination region's **pre-allocation
hit rate** and moves that region's τ toward a target hit rate:

    hit rate     = pre-allocated / (pre-allocated + capacity misses)
                   capacity misses: exhausted, not_planned, no_window - the ones a bigger or
                   smaller pre-allocation would change. Invalid requests, requests with no plan,
                   after the plan's validity or during a ledger outage are not counted.
    e            = target - hit rate                  (> 0: too many misses → raise τ)
    c            = n / (n + n0)                       (few requests → small steps)
    w_rt         = share of the misses short on rt, relative to the most-short resource
                   when raising (only the binding resources grow); 1 when lowering
    u_rt        += ki · c · w_rt · e                  (integral term, on the logit scale)
    τ_rt         = σ(logit(τ_base,rt) + u_rt + kp · c · w_rt · e)   clamped to [0.5, 0.995]

τ_base is the cost-derived newsvendor quantile (CostModel): the cost optimum for a calibrated
forecast. The hit-rate target is a service floor on top of it, so by default the controller only
raises τ where the hit rate falls short and never trades below τ_base (`lower_below_cost=True`
lets it lower τ where hits exceed the target, for deployments that price a miss below the cost
model: a replay of the samples showed lower τ costing more, not less). The integral `u` is clamped so that
τ stays within bounds (no wind-up) and carried from the previous interval's file, so hours
without traffic keep the last adjustment. The result is written (atomically, idempotently: a
re-run of an interval rewrites the same bytes) to

    lake/feedback/tau/<interval end token>.json   {"tau": {region: {resource_type: τ}}, ...}

and the planner reads it with `load_tau_overrides(lake_root, as_of)`: the newest file whose
interval ended at or before `as_of` (no look-ahead).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from pipeline.common import lake, storage
from pipeline.common.config import Settings
from pipeline.common.intervals import DataInterval, parse_utc
from pipeline.irc.contract import RESOURCE_TYPES
from pipeline.irc.coordinator import CAPACITY_MISSES
from pipeline.ops import HIT_RATE_TARGET

OUTCOMES_DATASET = "irc_outcomes"
EXCLUDED_MISSES = frozenset({"no_plan", "plan_expired", "plan_not_yet_valid", "ledger_error"})


@dataclass(frozen=True)
class ControllerConfig:
    """Gains and bounds of the τ controller (see module docstring)."""

    target_hit_rate: float = HIT_RATE_TARGET
    kp: float = 0.5
    ki: float = 1.0
    n0: float = 20.0
    tau_min: float = 0.5
    tau_max: float = 0.995
    lower_below_cost: bool = False

    def __post_init__(self) -> None:
        if not 0.0 < self.target_hit_rate < 1.0:
            raise ValueError(f"target_hit_rate must be in (0, 1), got {self.target_hit_rate}")
        if not 0.0 < self.tau_min < self.tau_max < 1.0:
            raise ValueError(f"need 0 < tau_min < tau_max < 1, got {self.tau_min}, {self.tau_max}")


@dataclass
class RegionOutcomes:
    """What one region's decisions in the interval say about its pre-allocation."""

    hits: int = 0
    misses: int = 0
    short: dict[str, int] = field(default_factory=dict)  # resource type -> misses short on it

    @property
    def requests(self) -> int:
        return self.hits + self.misses

    @property
    def hit_rate(self) -> float | None:
        return self.hits / self.requests if self.requests else None


def tau_dir(lake_root: str) -> str:
    return storage.join(lake_root, "feedback", "tau")


def tau_path(lake_root: str, interval: DataInterval) -> str:
    return storage.join(tau_dir(lake_root), f"{interval.token}.json")


# ---------------------------------------------------------------------------------------------
# Reading outcomes
# ---------------------------------------------------------------------------------------------


def read_outcomes(lake_root: str, start: datetime, end: datetime) -> Any:
    """Decisions with start <= requested_at < end (a pyarrow Table; only those hour partitions are read).

    A request decided more than once (client retries, several replicas) counts once: its latest decision.
    """
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.dataset as ds

    from pipeline.irc.outcomes import outcome_schema

    schema = outcome_schema()
    interval = DataInterval(parse_utc(start).replace(minute=0, second=0, microsecond=0), parse_utc(end))
    base = lake.raw_dir(lake_root, OUTCOMES_DATASET)
    tables = []
    for hour in interval.hours():
        directory = lake.hour_partition(base, hour)
        if not storage.exists(directory):
            continue
        fs, path = storage.filesystem(directory)
        tables.append(ds.dataset(path, filesystem=fs, format="parquet", schema=schema).to_table())
    if not tables:
        return schema.empty_table()
    table = pa.concat_tables(tables)
    at = table["requested_at"]
    mask = pc.and_(pc.greater_equal(at, pa.scalar(parse_utc(start), at.type)), pc.less(at, pa.scalar(parse_utc(end), at.type)))
    table = table.filter(pc.fill_null(mask, False))
    if table.num_rows == 0:
        return table
    # Latest decision per request_id (ties: file order).
    order = pc.sort_indices(table, sort_keys=[("request_id", "ascending"), ("decided_at", "descending")])
    table = table.take(order)
    ids = table["request_id"].to_pylist()
    keep = [i for i, rid in enumerate(ids) if rid is None or i == 0 or rid != ids[i - 1]]
    return table.take(pa.array(keep, pa.int64()))


def summarize(outcomes: Any) -> dict[str, RegionOutcomes]:
    """Per destination region: hits, capacity misses, and which resources the misses lacked."""
    regions: dict[str, RegionOutcomes] = {}
    columns = outcomes.select(["destination_region", "path", "miss_reason", "short_resources", "status"]).to_pylist()
    for row in columns:
        region = row["destination_region"]
        if not region:
            continue
        if row["path"] == "preallocated":
            regions.setdefault(region, RegionOutcomes()).hits += 1
        elif row["miss_reason"] in CAPACITY_MISSES:
            stats = regions.setdefault(region, RegionOutcomes())
            stats.misses += 1
            for rt in (row["short_resources"] or "").split(","):
                if rt:
                    stats.short[rt] = stats.short.get(rt, 0) + 1
    return regions


# ---------------------------------------------------------------------------------------------
# Controller
# ---------------------------------------------------------------------------------------------


def _logit(p: float) -> float:
    return math.log(p / (1.0 - p))


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def controller_step(
    stats: Mapping[str, RegionOutcomes],
    previous: Mapping[str, Mapping[str, float]],
    base_tau: Mapping[str, float],
    config: ControllerConfig,
) -> tuple[dict[str, dict[str, float]], dict[str, dict[str, float]], dict[str, float | None]]:
    """One PI step. Returns (integral per region/resource, τ per region/resource, error per region).

    `previous` is the integral state of the last interval; regions seen before but without traffic
    now keep their state (and τ).
    """
    lo_logit, hi_logit = _logit(config.tau_min), _logit(config.tau_max)
    integrals: dict[str, dict[str, float]] = {}
    taus: dict[str, dict[str, float]] = {}
    errors: dict[str, float | None] = {}
    for region in sorted(set(stats) | set(previous)):
        region_stats = stats.get(region)
        prior = previous.get(region, {})
        n = region_stats.requests if region_stats is not None else 0
        hit_rate = region_stats.hit_rate if region_stats is not None else None  # None exactly when n == 0
        error = config.target_hit_rate - hit_rate if hit_rate is not None else None
        errors[region] = error
        confidence = n / (n + config.n0) if n else 0.0
        short = region_stats.short if region_stats is not None else {}
        most = max(short.values(), default=0)
        integrals[region], taus[region] = {}, {}
        for rt, base in sorted(base_tau.items()):
            anchor = _logit(min(max(base, config.tau_min), config.tau_max))
            floor = lo_logit - anchor if config.lower_below_cost else 0.0
            u = max(float(prior.get(rt, 0.0)), floor)
            step = 0.0
            if error is not None:
                weight = 1.0 if error <= 0 or most == 0 else short.get(rt, 0) / most
                step = confidence * weight * error
                u = min(max(u + config.ki * step, floor), hi_logit - anchor)
            tau = _sigmoid(anchor + max(u + config.kp * step, floor))
            integrals[region][rt] = round(u, 9)
            taus[region][rt] = round(min(max(tau, config.tau_min), config.tau_max), 6)
    return integrals, taus, errors


def _previous_file(lake_root: str, before_token: str) -> tuple[str | None, dict[str, Any]]:
    tokens = [t for t in _tokens(lake_root) if t < before_token]
    if not tokens:
        return None, {}
    token = max(tokens)
    return token, lake.read_json(storage.join(tau_dir(lake_root), f"{token}.json"))


def _tokens(lake_root: str) -> list[str]:
    import pyarrow.fs as pafs

    fs, path = storage.filesystem(tau_dir(lake_root))
    infos = fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))
    return sorted(
        info.base_name[: -len(".json")]
        for info in infos
        if info.type == pafs.FileType.File and info.base_name.endswith(".json") and not info.base_name.startswith(".")
    )


def _round6(value: float | None) -> float | None:
    return None if value is None else round(value, 6)


def run_feedback(
    interval: DataInterval, settings: Settings, config: ControllerConfig | None = None
) -> dict[str, Any]:
    """Read the interval's IRC outcomes, step the controller, write `feedback/tau/<token>.json`.

    Returns the written document (JSON-ready). Deterministic in its inputs: no clock is read.
    """
    config = config or ControllerConfig()
    root = settings.lake_root
    base_tau = {rt: settings.cost.tau(rt) for rt in RESOURCE_TYPES}
    outcomes = read_outcomes(root, interval.start, interval.end)
    stats = summarize(outcomes)
    previous_token, previous_doc = _previous_file(root, interval.token)
    previous_state = {r: v.get("integral", {}) for r, v in previous_doc.get("regions", {}).items()}
    integrals, taus, errors = controller_step(stats, previous_state, base_tau, config)
    document = {
        "interval": {"start": interval.start.isoformat(), "end": interval.end.isoformat()},
        "previous": previous_token,
        "outcomes_read": outcomes.num_rows,
        "config": asdict(config),
        "base_tau": {rt: round(t, 6) for rt, t in sorted(base_tau.items())},
        "regions": {
            region: {
                "requests": stats[region].requests if region in stats else 0,
                "hits": stats[region].hits if region in stats else 0,
                "hit_rate": _round6(stats[region].hit_rate) if region in stats else None,
                "error": _round6(errors[region]),
                "short": dict(sorted(stats[region].short.items())) if region in stats else {},
                "integral": integrals[region],
                "tau": taus[region],
            }
            for region in sorted(taus)
        },
        "tau": taus,
    }
    lake.write_json_atomic(tau_path(root, interval), document)
    return document


def load_tau_overrides(lake_root: str, as_of: str | datetime) -> dict[str, dict[str, float]]:
    """{region: {resource_type: τ}} from the newest feedback file of an interval ending at or before `as_of`.

    Empty when there is none yet (the planner then uses the cost-derived τ everywhere).
    """
    cutoff = parse_utc(as_of).strftime("%Y%m%dT%H%MZ")  # same format as DataInterval.token
    tokens = [t for t in _tokens(str(lake_root)) if t <= cutoff]
    if not tokens:
        return {}
    document = lake.read_json(storage.join(tau_dir(str(lake_root)), f"{max(tokens)}.json"))
    return {region: {rt: float(t) for rt, t in taus.items()} for region, taus in document.get("tau", {}).items()}


def stage_feedback(interval: DataInterval, settings: Settings) -> dict[str, Any]:
    """The hourly run's feedback stage: `run_feedback`, returning only paths and counts (XCom-sized)."""
    document = run_feedback(interval, settings)
    return {
        "path": tau_path(settings.lake_root, interval),
        "outcomes_read": document["outcomes_read"],
        "regions": sorted(document["tau"]),
    }
