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
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from ortools.sat.python import cp_model

from pipeline.schemas import RESOURCE_TYPES

CAPACITY_COLUMN = {"vcpu": "vcpu", "memory_gib": "memory_gib", "storage_gib": "storage_gib", "bandwidth_gbps": "network_gbps"}
QTY_SCALE = 100  # hundredths of a unit
PRICE_SCALE = 1_000_000  # micro-dollars per hour
SHORTFALL_PENALTY = 1_000.0  # USD per unit-hour left uncovered (raised when instances are dearer)
COMPUTE_POOL_RESOURCES = ("vcpu", "memory_gib")
RELOCATION_STEPS = 20  # flexible demand moves in 5 % steps
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
    hint: dict[OfferKey, int] | None = None  # a known plan to start from (when there is no previous plan)


@dataclass
class WindowOptions:
    budget: float | None = None  # USD/h over every region of the model
    relocation: list[tuple[str, str]] = field(default_factory=list)  # allowed (from, to) moves
    relocation_cost: dict[str, float] = field(default_factory=dict)  # USD per unit-hour moved
    churn_penalty: float = 0.25
    priority_weights: dict[str, float] = field(default_factory=lambda: {"critical": 1000.0, "high": 100.0, "normal": 10.0, "low": 1.0})
    unit_value: dict[str, float] = field(default_factory=dict)  # c_under per resource (budget mode)
    deterministic_time: float = 5.0  # CP-SAT's reproducible work limit (≈ seconds on a fast core)
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
    return int(math.ceil(max(value, 0.0) * QTY_SCALE - 1e-6))


def _floor_scaled(value: float) -> int:
    return int(math.floor(max(value, 0.0) * QTY_SCALE + 1e-6))


def demand_penalty(max_price: float, churn_penalty: float = 0.0) -> float:
    """USD per hundredth of a unit left uncovered: above the dearest instance (with its churn cost)."""
    return max(SHORTFALL_PENALTY / QTY_SCALE, 8.0 * max_price * (1.0 + churn_penalty))


