"""Seeded, deterministic and realistic sample inputs in the documented source formats.

Why: every stage (ingest, features, forecast, plan, IRC) needs inputs that look like production
traffic - seasonal, bursty, heavy-tailed and a little dirty - without shipping real customer data.
Same arguments give byte-identical files, so the committed ``data_samples/`` can be regenerated and
diffed, and tests can rely on exact contents.

Traffic model (peering requests)
--------------------------------
Arrivals per ordered region pair ``(src, dst)`` and UTC hour ``h`` are Poisson with intensity::

    lambda[p, h] = base[p] * daily(local_hour_dst(h)) * weekly(local_weekday_dst(h))
                   * trend(h) * uplift[dst, local_date_dst(h)] * day_noise[dst, local_date_dst(h)]
                   * burst[p, h] * gamma_noise[p, h]

* ``base``: gravity-like, ``size_src**0.8 * size_dst * affinity`` (lognormal affinity, x1.6 inside a
  continent); the ~12 % weakest pairs are scaled to ~3 %, so they are intermittent (many zero hours).
* ``daily``: a business-hours curve in the *destination region's* local time (fixed UTC offsets,
  e.g. us-east-1 -5, ap-northeast-1 +9); peak/trough about 4x.
* ``weekly``: Saturday and Sunday (local to the destination) are 40 % lower.
* ``trend``: +1 % per week, compounding.
* ``uplift``: product of ``1 + realized_uplift`` over calendar events covering the destination's
  local date; ``realized_uplift = expected_uplift * lognormal(0, 0.25) * lognormal(0, 0.1)/day``,
  i.e. noisy around the published ``expected_uplift``. Holidays have negative uplift (business
  traffic drops), campaigns and seasons positive.
* ``burst``: a few per week (Poisson, 3/week), one pair each, 1-3 h long, 2-5x.
* ``gamma_noise``: mean-1, CV 0.15 per pair-hour (over-dispersion beyond Poisson).
* The whole intensity is scaled so the expected total is ``requests_per_hour`` per hour.

Within the hour arrivals are uniform at random seconds. Sizes: vcpu in {1..64} (heavy-tailed
categorical), memory = vcpu x {2, 4, 8} GiB, storage lognormal rounded to 10 GiB (many zeros),
bandwidth lognormal in [0.1, 25] Gbps scaling mildly with vcpu, duration a lognormal body (median
30 min) mixed with a Pareto tail capped at 2 days.

Derived datasets
----------------
* Concurrent demand of a region = resources held by sessions whose destination is that region,
  active on ``[requested_at, requested_at + duration_s)``.
* ``inventory/pools.csv`` sizes each region so its peak concurrent demand is 25-40 % of
  ``available_quantity`` (~60 % for the smallest region); ``total_quantity`` adds capacity already
  used by other workloads.
* ``region_telemetry`` (5 min) = background load (the used share of the pool, with a daily cycle
  and AR noise) + concurrent peering demand / pool total; random 15 min-3 h gaps.
* ``app_telemetry`` (15 min) follows the destination-side intensity (users and transactions);
  random gaps.

Randomness
----------
Every dataset (and every attribute inside peering requests) draws from its own child stream of
``numpy.random.default_rng(seed)``'s ``SeedSequence``, keyed by a stable CRC32 of its name, so a
change to one dataset's model never shifts the numbers of another.
"""

from __future__ import annotations

import json
import shutil
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path

import numpy as np

from pipeline.common.numeric import EPS, SECONDS_PER_DAY
from pipeline.common.schemas import (
    APP_TELEMETRY,
    CALENDAR,
    INSTANCE_CATALOG,
    INSTANCE_TYPE_PATTERN,
    PEERING_REQUESTS,
    PRIORITIES,
    REGION_PATTERN,
    REGION_TELEMETRY,
    RESOURCE_POOLS,
    RESOURCE_TYPES,
    SOURCES,
)

__all__ = [
    "DEFAULT_REGIONS",
    "DIRTY_ROWS",
    "UNKNOWN_REGIONS",
    "CalendarEvent",
    "generate_sample_data",
]

DEFAULT_REGIONS: tuple[str, ...] = (
    "us-east-1",
    "us-west-2",
    "eu-west-1",
    "eu-central-1",
    "ap-southeast-1",
    "ap-northeast-1",
)

# What ``dirty_rows=True`` injects into peering_requests/*.csv (count per kind, over the whole
# period, spread across up to 4 days). Injected lines are *added*: the clean rows are identical with
# or without them. Every one of them must be quarantined by ingest.
DIRTY_ROWS: dict[str, int] = {
    "too_few_fields": 1,  # a row truncated after memory_gib (6 fields instead of 10)
    "too_many_fields": 1,  # an extra trailing field (11 fields)
    "non_numeric_vcpu": 1,  # vcpu written as "4 vCPU"
    "unknown_region": 3,  # source or destination not in inventory/pools.csv (see UNKNOWN_REGIONS)
    "duplicate_request_id": 3,  # exact copy of an earlier row of the same file, a few lines later
    "negative_quantity": 2,  # vcpu < 0 or storage_gib < 0
}
# "mars-north-1" fails REGION_PATTERN; "us-east-9" is well-formed but not a known region.
UNKNOWN_REGIONS: tuple[str, ...] = ("mars-north-1", "us-east-9", "mars-north-1")

# Dataset folders this generator owns under out_dir; their content (except README.md) is replaced.
_OWNED_DIRS: tuple[str, ...] = (
    "peering_requests",
    "region_telemetry",
    "app_telemetry",
    "calendar",
    "inventory",
)

