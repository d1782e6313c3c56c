"""Shared fixtures: sample sources, a lake seeded with history, and a published plan.

Seeding ingests 17 days of the committed samples once per session (the forecast needs 14 days
of history plus a carry-in margin for long sessions); tests that change a lake copy it first.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path

# Airflow reads its configuration at import: give the test process a throw-away home first.
os.environ.setdefault("AIRFLOW_HOME", tempfile.mkdtemp(prefix="peerscale-airflow-test-"))
os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")

import pytest

from pipeline.common.config import REPO_ROOT, Settings

SAMPLES = REPO_ROOT / "data_samples"
HISTORY_FROM = "2026-01-12T00:00"
RUN_END = "2026-01-29T00:00"  # the demo's interval end: the plan covers 2026-01-29T00:00 onwards
RUN_START = "2026-01-28T23:00"

logging.getLogger("great_expectations").setLevel(logging.WARNING)


def settings_for(root: Path, source: Path = SAMPLES) -> Settings:
    return Settings(source_root=str(source), lake_root=str(root / "lake"), build_root=str(root / "build"))


@pytest.fixture(scope="session")
def seeded_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A lake holding [HISTORY_FROM, RUN_START) of the samples, ingested once per session."""
    from pipeline.run import backfill_ingest

    root = tmp_path_factory.mktemp("seeded")
    backfill_ingest(HISTORY_FROM, RUN_START, settings_for(root))
    return root


@pytest.fixture()
def seeded_copy(seeded_root: Path, tmp_path: Path) -> Path:
    """A private copy of the seeded lake for a test that writes to it."""
    shutil.copytree(seeded_root / "lake", tmp_path / "lake")
    return tmp_path


@pytest.fixture(scope="session")
def published_root(seeded_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The seeded lake after one full in-process hourly run (plan published)."""
    from pipeline.run import run_hourly

    root = tmp_path_factory.mktemp("published")
    shutil.copytree(seeded_root / "lake", root / "lake")
    run_hourly(RUN_END, settings_for(root))
    return root


@pytest.fixture()
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("PEERSCALE_"):
            monkeypatch.delenv(name, raising=False)
