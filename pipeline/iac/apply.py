"""Apply a rendered plan through CloudFormation change sets (one stack per region).

``apply_cloudformation(plan_id, settings, execute=False)`` is a **dry run**: it renders the plan,
creates a change set per region stack, reports what each would add, modify and remove, and
deletes the change sets again (plus the empty stacks that a first preview leaves behind). Only
``execute=True`` changes anything, in this order:

1. change sets for every region are created and described first, so a template AWS rejects
   stops the apply before any stack changed;
2. peering attachments of pairs no longer planned are deleted (their transit gateway may go);
3. change sets are executed region by region and each stack is waited for; a stack whose lines
   did not change has an empty change set and is left alone (``NO_CHANGES``);
4. stacks of regions the previously applied plan had and this one has not are deleted;
5. peering attachments of new pairs are created and accepted (transit gateway ids are read from
   the stacks' outputs);
6. capacity reservations are reconciled through the capacity provider
   (:mod:`pipeline.iac.providers`).

The result is recorded in the plan's ``manifest.json`` under ``apply`` (atomic rewrite):
``status`` ``applying`` → ``applied`` or ``apply_failed`` (with the error), stack ids, change
counts per stack, peering and reservation changes. The manifest's own ``status`` (``published``)
is left alone: the IRC serves any published plan. ``<lake>/plans/APPLIED`` names the last plan
applied completely and moves only on success, after the manifest.

Errors are recorded with secret environment values redacted; credentials are never logged.
"""

from __future__ import annotations

import json
import logging
import re
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NoReturn

from pipeline.common import lake, storage
from pipeline.common.config import Settings
from pipeline.common.numeric import SECONDS_PER_HOUR
from pipeline.iac.cloudformation import DEPLOYMENT_FILE, TRANSIT_GATEWAY
from pipeline.iac.providers import (
    AwsClients,
    CapacityReservationProvider,
    ReconcileResult,
    TransitGatewayPeering,
    capacity_provider_from_env,
)
from pipeline.iac.render import render_plan
from pipeline.iac.safety import UnsafePlanValue, check_plan_id, check_region, redact

log = logging.getLogger(__name__)

__all__ = [
    "APPLIED_FILE",
    "ApplyFailed",
    "ApplyResult",
    "StackResult",
    "applied_plan_id",
    "applied_pointer",
    "apply_cloudformation",
    "read_apply_records",
    "record_apply",
    "stack_name",
]

APPLIED_FILE = "APPLIED"
DEFAULT_STACK_PREFIX = "peerscale"
_PREFIX = re.compile(r"^[a-z][a-z0-9-]{0,39}$")
_NO_CHANGES = ("didn't contain changes", "No updates are to be performed")
_STACK_OK = {"CREATE_COMPLETE", "UPDATE_COMPLETE", "IMPORT_COMPLETE"}
_STACK_EMPTY = {"REVIEW_IN_PROGRESS", "ROLLBACK_COMPLETE"}  # hold no resources: safe to delete
_MAX_ERROR = 2000
APPLY_RECORDS_FILE = "apply.json"  # plans/plan_id=<id>/apply.json
_APPLY_HISTORY_KEPT = 20  # finished applies the manifest remembers under apply_history

Progress = Callable[[str], None]


class ApplyFailed(RuntimeError):
    """An apply did not complete; the manifest says ``apply_failed`` and ``APPLIED`` did not move."""


@dataclass
class StackResult:
    region: str
    stack_name: str
    stack_id: str | None = None
    action: str = "none"  # create | update | none | delete
    status: str = ""
    changes: dict[str, int] = field(default_factory=lambda: {"Add": 0, "Modify": 0, "Remove": 0})
    resources: list[dict[str, str]] = field(default_factory=list)  # action, logical id, type, replacement


