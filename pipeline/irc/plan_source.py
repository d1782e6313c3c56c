"""Read the published plan (`plans/LATEST` → `plans/plan_id=<id>/attempt=<n>/`) into an immutable view.

Runs inside request-serving processes, so pyarrow is imported only when a plan is actually
read (`import pipeline.irc` stays light) and the rows are checked and summed with vectorised
pyarrow compute (a 100k-line plan loads in well under a second). The files are read once as
bytes, checked against the sha256 the manifest records (`PlanUnverified` otherwise), and parsed
from those same bytes. Every way a plan can be unusable (no pointer, missing file, bad bytes,
bad hashes, bad values, unpublished) surfaces as a
`PlanUnavailable` subclass with a readable message: the coordinator keeps serving what it had,
or serves on demand, instead of crashing its caller (DESIGN principle 4).

The lake root may be a local path or an s3:// URI (through `pipeline.common.storage`, which honours
AWS_ENDPOINT_URL / PEERSCALE_S3_ENDPOINT).
"""

from __future__ import annotations

import bisect
import itertools
import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any, TypeGuard

from pipeline.common.numeric import SECONDS_PER_HOUR
from pipeline.irc.contract import PLAN_ID_PATTERN, REGION_PATTERN, RESOURCE_TYPES

# PreAllocationTable (DESIGN): {region: {resource_type: quantity}}, read-only.
PreAllocationTable = Mapping[str, Mapping[str, float]]
# One ledger capacity row: (window_start_s, window_end_s, region, resource_type, quantity).
CapacityRow = tuple[int, int, str, str, float]
# Warm capacity (pipeline.plan.warm) sits in the same ledger under `<region>/warm`, so every backend's
# atomic, cross-replica reservation applies to it unchanged.
WARM_SUFFIX = "/warm"


def warm_key(region: str) -> str:
    """The ledger key of a region's warm capacity."""
    return region + WARM_SUFFIX

LATEST_FILE = "LATEST"
PLAN_FILE = "plan.parquet"
MANIFEST_FILE = "manifest.json"
POOLS_FILE = "resource_pools.parquet"
FALLBACK_SEARCH_PLANS = 8  # plan ids looked at, newest first, when LATEST is unusable
_US_PER_SECOND = 1_000_000  # plan timestamps are read as µs since the epoch


class PlanUnavailable(Exception):
    """No usable plan; callers fall back to what they had, or to on-demand serving."""


class PlanMissing(PlanUnavailable):
    """The pointer or a file of the plan does not exist (yet)."""


class PlanCorrupt(PlanUnavailable):
    """A plan file exists but cannot be read or breaks the PLAN / RESOURCE_POOLS contract."""


class PlanUnverified(PlanCorrupt, ValueError):
    """A plan's files do not match the sha256 in its manifest (or it carries none): never served from.

    Also a ValueError, like pipeline.common.plan_files.PlanIntegrityError, which callers outside
    the IRC catch."""


