"""Apply the Terraform render (:mod:`pipeline.iac.terraform`) with ``terraform`` or ``tofu``.

Per root (``regions/<region>``, then ``peering/<pair>``): ``init`` → ``plan -out=tfplan`` →
``show -json tfplan`` (summarised) → and, only when executing, ``apply tfplan`` (the saved plan, so
what runs is exactly what was shown). Order when executing: peering roots of pairs no longer
planned are destroyed first, then every region root is applied (regions the previously applied
plan had and this one has not get a root with no lines, which empties them), then the planned
pairs are applied with the transit gateway ids the region roots output. A dry run plans the
region roots only: pair roots need the hubs' ids, which exist only after an apply.

State lives outside the rendered directory (replaced on every render), one state per root:

* ``local`` (default): ``<build>/iac/state/<root>.tfstate`` or under ``PEERSCALE_TF_STATE_DIR``;
* ``s3`` (``PEERSCALE_TF_BACKEND=s3``, for teams): bucket ``PEERSCALE_TF_STATE_BUCKET``, key
  ``<PEERSCALE_TF_STATE_PREFIX>/<root>.tfstate``, region ``PEERSCALE_TF_STATE_REGION``, locking
  with a DynamoDB table when ``PEERSCALE_TF_LOCK_TABLE`` is set, else S3's own lock file
  (Terraform >= 1.10); ``PEERSCALE_TF_STATE_ENDPOINT`` for an S3-compatible endpoint. The module's
  ``backend "local" {}`` is switched by a fixed ``backend_override.tf.json``.

``PEERSCALE_TF_PLUGIN_DIR`` makes ``init`` use a local provider directory (offline machines;
default: ``/opt/tf-plugins`` when it holds providers, as on this project's machine image);
``PEERSCALE_TF_VAR_FILE`` is an operator ``-var-file`` for every root (AMI, subnets, endpoints,
``capacity_reservations``).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.common import storage
from pipeline.common.config import Settings
from pipeline.common.numeric import SECONDS_PER_HOUR
from pipeline.iac.apply import (
    ApplyFailed,
    ApplyResult,
    Progress,
    _now,
    applied_plan_id,
    applied_pointer,
    read_apply_records,
    record_apply,
)
from pipeline.iac.render import iac_dir, render_plan
from pipeline.iac.safety import check_plan_id, check_region, redact
from pipeline.iac.terraform import PEERING_DIR, REGIONS_DIR, TFVARS_FILE

__all__ = [
    "TERRAFORM_ENV",
    "Backend",
    "TerraformNotInstalled",
    "apply_terraform",
    "backend_from_env",
    "find_terraform",
    "plugin_dir",
    "root_dirs",
    "summarize_plan",
    "terraform_checks",
]

TERRAFORM_ENV = "PEERSCALE_TERRAFORM"
PLUGIN_DIR_ENV = "PEERSCALE_TF_PLUGIN_DIR"
VAR_FILE_ENV = "PEERSCALE_TF_VAR_FILE"
PLAN_FILE = "tfplan"
HUBS_FILE = "hubs.auto.tfvars.json"
BACKEND_OVERRIDE = "backend_override.tf.json"
_MAX_OUTPUT = 4000
_STEP_TIMEOUT_S = SECONDS_PER_HOUR  # one terraform command (init, plan, show or apply)
_COUNT_KEYS = ("create", "update", "delete", "replace", "no-op", "read")


class TerraformNotInstalled(RuntimeError):
    """Neither ``terraform`` nor ``tofu`` is available."""


def find_terraform() -> str | None:
    """``$PEERSCALE_TERRAFORM`` if set, else ``terraform``, else ``tofu`` on PATH."""
    override = os.environ.get(TERRAFORM_ENV, "").strip()
    if override:
        return shutil.which(override) or (override if Path(override).is_file() else None)
    return shutil.which("terraform") or shutil.which("tofu")


DEFAULT_PLUGIN_DIRS = ("/opt/tf-plugins",)


def plugin_dir() -> str | None:
    """A local provider directory for ``init -plugin-dir`` (offline), or None to use the registry."""
    override = os.environ.get(PLUGIN_DIR_ENV, "").strip()
    if override:
        return override
    for candidate in DEFAULT_PLUGIN_DIRS:
        if any(Path(candidate).glob("*/*/*/*/*/terraform-provider-*")):
            return candidate
    return None


@dataclass(frozen=True)
class Backend:
    """Where the roots' states live (see the module docstring)."""

    kind: str = "local"
    state_dir: str = ""
    bucket: str = ""
    prefix: str = "peerscale"
    region: str = "us-east-1"
    lock_table: str = ""
    endpoint: str = ""

    def init_args(self, root: str) -> list[str]:
        if self.kind == "local":
            return [f"-backend-config=path={Path(self.state_dir, root + '.tfstate').absolute()}"]
        args = [f"-backend-config=bucket={self.bucket}", f"-backend-config=key={self.prefix}/{root}.tfstate",
                f"-backend-config=region={self.region}", "-backend-config=encrypt=true"]
        args.append(f"-backend-config=dynamodb_table={self.lock_table}" if self.lock_table
                    else "-backend-config=use_lockfile=true")
        if self.endpoint:
            args += [f"-backend-config=endpoints={{s3=\"{self.endpoint}\"}}", "-backend-config=use_path_style=true",
                     "-backend-config=skip_credentials_validation=true", "-backend-config=skip_requesting_account_id=true",
                     "-backend-config=skip_metadata_api_check=true", "-backend-config=skip_region_validation=true"]
        return args

    def override(self) -> str | None:
        """A fixed override file switching the module's backend to S3 (None for local)."""
        return None if self.kind == "local" else json.dumps({"terraform": {"backend": {"s3": {}}}}) + "\n"