# Known regions: (UTC offset hours, relative size, price multiplier vs us-east-1).
_KNOWN_REGIONS: dict[str, tuple[float, float, float]] = {
    "us-east-1": (-5, 1.00, 1.00),
    "us-east-2": (-5, 0.55, 1.00),
    "us-west-1": (-8, 0.35, 1.10),
    "us-west-2": (-8, 0.70, 1.00),
    "ca-central-1": (-5, 0.30, 1.06),
    "sa-east-1": (-3, 0.25, 1.55),
    "eu-west-1": (0, 0.75, 1.11),
    "eu-west-2": (0, 0.45, 1.16),
    "eu-west-3": (1, 0.30, 1.16),
    "eu-central-1": (1, 0.60, 1.16),
    "eu-north-1": (1, 0.25, 1.06),
    "ap-south-1": (5.5, 0.40, 1.10),
    "ap-southeast-1": (8, 0.50, 1.26),
    "ap-southeast-2": (10, 0.40, 1.25),
    "ap-northeast-1": (9, 0.35, 1.29),
    "ap-northeast-2": (9, 0.30, 1.23),
    "ap-east-1": (8, 0.25, 1.38),
}
# Fallback by the region's first token, for region names we do not know.
_PREFIX_DEFAULTS: dict[str, tuple[float, float, float]] = {
    "us": (-6, 0.45, 1.00),
    "ca": (-5, 0.30, 1.06),
    "sa": (-3, 0.25, 1.55),
    "eu": (1, 0.40, 1.13),
    "ap": (8, 0.35, 1.27),
    "me": (4, 0.20, 1.20),
    "af": (2, 0.15, 1.30),
}
# Names with an unknown first token (e.g. synthetic ``xx-region-07`` for scale benchmarks) draw a
# profile from a stable hash of the name: a real-world UTC offset, a size in [0.15, 0.75] and a
# price multiplier in [1.00, 1.40], so many such regions still differ in time zone, size and price.
_FALLBACK_OFFSETS: tuple[float, ...] = (-8, -6, -5, -3, 0, 1, 2, 3, 4, 5.5, 8, 9, 10)

# Local-hour business curve (mean ~1): quiet nights, ramp at 07-09, plateau 10-16, evening tail.
_DAILY_PROFILE = np.array(
    [0.42, 0.38, 0.36, 0.35, 0.36, 0.42, 0.55, 0.78, 1.08, 1.36, 1.50, 1.52,
     1.40, 1.46, 1.52, 1.48, 1.38, 1.18, 0.96, 0.80, 0.68, 0.59, 0.52, 0.46]
)  # fmt: skip
_DAILY_PROFILE = _DAILY_PROFILE / _DAILY_PROFILE.mean()
_WEEKEND_FACTOR = 0.6
_WEEKLY_TREND = 0.01

_VCPU_SIZES = np.array([1, 2, 4, 8, 16, 32, 64])
_VCPU_PROBS = np.array([0.20, 0.27, 0.23, 0.15, 0.09, 0.045, 0.015])
_MEM_PER_VCPU = np.array([2, 4, 8])
_MEM_PER_VCPU_PROBS = np.array([0.30, 0.50, 0.20])
_PRIORITY_PROBS = {"low": 0.15, "normal": 0.68, "high": 0.14, "critical": 0.03}
_MAX_DURATION_S = 2 * SECONDS_PER_DAY

# Instance types (us-east-1 Linux on-demand prices): vcpu, memory GiB, storage GiB, network Gbps,
# $/h. storage_gib is the instance store for *d/i4i types and a bundled gp3 volume of 16 GiB/vCPU for
# EBS-only types, so every type brings some storage.
_BASE_CATALOG: dict[str, tuple[float, float, float, float, float]] = {
    "m6i.large": (2, 8, 32, 12.5, 0.096),
    "m6i.xlarge": (4, 16, 64, 12.5, 0.192),
    "m6i.2xlarge": (8, 32, 128, 12.5, 0.384),
    "m6i.4xlarge": (16, 64, 256, 12.5, 0.768),
    "m6i.8xlarge": (32, 128, 512, 12.5, 1.536),
    "c6i.2xlarge": (8, 16, 128, 12.5, 0.34),
    "c6i.4xlarge": (16, 32, 256, 12.5, 0.68),
    "r6i.2xlarge": (8, 64, 128, 12.5, 0.504),
    "r6i.4xlarge": (16, 128, 256, 12.5, 1.008),
    "i4i.2xlarge": (8, 64, 1746, 12.0, 0.686),
    "m6id.2xlarge": (8, 32, 441, 12.5, 0.4746),
    "m6in.8xlarge": (32, 128, 512, 50.0, 2.2277),
    "c6in.4xlarge": (16, 32, 256, 50.0, 0.9072),
}
_CORE_TYPES = ("m6i.large", "m6i.2xlarge", "c6i.4xlarge", "r6i.2xlarge", "i4i.2xlarge")



@dataclass(frozen=True)
class CalendarEvent:
    """One calendar row; ``regions=None`` means all regions ('*'). Dates are inclusive, local."""

    name: str
    kind: str
    regions: tuple[str, ...] | None
    start: date
    end: date
    expected_uplift: float

    def covers(self, region: str, day: date) -> bool:
        """Whether the event applies to ``region`` on its local calendar ``day``."""
        in_regions = self.regions is None or region in self.regions
        return in_regions and self.start <= day <= self.end


