"""Backfills of historical runs in laptop mode: one in-process hourly run per hour, resumable.

A backfilled hour runs exactly the code a live run does on the same interval, so it produces
the same plan rows. An hour whose plan is already published is skipped, which makes an
interrupted backfill resumable by running the same command again.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

from pipeline.common import plan_files
from pipeline.common.config import Settings
from pipeline.common.intervals import HOUR, DataInterval
from pipeline.plan.planner import plan_id_for
from pipeline.run import run_hourly


@dataclass
class BackfillSummary:
    """Which hours ran and which were already done."""

    ran: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


def hour_ends(start: str | datetime, end: str | datetime) -> list[datetime]:
    """Interval ends of every hourly run whose hour lies inside [start, end)."""
    whole = DataInterval.between(start, end)
    return [hour + HOUR for hour in whole.hours()]


def is_done(interval_end: datetime, settings: Settings) -> bool:
    """An hour is done when its plan has a published attempt whose files verify against their hashes."""
    plan_id = plan_id_for(DataInterval.ending_at(interval_end))
    try:
        plan_files.read_attempt(settings.lake_root, plan_id, plan_files.resolve_attempt(settings.lake_root, plan_id))
    except (OSError, ValueError):
        return False  # not published, or torn/corrupt: the hour must run again (a new attempt)
    return True


def backfill(
    start: str | datetime,
    end: str | datetime,
    settings: Settings,
    force: bool = False,
    on_hour: Callable[[datetime, str], None] | None = None,
) -> BackfillSummary:
    """Run every hour in [start, end) that is not already published (all of them with force)."""
    summary = BackfillSummary()
    for interval_end in hour_ends(start, end):
        if not force and is_done(interval_end, settings):
            summary.skipped.append(interval_end.isoformat())
            outcome = "skipped (already published)"
        else:
            run_hourly(interval_end, settings)
            summary.ran.append(interval_end.isoformat())
            outcome = "ran"
        if on_hour:
            on_hour(interval_end, outcome)
    return summary
