"""Render a plan as CloudFormation: one stack template per region, plus ``deployment.json``.

The same :class:`~pipeline.iac.model.InfraModel` as the Terraform renderer, so both describe the
same infrastructure, with two differences forced by CloudFormation being regional:

* **capacity reservations** are not in the templates: the applier reconciles them through a
  :class:`~pipeline.iac.providers.CapacityReservationProvider` (the EC2 API on AWS; a ledger where
  the API is not available, e.g. the loopback test server, which does not implement them);
* **peering** between two regions' transit gateways spans two stacks, so the templates only hold
  each region's transit gateway (its id is a stack output) and the applier creates and accepts
  the peering attachments through the EC2 API (:class:`~pipeline.iac.providers.TransitGatewayPeering`).

``deployment.json`` lists the stacks, the planned pairs and the capacity reservations (the span's
per-zone minimum, see :mod:`pipeline.iac.model`): the applier works from it and the templates
alone, never from the plan directly.

A sub-hour plan's later windows become ``AWS::AutoScaling::ScheduledAction`` resources on the
line's group (``<line>Window<yyyymmddhhmmss>``, after the start time, desired = min size = the window's
instances, max size the group's), like the Terraform module's ``aws_autoscaling_schedule.window``.
Warm pools have no scheduled action in AWS: a pool holds the span's largest warm pool.

Templates do not carry the plan id: a region whose lines did not change renders byte-identical
and its change set is empty. The plan id travels as a *stack tag*, which CloudFormation
propagates to every taggable resource of the stack.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from pipeline.iac.model import InfraLine, InfraModel, InfraRegion, build_model
from pipeline.iac.terraform import DEFAULT_AMI_SSM_PARAMETER, publish_dir

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["DEPLOYMENT_FILE", "render_cloudformation", "render_cloudformation_model", "template_file"]

DEPLOYMENT_FILE = "deployment.json"
TRANSIT_GATEWAY = "TransitGateway"


def template_file(region: str) -> str:
    return f"{region}.template.json"


def _tags(line: InfraLine) -> list[dict[str, str]]:
    return [
        {"Key": "line_key", "Value": line.key},
        {"Key": "peerscale", "Value": "true"},
        {"Key": "purchase_option", "Value": line.purchase_option},
    ]


def _launch_template(line: InfraLine) -> dict[str, Any]:
    data: dict[str, Any] = {
        "ImageId": {"Ref": "ImageId"},
        "InstanceType": line.instance_type,
        "EbsOptimized": True,
        "Monitoring": {"Enabled": True},
        "MetadataOptions": {"HttpEndpoint": "enabled", "HttpTokens": "required"},
        "TagSpecifications": [
            {"ResourceType": "instance", "Tags": _tags(line)},
            {"ResourceType": "volume", "Tags": _tags(line)},
        ],
    }
    if line.storage_gib > 0:
        data["BlockDeviceMappings"] = [{
            "DeviceName": "/dev/sdf",
            "Ebs": {"VolumeSize": line.storage_gib, "VolumeType": "gp3", "Encrypted": True,
                    "DeleteOnTermination": True},
        }]
    if line.purchase_option == "on_demand":
        data["CapacityReservationSpecification"] = {"CapacityReservationPreference": "open"}
    return {
        "Type": "AWS::EC2::LaunchTemplate",
        "Properties": {
            "LaunchTemplateData": data,
            "TagSpecifications": [{"ResourceType": "launch-template", "Tags": _tags(line)}],
        },
    }


def _zone_parameter(line: InfraLine, default_zone: str) -> dict[str, Any] | None:
    """A line's own zone-list parameter (defaulting to the plan's zones over the span), or None for a
    line only in the region's default zone, which uses the stack's AvailabilityZone parameter.
    Parameters, not literal names: an operator whose account maps zones differently can pass others."""
    names = list(line.availability_zones)
    if names in ([], [default_zone]):
        return None
    # A comma-separated String split in the group (not a List<...> parameter, which moto's
    # CloudFormation reads as one string), its pattern checking every name.
    zone = re.escape(line.region) + "[a-z]"
    return {"Type": "String", "Default": ",".join(names), "AllowedPattern": f"^{zone}(,{zone})*$",
            "Description": f"Availability zones of {line.key}, comma-separated (the plan's per-zone counts are in deployment.json)."}


def _group(line: InfraLine, default_zone: str) -> dict[str, Any]:
    template_ref = {
        "LaunchTemplateId": {"Ref": f"{line.logical_id}LaunchTemplate"},
        "Version": {"Fn::GetAtt": [f"{line.logical_id}LaunchTemplate", "LatestVersionNumber"]},
    }
    properties: dict[str, Any] = {
        "MinSize": "0",
        "MaxSize": str(line.max_size),
        "DesiredCapacity": str(line.instances),  # the first window's count plus its N+1-across-zones headroom
        "AvailabilityZones": ([{"Ref": "AvailabilityZone"}] if _zone_parameter(line, default_zone) is None
                              else {"Fn::Split": [",", {"Ref": f"{line.logical_id}Zones"}]}),
        "Tags": [dict(tag, PropagateAtLaunch=True) for tag in _tags(line)],
    }
    if line.purchase_option == "spot":
        properties["CapacityRebalance"] = True
        properties["MixedInstancesPolicy"] = {
            "InstancesDistribution": {
                "OnDemandBaseCapacity": 0,
                "OnDemandPercentageAboveBaseCapacity": 0,
                "SpotAllocationStrategy": "price-capacity-optimized",
            },
            "LaunchTemplate": {
                "LaunchTemplateSpecification": template_ref,
                "Overrides": [{"InstanceType": line.instance_type}],
            },
        }
    else:
        properties["LaunchTemplate"] = template_ref
    return {"Type": "AWS::AutoScaling::AutoScalingGroup", "Properties": properties}


def _parameters(region: InfraRegion, lines: list[InfraLine]) -> dict[str, Any]:
    """The stack's parameters: the AMI, the default zone (when a line, or no line, uses it), each
    multi-zone line's zones, and the warm pools' state."""
    zones = {f"{line.logical_id}Zones": p for line in lines
             if (p := _zone_parameter(line, region.default_availability_zone)) is not None}
    out: dict[str, Any] = {"ImageId": {
        "Type": "AWS::SSM::Parameter::Value<AWS::EC2::Image::Id>",
        "Default": DEFAULT_AMI_SSM_PARAMETER,
        "Description": "AMI for the launch templates (a public SSM parameter, or pass an AMI parameter path).",
    }}
    if len(zones) < len(lines) or not lines:
        out["AvailabilityZone"] = {
            "Type": "String",
            "Default": region.default_availability_zone,
            "AllowedPattern": f"^{region.name}[a-z]$",
            "Description": "Availability zone of the single-zone groups (and of their capacity reservations).",
        }
    out.update(sorted(zones.items()))
    out["WarmPoolState"] = {
        "Type": "String",
        "Default": "Stopped",
        "AllowedValues": ["Stopped", "Running", "Hibernated"],
        "Description": "State of warm-pool instances next to on-demand groups.",
    }
    return out


def _region_template(model: InfraModel, region: InfraRegion) -> dict[str, Any]:
    lines = model.lines_in(region.name)
    resources: dict[str, Any] = {}
    outputs: dict[str, Any] = {}
    if region.has_transit_gateway:
        resources[TRANSIT_GATEWAY] = {
            "Type": "AWS::EC2::TransitGateway",
            "Properties": {
                "Description": f"peerscale peering hub {region.name}",
                "AutoAcceptSharedAttachments": "disable",
                "DefaultRouteTableAssociation": "enable",
                "DefaultRouteTablePropagation": "enable",
                "DnsSupport": "enable",
                "Tags": [{"Key": "Name", "Value": f"peerscale-{region.name}"}, {"Key": "peerscale", "Value": "true"}],
            },
        }
        outputs["TransitGatewayId"] = {
            "Description": "Transit gateway the applier peers with other regions.",
            "Value": {"Ref": TRANSIT_GATEWAY},
        }
    for line in lines:
        lid = line.logical_id
        resources[f"{lid}LaunchTemplate"] = _launch_template(line)
        resources[f"{lid}Group"] = _group(line, region.default_availability_zone)
        if line.warm_pool > 0:
            resources[f"{lid}WarmPool"] = {
                "Type": "AWS::AutoScaling::WarmPool",
                "Properties": {
                    "AutoScalingGroupName": {"Ref": f"{lid}Group"},
                    "MinSize": line.warm_pool,
                    "MaxGroupPreparedCapacity": line.max_size,
                    "PoolState": {"Ref": "WarmPoolState"},
                    "InstanceReusePolicy": {"ReuseOnScaleIn": True},
                },
            }
        resources.update(_window_actions(line))
        resources[f"{lid}WindowEnd"] = {
            "Type": "AWS::AutoScaling::ScheduledAction",
            "Properties": {
                "AutoScalingGroupName": {"Ref": f"{lid}Group"},
                "MinSize": 0,
                "MaxSize": 0,
                "DesiredCapacity": 0,
                "StartTime": line.valid_to,
            },
        }
        outputs[f"{lid}GroupName"] = {"Description": f"Auto scaling group of {line.key}", "Value": {"Ref": f"{lid}Group"}}
    if not resources:
        # A stack needs at least one resource; a region whose lines are all zero keeps a marker.
        resources["NoCapacity"] = {"Type": "AWS::CloudFormation::WaitConditionHandle", "Properties": {}}
    return {
        "AWSTemplateFormatVersion": "2010-09-09",
        "Description": (
            f"peerscale pre-allocated capacity in {region.name}: auto scaling groups per plan line"
            + (" and the region's peering transit gateway" if region.has_transit_gateway else "")
            + ". Capacity reservations and peering attachments are managed by the peerscale applier."
        ),
        "Metadata": {"peerscale": {"region": region.name, "lines": [line.key for line in lines]}},
        "Parameters": _parameters(region, lines),
        "Resources": resources,
        "Outputs": outputs,
    }


def _window_actions(line: InfraLine) -> dict[str, Any]:
    """The line's scheduled sizes (sub-hour plans: each later window whose instances differ from the
    window before), named by start time: each plan's actions are new ones, and one that already ran
    is not updated in place."""
    return {
        f"{line.logical_id}Window{re.sub('[^0-9]', '', start)}": {
            "Type": "AWS::AutoScaling::ScheduledAction",
            "Properties": {
                "AutoScalingGroupName": {"Ref": f"{line.logical_id}Group"},
                "MinSize": desired,
                "MaxSize": line.max_size,
                "DesiredCapacity": desired,
                "StartTime": start,
            },
        }
        for start, desired in line.schedule
    }


def _deployment(model: InfraModel) -> dict[str, Any]:
    return {
        "plan_id": model.plan_id,
        "window": {"valid_from": model.valid_from, "valid_to": model.valid_to},
        "stacks": [{"region": r.name, "template": template_file(r.name)} for r in model.regions],
        "peering": {
            "source": model.peering_source,
            "pairs": [
                {"requester": p.requester, "accepter": p.accepter, "expected_requests": p.expected_requests}
                for p in model.peering
            ],
        },
        "capacity_reservations": [row for line in model.lines if line.purchase_option == "on_demand"
                                  for row in _reservations(model, line)],
        "stack_tags": {"peerscale": "true", "plan_id": model.plan_id},
    }


def _reservations(model: InfraModel, line: InfraLine) -> list[dict[str, Any]]:
    """One capacity reservation per zone of an on-demand line holding the span's minimum there (keyed
    ``<line key>/<zone>`` over several zones; a line in one zone keeps its line key, so existing
    reservations are modified in place). None where that minimum is 0."""
    zones = list(line.reserved_zones) or [(model.region(line.region).default_availability_zone, line.reserved_count)]
    return [
        {
            "key": line.key if len(zones) == 1 else f"{line.key}/{zone}",
            "line_id": line.line_id,
            "plan_id": model.plan_id,
            "region": line.region,
            "instance_type": line.instance_type,
            "instance_count": count,
            "availability_zone": zone,
            "end_date": line.valid_to,
        }
        for zone, count in zones
        if count > 0
    ]


def _dump(payload: Mapping[str, Any]) -> str:
    return json.dumps(payload, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def render_cloudformation_model(model: InfraModel, out_dir: Path) -> list[Path]:
    """Render an already-validated model (see :func:`render_cloudformation`)."""
    files = {template_file(r.name): _dump(_region_template(model, r)) for r in model.regions}
    files[DEPLOYMENT_FILE] = _dump(_deployment(model))
    return publish_dir(files, out_dir)


def render_cloudformation(
    plan: pd.DataFrame | pa.Table,
    manifest: Mapping[str, Any],
    out_dir: Path,
    peering: Sequence[tuple[str, str, float | None]] | None = None,
    peering_source: str | None = None,
) -> list[Path]:
    """Render one CloudFormation template per plan region and ``deployment.json`` in ``out_dir``.

    Validation, determinism and the atomic directory swap are those of
    :func:`pipeline.iac.terraform.render_terraform`. Returns the written files, sorted.
    """
    model = build_model(plan, manifest, peering=peering, peering_source=peering_source)
    return render_cloudformation_model(model, out_dir)
