"""Committed demand (pipeline.features.committed_levels + pipeline.forecast.committed) against brute force.

What running sessions will still hold is known at the origin (durations are declared); the hour's
peak = carried + fresh. Checked on the same awkward sessions the feature SQL is tested on.
"""

from __future__ import annotations

from datetime import timedelta

import numpy as np
import pandas as pd
import pytest

from pipeline.common.intervals import DataInterval
from pipeline.common.schemas import RESOURCE_TYPES, region_series_id
from pipeline.features.build import compute_features
from pipeline.features.committed_levels import carried_levels, committed_profile
from pipeline.forecast.committed import apply_committed, fresh_history, fresh_series_id
from tests.test_features import REGIONS, WINDOW, random_sessions, requests_table

US = timedelta(microseconds=1)


def brute_force_held(rows: list[dict], origin, target) -> dict[str, np.ndarray]:
    """Σ resources of sessions with start < origin and end > target, per destination region."""
    out = {r: np.zeros(len(RESOURCE_TYPES)) for r in REGIONS}
    for row in rows:
        start = row["requested_at"]
        end = start + round(row["duration_s"] * 1_000_000) * US
        if start < origin and end > target:
            out[row["destination_region"]] += [row[r] for r in RESOURCE_TYPES]
    return out


@pytest.fixture(scope="module")
def sessions() -> list[dict]:
    return random_sessions()


def test_carried_levels_match_brute_force(sessions) -> None:
    hours = DataInterval(WINDOW.start, WINDOW.end).hours()
    carried = carried_levels(requests_table(sessions), REGIONS, hours)
    assert len(carried) == len(hours) * len(REGIONS)
    for hour in hours[::5]:
        expected = brute_force_held(sessions, hour, hour)
        for region in REGIONS:
            row = carried[(carried["hour"] == pd.Timestamp(hour)) & (carried["region"] == region)]
            np.testing.assert_allclose(row[list(RESOURCE_TYPES)].to_numpy()[0], expected[region], atol=1e-5)


def test_committed_profile_decays_and_ignores_sessions_from_the_origin_on(sessions) -> None:
    origin = WINDOW.start + timedelta(hours=9)
    profile = committed_profile(requests_table(sessions), REGIONS, origin, 6)
    for k in range(6):
        expected = brute_force_held(sessions, origin, origin + timedelta(hours=k))
        for region in REGIONS:
            row = profile[(profile["hour"] == pd.Timestamp(origin + timedelta(hours=k))) & (profile["region"] == region)]
            np.testing.assert_allclose(row[list(RESOURCE_TYPES)].to_numpy()[0], expected[region], atol=1e-5)
    for region in REGIONS:  # sessions only end: the committed level never rises
        vcpu = profile[profile["region"] == region].sort_values("hour")["vcpu"].to_numpy()
        assert np.all(np.diff(vcpu) <= 1e-9)
    later = [s for s in sessions if s["requested_at"] < origin] + [
        {**s, "request_id": f"x{i}", "requested_at": origin + timedelta(minutes=i)} for i, s in enumerate(sessions[:50])
    ]
    pd.testing.assert_frame_equal(profile, committed_profile(requests_table(later), REGIONS, origin, 6))


def test_peak_is_carried_plus_fresh_and_fresh_is_never_negative(sessions) -> None:
    table = requests_table(sessions)
    demand = compute_features(table, REGIONS, WINDOW)["region_demand_hourly"].to_pandas()
    carried = carried_levels(table, REGIONS, DataInterval(WINDOW.start, WINDOW.end).hours())
    fresh = fresh_history(demand, carried)
    assert (fresh["y"] >= 0).all() and set(fresh["unique_id"].str.split(":").str[0]) == {"fresh"}
    merged = demand.merge(carried, on=["hour", "region"], suffixes=("", "_c"))
    for rt in RESOURCE_TYPES:
        assert (merged[rt] >= merged[f"{rt}_c"] - 1e-6).all(), "the level carried in is part of the hour's peak"
        got = fresh[fresh["unique_id"].str.endswith(f":{rt}")].sort_values(["unique_id", "ds"])["y"].to_numpy()
        want = merged.sort_values(["region", "hour"])
        np.testing.assert_allclose(got, np.clip(want[rt] - want[f"{rt}_c"], 0, None).to_numpy(), atol=1e-6)


def _forecast_rows(series_id: str, origin, values: list[float], model: str) -> pd.DataFrame:
    rows = pd.DataFrame({"series_id": series_id, "ds": [pd.Timestamp(origin) + pd.Timedelta(hours=k) for k in range(len(values))],
                         "model": model})
    for i, col in enumerate(("mean", "q50", "q80", "q90", "q95", "q99", "lo_80", "hi_80", "lo_95", "hi_95")):
        rows[col] = np.asarray(values, float) + i
    return rows


def test_apply_committed_first_step_is_committed_plus_fresh_later_steps_are_floored() -> None:
    origin = pd.Timestamp("2026-01-29T00:00", tz="UTC")
    region = "eu-west-1"
    peak = _forecast_rows(region_series_id(region, "vcpu"), origin, [100.0, 100.0, 100.0], "global_gbm")
    fresh = _forecast_rows(fresh_series_id(region, "vcpu"), origin, [10.0, 10.0, 10.0], "seasonal_mean")
    committed = pd.DataFrame({"hour": [origin + pd.Timedelta(hours=k) for k in range(3)], "region": region,
                              "vcpu": [60.0, 95.0, 5.0], "memory_gib": 0.0, "storage_gib": 0.0, "bandwidth_gbps": 0.0})
    out = apply_committed(pd.concat([peak, fresh], ignore_index=True), committed, origin)
    assert list(out["series_id"].unique()) == [region_series_id(region, "vcpu")], "fresh series are internal"
    out = out.sort_values("ds").reset_index(drop=True)
    assert out.loc[0, "q90"] == 60.0 + 10.0 + 3 and out.loc[0, "model"] == "committed+seasonal_mean"
    assert out.loc[1, "q90"] == 95.0 + 10.0 + 3 and out.loc[1, "model"] == "global_gbm"  # floor binds
    assert out.loc[2, "q90"] == 100.0 + 3  # the engine's own forecast is above the floor
    quantiles = out[["q50", "q80", "q90", "q95", "q99"]].to_numpy()
    assert np.all(np.diff(quantiles, axis=1) >= 0)


def test_apply_committed_without_fresh_series_changes_nothing() -> None:
    origin = pd.Timestamp("2026-01-29T00:00", tz="UTC")
    peak = _forecast_rows(region_series_id("eu-west-1", "vcpu"), origin, [100.0, 90.0], "global_gbm")
    committed = pd.DataFrame({"hour": [origin], "region": "eu-west-1", "vcpu": [500.0], "memory_gib": 0.0,
                              "storage_gib": 0.0, "bandwidth_gbps": 0.0})
    pd.testing.assert_frame_equal(apply_committed(peak, committed, origin), peak)
