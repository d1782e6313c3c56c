"""Publish: mark one attempt of a plan as the one the IRC serves from, atomically.

The plan stage wrote the attempt's files and its manifest (with their sha256). Publishing
verifies those hashes, records `published` (and the rendered artifacts) in that attempt's
manifest — an attempt is published once and never rewritten after — and then replaces the
`LATEST` pointer, last, so a reader that follows the pointer always finds a complete, verified
plan. A retry of publish on an already published attempt only moves the pointer.

The pointer only moves forward in time: publishing an older interval's plan (a backfill) makes
that plan complete and inspectable, but the live pointer keeps the newest plan.
"""

from __future__ import annotations

import logging
from typing import Literal

from pipeline.common import plan_files, storage
from pipeline.common.config import Settings

log = logging.getLogger(__name__)


def publish(plan_id: str, settings: Settings, artifacts: dict[str, str] | None = None, *, attempt: int | None = None) -> str:
    """Publish `attempt` of `plan_id` (default: its newest complete attempt); returns the pointer's path.

    Raises FileNotFoundError when the plan has no complete attempt and PlanIntegrityError (a
    ValueError) when its files do not match their hashes: LATEST is left where it was.
    """
    root = settings.lake_root
    if attempt is None:
        try:
            attempt = plan_files.resolve_attempt(root, plan_id, published=False)
        except FileNotFoundError as exc:
            raise FileNotFoundError(f"cannot publish {plan_id}: {exc}; re-run the plan stage") from exc
    return publish_attempt(root, plan_id, attempt, artifacts)


def publish_attempt(lake_root: str, plan_id: str, attempt: int, artifacts: dict[str, str] | None = None, *,
                    pointer: Literal["forward", "always", "never"] = "forward") -> str:
    """Verify, mark published (once), then move LATEST to the attempt: `forward` only when its plan is not
    older than the one LATEST names (or LATEST is unusable), `always`, or `never` (a backfill that must
    not go live). Returns the pointer's path."""
    manifest, _ = plan_files.read_attempt(lake_root, plan_id, attempt)
    if manifest.get("status") != "published":
        manifest = {**manifest, "status": "published", "artifacts": dict(sorted((artifacts or {}).items()))}
        plan_files.write_manifest(plan_files.attempt_dir(lake_root, plan_id, attempt), manifest)
        plan_files.read_attempt(lake_root, plan_id, attempt)  # what LATEST will name reads back whole
    path = plan_files.latest_pointer(lake_root)
    current = _current_valid_from(lake_root) if pointer == "forward" else None
    if pointer == "always" or (pointer == "forward" and (current is None or str(manifest["valid_from"]) >= current)):
        storage.write_text_atomic(path, plan_files.pointer_text(plan_id, attempt))
    else:
        log.info("published %s attempt %d without moving LATEST (it names %s)", plan_id, attempt, current or "another plan")
    return path


def _current_valid_from(lake_root: str) -> str | None:
    """valid_from of the plan LATEST names, or None when there is none or it does not verify."""
    try:
        plan_id, attempt = plan_files.read_latest(lake_root)
        manifest, _ = plan_files.read_attempt(lake_root, plan_id, attempt)
        return str(manifest["valid_from"])
    except (OSError, ValueError, KeyError):
        return None  # a broken pointer (or a plan that no longer verifies) is replaced by any verified plan
