"""Apply the Terraform render with ``terraform`` or ``tofu`` (whichever is on PATH).

``init`` → ``plan -out=tfplan`` → ``show -json tfplan`` (summary recorded in the manifest under
``terraform_plan``) → and, only when executing, ``apply tfplan`` (the saved plan, so what runs is
exactly what was shown). The rendered directory is replaced on every render, so state lives
outside it: ``<build>/iac/terraform.tfstate`` unless ``PEERSCALE_TF_STATE`` names another file,
passed to the ``local`` backend with ``-backend-config``; ``TF_DATA_DIR`` is
``<build>/iac/.terraform``.

When neither binary is installed, :class:`TerraformNotInstalled` says so (and what to do); the
CloudFormation applier works without them.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections import Counter
from pathlib import Path
from typing import Any

from pipeline.common import storage
from pipeline.common.config import Settings
from pipeline.common.numeric import SECONDS_PER_HOUR
from pipeline.iac.apply import ApplyFailed, ApplyResult, Progress, _now, applied_pointer, record_apply
from pipeline.iac.render import iac_dir, render_plan
from pipeline.iac.safety import check_plan_id, redact

__all__ = ["TERRAFORM_ENV", "TerraformNotInstalled", "apply_terraform", "find_terraform", "summarize_plan"]

TERRAFORM_ENV = "PEERSCALE_TERRAFORM"
STATE_ENV = "PEERSCALE_TF_STATE"
PLAN_FILE = "tfplan"
_MAX_OUTPUT = 4000
_STEP_TIMEOUT_S = SECONDS_PER_HOUR  # one terraform command (init, plan, show or apply)


class TerraformNotInstalled(RuntimeError):
    """Neither ``terraform`` nor ``tofu`` is available."""


def find_terraform() -> str | None:
    """``$PEERSCALE_TERRAFORM`` if set, else ``terraform``, else ``tofu`` on PATH."""
    override = os.environ.get(TERRAFORM_ENV, "").strip()
    if override:
        return shutil.which(override) or (override if Path(override).is_file() else None)
    return shutil.which("terraform") or shutil.which("tofu")


def summarize_plan(show: dict[str, Any]) -> dict[str, Any]:
    """Counts per action from ``terraform show -json`` of a saved plan, and the changed addresses."""
    counts: Counter[str] = Counter()
    changed: list[dict[str, str]] = []
    for change in show.get("resource_changes", []) or []:
        actions = list(change.get("change", {}).get("actions", []))
        if actions == ["no-op"] or actions == ["read"]:
            counts[actions[0]] += 1
            continue
        kind = "replace" if sorted(actions) == ["create", "delete"] else "+".join(actions)
        counts[kind] += 1
        changed.append({"address": str(change.get("address", "")), "action": kind})
    return {
        "terraform_version": show.get("terraform_version"),
        "counts": {k: counts.get(k, 0) for k in ("create", "update", "delete", "replace", "no-op", "read")},
        "changes": changed[:500],
    }


def _run(binary: str, args: list[str], cwd: Path, env: dict[str, str], step: str) -> str:
    try:
        done = subprocess.run([binary, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=_STEP_TIMEOUT_S)
    except OSError as exc:
        raise ApplyFailed(f"terraform {step}: cannot run {binary}: {exc}") from exc
    if done.returncode != 0:
        tail = redact((done.stderr or done.stdout or "").strip())[-_MAX_OUTPUT:]
        raise ApplyFailed(f"terraform {step} failed (exit {done.returncode}): {tail}")
    return done.stdout


def apply_terraform(
    plan_id: str,
    settings: Settings,
    execute: bool = False,
    binary: str | None = None,
    progress: Progress | None = None,
) -> ApplyResult:
    """Render ``plan_id`` and run Terraform on it: plan only (dry run) unless ``execute``.

    Raises :class:`TerraformNotInstalled` when no binary is found, :class:`ApplyFailed` when a
    step fails (an executed apply records ``apply_failed`` in the manifest first).
    """
    say = progress or (lambda _msg: None)
    check_plan_id(plan_id)
    binary = binary or find_terraform()
    tf_dir = iac_dir(settings, plan_id) / "terraform"
    if binary is None:
        raise TerraformNotInstalled(
            "neither `terraform` nor `tofu` is on PATH (or set PEERSCALE_TERRAFORM): install Terraform >= 1.5 "
            f"or OpenTofu to apply the Terraform render in {tf_dir}, or use --engine cloudformation, "
            "which needs only boto3"
        )
    result = ApplyResult(plan_id=plan_id, engine="terraform", dry_run=not execute, stack_prefix="")
    started = _now()
    render_plan(plan_id, settings)
    root = tf_dir.parent.parent
    state = Path(os.environ.get(STATE_ENV) or root / "terraform.tfstate").absolute()
    state.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "TF_IN_AUTOMATION": "1", "TF_INPUT": "0", "TF_DATA_DIR": str(root / ".terraform")}
    try:
        say("terraform init")
        _run(binary, ["init", "-input=false", "-no-color", "-reconfigure", f"-backend-config=path={state}"], tf_dir, env, "init")
        say("terraform plan")
        _run(binary, ["plan", "-input=false", "-no-color", f"-out={PLAN_FILE}"], tf_dir, env, "plan")
        shown = _run(binary, ["show", "-json", "-no-color", PLAN_FILE], tf_dir, env, "show")
        try:
            summary = summarize_plan(json.loads(shown))
        except ValueError as exc:
            raise ApplyFailed(f"terraform show -json printed no JSON: {exc}") from exc
        summary.update(binary=Path(binary).name, state=str(state), planned_at=_now())
        record_apply(settings, plan_id, summary, key="terraform_plan")
        result.terraform_plan = summary
        if not execute:
            result.status = "planned"
            return result
        record_apply(settings, plan_id, {"status": "applying", "engine": "terraform", "started_at": started, "plan": summary})
        say("terraform apply")
        _run(binary, ["apply", "-input=false", "-no-color", "-auto-approve", PLAN_FILE], tf_dir, env, "apply")
        result.status = "applied"
        record_apply(settings, plan_id, {"status": "applied", "engine": "terraform", "started_at": started,
                                         "finished_at": _now(), "plan": summary, "state": str(state)})
        storage.write_text_atomic(applied_pointer(settings.lake_root), plan_id + "\n")
        return result
    except ApplyFailed as exc:
        result.status = "apply_failed"
        result.error = redact(str(exc))
        if execute:
            record_apply(settings, plan_id, {"status": "apply_failed", "engine": "terraform", "started_at": started,
                                             "finished_at": _now(), "error": result.error})
        raise
