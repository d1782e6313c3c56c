"""Audit a published plan the way the request path will read it."""

from __future__ import annotations

from pipeline.common.config import Settings
from pipeline.irc.plan_source import latest_ref, load_plan


def audit_latest_plan(settings: Settings) -> dict:
    """Load LATEST with the IRC's own loader (hashes verified); raise with the reason if it could not serve from it."""
    plan_id, attempt = latest_ref(settings.lake_root)
    plan = load_plan(settings.lake_root, plan_id, attempt)
    if not plan.windows:
        raise ValueError(f"plan {plan_id} has no windows: the IRC would serve everything on demand")
    return {"plan_id": plan_id, "attempt": attempt, "windows": len(plan.windows), "regions": sorted(plan.regions)}