@dataclass(frozen=True)
class PlanWindow:
    """One validity window [valid_from, valid_to) and its pre-allocation."""

    valid_from: datetime
    valid_to: datetime
    allocation: PreAllocationTable
    cost_per_hour: float = 0.0  # sum of the window's plan lines' hourly_cost (all regions)
    # warm (stopped) capacity per region and resource: warm_count/count of each line's quantity;
    # None when the plan has no warm column (plans made before the warm tier)
    warm: PreAllocationTable | None = None
    start_s: int = field(init=False, repr=False, compare=False)
    end_s: int = field(init=False, repr=False, compare=False)
    key: str = field(init=False, repr=False, compare=False)  # readable (UTC ISO-8601 start); ledgers use start_s

    def __post_init__(self) -> None:
        object.__setattr__(self, "start_s", int(self.valid_from.timestamp()))
        object.__setattr__(self, "end_s", int(self.valid_to.timestamp()))
        object.__setattr__(self, "key", window_key(self.valid_from))

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
    created_at: datetime | None = None  # manifest created_at (plan age metric)
    attempt: int | None = None  # the plan's attempt directory (plans/plan_id=<id>/attempt=<n>)
    # Serving topology (manifest `redundancy` and `relocations`, see `read_topology`): the region each
    # region fails over to (its N+1 headroom is held there), and per (window start_s, region) the
    # regions the planner moved that region's flexible demand to, most moved first.
    partners: Mapping[str, str] = field(default_factory=dict)
    relocations: Mapping[tuple[int, str], tuple[str, ...]] = field(default_factory=dict)
    # Availability zones per region (manifest `zones`, see `read_zones`): read once per load for
    # explanations (`zone_note`), never on the decision path.
    zones: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    _starts: tuple[float, ...] = field(init=False, repr=False, compare=False)
    valid_from_s: float = field(init=False, repr=False, compare=False)
    valid_to_s: float = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_starts", tuple(w.start_s for w in self.windows))
        object.__setattr__(self, "valid_from_s", self.valid_from.timestamp())
        object.__setattr__(self, "valid_to_s", self.valid_to.timestamp())

    @property
    def regions(self) -> frozenset[str]:
        """Regions the plan knows: from its pools snapshot and from its rows."""
        names = set(self.pools)
        for window in self.windows:
            names.update(window.allocation)
        return frozenset(names)

    def window_at(self, at: datetime) -> PlanWindow | None:
        """The window containing `at` (tz-aware), or None when no window covers it."""
        return self.window_at_s(at.timestamp())

    def window_at_s(self, at_s: float) -> PlanWindow | None:
        """The window containing POSIX time `at_s`, or None."""
        index = bisect.bisect_right(self._starts, at_s) - 1
        if index >= 0:
            window = self.windows[index]
            if at_s < window.end_s:
                return window
        return None

    def capacity_rows(self) -> list[CapacityRow]:
        """The pre-allocation as ledger rows (window start/end in POSIX seconds)."""
        return [
            (w.start_s, w.end_s, region, resource_type, quantity)
            for w in self.windows
            for region, quantities in w.allocation.items()
            for resource_type, quantity in quantities.items()
        ]

    def capacity_rows_full(self) -> list[CapacityRow]:
        """`capacity_rows` plus explicit zeros, so every (window, region, resource) the plan covers
        is stated: a newer plan that drops a resource in a window sets its capacity to 0 in the
        ledger instead of leaving the older plan's figure there. A plan with a warm column states its
        warm capacity the same way, under `warm_key(region)` (zeros where it plans none)."""
        regions = sorted({region for w in self.windows for region in w.allocation})
        types = sorted({rt for w in self.windows for q in w.allocation.values() for rt in q} | set(RESOURCE_TYPES))
        rows = [
            (w.start_s, w.end_s, region, rt, float(w.allocation.get(region, {}).get(rt, 0.0)))
            for w in self.windows
            for region in regions
            for rt in types
        ]
        rows.extend(
            (w.start_s, w.end_s, warm_key(region), rt, float(w.warm.get(region, {}).get(rt, 0.0)))
            for w in self.windows if w.warm is not None
            for region in regions
            for rt in types
        )
        return rows

    def zone_note(self, region: str | None) -> str | None:
        """Where `region`'s pre-allocated capacity sits: its zones and their N+1 headroom (None: the plan names none)."""
        entry = self.zones.get(region) if region else None
        if not entry:
            return None
        where = ", ".join(f"{zone} ({n})" for zone, n in entry["instances"].items()) or ", ".join(entry["zones"])
        text = f"capacity in {region} sits in {where or 'one unnamed zone'}"
        if entry["n_plus_one"] and entry["spare"] > 0:
            text += (f"; N+1 across zones: {entry['spare']} instance(s) of headroom in the plan's first window, "
                     "so losing any one zone still leaves the planned capacity")
        return f"{text} ({entry['reason']})" if entry["reason"] else text

    def cost_between(self, start_s: float, end_s: float) -> float:
        """Cost of the pre-allocation held over [start_s, end_s) (pro rata by window hours)."""
        total = 0.0
        for w in self.windows:
            overlap = min(end_s, w.end_s) - max(start_s, w.start_s)
            if overlap > 0:
                total += w.cost_per_hour * overlap / SECONDS_PER_HOUR
        return total


def window_key(valid_from: datetime) -> str:
    """Readable text key of a window (UTC ISO-8601)."""
    return valid_from.astimezone(UTC).isoformat()


# ---------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------


def read_latest_plan_id(lake_root: str | os.PathLike[str]) -> str:
    """The plan_id that `plans/LATEST` points to."""
    return latest_ref(lake_root)[0]