@dataclass(frozen=True)
class _Requests:
    """Clean peering requests, sorted by time (epoch seconds)."""

    t: np.ndarray  # int64 epoch seconds
    src: np.ndarray  # int index into regions
    dst: np.ndarray
    vcpu: np.ndarray
    memory_gib: np.ndarray
    storage_gib: np.ndarray
    bandwidth_gbps: np.ndarray
    duration_s: np.ndarray
    priority: np.ndarray  # int index into PRIORITIES

    def quantity(self, resource_type: str) -> np.ndarray:
        """Per-request quantity of one resource type."""
        return np.asarray(getattr(self, resource_type), dtype=np.float64)


# ---------------------------------------------------------------------------------------------
# Public entry point
# ---------------------------------------------------------------------------------------------


def generate_sample_data(
    out_dir: str | Path,
    start: date = date(2026, 1, 1),
    days: int = 35,
    regions: Sequence[str] = DEFAULT_REGIONS,
    seed: int = 7,
    requests_per_hour: float = 55.0,
    dirty_rows: bool = True,
) -> dict[str, int]:
    """Write every source dataset under ``out_dir`` and return the data rows written per dataset.

    Dataset folders written here (``peering_requests``, ``region_telemetry``, ``app_telemetry``,
    ``calendar``, ``inventory``) are emptied first - except their ``README.md`` - so a shorter run
    never leaves stale day files behind. Counts include injected dirty lines.
    """
    regions = tuple(regions)
    _validate_args(start, days, regions, requests_per_hour)
    start = date(start.year, start.month, start.day)  # a datetime would leak its time of day
    days = int(days)
    out = Path(out_dir)
    profiles = {r: _region_profile(r) for r in regions}
    offsets = np.array([profiles[r][0] for r in regions], dtype=np.float64)
    sizes = np.array([profiles[r][1] for r in regions], dtype=np.float64)
    t0 = int(np.datetime64(start.isoformat(), "s").astype(np.int64))

    events = _calendar_events(start, days, regions, sizes, _rng(seed, "calendar"))
    pair_src, pair_dst, lam, region_factor, trend = _intensity(
        start, days, regions, offsets, sizes, events, requests_per_hour, _rng(seed, "traffic")
    )
    reqs = _sample_requests(t0, pair_src, pair_dst, lam, seed)
    peaks = {rt: _peak_concurrent(reqs, len(regions), rt) for rt in RESOURCE_TYPES}
    pools = _pools(regions, peaks, _rng(seed, "inventory.pools"))
    catalog = _catalog(regions, profiles, _rng(seed, "inventory.catalog"))
    telemetry_lines = _region_telemetry(
        t0, days, regions, offsets, reqs, pools, _rng(seed, "region_telemetry")
    )
    app_lines = _app_telemetry(
        t0, days, regions, offsets, sizes, region_factor, trend, _rng(seed, "app_telemetry")
    )
    request_files = _request_files(t0, days, regions, reqs)
    if dirty_rows:
        _inject_dirty_rows(request_files, int(reqs.t.size), _rng(seed, "dirty_rows"))

    _reset_dirs(out)
    counts: dict[str, int] = {}
    counts["peering_requests"] = _write_partitioned(
        out / "peering_requests", start, "csv", ",".join(PEERING_REQUESTS.names), request_files
    )
    counts["region_telemetry"] = _write_partitioned(
        out / "region_telemetry", start, "csv", ",".join(REGION_TELEMETRY.names), telemetry_lines
    )
    counts["app_telemetry"] = _write_partitioned(
        out / "app_telemetry", start, "jsonl", None, app_lines
    )
    counts["calendar"] = _write_csv(
        out / SOURCES["calendar"]["path"], CALENDAR.names, _calendar_lines(events)
    )
    counts["resource_pools"] = _write_csv(
        out / SOURCES["resource_pools"]["path"], RESOURCE_POOLS.names, pools
    )
    counts["instance_catalog"] = _write_csv(
        out / SOURCES["instance_catalog"]["path"], INSTANCE_CATALOG.names, catalog
    )
    _write_csv(out / "inventory" / "zones.csv", ["region", "zone"], _zone_lines(regions))  # read by the planner, not ingested
    return counts


# Availability zones a new AWS account sees (ap-northeast-1b is closed to new accounts); other
# regions get three zones a-c. The planner spreads each region's lines over them (pipeline.plan.zones).
SAMPLE_ZONES: dict[str, str] = {"ap-northeast-1": "acd", "us-east-1": "abcdef", "us-west-2": "abcd"}


def _zone_lines(regions: Sequence[str]) -> list[list[str]]:
    """`inventory/zones.csv` rows: each region's availability zones."""
    return [[region, f"{region}{letter}"] for region in sorted(regions) for letter in SAMPLE_ZONES.get(region, "abc")]


# ---------------------------------------------------------------------------------------------
# Set-up helpers
# ---------------------------------------------------------------------------------------------


def _validate_args(start: date, days: int, regions: tuple[str, ...], rate: float) -> None:
    """Fail early with a clear message: bad names would otherwise reach file contents."""
    if not isinstance(start, date):
        raise TypeError(f"start must be a date, got {type(start).__name__}")
    if int(days) != days or days < 1:
        raise ValueError(f"days must be a positive integer, got {days!r}")
    if len(regions) < 2:
        raise ValueError("need at least two regions to form peering pairs")
    if len(set(regions)) != len(regions):
        raise ValueError(f"duplicate regions in {regions!r}")
    bad = [r for r in regions if not REGION_PATTERN.match(r)]
    if bad:
        raise ValueError(f"invalid region names {bad!r} (must match {REGION_PATTERN.pattern})")
    if not rate > 0:
        raise ValueError(f"requests_per_hour must be > 0, got {rate!r}")


