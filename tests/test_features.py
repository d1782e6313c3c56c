"""Feature SQL (run for real by DuckDB) against brute-force Python references.

`region_demand_hourly` is the peak of resources held concurrently per destination region and
hour, a session holding [requested_at, requested_at + duration_s) (end-exclusive);
`pair_volume_hourly` counts requests per ordered pair and hour, zero-filled.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from pipeline.common.schemas import PEERING_REQUESTS, RESOURCE_TYPES
from pipeline.features.build import FeatureWindow, compute_features

UTC = UTC
HOUR = timedelta(hours=1)
US_PER_S = 1_000_000
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
REGIONS = ["ap-southeast-2", "eu-west-1", "us-east-1"]
# An odd start hour so that nothing lines up with midnight by accident; 30 h window.
WINDOW = FeatureWindow(datetime(2025, 3, 1, 5, tzinfo=UTC), datetime(2025, 3, 2, 11, tzinfo=UTC))


def _us(dt: datetime) -> int:
    return (dt - EPOCH) // timedelta(microseconds=1)


def _dt(us: int) -> datetime:
    return EPOCH + timedelta(microseconds=us)


def random_sessions(seed: int = 20250301, n: int = 300) -> list[dict]:
    """~300 sessions with the awkward cases the SQL must get right."""
    rng = np.random.default_rng(seed)
    start_us, end_us = _us(WINDOW.start), _us(WINDOW.end)
    rows: list[dict] = []

    def add(at_us: int, duration_s: float, src: str | None = None, dst: str | None = None) -> dict:
        if dst is None:
            dst = REGIONS[int(rng.integers(len(REGIONS)))]
        if src is None:
            src = rng.choice([r for r in REGIONS if r != dst])
        row = {
            "request_id": f"r{len(rows):04d}",
            "requested_at": _dt(at_us),
            "source_region": str(src),
            "destination_region": str(dst),
            "vcpu": float(rng.integers(1, 17)),
            "memory_gib": float(rng.integers(1, 65)) / 2,
            "storage_gib": round(float(rng.uniform(0, 500)), 3),
            "bandwidth_gbps": round(float(rng.uniform(0, 5)), 4),
            "duration_s": float(duration_s),
            "priority": "normal",
        }
        rows.append(row)
        return row

    def duration() -> float:
        # log-uniform from 1 s to ~2 days; a share with sub-second parts
        d = float(np.exp(rng.uniform(0, np.log(2 * 86400))))
        return round(d, 3) if rng.random() < 0.3 else float(round(d))

    # 1) uniform starts, including up to 2 days before the window (carry-in)
    for _ in range(n - 110):
        add(int(rng.integers(start_us - 2 * 86400 * US_PER_S, end_us)), duration())
    # 2) starts exactly on hour boundaries (including the window start) with whole-hour durations
    for _ in range(40):
        h = int(rng.integers(-3, 30))
        add(start_us + h * 3600 * US_PER_S, float(3600 * int(rng.integers(1, 6))))
    # 3) chains: one session ends exactly when the next (same region) starts
    for _ in range(30):
        frac = float(rng.choice([0.0, 0.5, 0.123456]))  # sub-second ends, exact in microseconds
        first = add(int(rng.integers(start_us - 6 * 3600 * US_PER_S, end_us)), float(rng.integers(1, 7200)) + frac)
        t_next = _us(first["requested_at"]) + round(first["duration_s"] * US_PER_S)
        if t_next < end_us:
            add(t_next, duration(), dst=first["destination_region"])
    # 4) long sessions (> 1 day) starting before the window
    for _ in range(20):
        add(int(rng.integers(start_us - 36 * 3600 * US_PER_S, start_us)), float(rng.integers(86400 + 1, 3 * 86400)))
    # 5) a couple of zero-length sessions (start and end at one instant: held for no time)
    add(start_us + 7 * 3600 * US_PER_S, 0.0)
    add(start_us + 7 * 3600 * US_PER_S + 123, 0.0)
    return rows


def requests_table(rows: list[dict]) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=PEERING_REQUESTS)


def _level_at(deltas: dict[int, np.ndarray], times: list[int], t: int) -> np.ndarray:
    """The level at `t`: every event at or before t, all events at t netted."""
    total = np.zeros(len(RESOURCE_TYPES))
    for et in times:
        if et > t:
            break
        total += deltas[et]
    return total


def brute_force_demand(rows: list[dict], minutes: int = 60) -> dict[tuple[datetime, str], dict[str, float]]:
    """Exact peak per (window of `minutes`, region): level after netting every event at the same instant."""
    start_us, end_us = _us(WINDOW.start), _us(WINDOW.end)
    step_us = minutes * 60 * US_PER_S
    events: dict[str, dict[int, np.ndarray]] = {r: defaultdict(lambda: np.zeros(len(RESOURCE_TYPES))) for r in REGIONS}
    arrivals: dict[tuple[int, str], int] = defaultdict(int)
    for row in rows:
        t0 = _us(row["requested_at"])
        if t0 >= end_us:
            continue
        t1 = t0 + round(row["duration_s"] * US_PER_S)
        vec = np.array([row[r] for r in RESOURCE_TYPES], float)
        region = row["destination_region"]
        events[region][t0] += vec
        events[region][t1] -= vec
        if t0 >= start_us:
            arrivals[((t0 - start_us) // step_us, region)] += 1

    n_windows = (end_us - start_us) // step_us
    out = {}
    for region in REGIONS:
        times = sorted(events[region])
        for k in range(n_windows):
            h0 = start_us + k * step_us
            h1 = h0 + step_us
            peak = _level_at(events[region], times, h0)
            for et in times:
                if h0 < et < h1:
                    peak = np.maximum(peak, _level_at(events[region], times, et))
            out[(_dt(h0), region)] = {
                **{r: max(float(v), 0.0) for r, v in zip(RESOURCE_TYPES, peak)},
                "arrivals": arrivals[(k, region)],
            }
    return out


@pytest.fixture(scope="module")
def sessions() -> list[dict]:
    return random_sessions()


@pytest.fixture(scope="module")
def features(sessions: list[dict]) -> dict[str, pa.Table]:
    return compute_features(requests_table(sessions), REGIONS, WINDOW)


def test_sessions_cover_the_awkward_cases(sessions: list[dict]) -> None:
    """Guard the generator: the cases the reference is meant to exercise are really there."""
    starts = [_us(r["requested_at"]) for r in sessions]
    ends = {(r["destination_region"], _us(r["requested_at"]) + round(r["duration_s"] * US_PER_S)) for r in sessions}
    assert any(s < _us(WINDOW.start) for s in starts)
    assert any(s % (3600 * US_PER_S) == 0 for s in starts)
    assert any((r["destination_region"], _us(r["requested_at"])) in ends for r in sessions)
    assert any(r["duration_s"] > 86400 for r in sessions)
    assert any(r["duration_s"] < 60 for r in sessions)
    assert len(sessions) >= 290


def test_region_demand_matches_brute_force(sessions: list[dict], features: dict[str, pa.Table]) -> None:
    expected = brute_force_demand(sessions)
    got = features["region_demand_hourly"].to_pylist()
    assert len(got) == len(expected)
    mismatches = []
    for row in got:
        ref = expected[(row["hour"], row["region"])]
        for col in (*RESOURCE_TYPES, "arrivals"):
            if abs(row[col] - ref[col]) > 1e-5:
                mismatches.append((row["hour"].isoformat(), row["region"], col, row[col], ref[col]))
    assert not mismatches, mismatches[:10]
    # the reference is not trivially zero: demand really varies over the window
    assert len({round(v["vcpu"], 6) for v in expected.values()}) > 10


def test_touching_sessions_are_not_double_counted() -> None:
    """A session ending exactly when the next starts holds nothing at the shared instant."""
    t = WINDOW.start + 2 * HOUR + timedelta(minutes=30)
    base = {"source_region": REGIONS[0], "destination_region": REGIONS[1], "memory_gib": 0.0, "storage_gib": 0.0,
            "bandwidth_gbps": 0.0, "priority": "normal"}
    rows = [
        {**base, "request_id": "a", "requested_at": t - timedelta(minutes=20), "vcpu": 4.0, "duration_s": 1200.0},
        {**base, "request_id": "b", "requested_at": t, "vcpu": 6.0, "duration_s": 600.0},
        # a session that ends exactly at an hour start is not held in that hour
        {**base, "request_id": "c", "requested_at": WINDOW.start + 4 * HOUR - timedelta(minutes=5), "vcpu": 3.0,
         "duration_s": 300.0},
    ]
    table = compute_features(requests_table(rows), REGIONS, WINDOW)["region_demand_hourly"].to_pandas()
    eu = table[table["region"] == REGIONS[1]].set_index("hour")["vcpu"]
    assert eu[pd.Timestamp(WINDOW.start + 2 * HOUR)] == 6.0  # not 10
    assert eu[pd.Timestamp(WINDOW.start + 3 * HOUR)] == 3.0
    assert eu[pd.Timestamp(WINDOW.start + 4 * HOUR)] == 0.0


def test_grids_are_complete_and_zero_filled(sessions: list[dict], features: dict[str, pa.Table]) -> None:
    hours = [WINDOW.start + k * HOUR for k in range(int((WINDOW.end - WINDOW.start) / HOUR))]
    demand = features["region_demand_hourly"].to_pylist()
    assert sorted((r["hour"], r["region"]) for r in demand) == sorted((h, r) for h in hours for r in REGIONS)

    pairs = features["pair_volume_hourly"].to_pylist()
    keys = [(r["hour"], r["source_region"], r["destination_region"]) for r in pairs]
    expected_keys = [(h, s, d) for h in hours for s in REGIONS for d in REGIONS if s != d]
    assert sorted(keys) == sorted(expected_keys)
    assert any(r["requests"] == 0 for r in pairs)  # zero-filled, not dropped
    assert all(r[c] is not None for r in pairs for c in ("requests", *RESOURCE_TYPES, "duration_s"))

    in_window = [r for r in sessions if WINDOW.start <= r["requested_at"] < WINDOW.end]
    assert sum(r["requests"] for r in pairs) == len(in_window)
    assert sum(r["arrivals"] for r in demand) == len(in_window)

    # per cell, the counts and sums match a direct tally
    tally: dict[tuple, list] = defaultdict(lambda: [0, 0.0, 0.0])
    for r in in_window:
        hour = r["requested_at"].replace(minute=0, second=0, microsecond=0)
        cell = tally[(hour, r["source_region"], r["destination_region"])]
        cell[0] += 1
        cell[1] += r["vcpu"]
        cell[2] += r["duration_s"]
    for r in pairs:
        n, vcpu, dur = tally.get((r["hour"], r["source_region"], r["destination_region"]), [0, 0.0, 0.0])
        assert r["requests"] == n
        assert r["vcpu"] == pytest.approx(vcpu)
        assert r["duration_s"] == pytest.approx(dur)


def test_no_look_ahead(sessions: list[dict], features: dict[str, pa.Table]) -> None:
    rng = np.random.default_rng(5)
    future = []
    offsets = [timedelta(0), timedelta(microseconds=1), timedelta(minutes=30), timedelta(hours=5), timedelta(days=2)]
    for k, offset in enumerate(offsets * 3):
        dst = REGIONS[k % 3]
        future.append({
            "request_id": f"f{k}", "requested_at": WINDOW.end + offset, "source_region": REGIONS[(k + 1) % 3],
            "destination_region": dst, "vcpu": 100.0, "memory_gib": 400.0, "storage_gib": 1000.0,
            "bandwidth_gbps": 10.0, "duration_s": float(rng.integers(1, 86400)), "priority": "high",
        })
    later = compute_features(requests_table(sessions + future), REGIONS, WINDOW)
    for name, table in features.items():
        assert later[name].equals(table), name

    # ... while a request one microsecond before the end does show up (the check can fail)
    just_before = {**future[0], "request_id": "b0", "requested_at": WINDOW.end - timedelta(microseconds=1)}
    changed = compute_features(requests_table([*sessions, just_before]), REGIONS, WINDOW)
    assert not changed["region_demand_hourly"].equals(features["region_demand_hourly"])
    assert not changed["pair_volume_hourly"].equals(features["pair_volume_hourly"])


def test_hours_are_utc_microsecond_timestamps(features: dict[str, pa.Table]) -> None:
    for name, table in features.items():
        assert table.schema.field("hour").type == pa.timestamp("us", tz="UTC"), name
        hours = table.column("hour").to_pylist()
        assert min(hours) == WINDOW.start and max(hours) == WINDOW.end - HOUR
        assert all(h.tzinfo is not None and h.utcoffset() == timedelta(0) for h in hours)
        assert all(h.minute == h.second == h.microsecond == 0 for h in hours)


def test_empty_requests_give_a_zero_grid() -> None:
    out = compute_features(PEERING_REQUESTS.empty_table(), REGIONS, WINDOW)
    n_hours = int((WINDOW.end - WINDOW.start) / HOUR)
    demand = out["region_demand_hourly"]
    assert demand.num_rows == n_hours * len(REGIONS)
    assert all(v == 0 for c in (*RESOURCE_TYPES, "arrivals") for v in demand.column(c).to_pylist())
    assert out["pair_volume_hourly"].num_rows == n_hours * len(REGIONS) * (len(REGIONS) - 1)