def latest_ref(lake_root: str | os.PathLike[str]) -> tuple[str, int]:
    """(plan_id, attempt) that `plans/LATEST` names; PlanCorrupt when it names none."""
    return _parse_ref(latest_signature(lake_root)[0])


def latest_signature(lake_root: str | os.PathLike[str]) -> tuple[str, float | None]:
    """(LATEST's text, its modification time): what the reload watcher compares between polls.

    The pointer is a few bytes (`plan_id=<id>/attempt=<n>`), so it is read every poll; a re-run
    publishes a new attempt, which changes the text.
    """
    fs, root = _filesystem(lake_root)
    path = f"{root}/plans/{LATEST_FILE}"
    text = _read_bytes(fs, path).decode("utf-8", errors="replace").strip()
    _parse_ref(text)
    try:
        mtime = fs.get_file_info(path).mtime
        stamp = mtime.timestamp() if mtime is not None else None
    except Exception:
        stamp = None
    return text, stamp


def _parse_ref(text: str) -> tuple[str, int]:
    from pipeline.common.plan_files import PlanIntegrityError, parse_pointer

    try:
        return parse_pointer(text)
    except PlanIntegrityError as exc:
        raise PlanCorrupt(str(exc)) from exc


def load_latest_plan(lake_root: str | os.PathLike[str]) -> LoadedPlan:
    """Follow `plans/LATEST` and load that plan."""
    plan_id, attempt = latest_ref(lake_root)
    return load_plan(lake_root, plan_id, attempt)


def load_signature(lake_root: str | os.PathLike[str], ref: str) -> LoadedPlan:
    """Load what a reload signature names: LATEST's `plan_id=<id>/attempt=<n>`, or a pinned plan_id."""
    if ref.startswith("plan_id="):
        return load_plan(lake_root, *_parse_ref(ref))
    return load_plan(lake_root, ref)


def load_plan(lake_root: str | os.PathLike[str], plan_id: str, attempt: int | None = None) -> LoadedPlan:
    """Load and check one published plan attempt (default: the plan's newest published attempt).

    The manifest's sha256 of plan.parquet and resource_pools.parquet are checked against the bytes
    read, once per load (never per request); a mismatch raises PlanUnverified.
    """
    if not isinstance(plan_id, str) or not PLAN_ID_PATTERN.match(plan_id):
        raise PlanCorrupt(f"invalid plan_id {plan_id!r}")
    fs, root = _filesystem(lake_root)
    attempt = _published_attempt(fs, root, plan_id) if attempt is None else attempt
    plan_dir = f"{root}/plans/plan_id={plan_id}/attempt={attempt}"
    manifest = _read_manifest(fs, plan_dir, plan_id, attempt)
    files = _verified(fs, plan_dir, manifest, f"plan {plan_id} attempt {attempt}")
    valid_from = _parse_instant(manifest.get("valid_from"), "manifest valid_from")
    valid_to = _parse_instant(manifest.get("valid_to"), "manifest valid_to")
    if valid_from >= valid_to:
        raise PlanCorrupt(f"plan {plan_id}: manifest valid_from {valid_from} is not before valid_to")
    try:
        created_at: datetime | None = _parse_instant(manifest.get("created_at"), "manifest created_at")
    except PlanCorrupt:
        created_at = None
    return LoadedPlan(
        plan_id=plan_id,
        valid_from=valid_from,
        valid_to=valid_to,
        windows=_read_windows(files[PLAN_FILE], f"{plan_dir}/{PLAN_FILE}", plan_id),
        pools=_read_pools(files[POOLS_FILE], f"{plan_dir}/{POOLS_FILE}"),
        manifest=MappingProxyType(manifest),
        created_at=created_at,
        attempt=attempt,
        **read_topology(manifest),
        zones=read_zones(manifest),
    )


