"""Cover demand vectors with instances at minimum expected cost (OR-Tools CP-SAT).

One model per planning window — per region when nothing couples the regions, or jointly over all
regions when a budget cap binds or flexible demand may be relocated. For region r, offer o (an
instance type at a purchase option, x_o instances), resource k:

    minimise   Σ price_o·x_o                                    instance cost (USD/h)
             + P_dem·Σ sD_rk + P_fail·Σ sF_rk + P_host·Σ sH_gk  uncovered demand / headroom / hosting
             + Σ churn·price_o·|x_o − prev_o|                   changes against the previous plan
             + Σ reloc_k·moved_k                                relocation of flexible demand
    s.t.  Σ eff_ok·x_o + sD_rk + sF_rk ≥ D_rk + F_rk + in_rk − out_rk   demand + failover headroom
          Σ cap_ok·x_o ≤ pool_rk                   (vCPU, memory: instances come from the pool)
          Σ_spot vcpu_o·x_o ≤ share_r·Σ vcpu_o·x_o   spot share, on raw vCPU
          Σ_{o ∈ hosts(g)} eff_ok·x_o + sH_gk ≥ req_gk   sessions only some types can host (Hall)
          vCPU quotas per purchase option, per-type count caps, Σ cost ≤ budget (budget mode)

eff_ok is capacity counted toward demand: the full capacity on demand, (1 − interruption risk)
of it for spot. Storage and bandwidth pools are the region's reservable storage and peering
capacity: demand above them is a shortfall up front and a plan reserves at most the pool.
CP-SAT needs integers, so quantities are scaled to hundredths and prices to micro-dollars; the
penalties exceed any instance price per hundredth, so whatever can be covered is covered, own
demand before failover headroom. In budget mode the demand slack is split by priority class and
priced at weight_c × c_under_k, so the budget goes to the most valuable demand first (a knapsack).

The packing stage adds footprint hosting (`HostingClass`): z_ct sessions of class c on type t,
Σ_t z_ct = n_c and Σ_c footprint_ct·z_ct ≤ Σ_options x_t — solved by `solve_hosting` with the
LP relaxation (GLOP) choosing the types each class may use before CP-SAT.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np
from ortools.linear_solver import pywraplp
from ortools.sat.python import cp_model

from pipeline.common.numeric import EPS, PER_MILLE, ROUNDING_SLACK, ceil_units, floor_units
from pipeline.common.schemas import RESOURCE_TYPES
from pipeline.plan.policy import DEFAULT_PRIORITY_WEIGHTS

CAPACITY_COLUMN = {"vcpu": "vcpu", "memory_gib": "memory_gib", "storage_gib": "storage_gib", "bandwidth_gbps": "network_gbps"}
QTY_SCALE = 100  # hundredths of a unit
PRICE_SCALE = 1_000_000  # micro-dollars per hour
SHORTFALL_PENALTY = 1_000.0  # USD per unit-hour left uncovered (raised when instances are dearer)
COMPUTE_POOL_RESOURCES = ("vcpu", "memory_gib")
RELOCATION_STEPS = 20  # flexible demand moves in 5 % steps
FOOTPRINT_SCALE = 1000  # footprints (share of one instance) in thousandths
OfferKey = tuple[str, str]


@dataclass(frozen=True)
class Offer:
    """One way to buy capacity in a region: an instance type at a purchase option."""

    instance_type: str
    purchase_option: str
    hourly_price: float
    capacity: dict[str, float]
    interruption_rate: float = 0.0
    counted: float = 1.0  # share of the capacity counted toward demand (spot: 1 − interruption risk)

    @property
    def key(self) -> OfferKey:
        return (self.instance_type, self.purchase_option)


@dataclass(frozen=True)
class SessionGroup:
    """Sessions that only `hosts` can hold (each fits no other type): they need that much capacity there."""

    hosts: frozenset[str]  # instance types (either purchase option)
    required: dict[str, float]
    sessions: int = 0
    label: str = ""
    smallest: dict[str, float] = field(default_factory=dict)  # per resource, the group's smallest session
    usable: dict[str, dict[str, float]] = field(default_factory=dict)  # type -> resource -> capacity these sessions can use


@dataclass(frozen=True)
class HostingClass:
    """Sessions of one shape for the packing stage's model: on instance type t each takes `footprint[t]`
    of an instance (its largest share of any resource), so n of them need n·footprint[t] instances of t.

    Unlike the Hall groups this is a restriction, not a relaxation: it keeps sessions that bind on
    different resources from sharing an instance, so a plan that meets it almost always packs."""

    sessions: int
    vcpu: float  # one session's vCPU (prices a session left without a host)
    footprint: dict[str, float]  # instance type -> share of one instance; only the types it is allowed on


@dataclass(frozen=True)
class PackClass:
    """Sessions of one shape for the typed packing relaxation (`pipeline.plan.relax`): `size` is at most
    every member's size per packed resource (PACK_DIMS order), so any real packing of the members also
    satisfies the constraints the class adds — a relaxation, whose bound stays valid for packable plans.

    `dff` holds, per instance type the class fits, for each packed resource and each dual-feasible
    function of `relax.DFF_LEVELS`, the class's value in thousandths of an instance (rounded down)."""

    sessions: int
    vcpu: float  # one session's vCPU (prices a session left without a host)
    size: tuple[float, ...]  # per packed resource, at most every member's size
    dff: dict[str, tuple[int, ...]]  # instance type -> one value per (resource, function)


@dataclass
class RegionProblem:
    """What one region needs in one window, and what it can buy."""

    region: str
    demand: dict[str, float]
    offers: list[Offer]
    pool: dict[str, float] = field(default_factory=dict)
    failover: dict[str, float] = field(default_factory=dict)
    max_spot_share: float = 0.3
    on_demand_vcpu_quota: float | None = None
    spot_vcpu_quota: float | None = None
    instance_quota: dict[str, int] = field(default_factory=dict)
    previous: dict[OfferKey, int] | None = None
    session_groups: list[SessionGroup] = field(default_factory=list)
    demand_by_class: dict[str, dict[str, float]] | None = None  # priority -> resource -> amount (budget mode)
    flexible: dict[str, float] = field(default_factory=dict)  # relocatable part of the demand
    hint: dict[OfferKey, int] | None = None  # a known plan to start from (default: the previous plan)
    hosting: list[HostingClass] = field(default_factory=list)  # footprint hosting (packing stage only)
    hosting_hint: list[dict[str, int]] | None = None  # a start for it: per class, instance type -> sessions
    packing: list[PackClass] = field(default_factory=list)  # typed packing relaxation (pipeline.plan.relax)
    packing_hint: list[dict[str, int]] | None = None  # a start for it: per class, instance type -> sessions
    warm_target: dict[str, float] = field(default_factory=dict)  # running + warm must cover this (τ_warm quantile; empty: no warm tier)
    warm_hold_fraction: float = 0.0  # a warm (stopped) instance's hourly cost as a share of its on-demand price