@dataclass
class ApplyResult:
    plan_id: str
    engine: str
    dry_run: bool
    status: str = "planned"  # planned (dry run) | applied | apply_failed
    stack_prefix: str = DEFAULT_STACK_PREFIX
    stacks: dict[str, StackResult] = field(default_factory=dict)
    peering: dict[str, Any] = field(default_factory=dict)
    capacity_reservations: dict[str, Any] = field(default_factory=dict)
    terraform_plan: dict[str, Any] = field(default_factory=dict)
    error: str | None = None

    def change_counts(self) -> dict[str, int]:
        total = {"Add": 0, "Modify": 0, "Remove": 0}
        for stack in self.stacks.values():
            for action, n in stack.changes.items():
                total[action] = total.get(action, 0) + n
        return total

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["stacks"] = {region: asdict(stack) for region, stack in sorted(self.stacks.items())}
        out["change_counts"] = self.change_counts()
        return out


def applied_pointer(lake_root: str) -> str:
    return storage.join(lake_root, "plans", APPLIED_FILE)


def applied_plan_id(settings: Settings) -> str | None:
    """The plan ``plans/APPLIED`` names, or None before the first successful apply."""
    pointer = applied_pointer(settings.lake_root)
    if not storage.exists(pointer):
        return None
    text = storage.read_text(pointer).strip()
    return check_plan_id(text, "plans/APPLIED")


def stack_name(prefix: str, region: str) -> str:
    return f"{prefix}-{check_region(region)}"


def _now() -> str:
    return datetime.now(UTC).replace(microsecond=0).isoformat()


def apply_records_path(settings: Settings, plan_id: str) -> str:
    """Where applies of a plan are recorded: beside its attempts, never inside a published (immutable) attempt."""
    return storage.join(lake.plan_dir(settings.lake_root, plan_id), APPLY_RECORDS_FILE)


def read_apply_records(settings: Settings, plan_id: str) -> dict[str, Any]:
    """The apply records of a plan ({} before its first apply or preview)."""
    path = apply_records_path(settings, plan_id)
    return lake.read_json(path) if storage.exists(path) else {}


def record_apply(settings: Settings, plan_id: str, payload: Mapping[str, Any], key: str = "apply") -> dict[str, Any]:
    """Atomically rewrite the plan's apply records with ``payload`` under ``key`` (and a short history)."""
    records = read_apply_records(settings, plan_id)
    records[key] = dict(payload)
    if key == "apply" and payload.get("status") in ("applied", "apply_failed"):
        history = list(records.get("apply_history", []))
        entry = {k: payload.get(k) for k in ("status", "engine", "finished_at", "error") if payload.get(k) is not None}
        history.append(entry)
        records["apply_history"] = history[-_APPLY_HISTORY_KEPT:]
    lake.write_json_atomic(apply_records_path(settings, plan_id), records)
    return records


# ---------------------------------------------------------------------------------------------
# CloudFormation
# ---------------------------------------------------------------------------------------------


def _change_set_name(plan_id: str) -> str:
    slug = re.sub(r"[^A-Za-z0-9-]+", "-", plan_id).strip("-")[:80]
    return f"peerscale-{slug}-{uuid.uuid4().hex[:8]}"


def _stack(cfn: Any, name: str) -> dict[str, Any] | None:
    from botocore.exceptions import ClientError

    try:
        stacks = cfn.describe_stacks(StackName=name).get("Stacks", [])
    except ClientError as exc:
        if "does not exist" in str(exc):
            return None
        raise
    live = [s for s in stacks if s.get("StackStatus") != "DELETE_COMPLETE"]
    return live[0] if live else None


def _poll(what: str, fetch: Callable[[], Any], done: Callable[[Any], bool], timeout_s: float) -> Any:
    deadline = time.monotonic() + timeout_s
    delay = 0.2
    while True:
        value = fetch()
        if done(value):
            return value
        if time.monotonic() > deadline:
            raise ApplyFailed(f"timed out after {timeout_s:.0f}s waiting for {what}")
        time.sleep(delay)
        delay = min(delay * 2, 10.0)


