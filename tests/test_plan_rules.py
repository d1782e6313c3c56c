"""The planner's rules on real CP-SAT solves: redundancy, spot, churn, budget, relocation, packing, infeasible inputs."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from pipeline.common.config import REPO_ROOT, CostModel, Settings
from pipeline.common.schemas import RESOURCE_TYPES, region_series_id
from pipeline.plan.allocate import Offer
from pipeline.plan.core import PlanningProblem, RegionMix, failover_needs, solve_plan
from pipeline.plan.explain import explain_region, held
from pipeline.plan.inputs import previous_counts, previous_plan
from pipeline.plan.packing import (
    capacity_matrix,
    dot_product_pack,
    ffd_plan,
    first_fit_decreasing,
    pack,
    plan_cost,
    repair,
    session_groups,
    shard,
    solve_bin_packing,
)
from pipeline.plan.policy import PlannerConfig, Quota, config_from_dict, load_planner_config
from pipeline.plan.quantile import region_demand_quantiles, tau_by_resource
from tests import plan_store

W0 = pd.Timestamp("2026-01-29T00:00Z")
W1 = pd.Timestamp("2026-01-29T01:00Z")
C_UNDER = dict(CostModel().c_under)
C_OVER = dict(CostModel().c_over)
BIG_POOL = {"vcpu": 1e4, "memory_gib": 1e5, "storage_gib": 1e6, "bandwidth_gbps": 1e4}


def offers(region_multiplier: float = 1.0, spot_rate: float = 0.005, risky_rate: float = 0.05) -> list[Offer]:
    """A small AWS-like catalog: general, compute, memory types; one type's spot is too risky."""
    out = []
    for itype, vcpu, mem, price, rate in (
        ("m6i.xlarge", 4, 16, 0.192, spot_rate),
        ("c6i.2xlarge", 8, 16, 0.340, spot_rate),
        ("r6i.2xlarge", 8, 64, 0.504, risky_rate),
        ("m6i.4xlarge", 16, 64, 0.768, spot_rate),
    ):
        cap = {"vcpu": float(vcpu), "memory_gib": float(mem), "storage_gib": 16.0 * vcpu, "bandwidth_gbps": 12.5}
        od = round(price * region_multiplier, 4)
        out.append(Offer(itype, "on_demand", od, cap))
        out.append(Offer(itype, "spot", round(od * 0.4, 4), cap, rate))
    return out


def mix(critical: float, low: float = 0.1) -> RegionMix:
    return RegionMix(class_share={"critical": dict.fromkeys(RESOURCE_TYPES, critical / 2),
                                  "high": dict.fromkeys(RESOURCE_TYPES, critical / 2),
                                  "normal": dict.fromkeys(RESOURCE_TYPES, 1 - critical - low),
                                  "low": dict.fromkeys(RESOURCE_TYPES, low)})


def problem(demand: dict, regions: list[str], windows=(W0,), pools=None, catalog=None, **kw) -> PlanningProblem:
    return PlanningProblem(
        windows=list(windows), regions=regions,
        demand={(w, r): dict(demand[r]) for w in windows for r in regions},
        offers={r: (catalog or {}).get(r, offers()) for r in regions},
        pools={r: dict((pools or {}).get(r, BIG_POOL)) for r in regions},
        mix={r: mix(0.2) for r in regions}, c_under=C_UNDER, c_over=C_OVER, **kw,
    )


def vec(vcpu: float, mem: float, storage: float = 0.0, bw: float = 0.0) -> dict[str, float]:
    return {"vcpu": vcpu, "memory_gib": mem, "storage_gib": storage, "bandwidth_gbps": bw}


def spot_vcpu(cell) -> float:
    by_key = {o.key: o for o in cell.offers}
    return sum(by_key[k].capacity["vcpu"] * n for k, n in cell.counts.items() if k[1] == "spot")


# --------------------------------------------------------------------------------------------
# policy
# --------------------------------------------------------------------------------------------