def _rng(seed: int, stream: str) -> np.random.Generator:
    """Independent child stream of ``default_rng(seed)``'s SeedSequence, keyed by a stable name."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(zlib.crc32(stream.encode()),)))


def _region_profile(region: str) -> tuple[float, float, float]:
    """(UTC offset h, relative size, price multiplier) for a region: known, else by prefix, else by name hash."""
    if region in _KNOWN_REGIONS:
        return _KNOWN_REGIONS[region]
    prefix = region.split("-", 1)[0]
    if prefix in _PREFIX_DEFAULTS:
        return _PREFIX_DEFAULTS[prefix]
    h = zlib.crc32(region.encode())
    offset = _FALLBACK_OFFSETS[h % len(_FALLBACK_OFFSETS)]
    size = 0.15 + 0.60 * ((h >> 8) % 1000) / 999
    price = 1.00 + 0.40 * ((h >> 18) % 1000) / 999
    return (float(offset), round(size, 3), round(price, 3))


def _epoch_to_iso(seconds: np.ndarray) -> np.ndarray:
    """Vectorised 'YYYY-MM-DDTHH:MM:SSZ' strings from epoch seconds."""
    iso = np.datetime_as_string(np.asarray(seconds, dtype="datetime64[s]"), unit="s")
    return np.char.add(iso, "Z")


def _local_dates(start: date, days: int) -> list[date]:
    """Local dates that any UTC hour of the period can fall on (one day either side)."""
    return [start + timedelta(days=j) for j in range(-1, days + 1)]


# ---------------------------------------------------------------------------------------------
# Calendar
# ---------------------------------------------------------------------------------------------

_LUNAR_NEW_YEAR = {2024: (2, 10), 2025: (1, 29), 2026: (2, 17), 2027: (2, 6), 2028: (1, 26)}
_CAMPAIGN_NAMES = (
    "product launch",
    "flash sale",
    "partner summit",
    "data migration week",
    "marketing campaign",
    "streaming premiere",
)


def _nth_weekday(year: int, month: int, weekday: int, n: int) -> date:
    """The n-th given weekday (Mon=0) of a month, e.g. the 3rd Monday of January."""
    first = date(year, month, 1)
    return first + timedelta(days=(weekday - first.weekday()) % 7 + 7 * (n - 1))


def _holidays(year: int) -> list[tuple[str, str, date, date, float]]:
    """Real public holidays (name, region-group, start, end, uplift) that dent business traffic."""
    hol: list[tuple[str, str, date, date, float]] = [
        ("New Year's Day", "*", date(year, 1, 1), date(year, 1, 1), -0.35),
        ("Coming of Age Day", "jp", *(2 * (_nth_weekday(year, 1, 0, 2),)), -0.20),
        ("Martin Luther King Jr. Day", "us", *(2 * (_nth_weekday(year, 1, 0, 3),)), -0.15),
        ("National Foundation Day", "jp", date(year, 2, 11), date(year, 2, 11), -0.20),
        ("Presidents' Day", "us", *(2 * (_nth_weekday(year, 2, 0, 3),)), -0.12),
        ("Labour Day", "eu", date(year, 5, 1), date(year, 5, 1), -0.30),
        ("Golden Week", "jp", date(year, 5, 3), date(year, 5, 5), -0.35),
        ("Independence Day", "us", date(year, 7, 4), date(year, 7, 4), -0.30),
        ("German Unity Day", "de", date(year, 10, 3), date(year, 10, 3), -0.25),
        ("Thanksgiving", "us", _nth_weekday(year, 11, 3, 4), _nth_weekday(year, 11, 3, 4) + timedelta(days=1), -0.30),
        ("Christmas", "*", date(year, 12, 24), date(year, 12, 26), -0.40),
    ]  # fmt: skip
    if year in _LUNAR_NEW_YEAR:
        lny = date(year, *_LUNAR_NEW_YEAR[year])
        hol.append(("Lunar New Year", "sg", lny, lny + timedelta(days=1), -0.35))
    return hol


def _holiday_regions(group: str, regions: tuple[str, ...]) -> tuple[str, ...] | None:
    """Regions a holiday applies to; None for all; () when none of ours is concerned."""
    if group == "*":
        return None
    match = {
        "us": lambda r: r.startswith("us-"),
        "eu": lambda r: r.startswith("eu-"),
        "jp": lambda r: r in ("ap-northeast-1", "ap-northeast-3"),
        "sg": lambda r: r in ("ap-southeast-1", "ap-east-1"),
        "de": lambda r: r == "eu-central-1",
    }[group]
    return tuple(r for r in regions if match(r))


def _calendar_events(
    start: date, days: int, regions: tuple[str, ...], sizes: np.ndarray, rng: np.random.Generator
) -> list[CalendarEvent]:
    """Holidays, campaigns and a season covering the period and a 14-day forecast horizon.

    Events after the period are 'known future events' a forecaster can use as regressors.
    """
    end = start + timedelta(days=days - 1)
    horizon_end = end + timedelta(days=14)
    events: list[CalendarEvent] = []
    for year in range(start.year, horizon_end.year + 1):
        for name, group, s, e, uplift in _holidays(year):
            if e < start or s > horizon_end:
                continue
            regs = _holiday_regions(group, regions)
            if regs is None or regs:
                events.append(CalendarEvent(name, "holiday", regs, s, e, uplift))

    # Campaigns: one per ~2 weeks, at least two, each in its own slice of the period, plus one
    # announced campaign in the forecast horizon.
    n_campaigns = max(2, round(days / 14))
    weights = sizes / sizes.sum()
    names = rng.permutation(len(_CAMPAIGN_NAMES))
    slots = [(start + timedelta(days=days * i // n_campaigns), days // n_campaigns) for i in range(n_campaigns)]
    slots.append((end + timedelta(days=1), 14))
    for i, (slot_start, slot_len) in enumerate(slots):
        length = min(int(rng.integers(2, 5)), max(slot_len, 1))
        offset = int(rng.integers(0, max(slot_len - length, 0) + 1))
        s = slot_start + timedelta(days=offset)
        n_regs = int(rng.integers(1, min(2, len(regions)) + 1))
        regs = tuple(sorted(np.asarray(regions)[rng.choice(len(regions), n_regs, replace=False, p=weights)]))
        label = _CAMPAIGN_NAMES[int(names[i % len(names)])]
        name = f"{'/'.join(dict.fromkeys(r.split('-')[0].upper() for r in regs))} {label}"
        uplift = round(float(rng.uniform(0.25, 0.60)), 2)
        events.append(CalendarEvent(name, "campaign", regs, s, s + timedelta(days=length - 1), uplift))

    # A mild global season over the middle of the period (e.g. quarterly planning / migrations).
    if days >= 7:
        s = start + timedelta(days=days // 5)
        e = start + timedelta(days=days - 1 - days // 5)
        events.append(CalendarEvent("Q1 migration season", "season", None, s, e, 0.10))
    return sorted(events, key=lambda ev: (ev.start, ev.end, ev.kind, ev.name))


def _calendar_lines(events: list[CalendarEvent]) -> list[list[str]]:
    """Calendar rows with stable ids (assigned after sorting)."""
    return [
        [
            f"evt-{i:03d}",
            ev.name,
            ev.kind,
            "*" if ev.regions is None else ";".join(ev.regions),
            ev.start.isoformat(),
            ev.end.isoformat(),
            f"{ev.expected_uplift:.2f}",
        ]
        for i, ev in enumerate(events, start=1)
    ]


# ---------------------------------------------------------------------------------------------
# Peering requests
# ---------------------------------------------------------------------------------------------


def _intensity(
    start: date,
    days: int,
    regions: tuple[str, ...],
    offsets: np.ndarray,
    sizes: np.ndarray,
    events: list[CalendarEvent],
    requests_per_hour: float,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Expected arrivals per (pair, UTC hour); also the per-destination factor and the trend."""
    n_reg = len(regions)
    hours = np.arange(days * 24)
    src, dst = (a.ravel() for a in np.meshgrid(np.arange(n_reg), np.arange(n_reg), indexing="ij"))
    keep = src != dst
    src, dst = src[keep], dst[keep]

    # Gravity: bigger regions talk more; neighbours on the same continent talk more.
    continent = np.array([r.split("-", 1)[0] for r in regions])
    affinity = rng.lognormal(0.0, 0.5, src.size) * np.where(continent[src] == continent[dst], 1.6, 1.0)
    base = sizes[src] ** 0.8 * sizes[dst] * affinity
    n_idle = int(0.12 * src.size)
    if n_idle:
        base[np.argsort(base, kind="stable")[:n_idle]] *= 0.03

    # Destination-local calendar effects: daily curve, weekends, events, day-level noise.
    local_dates = _local_dates(start, days)
    uplift = np.ones((n_reg, len(local_dates)))
    for ev in events:
        for r_i, region in enumerate(regions):
            if ev.regions is not None and region not in ev.regions:
                continue
            realized = ev.expected_uplift * rng.lognormal(0.0, 0.25)
            for d_i, day in enumerate(local_dates):
                if ev.covers(region, day):
                    uplift[r_i, d_i] *= max(1.0 + realized * rng.lognormal(0.0, 0.1), 0.05)
    day_noise = rng.lognormal(0.0, 0.06, uplift.shape)

    local_h = hours[None, :] + offsets[:, None]  # (region, hour), fractional for e.g. +5.5
    local_day_idx = np.floor(local_h / 24).astype(int) + 1  # +1: local_dates starts one day early
    local_hour = np.mod(local_h, 24)
    daily = np.interp(local_hour + 0.5, np.arange(24) + 0.5, _DAILY_PROFILE, period=24)
    start_weekday = start.weekday()
    weekday = (start_weekday + local_day_idx - 1) % 7
    weekly = np.where(weekday >= 5, _WEEKEND_FACTOR, 1.0)
    rows = np.arange(n_reg)[:, None]
    region_factor = daily * weekly * uplift[rows, local_day_idx] * day_noise[rows, local_day_idx]
    trend = (1.0 + _WEEKLY_TREND) ** (hours / 168.0)

    burst = np.ones((src.size, hours.size))
    n_bursts = int(rng.poisson(3.0 * days / 7.0))
    active = np.flatnonzero(base >= np.quantile(base, 0.25))
    for _ in range(n_bursts):
        p = int(rng.choice(active))
        h0 = int(rng.integers(0, hours.size))
        burst[p, h0 : h0 + int(rng.integers(1, 4))] *= rng.uniform(2.0, 5.0)

    gamma_noise = rng.gamma(1 / 0.15**2, 0.15**2, (src.size, hours.size))
    lam = base[:, None] * region_factor[dst] * trend[None, :] * burst * gamma_noise
    lam *= requests_per_hour * hours.size / lam.sum()
    return src, dst, lam, region_factor, trend


