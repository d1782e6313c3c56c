"""The Terraform render and applier with the real ``terraform`` binary against the moto server.

The machine image carries terraform and the hashicorp/aws provider in a local plugin directory
(``init -plugin-dir``, offline). Both tests skip cleanly where either is missing.

1. Every rendered root passes ``terraform fmt -check`` and ``validate``, and holds the fixed module
   byte for byte: no plan value is in HCL.
2. One plan's life through the applier, state in S3 (moto) with locking: dry run → first apply →
   re-apply with zero changes → a changed plan (only its diff changes) → a plan without one
   region (that region is emptied). Capacity reservations are off (moto lacks the API) and
   peering roots are left out (moto cannot accept a peering attachment across regions); both
   are still validated in test 1.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import boto3
import pytest

from pipeline.common.config import Settings
from pipeline.iac.apply import applied_plan_id, read_apply_records
from pipeline.iac.render import render_plan
from pipeline.iac.tfapply import apply_terraform, find_terraform, terraform_checks
from tests.moto_server import aws_env, moto_server, s3_bucket  # noqa: F401
from tests.test_iac_apply import PLAN_A, PLAN_B, PLAN_D, _publish

MODULES = Path(__file__).resolve().parent.parent / "pipeline" / "iac" / "terraform_templates" / "aws"
PLUGIN_DIRS = (os.environ.get("PEERSCALE_TF_PLUGIN_DIR", ""), "/opt/tf-plugins")


def _plugin_dir() -> str | None:
    for candidate in PLUGIN_DIRS:
        if candidate and any(Path(candidate).glob("registry.terraform.io/hashicorp/aws/*/*/terraform-provider-aws*")):
            return candidate
    return None


pytestmark = [
    pytest.mark.terraform,
    pytest.mark.skipif(find_terraform() is None, reason="no terraform binary on PATH"),
    pytest.mark.skipif(_plugin_dir() is None, reason="no local hashicorp/aws provider directory"),
]


@pytest.fixture()
def offline_terraform(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PEERSCALE_TF_PLUGIN_DIR", str(_plugin_dir()))
    monkeypatch.setenv("TF_CLI_CONFIG_FILE", os.devnull)
    for name in ("PEERSCALE_TERRAFORM", "PEERSCALE_TF_BACKEND", "PEERSCALE_TF_STATE_DIR", "PEERSCALE_TF_VAR_FILE",
                 "PEERSCALE_AZ_PER_REGION"):
        monkeypatch.delenv(name, raising=False)


def test_every_root_is_the_fixed_module_and_passes_fmt_and_validate(
    tmp_path: Path, offline_terraform: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PEERSCALE_AZ_PER_REGION", "2")
    settings = Settings(source_root=str(tmp_path / "src"), lake_root=str(tmp_path / "lake"), build_root=str(tmp_path / "build"))
    _publish(settings, "plan-a", PLAN_A)
    out = Path(render_plan("plan-a", settings)["terraform_dir"])
    roots = sorted(str(p.parent.relative_to(out)) for p in out.glob("*/*/versions.tf"))
    assert roots == ["peering/eu_west_1__us_east_1", "regions/eu-west-1", "regions/us-east-1"]
    for root in roots:
        module = MODULES / ("region" if root.startswith("regions/") else "peering")
        for tf in (out / root).glob("*.tf"):
            assert tf.read_bytes() == (module / tf.name).read_bytes(), f"{root}/{tf.name} differs from the module"
    tfvars = json.loads((out / "regions/us-east-1/plan.auto.tfvars.json").read_text())
    line = tfvars["lines"]["m5.large/on_demand"]
    assert line["count"] == 3 and line["zone_counts"] == {"us-east-1a": 2, "us-east-1b": 1}
    assert tfvars["plan_id"] == "plan-a" and tfvars["transit_gateway"] is True
    report = terraform_checks(out)
    assert report == {"fmt": [], "validate": {}}, report


def _var_file(tmp_path: Path, endpoint: str) -> Path:
    image = boto3.client("ec2", region_name="us-east-1").describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
    path = tmp_path / "operator.tfvars.json"
    path.write_text(json.dumps({
        "endpoints": dict.fromkeys(("autoscaling", "ec2", "ssm", "sts"), endpoint),
        "capacity_reservations": False,
        "image_id": image,
    }))
    return path


def _counts(settings: Settings, plan_id: str) -> dict[str, dict[str, int]]:
    plan = read_apply_records(settings, plan_id)["terraform_plan"]
    return {root: summary["counts"] for root, summary in plan["roots"].items()} | {"total": plan["counts"]}


def _group_sizes(bucket: str, region: str) -> dict[str, int]:
    """Desired capacity per line, from the root's state in S3, confirmed against the ASG API."""
    state = json.loads(boto3.client("s3").get_object(Bucket=bucket, Key=f"team/regions/{region}.tfstate")["Body"].read())
    names = {inst["index_key"]: inst["attributes"]["name"]
             for res in state["resources"] if res["type"] == "aws_autoscaling_group" for inst in res["instances"]}
    if not names:
        return {}
    groups = boto3.client("autoscaling", region_name=region).describe_auto_scaling_groups(
        AutoScalingGroupNames=list(names.values()))["AutoScalingGroups"]
    by_name = {g["AutoScalingGroupName"]: g["DesiredCapacity"] for g in groups}
    return {key: by_name[name] for key, name in names.items()}


