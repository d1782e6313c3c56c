"""CP-SAT allocation (OR-Tools runs for real) against brute force, and the newsvendor quantile."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pandas as pd
import pytest

from pipeline.common.config import CostModel
from pipeline.common.schemas import RESOURCE_TYPES, pair_series_id, region_series_id
from pipeline.plan.allocate import Offer, allocate
from pipeline.plan.quantile import region_demand_quantiles, tau_by_resource

SPOT_SHARE = 0.3
PENALTY_PER_UNIT = 1000.0  # the module's SHORTFALL_PENALTY, USD per unit-hour uncovered


def offer(itype: str, option: str, price: float, **capacity: float) -> Offer:
    return Offer(itype, option, price, {r: float(capacity.get(r, 0.0)) for r in RESOURCE_TYPES})


def brute_force(demand: dict[str, float], offers: list[Offer], share: float, limits: list[int]) -> tuple[float, np.ndarray]:
    """Exhaustive minimum of cost + penalty·shortfall over counts 0..limits[i] (hundredths, like the model)."""
    need = np.array([math.ceil(demand.get(r, 0.0) * 100 - 1e-6) for r in RESOURCE_TYPES])
    cap = np.array([[round(o.capacity[r] * 100) for r in RESOURCE_TYPES] for o in offers])
    price = np.array([o.hourly_price for o in offers])
    spot = np.array([o.purchase_option == "spot" for o in offers])
    grid = np.array(list(itertools.product(*[range(n + 1) for n in limits])))
    held = grid @ cap
    shortfall = np.maximum(need - held, 0).sum(axis=1) / 100
    spot_vcpu = grid @ (cap[:, 0] * spot)
    ok = spot_vcpu * 100 <= round(share * 100) * held[:, 0]
    objective = np.where(ok, grid @ price + PENALTY_PER_UNIT * shortfall, np.inf)
    best = objective.min()
    return float(best), grid[np.isclose(objective, best, rtol=0, atol=1e-9)]


def exhaustive(demand: dict[str, float], offers: list[Offer], share: float = SPOT_SHARE) -> tuple[float, np.ndarray]:
    """Brute force over a box proven large enough: no optimum can buy more of offer i than
    (an incumbent's objective) / price_i."""
    incumbent, _ = brute_force(demand, offers, share, [8] * len(offers))
    limits = [int(incumbent / o.hourly_price + 1e-9) for o in offers]
    assert math.prod(n + 1 for n in limits) <= 2_000_000, "test case too large for brute force"
    return brute_force(demand, offers, share, limits)


def held_by(alloc, offers: list[Offer]) -> dict[str, float]:
    by_key = {(o.instance_type, o.purchase_option): o for o in offers}
    return {r: sum(by_key[k].capacity[r] * n for k, n in alloc.counts.items()) for r in RESOURCE_TYPES}


def spot_vcpu(alloc, offers: list[Offer]) -> float:
    by_key = {(o.instance_type, o.purchase_option): o for o in offers}
    return sum(by_key[k].capacity["vcpu"] * n for k, n in alloc.counts.items() if k[1] == "spot")


def random_case(rng: np.random.Generator) -> tuple[dict[str, float], list[Offer]]:
    active = [str(r) for r in rng.choice(RESOURCE_TYPES, size=int(rng.integers(1, 3)), replace=False)]
    n_types = int(rng.integers(1, 3))
    offers: list[Offer] = []
    for t in range(n_types):
        capacity = {r: float(rng.integers(0, 5)) if r in active else float(rng.integers(0, 3)) for r in RESOURCE_TYPES}
        capacity["vcpu"] = float(rng.integers(1, 9))
        od = round(float(rng.uniform(0.25, 2.0)), 4)
        offers.append(Offer(f"t{t}.large", "on_demand", od, capacity))
        offers.append(Offer(f"t{t}.large", "spot", round(od * float(rng.uniform(0.25, 0.6)), 4), capacity))
    if len(offers) == 4:  # 2-3 offers: drop one at random
        offers.pop(int(rng.integers(4)))
    # every demanded resource is coverable on demand, so the incumbent is finite
    for r in active:
        if not any(o.capacity[r] > 0 and o.purchase_option == "on_demand" for o in offers):
            o = next(o for o in offers if o.purchase_option == "on_demand") if any(
                o.purchase_option == "on_demand" for o in offers) else None
            if o is None:
                offers.append(offer("cover.large", "on_demand", 1.5, vcpu=2, **{r: 3}))
            else:
                o.capacity[r] = 2.0
    demand = {r: round(float(rng.uniform(0.5, 6.0)), 2) for r in active}
    return demand, offers


def spot_room_case(rng: np.random.Generator) -> tuple[dict[str, float], list[Offer]]:
    """A cheap vCPU-only on-demand type next to a memory-rich type sold on demand and as spot:
    optima may buy on-demand vCPU beyond the vCPU demand just to stay within the spot share."""
    small = offer("s.cpu", "on_demand", round(float(rng.uniform(0.01, 0.08)), 4), vcpu=float(rng.integers(1, 3)))
    cap = {"vcpu": float(rng.integers(1, 3)), "memory_gib": float(rng.integers(8, 33))}
    od = round(float(rng.uniform(0.8, 2.0)), 4)
    big_spot = offer("r.mem", "spot", round(od * float(rng.uniform(0.3, 0.5)), 4), **cap)
    big_od = offer("r.mem", "on_demand", od, **cap)
    demand = {"vcpu": round(float(rng.uniform(0.5, 2.0)), 2), "memory_gib": round(float(rng.uniform(10, 70)), 2)}
    return demand, [small, big_spot, big_od]


CASES = [random_case(np.random.default_rng(1000 + i)) for i in range(30)] + [
    spot_room_case(np.random.default_rng(2000 + i)) for i in range(10)
]


@pytest.mark.parametrize("case", range(len(CASES)))
def test_cp_sat_matches_brute_force(case: int) -> None:
    demand, offers = CASES[case]
    alloc = allocate(demand, offers, {}, SPOT_SHARE)
    best, argmins = exhaustive(demand, offers)
    assert alloc.status == "OPTIMAL"
    assert alloc.objective == pytest.approx(best, abs=1e-6), (demand, offers, alloc)
    assert alloc.lower_bound == pytest.approx(alloc.objective, abs=1e-6)
    chosen = np.array([alloc.counts.get((o.instance_type, o.purchase_option), 0) for o in offers])
    assert any((chosen == row).all() for row in argmins), (chosen, argmins)
    assert alloc.cost == pytest.approx(sum(o.hourly_price * n for o, n in zip(offers, chosen)))
    assert all(n > 0 for n in alloc.counts.values())
    # every random case is coverable: the optimum covers all demand, within the spot share
    assert alloc.shortfall == {}
    held = held_by(alloc, offers)
    assert all(held[r] >= demand.get(r, 0.0) - 1e-9 for r in RESOURCE_TYPES)
    assert spot_vcpu(alloc, offers) <= SPOT_SHARE * held["vcpu"] + 1e-9


def test_cases_exercise_spot() -> None:
    """Guard the generator: spot is used in some optima, so the share constraint is tested."""
    used = sum(any(k[1] == "spot" for k in allocate(d, o, {}, SPOT_SHARE).counts) for d, o in CASES)
    assert used >= 3


def test_cheap_on_demand_vcpu_can_make_room_for_spot() -> None:
    """Buying cheap on-demand vCPU beyond the demand can pay for itself by allowing spot."""
    offers = [
        offer("a.small", "on_demand", 0.01, vcpu=1),
        offer("b.big", "spot", 1.0, vcpu=1, memory_gib=100),
        offer("b.big", "on_demand", 2.0, vcpu=1, memory_gib=100),
    ]
    demand = {"vcpu": 1.0, "memory_gib": 100.0}
    alloc = allocate(demand, offers, {}, SPOT_SHARE)
    best, _ = exhaustive(demand, offers)
    assert best == pytest.approx(1.03)  # 1 spot b.big + 3 a.small (1 ≤ 0.3 · 4 vCPU)
    assert alloc.counts == {("a.small", "on_demand"): 3, ("b.big", "spot"): 1}
    assert alloc.cost == pytest.approx(1.03) and alloc.status == "OPTIMAL"


def test_spot_share_is_respected_when_spot_is_much_cheaper() -> None:
    offers = [offer("c.one", "on_demand", 1.0, vcpu=1, memory_gib=2), offer("c.one", "spot", 0.1, vcpu=1, memory_gib=2)]
    alloc = allocate({"vcpu": 10.0}, offers, {}, SPOT_SHARE)
    assert alloc.counts == {("c.one", "on_demand"): 7, ("c.one", "spot"): 3}
    assert alloc.cost == pytest.approx(7.3)
    no_spot = allocate({"vcpu": 10.0}, offers, {}, 0.0)
    assert no_spot.counts == {("c.one", "on_demand"): 10}


def test_vcpu_beyond_the_pool_is_a_shortfall_of_what_does_not_fit() -> None:
    offers = [
        offer("m.four", "on_demand", 0.20, vcpu=4, memory_gib=16),
        offer("m.three", "on_demand", 0.18, vcpu=3, memory_gib=12),
    ]
    pool = {"vcpu": 10.0, "memory_gib": 1000.0, "storage_gib": 1e6, "bandwidth_gbps": 1e6}
    demand = {"vcpu": 20.0, "memory_gib": 8.0}
    alloc = allocate(demand, offers, pool, SPOT_SHARE)
    # the most vCPU that fits under 10 with 4- and 3-vCPU instances is 4 + 3 + 3 = 10
    fits = max(4 * a + 3 * b for a in range(4) for b in range(5) if 4 * a + 3 * b <= pool["vcpu"])
    assert fits == 10
    assert alloc.shortfall == {"vcpu": pytest.approx(demand["vcpu"] - fits)}
    assert alloc.counts == {("m.four", "on_demand"): 1, ("m.three", "on_demand"): 2}
    assert held_by(alloc, offers)["vcpu"] <= pool["vcpu"]
    assert alloc.objective == pytest.approx(0.56 + PENALTY_PER_UNIT * 10)


def test_memory_pool_caps_instances_too() -> None:
    offers = [offer("r.big", "on_demand", 0.5, vcpu=2, memory_gib=16)]
    alloc = allocate({"vcpu": 2.0, "memory_gib": 40.0}, offers, {"vcpu": 100.0, "memory_gib": 32.0}, SPOT_SHARE)
    assert alloc.counts == {("r.big", "on_demand"): 2}
    assert alloc.shortfall == {"memory_gib": pytest.approx(8.0)}


def test_storage_and_bandwidth_beyond_their_pools_are_shortfalls_up_front() -> None:
    offers = [offer("i.disk", "on_demand", 0.3, vcpu=2, memory_gib=8, storage_gib=100, bandwidth_gbps=1)]
    pool = {"vcpu": 100.0, "memory_gib": 1000.0, "storage_gib": 200.0, "bandwidth_gbps": 4.0}
    alloc = allocate({"storage_gib": 500.0, "bandwidth_gbps": 10.0}, offers, pool, SPOT_SHARE)
    assert alloc.shortfall == {"storage_gib": pytest.approx(300.0), "bandwidth_gbps": pytest.approx(6.0)}
    # what the pools allow is still covered, and nothing beyond it is bought
    assert alloc.counts == {("i.disk", "on_demand"): 4}
    held = held_by(alloc, offers)
    assert held["storage_gib"] >= 200.0 and held["bandwidth_gbps"] >= 4.0
    # within the pools there is no shortfall
    within = allocate({"storage_gib": 150.0, "bandwidth_gbps": 1.5}, offers, pool, SPOT_SHARE)
    assert within.shortfall == {} and within.counts == {("i.disk", "on_demand"): 2}
    # a zero storage pool: all storage demand is short, and no instance is bought for it
    empty = allocate({"storage_gib": 50.0}, offers, {**pool, "storage_gib": 0.0}, SPOT_SHARE)
    assert empty.counts == {} and empty.cost == 0.0 and empty.shortfall == {"storage_gib": pytest.approx(50.0)}


def test_uncoverable_resource_does_not_raise() -> None:
    offers = [offer("c.cpu", "on_demand", 0.1, vcpu=2, memory_gib=4)]
    alloc = allocate({"vcpu": 3.0, "bandwidth_gbps": 2.5}, offers, {}, SPOT_SHARE)
    assert alloc.counts == {("c.cpu", "on_demand"): 2}
    assert alloc.shortfall == {"bandwidth_gbps": pytest.approx(2.5)}


@pytest.mark.parametrize("demand", [{}, dict.fromkeys(RESOURCE_TYPES, 0.0), {"vcpu": -3.0, "memory_gib": 0.0}])
def test_zero_demand_buys_nothing(demand: dict[str, float]) -> None:
    offers = [offer("m.four", "on_demand", 0.2, vcpu=4, memory_gib=16), offer("m.four", "spot", 0.06, vcpu=4, memory_gib=16)]
    alloc = allocate(demand, offers, {"vcpu": 100.0, "memory_gib": 400.0}, SPOT_SHARE)
    assert alloc.counts == {} and alloc.cost == 0.0 and alloc.objective == 0.0 and alloc.shortfall == {}


# --------------------------------------------------------------------------------------------
# The newsvendor quantile
# --------------------------------------------------------------------------------------------


def test_tau_by_resource_is_the_critical_ratio() -> None:
    default = CostModel()
    taus = tau_by_resource(default)
    assert set(taus) == set(RESOURCE_TYPES)
    for r in RESOURCE_TYPES:
        u, o = default.c_under[r], default.c_over[r]
        assert taus[r] == pytest.approx(u / (u + o), abs=1e-6)
        assert 0.5 < taus[r] < 1
    custom = CostModel(c_over={"vcpu": 1.0, "memory_gib": 3.0, "storage_gib": 1.0, "bandwidth_gbps": 2.0},
                       c_under={"vcpu": 3.0, "memory_gib": 1.0, "storage_gib": 1.0, "bandwidth_gbps": 8.0})
    assert tau_by_resource(custom) == {"vcpu": 0.75, "memory_gib": 0.25, "storage_gib": 0.5, "bandwidth_gbps": 0.8}


REGIONS = ("eu-west-1", "us-east-1")
DS = pd.date_range("2026-01-29 00:00", periods=4, freq="h", tz="UTC")


def forecast_frame() -> pd.DataFrame:
    """Region series whose quantile columns are q50=base, q80=base+10, ..., plus decoy pair rows."""
    rows = []
    for i, region in enumerate(REGIONS):
        for j, resource in enumerate(RESOURCE_TYPES):
            for k, ds in enumerate(DS):
                base = 100 * i + 10 * j + k
                rows.append({"series_id": region_series_id(region, resource), "ds": ds, "model": f"m{j}",
                             "mean": base, "q50": base, "q80": base + 10, "q90": base + 20, "q95": base + 30,
                             "q99": base + 40})
        rows.extend({"series_id": pair_series_id(region, REGIONS[1 - i]), "ds": ds, "model": "auto_ets",
                     "mean": 1e6, "q50": 1e6, "q80": 1e6, "q90": 1e6, "q95": 1e6, "q99": 1e6} for ds in DS)
    return pd.DataFrame(rows)


def test_region_demand_quantiles_uses_region_series_and_per_resource_tau() -> None:
    taus = {"vcpu": 0.85, "memory_gib": 0.5, "storage_gib": 0.99, "bandwidth_gbps": 0.6}
    offset = {"vcpu": 15.0, "memory_gib": 0.0, "storage_gib": 40.0, "bandwidth_gbps": 10.0 / 3}
    windows = [DS[1], DS[2]]
    out = region_demand_quantiles(forecast_frame(), taus, windows)
    assert set(out.columns) >= {"window", "region", "resource_type", "demand", "tau", "model"}
    assert len(out) == len(REGIONS) * len(RESOURCE_TYPES) * len(windows)
    assert set(out["region"]) == set(REGIONS)  # pair series are not regions
    assert out["demand"].max() < 1e6
    assert set(pd.to_datetime(out["window"], utc=True)) == set(windows)
    for row in out.itertuples(index=False):
        i, j = REGIONS.index(row.region), RESOURCE_TYPES.index(row.resource_type)
        k = list(DS).index(pd.Timestamp(row.window).tz_localize("UTC") if pd.Timestamp(row.window).tz is None
                           else pd.Timestamp(row.window))
        assert row.tau == taus[row.resource_type]
        assert row.demand == pytest.approx(100 * i + 10 * j + k + offset[row.resource_type])
        assert row.model == f"m{j}"


def test_region_demand_quantiles_default_taus_sit_between_q80_and_q90() -> None:
    out = region_demand_quantiles(forecast_frame(), tau_by_resource(CostModel()), [DS[0]])
    vcpu = out[(out["region"] == "eu-west-1") & (out["resource_type"] == "vcpu")]
    tau = tau_by_resource(CostModel())["vcpu"]
    assert vcpu["demand"].item() == pytest.approx(10 + 10 * (tau - 0.8) / 0.1)


def test_region_demand_quantiles_clips_negative_demand() -> None:
    frame = forecast_frame()
    frame.loc[frame["series_id"].str.startswith("region:"), ["q50", "q80", "q90", "q95", "q99"]] = -5.0
    out = region_demand_quantiles(frame, tau_by_resource(CostModel()), [DS[0]])
    assert (out["demand"] == 0.0).all()


def test_region_demand_quantiles_rejects_windows_outside_the_forecast() -> None:
    later = [DS[-1] + pd.Timedelta(hours=h) for h in (1, 2)]
    with pytest.raises(ValueError, match="no region demand rows for the plan windows"):
        region_demand_quantiles(forecast_frame(), tau_by_resource(CostModel()), later)
    pairs_only = forecast_frame()
    pairs_only = pairs_only[pairs_only["series_id"].str.startswith("pair:")]
    with pytest.raises(ValueError, match="no region demand rows"):
        region_demand_quantiles(pairs_only, tau_by_resource(CostModel()), [DS[0]])


def test_region_demand_quantiles_rejects_a_forecast_that_covers_only_some_windows() -> None:
    windows = [DS[-1], DS[-1] + pd.Timedelta(hours=1)]
    with pytest.raises(ValueError, match="does not cover plan windows"):
        region_demand_quantiles(forecast_frame(), tau_by_resource(CostModel()), windows)
