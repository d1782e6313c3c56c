"""Multi-AZ in the IaC: Terraform and CloudFormation take the plan's zones and per-zone counts
(pipeline.plan.zones), N+1 across zones included; PEERSCALE_AZ_PER_REGION still overrides them."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from pipeline.common.config import Settings
from pipeline.common.schemas import PLAN
from pipeline.iac.check import find_cfn_lint, run_cfn_lint
from pipeline.iac.model import build_model
from pipeline.iac.render import render_plan
from pipeline.iac.safety import UnsafePlanValue
from pipeline.iac.tfapply import find_terraform, terraform_checks
from pipeline.plan.zones import ZoneCatalog, layer_from_text, resolve_zones, spread_rows
from tests import plan_store
from tests.test_iac import W0, W1, W2, _line_rows

ZONE_SCHEMA = (PLAN.append(pa.field("zone_counts", pa.string())).append(pa.field("zone_spare_count", pa.int64()))
               .append(pa.field("zone_spare_hourly_cost", pa.float64())))
CATALOG = ZoneCatalog(zones={"us-east-1": ("us-east-1a", "us-east-1b", "us-east-1c", "us-east-1d"),
                             "eu-west-1": ("eu-west-1a", "eu-west-1b", "eu-west-1c"),
                             "ap-northeast-1": ("ap-northeast-1c",)}, source="zones.csv")
LINES = [("us-east-1", "m5.large", "on_demand", 5), ("us-east-1", "c5.xlarge", "spot", 4),
         ("eu-west-1", "r5.large", "on_demand", 2), ("ap-northeast-1", "m5.large", "on_demand", 3)]


def zoned_rows(plan_id: str, zones: str = "us-east-1=3") -> list[dict[str, Any]]:
    """Plan rows as the planner writes them: lines, then the zone stage over CATALOG."""
    rows: list[dict[str, Any]] = []
    for region, itype, option, count in LINES:
        rows += _line_rows(W0, W1, region, itype, option, count, plan_id=plan_id)
        rows += _line_rows(W1, W2, region, itype, option, count + 1, plan_id=plan_id)
    regions = sorted({line[0] for line in LINES})
    return spread_rows(rows, resolve_zones(CATALOG, regions, [layer_from_text(zones, "test")]))


def _publish(settings: Settings, plan_id: str) -> None:
    table = pa.Table.from_pylist(zoned_rows(plan_id), schema=ZONE_SCHEMA)
    plan_store.write_plan(settings.lake_root, plan_id, table, {
        "plan_id": plan_id, "valid_from": W0.isoformat(), "valid_to": W2.isoformat(), "tau": {"vcpu": 0.9}, "forecast_run_id": None})


@pytest.fixture()
def settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    for name in ("PEERSCALE_AZ_PER_REGION", "PEERSCALE_ONPREM_REGIONS", "PEERSCALE_TEMPLATES_DIR"):
        monkeypatch.delenv(name, raising=False)
    out = Settings(source_root=str(tmp_path / "src"), lake_root=str(tmp_path / "lake"), build_root=str(tmp_path / "build"))
    _publish(out, "plan-z")
    return out


def test_the_model_takes_the_plans_zones_and_headroom() -> None:
    manifest = {"plan_id": "plan-z", "tau": 0.9}
    model = build_model(pa.Table.from_pylist(zoned_rows("plan-z"), schema=ZONE_SCHEMA), manifest)
    lines = {line.key: line for line in model.lines}
    od = lines["us-east-1/m5.large/on_demand"]
    assert od.zones == (("us-east-1a", 3), ("us-east-1b", 3), ("us-east-1c", 2)) and od.count == 5
    assert od.instances == 8 and od.zone_headroom == 3 and od.zone_spare == 0
    assert od.max_size == 8 + od.warm_pool
    assert lines["eu-west-1/r5.large/on_demand"].zones == (("eu-west-1a", 1), ("eu-west-1b", 1), ("eu-west-1c", 1))  # default: 3 zones
    one = lines["ap-northeast-1/m5.large/on_demand"]
    assert one.zones == (("ap-northeast-1c", 3),) and one.zone_headroom == 0
    assert model.region("ap-northeast-1").default_availability_zone == "ap-northeast-1c"


@pytest.mark.parametrize(("zone_counts", "message"), [
    ('{"eu-west-1a": 4, "eu-west-1b": 4}', "not an availability zone of us-east-1"),
    ('{"us-east-1a": 2, "us-east-1b": 2}', "fewer instances than the line's count 5"),
    ('{"us-east-1a": "x"}', "count"),
    ("[1, 2]", "JSON object"),
])
def test_bad_zone_counts_in_a_plan_are_refused(zone_counts: str, message: str) -> None:
    rows = zoned_rows("plan-z")
    for row in rows:
        if row["line_id"].startswith("us-east-1/") and row["instance_type"] == "m5.large" and row["valid_from"] == W0:
            row["zone_counts"] = zone_counts
    with pytest.raises(UnsafePlanValue, match=message):
        build_model(pa.Table.from_pylist(rows, schema=ZONE_SCHEMA), {"plan_id": "plan-z"})


def test_render_writes_the_zones_into_tfvars_and_cloudformation(settings: Settings) -> None:
    out = render_plan("plan-z", settings)
    tfvars = json.loads((Path(out["terraform_dir"]) / "regions/us-east-1/plan.auto.tfvars.json").read_text())
    line = tfvars["lines"]["m5.large/on_demand"]
    assert line["zone_counts"] == {"us-east-1a": 3, "us-east-1b": 3, "us-east-1c": 2}
    assert line["availability_zones"] == ["us-east-1a", "us-east-1b", "us-east-1c"]
    assert (line["count"], line["planned_count"], line["zone_headroom"]) == (8, 5, 3)
    cfn = Path(out["cloudformation_dir"])
    template = json.loads((cfn / "us-east-1.template.json").read_text())
    groups = {k: v["Properties"] for k, v in template["Resources"].items() if v["Type"] == "AWS::AutoScaling::AutoScalingGroup"}
    params = template["Parameters"]
    by_zones = {params[g["AvailabilityZones"]["Fn::Split"][1]["Ref"]]["Default"]: g["DesiredCapacity"] for g in groups.values()
                if isinstance(g["AvailabilityZones"], dict)}
    assert by_zones["us-east-1a,us-east-1b,us-east-1c"] == "8"  # the plan's count 5 plus its zone headroom 3
    assert "AvailabilityZone" not in params  # every line of the region names its zones
    reservations = json.loads((cfn / "deployment.json").read_text())["capacity_reservations"]
    east = {r["availability_zone"]: r["instance_count"] for r in reservations if r["key"].startswith("us-east-1/m5.large/")}
    assert east == {"us-east-1a": 3, "us-east-1b": 3, "us-east-1c": 2}
    tokyo = [r for r in reservations if r["region"] == "ap-northeast-1"]
    assert [(r["key"], r["availability_zone"], r["instance_count"]) for r in tokyo] == [
        ("ap-northeast-1/m5.large/on_demand", "ap-northeast-1c", 3)]


def test_the_deprecated_env_spread_still_overrides(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PEERSCALE_AZ_PER_REGION", "2")
    # the warning recorded at the module's logger call: once Airflow's logging is configured by an earlier
    # test, a logger created after it renders to stdout without passing the handlers caplog listens on
    from pipeline.iac import render as render_module

    warned: list[str] = []
    monkeypatch.setattr(render_module.log, "warning", lambda msg, *args, **_: warned.append(msg % args))
    out = render_plan("plan-z", settings)
    line = json.loads((Path(out["terraform_dir"]) / "regions/us-east-1/plan.auto.tfvars.json").read_text())["lines"]["m5.large/on_demand"]
    assert line["zone_counts"] == {"us-east-1a": 3, "us-east-1b": 2} and line["zone_headroom"] == 0
    assert line["max_size"] == 5 + 3  # room to relaunch the larger zone's share
    assert any("PEERSCALE_AZ_PER_REGION=2 is deprecated" in w for w in warned)


def _plugin_dir() -> str | None:
    for candidate in (os.environ.get("PEERSCALE_TF_PLUGIN_DIR", ""), "/opt/tf-plugins"):
        if candidate and any(Path(candidate).glob("registry.terraform.io/hashicorp/aws/*/*/terraform-provider-aws*")):
            return candidate
    return None


@pytest.mark.terraform
@pytest.mark.skipif(find_terraform() is None or _plugin_dir() is None, reason="no terraform binary or local aws provider")
def test_a_multi_zone_render_passes_terraform_fmt_and_validate(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PEERSCALE_TF_PLUGIN_DIR", str(_plugin_dir()))
    monkeypatch.setenv("TF_CLI_CONFIG_FILE", os.devnull)
    out = Path(render_plan("plan-z", settings)["terraform_dir"])
    assert terraform_checks(out) == {"fmt": [], "validate": {}}


@pytest.mark.skipif(find_cfn_lint() is None, reason="cfn-lint is not installed")
def test_a_multi_zone_render_passes_cfn_lint(settings: Settings) -> None:
    cfn = Path(render_plan("plan-z", settings)["cloudformation_dir"])
    assert run_cfn_lint(sorted(cfn.glob("*.template.json")), str(find_cfn_lint())) == []
