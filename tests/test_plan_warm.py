"""The warm tier: the two-tier newsvendor, the CP-SAT model's warm column, the plan and the IaC it feeds."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest

from pipeline.common.intervals import DataInterval
from pipeline.iac import render_cloudformation, render_terraform
from pipeline.iac.cloudformation import template_file
from pipeline.plan.allocate import Offer, RegionProblem, WindowOptions, solve_window
from pipeline.plan.policy import PlannerConfig, config_from_dict
from pipeline.plan.warm import WarmCosts, resolve_warm, tier_taus
from tests.conftest import RUN_END, settings_for
from tests.test_iac import manifest, plan_df, sample_rows  # noqa: F401  (fixtures)

C_OVER, C_UNDER = 0.048, 0.43  # the reference vCPU costs (cold penalty ≈ 8 × c_over)


def test_running_and_warm_quantiles_follow_the_cost_ratios() -> None:
    cheap, dear = (tier_taus(C_OVER, C_UNDER, WarmCosts(enabled=True, hold_fraction=h)) for h in (0.05, 0.5))
    assert cheap[1] is not None and dear[1] is not None
    assert cheap[0] < dear[0] < C_UNDER / (C_OVER + C_UNDER) < dear[1] < cheap[1]  # dearer warm hold: more running, less warm
    run, top = tier_taus(C_OVER, C_UNDER, WarmCosts(enabled=True, hold_fraction=0.1, start_penalty_multiple=1.0))
    h, u_w = 0.1 * C_OVER, 2 * C_OVER  # the derivation in pipeline.plan.warm, by hand
    assert run == pytest.approx((u_w + h) / (C_OVER + u_w)) and top == pytest.approx(1 - h / (C_UNDER - u_w))
    slow = tier_taus(C_OVER, C_UNDER, WarmCosts(enabled=True, hold_fraction=0.1, start_penalty_multiple=4.0))
    assert slow[1] is not None and slow[1] < top and slow[0] > run  # a costlier warm start: less warm


@pytest.mark.parametrize("warm", [WarmCosts(enabled=True, hold_fraction=(C_UNDER - C_OVER) / C_OVER),  # hold = cold penalty
                                  WarmCosts(enabled=True, hold_fraction=20.0),
                                  WarmCosts(enabled=True, start_penalty_multiple=9.0),  # warm start dearer than cold
                                  WarmCosts(enabled=False)])
def test_no_warm_tier_when_it_does_not_pay(warm: WarmCosts) -> None:
    assert tier_taus(C_OVER, C_UNDER, warm) == (pytest.approx(C_UNDER / (C_OVER + C_UNDER)), None)


def test_warm_settings_layer_and_bad_values_are_named() -> None:
    warm = resolve_warm({"warm": {"enabled": True, "hold_fraction": 0.2}}, (("PEERSCALE_WARM", "hold_fraction=0.05"),))
    assert (warm.enabled, warm.hold_fraction, warm.start_penalty_multiple) == (True, 0.05, 1.0)
    assert warm.sources == ("built-in defaults", "planner config", "PEERSCALE_WARM")
    with pytest.raises(ValueError, match=r"PEERSCALE_WARM.*hold_fraction"):
        resolve_warm(None, (("PEERSCALE_WARM", "hold_fraction=-1"),))
    with pytest.raises(ValueError, match="unknown keys"):
        config_from_dict({"costs": {"warm": {"hold": 0.1}}})
    assert resolve_warm(None).enabled is False


def _offers() -> list[Offer]:
    cap = {"vcpu": 4.0, "memory_gib": 16.0, "storage_gib": 0.0, "bandwidth_gbps": 1.0}
    big = {"vcpu": 16.0, "memory_gib": 64.0, "storage_gib": 0.0, "bandwidth_gbps": 4.0}
    return [Offer("m5.xlarge", "on_demand", 0.192, cap), Offer("m5.4xlarge", "on_demand", 0.768, big),
            Offer("m5.xlarge", "spot", 0.07, cap, 0.05, 0.95)]


def test_the_model_holds_warm_instances_beside_running_on_demand_lines() -> None:
    base = RegionProblem(region="r", demand={"vcpu": 40, "memory_gib": 100}, offers=_offers(), pool={"vcpu": 1000, "memory_gib": 4000},
                         max_spot_share=0.3)
    plain = solve_window([base], WindowOptions(churn_penalty=0.0)).regions["r"]
    assert plain.warm == {}
    tiered = solve_window([replace(base, warm_target={"vcpu": 66, "memory_gib": 100}, warm_hold_fraction=0.1)],
                          WindowOptions(churn_penalty=0.0)).regions["r"]
    assert tiered.cost == pytest.approx(plain.cost), "the running tier still covers the running quantile at least cost"
    cap = {o.key: o.capacity["vcpu"] * o.counted for o in _offers()}
    running = sum(cap[k] * n for k, n in tiered.counts.items())
    warm = sum(cap[k] * n for k, n in tiered.warm.items())
    assert running + warm >= 66 and running + warm - 4 < 66, "warm covers the rest up to τ_warm, no more than one instance over"
    assert all(k[1] == "on_demand" and tiered.counts.get(k, 0) > 0 for k in tiered.warm), "warm pools sit beside running on-demand lines"
    assert not tiered.warm_shortfall


def _build(published_root: Path, tmp_path: Path, warm: dict | None) -> tuple[pd.DataFrame, dict]:
    from pipeline.plan.planner import build_plan

    shutil.copytree(published_root / "lake", tmp_path / "lake", dirs_exist_ok=True)
    manifest = json.loads(next((published_root / "lake" / "plans").glob("plan_id=*/attempt=*/manifest.json")).read_text())
    config = PlannerConfig(costs={"warm": warm} if warm is not None else {})
    out = build_plan(DataInterval.ending_at(RUN_END), settings_for(tmp_path), manifest["forecast_run_id"], config=config)
    plan_dir = tmp_path / "lake" / "plans" / f"plan_id={out['plan_id']}" / f"attempt={out['attempt']}"
    return pd.read_parquet(plan_dir / "plan.parquet"), json.loads((plan_dir / "manifest.json").read_text())


def _warm_total(plan: pd.DataFrame) -> int:
    return int(plan.drop_duplicates("line_id")["warm_count"].fillna(0).sum())


def test_the_plan_gets_a_warm_column_that_shrinks_as_holding_warm_costs_more(published_root: Path, tmp_path: Path) -> None:
    one_tier, _ = _build(published_root, tmp_path / "off", None)
    assert one_tier["warm_count"].isna().all(), "without the tier the plan plans no warm pool (the IaC keeps its default)"
    cheap, manifest = _build(published_root, tmp_path / "cheap", {"enabled": True, "hold_fraction": 0.05})
    dear, _ = _build(published_root, tmp_path / "dear", {"enabled": True, "hold_fraction": 0.5})
    never, _ = _build(published_root, tmp_path / "never", {"enabled": True, "hold_fraction": 9.0})
    assert _warm_total(cheap) > _warm_total(dear) > 0 == _warm_total(never)
    assert cheap["hourly_cost"].sum() < one_tier["hourly_cost"].sum(), "running covers a lower quantile with warm on top"
    assert manifest["warm_tier"]["enabled"] is True and manifest["warm_tier"]["tau_warm_by_region"]
    assert manifest["warm_tier"]["warm_hourly_cost_total"] == pytest.approx(cheap["warm_hourly_cost"].sum(), rel=1e-3)
    region = next(iter(manifest["tau_by_region"]))
    assert manifest["tau_by_region"][region]["vcpu"] < manifest["warm_tier"]["tau_warm_by_region"][region]["vcpu"]


def test_warm_pools_in_terraform_and_cloudformation_come_from_the_plan(plan_df: pd.DataFrame, manifest: dict,
                                                                     tmp_path: Path) -> None:
    planned = plan_df.assign(warm_count=[7 if o == "on_demand" else 0 for o in plan_df["purchase_option"]])
    render_terraform(planned, manifest, tmp_path / "tf")
    lines = json.loads((tmp_path / "tf" / "regions/us-east-1" / "plan.auto.tfvars.json").read_text())["lines"]
    assert lines["m5.large/on_demand"]["warm_pool"] == 7 and lines["c5.xlarge/spot"]["warm_pool"] == 0
    render_cloudformation(planned, manifest, tmp_path / "cfn")
    template = json.loads((tmp_path / "cfn" / template_file("us-east-1")).read_text())
    pools = [v for v in template["Resources"].values() if v["Type"] == "AWS::AutoScaling::WarmPool"]
    assert [p["Properties"]["MinSize"] for p in pools] == [7]
    none_planned = planned.assign(warm_count=0)
    render_terraform(none_planned, manifest, tmp_path / "tf0")
    lines = json.loads((tmp_path / "tf0" / "regions/us-east-1" / "plan.auto.tfvars.json").read_text())["lines"]
    assert lines["m5.large/on_demand"]["warm_pool"] == 0


def test_plans_without_a_warm_column_still_render_with_the_default_pool(manifest: dict, tmp_path: Path) -> None:
    old = pd.DataFrame(sample_rows())
    assert "warm_count" not in old.columns
    render_terraform(old, manifest, tmp_path / "tf")
    lines = json.loads((tmp_path / "tf" / "regions/us-east-1" / "plan.auto.tfvars.json").read_text())["lines"]
    assert lines["m5.large/on_demand"]["warm_pool"] == 1  # ceil(3 × WARM_POOL_FRACTION)
    nulls = old.assign(warm_count=pd.array([None] * len(old), dtype="Int64"))
    render_terraform(nulls, manifest, tmp_path / "tf-null")
    lines = json.loads((tmp_path / "tf-null" / "regions/us-east-1" / "plan.auto.tfvars.json").read_text())["lines"]
    assert lines["m5.large/on_demand"]["warm_pool"] == 1


def test_the_plan_page_shows_the_planned_warm_pool_not_the_default_fraction(plan_df: pd.DataFrame, tmp_path: Path) -> None:
    """The analyst app's instance lines show the warm pool the IaC renders: the plan's warm_count where it has one."""
    import pyarrow as pa

    from pipeline.ui import pages, queries

    def shown(frame: pd.DataFrame) -> dict[str, int]:
        table = pa.Table.from_pandas(frame, preserve_index=False)
        with queries.Query(str(tmp_path)) as q:
            lines = queries.plan_lines(q, q.view_table(table), table, None)
        tiers = pages._tiers(lines)
        return dict(zip(tiers["line_id"], tiers["warm"].astype(int)))

    first, spot = "us-east-1/2025-03-01T00/m5.large/on_demand", "us-east-1/2025-03-01T00/c5.xlarge/spot"  # 3 and 4 instances
    planned = shown(plan_df.assign(warm_count=[7 if o == "on_demand" else 0 for o in plan_df["purchase_option"]]))
    assert planned[first] == 7 and planned[spot] == 0
    assert shown(plan_df.assign(warm_count=0))[first] == 0, "a plan that plans no warm pool shows none"
    assert shown(plan_df)[first] == 1, "plans before the warm tier: ceil(3 × WARM_POOL_FRACTION)"


def test_a_warm_pool_whose_line_the_packing_check_empties_is_rehomed_not_dropped() -> None:
    """The allocation put 4 warm m5.xlarge (16 counted vCPU) beside a line the packing re-plan then emptied."""
    from pipeline.plan.warm_pools import rehome_warm

    xl, big, spot = (o.key for o in _offers())  # m5.xlarge / m5.4xlarge on demand, m5.xlarge spot
    warm = {xl: 4}
    moved = rehome_warm(warm, before={xl: 3, spot: 2}, after={big: 1, spot: 2}, offers=_offers())
    assert moved == {big: 1}, "16 vCPU held warm: 4 xlarge became 1 4xlarge on the surviving on-demand line"
    # the re-plan's extra running capacity covers part of it: 16 vCPU running more → nothing left to hold warm
    assert rehome_warm(warm, before={xl: 3}, after={big: 2}, offers=_offers()) == {}
    assert rehome_warm(warm, before={xl: 3}, after={xl: 2, spot: 2}, offers=_offers()) == {xl: 4}, "a surviving line keeps its pool"
    assert rehome_warm(warm, before={xl: 3}, after={spot: 6}, offers=_offers()) == {}, "no on-demand line left: nowhere to hold it"