SAMPLE_REGIONS = ["ap-northeast-1", "ap-southeast-1", "eu-central-1", "eu-west-1", "us-east-1", "us-west-2"]


def test_default_partners_are_the_nearest_region_on_the_same_continent() -> None:
    partners = {r: p for r, (p, _) in PlannerConfig().partners_for(SAMPLE_REGIONS).items()}
    assert partners == {"us-east-1": "us-west-2", "us-west-2": "us-east-1", "eu-west-1": "eu-central-1",
                        "eu-central-1": "eu-west-1", "ap-southeast-1": "ap-northeast-1", "ap-northeast-1": "ap-southeast-1"}
    lone = PlannerConfig().partner_of("sa-east-1", ["sa-east-1", "us-east-1", "eu-west-1"])
    assert lone[0] == "us-east-1" and "none on the same continent" in lone[1]
    assert PlannerConfig().partner_of("zz-nowhere-1", ["zz-nowhere-1", "us-east-1"])[0] is None
    configured = PlannerConfig(partners={"us-east-1": "eu-west-1"})
    assert configured.partner_of("us-east-1", SAMPLE_REGIONS) == ("eu-west-1", "configured in planner.json")
    assert 10 < PlannerConfig().latency("eu-west-1", "eu-central-1") < PlannerConfig().latency("eu-west-1", "us-east-1")


