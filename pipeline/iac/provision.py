"""Gated, automated provisioning of a published plan (the hourly DAG's ``gate`` → ``approval`` → ``apply``).

1. :func:`gate_plan` diffs the plan against the applied one (:mod:`pipeline.publish.diff`) and runs
   the policy gate (:mod:`pipeline.iac.gate`); the text it returns is what a person sees when the
   gate sends the change to approval (Airflow's human-in-the-loop operator).
2. :func:`provision` applies the plan's provisioned span (its windows up to the next hourly run:
   the first window of an hourly plan; :mod:`pipeline.iac.model`) when the gate passed or a person approved,
   and records nothing else when a person rejected (or nobody answered in time). A dry run never
   asks: it shows what the apply would do, with the gate's verdict. Every outcome goes into the plan's apply
   records (merged into its manifest) under ``provisioning``:
   ``applied`` (gate passed, applied), ``approved`` (a person approved, applied), ``rejected``,
   ``failed`` (the apply raised), or ``dry_run`` (the decision, without changing anything).
   ``plans/APPLIED`` moves only on a successful, executed apply (the appliers move it).
   On-premise regions (:mod:`pipeline.iac.onprem`) are sent to the site over AMQP first; their
   replies go into the record under ``onprem``, and a failed region stops the cloud apply.

``PEERSCALE_APPLY``: ``dry-run`` (the default, laptop mode) records the gate's decision and touches
no cloud API; ``plan`` also asks the engine what it would change (terraform plan / change set
preview; needs credentials); ``execute`` applies. ``PEERSCALE_APPLY_ENGINE`` is ``terraform`` or ``cloudformation`` (default:
Terraform when a binary is installed, else CloudFormation; stacks are named
``<PEERSCALE_STACK_PREFIX>-<region>``, default ``peerscale``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from pipeline.common.config import Settings
from pipeline.iac.apply import DEFAULT_STACK_PREFIX, ApplyFailed, ApplyResult, _now, applied_plan_id, apply_cloudformation, record_apply
from pipeline.iac.gate import GatePolicy, evaluate_gate
from pipeline.iac.render import load_plan
from pipeline.iac.safety import check_plan_id, redact
from pipeline.publish.diff import diff_plans, format_diff

__all__ = ["APPLY_MODE_ENV", "ENGINE_ENV", "apply_mode", "gate_plan", "provision"]

APPLY_MODE_ENV = "PEERSCALE_APPLY"
ENGINE_ENV = "PEERSCALE_APPLY_ENGINE"
STACK_PREFIX_ENV = "PEERSCALE_STACK_PREFIX"  # CloudFormation stacks <prefix>-<region>
APPROVE = "Approve"  # the option of airflow's ApprovalOperator / HITLOperator


APPLY_MODES = ("dry-run", "plan", "execute")


def apply_mode() -> str:
    """``dry-run`` (default: nothing is asked of a cloud), ``plan`` or ``execute``."""
    mode = os.environ.get(APPLY_MODE_ENV, "").strip().lower() or "dry-run"
    if mode not in APPLY_MODES:
        raise ValueError(f"{APPLY_MODE_ENV} must be one of {', '.join(APPLY_MODES)}, not {mode!r}")
    return mode


def _engine() -> str:
    engine = os.environ.get(ENGINE_ENV, "").strip().lower()
    if engine in ("terraform", "cloudformation"):
        return engine
    if engine:
        raise ValueError(f"{ENGINE_ENV} must be terraform or cloudformation, not {engine!r}")
    from pipeline.iac.tfapply import find_terraform

    return "terraform" if find_terraform() else "cloudformation"


def _rows(settings: Settings, plan_id: str) -> Any:
    return load_plan(settings, plan_id)[0].to_pandas()


def gate_plan(plan_id: str, settings: Settings, policy: GatePolicy | None = None) -> dict[str, Any]:
    """The diff against ``plans/APPLIED`` and the gate's decision, recorded and returned (XCom-sized)."""
    check_plan_id(plan_id)
    policy = policy or GatePolicy.from_env()
    applied = applied_plan_id(settings)
    old_rows = _rows(settings, applied) if applied else None
    diff = diff_plans(old_rows, _rows(settings, plan_id), applied, plan_id)
    decision = evaluate_gate(diff, policy)
    text = format_diff(diff)
    if not decision.passed:
        text += "\n\nThe policy gate asks a person because:\n" + "\n".join(f"- {r}" for r in decision.reasons)
    record = {"status": "gated", "applied_plan_id": applied, "gate": decision.to_dict(), "diff": diff["totals"],
              "mode": apply_mode(), "gated_at": _now()}
    record_apply(settings, plan_id, record, key="provisioning")
    # A dry run changes nothing, so nobody is asked (laptop and demo runs never wait for a person).
    needs_approval = not decision.passed and apply_mode() == "execute"
    return {"plan_id": plan_id, "applied_plan_id": applied, "passed": decision.passed, "reasons": list(decision.reasons),
            "needs_approval": needs_approval,
            "subject": f"Provision plan {plan_id}?" + ("" if decision.passed else " (outside the policy gate)"),
            "text": text}


