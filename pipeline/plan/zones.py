"""Availability zones: each region's lines spread over its zones, with N+1 across zones.

Runs after the optimisation (the CP-SAT model plans regions, not zones): a line of n instances in
a region planned over z ≥ 2 zones carries `zone_total(n, z)` instances, spread as evenly as
possible, so that losing any one zone still leaves n. That total is the least that does it: a
zone lost takes at most its own share, and some zone holds at least ⌈T/z⌉ of T, so T − ⌈T/z⌉ ≥ n
is necessary; the even spread reaches it, and no zone carries more than ⌈n/(z−1)⌉ (e.g. n over
2 zones: n in each; 4 over 3 zones: 2+2+2; 5 over 3: 3+3+2). The extra instances are the zone
headroom: priced into the plan's `hourly_cost` (billed like the others) and named per line in
`zone_spare_count` / `zone_spare_hourly_cost`; `count` stays the optimiser's n (what must
survive; the next plan's churn is measured on it).

Which zones a region uses, later layers win:

1. **the zone catalog** `inventory/zones.csv` (`region,zone`, one row per availability zone a
   region offers): default `DEFAULT_ZONES_PER_REGION` zones (the first ones by name) where it lists
   at least two; one zone where it lists one (no spread, no headroom; the manifest says why);
   the IaC default zone (`<region>a`) where it lists none;
2. **`inventory/planner.json`**, key `zones`: `{"per_region": 3, "regions": {"eu-west-1": 2,
   "us-east-1": ["us-east-1a", "us-east-1c"]}, "n_plus_one": true}`;
3. **`PEERSCALE_ZONES`** and `peerscale run --zones`: `3,eu-west-1=2,us-east-1=us-east-1a+us-east-1c`.

A count for every region is capped by what each region lists; a count or a zone list for one
region must be satisfiable there (ValueError naming the zone otherwise).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pipeline.common.schemas import REGION_PATTERN, RESOURCE_TYPES

ZONES_FILE = "inventory/zones.csv"
#: three where the catalog lists them: N+1 over z zones costs 1/(z-1) more, so 2 zones double the
#: fleet and 3 add half (bench/RESULTS.md: the demo plan 2.00x vs 1.57x); every AWS region lists >= 3
DEFAULT_ZONES_PER_REGION = 3
MAX_ZONES_PER_REGION = 26
ZONE_RULE = ("N+1 across zones: a line of n instances over z >= 2 zones carries the least total T with "
             "T - ceil(T/z) >= n, spread evenly (at most ceil(n/(z-1)) per zone), so losing any one zone leaves n")


def is_zone_of(zone: str, region: str) -> bool:
    """An availability zone name of `region`: the region code and one letter (`eu-west-1a`)."""
    return re.fullmatch(re.escape(region) + "[a-z]", zone) is not None


# -- the zone catalog -------------------------------------------------------------------------


@dataclass(frozen=True)
class ZoneCatalog:
    """The availability zones each region offers (`inventory/zones.csv`), and where they came from."""

    zones: dict[str, tuple[str, ...]]
    source: str
    fingerprint: str | None = None


def parse_zone_catalog(text: str, source: str) -> dict[str, tuple[str, ...]]:
    """`region,zone` CSV rows as {region: sorted zones}; ValueError naming the line for a bad row."""
    reader = csv.DictReader(io.StringIO(text.lstrip("\ufeff")))
    if not reader.fieldnames or {"region", "zone"} - set(reader.fieldnames):
        raise ValueError(f"{source}: the header must name the columns region,zone (got {reader.fieldnames})")
    zones: dict[str, set[str]] = {}
    for number, row in enumerate(reader, start=2):
        region, zone = (row.get("region") or "").strip(), (row.get("zone") or "").strip()
        if not REGION_PATTERN.match(region):
            raise ValueError(f"{source} line {number}: {region!r} is not a region code (e.g. eu-west-1)")
        if not is_zone_of(zone, region):
            raise ValueError(f"{source} line {number}: {zone!r} is not an availability zone of {region} "
                             f"(a zone is the region code and one letter, e.g. {region}a)")
        if zone in zones.setdefault(region, set()):
            raise ValueError(f"{source} line {number}: zone {zone} is listed twice")
        zones[region].add(zone)
    return {region: tuple(sorted(names)) for region, names in sorted(zones.items())}


def load_zone_catalog(source_root: str) -> ZoneCatalog:
    """`<source_root>/inventory/zones.csv`, or an empty catalog (every region in one zone) without it."""
    from pipeline.common import storage

    path = storage.join(source_root, ZONES_FILE)
    if not storage.exists(path):
        return ZoneCatalog(zones={}, source=f"none ({ZONES_FILE} not found)")
    raw = storage.read_bytes(path)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path} is not UTF-8: {exc}") from exc
    # named relative to the source root, so a run's manifest is the same wherever its sources live
    return ZoneCatalog(zones=parse_zone_catalog(text, path), source=ZONES_FILE,
                       fingerprint="sha256:" + hashlib.sha256(raw).hexdigest()[:16])


# -- configuration layers ---------------------------------------------------------------------

RegionChoice = int | tuple[str, ...]  # how many zones, or which ones


@dataclass(frozen=True)
class ZoneLayer:
    """One source of zone settings: a count for every region, counts or zone lists per region, N+1 on/off."""

    source: str
    per_region: int | None = None
    regions: dict[str, RegionChoice] = field(default_factory=dict)
    n_plus_one: bool | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "per_region": self.per_region, "n_plus_one": self.n_plus_one,
                "regions": {r: (list(v) if isinstance(v, tuple) else v) for r, v in sorted(self.regions.items())}}


def _zone_count(where: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValueError(f"{where}: {value!r} is not a whole number of zones")
    try:
        number = int(value)
    except ValueError:
        raise ValueError(f"{where}: {value!r} is not a whole number of zones") from None
    if not 1 <= number <= MAX_ZONES_PER_REGION:
        raise ValueError(f"{where}: {number} zones is out of range; use 1 to {MAX_ZONES_PER_REGION}")
    return number


def _region_choice(where: str, region: str, value: object) -> RegionChoice:
    """A count, or a list of zone names of `region` (each once)."""
    if not isinstance(value, list | tuple):
        return _zone_count(where, value)
    names = tuple(str(z).strip() for z in value)
    if not names:
        raise ValueError(f"{where}: an empty zone list; name at least one zone or give a count")
    bad = [z for z in names if not is_zone_of(z, region)]
    if bad:
        raise ValueError(f"{where}: {bad} are not availability zones of {region} (e.g. {region}a)")
    if len(set(names)) != len(names):
        raise ValueError(f"{where}: a zone is named twice in {list(names)}")
    return tuple(sorted(names))


def layer_from_dict(payload: object, source: str) -> ZoneLayer:
    """A `zones` object of planner.json ({"per_region": 2, "regions": {...}, "n_plus_one": true})."""
    if payload is None:
        return ZoneLayer(source=source)
    if not isinstance(payload, dict):
        raise ValueError(f"{source}: zones must be a JSON object with per_region, regions, n_plus_one")
    unknown = sorted(set(payload) - {"per_region", "regions", "n_plus_one", "comment"})
    if unknown:
        raise ValueError(f"{source}: zones has unknown keys {unknown}; known: per_region, regions, n_plus_one")
    raw_regions = payload.get("regions") or {}
    if not isinstance(raw_regions, dict):
        raise ValueError(f"{source}: zones.regions must map region -> a zone count or a list of zones")
    regions: dict[str, RegionChoice] = {}
    for region, value in raw_regions.items():
        if not REGION_PATTERN.match(str(region)):
            raise ValueError(f"{source}: zones.regions names {region!r}, which is not a region code")
        regions[str(region)] = _region_choice(f"{source}: zones.regions.{region}", str(region), value)
    n_plus_one = payload.get("n_plus_one")
    if n_plus_one is not None and not isinstance(n_plus_one, bool):
        raise ValueError(f"{source}: zones.n_plus_one must be true or false, not {n_plus_one!r}")
    per_region = payload.get("per_region")
    return ZoneLayer(source=source, regions=regions, n_plus_one=n_plus_one,
                     per_region=None if per_region is None else _zone_count(f"{source}: zones.per_region", per_region))


def layer_from_text(text: str | None, source: str) -> ZoneLayer:
    """Zones from `3,eu-west-1=2,us-east-1=us-east-1a+us-east-1c` (env variable and CLI option)."""
    payload: dict[str, Any] = {}
    for item in (text or "").split(","):
        item = item.strip()
        if not item:
            continue
        key, sep, value = item.partition("=")
        if not sep:
            payload["per_region"] = item
        elif "+" in value or not value.strip().isdigit():
            payload.setdefault("regions", {})[key.strip()] = value.split("+")
        else:
            payload.setdefault("regions", {})[key.strip()] = value.strip()
    return layer_from_dict(payload, source)


# -- resolution -------------------------------------------------------------------------------


@dataclass(frozen=True)
class RegionZones:
    """The zones a region's lines spread over, why, and whether they carry N+1 across them."""

    region: str
    zones: tuple[str, ...]  # empty: the catalog lists none (the IaC uses <region>a)
    reason: str
    n_plus_one: bool

    @property
    def spread(self) -> bool:
        return len(self.zones) >= 2


