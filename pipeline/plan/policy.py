"""The planner's policy: spot rules, failover partners, latency, quotas, budget, churn — one typed config.

Defaults are derived from the regions present (failover partner = the nearest other region on the
same continent, latency estimated from a built-in table of AWS region locations); everything can be
overridden by an optional `inventory/planner.json` in the source root (format documented in
`data_samples/inventory/README.md`). The config actually used is recorded in the plan manifest.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from pipeline.common.schemas import PRIORITIES, REGION_PATTERN
from pipeline.plan.costs import layer_from_dict
from pipeline.plan.warm import WarmCosts, apply_layer
from pipeline.plan.zones import layer_from_dict as zone_layer_from_dict

PLANNER_FILE = "inventory/planner.json"

# What covering a unit of each priority class is worth, × c_under, when a budget cap binds: the
# budget goes to critical demand first (a knapsack by value). The planner and its model share them.
DEFAULT_PRIORITY_WEIGHTS: dict[str, float] = {"critical": 1000.0, "high": 100.0, "normal": 10.0, "low": 1.0}

# Approximate locations of AWS regions (latitude, longitude, continent). Used only for defaults:
# the failover partner and the latency estimate; both are overridable in planner.json.
REGION_LOCATIONS: dict[str, tuple[float, float, str]] = {
    "us-east-1": (38.9, -77.4, "north-america"),
    "us-east-2": (40.0, -83.0, "north-america"),
    "us-west-1": (37.4, -121.9, "north-america"),
    "us-west-2": (45.8, -119.7, "north-america"),
    "ca-central-1": (45.5, -73.6, "north-america"),
    "ca-west-1": (51.0, -114.1, "north-america"),
    "mx-central-1": (20.6, -100.4, "north-america"),
    "sa-east-1": (-23.5, -46.6, "south-america"),
    "eu-west-1": (53.3, -6.3, "europe"),
    "eu-west-2": (51.5, -0.1, "europe"),
    "eu-west-3": (48.9, 2.4, "europe"),
    "eu-central-1": (50.1, 8.7, "europe"),
    "eu-central-2": (47.4, 8.5, "europe"),
    "eu-north-1": (59.3, 18.1, "europe"),
    "eu-south-1": (45.5, 9.2, "europe"),
    "eu-south-2": (41.6, -0.9, "europe"),
    "il-central-1": (32.1, 34.8, "middle-east"),
    "me-south-1": (26.1, 50.6, "middle-east"),
    "me-central-1": (24.5, 54.4, "middle-east"),
    "af-south-1": (-33.9, 18.4, "africa"),
    "ap-east-1": (22.3, 114.2, "asia-pacific"),
    "ap-south-1": (19.1, 72.9, "asia-pacific"),
    "ap-south-2": (17.4, 78.5, "asia-pacific"),
    "ap-southeast-1": (1.35, 103.8, "asia-pacific"),
    "ap-southeast-2": (-33.9, 151.2, "asia-pacific"),
    "ap-southeast-3": (-6.2, 106.8, "asia-pacific"),
    "ap-southeast-4": (-37.8, 145.0, "asia-pacific"),
    "ap-southeast-5": (3.1, 101.7, "asia-pacific"),
    "ap-southeast-7": (13.8, 100.5, "asia-pacific"),
    "ap-northeast-1": (35.7, 139.7, "asia-pacific"),
    "ap-northeast-2": (37.6, 127.0, "asia-pacific"),
    "ap-northeast-3": (34.7, 135.5, "asia-pacific"),
}


def distance_km(a: str, b: str) -> float | None:
    """Great-circle distance between two known regions (None when either is not in the table)."""
    if a not in REGION_LOCATIONS or b not in REGION_LOCATIONS:
        return None
    (lat1, lon1, _), (lat2, lon2, _) = REGION_LOCATIONS[a], REGION_LOCATIONS[b]
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lon2 - lon1)
    h = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * 6371.0 * math.asin(math.sqrt(h))


def estimated_latency_ms(a: str, b: str) -> float | None:
    """Round-trip estimate: fibre at ~200 km/ms one way, routes 1.6× the great circle, +2 ms."""
    if a == b:
        return 0.0
    d = distance_km(a, b)
    return None if d is None else round(2 * d * 1.6 / 200.0 + 2.0, 1)


@dataclass(frozen=True)
class Quota:
    """Account limits in one region (AWS style: running vCPUs per purchase option, plus per-type caps)."""

    on_demand_vcpu: float | None = None
    spot_vcpu: float | None = None
    instances: dict[str, int] = field(default_factory=dict)  # instance_type -> max count


@dataclass(frozen=True)
class PlannerConfig:
    """Every planning rule that is not a price, a pool or a forecast.

    Spot: a spot offer is used only when its hourly interruption rate is at most
    `max_spot_interruption_rate`; it counts toward demand at (1 − rate × spot_risk_multiplier) of its
    capacity; spot vCPU stays within `max_spot_share` of the region's vCPU.

    Redundancy (N+1 by region): region P = partner(R) keeps headroom for `failover_share` of R's
    critical demand (share of R's demand requested with a priority in `critical_priorities`, from the
    recent request mix; `critical_share_default` when there is none). With several regions naming
    the same partner, only one fails at a time: the partner keeps the largest of their needs.

    Churn: every instance added to or removed from a line relative to the previous published plan
    costs `churn_penalty` × its hourly price in the objective, so a line changes only when the
    hourly saving beats that.

    Budget: with `budget_usd_per_hour` set and a window's unconstrained plan above it, that window
    is re-planned jointly over all regions under the cap, covering demand by priority value first
    (weights `priority_weights` × c_under); what is not covered is named as left to on-demand.

    Relocation (off by default): demand of the `flexible_priorities` may be moved to a region within
    `relocation_max_latency_ms`, at `relocation_cost_fraction` × c_over per unit moved. The plan
    records the moves in the manifest; the IRC does not re-route requests by itself.
    """

    max_spot_share: float = 0.3
    max_spot_share_by_region: dict[str, float] = field(default_factory=dict)
    max_spot_interruption_rate: float = 0.02
    spot_risk_multiplier: float = 1.0
    failover_share: float = 1.0
    critical_priorities: tuple[str, ...] = ("critical", "high")
    critical_share_default: float = 0.2
    partners: dict[str, str] = field(default_factory=dict)
    latency_ms: dict[str, dict[str, float]] = field(default_factory=dict)
    relocation_enabled: bool = False
    relocation_max_latency_ms: float = 40.0
    flexible_priorities: tuple[str, ...] = ("low",)
    relocation_cost_fraction: float = 0.1
    churn_penalty: float = 0.25
    budget_usd_per_hour: float | None = None
    priority_weights: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_PRIORITY_WEIGHTS))
    quotas: dict[str, Quota] = field(default_factory=dict)
    mix_lookback_days: int = 7
    packing_check: bool = True
    max_sessions_per_window: int = 400
    max_session_vcpu: float | None = 8.0  # a session runs as workers of at most this many vCPU (None: indivisible)
    packing_deterministic_time: float = 0.01  # CP-SAT work limit of one packing improvement
    hall_groups: int = 2  # Hall-type hosting groups in the allocation model (the most restrictive; each costs solver time)
    hosting_candidates: int = 10  # instance types each session shape may use when a cell is re-planned for hosting
    hosting_deterministic_time: float = 0.01  # CP-SAT work limit of that re-plan
    typed_packing: bool = True  # a re-planned cell: the typed packing relaxation's LP bound and plan (pipeline.plan.relax)
    solver_deterministic_time: float = 0.005  # CP-SAT work limit per region in a model: deterministic, so reproducible
    solver_relative_gap: float = 0.0075  # a model stops once proven within 0.75 % of optimal
    costs: dict[str, Any] = field(default_factory=dict)  # c_under / c_over per resource and region (pipeline.plan.costs)
    zones: dict[str, Any] = field(default_factory=dict)  # availability zones per region, N+1 across them (pipeline.plan.zones)

    def __post_init__(self) -> None:
        problems = []
        if not 0.0 <= self.max_spot_share <= 1.0:
            problems.append(f"max_spot_share must be in [0, 1], got {self.max_spot_share}")
        for region, share in self.max_spot_share_by_region.items():
            if not 0.0 <= share <= 1.0:
                problems.append(f"max_spot_share_by_region[{region!r}] must be in [0, 1], got {share}")
        if not 0.0 <= self.max_spot_interruption_rate <= 1.0:
            problems.append(f"max_spot_interruption_rate must be in [0, 1], got {self.max_spot_interruption_rate}")
        if self.spot_risk_multiplier < 0:
            problems.append(f"spot_risk_multiplier must be ≥ 0, got {self.spot_risk_multiplier}")
        if self.failover_share < 0:
            problems.append(f"failover_share must be ≥ 0, got {self.failover_share}")
        if not 0.0 <= self.critical_share_default <= 1.0:
            problems.append(f"critical_share_default must be in [0, 1], got {self.critical_share_default}")
        for name in ("critical_priorities", "flexible_priorities"):
            bad = [p for p in getattr(self, name) if p not in PRIORITIES]
            if bad:
                problems.append(f"{name} has unknown priorities {bad}; known: {list(PRIORITIES)}")
        if set(self.priority_weights) != set(PRIORITIES) or any(w <= 0 for w in self.priority_weights.values()):
            problems.append(f"priority_weights needs a positive weight for each of {list(PRIORITIES)}")
        if self.churn_penalty < 0 or self.relocation_cost_fraction < 0:
            problems.append("churn_penalty and relocation_cost_fraction must be ≥ 0")
        if self.budget_usd_per_hour is not None and self.budget_usd_per_hour < 0:
            problems.append(f"budget_usd_per_hour must be ≥ 0, got {self.budget_usd_per_hour}")
        for region, partner in self.partners.items():
            if partner == region:
                problems.append(f"partners[{region!r}] names the region itself")
        if not 0.0 <= self.solver_relative_gap < 1.0:
            problems.append(f"solver_relative_gap must be in [0, 1), got {self.solver_relative_gap}")
        if (self.mix_lookback_days < 1 or self.max_sessions_per_window < 1 or self.solver_deterministic_time <= 0
                or self.hosting_deterministic_time <= 0 or self.hosting_candidates < 1):
            problems.append("mix_lookback_days, max_sessions_per_window, solver_deterministic_time, hosting_deterministic_time "
                            "and hosting_candidates must be positive")
        if self.hall_groups < 0:
            problems.append(f"hall_groups must be ≥ 0, got {self.hall_groups}")
        if problems:
            raise ValueError("invalid planner config: " + "; ".join(problems))

    # -- derived rules -----------------------------------------------------------------------

    def spot_share(self, region: str) -> float:
        return self.max_spot_share_by_region.get(region, self.max_spot_share)

    def spot_risk(self, interruption_rate: float) -> float:
        """Share of a spot instance's capacity not counted toward demand."""
        return min(1.0, max(0.0, interruption_rate * self.spot_risk_multiplier))

    def latency(self, a: str, b: str) -> float | None:
        """Configured latency (either direction), else the built-in estimate, else None (unknown)."""
        if a == b:
            return 0.0
        for x, y in ((a, b), (b, a)):
            if y in self.latency_ms.get(x, {}):
                return float(self.latency_ms[x][y])
        return estimated_latency_ms(a, b)

    def partner_of(self, region: str, regions: list[str]) -> tuple[str | None, str]:
        """(partner, how it was chosen) for `region` among `regions`."""
        if region in self.partners:
            partner = self.partners[region]
            if partner in regions:
                return partner, "configured in planner.json"
            return None, f"configured partner {partner} is not a planned region"
        others = [r for r in sorted(regions) if r != region]
        if not others:
            return None, "no other region to fail over to"
        here = REGION_LOCATIONS.get(region)
        if here is None:
            return None, "region not in the built-in location table and no partner configured"
        known = [(distance_km(region, r), r) for r in others if r in REGION_LOCATIONS]
        if not known:
            return None, "no other region with a known location"
        same = [(d, r) for d, r in known if REGION_LOCATIONS[r][2] == here[2]]
        d, partner = min(same or known)
        where = "nearest region on the same continent" if same else "nearest region (none on the same continent)"
        return partner, f"{where}, ~{d:,.0f} km"

    def partners_for(self, regions: list[str]) -> dict[str, tuple[str | None, str]]:
        return {r: self.partner_of(r, regions) for r in sorted(regions)}

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["critical_priorities"] = list(self.critical_priorities)
        out["flexible_priorities"] = list(self.flexible_priorities)
        return json.loads(json.dumps(out, sort_keys=True))