def _delete_stack(cfn: Any, name: str, timeout_s: float) -> None:
    cfn.delete_stack(StackName=name)
    final = _poll(
        f"stack {name} to be deleted",
        lambda: _stack(cfn, name),
        lambda s: s is None or not s["StackStatus"].endswith("_IN_PROGRESS"),
        timeout_s,
    )
    if final is not None and final["StackStatus"] != "DELETE_COMPLETE":
        raise ApplyFailed(f"stack {name} could not be deleted: {final['StackStatus']} {final.get('StackStatusReason', '')}")


def _failure_reasons(cfn: Any, name: str) -> str:
    try:
        events = cfn.describe_stack_events(StackName=name).get("StackEvents", [])
    except Exception:
        return ""
    reasons = [
        f"{e.get('LogicalResourceId')}: {e.get('ResourceStatusReason')}"
        for e in events
        if str(e.get("ResourceStatus", "")).endswith("FAILED") and e.get("ResourceStatusReason")
    ]
    return "; ".join(reasons[:5])


@dataclass
class _Pending:
    """A created change set waiting to be executed (or deleted after a preview)."""

    region: str
    stack_name: str
    change_set_id: str | None
    created_stack: bool  # the change set created the stack (REVIEW_IN_PROGRESS until executed)
    result: StackResult


def _prepare(cfn: Any, region: str, name: str, template: str, tags: Mapping[str, str], plan_id: str,
             timeout_s: float) -> _Pending:
    existing = _stack(cfn, name)
    if existing is not None and existing["StackStatus"] in _STACK_EMPTY:
        _delete_stack(cfn, name, timeout_s)  # a stack that never got resources (earlier preview/failed create)
        existing = None
    if existing is not None and existing["StackStatus"].endswith("_IN_PROGRESS"):
        raise ApplyFailed(f"stack {name} in {region} is busy ({existing['StackStatus']}); retry when it settles")
    change_type = "CREATE" if existing is None else "UPDATE"
    response = cfn.create_change_set(
        StackName=name,
        ChangeSetName=_change_set_name(plan_id),
        ChangeSetType=change_type,
        TemplateBody=template,
        Tags=[{"Key": k, "Value": v} for k, v in sorted(tags.items())],
        Description=f"peerscale plan {plan_id}",
    )
    change_set_id = response["Id"]
    described = _poll(
        f"change set of stack {name}",
        lambda: cfn.describe_change_set(ChangeSetName=change_set_id, StackName=name),
        lambda d: d["Status"] in ("CREATE_COMPLETE", "FAILED"),
        timeout_s,
    )
    result = StackResult(region=region, stack_name=name, stack_id=response.get("StackId"),
                         status=existing["StackStatus"] if existing else "NEW")
    if described["Status"] == "FAILED":
        reason = described.get("StatusReason", "")
        cfn.delete_change_set(ChangeSetName=change_set_id, StackName=name)
        if change_type == "UPDATE" and any(marker in reason for marker in _NO_CHANGES):
            result.action, result.status = "none", "NO_CHANGES"
            return _Pending(region, name, None, False, result)
        raise ApplyFailed(f"change set for stack {name} in {region} failed: {reason}")
    changes = list(described.get("Changes", []))
    token = described.get("NextToken")
    while token:
        page = cfn.describe_change_set(ChangeSetName=change_set_id, StackName=name, NextToken=token)
        changes += page.get("Changes", [])
        token = page.get("NextToken")
    for change in changes:
        rc = change.get("ResourceChange", {})
        action = rc.get("Action", "Modify")
        result.changes[action] = result.changes.get(action, 0) + 1
        result.resources.append({
            "action": action,
            "logical_id": rc.get("LogicalResourceId", ""),
            "type": rc.get("ResourceType", ""),
            "replacement": str(rc.get("Replacement", "")),
        })
    result.resources.sort(key=lambda r: (r["logical_id"], r["action"]))
    result.action = "create" if change_type == "CREATE" else ("update" if changes else "none")
    return _Pending(region, name, change_set_id, change_type == "CREATE", result)


