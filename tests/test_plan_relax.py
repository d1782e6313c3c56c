"""The typed packing relaxation (pipeline.plan.relax): its dual-feasible functions are valid, its bound
never exceeds the true optimum (brute force on small cells), and the planner's plans never cost less
than the bound it reports."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pandas as pd
import pytest

from pipeline.common.schemas import RESOURCE_TYPES
from pipeline.plan.allocate import Offer, RegionProblem, WindowOptions, lp_lower_bound, solve_window
from pipeline.plan.core import PlanningProblem, RegionMix, solve_plan
from pipeline.plan.packing import PACK_DIMS, expand_bins, ffd_plan, plan_cost
from pipeline.plan.policy import PlannerConfig
from pipeline.plan.relax import dff, dff_values, pack_classes

W = [pd.Timestamp("2026-01-29T00:00Z")]
BIG_POOL = {"vcpu": 1e4, "memory_gib": 1e5, "storage_gib": 1e6, "bandwidth_gbps": 1e4}
OPTIONS = WindowOptions(churn_penalty=0.0, deterministic_time=1.0)


def offers() -> list[Offer]:
    """A compute, a general and a memory type (on-demand only: the brute force prices plain counts)."""
    out = []
    for itype, vcpu, mem, price in (("c.2x", 8, 16, 0.34), ("m.x", 4, 16, 0.19), ("r.2x", 8, 64, 0.50)):
        out.append(Offer(itype, "on_demand", price, {"vcpu": float(vcpu), "memory_gib": float(mem), "storage_gib": 0.0,
                                                     "bandwidth_gbps": 10.0}))
    return out


def demand_of(sessions: np.ndarray) -> dict[str, float]:
    return dict(zip(RESOURCE_TYPES, [float(sessions[:, 0].sum()), float(sessions[:, 1].sum()), 0.0, float(sessions[:, 2].sum())]))


def packs(sessions: np.ndarray, bins: np.ndarray) -> bool:
    """Exact vector packing by backtracking (largest sessions first; identical bins tried once)."""
    order = sorted(range(len(sessions)), key=lambda i: -float(sessions[i].sum()))
    free = bins.copy()

    def place(k: int) -> bool:
        if k == len(order):
            return True
        s, seen = sessions[order[k]], set()
        for b in range(len(free)):
            key = tuple(np.round(free[b], 9))
            if key in seen or not (s <= free[b] + 1e-9).all():
                continue
            seen.add(key)
            free[b] -= s
            if place(k + 1):
                return True
            free[b] += s
        return False

    return place(0)


def brute_force_optimum(sessions: np.ndarray, catalog: list[Offer], most: int = 5) -> float:
    """The cheapest counts (≤ `most` per type) that cover the demand and host every session."""
    need = demand_of(sessions)
    best = math.inf
    for counts in itertools.product(range(most + 1), repeat=len(catalog)):
        cost = sum(o.hourly_price * n for o, n in zip(catalog, counts))
        if cost >= best:
            continue
        plan = {o.key: n for o, n in zip(catalog, counts) if n}
        if any(sum(o.capacity[r] * n for o, n in zip(catalog, counts)) < need[r] - 1e-9 for r in RESOURCE_TYPES):
            continue
        if packs(sessions, expand_bins(plan, catalog)[1]):
            best = cost
    return best


def random_cell(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(4, 8))
    v = rng.choice([1.0, 2.0, 4.0, 8.0], n, p=[0.3, 0.3, 0.25, 0.15])
    return np.column_stack([v, v * rng.choice([2.0, 4.0, 8.0], n), rng.uniform(0.1, 2.0, n)])


@pytest.mark.parametrize("k", [0, 1, 2, 3])
def test_dual_feasible_functions_keep_every_packable_set_within_one_instance(k: int) -> None:
    rng = np.random.default_rng(k)
    for _ in range(2000):
        items = rng.dirichlet(np.ones(int(rng.integers(1, 6)))) * rng.uniform(0.5, 1.0)  # Σ items ≤ 1
        assert sum(dff(float(x), k) for x in items) <= 1.0 + 1e-12
    assert dff(0.75, 1) == 1.0 and dff(0.4, 1) == 0.0 and dff(0.5, 2) == 0.5  # large sessions take a whole instance
    sizes, caps = rng.uniform(0, 8, (5, 3)), rng.uniform(4, 16, (4, 3))  # the model's integer values never exceed the DFF
    values = dff_values(sizes, caps, (k,))
    for c, t, d in itertools.product(range(5), range(4), range(3)):
        assert values[c, t, d] <= 1000 * dff(sizes[c, d] / caps[t, d], k) + 1e-9


def test_classes_never_exceed_their_members_and_every_session_that_fits_is_in_one() -> None:
    sessions = np.array([[2.0, 4.0, 0.3], [2.0, 4.0, 0.5], [2.0, 4.0, 3.0], [8.0, 64.0, 1.0], [16.0, 8.0, 1.0]])
    classes, members = pack_classes(sessions, offers())
    assert sorted(i for m in members for i in m.tolist()) == [0, 1, 2, 3]  # the 16-vCPU session fits no type
    for c, rows in zip(classes, members):
        assert c.sessions == len(rows) and (np.array(c.size) <= sessions[rows] + 1e-12).all()
    big = next(c for c, rows in zip(classes, members) if 3 in rows)
    assert set(big.dff) == {"r.2x"}  # 64 GiB: only the memory type holds it


@pytest.mark.parametrize("seed", range(12))
def test_relaxation_bound_is_at_most_the_brute_force_optimum(seed: int) -> None:
    sessions = random_cell(seed)
    catalog = offers()
    p = RegionProblem(region="r", demand=demand_of(sessions), offers=catalog, pool=dict(BIG_POOL), max_spot_share=0.0)
    classes, _ = pack_classes(sessions, catalog)
    optimum = brute_force_optimum(sessions, catalog)
    bound = lp_lower_bound(RegionProblem(**{**p.__dict__, "packing": classes}), OPTIONS)
    typed = solve_window([RegionProblem(**{**p.__dict__, "packing": classes})], OPTIONS)
    assert bound is not None and bound <= optimum + 1e-6
    assert typed.lower_bound <= optimum + 1e-6  # CP-SAT's proven bound of the typed model is valid too
    assert solve_window([p], OPTIONS).lower_bound <= optimum + 1e-6


def test_relaxation_sees_fragmentation_the_aggregate_model_misses() -> None:
    """Four 4-vCPU/20-GiB sessions: the aggregate model buys a compute and a memory type (vCPU on one,
    memory on the other, $0.84/h); only the memory type can host them, two each ($1.00/h), which the
    typed relaxation knows."""
    sessions = np.array([[4.0, 20.0, 0.5]] * 4)
    catalog = offers()
    p = RegionProblem(region="r", demand=demand_of(sessions), offers=catalog, pool=dict(BIG_POOL), max_spot_share=0.0)
    classes, _ = pack_classes(sessions, catalog)
    aggregate = solve_window([p], OPTIONS)
    bound = lp_lower_bound(RegionProblem(**{**p.__dict__, "packing": classes}), OPTIONS)
    optimum = brute_force_optimum(sessions, catalog)
    assert bound is not None and aggregate.lower_bound < bound - 0.05 and bound <= optimum + 1e-6


def planning_problem(sessions: np.ndarray) -> PlanningProblem:
    mix = RegionMix(class_share={"critical": dict.fromkeys(RESOURCE_TYPES, 0.1), "high": dict.fromkeys(RESOURCE_TYPES, 0.1),
                                 "normal": dict.fromkeys(RESOURCE_TYPES, 0.8), "low": dict.fromkeys(RESOURCE_TYPES, 0.0)})
    return PlanningProblem(windows=W, regions=["r"], demand={(W[0], "r"): demand_of(sessions)}, offers={"r": offers()},
                           pools={"r": dict(BIG_POOL)}, mix={"r": mix}, sessions={(W[0], "r"): sessions})


@pytest.mark.parametrize("seed", range(8))
def test_planner_reports_a_valid_bound_and_never_costs_more_than_ffd(seed: int) -> None:
    """End to end on one cell: allocation bound ≤ reported bound ≤ brute-force optimum ≤ plan cost ≤ FFD."""
    sessions = random_cell(100 + seed)
    config = PlannerConfig(failover_share=0.0, max_spot_share=0.0, max_session_vcpu=None, hall_groups=0)
    result = solve_plan(planning_problem(sessions), config)
    cell = result.cells[(W[0], "r")]
    optimum = brute_force_optimum(sessions, offers())
    assert cell.unhosted_sessions == 0 and cell.packing["placed"] == len(sessions)
    assert result.allocation["lower_bound"] - 1e-9 <= result.lower_bound <= optimum + 1e-6 <= cell.cost + 2e-6
    assert result.lower_bound <= result.objective + 1e-9
    baseline = ffd_plan(sessions, cell.offers, BIG_POOL, demand_of(sessions), {}, 0.0)
    assert cell.cost <= plan_cost(baseline, cell.offers) + 1e-9
    if cell.packing_bound is not None:  # the cell was re-planned: its bound is the relaxation's (or the allocation's)
        assert result.lower_bound == pytest.approx(max(cell.packing_bound, cell.model_bound or 0.0))


def test_a_replanned_cell_gets_the_relaxation_bound_and_the_typed_plan() -> None:
    sessions = np.array([[4.0, 20.0, 0.5]] * 4)
    config = PlannerConfig(failover_share=0.0, max_spot_share=0.0, max_session_vcpu=None, hall_groups=0)
    result = solve_plan(planning_problem(sessions), config)
    cell = result.cells[(W[0], "r")]
    assert cell.packing["before"]["unplaced"] > 0 and cell.packing_bound is not None
    assert result.lower_bound > result.allocation["lower_bound"] + 0.05
    assert result.gap < result.allocation_gap + (result.objective - result.allocation["objective"]) / result.objective
    off = solve_plan(planning_problem(sessions), PlannerConfig(failover_share=0.0, max_spot_share=0.0, max_session_vcpu=None,
                                                               hall_groups=0, typed_packing=False))
    assert off.lower_bound == off.allocation["lower_bound"] and cell.cost <= off.cells[(W[0], "r")].cost + 1e-9
    assert PACK_DIMS == ("vcpu", "memory_gib", "bandwidth_gbps")