def _choose(region: str, listed: tuple[str, ...], layers: list[ZoneLayer], catalog_source: str) -> tuple[tuple[str, ...], str]:
    """The zones of one region and why; ValueError when a region-specific setting cannot be met."""
    count, origin = DEFAULT_ZONES_PER_REGION, "default"
    explicit: RegionChoice | None = None
    for layer in layers:
        if layer.per_region is not None:
            count, origin, explicit = layer.per_region, layer.source, None
        if region in layer.regions:
            explicit, origin = layer.regions[region], layer.source
    if isinstance(explicit, tuple):
        unknown = [z for z in explicit if z not in listed]
        if unknown:
            raise ValueError(f"{origin}: zones {unknown} for {region} are not in the zone catalog ({catalog_source} lists "
                             f"{', '.join(listed) or 'no zone'} for {region})")
        return explicit, f"{len(explicit)} zone(s) named in {origin}"
    if isinstance(explicit, int):
        if explicit > max(len(listed), 1):
            raise ValueError(f"{origin}: {explicit} zones asked for {region}, but {catalog_source} lists "
                             f"{len(listed)} ({', '.join(listed) or 'none'})")
        return listed[:explicit], f"{explicit} zone(s) for {region} in {origin}"
    if not listed:
        return (), f"one zone: {catalog_source} lists no zone for {region} (no spread, no zone headroom)"
    if len(listed) == 1:
        return listed, f"one zone: {catalog_source} lists only {listed[0]} for {region} (no spread, no zone headroom)"
    used = listed[:count]
    capped = f", capped at the {len(listed)} the catalog lists" if count > len(listed) else ""
    return used, f"{len(used)} of {len(listed)} catalog zones ({count} per region from {origin}{capped})"


