"""The CloudFormation applier end to end against a real AWS API on loopback (moto server mode).

The lake (plans, manifests, APPLIED, the capacity ledger) is on S3 on the same server. One plan's
life: dry run → first apply → re-apply (no changes) → a changed plan (only the diff changes) →
a plan without one region (its stack and peering go) → a failing apply (the manifest says
apply_failed with the error; APPLIED stays on the last good plan).

Capacity reservations go through the ledger provider: moto's server does not implement the EC2
capacity reservation API (checked below, so we notice if it ever does).
"""

from __future__ import annotations

import json
import logging
import uuid
from pathlib import Path
from typing import Any

import boto3
import pandas as pd
import pyarrow as pa
import pytest
from botocore.exceptions import ClientError

from pipeline.common import lake, storage
from pipeline.common.config import Settings
from pipeline.common.schemas import PLAN
from pipeline.iac.apply import ApplyFailed, applied_plan_id, apply_cloudformation, stack_name
from pipeline.iac.providers import CAPACITY_PROVIDER_ENV, LedgerCapacityReservations
from pipeline.plan import read_plan
from tests import plan_store
from tests.moto_server import TEST_SECRET, aws_env, moto_server, s3_bucket  # noqa: F401
from tests.test_iac import W0, W1, W2, _line_rows

REGIONS = ("eu-west-1", "us-east-1")

# moto's own notices: it skips AWS::AutoScaling::WarmPool (documented limitation) and has no error
# shape for InvalidInstanceType.NotFound (the error still reaches the client with its code).
pytestmark = [
    pytest.mark.filterwarnings("ignore:.*WarmPool.*not supported by moto:UserWarning"),
    pytest.mark.filterwarnings("ignore:.*does not match an error shape:UserWarning"),
]