def _updated(settings: Settings, plan_id: str) -> list[str]:
    plan = read_apply_records(settings, plan_id)["terraform_plan"]
    return [f"{root}:{c['address']}" for root, summary in plan["roots"].items() for c in summary["changes"] if c["action"] == "update"]


def _changes(counts: dict[str, int]) -> int:
    return sum(counts[k] for k in ("create", "update", "delete", "replace"))


@pytest.mark.terraform_apply
def test_apply_sequence_against_moto(
    tmp_path: Path, offline_terraform: None, s3_bucket: str, aws_env: Any, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("PEERSCALE_TF_VAR_FILE", str(_var_file(tmp_path, aws_env.endpoint)))
    monkeypatch.setenv("PEERSCALE_TF_BACKEND", "s3")
    monkeypatch.setenv("PEERSCALE_TF_STATE_BUCKET", s3_bucket)
    monkeypatch.setenv("PEERSCALE_TF_STATE_PREFIX", "team")
    monkeypatch.setenv("PEERSCALE_TF_STATE_ENDPOINT", aws_env.endpoint)
    settings = Settings(source_root=str(tmp_path / "src"), lake_root=str(tmp_path / "lake"), build_root=str(tmp_path / "build"))
    for plan_id, lines in (("plan-a", PLAN_A), ("plan-b", PLAN_B), ("plan-d", PLAN_D)):
        _publish(settings, plan_id, lines)
    figures: dict[str, dict[str, int]] = {}

    dry = apply_terraform("plan-a", settings, execute=False, peering=False)
    assert dry.status == "planned" and applied_plan_id(settings) is None
    assert _counts(settings, "plan-a")["total"]["create"] > 0

    assert apply_terraform("plan-a", settings, execute=True, peering=False).status == "applied"
    first = figures["first apply (plan-a)"] = _counts(settings, "plan-a")["total"]
    # Per region: 1 hub + per line a launch template, a group and a window-end schedule.
    assert first["create"] == 2 * (1 + 3 * 2) and first["update"] == first["delete"] == 0
    assert _group_sizes(s3_bucket, "us-east-1") == {"m5.large/on_demand": 3, "c5.xlarge/spot": 4}
    assert applied_plan_id(settings) == "plan-a"

    apply_terraform("plan-a", settings, execute=True, peering=False)
    again = figures["re-apply (plan-a)"] = _counts(settings, "plan-a")["total"]
    assert _changes(again) == 0, again

    apply_terraform("plan-b", settings, execute=True, peering=False)
    changed = _counts(settings, "plan-b")
    figures["changed plan (plan-b)"] = changed["total"]
    assert _updated(settings, "plan-b") == ['regions/us-east-1:aws_autoscaling_group.line["c5.xlarge/spot"]']  # 4 → 6
    # Only the diff changes: no tag carries the plan id, so eu-west-1 is untouched.
    assert _changes(changed["regions/eu-west-1"]) == 0
    assert changed["regions/us-east-1"]["create"] == 3  # c5.large/on_demand: template, group, schedule
    assert changed["regions/us-east-1"]["delete"] == changed["regions/eu-west-1"]["delete"] == 0
    assert changed["total"]["replace"] == 0
    assert _group_sizes(s3_bucket, "us-east-1") == {"m5.large/on_demand": 3, "c5.xlarge/spot": 6, "c5.large/on_demand": 1}
    assert _group_sizes(s3_bucket, "eu-west-1") == {"r5.large/on_demand": 2, "m5.large/spot": 3}

    apply_terraform("plan-d", settings, execute=True, peering=False)
    removed = figures["region removed (plan-d)"] = _counts(settings, "plan-d")["total"]
    updated_d = _updated(settings, "plan-d")
    # moto, unlike AWS, drops a group's mixed instances policy when the group is resized (plan-b), so
    # the next plan puts it back: the one update here. Nothing else in us-east-1 changes.
    assert updated_d == ['regions/us-east-1:aws_autoscaling_group.line["c5.xlarge/spot"]']
    assert _counts(settings, "plan-d")["regions/eu-west-1"]["delete"] == 7
    assert _group_sizes(s3_bucket, "eu-west-1") == {}
    assert applied_plan_id(settings) == "plan-d"
    with capsys.disabled():
        for step, counts in figures.items():
            print(f"\n[terraform] {step}: created {counts['create']}, changed {counts['update']}, "
                  f"replaced {counts['replace']}, destroyed {counts['delete']}")
        print(f"[terraform] updated by plan-d: {updated_d}")
    assert removed["create"] == 0
