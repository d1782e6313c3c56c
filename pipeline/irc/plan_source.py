"""Read the published plan (`plans/LATEST` → `plans/plan_id=<id>/`) into an immutable view.

pyarrow + stdlib only, because this runs inside request-serving processes. Every way a plan can
be unusable (no pointer, missing file, bad bytes, bad values, unpublished) surfaces as a
`PlanUnavailable` subclass with a readable message: the coordinator turns it into on-demand
decisions instead of crashing its caller (DESIGN principle 4).

The lake root may be a local path or any URI pyarrow.fs understands (e.g. s3://bucket/lake).
"""

from __future__ import annotations

import bisect
import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from types import MappingProxyType
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from pipeline.schemas import PLAN_ID_PATTERN, REGION_PATTERN, UTC_TS

# PreAllocationTable (DESIGN): {region: {resource_type: quantity}}, read-only.
PreAllocationTable = Mapping[str, Mapping[str, float]]

LATEST_FILE = "LATEST"
PLAN_FILE = "plan.parquet"
MANIFEST_FILE = "manifest.json"
POOLS_FILE = "resource_pools.parquet"


class PlanUnavailable(Exception):
    """No usable plan; callers fall back to on-demand serving."""


class PlanMissing(PlanUnavailable):
    """The pointer or a file of the plan does not exist (yet)."""


class PlanCorrupt(PlanUnavailable):
    """A plan file exists but cannot be read or breaks the PLAN / RESOURCE_POOLS contract."""


@dataclass(frozen=True)
class PlanWindow:
    """One hourly validity window [valid_from, valid_to) and its pre-allocation."""

    valid_from: datetime
    valid_to: datetime
    allocation: PreAllocationTable

    @property
    def key(self) -> str:
        """Stable ledger key: the window start, so usage survives a plan re-publish."""
        return window_key(self.valid_from)

    def contains(self, at: datetime) -> bool:
        return self.valid_from <= at < self.valid_to