def _execute(cfn: Any, pending: _Pending, timeout_s: float) -> None:
    result = pending.result
    if pending.change_set_id is None:
        return
    cfn.execute_change_set(ChangeSetName=pending.change_set_id, StackName=pending.stack_name)
    final = _poll(
        f"stack {pending.stack_name} to settle",
        lambda: _stack(cfn, pending.stack_name),
        lambda s: s is not None and not s["StackStatus"].endswith("_IN_PROGRESS"),
        timeout_s,
    )
    result.status = final["StackStatus"]
    result.stack_id = final["StackId"]
    if result.status not in _STACK_OK:
        reasons = _failure_reasons(cfn, pending.stack_name)
        reason = reasons or final.get("StackStatusReason", "")
        raise ApplyFailed(f"stack {pending.stack_name} in {pending.region} ended {result.status}: {reason}")


def _discard(cfn: Any, pending: _Pending, timeout_s: float) -> None:
    """Undo a preview: delete the change set, and the empty stack a CREATE change set made."""
    if pending.change_set_id is None:
        return
    try:
        cfn.delete_change_set(ChangeSetName=pending.change_set_id, StackName=pending.stack_name)
        if pending.created_stack:
            _delete_stack(cfn, pending.stack_name, timeout_s)
    except Exception as exc:
        log.warning("could not clean up change set of %s: %s", pending.stack_name, redact(str(exc)))


def _transit_gateway_id(cfn: Any, name: str) -> str | None:
    """The physical id of the stack's transit gateway, or None when the stack has none."""
    from botocore.exceptions import ClientError

    try:
        resources = cfn.describe_stack_resources(StackName=name).get("StackResources", [])
    except ClientError as exc:
        if "does not exist" in str(exc):
            return None
        raise
    for resource in resources:
        if resource.get("LogicalResourceId") == TRANSIT_GATEWAY:
            return resource.get("PhysicalResourceId") or None
    return None


def _previous_regions(settings: Settings, plan_id: str, prefix: str) -> list[str]:
    """Regions whose stacks the last applied plan (another plan, same prefix) holds."""
    previous = applied_plan_id(settings)
    if previous is None or previous == plan_id:
        return []
    try:
        applied = read_apply_records(settings, previous).get("apply", {})
    except (OSError, ValueError):
        return []
    if applied.get("engine") != "cloudformation" or applied.get("stack_prefix") != prefix:
        return []
    return sorted(applied.get("stacks", {}))


@dataclass
class _CfnApply:
    """What the steps of one CloudFormation apply share: the rendered deployment, the AWS clients
    and the result being filled in."""

    plan_id: str
    settings: Settings
    execute: bool
    stack_prefix: str
    clients: AwsClients
    capacity: CapacityReservationProvider
    peering: TransitGatewayPeering
    deployment: dict[str, Any]
    cfn_dir: Path
    regions: list[str]  # regions of this plan, in deployment order
    gone: list[str]  # regions the previously applied plan had and this one has not
    tags: dict[str, str]
    timeout_s: float
    say: Progress
    started: str
    result: ApplyResult
    prepared: list[_Pending] = field(default_factory=list)

    @property
    def pairs(self) -> Any:
        return self.deployment["peering"]["pairs"]

    @property
    def search(self) -> list[str]:
        """Regions to look for stale peering attachments in."""
        return sorted(set(self.regions) | set(self.gone))

    def cfn(self, region: str) -> Any:
        return self.clients.client("cloudformation", region)

    def stack(self, region: str) -> str:
        return stack_name(self.stack_prefix, region)

    def template(self, region: str) -> str:
        return (self.cfn_dir / next(s["template"] for s in self.deployment["stacks"] if s["region"] == region)).read_text()

    def record(self, status: str, **extra: Any) -> None:
        """Record the apply's progress in the manifest; a dry run records nothing here."""
        if self.execute:
            payload = {**self.result.to_dict(), "status": status, "started_at": self.started, **extra}
            payload.pop("dry_run", None)
            record_apply(self.settings, self.plan_id, payload)