class _RegionModel:
    """The variables and expressions of one region inside a window model."""

    def __init__(self, model: cp_model.CpModel, p: RegionProblem, steps: int, incoming_max: dict[str, int]) -> None:
        self.p = p
        tag = p.region.replace("-", "_")
        self.pool_short: dict[str, float] = {}
        self.need: dict[str, int] = {}
        self.fail: dict[str, int] = {}
        for r in RESOURCE_TYPES:
            wanted, headroom = max(p.demand.get(r, 0.0), 0.0), max(p.failover.get(r, 0.0), 0.0)
            if r not in COMPUTE_POOL_RESOURCES and r in p.pool:
                cap = max(p.pool[r], 0.0)
                own = min(wanted, cap)
                extra = min(headroom, cap - own)
                if wanted - own > 1e-9:
                    self.pool_short[r] = round(wanted - own, 6)
                wanted, headroom = own, extra
            self.need[r], self.fail[r] = _scaled(wanted), _scaled(headroom)
        self.cap = {o.key: {r: int(round(o.capacity.get(r, 0.0) * QTY_SCALE)) for r in RESOURCE_TYPES} for o in p.offers}
        self.eff = {o.key: {r: _floor_scaled(o.capacity.get(r, 0.0) * min(max(o.counted, 0.0), 1.0)) for r in RESOURCE_TYPES}
                    for o in p.offers}
        groups = [(g, {r: _scaled(g.required.get(r, 0.0)) for r in RESOURCE_TYPES}) for g in p.session_groups]
        target = {r: self.need[r] + self.fail[r] + incoming_max.get(r, 0) for r in RESOURCE_TYPES}
        share = int(round(p.max_spot_share * 1000))
        previous = p.previous or {}

        # Bounds: more of an offer than covers everything it contributes to is never needed, except
        # on-demand vCPU that makes room for spot under the share rule, and what the previous plan had.
        bound: dict[OfferKey, int] = {}
        for o in p.offers:
            tops = [math.ceil(target[r] / self.eff[o.key][r]) for r in RESOURCE_TYPES if self.eff[o.key][r] > 0]
            for g, req in groups:
                if o.instance_type in g.hosts:
                    tops.append(g.sessions)
            bound[o.key] = max(tops, default=0)
        spot_vcpu_max = sum(self.cap[o.key]["vcpu"] * bound[o.key] for o in p.offers if o.purchase_option == "spot")
        for o in p.offers:
            vcpu = self.cap[o.key]["vcpu"]
            if o.purchase_option != "spot" and share > 0 and vcpu > 0:
                bound[o.key] = max(bound[o.key], math.ceil(spot_vcpu_max * 1000 / (share * vcpu)))
            for r in COMPUTE_POOL_RESOURCES:
                if r in p.pool and self.cap[o.key][r] > 0:
                    bound[o.key] = min(bound[o.key], _floor_scaled(p.pool[r]) // self.cap[o.key][r])
            if o.instance_type in p.instance_quota:
                bound[o.key] = min(bound[o.key], max(int(p.instance_quota[o.instance_type]), 0))
            bound[o.key] = max(bound[o.key], 0)
            if previous.get(o.key, 0) > bound[o.key]:
                bound[o.key] = previous[o.key]  # keeping a previous line is always allowed ...
                for r in COMPUTE_POOL_RESOURCES:  # ... within the pool
                    if r in p.pool and self.cap[o.key][r] > 0:
                        bound[o.key] = min(bound[o.key], _floor_scaled(p.pool[r]) // self.cap[o.key][r])
        self.x = {o.key: model.new_int_var(0, bound[o.key], f"x_{tag}_{o.instance_type}_{o.purchase_option}") for o in p.offers}

        self.raw = {r: sum(self.cap[k][r] * v for k, v in self.x.items()) for r in RESOURCE_TYPES}
        self.effective = {r: sum(self.eff[k][r] * v for k, v in self.x.items()) for r in RESOURCE_TYPES}
        spot_vcpu = sum(self.cap[k]["vcpu"] * v for k, v in self.x.items() if k[1] == "spot")
        od_vcpu = sum(self.cap[k]["vcpu"] * v for k, v in self.x.items() if k[1] != "spot")
        for r in COMPUTE_POOL_RESOURCES:
            if r in p.pool:
                model.add(self.raw[r] <= _floor_scaled(p.pool[r]))
        model.add(1000 * spot_vcpu <= share * self.raw["vcpu"])
        if p.on_demand_vcpu_quota is not None:
            model.add(od_vcpu <= _floor_scaled(p.on_demand_vcpu_quota))
        if p.spot_vcpu_quota is not None:
            model.add(spot_vcpu <= _floor_scaled(p.spot_vcpu_quota))
        for itype, limit in sorted(p.instance_quota.items()):
            keys = [k for k in self.x if k[0] == itype]
            if keys:
                model.add(sum(self.x[k] for k in keys) <= max(int(limit), 0))

        # Slack: own demand (split by priority class in budget mode), failover headroom, hosting.
        self.short_fail = {r: model.new_int_var(0, self.fail[r], f"sf_{tag}_{r}") for r in RESOURCE_TYPES}
        self.short_class: dict[str, dict[str, cp_model.IntVar]] = {}
        if p.demand_by_class is not None:
            total = {r: sum(max(c.get(r, 0.0), 0.0) for c in p.demand_by_class.values()) for r in RESOURCE_TYPES}
            for cls in sorted(p.demand_by_class):
                self.short_class[cls] = {}
                for r in RESOURCE_TYPES:
                    part = max(p.demand_by_class[cls].get(r, 0.0), 0.0)
                    portion = int(math.ceil(self.need[r] * (part / total[r]) - 1e-9)) if total[r] > 0 else 0
                    if cls == "low":
                        portion += incoming_max.get(r, 0)
                    self.short_class[cls][r] = model.new_int_var(0, portion, f"sd_{tag}_{cls}_{r}")
            self.short_dem = {r: sum(self.short_class[c][r] for c in self.short_class) for r in RESOURCE_TYPES}
        else:
            self.short_dem = {r: model.new_int_var(0, self.need[r] + incoming_max.get(r, 0), f"sd_{tag}_{r}") for r in RESOURCE_TYPES}
        self.steps = steps
        self.moves_in: dict[str, list] = {r: [] for r in RESOURCE_TYPES}  # filled by the window model
        self.moves_out: dict[str, list] = {r: [] for r in RESOURCE_TYPES}
        self.groups = []
        by_key = {o.key: o for o in p.offers}
        for i, (g, req) in enumerate(groups):
            slack = {}
            for r in RESOURCE_TYPES:
                if req[r] <= 0:
                    continue
                slack[r] = model.new_int_var(0, req[r], f"sh_{tag}_{i}_{r}")
                # raw capacity (a session on a spot instance uses all of it), limited to what sessions of
                # this shape can use of each type: a valid necessary condition for hosting them
                use = {k: min(self.cap[k][r], _floor_scaled(g.usable[k[0]][r])) if k[0] in g.usable and r in g.usable[k[0]]
                       else self.cap[k][r] for k in self.x if k[0] in g.hosts}
                model.add(sum(use[k] * self.x[k] for k in use) + slack[r] >= req[r])
            if g.sessions > 0 and g.smallest:
                # Each host instance takes at most m_o of the group's sessions (by its smallest session).
                per = {}
                for k in self.x:
                    if k[0] in g.hosts:
                        fits = [int(by_key[k].capacity.get(r, 0.0) // v) for r, v in g.smallest.items() if v > 1e-9]
                        per[k] = min(min(fits, default=g.sessions), g.sessions)
                slack["sessions"] = model.new_int_var(0, g.sessions, f"shn_{tag}_{i}")
                model.add(sum(m * self.x[k] for k, m in per.items() if m > 0) + slack["sessions"] >= g.sessions)
            self.groups.append((g, slack))

        # Churn against the previous plan.
        self.change: dict[OfferKey, cp_model.IntVar] = {}
        if p.previous is not None:
            for k, v in self.x.items():
                before = previous.get(k, 0)
                if before > 0:
                    d = model.new_int_var(0, max(before, bound[k]), f"d_{tag}_{k[0]}_{k[1]}")
                    model.add(d >= v - before)
                    model.add(d >= before - v)
                    self.change[k] = d
                model.add_hint(v, min(before, bound[k]))
        elif p.hint is not None:
            for k, v in self.x.items():
                model.add_hint(v, min(p.hint.get(k, 0), bound[k]))

    def add_cover(self, model: cp_model.CpModel) -> None:
        s = self.steps
        for r in RESOURCE_TYPES:
            inflow = sum(self.moves_in[r]) if self.moves_in[r] else 0
            outflow = sum(self.moves_out[r]) if self.moves_out[r] else 0
            model.add(s * (self.effective[r] + self.short_dem[r] + self.short_fail[r]) >= s * (self.need[r] + self.fail[r]) + inflow - outflow)
            if self.moves_in[r] and r not in COMPUTE_POOL_RESOURCES and r in self.p.pool:
                model.add(inflow - outflow <= s * max(_floor_scaled(self.p.pool[r]) - self.need[r] - self.fail[r], 0))


def solve_window(problems: list[RegionProblem], options: WindowOptions | None = None) -> WindowSolution:
    """Solve one window's model over `problems` (one region, or several coupled by budget/relocation)."""
    options = options or WindowOptions()
    model = cp_model.CpModel()
    by_region = {p.region: p for p in problems}
    moves = [(a, b) for a, b in options.relocation if a in by_region and b in by_region and a != b]
    steps = RELOCATION_STEPS if moves else 1
    flex = {p.region: {r: _scaled(p.flexible.get(r, 0.0)) for r in RESOURCE_TYPES} for p in problems}
    incoming_max = {p.region: {r: sum(flex[a][r] for a, b in moves if b == p.region) for r in RESOURCE_TYPES} for p in problems}
    regions = {p.region: _RegionModel(model, p, steps, incoming_max[p.region]) for p in problems}

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
        model.add(sum(v for (x, _), v in move_vars.items() if x == a) <= steps)
    for rm in regions.values():
        rm.add_cover(model)

    max_price = max((o.hourly_price for p in problems for o in p.offers), default=0.0)
    p_dem = demand_penalty(max_price, options.churn_penalty)
    budget_mode = options.budget is not None
    terms = []
    for rm in regions.values():
        for o in rm.p.offers:
            terms.append(int(round(o.hourly_price * PRICE_SCALE)) * rm.x[o.key])
            if o.key in rm.change:
                terms.append(int(round(options.churn_penalty * o.hourly_price * PRICE_SCALE)) * rm.change[o.key])
            elif rm.p.previous is not None:
                terms.append(int(round(options.churn_penalty * o.hourly_price * PRICE_SCALE)) * rm.x[o.key])
        for r in RESOURCE_TYPES:
            if budget_mode:
                value = options.unit_value.get(r, 1.0) / QTY_SCALE * PRICE_SCALE
                weights = options.priority_weights
                if rm.short_class:
                    for cls, vars_ in rm.short_class.items():
                        terms.append(max(int(round(weights.get(cls, 1.0) * value)), 1) * vars_[r])
                else:
                    terms.append(max(int(round(weights.get("normal", 10.0) * value)), 1) * rm.short_dem[r])
                terms.append(max(int(round(weights.get("high", 100.0) * value)), 1) * rm.short_fail[r])
                host_w = max(int(round(weights.get("low", 1.0) * value / 2)), 1)
            else:
                terms.append(int(round(p_dem * PRICE_SCALE)) * rm.short_dem[r])
                terms.append(int(round(p_dem / 2 * PRICE_SCALE)) * rm.short_fail[r])
                host_w = int(round(p_dem / 4 * PRICE_SCALE))
            for g, slack in rm.groups:
                if r in slack:
                    terms.append(host_w * slack[r])
                if r == "vcpu" and "sessions" in slack:  # a session left without a host costs like its vCPU uncovered
                    terms.append(host_w * max(_scaled(g.smallest.get("vcpu", 0.0)), 1) * slack["sessions"])

    for (a, b), m in move_vars.items():
        for r in RESOURCE_TYPES:
            unit = options.relocation_cost.get(r, 0.0) / QTY_SCALE * PRICE_SCALE
            if flex[a][r] and unit > 0:
                terms.append(max(int(round(unit * flex[a][r] / steps)), 1) * m)
    if budget_mode:
        model.add(sum(int(round(o.hourly_price * PRICE_SCALE)) * rm.x[o.key] for rm in regions.values() for o in rm.p.offers)
                  <= int(math.floor(options.budget * PRICE_SCALE)))
    model.minimize(sum(terms))

    solver = cp_model.CpSolver()
    solver.parameters.num_workers = 1  # deterministic: the same input gives the same plan
    solver.parameters.random_seed = 0
    solver.parameters.max_deterministic_time = options.deterministic_time
    solver.parameters.relative_gap_limit = options.relative_gap
    status = solver.solve(model)
    name = solver.status_name(status)
    if status not in (cp_model.OPTIMAL, cp_model.FEASIBLE):
        raise RuntimeError(
            f"CP-SAT returned {name} for regions {sorted(by_region)}: the model always has the empty plan as a "
            "solution, so this means the solver stopped before finding one; raise solver_deterministic_time"
        )
    results: dict[str, RegionResult] = {}
    total_cost = 0.0
    for region, rm in regions.items():
        counts = {k: int(solver.value(v)) for k, v in rm.x.items() if solver.value(v) > 0}
        cost = sum(o.hourly_price * counts.get(o.key, 0) for o in rm.p.offers)
        total_cost += cost
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
        results[region] = RegionResult(
            counts=counts,
            cost=cost,
            shortfall=short,
            failover_shortfall={r: solver.value(v) / QTY_SCALE for r, v in rm.short_fail.items() if solver.value(v) > 0},
            hosting_shortfall=hosting,
            uncovered_by_class={c: v for c, v in by_class.items() if v},
            pool_shortfall=dict(rm.pool_short),
        )
    relocations = []
    for (a, b), m in sorted(move_vars.items()):
        k = solver.value(m)
        if k <= 0:
            continue
        moved = {r: round(flex[a][r] * k / steps / QTY_SCALE, 6) for r in RESOURCE_TYPES if flex[a][r]}
        relocations.append({"from": a, "to": b, "share_of_flexible": k / steps, "quantity": moved})
        for r, q in moved.items():
            results[a].relocated[r] = round(results[a].relocated.get(r, 0.0) - q, 6)
            results[b].relocated[r] = round(results[b].relocated.get(r, 0.0) + q, 6)
    return WindowSolution(
        regions=results,
        objective=solver.objective_value / PRICE_SCALE,
        lower_bound=solver.best_objective_bound / PRICE_SCALE,
        status=name,
        cost=total_cost,
        relocations=relocations,
    )


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


__all__ = ["Allocation", "Offer", "RegionProblem", "RegionResult", "SessionGroup", "WindowOptions", "WindowSolution",
           "allocate", "solve_window"]