def read_topology(manifest: Mapping[str, Any]) -> dict[str, Any]:
    """`partners` and `relocations` of a plan from its manifest (`pipeline.plan.planner._manifest`).

    `redundancy: {region: {"partner": name | null, ...}}` names each region's failover partner;
    `relocations: [{"window": iso, "from", "to", "quantity": {rt: q}}]` the demand moved per window.
    Both are optional (older plans, hand-made ones): a malformed entry is skipped, never fatal - the
    topology only adds serving options, the pre-allocation itself is verified and checked above.
    """
    partners: dict[str, str] = {}
    redundancy = manifest.get("redundancy")
    if isinstance(redundancy, Mapping):
        for region, entry in redundancy.items():
            partner = entry.get("partner") if isinstance(entry, Mapping) else None
            if _is_region(region) and _is_region(partner) and partner != region:
                partners[region] = partner
    moved: dict[tuple[int, str], dict[str, float]] = {}
    relocations = manifest.get("relocations")
    for move in relocations if isinstance(relocations, list) else ():
        if not isinstance(move, Mapping):
            continue
        source, target = move.get("from"), move.get("to")
        try:
            start = int(_parse_instant(move.get("window"), "relocation window").timestamp())
        except PlanCorrupt:
            continue
        if not (_is_region(source) and _is_region(target)) or source == target:
            continue
        quantity = move.get("quantity")
        total = sum(float(q) for q in quantity.values() if isinstance(q, int | float)) if isinstance(quantity, Mapping) else 0.0
        targets = moved.setdefault((start, source), {})
        targets[target] = targets.get(target, 0.0) + (total if math.isfinite(total) else 0.0)
    ordered = {key: tuple(sorted(t, key=lambda r: (-t[r], r))) for key, t in moved.items()}
    return {"partners": MappingProxyType(partners), "relocations": MappingProxyType(ordered)}


def read_zones(manifest: Mapping[str, Any]) -> Mapping[str, Mapping[str, Any]]:
    """Per region, the plan's zones, first-window instances per zone, N+1 headroom and why (manifest
    `zones.by_region`, `pipeline.plan.zones`). Optional like the topology: a malformed entry is skipped."""
    out: dict[str, Mapping[str, Any]] = {}
    by_region = manifest.get("zones", {}).get("by_region") if isinstance(manifest.get("zones"), Mapping) else None
    for region, entry in (by_region.items() if isinstance(by_region, Mapping) else ()):
        if not _is_region(region) or not isinstance(entry, Mapping):
            continue
        zones = [z for z in entry.get("zones") or () if isinstance(z, str) and z.startswith(region)]
        counts = entry.get("instances_first_window")
        counts = counts if isinstance(counts, Mapping) else {}
        instances = {z: n for z, n in sorted(counts.items()) if z in zones and isinstance(n, int)}
        spare = entry.get("spare_instances_first_window")
        out[region] = MappingProxyType({
            "zones": tuple(zones), "instances": MappingProxyType(instances), "n_plus_one": entry.get("n_plus_one") is True,
            "spare": spare if isinstance(spare, int) else 0, "reason": str(entry.get("reason") or "")[:300]})
    return MappingProxyType(out)


def _is_region(name: Any) -> TypeGuard[str]:
    return isinstance(name, str) and bool(REGION_PATTERN.match(name))


def load_newest_verified(lake_root: str | os.PathLike[str], *, skip: tuple[str, int] | None = None,
                         max_plans: int = FALLBACK_SEARCH_PLANS) -> LoadedPlan:
    """The newest published plan that loads and verifies (LATEST's own attempt `skip` excepted): what the
    IRC serves when LATEST is corrupt or unverifiable. Looks at the `max_plans` newest plan ids."""
    from pipeline.common import plan_files

    root = os.fspath(lake_root)
    try:
        plan_ids = list(reversed(plan_files.plan_ids(root)))[:max_plans]
    except Exception as exc:
        raise PlanMissing(f"cannot list plans under {root}: {exc}") from exc
    reasons = []
    for plan_id in plan_ids:
        try:
            numbers = plan_files.attempts(root, plan_id)
        except Exception as exc:
            reasons.append(f"{plan_id}: {exc}")
            continue
        for attempt in reversed(numbers):
            if skip == (plan_id, attempt):
                continue
            try:
                return load_plan(lake_root, plan_id, attempt)
            except PlanUnavailable as exc:
                reasons.append(f"{plan_id} attempt {attempt}: {exc}")
    raise PlanMissing("no verified published plan to fall back to" + (f" ({'; '.join(reasons[:3])})" if reasons else ""))