def _sample_requests(
    t0: int, pair_src: np.ndarray, pair_dst: np.ndarray, lam: np.ndarray, seed: int
) -> _Requests:
    """Poisson arrivals at random seconds, with heavy-tailed sizes and durations, sorted by time."""
    counts = _rng(seed, "peering_requests.arrivals").poisson(lam)
    pair_idx, hour_idx = np.nonzero(counts)
    reps = counts[pair_idx, hour_idx]
    pair = np.repeat(pair_idx, reps)
    hour = np.repeat(hour_idx, reps)
    n = pair.size
    sec = _rng(seed, "peering_requests.seconds").integers(0, 3600, n)
    t = t0 + hour.astype(np.int64) * 3600 + sec
    order = np.lexsort((pair, t))
    pair, t = pair[order], t[order]

    size_rng = _rng(seed, "peering_requests.sizes")
    vcpu = size_rng.choice(_VCPU_SIZES, n, p=_VCPU_PROBS)
    memory = vcpu * size_rng.choice(_MEM_PER_VCPU, n, p=_MEM_PER_VCPU_PROBS)
    storage = np.minimum(np.round(size_rng.lognormal(np.log(30.0), 1.5, n) / 10.0) * 10.0, 20000.0)
    bandwidth = np.clip(0.5 * (vcpu / 4.0) ** 0.3 * size_rng.lognormal(0.0, 0.9, n), 0.1, 25.0)
    bandwidth = np.round(bandwidth, 2)

    dur_rng = _rng(seed, "peering_requests.durations")
    body = dur_rng.lognormal(np.log(1800.0), 0.9, n)
    tail = 3600.0 * (1.0 + dur_rng.pareto(1.1, n))
    duration = np.where(dur_rng.random(n) < 0.08, tail, body)
    duration = np.clip(np.round(duration), 30, _MAX_DURATION_S).astype(np.int64)

    probs = np.array([_PRIORITY_PROBS[p] for p in PRIORITIES])
    priority = _rng(seed, "peering_requests.priority").choice(len(PRIORITIES), n, p=probs / probs.sum())
    return _Requests(
        t=t,
        src=pair_src[pair],
        dst=pair_dst[pair],
        vcpu=vcpu.astype(np.int64),
        memory_gib=memory.astype(np.int64),
        storage_gib=storage.astype(np.int64),
        bandwidth_gbps=bandwidth,
        duration_s=duration,
        priority=priority,
    )