def _rows(plan_id: str, lines: list[tuple[str, str, str, int]]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for region, instance_type, option, count in lines:
        rows += _line_rows(W0, W1, region, instance_type, option, count, plan_id=plan_id)
        rows += _line_rows(W1, W2, region, instance_type, option, count + 1, plan_id=plan_id)
    return rows


PLAN_A = [
    ("eu-west-1", "r5.large", "on_demand", 2),
    ("eu-west-1", "m5.large", "spot", 3),
    ("us-east-1", "m5.large", "on_demand", 3),
    ("us-east-1", "c5.xlarge", "spot", 4),
]
# B: us-east-1's spot line grows and gains an on-demand c5.large line; eu-west-1 is unchanged.
PLAN_B = [*PLAN_A[:3], ("us-east-1", "c5.xlarge", "spot", 6), ("us-east-1", "c5.large", "on_demand", 1)]
# D: eu-west-1 is gone from the plan.
PLAN_D = [line for line in PLAN_B if line[0] == "us-east-1"]
# E: D plus an instance type AWS does not sell (passes the name pattern, fails at AWS).
PLAN_E = [*PLAN_D, ("us-east-1", "m5.mega", "spot", 2)]


def _publish(settings: Settings, plan_id: str, lines: list[tuple[str, str, str, int]]) -> None:
    frame = pd.DataFrame(_rows(plan_id, lines))
    table = pa.Table.from_pandas(frame, schema=PLAN, preserve_index=False)
    plan_store.write_plan(settings.lake_root, plan_id, table, {
        "plan_id": plan_id, "valid_from": W0.isoformat(), "valid_to": W2.isoformat(), "tau": {"vcpu": 0.9},
        "forecast_run_id": None,
    })


def _manifest(settings: Settings, plan_id: str) -> dict[str, Any]:
    """The plan's manifest with its apply records (kept beside the immutable attempt)."""
    return read_plan(settings, plan_id)[1]


def _stacks(prefix: str) -> dict[str, dict[str, Any]]:
    found = {}
    for region in REGIONS:
        try:
            stack = boto3.client("cloudformation", region_name=region).describe_stacks(
                StackName=stack_name(prefix, region))["Stacks"][0]
        except ClientError:
            continue
        if stack["StackStatus"] != "DELETE_COMPLETE":
            found[region] = stack
    return found


def _physical(prefix: str, region: str) -> dict[str, str]:
    resources = boto3.client("cloudformation", region_name=region).describe_stack_resources(
        StackName=stack_name(prefix, region))["StackResources"]
    return {r["LogicalResourceId"]: r.get("PhysicalResourceId", "") for r in resources if "LogicalResourceId" in r}


def _group_sizes(prefix: str, region: str) -> dict[str, int]:
    """Desired capacity per line key of the deployment's groups in ``region``."""
    groups = boto3.client("autoscaling", region_name=region).describe_auto_scaling_groups()["AutoScalingGroups"]
    physical = set(_physical(prefix, region).values())
    sizes = {}
    for group in groups:
        if group["AutoScalingGroupName"] in physical:
            tags = {t["Key"]: t["Value"] for t in group.get("Tags", [])}
            sizes[tags["line_key"]] = group["DesiredCapacity"]
    return sizes


def _peerings(prefix: str) -> dict[str, str]:
    """Live peering attachments of the deployment: pair → state."""
    out = {}
    for region in REGIONS:
        items = boto3.client("ec2", region_name=region).describe_transit_gateway_peering_attachments()
        for item in items["TransitGatewayPeeringAttachments"]:
            tags = {t["Key"]: t["Value"] for t in item.get("Tags", [])}
            ours = tags.get("peerscale-stack") == prefix and item["RequesterTgwInfo"]["Region"] == region
            if ours and item["State"] not in ("deleted", "deleting"):
                out[tags["peerscale-pair"]] = item["State"]
    return out


@pytest.fixture()
def deployment(s3_bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Settings, str]:
    monkeypatch.setenv(CAPACITY_PROVIDER_ENV, "ledger")
    settings = Settings(source_root=str(tmp_path / "src"), lake_root=f"s3://{s3_bucket}/lake",
                        build_root=str(tmp_path / "build"))
    return settings, f"t{uuid.uuid4().hex[:10]}"


def test_plan_lifecycle_against_the_loopback_aws(
    deployment: tuple[Settings, str], caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    settings, prefix = deployment
    caplog.set_level(logging.DEBUG)  # every logger, botocore's request logs included: checked for secrets below
    for plan_id, lines in (("plan-a", PLAN_A), ("plan-b", PLAN_B), ("plan-d", PLAN_D), ("plan-e", PLAN_E)):
        _publish(settings, plan_id, lines)
    ledger = LedgerCapacityReservations.for_lake(settings.lake_root, prefix)

    # --- dry run: change sets are shown, then removed; nothing exists afterwards ---------------
    preview = apply_cloudformation("plan-a", settings, stack_prefix=prefix)
    assert preview.status == "planned" and preview.dry_run
    assert {r: s.action for r, s in preview.stacks.items()} == {"eu-west-1": "create", "us-east-1": "create"}
    assert preview.stacks["us-east-1"].changes["Add"] == 8  # TGW, 2 x (launch template, group, schedule), 1 warm pool
    assert preview.peering["created"] == 1
    assert preview.capacity_reservations["created"] == 2
    assert _stacks(prefix) == {}
    assert not storage.exists(ledger.uri)
    assert "apply" not in _manifest(settings, "plan-a")
    assert _manifest(settings, "plan-a")["apply_preview"]["status"] == "planned"
    assert applied_plan_id(settings) is None

    # --- first apply ------------------------------------------------------------------------
    first = apply_cloudformation("plan-a", settings, execute=True, stack_prefix=prefix)
    assert first.status == "applied"
    stacks = _stacks(prefix)
    assert {r: s["StackStatus"] for r, s in stacks.items()} == {"eu-west-1": "CREATE_COMPLETE", "us-east-1": "CREATE_COMPLETE"}
    assert {t["Key"]: t["Value"] for t in stacks["us-east-1"]["Tags"]}["plan_id"] == "plan-a"
    assert _group_sizes(prefix, "us-east-1") == {"us-east-1/m5.large/on_demand": 3, "us-east-1/c5.xlarge/spot": 4}
    assert _group_sizes(prefix, "eu-west-1") == {"eu-west-1/r5.large/on_demand": 2, "eu-west-1/m5.large/spot": 3}
    assert _peerings(prefix) == {"eu-west-1|us-east-1": "available"}
    reservations = lake.read_json(ledger.uri)
    assert {k: v["instance_count"] for r in reservations.values() for k, v in r.items()} == {
        "eu-west-1/r5.large/on_demand": 2, "us-east-1/m5.large/on_demand": 3}
    manifest = _manifest(settings, "plan-a")
    assert manifest["status"] == "published"  # the IRC keeps serving it
    assert manifest["apply"]["status"] == "applied"
    assert manifest["apply"]["stacks"]["us-east-1"]["stack_id"] == stacks["us-east-1"]["StackId"]
    assert manifest["apply"]["change_counts"]["Add"] == preview.change_counts()["Add"]
    assert applied_plan_id(settings) == "plan-a"
    ids_before = {region: _physical(prefix, region) for region in REGIONS}

    # --- re-apply of the same plan: nothing changes -------------------------------------------
    again = apply_cloudformation("plan-a", settings, execute=True, stack_prefix=prefix)
    assert {r: (s.action, s.status) for r, s in again.stacks.items()} == {
        "eu-west-1": ("none", "NO_CHANGES"), "us-east-1": ("none", "NO_CHANGES")}
    assert again.change_counts() == {"Add": 0, "Modify": 0, "Remove": 0}
    assert (again.peering["created"], again.peering["removed"], again.peering["unchanged"]) == (0, 0, 1)
    assert again.capacity_reservations["unchanged"] == 2 and again.capacity_reservations["created"] == 0
    assert {region: _physical(prefix, region) for region in REGIONS} == ids_before
    for region in REGIONS:  # the empty change sets were deleted (AWS drops executed ones itself; moto lists them)
        summaries = boto3.client("cloudformation", region_name=region).list_change_sets(
            StackName=stack_name(prefix, region))["Summaries"]
        assert [s["ExecutionStatus"] for s in summaries] == ["EXECUTE_COMPLETE"]

    # --- a changed plan: only the diff changes ------------------------------------------------
    changed = apply_cloudformation("plan-b", settings, execute=True, stack_prefix=prefix)
    assert changed.stacks["eu-west-1"].status == "NO_CHANGES"
    us = changed.stacks["us-east-1"]
    assert us.changes == {"Add": 4, "Modify": 1, "Remove": 0}
    modified = [r["logical_id"] for r in us.resources if r["action"] == "Modify"]
    assert len(modified) == 1 and modified[0].startswith("LineC5XlargeSpot")
    added = {r["type"] for r in us.resources if r["action"] == "Add"}
    assert added == {"AWS::EC2::LaunchTemplate", "AWS::AutoScaling::AutoScalingGroup",
                     "AWS::AutoScaling::WarmPool", "AWS::AutoScaling::ScheduledAction"}
    assert _group_sizes(prefix, "us-east-1") == {"us-east-1/m5.large/on_demand": 3, "us-east-1/c5.xlarge/spot": 6,
                                                 "us-east-1/c5.large/on_demand": 1}
    after = {region: _physical(prefix, region) for region in REGIONS}
    assert after["eu-west-1"] == ids_before["eu-west-1"]
    unchanged_us = {k: v for k, v in ids_before["us-east-1"].items() if not k.startswith("LineC5XlargeSpot")}
    assert {k: after["us-east-1"][k] for k in unchanged_us} == unchanged_us
    assert changed.capacity_reservations["changes"]["created"] == ["us-east-1/c5.large/on_demand"]
    assert changed.capacity_reservations["unchanged"] == 2
    assert changed.peering["unchanged"] == 1
    assert applied_plan_id(settings) == "plan-b"

    # --- a region leaves the plan: its stack, peering and reservations go -------------------
    shrunk = apply_cloudformation("plan-d", settings, execute=True, stack_prefix=prefix)
    assert shrunk.stacks["eu-west-1"].action == "delete"
    assert shrunk.stacks["us-east-1"].changes["Remove"] == 1  # the transit gateway: no pair left
    assert set(_stacks(prefix)) == {"us-east-1"}
    assert _peerings(prefix) == {}
    assert shrunk.peering["removed"] == 1
    assert shrunk.capacity_reservations["changes"]["removed"] == ["eu-west-1/r5.large/on_demand"]
    assert set(lake.read_json(ledger.uri)) == {"us-east-1"}
    assert applied_plan_id(settings) == "plan-d"

    # --- a failing apply: recorded, APPLIED stays on the last good plan ------------------------
    with pytest.raises(ApplyFailed) as excinfo:
        apply_cloudformation("plan-e", settings, execute=True, stack_prefix=prefix)
    assert "m5.mega" in str(excinfo.value)
    failed = _manifest(settings, "plan-e")["apply"]
    assert failed["status"] == "apply_failed"
    assert "m5.mega" in failed["error"]
    assert [h["status"] for h in _manifest(settings, "plan-e")["apply_history"]] == ["apply_failed"]
    assert applied_plan_id(settings) == "plan-d"
    assert _manifest(settings, "plan-d")["apply"]["status"] == "applied"
    # Reservations are reconciled only after every stack succeeded: the ledger still holds plan D's.
    assert set(lake.read_json(ledger.uri)["us-east-1"]) == {"us-east-1/m5.large/on_demand", "us-east-1/c5.large/on_demand"}

    # --- no credentials anywhere: rendered files, manifests, ledger, logs, output ---------------
    written = [p.read_text() for p in Path(settings.build_root).rglob("*") if p.is_file()]
    s3 = boto3.client("s3", region_name="us-east-1")
    bucket, prefix_key = settings.lake_root[len("s3://"):].split("/", 1)
    for item in s3.list_objects_v2(Bucket=bucket, Prefix=prefix_key)["Contents"]:
        written.append(s3.get_object(Bucket=bucket, Key=item["Key"])["Body"].read().decode("utf-8", "replace"))
    captured = capsys.readouterr()
    assert len(written) > 10 and caplog.records
    for text in [*written, caplog.text, captured.out, captured.err]:
        assert TEST_SECRET not in text


def test_capacity_reservation_api_is_not_on_the_loopback_server(aws_env) -> None:
    """The documented limitation that makes tests use the ledger provider. If this starts failing,
    moto implements the API: switch the tests to the EC2 provider."""
    from botocore.config import Config

    ec2 = boto3.client("ec2", region_name="us-east-1", config=Config(retries={"max_attempts": 1, "mode": "standard"}))
    with pytest.raises(Exception) as excinfo:  # moto raises NotImplementedError: an HTTP 500 page
        ec2.create_capacity_reservation(InstanceType="m5.large", InstancePlatform="Linux/UNIX",
                                        AvailabilityZone="us-east-1a", InstanceCount=1)
    assert "500 Internal Server Error" in str(excinfo.value)
    ec2.describe_transit_gateways()  # the server itself is fine: only this API is missing


def test_dry_run_of_a_plan_that_does_not_exist(deployment: tuple[Settings, str]) -> None:
    settings, prefix = deployment
    with pytest.raises(FileNotFoundError, match="plan-missing"):
        apply_cloudformation("plan-missing", settings, stack_prefix=prefix)


def test_deployment_file_drives_the_apply(deployment: tuple[Settings, str]) -> None:
    """What is applied is exactly the rendered, checkable files."""
    settings, prefix = deployment
    _publish(settings, "plan-a", PLAN_A)
    apply_cloudformation("plan-a", settings, stack_prefix=prefix)
    deployment_file = Path(settings.build_root) / "iac" / "plan-a" / "cloudformation" / "deployment.json"
    payload = json.loads(deployment_file.read_text())
    assert payload["plan_id"] == "plan-a"
    assert [s["region"] for s in payload["stacks"]] == list(REGIONS)


def test_ec2_reservation_requests_match_the_ec2_api() -> None:
    """The EC2 provider cannot run against the loopback server; its requests are at least checked
    against botocore's model of the EC2 API (names, types, required members)."""
    from botocore.session import get_session
    from botocore.validate import validate_parameters

    from pipeline.iac.providers import create_reservation_params, modify_reservation_params

    model = get_session().get_service_model("ec2")
    row = {"key": "us-east-1/m5.large/on_demand", "line_id": "us-east-1/20260129T0000Z/m5.large/on_demand",
           "plan_id": "plan-a", "region": "us-east-1", "instance_type": "m5.large", "instance_count": 3,
           "availability_zone": "us-east-1a", "end_date": "2026-01-29T01:00:00Z"}
    create = create_reservation_params(row, "peerscale")
    validate_parameters(create, model.operation_model("CreateCapacityReservation").input_shape)
    validate_parameters(modify_reservation_params("cr-0123456789abcdef0", row),
                        model.operation_model("ModifyCapacityReservation").input_shape)
    assert create["EndDate"].isoformat() == "2026-01-29T01:00:00+00:00"
    tags = {t["Key"]: t["Value"] for t in create["TagSpecifications"][0]["Tags"]}
    assert tags["plan_id"] == "plan-a" and tags["peerscale-stack"] == "peerscale"
