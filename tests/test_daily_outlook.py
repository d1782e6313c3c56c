"""The daily run forecasts the day's request volume per pair and the day's peak per region; `plan show` shows it."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from pipeline.cli.app import app
from pipeline.common.intervals import DataInterval
from pipeline.forecast.outlook import latest_daily_run
from tests.conftest import RUN_END, settings_for

runner = CliRunner()


@pytest.fixture(scope="module")
def daily_root(published_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The published lake plus one daily run (features + forecast) for the day before RUN_END."""
    from pipeline.run import stage_features, stage_forecast

    root = tmp_path_factory.mktemp("daily")
    shutil.copytree(published_root / "lake", root / "lake")
    settings = replace(settings_for(root), history_days=28)
    interval = DataInterval.between("2026-01-28T00:00", RUN_END)
    stage_features(interval, settings)
    stage_forecast(interval, settings, kind="daily")
    return root


def test_plan_show_has_a_14_day_outlook_of_volumes_and_peaks(daily_root: Path) -> None:
    lake = str(daily_root / "lake")
    assert latest_daily_run(settings_for(daily_root)) == "daily-20260129T0000Z"
    assert latest_daily_run(settings_for(daily_root), pd.Timestamp("2026-01-28T12:00Z")) is None  # made after that time
    shown = runner.invoke(app, ["plan", "show", "--json", "--lake", lake])
    assert shown.exit_code == 0, shown.output
    outlook = json.loads(shown.output)["outlook"]
    assert outlook["daily_run"] == "daily-20260129T0000Z"
    days = sorted({row["day"] for row in outlook["daily"]})
    assert days[0] == "2026-01-29" and len(days) == 14
    regions = {(r["name"], r["measure"]): r for r in outlook["regions"]}
    assert ("eu-west-1", "vcpu") in regions
    for r in regions.values():
        assert 0 <= r["q50"] <= r["q_tau"] <= r["q95"]
    # a pair's daily volume is of the size of the days it learned from (sums of hourly counts, not an hour's peak)
    requests = pd.read_parquet(daily_root / "lake" / "raw" / "peering_requests")
    requests["day"] = pd.to_datetime(requests["requested_at"], utc=True).dt.floor("D")
    per_day = requests.groupby(["source_region", "destination_region", "day"]).size()
    busiest = max(outlook["pairs"], key=lambda p: p["q50"])
    src, dst = busiest["name"].split("→")
    observed = per_day.loc[(src, dst)]
    assert 0.5 * observed.median() <= busiest["q50"] <= 2 * observed.max()
    printed = runner.invoke(app, ["plan", "show", "--lake", lake], env={"COLUMNS": "200"})
    assert "14-day outlook" in printed.output and "pre-allocated now" in printed.output


def test_plan_show_without_a_daily_run_says_how_to_get_one(published_root: Path) -> None:
    shown = runner.invoke(app, ["plan", "show", "--lake", str(published_root / "lake")], env={"COLUMNS": "200"})
    assert shown.exit_code == 0 and "no daily forecast yet" in shown.output
    as_json = runner.invoke(app, ["plan", "show", "--json", "--lake", str(published_root / "lake")])
    assert json.loads(as_json.output)["outlook"] is None


def test_the_plan_report_shows_the_outlook(daily_root: Path) -> None:
    from pipeline.report.html import write_plan_report

    path = write_plan_report("plan-20260129T0000Z", DataInterval.ending_at(RUN_END), settings_for(daily_root))
    html = Path(path).read_text()
    assert 'id="outlook-regions"' in html and 'id="outlook-pairs"' in html and "daily-20260129T0000Z" in html
    assert html.count("<tr><td>eu-west-1</td><td>vcpu</td>") >= 2  # the first window's row and the outlook's
