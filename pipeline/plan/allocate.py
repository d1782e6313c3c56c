"""Cover a region's demand vector with instances at minimum hourly cost (OR-Tools CP-SAT).

One small integer program per region and window:
    minimise   Σ price_i · x_i + penalty · Σ shortfall_r
    subject to Σ cap_{i,r} · x_i + shortfall_r ≥ demand_r      for every resource r
               Σ cap_{i,r} · x_i ≤ pool_available_r             for r in vcpu, memory (instances come from the compute pool)
               Σ_spot vcpu_i · x_i ≤ max_spot_share · Σ vcpu_i · x_i
Storage and bandwidth pools are the region's reservable storage and peering capacity, not
something instances draw from: demand above them is a shortfall up front, and the planner caps
what a plan reserves of them at the pool. CP-SAT needs integers, so capacities and demand are scaled to hundredths and prices to
micro-dollars. Shortfall variables keep every input feasible: what cannot be covered is
reported per resource instead of raising.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from ortools.sat.python import cp_model

from pipeline.schemas import RESOURCE_TYPES

CAPACITY_COLUMN = {"vcpu": "vcpu", "memory_gib": "memory_gib", "storage_gib": "storage_gib", "bandwidth_gbps": "network_gbps"}
QTY_SCALE = 100  # hundredths of a unit
PRICE_SCALE = 1_000_000  # micro-dollars per hour
SHORTFALL_PENALTY = 1_000.0  # USD per unit-hour left uncovered: far above any instance price
COMPUTE_POOL_RESOURCES = ("vcpu", "memory_gib")


@dataclass(frozen=True)
class Offer:
    """One way to buy capacity in a region: an instance type at a purchase option."""

    instance_type: str
    purchase_option: str
    hourly_price: float
    capacity: dict[str, float]
    interruption_rate: float = 0.0


@dataclass
class Allocation:
    """The solver's answer for one region and window."""

    counts: dict[tuple[str, str], int]
    cost: float  # USD per hour of the chosen instances
    objective: float  # cost plus the shortfall penalty: what the solver minimised
    lower_bound: float  # proven bound on the objective
    status: str
    shortfall: dict[str, float] = field(default_factory=dict)


def allocate(
    demand: dict[str, float],
    offers: list[Offer],
    pool_available: dict[str, float],
    max_spot_share: float = 0.3,
    time_limit_s: float = 5.0,
) -> Allocation:
    """Cheapest integer mix of offers covering `demand` (see module docstring for the model)."""
    wanted = {r: max(demand.get(r, 0.0), 0.0) for r in RESOURCE_TYPES}
    reservable = {
        r: min(wanted[r], max(pool_available[r], 0.0)) if r in pool_available and r not in COMPUTE_POOL_RESOURCES else wanted[r]
        for r in RESOURCE_TYPES
    }
    pool_short = {r: round(wanted[r] - reservable[r], 6) for r in RESOURCE_TYPES if wanted[r] - reservable[r] > 1e-9}
    need = {r: int(math.ceil(reservable[r] * QTY_SCALE - 1e-6)) for r in RESOURCE_TYPES}
    if not any(need.values()):
        return Allocation(counts={}, cost=0.0, objective=0.0, lower_bound=0.0, status="OPTIMAL", shortfall=pool_short)
    model = cp_model.CpModel()
    x: dict[tuple[str, str], cp_model.IntVar] = {}
    share = int(round(max_spot_share * 100))
    # More of an offer than covers every resource it has is never needed, except on-demand vCPU
    # that makes room for spot under the spot-share constraint: allow enough of that for the most
    # spot vCPU the spot offers can bring.
    bound = {
        (o.instance_type, o.purchase_option): max(
            (math.ceil(need[r] / max(o.capacity[r] * QTY_SCALE, 1)) for r in RESOURCE_TYPES if o.capacity[r] > 0),
            default=0,
        )
        for o in offers
    }
    spot_vcpu_max = sum(
        int(round(o.capacity["vcpu"] * QTY_SCALE)) * bound[(o.instance_type, o.purchase_option)] for o in offers if o.purchase_option == "spot"
    )
    for offer in offers:
        key = (offer.instance_type, offer.purchase_option)
        vcpu_scaled = int(round(offer.capacity["vcpu"] * QTY_SCALE))
        if offer.purchase_option != "spot" and share > 0 and vcpu_scaled > 0:
            bound[key] = max(bound[key], math.ceil(spot_vcpu_max * 100 / (share * vcpu_scaled)))
        x[key] = model.new_int_var(0, max(bound[key], 0), f"x_{offer.instance_type}_{offer.purchase_option}")
    shortfall = {r: model.new_int_var(0, need[r], f"short_{r}") for r in RESOURCE_TYPES}
    held = {}
    for r in RESOURCE_TYPES:
        held[r] = sum(int(round(o.capacity[r] * QTY_SCALE)) * x[(o.instance_type, o.purchase_option)] for o in offers)
        model.add(held[r] + shortfall[r] >= need[r])
        if r in pool_available and r in COMPUTE_POOL_RESOURCES:
            model.add(held[r] <= int(math.floor(max(pool_available[r], 0.0) * QTY_SCALE)))
    spot_vcpu = sum(int(round(o.capacity["vcpu"] * QTY_SCALE)) * x[(o.instance_type, o.purchase_option)] for o in offers if o.purchase_option == "spot")
    total_vcpu = held["vcpu"]
    model.add(100 * spot_vcpu <= share * total_vcpu)
    cost_terms = [int(round(o.hourly_price * PRICE_SCALE)) * x[(o.instance_type, o.purchase_option)] for o in offers]
    penalty = int(SHORTFALL_PENALTY * PRICE_SCALE / QTY_SCALE)
    model.minimize(sum(cost_terms) + penalty * sum(shortfall.values()))

    solver = cp_model.CpSolver()
    solver.parameters.num_workers = 1  # deterministic: the same input gives the same plan
    solver.parameters.max_time_in_seconds = time_limit_s
    status = solver.solve(model)
    name = solver.status_name(status)
    if status not in (cp_model.OPTIMAL, cp_model.FEASIBLE):
        raise RuntimeError(f"CP-SAT returned {name} for demand {demand}: the model should always be feasible")
    counts = {key: int(solver.value(var)) for key, var in x.items() if solver.value(var) > 0}
    short = {r: solver.value(v) / QTY_SCALE for r, v in shortfall.items() if solver.value(v) > 0}
    for r, amount in pool_short.items():
        short[r] = round(short.get(r, 0.0) + amount, 6)
    cost = sum(o.hourly_price * counts.get((o.instance_type, o.purchase_option), 0) for o in offers)
    return Allocation(
        counts=counts,
        cost=cost,
        objective=solver.objective_value / PRICE_SCALE,
        lower_bound=solver.best_objective_bound / PRICE_SCALE,
        status=name,
        shortfall=short,
    )
