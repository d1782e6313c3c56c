"""Costs are configuration: the catalog's defaults, planner.json, env and CLI layers, per region and resource."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from pipeline.cli.app import app
from pipeline.common.config import CostModel, Settings
from pipeline.common.intervals import DataInterval
from pipeline.common.schemas import RESOURCE_TYPES
from pipeline.plan.core import solve_plan
from pipeline.plan.costs import catalog_unit_prices, layer_from_dict, layer_from_text, resolve_costs
from pipeline.plan.policy import PlannerConfig, config_from_dict, load_planner_config
from tests.conftest import RUN_END, settings_for
from tests.test_plan_rules import W0, mix, problem, vec

REFERENCE = CostModel()


def catalog(levels: dict[str, float]) -> pd.DataFrame:
    """Two instance types per region, priced at `level` × a common base."""
    rows = []
    for region, level in levels.items():
        for itype, vcpu, mem, base in (("m6i.xlarge", 4, 16, 0.192), ("r6i.2xlarge", 8, 64, 0.504)):
            rows.append({"region": region, "instance_type": itype, "vcpu": vcpu, "memory_gib": mem, "storage_gib": 0.0,
                         "network_gbps": 12.5, "on_demand_hourly": base * level, "spot_hourly": base * level * 0.4,
                         "spot_interruption_rate": 0.01})
    return pd.DataFrame(rows)


def test_catalog_prices_set_each_regions_level_and_the_reference_keeps_tau() -> None:
    prices = catalog_unit_prices(catalog({"eu-west-1": 1.0, "us-east-1": 1.2}), REFERENCE.c_over)
    for r in RESOURCE_TYPES:
        assert prices["us-east-1"][r] == pytest.approx(1.2 * prices["eu-west-1"][r])
        assert prices["eu-west-1"][r] / prices["eu-west-1"]["vcpu"] == pytest.approx(REFERENCE.c_over[r] / REFERENCE.c_over["vcpu"])
    costs = resolve_costs(catalog({"eu-west-1": 1.0, "us-east-1": 1.2}), ["eu-west-1", "us-east-1", "sa-east-1"], [])
    for region in ("eu-west-1", "us-east-1", "sa-east-1"):  # sa-east-1 has no prices: the reference
        for r in RESOURCE_TYPES:
            assert costs.tau(region, r) == pytest.approx(REFERENCE.tau(r))
    assert costs.value("c_over", "sa-east-1", "vcpu") == REFERENCE.c_over["vcpu"]
    assert costs.layers[0]["source"] == "catalog"


def test_layers_apply_in_order_and_per_region_values_win_within_a_layer() -> None:
    planner = layer_from_dict({"c_under": {"vcpu": 1.0}, "regions": {"eu-west-1": {"c_under": {"vcpu": 2.0}}}}, "planner.json")
    env = layer_from_text("us-east-1:vcpu=3.0", "memory_gib=0.01", "env")
    cli = layer_from_text(None, "us-east-1:memory_gib=0.02", "cli")
    costs = resolve_costs(catalog({"eu-west-1": 1.0, "us-east-1": 1.0, "eu-central-1": 1.0}),
                          ["eu-west-1", "us-east-1", "eu-central-1"], [planner, env, cli])
    assert costs.value("c_under", "eu-central-1", "vcpu") == 1.0
    assert costs.value("c_under", "eu-west-1", "vcpu") == 2.0
    assert costs.value("c_under", "us-east-1", "vcpu") == 3.0
    assert costs.value("c_over", "eu-west-1", "memory_gib") == 0.01
    assert costs.value("c_over", "us-east-1", "memory_gib") == 0.02
    assert costs.tau("us-east-1", "vcpu") > costs.tau("eu-west-1", "vcpu") > costs.tau("eu-central-1", "vcpu")
    assert [layer["source"] for layer in costs.layers] == ["catalog", "planner.json", "env", "cli"]
    multiple = resolve_costs(catalog({"eu-west-1": 1.0}), ["eu-west-1"],
                             [layer_from_dict({"cold_start_penalty_multiple": 3}, "p")])
    assert multiple.tau("eu-west-1", "memory_gib") == pytest.approx(0.8)


def test_a_region_named_only_in_the_config_is_reported_not_silently_used() -> None:
    layer = layer_from_dict({"regions": {"eu-wset-1": {"c_under": {"vcpu": 2.0}}}}, "planner.json")
    costs = resolve_costs(catalog({"eu-west-1": 1.0}), ["eu-west-1"], [layer])
    assert costs.layers[-1]["regions_not_in_plan"] == ["eu-wset-1"]


@pytest.mark.parametrize(("payload", "message"), [
    ({"c_under": {"cpu": 1.0}}, "unknown resource types \\['cpu'\\]"),
    ({"c_under": {"vcpu": -1}}, "must be a positive, finite"),
    ({"c_over": {"vcpu": "nan"}}, "must be a positive, finite"),
    ({"c_over": {"vcpu": "cheap"}}, "is not a number"),
    ({"c_over": {"vcpu": 0}}, "must be a positive, finite"),
    ({"c_over": [1, 2]}, "must map resource type"),
    ({"regions": {"EU west": {"c_under": {"vcpu": 1}}}}, "not a region code"),
    ({"regions": {"eu-west-1": {"tau": 0.9}}}, "may hold only c_under and c_over"),
    ({"c_unders": {}}, "unknown keys \\['c_unders'\\]"),
    ({"cold_start_penalty_multiple": "inf"}, "must be a positive, finite"),
    ([1], "must be a JSON object"),
])
def test_bad_cost_settings_are_refused_with_the_place_named(payload: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        layer_from_dict(payload, "planner.json")


@pytest.mark.parametrize(("text", "message"), [
    ("vcpu0.43", "is not RESOURCE=USD"),
    ("vcpu=", "is not a number"),
    ("gpu=1", "unknown resource types"),
    ("Frankfurt:vcpu=1", "not a region code"),
])
def test_bad_cost_texts_are_refused(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        layer_from_text(text, None, "PEERSCALE_C_UNDER/PEERSCALE_C_OVER")


def test_planner_json_costs_are_checked_when_loaded(tmp_path: Path) -> None:
    (tmp_path / "inventory").mkdir()
    (tmp_path / "inventory" / "planner.json").write_text(json.dumps({"costs": {"c_under": {"vcpu": -2}}}))
    with pytest.raises(ValueError, match=r"planner\.json.*positive"):
        load_planner_config(str(tmp_path))
    assert config_from_dict({"costs": {"c_over": {"vcpu": 0.05}}}).costs == {"c_over": {"vcpu": 0.05}}


def test_the_controllers_offset_moves_a_regions_own_tau() -> None:
    from pipeline.plan.quantile import shift_tau

    assert shift_tau(0.9, 0.95, 0.9) == 0.95
    assert shift_tau(0.8, 0.9, 0.9) == pytest.approx(0.8)
    raised = shift_tau(0.98, 0.95, 0.9)
    assert 0.98 < raised < 1.0
    assert shift_tau(0.5, 0.95, 0.9) > 0.5 > shift_tau(0.5, 0.85, 0.9)


def test_env_costs_become_a_layer(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PEERSCALE_C_UNDER", "vcpu=0.9")
    monkeypatch.delenv("PEERSCALE_C_OVER", raising=False)
    assert Settings.from_env().cost_texts == (("PEERSCALE_C_UNDER/PEERSCALE_C_OVER", "vcpu=0.9", None),)


def test_budget_goes_first_to_the_region_whose_misses_cost_more() -> None:
    regions = ["eu-west-1", "us-east-1"]
    base = problem({r: vec(64, 256) for r in regions}, regions)
    for r in regions:
        base.mix[r] = mix(0.0, low=0.0)
    config = PlannerConfig(failover_share=0.0, packing_check=False)
    budget = round(solve_plan(base, config).cost * 0.5, 2)
    dear = {r: v * 10 for r, v in base.c_under.items()}
    capped = solve_plan(replace(base, c_under_by_region={"us-east-1": dear}),
                        replace(config, budget_usd_per_hour=budget))
    left = {region: sum(x["quantity"] for x in capped.left_to_on_demand if x["region"] == region and x["resource_type"] == "vcpu")
            for region in regions}
    assert left["eu-west-1"] > left["us-east-1"] >= 0
    assert capped.cells[(W0, "us-east-1")].counts


def test_the_plan_uses_configured_costs_per_region_and_records_them(published_root: Path, tmp_path: Path) -> None:
    from pipeline.plan.planner import build_plan

    shutil.copytree(published_root / "lake", tmp_path / "lake")
    settings = replace(settings_for(tmp_path), cost_texts=(("--c-under/--c-over", "us-east-1:vcpu=9.0", None),))
    manifest = json.loads(next((tmp_path / "lake" / "plans").glob("plan_id=*/attempt=*/manifest.json")).read_text())
    config = PlannerConfig(costs={"regions": {"eu-west-1": {"c_over": {"vcpu": 1.0}}}})
    overrides = {"eu-central-1": {"vcpu": 0.95}, "us-east-1": {"vcpu": 0.95}}  # as the feedback controller sends them
    out = build_plan(DataInterval.ending_at(RUN_END), settings, manifest["forecast_run_id"], config=config, tau_overrides=overrides)
    plan_dir = tmp_path / "lake" / "plans" / f"plan_id={out['plan_id']}" / f"attempt={out['attempt']}"
    new = json.loads((plan_dir / "manifest.json").read_text())
    taus = new["tau_by_region"]
    assert taus["us-east-1"]["vcpu"] > manifest["tau_by_region"]["us-east-1"]["vcpu"]
    assert taus["eu-west-1"]["vcpu"] < 0.5 < taus["eu-west-1"]["memory_gib"]
    assert taus["eu-central-1"]["vcpu"] == 0.95  # a region at the reference costs takes the controller's τ as it is
    assert {k: v for k, v in taus["eu-central-1"].items() if k != "vcpu"} == {
        k: v for k, v in manifest["tau_by_region"]["eu-central-1"].items() if k != "vcpu"}
    dear = 9.0 / (9.0 + new["cost_model"]["by_region"]["us-east-1"]["c_over"]["vcpu"])
    assert taus["us-east-1"]["vcpu"] > dear > 0.95  # the controller's raise lands on top of the region's own τ
    assert new["cost_model"]["by_region"]["us-east-1"]["c_under"]["vcpu"] == 9.0
    assert [layer["source"] for layer in new["cost_model"]["layers"]] == ["catalog", "planner config", "--c-under/--c-over"]
    plan = pd.read_parquet(plan_dir / "plan.parquet")
    old = pd.read_parquet(next((published_root / "lake" / "plans").glob("plan_id=*/attempt=*/plan.parquet")))
    vcpu = {name: frame[(frame["region"] == "us-east-1") & (frame["resource_type"] == "vcpu")]
            .drop_duplicates("valid_from")["demand_quantile"].sum() for name, frame in (("new", plan), ("old", old))}
    assert vcpu["new"] > vcpu["old"]


def test_cli_refuses_bad_costs_before_running(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["run", "--interval-end", RUN_END, "--lake", str(tmp_path / "lake"), "--c-under", "vcpu=-1"])
    assert result.exit_code != 0
    assert "--c-under/--c-over" in result.output and "positive" in result.output
    assert not (tmp_path / "lake").exists()
