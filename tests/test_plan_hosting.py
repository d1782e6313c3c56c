"""The packing stage's footprint re-plan: classes, placements, and the rules on the plans it produces."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from pipeline.common.config import CostModel
from pipeline.common.schemas import RESOURCE_TYPES
from pipeline.plan.allocate import Offer
from pipeline.plan.core import PlanningProblem, RegionMix, failover_needs, solve_plan
from pipeline.plan.packing import (
    capacity_matrix,
    dot_product_pack,
    expand_bins,
    ffd_plan,
    hosted_assignment,
    hosting_classes,
    plan_cost,
    shard,
)
from pipeline.plan.policy import PlannerConfig

W = [pd.Timestamp("2026-01-29T00:00Z") + pd.Timedelta(hours=h) for h in range(3)]
BIG_POOL = {"vcpu": 1e4, "memory_gib": 1e5, "storage_gib": 1e6, "bandwidth_gbps": 1e4}


def catalog() -> list[Offer]:
    """Compute, general and memory types in two sizes; spot at 40 % of on-demand."""
    out = []
    for itype, vcpu, mem, price in (("c6i.2xlarge", 8, 16, 0.340), ("c6i.4xlarge", 16, 32, 0.680), ("m6i.xlarge", 4, 16, 0.192),
                                    ("m6i.4xlarge", 16, 64, 0.768), ("r6i.large", 2, 16, 0.126), ("r6i.2xlarge", 8, 64, 0.504)):
        cap = {"vcpu": float(vcpu), "memory_gib": float(mem), "storage_gib": 16.0 * vcpu, "bandwidth_gbps": 12.5}
        out.append(Offer(itype, "on_demand", price, cap))
        out.append(Offer(itype, "spot", round(price * 0.4, 4), cap, 0.005))
    return out


def problem(sessions: dict, windows: list[pd.Timestamp], regions: list[str]) -> PlanningProblem:
    demand = {cell: dict(zip(RESOURCE_TYPES, [s[:, 0].sum(), s[:, 1].sum(), 0.0, s[:, 2].sum()])) for cell, s in sessions.items()}
    mix = RegionMix(class_share={"critical": dict.fromkeys(RESOURCE_TYPES, 0.1), "high": dict.fromkeys(RESOURCE_TYPES, 0.1),
                                 "normal": dict.fromkeys(RESOURCE_TYPES, 0.7), "low": dict.fromkeys(RESOURCE_TYPES, 0.1)})
    return PlanningProblem(windows=windows, regions=regions, demand=demand, offers={r: catalog() for r in regions},
                           pools={r: dict(BIG_POOL) for r in regions}, mix=dict.fromkeys(regions, mix),
                           c_under=dict(CostModel().c_under), c_over=dict(CostModel().c_over), sessions=sessions)


def mixed_sessions(rng: np.random.Generator, n: int) -> np.ndarray:
    """Sizes 1-8 vCPU at 2, 4 or 8 GiB per vCPU: no single family hosts them all without waste."""
    v = rng.choice([1.0, 2.0, 4.0, 8.0], n)
    return np.column_stack([v, v * rng.choice([2.0, 4.0, 8.0], n), rng.uniform(0.1, 1.0, n)])


def counted(cell) -> dict[str, float]:
    by_key = {o.key: o for o in cell.offers}
    return {r: sum(by_key[k].capacity[r] * by_key[k].counted * n for k, n in cell.counts.items()) for r in RESOURCE_TYPES}


def test_hosting_classes_group_sessions_by_footprint_on_the_cheapest_types() -> None:
    offers = catalog()
    sessions = np.array([[2.0, 4.0, 0.5], [2.0, 4.0, 0.5], [4.0, 32.0, 0.5], [32.0, 8.0, 0.5]])
    classes, members = hosting_classes(sessions, offers, candidates=3)
    assert [len(m) for m in members] == [1, 2] and sorted(members[1].tolist()) == [0, 1]  # the 32-vCPU session fits no type
    big, small = classes
    # footprint: the binding share of one instance, rounded up to 1/64
    assert big.footprint.get("r6i.2xlarge") == 0.5 and "r6i.large" not in big.footprint  # 32 GiB does not fit 16 GiB
    assert small.footprint == {"c6i.4xlarge": 0.125, "c6i.2xlarge": 0.25, "m6i.4xlarge": 0.125}  # cheapest first, larger on ties
    bw = hosting_classes(np.array([[1.0, 2.0, 0.5], [1.0, 2.0, 5.0]]), offers)[0]  # bandwidth splits a class where it binds
    assert len(bw) == 2 and max(c.footprint["c6i.2xlarge"] for c in bw) == math.ceil(5.0 / 12.5 * 64) / 64
    assert all(0 < f <= 1 for c in classes for f in c.footprint.values()) and all(len(c.footprint) <= 3 for c in classes)
    # candidates are the types where a session is cheapest (footprint × cheaper purchase option)
    names, _ = capacity_matrix(offers)
    price = {n: min(o.hourly_price for o in offers if o.instance_type == n) for n in names}
    cost = {t: f * price[t] for t, f in small.footprint.items()}
    assert max(cost.values()) <= min(small.footprint.get(t, 1.0) * price[t] for t in names if t not in small.footprint) + 1e-12


def test_hosted_assignment_places_every_session_within_its_instances() -> None:
    offers = catalog()
    sessions = np.array([[4.0, 8.0, 0.2]] * 4 + [[2.0, 16.0, 0.2]] * 2)
    _, members = hosting_classes(sessions, offers)
    counts = {("c6i.2xlarge", "on_demand"): 2, ("r6i.2xlarge", "spot"): 1}
    hosted = [{"c6i.2xlarge": 4} if len(m) == 4 else {"r6i.2xlarge": 2} for m in members]
    home = hosted_assignment(sessions, counts, offers, members, hosted)
    keys, bins = expand_bins(counts, offers)
    assert (home >= 0).all()
    used = np.array([sessions[home == b].sum(axis=0) if (home == b).any() else np.zeros(3) for b in range(len(bins))])
    assert (used <= bins + 1e-9).all()
    assert {keys[b][0] for b in home[:4]} == {"c6i.2xlarge"} and {keys[b][0] for b in home[4:]} == {"r6i.2xlarge"}


def test_a_plan_that_cannot_host_its_sessions_is_replanned_with_footprint_hosting() -> None:
    """16-vCPU/40-GiB sessions: only m6i.4xlarge holds one, but without Hall groups the allocation buys
    the cheaper aggregate mix of compute and memory types; the packing check re-plans the cell so that
    every session has a host, keeping coverage, and for less than first-fit decreasing."""
    sessions = np.array([[16.0, 40.0, 1.0]] * 6 + [[2.0, 4.0, 0.2]] * 8)
    p = problem({(W[0], "us-east-1"): sessions}, W[:1], ["us-east-1"])
    config = PlannerConfig(failover_share=0.0, max_spot_share=0.0, max_session_vcpu=None, hall_groups=0,
                           typed_packing=False)  # the footprint re-plan alone (test_plan_relax covers the typed one)
    result = solve_plan(p, config)
    cell = result.cells[(W[0], "us-east-1")]
    assert cell.packing["before"]["unplaced"] > 0 and cell.packing["method"] == "hosting_model"
    assert cell.packing["placed"] == cell.packing["sessions"] == 14 and cell.unhosted_sessions == 0
    assert sum(n for k, n in cell.counts.items() if k[0] == "m6i.4xlarge") >= 6
    have = counted(cell)
    assert all(have[r] >= p.demand[(W[0], "us-east-1")][r] - 1e-6 for r in ("vcpu", "memory_gib"))
    assert cell.cost <= plan_cost(ffd_plan(sessions, cell.offers, BIG_POOL, p.demand[(W[0], "us-east-1")]), cell.offers) + 1e-9
    # the change is counted in the objective; without the typed relaxation the bound stays the allocation's
    assert result.objective >= result.allocation["objective"] and result.lower_bound == result.allocation["lower_bound"]


def test_replanned_plans_keep_redundancy_spot_share_and_cost_no_more_than_ffd() -> None:
    rng = np.random.default_rng(7)
    regions = ["eu-central-1", "eu-west-1", "us-east-1"]
    sessions = {(w, r): mixed_sessions(rng, int(rng.integers(20, 40))) for w in W for r in regions}
    p = problem(sessions, W, regions)
    config = PlannerConfig(hall_groups=0, max_spot_share=0.25)
    result = solve_plan(p, config)
    fail, _ = failover_needs(p, config, result.partners)
    assert any(c.packing.get("method") in ("hosting_model", "typed_model") for c in result.cells.values())  # the re-plan ran
    for (w, r), cell in result.cells.items():
        assert cell.packing["placed"] == cell.packing["sessions"] > 0
        have, raw_vcpu = counted(cell), sum(o.capacity["vcpu"] * cell.counts.get(o.key, 0) for o in cell.offers)
        for k in ("vcpu", "memory_gib"):  # own demand and N+1 headroom stay covered
            assert have[k] >= p.demand[(w, r)][k] + fail.get((w, r), {}).get(k, 0.0) - 1e-6
        spot = sum(o.capacity["vcpu"] * cell.counts.get(o.key, 0) for o in cell.offers if o.purchase_option == "spot")
        assert spot <= 0.25 * raw_vcpu + 1e-6
        workers = shard(sessions[(w, r)], capacity_matrix(cell.offers)[1], config.max_session_vcpu)
        baseline = ffd_plan(workers, cell.offers, BIG_POOL, p.demand[(w, r)], fail.get((w, r), {}), 0.25)
        assert cell.cost <= plan_cost(baseline, cell.offers) + 1e-9
        _, bins = expand_bins(cell.counts, cell.offers)
        assert (dot_product_pack(workers, bins) >= 0).all() or cell.packing["method"] in ("hosting_model", "typed_model")
    assert result.lower_bound >= result.allocation["lower_bound"] - 1e-9 and result.lower_bound <= result.objective + 1e-9
    assert math.isfinite(result.gap)


def test_plans_with_replans_are_identical_across_process_counts_and_identical_windows_share_a_plan() -> None:
    rng = np.random.default_rng(3)
    regions = ["ap-southeast-1", "ap-northeast-1", "eu-central-1", "eu-west-1", "eu-west-2", "us-east-1", "us-east-2", "us-west-2"]
    same = {r: mixed_sessions(rng, 25) for r in regions}  # 8 regions: two processes share the region tasks
    sessions = {(w, r): same[r] for w in W for r in regions}  # every window the same
    p = problem(sessions, W, regions)
    config = PlannerConfig(hall_groups=1)
    one, two = solve_plan(p, config, workers=1), solve_plan(p, config, workers=2)
    assert {c: x.counts for c, x in one.cells.items()} == {c: x.counts for c, x in two.cells.items()}
    assert one.objective == two.objective and one.lower_bound == two.lower_bound
    for r in regions:
        assert one.cells[(W[0], r)].counts == one.cells[(W[1], r)].counts == one.cells[(W[2], r)].counts


def test_the_planner_uses_the_available_cores_by_default_and_maps_in_process_inside_a_daemon(monkeypatch) -> None:
    """PEERSCALE_PLAN_WORKERS defaults to the cores this process may use; a daemonic process (a
    Celery prefork worker's task) may not start children, so the map runs in process there."""
    import multiprocessing
    import os

    from pipeline.plan import core

    assert core.default_plan_workers() == len(os.sched_getaffinity(0))
    pids = core.parallel_map(_pid, list(range(16)), 2)
    assert len(set(pids)) >= 2 and os.getpid() not in pids  # forked workers did the work
    monkeypatch.setattr(multiprocessing.current_process(), "daemon", True, raising=False)
    assert set(core.parallel_map(_pid, list(range(16)), 2)) == {os.getpid()}


def _pid(_: int) -> int:
    import os
    import time

    time.sleep(0.02)  # long enough that both workers take tasks
    return os.getpid()
