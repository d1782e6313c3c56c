"""Gated provisioning end to end against the loopback AWS (moto server), CloudFormation engine.

Both gate outcomes: a change within the policy is applied without asking; a change outside it
(a region removed) waits for a person — rejected, nothing changes and APPLIED stays; approved, it
is applied. Plus the laptop default (dry run) and a failing apply (outcome ``failed``).
"""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from pipeline.common.config import Settings
from pipeline.iac.apply import ApplyFailed, applied_plan_id, read_apply_records
from pipeline.iac.gate import GatePolicy, evaluate_gate
from pipeline.iac.providers import CAPACITY_PROVIDER_ENV
from pipeline.iac.provision import gate_plan, provision
from tests.moto_server import aws_env, moto_server, s3_bucket  # noqa: F401
from tests.test_iac_apply import PLAN_A, PLAN_D, PLAN_E, _publish, _stacks

pytestmark = [
    pytest.mark.filterwarnings("ignore:.*WarmPool.*not supported by moto:UserWarning"),
    pytest.mark.filterwarnings("ignore:.*does not match an error shape:UserWarning"),
]


@pytest.fixture()
def lake(s3_bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Settings, str]:
    prefix = f"g{uuid.uuid4().hex[:10]}"
    monkeypatch.setenv(CAPACITY_PROVIDER_ENV, "ledger")
    monkeypatch.setenv("PEERSCALE_APPLY_ENGINE", "cloudformation")
    monkeypatch.setenv("PEERSCALE_STACK_PREFIX", prefix)
    for name in ("PEERSCALE_APPLY", "PEERSCALE_GATE_MAX_SPEND_CHANGE", "PEERSCALE_GATE_MAX_CHURN",
                 "PEERSCALE_GATE_MAX_REGIONS_REMOVED", "PEERSCALE_GATE_BUDGET"):
        monkeypatch.delenv(name, raising=False)
    settings = Settings(source_root=str(tmp_path / "src"), lake_root=f"s3://{s3_bucket}/lake", build_root=str(tmp_path / "build"))
    for plan_id, lines in (("plan-a", PLAN_A), ("plan-d", PLAN_D), ("plan-e", PLAN_E)):
        _publish(settings, plan_id, lines)
    return settings, prefix


def _outcome(settings: Settings, plan_id: str) -> dict:
    return read_apply_records(settings, plan_id)["provisioning"]


def test_gate_outcomes_end_to_end(lake: tuple[Settings, str], monkeypatch: pytest.MonkeyPatch) -> None:
    settings, prefix = lake
    monkeypatch.setenv("PEERSCALE_APPLY", "execute")

    # 1. Nothing applied: 12 instances at 0.2 $/h each are within the default limits → applied, nobody asked.
    gate = gate_plan("plan-a", settings)
    assert gate["passed"] is True and gate["reasons"] == []
    assert provision("plan-a", settings, gate)["outcome"] == "applied"
    assert applied_plan_id(settings) == "plan-a" and set(_stacks(prefix)) == {"eu-west-1", "us-east-1"}

    # 2. plan-d drops eu-west-1: outside the gate; the approval text shows the diff and why.
    gate = gate_plan("plan-d", settings)
    assert gate["passed"] is False and gate["needs_approval"] is True and any("regions removed: eu-west-1" in r for r in gate["reasons"])
    assert "regions removed: eu-west-1" in gate["text"] and "asks a person because" in gate["text"]
    assert "us-east-1 c5.large on_demand: added 0 → 1" in gate["text"]
    rejected = provision("plan-d", settings, gate, approval="Reject", responder="ops")
    assert rejected["outcome"] == "rejected" and _outcome(settings, "plan-d")["responder"] == "ops"
    assert applied_plan_id(settings) == "plan-a" and set(_stacks(prefix)) == {"eu-west-1", "us-east-1"}

    approved = provision("plan-d", settings, gate, approval="Approve", responder="ops")
    assert approved["outcome"] == "approved" and approved["decision"] == "approved"
    assert applied_plan_id(settings) == "plan-d" and set(_stacks(prefix)) == {"us-east-1"}
    assert _outcome(settings, "plan-d")["outcome"] == "approved"

    # 3. A failing apply inside the gate: outcome failed, APPLIED stays.
    monkeypatch.setenv("PEERSCALE_GATE_MAX_SPEND_CHANGE", "100")
    gate = gate_plan("plan-e", settings)
    assert gate["passed"] is True
    with pytest.raises(ApplyFailed):
        provision("plan-e", settings, gate)
    assert _outcome(settings, "plan-e")["outcome"] == "failed" and "m5.mega" in _outcome(settings, "plan-e")["error"]
    assert applied_plan_id(settings) == "plan-d"


def test_laptop_default_is_a_dry_run(lake: tuple[Settings, str], monkeypatch: pytest.MonkeyPatch) -> None:
    settings, prefix = lake
    gate = gate_plan("plan-a", settings)
    record = provision("plan-a", settings, gate)
    assert record["outcome"] == "dry_run" and record["mode"] == "dry-run" and "engine" not in record
    assert applied_plan_id(settings) is None and _stacks(prefix) == {}
    monkeypatch.setenv("PEERSCALE_APPLY", "plan")  # the engine previews (change sets created, shown, deleted)
    record = provision("plan-a", settings, gate)
    assert (record["outcome"], record["apply_status"], record["engine"]) == ("dry_run", "planned", "cloudformation")
    assert applied_plan_id(settings) is None and _stacks(prefix) == {}
    monkeypatch.setenv("PEERSCALE_APPLY", "yes please")
    with pytest.raises(ValueError, match="PEERSCALE_APPLY must be one of"):
        provision("plan-a", settings, gate)
    monkeypatch.delenv("PEERSCALE_APPLY")
    with pytest.raises(ValueError, match="not 'plan-d'"):
        provision("plan-d", settings, gate)
    # Outside the gate in a dry run: nobody is asked, the apply is only shown.
    gate = gate_plan("plan-a", settings, GatePolicy(max_instance_churn=1))
    assert gate["passed"] is False and gate["needs_approval"] is False
    record = provision("plan-a", settings, gate)
    assert (record["decision"], record["outcome"]) == ("not_asked", "dry_run") and applied_plan_id(settings) is None


def test_gate_limits() -> None:
    totals = {"cost_delta": 3.0, "cost_new": 8.0, "churn": 5, "regions_removed": []}
    assert evaluate_gate({"totals": totals}, GatePolicy()).passed
    decision = evaluate_gate({"totals": {**totals, "cost_delta": -12.0}}, GatePolicy())
    assert not decision.passed and "spend changes by -12.00" in decision.reasons[0]
    assert not evaluate_gate({"totals": totals}, GatePolicy(max_instance_churn=4)).passed
    assert not evaluate_gate({"totals": totals}, GatePolicy(budget_per_hour=7.5)).passed
    assert evaluate_gate({"totals": {**totals, "regions_removed": ["x-1"]}}, GatePolicy(max_regions_removed=1)).passed
    policy = GatePolicy.from_env({"PEERSCALE_GATE_MAX_CHURN": "3", "PEERSCALE_GATE_BUDGET": "50"})
    assert (policy.max_instance_churn, policy.budget_per_hour) == (3, 50.0)
    with pytest.raises(ValueError, match="PEERSCALE_GATE_MAX_CHURN"):
        GatePolicy.from_env({"PEERSCALE_GATE_MAX_CHURN": "lots"})
    with pytest.raises(ValueError, match=">= 0"):
        GatePolicy(max_spend_change_per_hour=float("nan"))