def backend_from_env(settings: Settings) -> Backend:
    kind = os.environ.get("PEERSCALE_TF_BACKEND", "local").strip() or "local"
    if kind == "local":
        state_dir = os.environ.get("PEERSCALE_TF_STATE_DIR") or str(Path(settings.build_root) / "iac" / "state")
        return Backend(kind="local", state_dir=state_dir)
    if kind != "s3":
        raise ValueError(f"PEERSCALE_TF_BACKEND must be local or s3, not {kind!r}")
    bucket = os.environ.get("PEERSCALE_TF_STATE_BUCKET", "").strip()
    if not bucket:
        raise ValueError("PEERSCALE_TF_BACKEND=s3 needs PEERSCALE_TF_STATE_BUCKET")
    return Backend(
        kind="s3", bucket=bucket,
        prefix=os.environ.get("PEERSCALE_TF_STATE_PREFIX", "peerscale").strip("/") or "peerscale",
        region=os.environ.get("PEERSCALE_TF_STATE_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1",
        lock_table=os.environ.get("PEERSCALE_TF_LOCK_TABLE", "").strip(),
        endpoint=os.environ.get("PEERSCALE_TF_STATE_ENDPOINT", "").strip(),
    )


def summarize_plan(show: Mapping[str, Any]) -> dict[str, Any]:
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
        "counts": {k: counts.get(k, 0) for k in _COUNT_KEYS},
        "changes": changed[:500],
    }


def _total(summaries: Mapping[str, Mapping[str, Any]]) -> dict[str, int]:
    total = dict.fromkeys(_COUNT_KEYS, 0)
    for summary in summaries.values():
        for key, value in summary.get("counts", {}).items():
            total[key] = total.get(key, 0) + int(value)
    return total


def root_dirs(tf_dir: Path) -> list[str]:
    """The rendered roots, relative to ``tf_dir``: regions first, then pairs."""
    found = []
    for group in (REGIONS_DIR, PEERING_DIR):
        base = tf_dir / group
        if base.is_dir():
            found += [f"{group}/{p.name}" for p in sorted(base.iterdir()) if p.is_dir()]
    return found