def apply_cloudformation(
    plan_id: str,
    settings: Settings,
    execute: bool = False,
    stack_prefix: str = DEFAULT_STACK_PREFIX,
    clients: AwsClients | None = None,
    capacity: CapacityReservationProvider | None = None,
    timeout_s: float = SECONDS_PER_HOUR,
    progress: Progress | None = None,
) -> ApplyResult:
    """Render ``plan_id`` and apply it through CloudFormation (a dry run unless ``execute``).

    Raises :class:`ApplyFailed` when an executed apply fails (after recording ``apply_failed`` in
    the manifest); a failed dry run raises too but records nothing.
    """
    run = _open_apply(
        plan_id,
        settings,
        execute=execute,
        stack_prefix=stack_prefix,
        clients=clients,
        capacity=capacity,
        timeout_s=timeout_s,
        say=progress or (lambda _msg: None),
    )
    try:
        run.record("applying")
        _prepare_change_sets(run)
        if not execute:
            return _preview(run)
        return _apply(run)
    except Exception as exc:
        _fail(run, exc)
    finally:
        for pending in run.prepared:
            if pending.change_set_id is not None:
                _discard(run.cfn(pending.region), pending, run.timeout_s)


def _open_apply(
    plan_id: str,
    settings: Settings,
    *,
    execute: bool,
    stack_prefix: str,
    clients: AwsClients | None,
    capacity: CapacityReservationProvider | None,
    timeout_s: float,
    say: Progress,
) -> _CfnApply:
    """Check the arguments, render the plan and read its deployment; nothing in AWS changes yet."""
    check_plan_id(plan_id)
    if not _PREFIX.fullmatch(stack_prefix):
        raise UnsafePlanValue("stack_prefix", stack_prefix, "use lowercase letters, digits and dashes (max 40)")
    result = ApplyResult(plan_id=plan_id, engine="cloudformation", dry_run=not execute, stack_prefix=stack_prefix)
    started = _now()
    rendered = render_plan(plan_id, settings)
    cfn_dir = Path(rendered["cloudformation_dir"])
    deployment = json.loads((cfn_dir / DEPLOYMENT_FILE).read_text(encoding="utf-8"))
    if deployment.get("plan_id") != plan_id:
        raise ApplyFailed(f"{cfn_dir / DEPLOYMENT_FILE} belongs to plan {deployment.get('plan_id')!r}")
    clients = clients or AwsClients()
    capacity = capacity or capacity_provider_from_env(clients, settings.lake_root, stack_prefix)
    peering = TransitGatewayPeering(clients)
    regions = [s["region"] for s in deployment["stacks"]]
    gone = [r for r in _previous_regions(settings, plan_id, stack_prefix) if r not in regions]
    return _CfnApply(
        plan_id=plan_id,
        settings=settings,
        execute=execute,
        stack_prefix=stack_prefix,
        clients=clients,
        capacity=capacity,
        peering=peering,
        deployment=deployment,
        cfn_dir=cfn_dir,
        regions=regions,
        gone=gone,
        tags={**deployment["stack_tags"], "peerscale-stack": stack_prefix},
        timeout_s=timeout_s,
        say=say,
        started=started,
        result=result,
    )


def _prepare_change_sets(run: _CfnApply) -> None:
    """Create and describe every region's change set first, so a template AWS rejects stops the
    apply before any stack changed."""
    for region in run.regions:
        run.say(f"change set {run.stack(region)}")
        pending = _prepare(run.cfn(region), region, run.stack(region), run.template(region), run.tags,
                           run.plan_id, run.timeout_s)
        run.prepared.append(pending)
        run.result.stacks[region] = pending.result