@dataclass(frozen=True)
class LoadedPlan:
    """A published plan as the IRC needs it; immutable so threads can share it without locks."""

    plan_id: str
    valid_from: datetime
    valid_to: datetime
    windows: tuple[PlanWindow, ...]  # sorted by valid_from, non-overlapping
    pools: PreAllocationTable  # on-demand capacity still available beyond the pre-allocation
    manifest: Mapping[str, Any]
    _starts: tuple[datetime, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_starts", tuple(w.valid_from for w in self.windows))

    @property
    def regions(self) -> frozenset[str]:
        """Regions the plan knows: from its pools snapshot and from its rows."""
        names = set(self.pools)
        for window in self.windows:
            names.update(window.allocation)
        return frozenset(names)

    def window_at(self, at: datetime) -> PlanWindow | None:
        """The window containing `at` (tz-aware), or None when no window covers it."""
        index = bisect.bisect_right(self._starts, at) - 1
        if index >= 0 and self.windows[index].contains(at):
            return self.windows[index]
        return None


def window_key(valid_from: datetime) -> str:
    """Canonical text key of a window (UTC ISO-8601), shared by every ledger backend."""
    return valid_from.astimezone(timezone.utc).isoformat()


# ---------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------


def read_latest_plan_id(lake_root: str | os.PathLike[str]) -> str:
    """The plan_id that `plans/LATEST` points to."""
    fs, root = _filesystem(lake_root)
    text = _read_bytes(fs, f"{root}/plans/{LATEST_FILE}").decode("utf-8", errors="replace").strip()
    if not PLAN_ID_PATTERN.match(text):
        raise PlanCorrupt(f"plans/{LATEST_FILE} does not hold a valid plan_id: {text[:80]!r}")
    return text


def load_latest_plan(lake_root: str | os.PathLike[str]) -> LoadedPlan:
    """Follow `plans/LATEST` and load that plan."""
    return load_plan(lake_root, read_latest_plan_id(lake_root))


def load_plan(lake_root: str | os.PathLike[str], plan_id: str) -> LoadedPlan:
    """Load and check one published plan (manifest, rows, pools snapshot)."""
    if not PLAN_ID_PATTERN.match(plan_id):
        raise PlanCorrupt(f"invalid plan_id {plan_id!r}")
    fs, root = _filesystem(lake_root)
    plan_dir = f"{root}/plans/plan_id={plan_id}"
    manifest = _read_manifest(fs, plan_dir, plan_id)
    valid_from = _parse_instant(manifest.get("valid_from"), "manifest valid_from")
    valid_to = _parse_instant(manifest.get("valid_to"), "manifest valid_to")
    if valid_from >= valid_to:
        raise PlanCorrupt(f"plan {plan_id}: manifest valid_from {valid_from} is not before valid_to")
    windows = _read_windows(fs, plan_dir, plan_id)
    pools = _read_pools(fs, plan_dir)
    return LoadedPlan(
        plan_id=plan_id,
        valid_from=valid_from,
        valid_to=valid_to,
        windows=windows,
        pools=pools,
        manifest=MappingProxyType(manifest),
    )


def load_pools(lake_root: str | os.PathLike[str], plan_id: str) -> PreAllocationTable:
    """Only the pools snapshot of a plan: lets on-demand serving work when plan.parquet is bad."""
    if not PLAN_ID_PATTERN.match(plan_id):
        raise PlanCorrupt(f"invalid plan_id {plan_id!r}")
    fs, root = _filesystem(lake_root)
    return _read_pools(fs, f"{root}/plans/plan_id={plan_id}")


# ---------------------------------------------------------------------------------------------
# Internals
# ---------------------------------------------------------------------------------------------


def _filesystem(lake_root: str | os.PathLike[str]) -> tuple[pafs.FileSystem, str]:
    root = os.fspath(lake_root)
    if "://" in root:
        try:
            fs, path = pafs.FileSystem.from_uri(root)
        except (pa.ArrowException, OSError, ValueError) as exc:
            raise PlanMissing(f"cannot open lake {root!r}: {exc}") from exc
        return fs, path.rstrip("/")
    return pafs.LocalFileSystem(), os.path.abspath(root)


def _read_bytes(fs: pafs.FileSystem, path: str) -> bytes:
    try:
        with fs.open_input_stream(path) as stream:
            return stream.read()
    except FileNotFoundError as exc:
        raise PlanMissing(f"{path} not found") from exc
    except (pa.ArrowException, OSError) as exc:
        raise PlanCorrupt(f"cannot read {path}: {exc}") from exc


def _read_table(fs: pafs.FileSystem, path: str, required: Mapping[str, pa.DataType]) -> pa.Table:
    """Read the required columns of a Parquet file, cast to the contract types."""
    try:
        with fs.open_input_file(path) as handle:
            parquet = pq.ParquetFile(handle)
            missing = [name for name in required if name not in parquet.schema_arrow.names]
            if missing:
                raise PlanCorrupt(f"{path} lacks column(s) {', '.join(missing)}")
            table = parquet.read(columns=list(required))
        return pa.table({name: table.column(name).cast(dtype) for name, dtype in required.items()})
    except FileNotFoundError as exc:
        raise PlanMissing(f"{path} not found") from exc
    except (pa.ArrowException, OSError, ValueError, TypeError) as exc:
        raise PlanCorrupt(f"cannot read {path}: {exc}") from exc


def _read_manifest(fs: pafs.FileSystem, plan_dir: str, plan_id: str) -> dict[str, Any]:
    raw = _read_bytes(fs, f"{plan_dir}/{MANIFEST_FILE}")
    try:
        manifest = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise PlanCorrupt(f"plan {plan_id}: {MANIFEST_FILE} is not valid JSON: {exc}") from exc
    if not isinstance(manifest, dict):
        raise PlanCorrupt(f"plan {plan_id}: {MANIFEST_FILE} is not a JSON object")
    if manifest.get("plan_id") != plan_id:
        raise PlanCorrupt(f"plan {plan_id}: manifest plan_id is {manifest.get('plan_id')!r}")
    if manifest.get("status") != "published":
        raise PlanUnavailable(f"plan {plan_id}: status is {manifest.get('status')!r}, not 'published'")
    return manifest


def _parse_instant(value: Any, what: str) -> datetime:
    """ISO-8601 → tz-aware UTC datetime; a missing offset is read as UTC (the contract's zone)."""
    if not isinstance(value, str):
        raise PlanCorrupt(f"{what} is missing or not a string: {value!r}")
    try:
        parsed = datetime.fromisoformat(value.strip())
    except ValueError as exc:
        raise PlanCorrupt(f"{what} is not ISO-8601: {value!r}") from exc
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)
    return parsed.astimezone(timezone.utc)