class _Runner:
    """Runs terraform commands in the roots of one render, one data dir per root."""

    def __init__(self, binary: str, tf_dir: Path, data_root: Path, backend: Backend | None) -> None:
        self.binary, self.tf_dir, self.data_root, self.backend = binary, tf_dir, data_root, backend
        self.var_file = os.environ.get(VAR_FILE_ENV, "").strip()
        self.plugin_dir = plugin_dir() or ""

    def run(self, root: str, args: list[str], step: str) -> str:
        env = {**os.environ, "TF_IN_AUTOMATION": "1", "TF_INPUT": "0",
               "TF_DATA_DIR": str(self.data_root / root.replace("/", "__"))}
        try:
            done = subprocess.run([self.binary, *args], cwd=self.tf_dir / root, env=env, capture_output=True,
                                  text=True, timeout=_STEP_TIMEOUT_S)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise ApplyFailed(f"terraform {step} in {root}: cannot run {self.binary}: {exc}") from exc
        if done.returncode != 0:
            tail = redact((done.stderr or done.stdout or "").strip())[-_MAX_OUTPUT:]
            raise ApplyFailed(f"terraform {step} failed in {root} (exit {done.returncode}): {tail}")
        return done.stdout

    def init(self, root: str) -> None:
        args = ["init", "-input=false", "-no-color", "-reconfigure"]
        if self.plugin_dir:
            args.append(f"-plugin-dir={self.plugin_dir}")
        if self.backend is None:
            args.append("-backend=false")
        else:
            override = self.backend.override()
            if override:
                (self.tf_dir / root / BACKEND_OVERRIDE).write_text(override, encoding="utf-8")
            args += self.backend.init_args(root)
        self.run(root, args, "init")

    def plan(self, root: str, destroy: bool = False, extra: Sequence[str] = ()) -> dict[str, Any]:
        args = ["plan", "-input=false", "-no-color", f"-out={PLAN_FILE}", *extra]
        if self.var_file:
            args.append(f"-var-file={Path(self.var_file).absolute()}")
        if destroy:
            args.append("-destroy")
        self.run(root, args, "plan")
        shown = self.run(root, ["show", "-json", "-no-color", PLAN_FILE], "show")
        try:
            return summarize_plan(json.loads(shown))
        except ValueError as exc:
            raise ApplyFailed(f"terraform show -json printed no JSON in {root}: {exc}") from exc

    def apply(self, root: str) -> dict[str, Any]:
        self.run(root, ["apply", "-input=false", "-no-color", "-auto-approve", PLAN_FILE], "apply")
        outputs = json.loads(self.run(root, ["output", "-json", "-no-color"], "output") or "{}")
        return {name: value.get("value") for name, value in outputs.items()}


def terraform_checks(tf_dir: Path, binary: str | None = None) -> dict[str, Any]:
    """``fmt -check -recursive`` on the render and ``validate`` in every root (no backend, offline).

    Returns ``{"fmt": [unformatted files], "validate": {root: errors}}``; empty means clean.
    """
    binary = binary or find_terraform()
    if binary is None:
        raise TerraformNotInstalled("terraform (or tofu) is not on PATH: cannot run fmt/validate")
    done = subprocess.run([binary, "fmt", "-check", "-recursive", "-no-color"], cwd=tf_dir, capture_output=True,
                          text=True, timeout=600)
    report: dict[str, Any] = {"fmt": done.stdout.split() if done.returncode else [], "validate": {}}
    runner = _Runner(binary, tf_dir, tf_dir.parent / ".terraform-validate", backend=None)
    for root in root_dirs(tf_dir):
        try:
            runner.init(root)
            result = json.loads(runner.run(root, ["validate", "-json", "-no-color"], "validate"))
        except ApplyFailed as exc:
            report["validate"][root] = [str(exc)]
            continue
        if not result.get("valid", False):
            report["validate"][root] = [d.get("summary", "") + ": " + d.get("detail", "")
                                        for d in result.get("diagnostics", [])]
    return report


def _previous_roots(settings: Settings, plan_id: str) -> list[str]:
    """Roots the last applied plan (another one) provisioned with Terraform."""
    previous = applied_plan_id(settings)
    if previous is None or previous == plan_id:
        return []
    try:
        applied = read_apply_records(settings, previous).get("apply", {})
    except (OSError, ValueError):
        return []
    return sorted(applied.get("roots", [])) if applied.get("engine") == "terraform" else []


def _is_empty(root_dir: Path) -> bool:
    """A region root rendered only to empty the region (no lines, no hub): not provisioned any more."""
    values = json.loads((root_dir / TFVARS_FILE).read_text(encoding="utf-8"))
    return not values.get("lines") and not values.get("transit_gateway")


def _pair_regions(root: str) -> tuple[str, str]:
    requester, accepter = root.split("/", 1)[1].split("__")
    return check_region(requester.replace("_", "-")), check_region(accepter.replace("_", "-"))