def load_pools(lake_root: str | os.PathLike[str], plan_id: str, attempt: int | None = None) -> PreAllocationTable:
    """Only the (verified) pools snapshot of a plan: lets on-demand serving work when plan.parquet is bad."""
    if not PLAN_ID_PATTERN.match(plan_id):
        raise PlanCorrupt(f"invalid plan_id {plan_id!r}")
    fs, root = _filesystem(lake_root)
    attempt = _published_attempt(fs, root, plan_id) if attempt is None else attempt
    plan_dir = f"{root}/plans/plan_id={plan_id}/attempt={attempt}"
    manifest = _read_manifest(fs, plan_dir, plan_id, attempt)
    files = _verified(fs, plan_dir, manifest, f"plan {plan_id} attempt {attempt}", (POOLS_FILE,))
    return _read_pools(files[POOLS_FILE], f"{plan_dir}/{POOLS_FILE}")


# ---------------------------------------------------------------------------------------------
# Internals
# ---------------------------------------------------------------------------------------------


def _filesystem(lake_root: str | os.PathLike[str]) -> tuple[Any, str]:
    from pipeline.common import storage  # pyarrow.fs: imported on first read, not at `import pipeline.irc`

    root = os.fspath(lake_root)
    try:
        fs, path = storage.filesystem(root)
    except Exception as exc:
        raise PlanMissing(f"cannot open lake {root!r}: {exc}") from exc
    return fs, path.rstrip("/")


def _read_bytes(fs: Any, path: str) -> bytes:
    import pyarrow as pa

    try:
        with fs.open_input_stream(path) as stream:
            return stream.read()
    except FileNotFoundError as exc:
        raise PlanMissing(f"{path} not found") from exc
    except (pa.ArrowException, OSError) as exc:
        raise PlanCorrupt(f"cannot read {path}: {exc}") from exc


def _read_table(data: bytes, path: str, required: Mapping[str, Any], optional: Mapping[str, Any] | None = None) -> Any:
    """The required (and present optional) columns of verified Parquet bytes, cast to contract types."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(pa.BufferReader(data))
        names = parquet.schema_arrow.names
        missing = [name for name in required if name not in names]
        if missing:
            raise PlanCorrupt(f"{path} lacks column(s) {', '.join(missing)}")
        wanted = {**required, **{k: v for k, v in (optional or {}).items() if k in names}}
        table = parquet.read(columns=list(wanted))
        return pa.table({name: table.column(name).cast(dtype) for name, dtype in wanted.items()})
    except PlanUnavailable:
        raise
    except (pa.ArrowException, OSError, ValueError, TypeError) as exc:
        raise PlanCorrupt(f"cannot read {path}: {exc}") from exc


def _read_manifest(fs: Any, plan_dir: str, plan_id: str, attempt: int) -> dict[str, Any]:
    raw = _read_bytes(fs, f"{plan_dir}/{MANIFEST_FILE}")
    try:
        manifest = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise PlanCorrupt(f"plan {plan_id}: {MANIFEST_FILE} is not valid JSON: {exc}") from exc
    if not isinstance(manifest, dict):
        raise PlanCorrupt(f"plan {plan_id}: {MANIFEST_FILE} is not a JSON object")
    if manifest.get("plan_id") != plan_id:
        raise PlanCorrupt(f"plan {plan_id}: manifest plan_id is {manifest.get('plan_id')!r}")
    if manifest.get("attempt") != attempt:
        raise PlanCorrupt(f"plan {plan_id} attempt {attempt}: manifest attempt is {manifest.get('attempt')!r}")
    if manifest.get("status") != "published":
        raise PlanUnavailable(f"plan {plan_id}: status is {manifest.get('status')!r}, not 'published'")
    return manifest


def _verified(fs: Any, plan_dir: str, manifest: Mapping[str, Any], where: str,
              names: tuple[str, ...] = (PLAN_FILE, POOLS_FILE)) -> dict[str, bytes]:
    """The bytes of `names`, checked against the manifest's sha256 (PlanUnverified on a mismatch)."""
    from pipeline.common.plan_files import PlanIntegrityError, verify_files

    try:
        return verify_files(manifest, lambda name: _read_bytes(fs, f"{plan_dir}/{name}"), where, names)
    except PlanIntegrityError as exc:
        raise PlanUnverified(str(exc)) from exc