def resolve_zones(catalog: ZoneCatalog, regions: list[str], layers: list[ZoneLayer]) -> dict[str, RegionZones]:
    """Each planned region's zones from the catalog and the layers (later wins; per-region beats every region)."""
    n_plus_one = next((layer.n_plus_one for layer in reversed(layers) if layer.n_plus_one is not None), True)
    out = {}
    for region in regions:
        zones, reason = _choose(region, catalog.zones.get(region, ()), layers, catalog.source)
        out[region] = RegionZones(region, zones, reason, n_plus_one and len(zones) >= 2)
    return out


# -- the spread -------------------------------------------------------------------------------


def zone_total(n: int, zones: int) -> int:
    """The fewest instances over `zones` zones such that any `zones − 1` of them hold `n` (n itself in one zone)."""
    if zones < 2 or n <= 0:
        return max(n, 0)
    total = n + math.ceil(n / (zones - 1)) - 1  # a lower bound: T − ⌈T/z⌉ ≥ n needs T ≥ n·z/(z−1)
    while total - math.ceil(total / zones) < n:
        total += 1
    return total


def zone_spread(n: int, zones: tuple[str, ...], n_plus_one: bool = True) -> tuple[tuple[str, int], ...]:
    """(zone, instances) for a line of `n`: `zone_total` (or n without N+1) as evenly as possible,
    the remainder on the first zones; zones left without an instance are omitted."""
    if n <= 0 or not zones:
        return ()
    total = zone_total(n, len(zones)) if n_plus_one else n
    base, extra = divmod(total, len(zones))
    return tuple((zone, base + (i < extra)) for i, zone in enumerate(zones) if base + (i < extra) > 0)