def _request_files(t0: int, days: int, regions: tuple[str, ...], reqs: _Requests) -> list[list[str]]:
    """CSV lines (no header) per UTC day, with request ids in time order."""
    n = reqs.t.size
    width = max(6, len(str(n)))
    ids = [f"req-{i:0{width}d}" for i in range(1, n + 1)]
    ts = _epoch_to_iso(reqs.t)
    reg = np.asarray(regions)
    src, dst, prio = reg[reqs.src], reg[reqs.dst], np.asarray(PRIORITIES)[reqs.priority]
    lines = [
        f"{ids[i]},{ts[i]},{src[i]},{dst[i]},{reqs.vcpu[i]},{reqs.memory_gib[i]},{reqs.storage_gib[i]},"
        f"{reqs.bandwidth_gbps[i]:.2f},{reqs.duration_s[i]},{prio[i]}"
        for i in range(n)
    ]
    bounds = np.searchsorted(reqs.t, t0 + np.arange(days + 1) * SECONDS_PER_DAY)
    return [lines[bounds[d] : bounds[d + 1]] for d in range(days)]


def _inject_dirty_rows(files: list[list[str]], n_clean: int, rng: np.random.Generator) -> None:
    """Add the DIRTY_ROWS lines in place, spread over up to four days; clean lines stay as they are.

    Added rows take new request ids after the clean ones, so only the duplicates collide.
    """
    candidates = [d for d, lines in enumerate(files) if len(lines) >= 2]
    if not candidates:
        return
    n_days = min(4, len(candidates))
    chosen = sorted(int(d) for d in rng.choice(candidates, n_days, replace=False))
    kinds = [k for k, count in DIRTY_ROWS.items() for _ in range(count)]
    inserts: dict[int, list[tuple[int, str]]] = {d: [] for d in chosen}
    next_id = n_clean
    width = max(6, len(str(n_clean + len(kinds))))
    unknown = iter(UNKNOWN_REGIONS * len(kinds))
    for k_i, kind in enumerate(kinds):
        day = chosen[k_i % n_days]
        lines = files[day]
        i = int(rng.integers(0, len(lines) - 1))
        fields = lines[i].split(",")
        if kind == "duplicate_request_id":
            after = min(i + int(rng.integers(1, 40)), len(lines) - 1)
            inserts[day].append((after, lines[i]))
            continue
        next_id += 1
        fields[0] = f"req-{next_id:0{width}d}"
        if kind == "too_few_fields":
            fields = fields[:6]
        elif kind == "too_many_fields":
            fields = [*fields, "retry"]
        elif kind == "non_numeric_vcpu":
            fields[4] = f"{fields[4]} vCPU"
        elif kind == "unknown_region":
            fields[2 + int(rng.integers(0, 2))] = next(unknown)
        elif kind == "negative_quantity":
            column = 4 if k_i % 2 == 0 else 6  # vcpu, then storage_gib
            fields[column] = f"-{max(int(fields[column]), 1)}"
        inserts[day].append((i, ",".join(fields)))
    for day, items in inserts.items():
        lines = files[day]
        by_pos: dict[int, list[str]] = {}
        for pos, text in items:
            by_pos.setdefault(pos, []).append(text)
        merged: list[str] = []
        for pos, line in enumerate(lines):
            merged.append(line)
            merged.extend(by_pos.get(pos, []))
        files[day] = merged