def config_from_dict(payload: dict[str, Any], base: PlannerConfig | None = None) -> PlannerConfig:
    """Overlay a JSON object (planner.json) on `base`; unknown keys and bad values raise ValueError."""
    if not isinstance(payload, dict):
        raise ValueError("planner config must be a JSON object")
    base = base or PlannerConfig()
    known = {f.name for f in fields(PlannerConfig)}
    unknown = sorted(set(payload) - known - {"comment", "_comment"})
    if unknown:
        raise ValueError(f"planner config has unknown keys {unknown}; known keys: {sorted(known)}")
    changes: dict[str, Any] = {}
    for key, value in payload.items():
        if key in ("comment", "_comment"):
            continue
        if key == "quotas":
            if not isinstance(value, dict):
                raise ValueError("quotas must map region -> {on_demand_vcpu, spot_vcpu, instances}")
            quotas = {}
            for region, q in value.items():
                bad = sorted(set(q) - {"on_demand_vcpu", "spot_vcpu", "instances"})
                if bad:
                    raise ValueError(f"quotas[{region!r}] has unknown keys {bad}")
                quotas[region] = Quota(
                    on_demand_vcpu=None if q.get("on_demand_vcpu") is None else float(q["on_demand_vcpu"]),
                    spot_vcpu=None if q.get("spot_vcpu") is None else float(q["spot_vcpu"]),
                    instances={str(k): int(v) for k, v in (q.get("instances") or {}).items()},
                )
            changes[key] = quotas
        elif key in ("critical_priorities", "flexible_priorities"):
            changes[key] = tuple(str(v) for v in value)
        elif key == "priority_weights":
            changes[key] = {**base.priority_weights, **{str(k): float(v) for k, v in value.items()}}
        elif key == "latency_ms":
            changes[key] = {str(a): {str(b): float(ms) for b, ms in row.items()} for a, row in value.items()}
        elif key in ("partners", "max_spot_share_by_region"):
            changes[key] = dict(value)
        elif key == "costs":
            layer_from_dict(value, "planner config")  # checked here, resolved per region by the planner
            apply_layer(WarmCosts(), value.get("warm") if isinstance(value, dict) else None, "planner config")
            changes[key] = dict(value)
        elif key == "zones":
            zone_layer_from_dict(value, "planner config")  # checked here, resolved per region by the planner
            changes[key] = dict(value)
        else:
            changes[key] = value
    for name in ("partners", "quotas", "max_spot_share_by_region", "latency_ms"):
        for region in changes.get(name, {}):
            if not REGION_PATTERN.match(region):
                raise ValueError(f"{name} names {region!r}, which is not a region code")
    try:
        return replace(base, **changes)
    except TypeError as exc:
        raise ValueError(f"invalid planner config: {exc}") from exc


def load_planner_config(source_root: str) -> tuple[PlannerConfig, dict[str, Any]]:
    """The config from `<source_root>/inventory/planner.json` over the defaults, and where it came from."""
    from pipeline.common import storage

    path = storage.join(source_root, PLANNER_FILE)
    if not storage.exists(path):
        return PlannerConfig(), {"source": "defaults", "fingerprint": None}
    raw = storage.read_bytes(path)
    try:
        payload = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path} is not valid JSON: {exc}") from exc
    try:
        config = config_from_dict(payload)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from exc
    return config, {"source": path, "fingerprint": "sha256:" + hashlib.sha256(raw).hexdigest()[:16]}


__all__ = [
    "DEFAULT_PRIORITY_WEIGHTS",
    "PLANNER_FILE",
    "REGION_LOCATIONS",
    "PlannerConfig",
    "Quota",
    "config_from_dict",
    "estimated_latency_ms",
    "load_planner_config",
]