def spread_rows(rows: list[dict[str, Any]], zones: Mapping[str, RegionZones]) -> list[dict[str, Any]]:
    """The plan rows with their line's zones: `zone_counts` (JSON {zone: instances}), `zone_spare_count`,
    `zone_spare_hourly_cost`, and `hourly_cost` including the zone headroom (it is billed)."""
    out = []
    for row in rows:
        choice = zones.get(row["region"])
        count = int(row["count"])
        spread = zone_spread(count, choice.zones, choice.n_plus_one) if choice else ()
        spare = sum(n for _, n in spread) - count if spread else 0
        spare_cost = row["hourly_cost"] * spare / count if count > 0 else 0.0
        out.append({**row, "hourly_cost": round(row["hourly_cost"] + spare_cost, 8),
                    "zone_counts": json.dumps(dict(spread), sort_keys=True) if spread else None,
                    "zone_spare_count": spare, "zone_spare_hourly_cost": round(spare_cost, 8)})
    return out


def beyond_pool(rows: list[dict[str, Any]], pools: Mapping[str, Mapping[str, float]]) -> list[dict[str, Any]]:
    """Windows where a region's vCPU or memory with the zone headroom exceeds its pool (the optimiser
    kept the planned capacity within it; the headroom is added afterwards, so this is said, not hidden)."""
    held: dict[tuple[Any, str, str], list[float]] = {}
    for row in rows:
        if row["resource_type"] not in ("vcpu", "memory_gib") or row["count"] <= 0:
            continue
        entry = held.setdefault((row["valid_from"], row["region"], row["resource_type"]), [0.0, 0.0])
        entry[0] += row["quantity"]
        entry[1] += row["quantity"] * row["zone_spare_count"] / row["count"]
    out = []
    for (window, region, resource), (planned, headroom) in sorted(held.items(), key=lambda item: str(item[0])):
        pool = pools.get(region, {}).get(resource)
        if pool is not None and headroom > 0 and planned + headroom > pool + 1e-6:
            out.append({"window": str(window), "region": region, "resource_type": resource, "planned": round(planned, 3),
                        "zone_headroom": round(headroom, 3), "pool": round(pool, 3)})
    return out


def zones_manifest(rows: list[dict[str, Any]], zones: Mapping[str, RegionZones], catalog: ZoneCatalog,
                   layers: list[ZoneLayer], cost_before: float,
                   pools: Mapping[str, Mapping[str, float]] | None = None) -> dict[str, Any]:
    """The manifest's `zones`: rule, sources, and per region its zones, why, the first window's
    instances per zone, and what the zone headroom costs (per hour over the plan's windows)."""
    first = min((row["valid_from"] for row in rows), default=None)
    per_region: dict[str, dict[str, Any]] = {}
    for region, choice in sorted(zones.items()):
        per_region[region] = {"zones": list(choice.zones), "reason": choice.reason, "n_plus_one": choice.n_plus_one,
                              "instances_first_window": {}, "spare_instances_first_window": 0,
                              "hourly_cost_zone_headroom": 0.0}
    seen: set[tuple[Any, str]] = set()
    for row in rows:
        entry = per_region.get(row["region"])
        if entry is None:
            continue
        entry["hourly_cost_zone_headroom"] += row["zone_spare_hourly_cost"]
        if row["valid_from"] != first or (first, row["line_id"]) in seen:
            continue
        seen.add((first, row["line_id"]))
        entry["spare_instances_first_window"] += row["zone_spare_count"]
        for zone, n in json.loads(row["zone_counts"] or "{}").items():
            entry["instances_first_window"][zone] = entry["instances_first_window"].get(zone, 0) + n
    for entry in per_region.values():
        entry["hourly_cost_zone_headroom"] = round(entry["hourly_cost_zone_headroom"], 6)
    headroom = round(sum(e["hourly_cost_zone_headroom"] for e in per_region.values()), 6)
    return {"rule": ZONE_RULE, "catalog": {"source": catalog.source, "fingerprint": catalog.fingerprint},
            "layers": [layer.to_dict() for layer in layers], "by_region": per_region,
            "hourly_cost_before_zones": round(cost_before, 6), "hourly_cost_zone_headroom": headroom,
            "beyond_pool": beyond_pool(rows, pools or {}),
            "cost_rule": f"hourly_cost of a line includes its zone headroom; split evenly over its {len(RESOURCE_TYPES)} resource rows"}


__all__ = ["DEFAULT_ZONES_PER_REGION", "ZONES_FILE", "ZONE_RULE", "RegionZones", "ZoneCatalog", "ZoneLayer", "beyond_pool",
           "is_zone_of", "layer_from_dict", "layer_from_text", "load_zone_catalog", "parse_zone_catalog", "resolve_zones",
           "spread_rows", "zone_spread", "zone_total", "zones_manifest"]