def _peak_concurrent(reqs: _Requests, n_regions: int, resource_type: str) -> np.ndarray:
    """Peak of resources held per destination region (sessions active on [t, t + duration))."""
    q = reqs.quantity(resource_type)
    peaks = np.zeros(n_regions)
    for r in range(n_regions):
        m = reqs.dst == r
        if not m.any():
            continue
        starts, ends = reqs.t[m], reqs.t[m] + reqs.duration_s[m]
        times = np.concatenate([starts, ends])
        deltas = np.concatenate([q[m], -q[m]])
        is_start = np.concatenate([np.ones(starts.size), np.zeros(ends.size)])
        order = np.lexsort((is_start, times))  # ends before starts at equal times: end-exclusive
        peaks[r] = np.cumsum(deltas[order]).max()
    return peaks


def _held_at(reqs: _Requests, region: int, resource_type: str, grid: np.ndarray) -> np.ndarray:
    """Resources held by sessions destined to ``region`` at each instant of ``grid``."""
    m = reqs.dst == region
    q = reqs.quantity(resource_type)[m]
    starts, ends = reqs.t[m], reqs.t[m] + reqs.duration_s[m]
    s_order, e_order = np.argsort(starts, kind="stable"), np.argsort(ends, kind="stable")
    s_cum = np.concatenate([[0.0], np.cumsum(q[s_order])])
    e_cum = np.concatenate([[0.0], np.cumsum(q[e_order])])
    started = s_cum[np.searchsorted(starts[s_order], grid, side="right")]
    ended = e_cum[np.searchsorted(ends[e_order], grid, side="right")]
    return started - ended


# ---------------------------------------------------------------------------------------------
# Inventory
# ---------------------------------------------------------------------------------------------

_POOL_FLOORS = {"vcpu": 64.0, "memory_gib": 256.0, "storage_gib": 1000.0, "bandwidth_gbps": 10.0}


def _round_sig(x: float, digits: int = 3) -> float:
    """Round up to ``digits`` significant figures: capacity figures people actually quote."""
    if x <= 0:
        return 0.0
    scale = 10.0 ** (np.floor(np.log10(x)) - digits + 1)
    return float(np.ceil(x / scale - EPS) * scale)


def _fmt(x: float, decimals: int = 2) -> str:
    """Fixed-precision number without trailing zeros (stable bytes, compact files)."""
    text = f"{x:.{decimals}f}"
    return text.rstrip("0").rstrip(".") if "." in text else text


def _pools(
    regions: tuple[str, ...], peaks: dict[str, np.ndarray], rng: np.random.Generator
) -> list[list[str]]:
    """Pools sized from peak concurrent demand: 25-40 % utilisation at peak, ~60 % for the region
    with the smallest peak vcpu demand (a tight region the planner must treat carefully)."""
    smallest = int(np.argmin(peaks["vcpu"]))
    rows: list[list[str]] = []
    for r_i in np.argsort(np.asarray(regions), kind="stable"):
        target = rng.uniform(0.57, 0.63) if r_i == smallest else rng.uniform(0.27, 0.38)
        for rt in RESOURCE_TYPES:
            ratio = float(np.clip(target + rng.normal(0.0, 0.015), 0.25, 0.65))
            available = _round_sig(max(peaks[rt][r_i] / ratio, _POOL_FLOORS[rt]))
            total = _round_sig(available / rng.uniform(0.65, 0.85))
            rows.append([regions[r_i], rt, _fmt(available), _fmt(total)])
    return rows


def _catalog(
    regions: tuple[str, ...], profiles: dict[str, tuple[float, float, float]], rng: np.random.Generator
) -> list[list[str]]:
    """6-8 instance types per region; regional price multipliers; spot 40-70 % off on-demand."""
    optional = [t for t in _BASE_CATALOG if t not in _CORE_TYPES]
    rows: list[list[str]] = []
    for region in sorted(regions):
        extra = rng.choice(len(optional), int(rng.integers(1, 4)), replace=False)
        types = sorted([*_CORE_TYPES, *(optional[int(i)] for i in extra)])
        multiplier = profiles[region][2]
        for it in types:
            assert INSTANCE_TYPE_PATTERN.match(it), it
            vcpu, mem, storage, net, price = _BASE_CATALOG[it]
            on_demand = round(price * multiplier, 4)
            spot = round(on_demand * (1.0 - rng.uniform(0.40, 0.70)), 4)
            interruption = float(np.exp(rng.uniform(np.log(0.001), np.log(0.02))))
            rows.append(
                [region, it, _fmt(vcpu), _fmt(mem), _fmt(storage), _fmt(net, 1),
                 f"{on_demand:.4f}", f"{spot:.4f}", f"{interruption:.4f}"]
            )  # fmt: skip
    return rows


# ---------------------------------------------------------------------------------------------
# Telemetry
# ---------------------------------------------------------------------------------------------


def _ar_noise(rng: np.random.Generator, n: int, sd: float, memory: int) -> np.ndarray:
    """Smooth, autocorrelated noise: white noise through a normalised exponential kernel."""
    kernel = 0.97 ** np.arange(memory)
    kernel /= np.sqrt((kernel**2).sum())
    white = rng.normal(0.0, sd, n + memory - 1)
    return np.convolve(white, kernel, mode="valid")


def _gap_mask(rng: np.random.Generator, n: int, per_day: float, days: int, min_len: int, max_len: int) -> np.ndarray:
    """True where a row exists; at least one gap per series so consumers must handle holes."""
    keep = np.ones(n, dtype=bool)
    for _ in range(1 + int(rng.poisson(per_day * days))):
        length = int(rng.integers(min_len, max_len + 1))
        start = int(rng.integers(0, max(n - length, 1)))
        keep[start : start + length] = False
    return keep