def test_planner_json_overlays_the_defaults_and_rejects_mistakes(tmp_path: Path) -> None:
    config = config_from_dict({"max_spot_share": 0.2, "partners": {"us-east-1": "eu-west-1"},
                               "quotas": {"us-east-1": {"on_demand_vcpu": 512, "instances": {"m6i.4xlarge": 4}}},
                               "priority_weights": {"low": 2}, "budget_usd_per_hour": 100})
    assert config.max_spot_share == 0.2 and config.quotas["us-east-1"] == Quota(512.0, None, {"m6i.4xlarge": 4})
    assert config.priority_weights["low"] == 2.0 and config.priority_weights["critical"] == 1000.0
    with pytest.raises(ValueError, match="unknown keys \\['max_spot'\\]"):
        config_from_dict({"max_spot": 0.2})
    with pytest.raises(ValueError, match="max_spot_share must be in \\[0, 1\\]"):
        config_from_dict({"max_spot_share": 1.5})
    with pytest.raises(ValueError, match="not a region code"):
        config_from_dict({"partners": {"Mars": "us-east-1"}})
    (tmp_path / "inventory").mkdir()
    assert load_planner_config(str(tmp_path))[1]["source"] == "defaults"
    (tmp_path / "inventory" / "planner.json").write_text('{"failover_share": 0.5}')
    loaded, source = load_planner_config(str(tmp_path))
    assert loaded.failover_share == 0.5 and source["fingerprint"].startswith("sha256:")
    (tmp_path / "inventory" / "planner.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"planner\.json is not valid JSON"):
        load_planner_config(str(tmp_path))


def test_the_documented_planner_json_example_is_valid() -> None:
    readme = (REPO_ROOT / "data_samples" / "inventory" / "README.md").read_text()
    block = re.search(r"```json\n(.*?)```", readme, re.S)
    assert block, "the inventory README documents planner.json with a JSON example"
    config = config_from_dict(json.loads(block.group(1)))
    assert config.partners and config.quotas


def test_tau_overrides_replace_the_cost_tau_per_region_and_resource() -> None:
    rows = []
    for region in ("eu-west-1", "us-east-1"):
        for resource in RESOURCE_TYPES:
            rows.append({"series_id": region_series_id(region, resource), "ds": W0, "model": "m", "mean": 0,
                         "q50": 100.0, "q80": 110.0, "q90": 120.0, "q95": 130.0, "q99": 140.0})
    frame = pd.DataFrame(rows)
    taus = tau_by_resource(CostModel())
    out = region_demand_quantiles(frame, taus, [W0], overrides={"eu-west-1": {"vcpu": 0.95}})
    got = out.set_index(["region", "resource_type"])
    assert got.loc[("eu-west-1", "vcpu"), "demand"] == pytest.approx(130.0)
    assert got.loc[("eu-west-1", "vcpu"), "tau"] == 0.95
    assert got.loc[("us-east-1", "vcpu"), "tau"] == taus["vcpu"]
    assert got.loc[("eu-west-1", "memory_gib"), "tau"] == taus["memory_gib"]
    with pytest.raises(ValueError, match="strictly between 0 and 1"):
        region_demand_quantiles(frame, taus, [W0], overrides={"eu-west-1": {"vcpu": 1.0}})
    with pytest.raises(ValueError, match="unknown resource type"):
        region_demand_quantiles(frame, taus, [W0], overrides={"eu-west-1": {"gpu": 0.9}})


# --------------------------------------------------------------------------------------------
# redundancy and spot, verified on produced plans
# --------------------------------------------------------------------------------------------


def test_failover_headroom_follows_the_n_plus_1_rule_on_the_produced_plan() -> None:
    regions = ["eu-central-1", "eu-west-1", "eu-west-2"]  # London is the nearest region to both Dublin and Frankfurt
    demand = {"eu-central-1": vec(40, 160), "eu-west-1": vec(100, 400), "eu-west-2": vec(60, 240)}
    p = problem(demand, regions, windows=(W0, W1))
    p.mix["eu-west-1"] = mix(0.3)
    config = PlannerConfig(packing_check=False)
    result = solve_plan(p, config)
    partners = {r: q for r, (q, _) in result.partners.items()}
    assert partners == {"eu-central-1": "eu-west-2", "eu-west-1": "eu-west-2", "eu-west-2": "eu-west-1"}
    for (_, region), cell in result.cells.items():
        # headroom = max over the regions that fail over here of share × critical × their demand
        expected = {r: max([config.failover_share * p.mix[src].share(config.critical_priorities)[r] * demand[src][r]
                            for src, dst in partners.items() if dst == region] or [0.0]) for r in RESOURCE_TYPES}
        for r in RESOURCE_TYPES:
            assert cell.failover.get(r, 0.0) == pytest.approx(expected[r])
        have = held(cell)  # spot counted at its risk-discounted capacity
        for r in RESOURCE_TYPES:
            assert have[r] >= demand[region][r] + cell.failover.get(r, 0.0) - 1e-6, (region, r)
    # N+1, one failure at a time: London keeps the larger of Frankfurt's (0.2 × 40) and Dublin's (0.3 × 100) needs.
    assert result.cells[(W0, "eu-west-2")].failover["vcpu"] == pytest.approx(30.0)
    assert result.cells[(W0, "eu-west-1")].failover["vcpu"] == pytest.approx(0.2 * 60)
    assert result.cells[(W0, "eu-central-1")].failover == {}
    assert result.shortfalls == []


def test_headroom_that_the_pool_cannot_hold_is_named_after_own_demand_is_covered() -> None:
    regions = ["us-east-1", "us-west-2"]
    demand = {"us-east-1": vec(100, 200), "us-west-2": vec(60, 120)}
    tight = {"vcpu": 70.0, "memory_gib": 1e4, "storage_gib": 1e6, "bandwidth_gbps": 1e4}
    result = solve_plan(problem(demand, regions, pools={"us-west-2": tight}), PlannerConfig(packing_check=False))
    west = result.cells[(W0, "us-west-2")]
    assert held(west, effective=False)["vcpu"] <= 70.0
    assert held(west)["vcpu"] >= 60.0  # own demand first
    kinds = {(s["region"], s["resource_type"], s["kind"]) for s in result.shortfalls}
    assert ("us-west-2", "vcpu", "failover") in kinds
    assert not any(s["region"] == "us-east-1" for s in result.shortfalls)


def test_spot_share_safety_limit_and_risk_discount_hold_on_the_produced_plan() -> None:
    regions = ["us-east-1", "us-west-2"]
    demand = {"us-east-1": vec(200, 900), "us-west-2": vec(90, 300)}
    config = PlannerConfig(max_spot_share=0.3, max_spot_share_by_region={"us-west-2": 0.0}, packing_check=False)
    result = solve_plan(problem(demand, regions), config)
    east, west = result.cells[(W0, "us-east-1")], result.cells[(W0, "us-west-2")]
    raw = held(east, effective=False)
    assert 0 < spot_vcpu(east) <= 0.3 * raw["vcpu"] + 1e-9
    assert spot_vcpu(west) == 0
    assert ("r6i.2xlarge", "spot") not in east.counts  # 5 %/h interruption > the 2 %/h limit
    assert east.unsafe_spot == {"r6i.2xlarge": 0.05}
    assert held(east)["vcpu"] < raw["vcpu"]  # spot counts at (1 − risk)
    assert held(east)["vcpu"] >= demand["us-east-1"]["vcpu"] + east.failover["vcpu"] - 1e-6


# --------------------------------------------------------------------------------------------
# churn against the previous plan
# --------------------------------------------------------------------------------------------


def churn_catalog(b_price: float = 0.29) -> dict[str, list[Offer]]:
    cap = lambda v: {"vcpu": float(v), "memory_gib": 0.0, "storage_gib": 0.0, "bandwidth_gbps": 0.0}  # noqa: E731
    return {"us-east-1": [Offer("a.large", "on_demand", 0.20, cap(4)), Offer("b.large", "on_demand", b_price, cap(6))]}


def churn_plan(vcpu: float, previous, b_price: float = 0.29):
    p = problem({"us-east-1": vec(vcpu, 0)}, ["us-east-1"], catalog=churn_catalog(b_price), previous=previous, previous_plan_id="plan-prev")
    p.mix = {}
    return solve_plan(p, PlannerConfig(failover_share=0.0, packing_check=False, churn_penalty=0.25)).cells[(W0, "us-east-1")]


def test_small_forecast_change_keeps_lines_and_a_big_saving_changes_them() -> None:
    first = churn_plan(24.0, None)
    assert first.counts == {("b.large", "on_demand"): 4}  # 4 × 6 vCPU for $1.16 beats 6 × 4 for $1.20
    previous = {(W0, "us-east-1"): dict(first.counts)}
    # Demand drops to 20 vCPU: fresh, 2 a + 2 b ($0.98) beats 4 b ($1.16), but the $0.18/h saving
    # does not pay for changing 4 instances (25 % of their prices: $0.245).
    assert churn_plan(20.0, None).counts == {("a.large", "on_demand"): 2, ("b.large", "on_demand"): 2}
    small = churn_plan(20.0, previous)
    assert small.counts == first.counts
    # Demand halves: dropping two b saves $0.58/h, far beyond the $0.145 churn penalty.
    big = churn_plan(12.0, previous)
    assert big.counts == {("b.large", "on_demand"): 2}
    # A big price change on the same demand also moves the plan.
    assert churn_plan(24.0, previous, b_price=0.60).counts == {("a.large", "on_demand"): 6}


def _write_plan(lake: Path, plan_id: str, created: str, status: str, count: int) -> None:
    rows = pa.table({"valid_from": pa.array([pd.Timestamp(created)], pa.timestamp("us", tz="UTC")), "region": ["us-east-1"],
                     "instance_type": ["m6i.large"], "purchase_option": ["on_demand"], "count": [count]})
    plan_store.write_plan(lake, plan_id, rows, {"plan_id": plan_id, "created_at": created, "status": status,
                                                "valid_from": created}, latest=False)


def test_previous_plan_is_the_newest_published_before_the_interval(tmp_path: Path) -> None:
    lake = tmp_path / "lake"
    _write_plan(lake, "plan-20260129T0000Z", "2026-01-29T00:00:00+00:00", "published", 3)
    _write_plan(lake, "plan-20260129T0100Z", "2026-01-29T01:00:00+00:00", "planned", 4)  # never published
    _write_plan(lake, "plan-20260129T0200Z", "2026-01-29T02:00:00+00:00", "published", 5)
    (lake / "plans" / "LATEST").write_text("plan_id=plan-20260129T0200Z/attempt=1\n")
    settings = Settings(lake_root=str(lake))
    assert previous_plan(settings, pd.Timestamp("2026-01-29T00:00Z")) is None  # a plan is never its own predecessor
    assert previous_plan(settings, pd.Timestamp("2026-01-29T02:00Z"))[0] == "plan-20260129T0000Z"
    found = previous_plan(settings, pd.Timestamp("2026-01-29T03:00Z"))
    assert found[0] == "plan-20260129T0200Z"
    later = pd.Timestamp("2026-01-29T04:00Z")
    counts = previous_counts(found[1], [pd.Timestamp("2026-01-29T02:00Z"), later], ["us-east-1"])
    assert counts[(later, "us-east-1")] == {("m6i.large", "on_demand"): 5}  # beyond its windows: its last window


# --------------------------------------------------------------------------------------------
# budget cap (knapsack by priority) and relocation
# --------------------------------------------------------------------------------------------


def test_budget_cap_covers_critical_demand_first_and_names_what_is_left_to_on_demand() -> None:
    regions = ["eu-west-1", "us-east-1"]
    demand = {"eu-west-1": vec(64, 256), "us-east-1": vec(64, 256)}
    base = problem(demand, regions)
    for r in regions:
        base.mix[r] = mix(0.25, low=0.25)
    config = PlannerConfig(failover_share=0.0, packing_check=False)
    free = solve_plan(base, config)
    budget = round(free.cost * 0.6, 2)
    capped = solve_plan(base, PlannerConfig(failover_share=0.0, packing_check=False, budget_usd_per_hour=budget))
    assert capped.cost <= budget + 1e-9 < free.cost
    assert capped.windows[W0].mode == "joint (budget)" and capped.windows[W0].budget_binding
    left = capped.left_to_on_demand
    assert left and {x["priority"] for x in left} <= {"low", "normal"}  # critical and high are pre-allocated first
    left_vcpu = sum(x["quantity"] for x in left if x["resource_type"] == "vcpu")
    covered = sum(held(c)["vcpu"] for c in capped.cells.values())
    assert covered + left_vcpu >= 128 - 1e-6
    assert not [s for s in capped.shortfalls if s["kind"] != "pool"]
    # A budget that is not binding changes nothing.
    loose = solve_plan(base, PlannerConfig(failover_share=0.0, packing_check=False, budget_usd_per_hour=free.cost * 2))
    assert {c: x.counts for c, x in loose.cells.items()} == {c: x.counts for c, x in free.cells.items()}


def test_relocation_moves_flexible_demand_to_a_cheaper_region_within_the_latency_limit() -> None:
    regions = ["eu-central-1", "eu-west-1", "us-east-1"]
    demand = {"eu-central-1": vec(32, 128), "eu-west-1": vec(64, 256), "us-east-1": vec(32, 128)}
    catalog = {"eu-central-1": offers(0.5), "eu-west-1": offers(1.5), "us-east-1": offers(0.3)}
    p = problem(demand, regions, catalog=catalog)
    for r in regions:
        p.mix[r] = mix(0.1, low=0.5)
    still = solve_plan(p, PlannerConfig(failover_share=0.0, packing_check=False))
    moved = solve_plan(p, PlannerConfig(failover_share=0.0, packing_check=False, relocation_enabled=True, relocation_max_latency_ms=40))
    assert moved.cost < still.cost
    assert moved.relocations and all(m["from"] == "eu-west-1" and m["to"] == "eu-central-1" for m in moved.relocations)
    west, frankfurt = moved.cells[(W0, "eu-west-1")], moved.cells[(W0, "eu-central-1")]
    out = west.result.relocated["vcpu"]
    assert -32.0 - 1e-6 <= out < 0  # at most its 50 % flexible demand, in 5 % steps
    assert frankfurt.result.relocated["vcpu"] == pytest.approx(-out)
    assert held(west)["vcpu"] >= 64 + out - 1e-6 and held(frankfurt)["vcpu"] >= 32 - out - 1e-6
    assert moved.cells[(W0, "us-east-1")].result.relocated == {}  # cheapest, but ~80 ms away


# --------------------------------------------------------------------------------------------
# infeasible and contradictory inputs: a plan and a named shortfall, never a bare exception
# --------------------------------------------------------------------------------------------


def test_demand_beyond_every_pool_and_contradictory_rules_give_named_shortfalls() -> None:
    regions = ["ap-northeast-1", "ap-southeast-1", "eu-west-1"]
    demand = {"ap-northeast-1": vec(500, 1000, 9000, 80), "ap-southeast-1": vec(40, 80), "eu-west-1": vec(40, 80)}
    pools = {"ap-northeast-1": {"vcpu": 100.0, "memory_gib": 400.0, "storage_gib": 2000.0, "bandwidth_gbps": 20.0}}
    catalog = {"ap-southeast-1": [], "eu-west-1": offers()}
    config = PlannerConfig(failover_share=0.0, quotas={"eu-west-1": Quota(on_demand_vcpu=0, spot_vcpu=0)})
    result = solve_plan(problem(demand, regions, pools=pools, catalog=catalog), config)
    tokyo = result.cells[(W0, "ap-northeast-1")]
    assert held(tokyo, effective=False)["vcpu"] <= 100.0 and held(tokyo, effective=False)["vcpu"] >= 90.0
    named = {(s["region"], s["resource_type"]): s for s in result.shortfalls}
    assert named[("ap-northeast-1", "vcpu")]["shortfall"] >= 400 - 1e-6
    # 7000 GiB above the storage pool, plus what the vCPU-capped instances cannot bring of the rest
    assert named[("ap-northeast-1", "storage_gib")]["shortfall"] >= 7000.0
    assert named[("ap-northeast-1", "bandwidth_gbps")]["kind"] == "pool"
    assert named[("ap-southeast-1", "vcpu")]["kind"] == "no_offers"
    assert named[("eu-west-1", "vcpu")]["shortfall"] == pytest.approx(40.0)  # quotas of zero: nothing can be bought
    assert result.cells[(W0, "eu-west-1")].counts == {}
    assert all(s["why"] for s in result.shortfalls)


# --------------------------------------------------------------------------------------------
# packing check
# --------------------------------------------------------------------------------------------


def test_dot_product_packing_places_sessions_within_every_bin() -> None:
    rng = np.random.default_rng(3)
    sessions = np.column_stack([rng.choice([1, 2, 4, 8], 40), rng.choice([2, 8, 16, 32], 40), rng.uniform(0.1, 1.0, 40)])
    bins = np.array([[16, 64, 12.5]] * 6 + [[8, 32, 12.5]] * 4, float)
    assignment = dot_product_pack(sessions, bins)
    residual = bins - np.array([sessions[assignment == b].sum(axis=0) for b in range(len(bins))])
    assert (residual >= -1e-9).all()
    assert (assignment >= 0).sum() >= 25
    # maximal: no session left out fits the free space of any bin
    for s in sessions[assignment < 0]:
        assert not (residual >= s - 1e-9).all(axis=1).any()


def test_large_sessions_drive_the_instance_choice_and_the_plan_hosts_them() -> None:
    """Eight 16-vCPU/64-GiB sessions: the cheapest aggregate cover (c6i) cannot host them; the hosting
    constraints make CP-SAT buy types that can, and the packing check places every session."""
    sessions = np.array([[16.0, 64.0, 1.0]] * 8 + [[2.0, 4.0, 0.2]] * 8)
    demand = vec(*sessions[:, :2].sum(axis=0), 0.0, float(sessions[:, 2].sum()))
    p = problem({"us-east-1": demand}, ["us-east-1"], sessions={(W0, "us-east-1"): sessions})
    config = PlannerConfig(failover_share=0.0, max_spot_share=0.0, max_session_vcpu=None)  # sessions indivisible
    cell = solve_plan(p, config).cells[(W0, "us-east-1")]
    assert cell.groups and cell.groups[0].hosts == frozenset({"m6i.4xlarge"})
    assert cell.counts.get(("m6i.4xlarge", "on_demand"), 0) >= 8
    assert cell.packing["placed"] == cell.packing["sessions"] == 16 and not cell.repair_added
    assert 0.0 <= cell.packing["fragmentation"]["vcpu"] <= 1.0
    # Without the hosting groups the aggregate optimum cannot host them, and the check says so.
    cheap = {("c6i.2xlarge", "on_demand"): 17}
    check = pack(sessions, cheap, p.offers["us-east-1"])
    assert check.placed == 8 and len(check.unplaced) == 8 and check.method == "dot_product+cp_sat"
    added, left = repair(check.unplaced, cheap, p.offers["us-east-1"], BIG_POOL)
    assert added == {("m6i.4xlarge", "on_demand"): 8} and len(left) == 0


def test_sessions_larger_than_every_type_are_split_and_groups_are_hall_conditions() -> None:
    caps = np.array([[16, 64, 12.5], [8, 32, 12.5]], float)
    out = shard(np.array([[64.0, 256.0, 2.0], [4.0, 8.0, 0.5]]), caps)
    assert len(out) == 5 and np.allclose(out[:4], [16, 64, 0.5])
    workers = shard(np.array([[64.0, 256.0, 2.0], [4.0, 8.0, 0.5]]), caps, max_vcpu=8)
    assert len(workers) == 9 and np.allclose(workers[:8], [8, 32, 0.25])  # a 64-vCPU session runs as 8 workers
    groups = session_groups(np.array([[16.0, 64.0, 1.0], [8.0, 16.0, 1.0]]), offers())
    assert [sorted(g.hosts) for g in groups] == [["m6i.4xlarge"], ["c6i.2xlarge", "m6i.4xlarge", "r6i.2xlarge"],
                                                 ["c6i.2xlarge", "m6i.4xlarge", "m6i.xlarge", "r6i.2xlarge"]]
    assert groups[1].required["vcpu"] == 24.0  # sessions that only a subset can host include the stricter group's
    # usable capacity: no session needs more than 4 GiB per vCPU, so an r6i.2xlarge (8 vCPU, 64 GiB) offers them 32 GiB
    assert groups[1].usable["r6i.2xlarge"]["memory_gib"] == 32.0 and groups[1].usable["m6i.4xlarge"]["memory_gib"] == 64.0


def test_plan_costs_no_more_than_first_fit_decreasing() -> None:
    rng = np.random.default_rng(11)
    regions = ["us-east-1", "us-west-2"]
    sessions, demand = {}, {}
    for r in regions:
        s = np.column_stack([rng.choice([1, 2, 4, 8, 16], 30), np.zeros(30), np.zeros(30), rng.uniform(0.1, 2, 30)])
        s[:, 1] = s[:, 0] * rng.choice([2, 4, 8], 30)
        sessions[(W0, r)] = s[:, [0, 1, 3]]
        demand[r] = dict(zip(RESOURCE_TYPES, s.sum(axis=0)))
    p = problem(demand, regions, sessions=sessions)
    config = PlannerConfig()
    result = solve_plan(p, config)
    fail, _ = failover_needs(p, config, result.partners)
    for (w, r), cell in result.cells.items():
        workers = shard(sessions[(w, r)], capacity_matrix(cell.offers)[1], config.max_session_vcpu)  # what the planner packs
        baseline = ffd_plan(workers, cell.offers, BIG_POOL, demand[r], fail.get((w, r), {}), 0.3)
        assert cell.cost <= plan_cost(baseline, cell.offers) + 1e-9
        assert cell.packing["placed"] == cell.packing["sessions"]


def test_triplet_bin_packing_is_solved_to_proven_optimality() -> None:
    rng = np.random.default_rng(5)
    items = []
    for _ in range(40):
        a = int(rng.integers(380, 491))
        b = int(rng.integers(250, (1000 - a) // 2 + 1))
        items += [a, b, 1000 - a - b]
    assert len(first_fit_decreasing(items, 1000)) > 40  # FFD misses the optimum on triplets
    result = solve_bin_packing(items, 1000, time_limit_s=30.0, workers=1)
    assert result.proven_optimal and result.bins == 40 and result.status == "OPTIMAL"
    easy = solve_bin_packing([600, 500, 400, 300, 200], 1000)
    assert easy.bins == 2 and easy.proven_optimal


# --------------------------------------------------------------------------------------------
# determinism and explanations
# --------------------------------------------------------------------------------------------


def test_plans_are_identical_across_runs_and_process_counts() -> None:
    regions = ["eu-central-1", "eu-west-1", "us-east-1", "us-west-2"]
    rng = np.random.default_rng(2)
    demand = {r: vec(float(rng.uniform(20, 200)), float(rng.uniform(80, 800)), 500.0, 5.0) for r in regions}
    p = problem(demand, regions, windows=(W0, W1))
    rng2 = np.random.default_rng(4)
    for r in regions:
        p.mix[r].samples = np.column_stack([rng2.choice([1, 2, 4, 8], 200), rng2.choice([4, 8, 16, 32], 200),
                                            rng2.uniform(0, 50, 200), rng2.uniform(0.1, 1, 200)])
        p.mix[r].weights = rng2.uniform(60, 3600, 200)
    one = solve_plan(p, PlannerConfig(), workers=1)
    again = solve_plan(p, PlannerConfig(), workers=1)
    forked = solve_plan(p, PlannerConfig(), workers=2)
    counts = {c: x.counts for c, x in one.cells.items()}
    assert counts == {c: x.counts for c, x in again.cells.items()} == {c: x.counts for c, x in forked.cells.items()}
    assert one.objective == again.objective == forked.objective
    assert all(x.packing["sessions"] > 0 for x in one.cells.values())


def test_published_plan_rows_satisfy_redundancy_spot_and_explain(published_root: Path) -> None:
    """On the end-to-end plan: counted capacity covers demand + headroom, spot stays in its share,
    and `explain_region` prints the region's rule and every reason."""
    from pipeline.plan import latest_plan_id, read_plan
    from tests.conftest import settings_for

    settings = settings_for(published_root)
    plan, manifest = read_plan(settings, latest_plan_id(settings))
    short = {(s["window"], s["region"], s["resource_type"]) for s in manifest["shortfall"]}
    cells = plan.groupby(["valid_from", "region", "resource_type"]).agg(
        eff=("effective_quantity", "sum"), need=("demand_quantile", "first"), headroom=("failover_quantity", "first"))
    for (w, region, resource), row in cells.iterrows():
        if resource in ("vcpu", "memory_gib") and (pd.Timestamp(w).isoformat(), region, resource) not in short:
            assert row.eff >= row.need + row.headroom - 1e-6, (w, region, resource)
    assert (cells["headroom"] > 0).any()
    vcpu = plan[plan["resource_type"] == "vcpu"]
    for _, group in vcpu.groupby(["valid_from", "region"]):
        spot = group[group["purchase_option"] == "spot"]["quantity"].sum()
        assert spot <= manifest["planner_config"]["max_spot_share"] * group["quantity"].sum() + 1e-6
    assert manifest["redundancy"]["eu-west-1"]["partner"] == "eu-central-1"
    assert manifest["gap"] <= 0.02 and manifest["lower_bound"] <= manifest["objective"]
    assert manifest["packing"] and all(p["unplaced"] == 0 for p in manifest["packing"])
    text = "\n".join(explain_region(plan, manifest, "eu-west-1"))
    assert "fails over to eu-central-1" in text and "q0.90 of vcpu demand" in text
    assert re.search(r"on-demand|spot at", text) and "N+1" in text
