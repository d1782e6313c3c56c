"""Plans of `plan_window_minutes` windows (issue #16 item 3): 30- and 15-minute windows end to end.

The window peaks are the hourly SQL at a finer bucket and `added_by_lead` (what sessions begun from an
origin on add to each window ahead) is checked against brute force on the feature tests' awkward
sessions; the windows forecast is exactly what running sessions hold at each window's start plus a
forecast of what arrivals add; a plan made of 15-minute windows is planned, published and served by
the IRC window by window.
"""

from __future__ import annotations

import json
from collections import defaultdict
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipeline.common.config import Settings
from pipeline.common.intervals import DataInterval
from pipeline.common.schemas import RESOURCE_TYPES
from pipeline.features.build import compute_features, window_feature
from pipeline.features.committed_levels import added_by_lead, committed_profile
from pipeline.forecast.committed import VALUE_COLUMNS
from pipeline.forecast.windows import added_history, added_series_id, hours_to_complete, window_demand
from tests.conftest import RUN_END, settings_for
from tests.test_committed import brute_force_held
from tests.test_features import REGIONS, WINDOW, brute_force_demand, random_sessions, requests_table


@pytest.fixture(scope="module")
def sessions() -> list[dict]:
    return random_sessions()


@pytest.mark.parametrize("minutes", [30, 15])
def test_window_peaks_match_brute_force(sessions: list[dict], minutes: int) -> None:
    tables = compute_features(requests_table(sessions), REGIONS, WINDOW, minutes)
    assert set(tables) == {window_feature("region_demand", minutes)}
    got = tables[window_feature("region_demand", minutes)].to_pylist()
    expected = brute_force_demand(sessions, minutes)
    assert len(got) == len(expected) == len(REGIONS) * 30 * 60 // minutes
    bad = [(row["window_start"], row["region"], col) for row in got for col in (*RESOURCE_TYPES, "arrivals")
           if abs(row[col] - expected[(row["window_start"], row["region"])][col]) > 1e-5]
    assert not bad, bad[:10]


def test_finer_windows_peak_no_higher_than_their_hour(sessions: list[dict]) -> None:
    """Each 15-minute peak is at most its hour's peak, and the hour's peak is one of its four."""
    hourly = compute_features(requests_table(sessions), REGIONS, WINDOW)["region_demand_hourly"].to_pandas()
    fine = compute_features(requests_table(sessions), REGIONS, WINDOW, 15)[window_feature("region_demand", 15)].to_pandas()
    fine["hour"] = fine["window_start"].dt.floor("h")
    top = fine.groupby(["hour", "region"])[list(RESOURCE_TYPES)].max().reset_index()
    merged = hourly.merge(top, on=["hour", "region"], suffixes=("", "_fine"))
    for r in RESOURCE_TYPES:
        np.testing.assert_allclose(merged[f"{r}_fine"], merged[r], atol=1e-5)
    assert (fine.groupby(["hour", "region"])["vcpu"].min() < fine.groupby(["hour", "region"])["vcpu"].max()).any()


def brute_force_added(rows: list[dict], origin: datetime, lead: int, minutes: int, leads: int) -> dict[str, np.ndarray]:
    """Per region, the peak inside window `lead` of what sessions begun in [origin, origin + leads·W) hold."""
    step = timedelta(minutes=minutes)
    start, end, span_end = origin + lead * step, origin + (lead + 1) * step, origin + leads * step
    out = {}
    for region in REGIONS:
        events: dict[datetime, np.ndarray] = defaultdict(lambda: np.zeros(len(RESOURCE_TYPES)))
        for row in rows:
            if row["destination_region"] == region and origin <= row["requested_at"] < span_end:
                vec = np.array([row[r] for r in RESOURCE_TYPES], float)
                events[row["requested_at"]] += vec
                events[row["requested_at"] + round(row["duration_s"] * 1_000_000) * timedelta(microseconds=1)] -= vec
        times = sorted(events)

        def level(t: datetime, events: dict = events, times: list = times) -> np.ndarray:
            return sum((events[x] for x in times if x <= t), np.zeros(len(RESOURCE_TYPES)))

        peak = level(start)
        for t in times:
            if start < t < end:
                peak = np.maximum(peak, level(t))
        out[region] = np.maximum(peak, 0.0)
    return out


