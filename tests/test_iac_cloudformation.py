"""CloudFormation rendering: one stack template per region + deployment.json, golden files, safety.

Golden files live in tests/golden/cloudformation/. After an intended change, regenerate them with
``PEERSCALE_UPDATE_GOLDEN=1 .venv/bin/python -m pytest tests/test_iac_cloudformation.py -k golden``
and review the diff.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from pipeline.iac import UnsafePlanValue, render_cloudformation
from pipeline.iac.cloudformation import DEPLOYMENT_FILE, template_file
from tests.test_iac import (
    FIRST_WINDOW_ON_DEMAND,
    FIRST_WINDOW_SPOT,
    INJECTIONS,
    PLAN_ID,
    W0,
    W2,
    _line_rows,
    _with,
    sample_rows,
)

GOLDEN_DIR = Path(__file__).parent / "golden" / "cloudformation"
UPDATE_GOLDEN_ENV = "PEERSCALE_UPDATE_GOLDEN"
TAGGABLE = {"AWS::EC2::LaunchTemplate", "AWS::AutoScaling::AutoScalingGroup", "AWS::EC2::TransitGateway"}


@pytest.fixture
def manifest() -> dict[str, Any]:
    return {"plan_id": PLAN_ID, "valid_from": W0.isoformat(), "valid_to": W2.isoformat(), "tau": 0.8}


def _render(rows: list[dict[str, Any]], manifest: dict[str, Any], out: Path, **kwargs: Any) -> dict[str, Any]:
    render_cloudformation(pd.DataFrame(rows), manifest, out, **kwargs)
    return {p.name: json.loads(p.read_text()) for p in sorted(out.iterdir())}


def _by_type(template: dict[str, Any], kind: str) -> dict[str, dict[str, Any]]:
    return {k: v for k, v in template["Resources"].items() if v["Type"] == kind}


def test_one_template_per_region_and_a_deployment(manifest: dict, tmp_path: Path) -> None:
    files = _render(sample_rows(), manifest, tmp_path / "cfn")
    assert sorted(files) == sorted([DEPLOYMENT_FILE, template_file("eu-west-1"), template_file("us-east-1")])
    deployment = files[DEPLOYMENT_FILE]
    assert deployment["plan_id"] == PLAN_ID
    assert deployment["stack_tags"] == {"peerscale": "true", "plan_id": PLAN_ID}
    assert [s["region"] for s in deployment["stacks"]] == ["eu-west-1", "us-east-1"]
    assert deployment["peering"]["pairs"] == [{"requester": "eu-west-1", "accepter": "us-east-1", "expected_requests": None}]
    reservations = {r["line_id"]: r for r in deployment["capacity_reservations"]}
    assert set(reservations) == set(FIRST_WINDOW_ON_DEMAND)
    for line_id, (region, instance_type, count) in FIRST_WINDOW_ON_DEMAND.items():
        row = reservations[line_id]
        assert (row["region"], row["instance_type"], row["instance_count"]) == (region, instance_type, count)
        assert row["availability_zone"] == f"{region}a"
        assert row["end_date"] == "2025-03-01T01:00:00Z"


def test_groups_launch_templates_warm_pools_and_gateways(manifest: dict, tmp_path: Path) -> None:
    files = _render(sample_rows(), manifest, tmp_path / "cfn")
    lines = {**FIRST_WINDOW_ON_DEMAND, **FIRST_WINDOW_SPOT}
    seen = set()
    for region in ("eu-west-1", "us-east-1"):
        template = files[template_file(region)]
        assert template["AWSTemplateFormatVersion"] == "2010-09-09"
        assert template["Parameters"]["AvailabilityZone"]["Default"] == f"{region}a"
        assert "AWS::SSM::Parameter::Value" in template["Parameters"]["ImageId"]["Type"]
        assert set(_by_type(template, "AWS::EC2::TransitGateway")) == {"TransitGateway"}
        assert template["Outputs"]["TransitGatewayId"]["Value"] == {"Ref": "TransitGateway"}
        groups = _by_type(template, "AWS::AutoScaling::AutoScalingGroup")
        pools = _by_type(template, "AWS::AutoScaling::WarmPool")
        for name, group in groups.items():
            props = group["Properties"]
            tags = {t["Key"]: t["Value"] for t in props["Tags"]}
            key = tags["line_key"]
            line_id = next(lid for lid in lines if lid.startswith(key.split("/")[0]) and lid.endswith(key.split("/", 1)[1]))
            seen.add(line_id)
            _, instance_type, count = lines[line_id]
            assert props["DesiredCapacity"] == str(count)
            assert all(t["PropagateAtLaunch"] for t in props["Tags"])
            lt_name = name.removesuffix("Group") + "LaunchTemplate"
            data = template["Resources"][lt_name]["Properties"]["LaunchTemplateData"]
            assert data["InstanceType"] == instance_type
            assert data["MetadataOptions"]["HttpTokens"] == "required"
            assert data["BlockDeviceMappings"][0]["Ebs"] == {
                "VolumeSize": 4, "VolumeType": "gp3", "Encrypted": True, "DeleteOnTermination": True}
            schedule = template["Resources"][name.removesuffix("Group") + "WindowEnd"]["Properties"]
            assert (schedule["DesiredCapacity"], schedule["StartTime"]) == (0, "2025-03-01T01:00:00Z")
            if tags["purchase_option"] == "spot":
                distribution = props["MixedInstancesPolicy"]["InstancesDistribution"]
                assert distribution["OnDemandPercentageAboveBaseCapacity"] == 0
                assert props["MaxSize"] == str(count)
                assert name.removesuffix("Group") + "WarmPool" not in pools
            else:
                pool = pools[name.removesuffix("Group") + "WarmPool"]["Properties"]
                assert pool["AutoScalingGroupName"] == {"Ref": name}
                assert props["MaxSize"] == str(count + pool["MinSize"])
                assert data["CapacityReservationSpecification"] == {"CapacityReservationPreference": "open"}
        for name, resource in template["Resources"].items():
            if resource["Type"] in TAGGABLE:
                props = resource["Properties"]
                tags = props.get("Tags") or props["TagSpecifications"][0]["Tags"]
                assert {"Key": "peerscale", "Value": "true"} in [{"Key": t["Key"], "Value": t["Value"]} for t in tags], name
    assert seen == set(lines)


def test_templates_do_not_carry_the_plan_id(manifest: dict, tmp_path: Path) -> None:
    """The plan id is a stack tag: the same lines under another plan id give the same templates,
    so an unchanged region has an empty change set."""
    first = _render(sample_rows(), manifest, tmp_path / "a")
    other_rows = [{**row, "plan_id": "plan-other"} for row in sample_rows()]
    second = _render(other_rows, {**manifest, "plan_id": "plan-other"}, tmp_path / "b")
    for name in (template_file("eu-west-1"), template_file("us-east-1")):
        assert first[name] == second[name]
        assert PLAN_ID not in json.dumps(first[name])
    assert second[DEPLOYMENT_FILE]["stack_tags"]["plan_id"] == "plan-other"


def test_region_with_only_zero_lines_gets_a_placeholder_stack(manifest: dict, tmp_path: Path) -> None:
    rows = sample_rows() + _line_rows(W0, W0 + pd.Timedelta(hours=1), "ap-south-1", "m5.large", "on_demand", 0)
    files = _render(rows, manifest, tmp_path / "cfn")
    template = files[template_file("ap-south-1")]
    assert list(template["Resources"]) == ["NoCapacity"]
    assert all("ap-south-1" not in (p["requester"], p["accepter"]) for p in files[DEPLOYMENT_FILE]["peering"]["pairs"])


@pytest.mark.parametrize("case", sorted(INJECTIONS))
def test_unsafe_values_are_refused_before_writing(case: str, manifest: dict, tmp_path: Path) -> None:
    changes, field = INJECTIONS[case]
    rows = _with(sample_rows(), **changes).to_dict(orient="records")
    if case == "plan_id":
        manifest = {**manifest, "plan_id": changes["plan_id"]}
        field = "manifest.plan_id"
    with pytest.raises(UnsafePlanValue) as excinfo:
        render_cloudformation(pd.DataFrame(rows), manifest, tmp_path / "cfn")
    assert excinfo.value.field == field
    assert list(tmp_path.iterdir()) == []


def test_golden_files(manifest: dict, tmp_path: Path) -> None:
    """Rendered bytes equal tests/golden/cloudformation/ exactly (see the module docstring)."""
    out = tmp_path / "cfn"
    render_cloudformation(pd.DataFrame(sample_rows()), manifest, out)
    rendered = {p.name: p.read_bytes() for p in sorted(out.iterdir())}
    if os.environ.get(UPDATE_GOLDEN_ENV) == "1":
        GOLDEN_DIR.mkdir(parents=True, exist_ok=True)
        for stale in GOLDEN_DIR.iterdir():
            if stale.name not in rendered:
                stale.unlink()
        for name, data in rendered.items():
            (GOLDEN_DIR / name).write_bytes(data)
    how = (
        f"rendered CloudFormation differs from {GOLDEN_DIR}; if intended, run `{UPDATE_GOLDEN_ENV}=1 "
        ".venv/bin/python -m pytest tests/test_iac_cloudformation.py -k golden` and review the diff"
    )
    golden = {p.name: p.read_bytes() for p in sorted(GOLDEN_DIR.iterdir())} if GOLDEN_DIR.is_dir() else {}
    assert sorted(rendered) == sorted(golden), how
    for name in rendered:
        assert rendered[name] == golden[name], f"{name}: {how}"