@dataclass
class _TfApply:
    runner: _Runner
    settings: Settings
    plan_id: str
    say: Progress
    summaries: dict[str, dict[str, Any]]
    hubs: dict[str, str | None]

    def region(self, root: str, execute: bool) -> None:
        self.say(f"terraform {root}")
        self.runner.init(root)
        self.summaries[root] = self.runner.plan(root)
        if execute:
            outputs = self.runner.apply(root)
            self.hubs[root.split("/", 1)[1]] = outputs.get("transit_gateway_id")

    def pair(self, root: str) -> None:
        requester, accepter = _pair_regions(root)
        ids = {"requester_transit_gateway_id": self.hubs.get(requester),
               "accepter_transit_gateway_id": self.hubs.get(accepter)}
        if not all(ids.values()):
            raise ApplyFailed(f"{root}: no transit gateway output for {requester} or {accepter}")
        (self.runner.tf_dir / root / HUBS_FILE).write_text(json.dumps(ids, indent=2) + "\n", encoding="utf-8")
        self.say(f"terraform {root}")
        self.runner.init(root)
        self.summaries[root] = self.runner.plan(root)
        self.runner.apply(root)

    def destroy_pair(self, root: str) -> None:
        """A pair the new plan drops: destroy what its state holds (variables only need to be set)."""
        requester, accepter = _pair_regions(root)
        self.say(f"terraform destroy {root}")
        self.runner.init(root)
        placeholders = [f"-var=plan_id={self.plan_id}", f"-var=requester_region={requester}",
                        f"-var=accepter_region={accepter}", "-var=requester_transit_gateway_id=gone",
                        "-var=accepter_transit_gateway_id=gone"]
        self.summaries[root] = self.runner.plan(root, destroy=True, extra=placeholders)
        self.runner.apply(root)


def apply_terraform(
    plan_id: str,
    settings: Settings,
    execute: bool = False,
    binary: str | None = None,
    progress: Progress | None = None,
    peering: bool = True,
) -> ApplyResult:
    """Render ``plan_id`` and run Terraform on every root: plan only (dry run) unless ``execute``.

    ``peering=False`` leaves the pair roots alone (moto cannot accept a peering attachment across
    its per-region backends). Raises :class:`TerraformNotInstalled` when no binary is found,
    :class:`ApplyFailed` when a step fails (an executed apply records ``apply_failed`` first).
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
    previous = _previous_roots(settings, plan_id)
    gone_regions = [r.split("/", 1)[1] for r in previous if r.startswith(REGIONS_DIR + "/")]
    render_plan(plan_id, settings, empty_regions=gone_regions)
    backend = backend_from_env(settings)
    if backend.kind == "local":
        Path(backend.state_dir, REGIONS_DIR).mkdir(parents=True, exist_ok=True)
        Path(backend.state_dir, PEERING_DIR).mkdir(parents=True, exist_ok=True)
    run = _TfApply(_Runner(binary, tf_dir, tf_dir.parent.parent / ".terraform", backend), settings, plan_id, say, {}, {})
    result = ApplyResult(plan_id=plan_id, engine="terraform", dry_run=not execute, stack_prefix="")
    started = _now()
    roots = root_dirs(tf_dir)
    pairs = [r for r in roots if r.startswith(PEERING_DIR + "/")] if peering else []
    try:
        if execute:
            record_apply(settings, plan_id, {"status": "applying", "engine": "terraform", "started_at": started})
            for root in previous:
                if peering and root.startswith(PEERING_DIR + "/") and root not in roots:
                    run.destroy_pair(root)
        for root in (r for r in roots if r.startswith(REGIONS_DIR + "/")):
            run.region(root, execute)
        if execute:
            for root in pairs:
                run.pair(root)
        summary = {"roots": run.summaries, "counts": _total(run.summaries), "binary": Path(binary).name,
                   "backend": backend.kind, "planned_at": _now()}
        record_apply(settings, plan_id, summary, key="terraform_plan")
        result.terraform_plan = summary
        if not execute:
            result.status = "planned"
            return result
        applied_roots = [r for r in roots if r.startswith(REGIONS_DIR + "/") and not _is_empty(tf_dir / r)] + pairs
        result.status = "applied"
        record_apply(settings, plan_id, {"status": "applied", "engine": "terraform", "started_at": started,
                                         "finished_at": _now(), "plan": summary, "roots": applied_roots})
        storage.write_text_atomic(applied_pointer(settings.lake_root), plan_id + "\n")
        return result
    except ApplyFailed as exc:
        result.status = "apply_failed"
        result.error = redact(str(exc))
        if execute:
            record_apply(settings, plan_id, {"status": "apply_failed", "engine": "terraform", "started_at": started,
                                             "finished_at": _now(), "error": result.error,
                                             "roots": sorted(set(previous) | set(run.summaries))})
        raise