@dataclass
class WindowOptions:
    budget: float | None = None  # USD/h over every region of the model
    relocation: list[tuple[str, str]] = field(default_factory=list)  # allowed (from, to) moves
    relocation_cost: dict[str, float] = field(default_factory=dict)  # USD per unit-hour moved
    churn_penalty: float = 0.25
    priority_weights: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_PRIORITY_WEIGHTS))
    unit_value: dict[str, float] = field(default_factory=dict)  # c_under per resource (budget mode)
    unit_value_by_region: dict[str, dict[str, float]] = field(default_factory=dict)  # wins over unit_value
    relocation_cost_by_region: dict[str, dict[str, float]] = field(default_factory=dict)  # by source region; wins

    def region_unit_value(self, region: str, resource: str) -> float:
        return self.unit_value_by_region.get(region, {}).get(resource, self.unit_value.get(resource, 1.0))

    def region_relocation_cost(self, region: str, resource: str) -> float:
        return self.relocation_cost_by_region.get(region, {}).get(resource, self.relocation_cost.get(resource, 0.0))
    deterministic_time: float = 5.0  # CP-SAT's reproducible work limit per region of the model (≈ seconds on a fast core)
    relative_gap: float = 0.0  # stop once (objective − bound) / objective is at most this


@dataclass
class RegionResult:
    counts: dict[OfferKey, int]
    cost: float
    shortfall: dict[str, float] = field(default_factory=dict)  # own demand not covered (pool, quota, budget)
    failover_shortfall: dict[str, float] = field(default_factory=dict)
    hosting_shortfall: dict[str, float] = field(default_factory=dict)  # Hall constraints not met (pool-bound)
    uncovered_by_class: dict[str, dict[str, float]] = field(default_factory=dict)  # budget mode
    pool_shortfall: dict[str, float] = field(default_factory=dict)  # storage/bandwidth above the pool
    relocated: dict[str, float] = field(default_factory=dict)  # net demand moved in (negative: out)
    hosted: list[dict[str, int]] = field(default_factory=list)  # per hosting class: instance type -> sessions
    typed: list[dict[str, int]] = field(default_factory=list)  # per packing class: instance type -> sessions
    warm: dict[OfferKey, int] = field(default_factory=dict)  # warm (stopped) instances next to on-demand lines
    warm_shortfall: dict[str, float] = field(default_factory=dict)  # warm target not covered


@dataclass
class WindowSolution:
    regions: dict[str, RegionResult]
    objective: float
    lower_bound: float
    status: str
    cost: float
    relocations: list[dict] = field(default_factory=list)  # {from, to, share, quantity{k}}


@dataclass
class Allocation:
    """The solver's answer for one region and window (the single-region API)."""

    counts: dict[tuple[str, str], int]
    cost: float  # USD per hour of the chosen instances
    objective: float  # cost plus the shortfall penalty: what the solver minimised
    lower_bound: float  # proven bound on the objective
    status: str
    shortfall: dict[str, float] = field(default_factory=dict)


def _scaled(value: float) -> int:
    """Hundredths needed to hold `value` (negative: none)."""
    return ceil_units(max(value, 0.0), QTY_SCALE)


def _floor_scaled(value: float) -> int:
    """Hundredths `value` provides (negative: none)."""
    return floor_units(max(value, 0.0), QTY_SCALE)


def demand_penalty(max_price: float, churn_penalty: float = 0.0) -> float:
    """USD per hundredth of a unit left uncovered: above the dearest instance (with its churn cost)."""
    return max(SHORTFALL_PENALTY / QTY_SCALE, 8.0 * max_price * (1.0 + churn_penalty))


LinearTerm = cp_model.LinearExpr | int  # what `_sum` builds: an expression, or 0 when every term is zero


def _sum(variables: list, coeffs: list[int] | None = None) -> LinearTerm:
    """Σ coeffs·variables, zero terms dropped, built in one call (far cheaper than Python's `sum`)."""
    if coeffs is None:
        return cp_model.LinearExpr.sum(variables) if variables else 0
    pairs = [(v, int(c)) for v, c in zip(variables, coeffs) if c]
    return cp_model.LinearExpr.weighted_sum([v for v, _ in pairs], [c for _, c in pairs]) if pairs else 0


@dataclass(frozen=True)
class _OfferCapacity:
    """Capacity of each offer in hundredths (rows follow `keys`, columns RESOURCE_TYPES): `raw` is what
    an instance holds (pools, the spot share, hosting), `counted` what counts toward demand."""

    keys: list[OfferKey]
    raw: np.ndarray
    counted: np.ndarray

    @property
    def vcpu(self) -> list[int]:
        return self.raw[:, 0].tolist()

    @property
    def spot(self) -> list[bool]:
        return [k[1] == "spot" for k in self.keys]


def _offer_capacity(offers: list[Offer]) -> _OfferCapacity:
    keys = [o.key for o in offers]
    raw = np.array([[o.capacity.get(r, 0.0) for r in RESOURCE_TYPES] for o in offers], float).reshape(len(keys), len(RESOURCE_TYPES))
    counted = np.clip(np.array([o.counted for o in offers], float), 0.0, 1.0).reshape(-1, 1)
    return _OfferCapacity(
        keys=keys,
        raw=np.rint(raw * QTY_SCALE).astype(np.int64),
        counted=np.floor(np.maximum(raw * counted, 0.0) * QTY_SCALE + ROUNDING_SLACK).astype(np.int64),
    )


@dataclass(frozen=True)
class _CoverTargets:
    """What one region's plan covers, in hundredths: own demand and failover headroom. Storage and
    bandwidth above the region's pool cannot be reserved: that part is a shortfall up front."""

    need: dict[str, int]
    fail: dict[str, int]
    pool_short: dict[str, float]


