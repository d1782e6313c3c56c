"""Backfills: a backfilled hour equals its live run, resumes where it stopped, never moves LATEST back."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from pipeline.common import lake, storage
from pipeline.ops.backfill import backfill, hour_ends
from pipeline.plan import latest_plan_id, read_plan
from pipeline.publish.pointer import publish
from tests.conftest import settings_for


def test_hour_ends_cover_the_range() -> None:
    ends = hour_ends("2026-01-28T22:00", "2026-01-29T01:00")
    assert [e.isoformat() for e in ends] == [
        "2026-01-28T23:00:00+00:00", "2026-01-29T00:00:00+00:00", "2026-01-29T01:00:00+00:00"
    ]


@pytest.mark.long
def test_backfill_equals_live_run_and_resumes(published_root: Path, seeded_copy: Path) -> None:
    settings = settings_for(seeded_copy)
    done: list[tuple[str, str]] = []
    first = backfill("2026-01-28T23:00", "2026-01-29T01:00", settings, on_hour=lambda h, o: done.append((h.isoformat(), o)))
    assert first.ran == ["2026-01-29T00:00:00+00:00", "2026-01-29T01:00:00+00:00"] and first.skipped == []
    assert latest_plan_id(settings) == "plan-20260129T0100Z"

    backfilled, _ = read_plan(settings, "plan-20260129T0000Z")
    live, _ = read_plan(settings_for(published_root), "plan-20260129T0000Z")
    pd.testing.assert_frame_equal(backfilled, live)

    # Interrupted after the first hour: its manifest is gone → only that hour runs again (as attempt 2).
    storage.write_text_atomic(storage.join(lake.plan_dir(settings.lake_root, "plan-20260129T0000Z"), "attempt=1", "manifest.json"),
                              "{broken")
    again = backfill("2026-01-28T23:00", "2026-01-29T01:00", settings)
    assert again.ran == ["2026-01-29T00:00:00+00:00"] and again.skipped == ["2026-01-29T01:00:00+00:00"]
    redone, _ = read_plan(settings, "plan-20260129T0000Z")
    pd.testing.assert_frame_equal(redone, live)

    # Re-publishing the older plan (as a late backfill would) leaves the live pointer on the newest.
    publish("plan-20260129T0000Z", settings)
    assert latest_plan_id(settings) == "plan-20260129T0100Z"