def _published_attempt(fs: Any, root: str, plan_id: str) -> int:
    """The newest attempt of `plan_id` whose manifest says published (a pinned plan, an audit by id)."""
    import pyarrow.fs as pafs

    base = f"{root}/plans/plan_id={plan_id}"
    try:
        infos = fs.get_file_info(pafs.FileSelector(base, allow_not_found=True, recursive=False))
    except Exception as exc:
        raise PlanMissing(f"cannot list {base}: {exc}") from exc
    numbers = sorted((int(i.base_name[8:]) for i in infos
                      if i.base_name.startswith("attempt=") and i.base_name[8:].isdigit()), reverse=True)
    for attempt in numbers:
        try:
            _read_manifest(fs, f"{base}/attempt={attempt}", plan_id, attempt)
        except PlanUnavailable:
            continue
        return attempt
    raise PlanMissing(f"plan {plan_id}: no published attempt under {base}")


def _parse_instant(value: Any, what: str) -> datetime:
    """ISO-8601 → tz-aware UTC datetime; a missing offset is read as UTC (the contract's zone)."""
    if not isinstance(value, str):
        raise PlanCorrupt(f"{what} is missing or not a string: {value!r}")
    try:
        parsed = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError as exc:
        raise PlanCorrupt(f"{what} is not ISO-8601: {value!r}") from exc
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)


def _first_bad(table: Any, mask: Any) -> int:
    """Row number of the first True in a boolean mask (for error messages)."""
    import pyarrow.compute as pc

    return int(pc.index(mask, True).as_py())


def _check_names(values: list[Any], what: str, where: str, pattern: Any = None) -> None:
    for value in values:
        if not isinstance(value, str) or not value or (pattern is not None and not pattern.match(value)):
            raise PlanCorrupt(f"{where}: invalid {what} {value!r}")


def _read_windows(data: bytes, path: str, plan_id: str) -> tuple[PlanWindow, ...]:
    """plan.parquet → the plan's windows: rows checked, then summed per (window, region, resource)."""
    where = f"plan {plan_id}"
    table = _read_plan_table(data, path)
    if table.num_rows == 0:
        return ()
    start_us, end_us = _check_plan_rows(table, plan_id, where)
    bounds, totals, costs = _sum_per_window(table, start_us, end_us, where)
    warm = _warm_per_window(table, start_us)
    windows = tuple(
        PlanWindow(
            valid_from=_us_to_dt(start),
            valid_to=_us_to_dt(bounds[start]),
            allocation=_freeze(totals[start]),
            cost_per_hour=costs[start],  # hourly_cost is a rate (USD/h) whatever the window's length
            warm=None if warm is None else _freeze(warm.get(start, {})),
        )
        for start in sorted(bounds)
    )
    for earlier, later in itertools.pairwise(windows):
        if earlier.valid_to > later.valid_from:
            raise PlanCorrupt(f"{where}: windows {earlier.key} and {later.key} overlap")
    return windows


def _read_plan_table(data: bytes, path: str) -> Any:
    """The PLAN columns the IRC needs (hourly_cost when present), cast to their contract types."""
    import pyarrow as pa

    utc_us = pa.timestamp("us", tz="UTC")
    return _read_table(
        data,
        path,
        {
            "plan_id": pa.string(),
            "valid_from": utc_us,
            "valid_to": utc_us,
            "region": pa.string(),
            "resource_type": pa.string(),
            "quantity": pa.float64(),
        },
        {"hourly_cost": pa.float64(), "count": pa.int64(), "warm_count": pa.int64()},
    )


