"""What the plan stage reads besides the forecast: the recent request mix and the previous plan.

Both respect the run's interval: nothing at or after `interval.end` is read.
"""

from __future__ import annotations

import contextlib
from datetime import datetime, timedelta

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.common import lake, plan_files
from pipeline.common.config import Settings
from pipeline.common.schemas import PRIORITIES, RESOURCE_TYPES
from pipeline.plan.allocate import OfferKey
from pipeline.plan.bounds import clamp_requests
from pipeline.plan.core import Cell, RegionMix, default_mix
from pipeline.plan.packing import DIMS


def request_mix(lake_root: str, end: datetime, lookback_days: int, regions: list[str], critical_share_default: float,
                *, clamped: list[dict] | None = None) -> dict[str, RegionMix]:
    """Per destination region: the priority mix of concurrent demand and the request sizes, over
    [end − lookback_days, end).

    A request holds its resources for `duration_s`, so its weight in the concurrent mix is
    size × duration (priority shares) and duration (size samples). A region without recent
    requests takes the mix of all regions; with none at all, `critical_share_default`. Sizes and
    durations outside the contract's bounds are clamped (entries appended to `clamped`, see
    pipeline.plan.bounds).
    """
    table = lake.read_time_range(lake_root, "peering_requests", end - timedelta(days=lookback_days), end, "requested_at")
    if table.num_rows == 0:
        return {r: default_mix(critical_share_default) for r in regions}
    frame = table.to_pandas().sort_values(["requested_at", "request_id"], kind="stable")
    frame = frame[frame["priority"].isin(PRIORITIES)]
    frame, entries = clamp_requests(frame, tuple(DIMS))
    if clamped is not None:
        clamped.extend(entries)

    def mix_of(part: pd.DataFrame, source: str) -> RegionMix:
        weight = part["duration_s"].to_numpy()
        seconds = {r: part[r].to_numpy() * weight for r in RESOURCE_TYPES}
        totals = {r: float(seconds[r].sum()) for r in RESOURCE_TYPES}
        shares = {}
        for p in PRIORITIES:
            mask = (part["priority"] == p).to_numpy()
            shares[p] = {r: (float(seconds[r][mask].sum()) / totals[r]) if totals[r] > 0 else 0.0 for r in RESOURCE_TYPES}
        return RegionMix(class_share=shares, samples=part[list(DIMS)].to_numpy(float), weights=weight,
                         requests=len(part), source=source)

    overall = mix_of(frame, "lake, all regions")
    by_region = {str(region): part for region, part in frame.groupby("destination_region", sort=False)}  # one pass
    return {region: mix_of(by_region[region], "lake") if region in by_region else overall for region in regions}


def _published(settings: Settings, plan_id: str, attempt: int | None) -> tuple[dict, bytes] | None:
    """(manifest, verified plan.parquet bytes) of a published attempt (newest when `attempt` is None), or None."""
    root = settings.lake_root
    try:
        attempt = plan_files.resolve_attempt(root, plan_id) if attempt is None else attempt
        manifest, files = plan_files.read_attempt(root, plan_id, attempt)
    except (OSError, ValueError):
        return None  # no published attempt, or one that does not verify: never plan against it
    return (manifest, files[plan_files.PLAN_FILE]) if manifest.get("status") == "published" else None


def previous_plan(settings: Settings, end: datetime) -> tuple[str, pd.DataFrame] | None:
    """The newest published, verified plan created before `end` (LATEST first, else the plans directory)."""
    cutoff = pd.Timestamp(end)
    candidates: list[tuple[str, int | None]] = []
    with contextlib.suppress(OSError, ValueError):  # no pointer, or a garbled one: the listing still finds the plans
        candidates.append(plan_files.read_latest(settings.lake_root))
    candidates.extend((plan_id, None) for plan_id in reversed(plan_files.plan_ids(settings.lake_root)))
    # LATEST is the newest published plan; plan ids (plan-<interval token>) sort by time, newest first.
    for plan_id, attempt in dict.fromkeys(candidates):
        found = _published(settings, plan_id, attempt)
        if found is None or pd.Timestamp(found[0].get("created_at")) >= cutoff:
            continue
        try:
            columns = ["valid_from", "region", "instance_type", "purchase_option", "count"]
            return plan_id, pq.read_table(pa.BufferReader(found[1]), columns=columns).to_pandas()
        except (OSError, ValueError):
            return None
    return None


def previous_counts(rows: pd.DataFrame, windows: list[pd.Timestamp], regions: list[str]) -> dict[Cell, dict[OfferKey, int]]:
    """Instance counts of the previous plan per (window, region). A window the previous plan does not
    cover compares against its last window (what will be running by then)."""
    if rows.empty:
        return {(w, r): {} for w in windows for r in regions}
    lines = rows.drop_duplicates(["valid_from", "region", "instance_type", "purchase_option"])
    lines = lines.assign(valid_from=pd.to_datetime(lines["valid_from"], utc=True))
    by_window: dict[pd.Timestamp, dict[str, dict[OfferKey, int]]] = {}
    for row in lines.itertuples(index=False):
        by_window.setdefault(row.valid_from, {}).setdefault(row.region, {})[(row.instance_type, row.purchase_option)] = int(row.count)
    known = sorted(by_window)
    out: dict[Cell, dict[OfferKey, int]] = {}
    for w in windows:
        ts = pd.Timestamp(w)
        source = ts if ts in by_window else max((k for k in known if k <= ts), default=known[-1])
        for r in regions:
            out[(w, r)] = dict(by_window.get(source, {}).get(r, {}))
    return out


__all__ = ["previous_counts", "previous_plan", "request_mix"]