def _cover_targets(p: RegionProblem) -> _CoverTargets:
    need: dict[str, int] = {}
    fail: dict[str, int] = {}
    pool_short: dict[str, float] = {}
    for r in RESOURCE_TYPES:
        wanted, headroom = max(p.demand.get(r, 0.0), 0.0), max(p.failover.get(r, 0.0), 0.0)
        if r not in COMPUTE_POOL_RESOURCES and r in p.pool:
            cap = max(p.pool[r], 0.0)
            own = min(wanted, cap)
            extra = min(headroom, cap - own)
            if wanted - own > EPS:
                pool_short[r] = round(wanted - own, 6)
            wanted, headroom = own, extra
        need[r], fail[r] = _scaled(wanted), _scaled(headroom)
    return _CoverTargets(need=need, fail=fail, pool_short=pool_short)


def _offer_bounds(p: RegionProblem, capacity: _OfferCapacity, *, target: dict[str, int], share: int) -> dict[OfferKey, int]:
    """Upper bound on each offer's count: more than covers everything it contributes to is never
    needed, except on-demand vCPU that makes room for spot under the share rule, and what the
    previous plan had. Always within the pool and the per-type quota."""
    types = [k[0] for k in capacity.keys]
    eff = capacity.counted
    with np.errstate(divide="ignore", invalid="ignore"):
        need_m = np.array([target[r] for r in RESOURCE_TYPES], float)
        tops = np.where(eff > 0, np.ceil(need_m / np.where(eff > 0, eff, 1)), 0).max(axis=1, initial=0)
    top = tops.astype(np.int64).tolist()
    for g in p.session_groups:
        top = [max(b, g.sessions) if t in g.hosts else b for b, t in zip(top, types)]
    for h in p.hosting:
        top = [max(b, math.ceil(h.sessions * h.footprint.get(t, 0.0) - EPS)) for b, t in zip(top, types)]
    if p.packing:  # an optimal packable plan has no more instances of t than cover alone needs plus one per session t holds
        top = [b + sum(c.sessions for c in p.packing if t in c.dff) for b, t in zip(top, types)]
    vcpu, spot = capacity.vcpu, capacity.spot
    spot_vcpu_max = sum(v * b for v, b, sp in zip(vcpu, top, spot) if sp)
    pool_cap = [(j, _floor_scaled(p.pool[r])) for j, r in enumerate(RESOURCE_TYPES) if r in COMPUTE_POOL_RESOURCES and r in p.pool]
    previous = p.previous or {}
    bound: dict[OfferKey, int] = {}
    for i, k in enumerate(capacity.keys):
        b = top[i]
        if not spot[i] and share > 0 and vcpu[i] > 0:
            b = max(b, math.ceil(spot_vcpu_max * PER_MILLE / (share * vcpu[i])))
        within_pool = min((limit // int(capacity.raw[i, j]) for j, limit in pool_cap if capacity.raw[i, j] > 0), default=None)
        if within_pool is not None:
            b = min(b, within_pool)
        if k[0] in p.instance_quota:
            b = min(b, max(int(p.instance_quota[k[0]]), 0))
        b = max(b, 0)
        if previous.get(k, 0) > b:  # keeping a previous line is always allowed, within the pool
            b = previous[k] if within_pool is None else min(previous[k], within_pool)
        bound[k] = b
    return bound


HallSlack = dict[str, cp_model.IntVar]  # resource (or "sessions") -> hundredths (sessions) a Hall group lacks
HostingVars = tuple[HostingClass, dict[str, cp_model.IntVar], cp_model.IntVar]  # class, sessions per type, sessions left



def _session_split(model: cp_model.CpModel, types: list[str], sessions: int, name: str, hint: dict[str, int] | None
                   ) -> tuple[dict[str, cp_model.IntVar], cp_model.IntVar]:
    """A class's sessions split over instance types: v_t sessions on type t, `left` unplaced, Σ v_t + left ≥
    sessions; started from a known split where there is one (the rest start unplaced)."""
    by_type = {t: model.new_int_var(0, sessions, f"{name}_{t}") for t in types}
    left = model.new_int_var(0, sessions, f"{name}_left")
    model.add(_sum([*by_type.values(), left]) >= sessions)
    if hint is not None:
        start = {t: min(n, sessions) for t, n in hint.items() if t in by_type}
        for t, v in by_type.items():
            model.add_hint(v, start.get(t, 0))
        model.add_hint(left, max(sessions - sum(start.values()), 0))
    return by_type, left


class _RegionModel:
    """The variables and expressions of one region inside a window model.

    Built in a fixed order (instances, their limits, demand slack, Hall groups, footprint hosting,
    churn, the start hint): CP-SAT's search follows the model's order, so the order is part of
    what makes a plan reproducible."""

    def __init__(self, model: cp_model.CpModel, p: RegionProblem, steps: int, incoming_max: dict[str, int]) -> None:
        self.p = p
        self.steps = steps
        self.tag = p.region.replace("-", "_")
        targets = _cover_targets(p)
        self.need, self.fail, self.pool_short = targets.need, targets.fail, targets.pool_short
        capacity = _offer_capacity(p.offers)
        self.keys = capacity.keys
        self.cap = {k: dict(zip(RESOURCE_TYPES, row)) for k, row in zip(capacity.keys, capacity.raw.tolist())}
        share = round(p.max_spot_share * PER_MILLE)  # the spot share in thousandths
        target = {r: self.need[r] + self.fail[r] + incoming_max.get(r, 0) for r in RESOURCE_TYPES}
        self.bound = _offer_bounds(p, capacity, target=target, share=share)
        self.x = {o.key: model.new_int_var(0, self.bound[o.key], f"x_{self.tag}_{o.instance_type}_{o.purchase_option}")
                  for o in p.offers}
        xs = [self.x[k] for k in self.keys]
        self.effective = {r: _sum(xs, capacity.counted[:, j].tolist()) for j, r in enumerate(RESOURCE_TYPES)}
        self._add_instance_limits(model, capacity, share)
        self.short_fail, self.short_class, self.short_dem = self._new_demand_slack(model, incoming_max)
        self.moves_in: dict[str, list] = {r: [] for r in RESOURCE_TYPES}  # filled by the window model
        self.moves_out: dict[str, list] = {r: [] for r in RESOURCE_TYPES}
        self.groups = self._add_hall_groups(model)
        self.hosting = self._add_footprint_hosting(model)
        self.typed = self._add_typed_packing(model)
        self.change = self._add_churn(model)
        self._hint_start(model)
        self.warm, self.short_warm = self._add_warm(model, capacity)

    def _add_warm(self, model: cp_model.CpModel, capacity: _OfferCapacity
                  ) -> tuple[dict[OfferKey, cp_model.IntVar], dict[str, cp_model.IntVar]]:
        """Warm tier (pipeline.plan.warm): w_o stopped instances beside on-demand line o (a warm pool belongs to
        the line's group, so w_o ≤ M·x_o), and Σ eff·(x + w) + sW ≥ the τ_warm quantile, per resource. Stopped
        instances hold no pool capacity or vCPU quota (both count running instances)."""
        if not self.p.warm_target:
            return {}, {}
        target = {}
        for r in RESOURCE_TYPES:
            wanted = max(self.p.warm_target.get(r, 0.0), self.p.demand.get(r, 0.0), 0.0)
            if r not in COMPUTE_POOL_RESOURCES and r in self.p.pool:
                wanted = min(wanted, max(self.p.pool[r], 0.0))
            target[r] = _scaled(wanted)
        eff = capacity.counted
        warm: dict[OfferKey, cp_model.IntVar] = {}
        for i, k in enumerate(self.keys):
            if k[1] != "on_demand":
                continue
            top = max((math.ceil(target[r] / eff[i, j]) for j, r in enumerate(RESOURCE_TYPES) if eff[i, j] > 0), default=0)
            if top <= 0:
                continue
            w = model.new_int_var(0, top, f"w_{self.tag}_{k[0]}")
            model.add(w <= top * self.x[k])
            warm[k] = w
        short = {r: model.new_int_var(0, target[r], f"sw_{self.tag}_{r}") for r in RESOURCE_TYPES}
        index = {k: i for i, k in enumerate(self.keys)}
        for j, r in enumerate(RESOURCE_TYPES):
            held = _sum(list(warm.values()), [int(eff[index[k], j]) for k in warm])
            model.add(self.effective[r] + held + short[r] >= target[r])
        return warm, short

    def _add_instance_limits(self, model: cp_model.CpModel, capacity: _OfferCapacity, share: int) -> None:
        """Pools (raw vCPU and memory), the spot share of raw vCPU, vCPU quotas per purchase option, per-type caps."""
        p = self.p
        xs = [self.x[k] for k in self.keys]
        vcpu, spot = capacity.vcpu, capacity.spot
        for r in COMPUTE_POOL_RESOURCES:
            if r in p.pool:
                raw = capacity.raw[:, RESOURCE_TYPES.index(r)].tolist()
                model.add(_sum(xs, raw) <= _floor_scaled(p.pool[r]))
        if any(spot):  # spot vCPU within the share: 1000·spot ≤ share·(spot + on-demand)
            model.add(_sum(xs, [(PER_MILLE - share) * v if s else -share * v for v, s in zip(vcpu, spot)]) <= 0)
        if p.on_demand_vcpu_quota is not None:
            model.add(_sum(xs, [0 if s else v for v, s in zip(vcpu, spot)]) <= _floor_scaled(p.on_demand_vcpu_quota))
        if p.spot_vcpu_quota is not None:
            model.add(_sum(xs, [v if s else 0 for v, s in zip(vcpu, spot)]) <= _floor_scaled(p.spot_vcpu_quota))
        for itype, limit in sorted(p.instance_quota.items()):
            same = [self.x[k] for k in self.keys if k[0] == itype]
            if same:
                model.add(_sum(same) <= max(int(limit), 0))

    def _new_demand_slack(self, model: cp_model.CpModel, incoming_max: dict[str, int]
                          ) -> tuple[dict[str, cp_model.IntVar], dict[str, dict[str, cp_model.IntVar]], dict[str, LinearTerm]]:
        """Uncovered failover headroom and own demand (split by priority class in budget mode): (failover, by class, demand)."""
        short_fail = {r: model.new_int_var(0, self.fail[r], f"sf_{self.tag}_{r}") for r in RESOURCE_TYPES}
        if self.p.demand_by_class is None:
            short_dem: dict[str, LinearTerm] = {
                r: model.new_int_var(0, self.need[r] + incoming_max.get(r, 0), f"sd_{self.tag}_{r}") for r in RESOURCE_TYPES}
            return short_fail, {}, short_dem
        short_class = self._new_class_slack(model, self.p.demand_by_class, incoming_max)
        short_dem = {r: _sum([short_class[c][r] for c in short_class]) for r in RESOURCE_TYPES}
        return short_fail, short_class, short_dem

    def _new_class_slack(self, model: cp_model.CpModel, by_class: dict[str, dict[str, float]], incoming_max: dict[str, int]
                         ) -> dict[str, dict[str, cp_model.IntVar]]:
        """Budget mode: each priority class may leave its share of the demand uncovered (the lowest also what moves in)."""
        total = {r: sum(max(c.get(r, 0.0), 0.0) for c in by_class.values()) for r in RESOURCE_TYPES}
        short_class: dict[str, dict[str, cp_model.IntVar]] = {}
        for cls in sorted(by_class):
            short_class[cls] = {}
            for r in RESOURCE_TYPES:
                part = max(by_class[cls].get(r, 0.0), 0.0)
                portion = math.ceil(self.need[r] * (part / total[r]) - EPS) if total[r] > 0 else 0
                if cls == "low":
                    portion += incoming_max.get(r, 0)
                short_class[cls][r] = model.new_int_var(0, portion, f"sd_{self.tag}_{cls}_{r}")
        return short_class

    def _add_hall_groups(self, model: cp_model.CpModel) -> list[tuple[SessionGroup, HallSlack]]:
        """Sessions only some types can host need that much capacity (and that many instances) on those types."""
        groups = []
        for i, g in enumerate(self.p.session_groups):
            hosts = [k for k in self.keys if k[0] in g.hosts]
            slack = self._add_group_capacity(model, i, g, hosts)
            if g.sessions > 0 and g.smallest:
                slack["sessions"] = self._add_group_count(model, i, g, hosts)
            groups.append((g, slack))
        return groups

    def _add_group_capacity(self, model: cp_model.CpModel, i: int, g: SessionGroup, hosts: list[OfferKey]) -> HallSlack:
        """Σ usable capacity of the hosts ≥ what the group requires, per resource. Raw capacity (a session
        on a spot instance uses all of it), limited to what sessions of this shape can use of each type:
        a valid necessary condition for hosting them."""
        required = {r: _scaled(g.required.get(r, 0.0)) for r in RESOURCE_TYPES}
        slack: HallSlack = {}
        for r in RESOURCE_TYPES:
            if required[r] <= 0:
                continue
            slack[r] = model.new_int_var(0, required[r], f"sh_{self.tag}_{i}_{r}")
            use = [min(self.cap[k][r], _floor_scaled(g.usable[k[0]][r])) if k[0] in g.usable and r in g.usable[k[0]]
                   else self.cap[k][r] for k in hosts]
            model.add(_sum([*(self.x[k] for k in hosts), slack[r]], [*use, 1]) >= required[r])
        return slack

    def _add_group_count(self, model: cp_model.CpModel, i: int, g: SessionGroup, hosts: list[OfferKey]) -> cp_model.IntVar:
        """Each host instance takes at most m_o of the group's sessions (by its smallest session)."""
        by_key = {o.key: o for o in self.p.offers}
        per = []
        for k in hosts:
            fits = [int(by_key[k].capacity.get(r, 0.0) // v) for r, v in g.smallest.items() if v > EPS]
            per.append(min(min(fits, default=g.sessions), g.sessions))
        left = model.new_int_var(0, g.sessions, f"shn_{self.tag}_{i}")
        model.add(_sum([*(self.x[k] for k in hosts), left], [*per, 1]) >= g.sessions)
        return left

    def _add_footprint_hosting(self, model: cp_model.CpModel) -> list[HostingVars]:
        """Packing stage: z sessions of a class on a type take z·footprint instances of it."""
        hosting: list[HostingVars] = []
        load: dict[str, tuple[list, list[int]]] = {}
        for i, h in enumerate(self.p.hosting):
            types = [t for t in sorted(h.footprint) if 0 < h.footprint[t] <= 1.0 and any(k[0] == t for k in self.keys)]
            hint = self.p.hosting_hint[i] if self.p.hosting_hint is not None and i < len(self.p.hosting_hint) else None
            z, left = _session_split(model, types, h.sessions, f"z_{self.tag}_{i}", hint)
            for t, v in z.items():
                terms, units = load.setdefault(t, ([], []))
                terms.append(v)
                units.append(ceil_units(h.footprint[t], FOOTPRINT_SCALE))
            hosting.append((h, z, left))
        for t, (terms, units) in sorted(load.items()):
            same = [self.x[k] for k in self.keys if k[0] == t]
            model.add(_sum(terms + same, units + [-FOOTPRINT_SCALE] * len(same)) <= 0)
        return hosting

    def _add_typed_packing(self, model: cp_model.CpModel) -> list[tuple[PackClass, dict[str, cp_model.IntVar], cp_model.IntVar]]:
        """Typed packing relaxation: y_ct sessions of class c on type t (Σ_t y_ct + left_c = n_c), and per
        type, packed resource and dual-feasible function f: Σ_c f_c·y_ct ≤ 1000·(instances of t). Every
        real packing gives such y (see `pipeline.plan.relax`)."""
        typed = []
        rows: dict[str, tuple[list, list[list[int]]]] = {}
        for i, c in enumerate(self.p.packing):
            types = [t for t in sorted(c.dff) if any(k[0] == t for k in self.keys)]
            hint = self.p.packing_hint[i] if self.p.packing_hint is not None and i < len(self.p.packing_hint) else None
            y, left = _session_split(model, types, c.sessions, f"y_{self.tag}_{i}", hint)
            for t, v in y.items():
                terms, values = rows.setdefault(t, ([], []))
                terms.append(v)
                values.append(list(c.dff[t]))
            typed.append((c, y, left))
        for t, (terms, values) in sorted(rows.items()):
            same = [self.x[k] for k in self.keys if k[0] == t]
            for j in range(len(values[0])):
                coeffs = [v[j] for v in values]
                if any(coeffs):
                    model.add(_sum(terms + same, coeffs + [-FOOTPRINT_SCALE] * len(same)) <= 0)
        return typed

    def _add_churn(self, model: cp_model.CpModel) -> dict[OfferKey, cp_model.IntVar]:
        """|x − previous| for every line the previous plan had (what the churn penalty prices)."""
        change: dict[OfferKey, cp_model.IntVar] = {}
        if self.p.previous is None:
            return change
        for k, v in self.x.items():
            before = self.p.previous.get(k, 0)
            if before > 0:
                d = model.new_int_var(0, max(before, self.bound[k]), f"d_{self.tag}_{k[0]}_{k[1]}")
                model.add(d >= v - before)
                model.add(d >= before - v)
                change[k] = d
        return change

    def _hint_start(self, model: cp_model.CpModel) -> None:
        """CP-SAT starts its search from the given hint, else from the previous plan."""
        start = self.p.hint if self.p.hint is not None else self.p.previous
        if start is not None:
            for k, v in self.x.items():
                model.add_hint(v, min(start.get(k, 0), self.bound[k]))

    def add_cover(self, model: cp_model.CpModel) -> None:
        """Counted capacity + slack ≥ demand + failover headroom (+ flexible demand moved in − out), in 1/steps
        of a hundredth; what moves in never exceeds what the storage/bandwidth pool has left."""
        s = self.steps
        for r in RESOURCE_TYPES:
            inflow = _sum(self.moves_in[r])
            outflow = _sum(self.moves_out[r])
            covered = self.effective[r] + self.short_dem[r] + self.short_fail[r]
            model.add(s * covered >= s * (self.need[r] + self.fail[r]) + inflow - outflow)
            if self.moves_in[r] and r not in COMPUTE_POOL_RESOURCES and r in self.p.pool:
                model.add(inflow - outflow <= s * max(_floor_scaled(self.p.pool[r]) - self.need[r] - self.fail[r], 0))


def _new_model() -> cp_model.CpModel:
    """An empty CpModel without the deprecated camelCase aliases its constructor attaches one by one
    (≈1 ms a model, as much as building a small model; the planner builds thousands)."""
    model = cp_model.CpModel.__new__(cp_model.CpModel)
    try:
        cp_model.cmh.CpBaseModel.__init__(model, None)
    except AttributeError:  # another OR-Tools layout: the ordinary constructor
        model = cp_model.CpModel()
    return model


@dataclass
class _WindowModel:
    model: cp_model.CpModel
    regions: dict[str, _RegionModel]
    move_vars: dict[tuple[str, str], cp_model.IntVar]
    flex: dict[str, dict[str, int]]
    steps: int


class _Objective:
    """Σ coeff·var, collected term by term and handed to CP-SAT as one weighted sum."""

    def __init__(self) -> None:
        self.variables: list[LinearTerm] = []
        self.coeffs: list[int] = []

    def add(self, coeff: int, var: LinearTerm) -> None:
        self.variables.append(var)
        self.coeffs.append(coeff)

    def expression(self) -> LinearTerm:
        return _sum(self.variables, self.coeffs)


def _micro_usd(usd_per_hour: float) -> int:
    return round(usd_per_hour * PRICE_SCALE)


def _window_model(problems: list[RegionProblem], options: WindowOptions) -> _WindowModel:
    """One window's CP-SAT model over `problems` (see the module docstring)."""
    model = _new_model()
    by_region = {p.region: p for p in problems}
    moves = [(a, b) for a, b in options.relocation if a in by_region and b in by_region and a != b]
    steps = RELOCATION_STEPS if moves else 1
    flex = {p.region: {r: _scaled(p.flexible.get(r, 0.0)) for r in RESOURCE_TYPES} for p in problems}
    incoming_max = {p.region: {r: sum(flex[a][r] for a, b in moves if b == p.region) for r in RESOURCE_TYPES} for p in problems}
    regions = {p.region: _RegionModel(model, p, steps, incoming_max[p.region]) for p in problems}
    move_vars = _add_relocation(model, regions, moves=moves, flex=flex, steps=steps)
    for rm in regions.values():
        rm.add_cover(model)

    max_price = max((o.hourly_price for p in problems for o in p.offers), default=0.0)
    p_dem = demand_penalty(max_price, options.churn_penalty)
    objective = _Objective()
    for rm in regions.values():
        _add_instance_costs(objective, rm, options.churn_penalty)
        _add_shortfall_costs(objective, rm, options, p_dem)
        _add_warm_costs(objective, rm, p_dem)
    for (a, _), m in move_vars.items():
        for r in RESOURCE_TYPES:
            unit = options.region_relocation_cost(a, r) / QTY_SCALE * PRICE_SCALE
            if flex[a][r] and unit > 0:
                objective.add(max(round(unit * flex[a][r] / steps), 1), m)
    if options.budget is not None:
        offers = [(rm.x[o.key], o.hourly_price) for rm in regions.values() for o in rm.p.offers]
        model.add(_sum([x for x, _ in offers], [_micro_usd(price) for _, price in offers]) <= math.floor(options.budget * PRICE_SCALE))
    model.minimize(objective.expression())
    return _WindowModel(model, regions, move_vars, flex, steps)


def _add_relocation(model: cp_model.CpModel, regions: dict[str, _RegionModel], *, moves: list[tuple[str, str]],
                    flex: dict[str, dict[str, int]], steps: int) -> dict[tuple[str, str], cp_model.IntVar]:
    """m_ab ∈ [0, steps]: the steps of a's flexible demand moved to b; a region moves at most all of it."""
    move_vars: dict[tuple[str, str], cp_model.IntVar] = {}
    for a, b in sorted(moves):
        if not any(flex[a].values()):
            continue
        m = model.new_int_var(0, steps, f"m_{a}_{b}".replace("-", "_"))
        move_vars[(a, b)] = m
        for r in RESOURCE_TYPES:
            if flex[a][r]:
                regions[a].moves_out[r].append(flex[a][r] * m)
                regions[b].moves_in[r].append(flex[a][r] * m)
    for a in sorted({a for a, _ in move_vars}):
        model.add(_sum([v for (x, _), v in move_vars.items() if x == a]) <= steps)
    return move_vars


def _add_instance_costs(objective: _Objective, rm: _RegionModel, churn_penalty: float) -> None:
    """Instance prices, and the churn penalty on every change against the previous plan (on every
    instance of a line the previous plan did not have)."""
    for o in rm.p.offers:
        objective.add(_micro_usd(o.hourly_price), rm.x[o.key])
        if o.key in rm.change:
            objective.add(_micro_usd(churn_penalty * o.hourly_price), rm.change[o.key])
        elif rm.p.previous is not None:
            objective.add(_micro_usd(churn_penalty * o.hourly_price), rm.x[o.key])


def _add_warm_costs(objective: _Objective, rm: _RegionModel, p_dem: float) -> None:
    """Warm instances at their hold price; an uncovered warm target below every other slack (own demand,
    headroom, hosting) but above any warm price, so whatever warm capacity can cover is covered."""
    by_key = {o.key: o for o in rm.p.offers}
    for k, w in rm.warm.items():
        objective.add(max(_micro_usd(rm.p.warm_hold_fraction * by_key[k].hourly_price), 1), w)
    for v in rm.short_warm.values():
        objective.add(_micro_usd(p_dem / 8), v)


def _add_shortfall_costs(objective: _Objective, rm: _RegionModel, options: WindowOptions, p_dem: float) -> None:
    """Uncovered demand, failover headroom and hosting, per hundredth: above any instance price, own
    demand first; in budget mode by priority value instead (a knapsack)."""
    for r in RESOURCE_TYPES:
        if options.budget is not None:
            host_w = _add_valued_shortfall_costs(objective, rm, r, options)
        else:
            objective.add(_micro_usd(p_dem), rm.short_dem[r])
            objective.add(_micro_usd(p_dem / 2), rm.short_fail[r])
            host_w = _micro_usd(p_dem / 4)
        for g, slack in rm.groups:
            if r in slack:
                objective.add(host_w, slack[r])
            if r == "vcpu" and "sessions" in slack:  # a session left without a host costs like its vCPU uncovered
                objective.add(host_w * max(_scaled(g.smallest.get("vcpu", 0.0)), 1), slack["sessions"])
        if r == "vcpu":
            for h, _, left in rm.hosting:
                objective.add(host_w * max(_scaled(h.vcpu), 1), left)
            for c, _, left in rm.typed:
                objective.add(host_w * max(_scaled(c.vcpu), 1), left)


def _add_valued_shortfall_costs(objective: _Objective, rm: _RegionModel, r: str, options: WindowOptions) -> int:
    """Budget mode: uncovered demand of class c costs weight_c × c_under; headroom as "high". Returns the
    hosting slack's weight (half of "low")."""
    value = options.region_unit_value(rm.p.region, r) / QTY_SCALE * PRICE_SCALE
    weights = options.priority_weights
    if rm.short_class:
        for cls, vars_ in rm.short_class.items():
            objective.add(max(round(weights.get(cls, 1.0) * value), 1), vars_[r])
    else:
        objective.add(max(round(weights.get("normal", DEFAULT_PRIORITY_WEIGHTS["normal"]) * value), 1), rm.short_dem[r])
    objective.add(max(round(weights.get("high", DEFAULT_PRIORITY_WEIGHTS["high"]) * value), 1), rm.short_fail[r])
    return max(round(weights.get("low", DEFAULT_PRIORITY_WEIGHTS["low"]) * value / 2), 1)


def solve_window(problems: list[RegionProblem], options: WindowOptions | None = None) -> WindowSolution:
    """Solve one window's model over `problems` (one region, or several coupled by budget/relocation)."""
    options = options or WindowOptions()
    built = _window_model(problems, options)
    solver, status = _solve(built.model, options, regions=[p.region for p in problems])
    results = {region: _region_result(solver, rm) for region, rm in built.regions.items()}
    relocations = _read_relocations(solver, built, results)
    return WindowSolution(
        regions=results,
        objective=solver.objective_value / PRICE_SCALE,
        lower_bound=solver.best_objective_bound / PRICE_SCALE,
        status=status,
        cost=sum((result.cost for result in results.values()), 0.0),
        relocations=relocations,
    )


def _solve(model: cp_model.CpModel, options: WindowOptions, *, regions: list[str]) -> tuple[cp_model.CpSolver, str]:
    """CP-SAT on one thread with a fixed seed and a deterministic work limit, so the same input gives
    the same plan on any machine; the limit grows only when there is no solution at all yet.
    Returns the solver (to read values from) and its status name."""
    solver = cp_model.CpSolver()
    solver.parameters.num_workers = 1
    solver.parameters.random_seed = 0
    solver.parameters.relative_gap_limit = options.relative_gap
    solver.parameters.cp_model_presolve = len(regions) > 1  # a one-region model is small: presolve costs more than it saves
    limit = options.deterministic_time * len(regions)  # the work limit is per region of the model
    while True:
        solver.parameters.max_deterministic_time = limit
        status = solver.solve(model)
        if status in (cp_model.OPTIMAL, cp_model.FEASIBLE, cp_model.INFEASIBLE, cp_model.MODEL_INVALID) or limit >= 60.0:
            break
        limit *= 10  # no solution yet (a tiny limit on a large model): give it more work
    name = solver.status_name(status)
    if status not in (cp_model.OPTIMAL, cp_model.FEASIBLE):
        raise RuntimeError(
            f"CP-SAT returned {name} for regions {sorted(set(regions))}: the model always has the empty plan as a "
            "solution, so this means the solver stopped before finding one; raise solver_deterministic_time"
        )
    return solver, name


def _region_result(solver: cp_model.CpSolver, rm: _RegionModel) -> RegionResult:
    """One region's counts, cost and every slack the solver left, back in units."""
    counts = {k: int(solver.value(v)) for k, v in rm.x.items() if solver.value(v) > 0}
    short = {r: solver.value(rm.short_dem[r]) / QTY_SCALE for r in RESOURCE_TYPES if solver.value(rm.short_dem[r]) > 0}
    for r, amount in rm.pool_short.items():
        short[r] = round(short.get(r, 0.0) + amount, 6)
    by_class = {
        cls: {r: solver.value(v) / QTY_SCALE for r, v in vars_.items() if solver.value(v) > 0}
        for cls, vars_ in rm.short_class.items()
    }
    hosting: dict[str, float] = {}
    for _, slack in rm.groups:
        for r, v in slack.items():
            if solver.value(v) > 0:
                hosting[r] = hosting.get(r, 0.0) + solver.value(v) / (1 if r == "sessions" else QTY_SCALE)
    return RegionResult(
        counts=counts,
        cost=sum(o.hourly_price * counts.get(o.key, 0) for o in rm.p.offers),
        shortfall=short,
        failover_shortfall={r: solver.value(v) / QTY_SCALE for r, v in rm.short_fail.items() if solver.value(v) > 0},
        hosting_shortfall=hosting,
        uncovered_by_class={c: v for c, v in by_class.items() if v},
        pool_shortfall=dict(rm.pool_short),
        hosted=[{t: int(solver.value(v)) for t, v in z.items() if solver.value(v) > 0} for _, z, _ in rm.hosting],
        typed=[{t: int(solver.value(v)) for t, v in y.items() if solver.value(v) > 0} for _, y, _ in rm.typed],
        warm={k: int(solver.value(v)) for k, v in rm.warm.items() if solver.value(v) > 0},
        warm_shortfall={r: solver.value(v) / QTY_SCALE for r, v in rm.short_warm.items() if solver.value(v) > 0},
    )


def _read_relocations(solver: cp_model.CpSolver, built: _WindowModel, results: dict[str, RegionResult]) -> list[dict]:
    """The moves the solver chose; each region's result records its net demand moved in (negative: out)."""
    relocations = []
    flex, steps = built.flex, built.steps
    for (a, b), m in sorted(built.move_vars.items()):
        k = solver.value(m)
        if k <= 0:
            continue
        moved = {r: round(flex[a][r] * k / steps / QTY_SCALE, 6) for r in RESOURCE_TYPES if flex[a][r]}
        relocations.append({"from": a, "to": b, "share_of_flexible": k / steps, "quantity": moved})
        for r, q in moved.items():
            results[a].relocated[r] = round(results[a].relocated.get(r, 0.0) - q, 6)
            results[b].relocated[r] = round(results[b].relocated.get(r, 0.0) + q, 6)
    return relocations


def _lp_values(model: cp_model.CpModel) -> list[float] | None:
    """The LP relaxation of a CP-SAT model (GLOP): a value per variable, None if GLOP finds no optimum."""
    got = _lp_solve(model)
    return None if got is None else got[0]


def _lp_solve(model: cp_model.CpModel) -> tuple[list[float], float] | None:
    """The LP relaxation of a CP-SAT model (GLOP): (a value per variable, the objective in the model's
    units), None if GLOP finds no optimum. Dropping integrality (and any non-linear constraint) only
    enlarges the feasible set, so the objective is a lower bound on the model's optimum."""
    proto = model.proto
    lp = pywraplp.Solver.CreateSolver("GLOP")
    if lp is None:
        return None
    big = 2**62
    xs = []
    for v in proto.variables:
        d = v.domain
        xs.append(lp.NumVar(float(d[0]), float(d[len(d) - 1]), ""))
    for c in proto.constraints:
        if not c.has_linear() or len(c.enforcement_literal):
            continue  # the planner's models are linear; anything else is left out (a relaxation still)
        d = c.linear.domain
        lo, hi = d[0], d[len(d) - 1]
        row = lp.Constraint(-math.inf if lo <= -big else float(lo), math.inf if hi >= big else float(hi))
        for v, k in zip(c.linear.vars, c.linear.coeffs):
            row.SetCoefficient(xs[v], float(k))
    objective = lp.Objective()
    for v, k in zip(proto.objective.vars, proto.objective.coeffs):
        objective.SetCoefficient(xs[v], float(k))
    objective.SetMinimization()
    if lp.Solve() != pywraplp.Solver.OPTIMAL:
        return None
    scale = proto.objective.scaling_factor or 1.0
    return [x.solution_value() for x in xs], scale * (objective.Value() + proto.objective.offset)


def lp_lower_bound(problem: RegionProblem, options: WindowOptions) -> float | None:
    """A lower bound (USD/h, the allocation objective) from the LP relaxation of one cell's model, with
    whatever relaxation `problem` carries (e.g. typed packing); None when GLOP finds no optimum."""
    got = _lp_solve(_window_model([problem], options).model)
    return None if got is None else got[1] / PRICE_SCALE


def solve_typed(problem: RegionProblem, options: WindowOptions) -> tuple[list[RegionResult], float | None]:
    """One cell's model with the typed packing relaxation (`problem.packing`): (plans, cheapest first;
    the LP bound).

    The bound is the LP relaxation's over every type each class fits (valid, see pipeline.plan.relax).
    The plans, like `solve_hosting`'s, come from CP-SAT on restrictions of the model, so they only
    propose: first each class limited to the types the LP puts it on (or the first it fits), started
    from the LP's instance counts rounded up; then each class also allowed on every type the LP buys,
    started from the first plan (a wider choice finds cheaper plans, which pack less often). No plans
    and no bound when the LP has no optimum."""
    built = _window_model([problem], options)
    got = _lp_solve(built.model)
    if got is None:
        return [], None
    values, bound = got
    rm = built.regions[problem.region]
    hint = {k: ceil_units(values[v.index]) for k, v in rm.x.items()}
    bought = {k[0] for k, v in rm.x.items() if values[v.index] > ROUNDING_SLACK}
    narrow, wide = [], []
    for c, y, _ in rm.typed:
        used = [t for t, v in y.items() if values[v.index] > ROUNDING_SLACK] or list(y)[:1]
        narrow.append(replace(c, dff={t: c.dff[t] for t in used}))
        wide.append(replace(c, dff={t: c.dff[t] for t in y if t in used or t in bought}))
    first = solve_window([replace(problem, packing=narrow, hint=hint)], options)
    placed = first.regions[problem.region]
    second = solve_window([replace(problem, packing=wide, hint=placed.counts, packing_hint=placed.typed)], options)
    plans = sorted((first, second), key=lambda s: s.objective)  # stable: on ties the narrow one first
    return [s.regions[problem.region] for s in plans], bound / PRICE_SCALE


def solve_hosting(problem: RegionProblem, options: WindowOptions) -> RegionResult:
    """The allocation model with footprint hosting (`problem.hosting`) — the packing stage's re-plan.

    With every class free to use any type that holds it, the hosting variables make CP-SAT slow, so
    this takes two steps: the LP relaxation (GLOP) shows which types each class would use; CP-SAT then
    solves the model with each class limited to those types (or its cheapest one), starting from the
    LP's answer rounded up. `RegionResult.hosted` lists the sessions per class and type."""
    built = _window_model([problem], options)
    values = _lp_values(built.model)
    if values is None:
        return solve_window([problem], options).regions[problem.region]
    rm = built.regions[problem.region]
    narrowed, start = [], []
    for h, z, _ in rm.hosting:
        share = {t: values[v.index] for t, v in z.items()}
        keep = [t for t in h.footprint if share.get(t, 0.0) > ROUNDING_SLACK] or list(h.footprint)[:1]
        narrowed.append(replace(h, footprint={t: h.footprint[t] for t in keep}))
        whole = {t: floor_units(share.get(t, 0.0)) for t in keep}
        for t in sorted(keep, key=lambda t: (whole[t] - share.get(t, 0.0), t))[: max(h.sessions - sum(whole.values()), 0)]:
            whole[t] += 1  # the largest fractional parts round up, so the class is hosted in full
        start.append(whole)
    hint = {k: ceil_units(values[v.index]) for k, v in rm.x.items()}
    narrowed_problem = replace(problem, hosting=narrowed, hosting_hint=start, hint=hint)
    return solve_window([narrowed_problem], options).regions[problem.region]


def allocate(
    demand: dict[str, float],
    offers: list[Offer],
    pool_available: dict[str, float],
    max_spot_share: float = 0.3,
    time_limit_s: float = 5.0,
) -> Allocation:
    """Cheapest integer mix of offers covering `demand` in one region (see the module docstring)."""
    problem = RegionProblem(region="r", demand=demand, offers=offers, pool=dict(pool_available), max_spot_share=max_spot_share)
    solution = solve_window([problem], WindowOptions(churn_penalty=0.0, deterministic_time=time_limit_s))
    result = solution.regions["r"]
    return Allocation(counts=result.counts, cost=result.cost, objective=solution.objective,
                      lower_bound=solution.lower_bound, status=solution.status, shortfall=result.shortfall)


__all__ = ["Allocation", "HostingClass", "Offer", "PackClass", "RegionProblem", "RegionResult", "SessionGroup", "WindowOptions",
           "WindowSolution", "allocate", "lp_lower_bound", "solve_hosting", "solve_typed", "solve_window"]