def _apply(plan_id: str, settings: Settings, execute: bool, engine: str) -> ApplyResult:
    if engine == "terraform":
        from pipeline.iac.tfapply import apply_terraform

        return apply_terraform(plan_id, settings, execute=execute)
    prefix = os.environ.get(STACK_PREFIX_ENV, "").strip() or DEFAULT_STACK_PREFIX
    return apply_cloudformation(plan_id, settings, execute=execute, stack_prefix=prefix)


def _onprem(plan_id: str, settings: Settings) -> dict[str, Any]:
    """Send the plan's on-premise regions to the site first: a failure stops before any cloud change."""
    from pipeline.iac.model import build_model
    from pipeline.iac.onprem import OnPremConfig, OnPremProvider
    from pipeline.iac.render import zones_per_region

    config = OnPremConfig.from_env()
    plan, manifest = load_plan(settings, plan_id)
    regions = sorted(set(plan.column("region").to_pylist()) & config.regions)
    if not regions:
        return {}
    model = build_model(plan, manifest, zones_per_region=zones_per_region(settings))
    results = OnPremProvider(config).provision(model, [r for r in regions if model.lines_in(r)])
    failed = {r: v["status"] for r, v in results.items() if not v["ok"]}
    if failed:
        record_apply(settings, plan_id, {"status": "apply_failed", "engine": "onprem", "finished_at": _now(),
                                         "onprem": results, "error": f"on-premise regions failed: {failed}"})
        raise ApplyFailed(f"on-premise provisioning failed: {failed} (see onprem in the apply records)")
    return results


def provision(
    plan_id: str, settings: Settings, gate: Mapping[str, Any], approval: str | None = None, responder: str | None = None
) -> dict[str, Any]:
    """Apply (or dry-run) ``plan_id`` when ``gate`` passed or ``approval`` is Approve; record the outcome.

    ``approval`` is the option a person chose (``Approve``/``Reject``; ``None`` when nobody was
    asked). Raises what the applier raised after recording ``failed``.
    """
    check_plan_id(plan_id)
    if gate.get("plan_id") != plan_id:
        raise ValueError(f"gate decision is for plan {gate.get('plan_id')!r}, not {plan_id!r}")
    execute = apply_mode() == "execute"
    if gate.get("passed"):
        decision = "auto"
    elif approval == APPROVE:
        decision = "approved"
    elif approval is None and not execute:
        decision = "not_asked"  # outside the gate, but a dry run: shown, not applied
    else:
        decision = "rejected"
    record: dict[str, Any] = {"applied_plan_id": gate.get("applied_plan_id"), "gate": {"passed": bool(gate.get("passed")),
                              "reasons": list(gate.get("reasons", []))}, "decision": decision, "responder": responder,
                              "mode": apply_mode(), "decided_at": _now()}
    if decision == "rejected":
        record.update(outcome="rejected", finished_at=_now())
        record_apply(settings, plan_id, record, key="provisioning")
        return record
    if apply_mode() == "dry-run":
        record.update(outcome="dry_run", finished_at=_now())
        record_apply(settings, plan_id, record, key="provisioning")
        return record
    engine = _engine()
    record["engine"] = engine
    try:
        if execute:
            record["onprem"] = _onprem(plan_id, settings)
        result = _apply(plan_id, settings, execute, engine)
    except (ApplyFailed, RuntimeError, OSError) as exc:
        record.update(outcome="failed", error=redact(str(exc))[-2000:], finished_at=_now())
        record_apply(settings, plan_id, record, key="provisioning")
        raise
    outcome = ("applied" if decision == "auto" else "approved") if execute else "dry_run"
    record.update(outcome=outcome, apply_status=result.status, finished_at=_now())
    record_apply(settings, plan_id, record, key="provisioning")
    return record