def _preview(run: _CfnApply) -> ApplyResult:
    """A dry run: report what the apply would do and record it as ``apply_preview``."""
    result = run.result
    for region in run.gone:
        result.stacks[region] = StackResult(region=region, stack_name=run.stack(region), action="delete")
    removed = run.peering.remove_unplanned(run.pairs, {}, run.search, run.stack_prefix, dry_run=True)
    ensured = run.peering.ensure(run.pairs, {}, run.stack_prefix, run.plan_id, dry_run=True)
    removed.merge(ensured)
    result.peering = {"source": run.deployment["peering"]["source"], **removed.to_dict()}
    result.capacity_reservations = _reconcile_capacity(run.capacity, run.deployment, run.regions + run.gone,
                                                       run.stack_prefix, True)
    result.status = "planned"
    preview = {**result.to_dict(), "previewed_at": _now()}
    preview.pop("dry_run", None)
    record_apply(run.settings, run.plan_id, preview, key="apply_preview")
    return result


def _apply(run: _CfnApply) -> ApplyResult:
    """Execute the prepared change sets and the steps around them, in the order the module states."""
    result = run.result
    run.say("peering: remove unplanned")
    removed = run.peering.remove_unplanned(run.pairs, {}, run.search, run.stack_prefix, dry_run=False)
    for pending in run.prepared:
        run.say(f"execute {pending.stack_name}")
        _execute(run.cfn(pending.region), pending, run.timeout_s)
        pending.change_set_id = None
    _delete_gone_stacks(run)
    tgw_ids = _transit_gateway_ids(run)
    run.say("peering: create planned")
    stale = run.peering.remove_unplanned(run.pairs, tgw_ids, run.search, run.stack_prefix, dry_run=False)
    ensured = run.peering.ensure(run.pairs, tgw_ids, run.stack_prefix, run.plan_id, dry_run=False)
    removed.merge(stale)
    removed.merge(ensured)
    result.peering = {"source": run.deployment["peering"]["source"], **removed.to_dict()}
    run.say(f"capacity reservations ({run.capacity.name})")
    result.capacity_reservations = _reconcile_capacity(run.capacity, run.deployment, run.regions + run.gone,
                                                       run.stack_prefix, False)
    result.status = "applied"
    run.record("applied", finished_at=_now())
    storage.write_text_atomic(applied_pointer(run.settings.lake_root), run.plan_id + "\n")
    return result


def _delete_gone_stacks(run: _CfnApply) -> None:
    """Delete the stacks of regions the previously applied plan had and this one has not."""
    for region in run.gone:
        run.say(f"delete stack {run.stack(region)}")
        _delete_stack(run.cfn(region), run.stack(region), run.timeout_s)
        run.result.stacks[region] = StackResult(region=region, stack_name=run.stack(region),
                                                action="delete", status="DELETE_COMPLETE")


def _transit_gateway_ids(run: _CfnApply) -> dict[str, str]:
    """Transit gateway id per region whose stack has one (read after the stacks settled)."""
    tgw_ids = {}
    for region in run.regions:
        tgw = _transit_gateway_id(run.cfn(region), run.stack(region))
        if tgw:
            tgw_ids[region] = tgw
    return tgw_ids


def _fail(run: _CfnApply, exc: Exception) -> NoReturn:
    """Record ``apply_failed`` (an executed apply only) and raise :class:`ApplyFailed`, redacted."""
    result = run.result
    result.status = "apply_failed"
    result.error = redact(f"{type(exc).__name__}: {exc}")[:_MAX_ERROR]
    if run.execute:
        try:
            run.record("apply_failed", finished_at=_now())
        except Exception as record_exc:
            log.error("could not record apply_failed for %s: %s", run.plan_id, redact(str(record_exc)))
    if isinstance(exc, ApplyFailed):
        raise ApplyFailed(result.error) from None
    raise ApplyFailed(result.error) from exc


def _reconcile_capacity(capacity: CapacityReservationProvider, deployment: Mapping[str, Any], regions: list[str],
                        prefix: str, dry_run: bool) -> dict[str, Any]:
    total = ReconcileResult()
    for region in sorted(set(regions)):
        wanted = [row for row in deployment["capacity_reservations"] if row["region"] == region]
        total.merge(capacity.reconcile(region, wanted, prefix, dry_run))
    return {"provider": capacity.name, **total.to_dict()}