@pytest.mark.parametrize("minutes", [30, 15])
def test_added_by_lead_matches_brute_force(sessions: list[dict], minutes: int) -> None:
    origins = [WINDOW.start + timedelta(hours=h) for h in range(30)]
    leads = 8
    got = added_by_lead(requests_table(sessions), REGIONS, origins, minutes, leads, WINDOW.end)
    complete = [(o, k) for o in origins for k in range(leads) if o + (k + 1) * timedelta(minutes=minutes) <= WINDOW.end]
    assert len(got) == len(complete) * len(REGIONS)  # windows that end after the data are left out
    for row in got.sample(120, random_state=7).itertuples(index=False):
        expected = brute_force_added(sessions, row.origin.to_pydatetime(), row.lead, minutes, leads)[row.region]
        np.testing.assert_allclose([getattr(row, r) for r in RESOURCE_TYPES], expected, atol=1e-5)
    assert got["vcpu"].nunique() > 10  # not trivially zero


def test_added_history_ends_every_lead_at_the_interval_end() -> None:
    """Lead k's value for an origin is complete ⌈(k + 1)·W / 60⌉ h later: every series ends at the data's end."""
    end = pd.Timestamp("2026-01-29T00:00Z")
    rows = [{"origin": o, "lead": k, "region": "eu-west-1", **dict.fromkeys(RESOURCE_TYPES, 1.0)}
            for k in range(8) for o in pd.date_range(end - pd.Timedelta(hours=12), end, freq="h", inclusive="left")
            if o + pd.Timedelta(minutes=15 * (k + 1)) <= end]
    history = added_history(pd.DataFrame(rows), 15)
    assert history.groupby("unique_id")["ds"].max().eq(end).all()
    assert [hours_to_complete(k, 15) for k in range(8)] == [1, 1, 1, 1, 2, 2, 2, 2]


def test_window_demand_adds_the_committed_level_to_each_leads_forecast_at_the_origin() -> None:
    """Window k takes lead k's forecast ⌈(k + 1)·W / 60⌉ h after the origin (not another step), plus what is committed."""
    interval = DataInterval.ending_at("2026-01-29T00:00", hours=1)
    origin = pd.Timestamp(interval.end)
    rows = []
    for k in range(6):
        for step in (1, 2):
            value = 100.0 * k + step  # a different value at every (lead, step): a wrong pick shows
            rows.append({"unique_id": added_series_id("eu-west-1", "vcpu", k), "ds": origin + pd.Timedelta(hours=step),
                         "model": "m", **dict.fromkeys(VALUE_COLUMNS, value)})
            for r in RESOURCE_TYPES[1:]:
                rows.append({"unique_id": added_series_id("eu-west-1", r, k), "ds": origin + pd.Timedelta(hours=step),
                             "model": "m", **dict.fromkeys(VALUE_COLUMNS, -1.0)})  # negative: floored at 0
    committed = pd.DataFrame([{"window_start": origin + pd.Timedelta(minutes=15 * k), "region": "eu-west-1",
                               **dict.fromkeys(RESOURCE_TYPES, 10.0 - k)} for k in range(6)])
    out = window_demand(pd.DataFrame(rows), committed, interval, 15, 6)
    vcpu = out[out["series_id"] == "region:eu-west-1:vcpu"].set_index("ds")["q90"]
    assert [vcpu[origin + pd.Timedelta(minutes=15 * k)] for k in range(6)] == [
        (10.0 - k) + 100.0 * k + hours_to_complete(k, 15) for k in range(6)]
    memory = out[out["series_id"] == "region:eu-west-1:memory_gib"]["q90"].tolist()
    assert memory == [10.0 - k for k in range(6)]


def test_committed_profile_steps_by_the_window(sessions: list[dict]) -> None:
    origin = WINDOW.start + timedelta(hours=9)
    profile = committed_profile(requests_table(sessions), REGIONS, origin, 8, step=timedelta(minutes=15))
    for k in range(8):
        target = origin + k * timedelta(minutes=15)
        expected = brute_force_held(sessions, origin, target)
        for region in REGIONS:
            row = profile[(profile["hour"] == pd.Timestamp(target)) & (profile["region"] == region)]
            np.testing.assert_allclose(row[list(RESOURCE_TYPES)].to_numpy()[0], expected[region], atol=1e-5)