def _read_windows(fs: pafs.FileSystem, plan_dir: str, plan_id: str) -> tuple[PlanWindow, ...]:
    table = _read_table(
        fs,
        f"{plan_dir}/{PLAN_FILE}",
        {
            "plan_id": pa.string(),
            "valid_from": UTC_TS,
            "valid_to": UTC_TS,
            "region": pa.string(),
            "resource_type": pa.string(),
            "quantity": pa.float64(),
        },
    )
    bounds: dict[datetime, datetime] = {}
    totals: dict[datetime, dict[str, dict[str, float]]] = {}
    for row_number, row in enumerate(table.to_pylist()):
        where = f"plan {plan_id} row {row_number}"
        if row["plan_id"] != plan_id:
            raise PlanCorrupt(f"{where}: plan_id is {row['plan_id']!r}")
        start, end = row["valid_from"], row["valid_to"]
        if start is None or end is None or start >= end:
            raise PlanCorrupt(f"{where}: bad window [{start}, {end})")
        if bounds.setdefault(start, end) != end:
            raise PlanCorrupt(f"{where}: window starting {start} has two different ends")
        region, resource_type, quantity = row["region"], row["resource_type"], row["quantity"]
        if not isinstance(region, str) or not REGION_PATTERN.match(region):
            raise PlanCorrupt(f"{where}: invalid region {region!r}")
        if not resource_type:
            raise PlanCorrupt(f"{where}: missing resource_type")
        if quantity is None or not math.isfinite(quantity) or quantity < 0:
            raise PlanCorrupt(f"{where}: invalid quantity {quantity!r}")
        per_region = totals.setdefault(start, {}).setdefault(region, {})
        per_region[resource_type] = per_region.get(resource_type, 0.0) + quantity

    windows = tuple(
        PlanWindow(valid_from=start, valid_to=bounds[start], allocation=_freeze(totals[start]))
        for start in sorted(bounds)
    )
    for earlier, later in zip(windows, windows[1:]):
        if earlier.valid_to > later.valid_from:
            raise PlanCorrupt(f"plan {plan_id}: windows {earlier.key} and {later.key} overlap")
    return windows


def _read_pools(fs: pafs.FileSystem, plan_dir: str) -> PreAllocationTable:
    table = _read_table(
        fs,
        f"{plan_dir}/{POOLS_FILE}",
        {"region": pa.string(), "resource_type": pa.string(), "available_quantity": pa.float64()},
    )
    pools: dict[str, dict[str, float]] = {}
    for row_number, row in enumerate(table.to_pylist()):
        region, resource_type, available = row["region"], row["resource_type"], row["available_quantity"]
        where = f"{POOLS_FILE} row {row_number}"
        if not isinstance(region, str) or not REGION_PATTERN.match(region):
            raise PlanCorrupt(f"{where}: invalid region {region!r}")
        if not resource_type:
            raise PlanCorrupt(f"{where}: missing resource_type")
        if available is None or not math.isfinite(available) or available < 0:
            raise PlanCorrupt(f"{where}: invalid available_quantity {available!r}")
        per_region = pools.setdefault(region, {})
        per_region[resource_type] = per_region.get(resource_type, 0.0) + available
    return _freeze(pools)


def _freeze(table: dict[str, dict[str, float]]) -> PreAllocationTable:
    return MappingProxyType({region: MappingProxyType(dict(q)) for region, q in table.items()})