def _pool_quantities(pools: list[list[str]]) -> dict[tuple[str, str], tuple[float, float]]:
    """(region, resource) -> (available, total) from formatted pool rows."""
    return {(r[0], r[1]): (float(r[2]), float(r[3])) for r in pools}


def _region_telemetry(
    t0: int,
    days: int,
    regions: tuple[str, ...],
    offsets: np.ndarray,
    reqs: _Requests,
    pools: list[list[str]],
    rng: np.random.Generator,
) -> list[list[str]]:
    """5-minute utilisation = background (already used share, daily cycle) + peering demand."""
    step = 300
    n = days * SECONDS_PER_DAY // step
    grid = t0 + np.arange(n, dtype=np.int64) * step
    ts = _epoch_to_iso(grid)
    quantities = _pool_quantities(pools)
    columns = {"cpu": "vcpu", "memory": "memory_gib", "bandwidth": "bandwidth_gbps"}
    daily_swing = {"cpu": 0.25, "memory": 0.08, "bandwidth": 0.40}
    noise_sd = {"cpu": 0.008, "memory": 0.003, "bandwidth": 0.012}
    per_day: list[list[tuple[int, str]]] = [[] for _ in range(days)]
    for r_i, region in enumerate(regions):
        local_hour = np.mod((grid - t0) / 3600.0 + offsets[r_i], 24)
        prof = np.interp(local_hour, np.arange(24) + 0.5, _DAILY_PROFILE, period=24)
        util = {}
        for key, rt in columns.items():
            available, total = quantities[(region, rt)]
            used_share = 1.0 - available / total
            background = used_share * (1.0 + daily_swing[key] * (prof - 1.0)) * (1.0 + _ar_noise(rng, n, 0.03, 120))
            held = _held_at(reqs, r_i, rt, grid)
            util[key] = np.clip(background + held / total + rng.normal(0.0, noise_sd[key], n), 0.0, 1.0)
        keep = _gap_mask(rng, n, 0.15, days, 3, 36)
        for k in np.flatnonzero(keep).tolist():
            line = f"{ts[k]},{region},{util['cpu'][k]:.4f},{util['memory'][k]:.4f},{util['bandwidth'][k]:.4f}"
            per_day[k * step // SECONDS_PER_DAY].append((k, line))
    return [[line for _, line in sorted(rows, key=lambda x: x[0])] for rows in per_day]


def _app_telemetry(
    t0: int,
    days: int,
    regions: tuple[str, ...],
    offsets: np.ndarray,
    sizes: np.ndarray,
    region_factor: np.ndarray,
    trend: np.ndarray,
    rng: np.random.Generator,
) -> list[list[str]]:
    """15-minute active users and transactions following the region's demand intensity."""
    step = 900
    n = days * SECONDS_PER_DAY // step
    grid = t0 + np.arange(n, dtype=np.int64) * step
    ts = _epoch_to_iso(grid)
    hours_f = (grid - t0) / 3600.0
    hour_centres = np.arange(region_factor.shape[1]) + 0.5
    per_day: list[list[tuple[int, str]]] = [[] for _ in range(days)]
    for r_i, region in enumerate(regions):
        intensity = np.interp(hours_f, hour_centres, region_factor[r_i] * trend)
        users = np.round(120_000 * sizes[r_i] * intensity * np.exp(_ar_noise(rng, n, 0.04, 24)))
        tps = users * 0.011 * np.exp(rng.normal(0.0, 0.06, n))
        keep = _gap_mask(rng, n, 0.1, days, 1, 12)
        for k in np.flatnonzero(keep).tolist():
            values = (str(ts[k]), region, int(users[k]), round(float(tps[k]), 2))
            row = dict(zip(APP_TELEMETRY.names, values, strict=True))
            per_day[k * step // SECONDS_PER_DAY].append((k, json.dumps(row, separators=(",", ":"))))
    return [[line for _, line in sorted(rows, key=lambda x: x[0])] for rows in per_day]


# ---------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------


def _reset_dirs(out: Path) -> None:
    """Empty the dataset folders we own (keeping README.md) so no stale partition survives."""
    for name in _OWNED_DIRS:
        folder = out / name
        if folder.is_dir():
            for child in folder.iterdir():
                if child.name == "README.md":
                    continue
                if child.is_dir() and not child.is_symlink():
                    shutil.rmtree(child)
                else:
                    child.unlink()
        folder.mkdir(parents=True, exist_ok=True)


def _write_text(path: Path, lines: list[str]) -> None:
    """UTF-8, '\\n' line endings, trailing newline: byte-stable on every platform."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8", newline="\n") as fh:
        fh.write("".join(f"{line}\n" for line in lines))


def _write_partitioned(
    folder: Path, start: date, ext: str, header: str | None, files: list[list[str]]
) -> int:
    """One file per UTC day named YYYY-MM-DD.<ext>; returns the data lines written."""
    rows = 0
    for d, lines in enumerate(files):
        path = folder / f"{(start + timedelta(days=d)).isoformat()}.{ext}"
        _write_text(path, ([header] if header else []) + lines)
        rows += len(lines)
    return rows


def _write_csv(path: Path, names: list[str], rows: list[list[str]]) -> int:
    """A small reference CSV; fields containing a comma or quote are quoted per RFC 4180."""

    def cell(value: str) -> str:
        return f'"{value.replace(chr(34), 2 * chr(34))}"' if ("," in value or '"' in value) else value

    _write_text(path, [",".join(names), *(",".join(cell(v) for v in row) for row in rows)])
    return len(rows)