def _check_plan_rows(table: Any, plan_id: str, where: str) -> tuple[Any, Any]:
    """Raise PlanCorrupt naming the first bad row; returns the window bounds in µs (int64 columns)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    wrong_id = pc.fill_null(pc.not_equal(table["plan_id"], plan_id), True)
    if pc.any(wrong_id).as_py():
        row = _first_bad(table, wrong_id)
        raise PlanCorrupt(f"{where} row {row}: plan_id is {table['plan_id'][row].as_py()!r}")
    start_us = table["valid_from"].cast(pa.int64())
    end_us = table["valid_to"].cast(pa.int64())
    bad_window = pc.fill_null(pc.greater_equal(start_us, end_us), True)
    if pc.any(bad_window).as_py():
        row = _first_bad(table, bad_window)
        raise PlanCorrupt(f"{where} row {row}: bad window [{table['valid_from'][row]}, {table['valid_to'][row]})")
    quantity = table["quantity"]
    bad_quantity = pc.fill_null(pc.or_(pc.invert(pc.is_finite(quantity)), pc.less(quantity, 0.0)), True)
    if pc.any(bad_quantity).as_py():
        row = _first_bad(table, bad_quantity)
        raise PlanCorrupt(f"{where} row {row}: invalid quantity {quantity[row].as_py()!r}")
    _check_names(pc.unique(table["region"]).to_pylist(), "region", where, REGION_PATTERN)
    _check_names(pc.unique(table["resource_type"]).to_pylist(), "resource_type", where)
    return start_us, end_us


def _sum_per_window(
    table: Any, start_us: Any, end_us: Any, where: str
) -> tuple[dict[int, int], dict[int, dict[str, dict[str, float]]], dict[int, float]]:
    """Per window start (µs): its end, {region: {resource_type: quantity}} and the summed hourly cost."""
    import pyarrow as pa
    import pyarrow.compute as pc

    cost = table["hourly_cost"] if "hourly_cost" in table.column_names else pa.nulls(table.num_rows, pa.float64())
    cost = pc.if_else(pc.is_finite(pc.fill_null(cost, 0.0)), pc.fill_null(cost, 0.0), 0.0)  # missing/bad: 0
    keyed = pa.table(
        {
            "start": start_us,
            "end": end_us,
            "region": table["region"],
            "resource_type": table["resource_type"],
            "quantity": table["quantity"],
            "cost": cost,
        }
    )
    grouped = keyed.group_by(["start", "end", "region", "resource_type"], use_threads=False).aggregate(
        [("quantity", "sum"), ("cost", "sum")]
    )
    bounds: dict[int, int] = {}
    totals: dict[int, dict[str, dict[str, float]]] = {}
    costs: dict[int, float] = {}
    for start, end, region, resource_type, q, c in zip(
        grouped["start"].to_pylist(),
        grouped["end"].to_pylist(),
        grouped["region"].to_pylist(),
        grouped["resource_type"].to_pylist(),
        grouped["quantity_sum"].to_pylist(),
        grouped["cost_sum"].to_pylist(),
        strict=True,
    ):
        if bounds.setdefault(start, end) != end:
            raise PlanCorrupt(f"{where}: window starting {_us_to_dt(start).isoformat()} has two different ends")
        totals.setdefault(start, {}).setdefault(region, {})[resource_type] = float(q)
        costs[start] = costs.get(start, 0.0) + float(c)
    return bounds, totals, costs


def _warm_per_window(table: Any, start_us: Any) -> dict[int, dict[str, dict[str, float]]] | None:
    """Per window start (µs): {region: {resource_type: warm quantity}}, each line's quantity × warm_count / count
    (pipeline.plan.warm); None when the plan has no warm column. Null or negative warm counts count as none."""
    if "warm_count" not in table.column_names or "count" not in table.column_names:
        return None
    warm: dict[int, dict[str, dict[str, float]]] = {}
    for start, region, resource_type, q, count, n in zip(
        start_us.to_pylist(), table["region"].to_pylist(), table["resource_type"].to_pylist(), table["quantity"].to_pylist(),
        table["count"].to_pylist(), table["warm_count"].to_pylist(), strict=True,
    ):
        per_window = warm.setdefault(start, {})
        if n and n > 0 and count and count > 0:  # a region appears only with warm capacity: the IRC skips the rest at once
            cell = per_window.setdefault(region, {})
            cell[resource_type] = cell.get(resource_type, 0.0) + q * n / count
    return warm


def _us_to_dt(us: int) -> datetime:
    return datetime.fromtimestamp(us / _US_PER_SECOND, tz=UTC)


def _read_pools(data: bytes, path: str) -> PreAllocationTable:
    import pyarrow as pa

    table = _read_table(
        data,
        path,
        {"region": pa.string(), "resource_type": pa.string(), "available_quantity": pa.float64()},
    )
    pools: dict[str, dict[str, float]] = {}
    for row_number, (region, resource_type, available) in enumerate(
        zip(table["region"].to_pylist(), table["resource_type"].to_pylist(), table["available_quantity"].to_pylist())
    ):
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