@pytest.mark.parametrize("minutes", [0, 20, 45, 120])
def test_a_window_length_that_does_not_divide_the_hour_is_refused(minutes: int) -> None:
    with pytest.raises(ValueError, match="plan_window_minutes"):
        Settings(plan_window_minutes=minutes)


def test_the_window_length_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PEERSCALE_PLAN_WINDOW_MINUTES", "15")
    settings = Settings.from_env()
    assert (settings.plan_window_minutes, settings.windows_per_hour, settings.plan_window_count) == (15, 4, 4 * settings.plan_windows)
    monkeypatch.setenv("PEERSCALE_PLAN_WINDOW_MINUTES", "25")
    with pytest.raises(ValueError, match="one of"):
        Settings.from_env()


@pytest.fixture(scope="module")
def window_run(seeded_root: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """The seeded lake after one in-process hourly run planning 15-minute windows."""
    import shutil
    from dataclasses import replace

    from pipeline.run import run_hourly

    root = tmp_path_factory.mktemp("windows15")
    shutil.copytree(seeded_root / "lake", root / "lake")
    settings = replace(settings_for(root), plan_window_minutes=15)
    summary = run_hourly(RUN_END, settings)
    return root, {"settings": settings, "summary": summary}


@pytest.mark.long  # a whole hourly run in 15-minute windows (~80 s on 2 cores): make test-long
def test_a_run_plans_and_publishes_fifteen_minute_windows(window_run: tuple[Path, dict]) -> None:
    from pipeline.plan.planner import read_plan

    _, run = window_run
    settings: Settings = run["settings"]
    plan, manifest = read_plan(settings, run["summary"].plan["plan_id"])
    starts = sorted(plan["valid_from"].unique())
    assert len(starts) == manifest["windows"] == settings.plan_windows * 4
    assert manifest["window_minutes"] == 15 and manifest["window_forecast_run_id"] == run["summary"].forecast_windows["run_id"]
    assert (plan["valid_to"] - plan["valid_from"] == pd.Timedelta(minutes=15)).all()
    assert pd.Timestamp(manifest["valid_to"]) - pd.Timestamp(manifest["valid_from"]) == pd.Timedelta(hours=settings.plan_windows)
    # the cost over the plan's windows: each window's hourly rate for a quarter of an hour
    rates = plan.groupby("valid_from")["hourly_cost"].sum()
    assert manifest["hourly_cost_total"] == pytest.approx(rates.sum() / 4, rel=1e-4)


@pytest.mark.long  # a whole hourly run in 15-minute windows (~80 s on 2 cores): make test-long
def test_every_window_is_what_runs_hold_plus_what_arrivals_add(window_run: tuple[Path, dict]) -> None:
    """Every window's forecast is the committed level at its start plus the lead's forecast at the run's origin."""
    from pipeline.features.build import read_features
    from pipeline.forecast.engine import read_forecast

    _, run = window_run
    settings: Settings = run["settings"]
    interval = DataInterval.ending_at(RUN_END, hours=1)
    forecast = read_forecast(settings, run["summary"].forecast_windows["run_id"])
    assert set(forecast["series_id"].str.split(":").str[0]) == {"region"}
    committed = read_features(settings, window_feature("committed_profile", 15), interval).to_pandas()
    assert len(committed["window_start"].unique()) == settings.plan_window_count
    assert forecast["model"].str.startswith("committed+").all()
    assert len(forecast) == len(committed) * len(RESOURCE_TYPES)
    manifest = json.loads((Path(settings.lake_root) / "forecasts" / f"run={run['summary'].forecast_windows['run_id']}"
                           / "manifest.json").read_text())
    assert manifest["window_minutes"] == 15 and manifest["history"]["series"] == len(committed["region"].unique()) * 4 * 24
    # the 5-minute telemetry (hourly means a week earlier) is a candidate the GBM's cross-validation decided on
    assert "cpu_util_lag168" in manifest["engine"]["regressors"]["global_gbm"]["candidates"]
    for row in committed.itertuples(index=False):
        for r in RESOURCE_TYPES:
            got = forecast[(forecast["series_id"] == f"region:{row.region}:{r}") & (forecast["ds"] == row.window_start)]
            q = got[["q50", "q80", "q90", "q95", "q99"]].to_numpy(float)[0]
            assert q[0] >= getattr(row, r) - 1e-6  # never below what running sessions hold
            assert (np.diff(q) >= -1e-9).all()  # quantiles never cross


@pytest.mark.long  # a whole hourly run in 15-minute windows (~80 s on 2 cores): make test-long
def test_the_irc_serves_each_fifteen_minute_window_from_its_own_allocation(window_run: tuple[Path, dict]) -> None:
    """A request as large as a window's whole pre-allocation is a hit in that window and a miss in a
    neighbouring window that holds less: the IRC reads the window the request falls in, not its hour."""
    from pipeline.irc.coordinator import Coordinator
    from pipeline.irc.messages import PeeringRequest
    from pipeline.irc.plan_source import load_plan

    _, run = window_run
    settings: Settings = run["settings"]
    plan = load_plan(Path(settings.lake_root), run["summary"].plan["plan_id"])
    assert len(plan.windows) == settings.plan_window_count
    for earlier, later in zip(plan.windows, plan.windows[1:]):
        assert later.valid_from - earlier.valid_from == timedelta(minutes=15) == earlier.valid_to - earlier.valid_from
    manifest = json.loads(next(Path(settings.lake_root).glob("plans/plan_id=*/attempt=1/manifest.json")).read_text())
    assert plan.cost_between(plan.windows[0].start_s, plan.windows[-1].end_s) == pytest.approx(manifest["hourly_cost_total"], rel=1e-3)
    big, small, region = max(((a, b, r) for a, b in zip(plan.windows, plan.windows[1:]) for a, b in ((a, b), (b, a))
                              for r in a.allocation if a.allocation[r]["vcpu"] > b.allocation.get(r, {}).get("vcpu", 0.0) + 1),
                             key=lambda t: t[0].allocation[t[2]]["vcpu"] - t[1].allocation.get(t[2], {}).get("vcpu", 0.0))
    vcpu = big.allocation[region]["vcpu"]
    source = next(r for r in big.allocation if r != region)
    for window, hit in ((big, True), (small, False)):
        irc = Coordinator(Path(settings.lake_root), reload_interval_s=None, outcomes=False)
        at = window.valid_from + timedelta(minutes=1)
        response = irc.handle_peering_request(PeeringRequest(f"r-{window.key}", at, source, region, {"vcpu": vcpu}, 300.0, "high"))
        assert (response.path == "preallocated") is hit, (window.key, response)


@pytest.mark.long  # a whole hourly run in 15-minute windows (~80 s on 2 cores): make test-long
def test_the_report_says_how_long_the_windows_are(window_run: tuple[Path, dict]) -> None:
    _, run = window_run
    settings: Settings = run["settings"]
    html = Path(run["summary"].report).read_text()
    assert f'<b id="kpi-windows">{settings.plan_window_count} × 15 min</b>' in html
    assert run["summary"].forecast_windows["run_id"] in html


def test_the_apply_gate_sees_every_window_an_apply_provisions() -> None:
    """A 15-minute plan whose third window triples a line differs from the applied one although its first
    window does not; the cost compared is the provisioned hour's mean rate; windows after the hour are not compared."""
    from pipeline.publish.diff import diff_plans

    start = pd.Timestamp("2026-01-29T00:00Z")

    def plan(counts: list[int]) -> pd.DataFrame:
        return pd.DataFrame([{"valid_from": start + pd.Timedelta(minutes=15 * k), "region": "eu-west-1", "instance_type": "m5.xlarge",
                              "purchase_option": "on_demand", "resource_type": r, "count": n, "quantity": 4.0 * n,
                              "hourly_cost": 0.192 * n / 4, "reason": "why"}
                             for k, n in enumerate(counts) for r in RESOURCE_TYPES])

    diff = diff_plans(plan([2, 2, 2, 2, 9]), plan([2, 2, 6, 2, 1]), "old", "new")
    (line,) = diff["lines"]
    assert (line["count_old"], line["count_new"], line["change"]) == (2, 6, "changed")
    assert line["cost_new"] == pytest.approx(0.192 * (2 + 2 + 6 + 2) / 4)  # the hour's mean rate, window 5 left out
    assert line["capacity"]["vcpu"] == {"old": 8.0, "new": 24.0, "delta": 16.0}
