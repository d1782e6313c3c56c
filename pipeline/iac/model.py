"""The infrastructure a plan asks for: validated once, shared by the Terraform and CloudFormation
renderers and by the appliers.

Plans are made once an hour, so what is provisioned now is the plan's *span*: every window starting
less than an hour after its first window (:data:`PROVISIONED_SPAN`). For an hourly plan that is its
first window alone; a plan of 15-minute windows provisions its first four. Per region and line (a
``region/instance_type/purchase_option`` with at least one instance in some window of the span):

* **the group follows the windows**: it starts at the first window's instances (0 when the line
  has instances only later), and a *schedule* sets it to each later window's instances at that
  window's start (:attr:`InfraLine.schedule`, only where the number changes); ``max_size`` covers
  the span's largest window. At the span's end the group goes to 0 (the *window end*), unless the
  next plan, applied within the hour, moved that end on;
* **on-demand lines** become an EC2 capacity reservation plus a launch template and an auto scaling
  group that runs the instances in that reservation. A reservation is billed used or not, so it
  holds the span's *minimum*, the floor every window uses (per zone: :attr:`InfraLine.reserved_zones`;
  none at 0), and ends with the span; the scheduled windows above that floor run on unreserved
  on-demand capacity. Beside the group sits a *warm pool* of stopped, pre-initialised instances
  (the plan's ``warm_count``, or ``ceil(count × WARM_POOL_FRACTION)`` for plans without one) for
  bursts beyond the plan. AWS has no scheduled action for a warm pool's size, so the pool holds the
  span's largest warm pool throughout;
* **spot lines** become a launch template and an auto scaling group with a mixed instances
  policy (on-demand base 0, 0 % on demand above it: all spot, price-capacity-optimized). AWS
  refuses warm pools on mixed-instances and spot groups, so spot lines have none;
* **storage** the plan reserves on a line (``storage_gib`` rows) becomes an encrypted gp3 data
  volume on each of the line's instances (``ceil(quantity / count)`` GiB each);
* **peering**: each planned region pair gets a transit gateway peering attachment between the two
  regions' transit gateways (requester: the pair's alphabetically first region). Which pairs are
  planned is decided by :func:`pairs_from_forecast` (the pair forecast) or, without a forecast,
  every pair of regions that both have lines (:func:`all_pairs`).

Resource identities are keyed on ``region/instance_type/purchase_option``, not on the window or
the plan: consecutive plans update the same resources in place instead of replacing them (the
one-off scheduled actions of later windows are keyed on their start time as well).

Every value is validated (:mod:`pipeline.iac.safety`) before any template sees it.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from itertools import combinations, pairwise
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from pipeline.common.numeric import EPS
from pipeline.iac.safety import (
    RFC3339_UTC_FORMAT,
    UnsafePlanValue,
    check_count,
    check_instance_type,
    check_plan_id,
    check_purchase_option,
    check_quantity,
    check_region,
    check_schedule,
    check_tag_value,
    check_timestamp,
)

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "MIN_PAIR_REQUESTS",
    "PROVISIONED_SPAN",
    "REQUIRED_COLUMNS",
    "WARM_POOL_FRACTION",
    "InfraLine",
    "InfraModel",
    "InfraRegion",
    "PeeringPair",
    "WindowCount",
    "all_pairs",
    "build_model",
    "line_key",
    "logical_id",
    "pairs_from_forecast",
    "provider_alias",
    "resource_name",
    "zone_split",
]

REQUIRED_COLUMNS: tuple[str, ...] = (
    "plan_id",
    "valid_from",
    "valid_to",
    "region",
    "resource_type",
    "quantity",
    "instance_type",
    "purchase_option",
    "count",
    "line_id",
)

# Read when present: the planner's per-zone instance counts (pipeline.plan.zones), JSON {zone: n}.
OPTIONAL_COLUMNS: tuple[str, ...] = ("zone_counts",)

# Stopped instances kept ready next to an on-demand group, as a share of its planned count.
WARM_POOL_FRACTION = 0.2  # the warm pool of a line whose plan has no warm_count (plans before the warm tier)
WARM_COLUMN = "warm_count"  # the plan's warm instances per line (pipeline.plan.warm)
# gp3 volumes hold at most 16 TiB.
MAX_VOLUME_GIB = 16384
# A region pair is peered when the forecast expects at least this many requests between the two
# regions (both directions together) over the plan's windows.
MIN_PAIR_REQUESTS = 1.0
STORAGE_RESOURCE = "storage_gib"
# Plans are made hourly: what one apply provisions are the windows starting before the next run.
PROVISIONED_SPAN = timedelta(hours=1)

_NAME_SLUG_MAX = 60
_TERRAFORM_NAME = re.compile(r"^[a-z_][a-z0-9_]*$")
_LOGICAL_ID = re.compile(r"^[A-Za-z][A-Za-z0-9]{0,200}$")


@dataclass(frozen=True)
class WindowCount:
    """A line's instances in one window of the span: the plan's count and its per-zone split."""

    valid_from: str  # RFC 3339 UTC
    count: int
    zones: tuple[tuple[str, int], ...] = ()  # (availability zone, instances there); empty: not split

    @property
    def instances(self) -> int:
        """Instances to run: the plan's per-zone counts (``count`` plus its N+1-across-zones headroom)."""
        return max(sum(n for _, n in self.zones), self.count)

    @property
    def zone_headroom(self) -> int:
        """Instances the plan added beyond ``count`` so that losing any one zone still leaves ``count``."""
        return self.instances - self.count

    @property
    def zone_spare(self) -> int:
        """Room to relaunch the largest zone's share in the others, when the zones hold no headroom of
        their own (the ``PEERSCALE_AZ_PER_REGION`` spread); 0 in one zone or with planned headroom."""
        if len(self.zones) < 2 or self.zone_headroom > 0:
            return 0
        return max(n for _, n in self.zones)


@dataclass(frozen=True)
class InfraLine:
    """One line with instances somewhere in the span, validated and shaped for the templates.

    ``count`` and ``zones`` are the span's first window (``count`` may be 0: the line has instances
    only in a later window, its group starts empty); ``later`` holds the span's other windows.
    """

    key: str  # region/instance_type/purchase_option: the stable identity across plans
    line_id: str  # the plan's line id (carries the window), kept as a tag
    name: str  # Terraform resource name, [a-z0-9_]
    logical_id: str  # CloudFormation logical id prefix, [A-Za-z0-9]
    region: str
    provider_alias: str
    instance_type: str
    purchase_option: str
    count: int
    warm_pool: int  # warm (stopped) instances next to an on-demand group; 0 for spot
    storage_gib: int  # data volume per instance; 0 when the line reserves no storage
    valid_from: str  # RFC 3339 UTC: the span's start
    valid_to: str  # RFC 3339 UTC: the span's end
    zones: tuple[tuple[str, int], ...] = ()  # the first window's (zone, instances); empty: no instances there
    later: tuple[WindowCount, ...] = ()  # the span's later windows, in order (none for hourly plans)

    @property
    def first(self) -> WindowCount:
        return WindowCount(self.valid_from, self.count, self.zones)

    @property
    def span(self) -> tuple[WindowCount, ...]:
        return (self.first, *self.later)

    @property
    def instances(self) -> int:
        """Instances the group starts with: the first window's (``count`` plus its zone headroom)."""
        return self.first.instances

    @property
    def zone_headroom(self) -> int:
        return self.first.zone_headroom

    @property
    def zone_spare(self) -> int:
        return self.first.zone_spare

    @property
    def max_size(self) -> int:
        """Room for the span's largest window plus the warm pool (or the zone spare, the larger)."""
        return max(w.instances + max(self.warm_pool, w.zone_spare) for w in self.span)

    @property
    def schedule(self) -> tuple[tuple[str, int], ...]:
        """(window start, instances) for each later window whose instances differ from the window
        before: the group's scheduled sizes (unchanged windows need no action)."""
        steps, previous = [], self.instances
        for window in self.later:
            if window.instances != previous:
                steps.append((window.valid_from, window.instances))
            previous = window.instances
        return tuple(steps)

    @property
    def availability_zones(self) -> tuple[str, ...]:
        """Every zone of the span: the first window's in its order, then later windows' new ones."""
        first = [zone for zone, _ in self.zones]
        added = sorted({zone for w in self.later for zone, _ in w.zones} - set(first))
        return (*first, *added)

    @property
    def reserved_zones(self) -> tuple[tuple[str, int], ...]:
        """Per zone, the fewest instances any window of the span runs there: what a capacity
        reservation (billed used or not) holds. Zones at 0 get no reservation."""
        return tuple((zone, min(dict(w.zones).get(zone, 0) for w in self.span)) for zone in self.availability_zones)

    @property
    def reserved_count(self) -> int:
        """The fewest instances any window of the span runs (the reservation of a line without zones)."""
        return min(w.instances for w in self.span)


@dataclass(frozen=True)
class InfraRegion:
    """A plan region: one aliased provider (Terraform) or one stack (CloudFormation)."""

    name: str
    provider_alias: str
    default_availability_zone: str
    has_spot: bool
    has_lines: bool  # at least one line with instances: needs an AMI for its launch templates
    has_transit_gateway: bool  # the region takes part in at least one planned peering


@dataclass(frozen=True)
class PeeringPair:
    """Two regions to peer; ``requester`` sorts before ``accepter``."""

    requester: str
    accepter: str
    expected_requests: float | None = None  # both directions, over the plan's windows

    @property
    def key(self) -> str:
        return f"{self.requester}|{self.accepter}"

    @property
    def name(self) -> str:
        return f"{provider_alias(self.requester)}__{provider_alias(self.accepter)}"

    @property
    def requester_alias(self) -> str:
        return provider_alias(self.requester)

    @property
    def accepter_alias(self) -> str:
        return provider_alias(self.accepter)


@dataclass(frozen=True)
class InfraModel:
    """Everything the renderers need for one plan."""

    plan_id: str
    tau: str | None
    valid_from: str  # the span's start (its first window's valid_from)
    valid_to: str  # the span's end (its last window's valid_to)
    regions: tuple[InfraRegion, ...]
    lines: tuple[InfraLine, ...]  # sorted by (region, purchase_option, instance_type)
    skipped_line_ids: tuple[str, ...]  # zero-count lines with no instances anywhere in the span: no resources
    peering: tuple[PeeringPair, ...] = ()
    peering_source: str = "all plan regions"
    region_names: tuple[str, ...] = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "region_names", tuple(r.name for r in self.regions))

    def lines_in(self, region: str) -> list[InfraLine]:
        return [line for line in self.lines if line.region == region]

    def region(self, name: str) -> InfraRegion:
        for region in self.regions:
            if region.name == name:
                return region
        raise KeyError(name)


def provider_alias(region: str) -> str:
    """Provider alias for a validated region: dashes become underscores (``us_east_1``)."""
    return check_region(region).replace("-", "_")


def line_key(region: str, instance_type: str, purchase_option: str) -> str:
    return f"{region}/{instance_type}/{purchase_option}"


def resource_name(key: str) -> str:
    """Terraform resource name for a line key: a readable slug plus a hash of the exact key.

    The hash keeps names unique even when two keys slug to the same text (``m5.large`` vs
    ``m5-large``), and it depends on the key only, so names are stable across renders.
    """
    slug = re.sub(r"[^a-z0-9]+", "_", key.lower()).strip("_")[:_NAME_SLUG_MAX].rstrip("_")
    digest = hashlib.sha256(key.encode("utf-8")).hexdigest()[:8]
    name = f"line_{slug}_{digest}" if slug else f"line_{digest}"
    assert _TERRAFORM_NAME.fullmatch(name), name
    return name


def logical_id(key: str) -> str:
    """CloudFormation logical id prefix for a line key (alphanumeric only), stable across renders."""
    parts = re.split(r"[^A-Za-z0-9]+", key.split("/", 1)[-1])
    camel = "".join(p[:1].upper() + p[1:] for p in parts if p)[:80]
    digest = hashlib.sha256(key.encode("utf-8")).hexdigest()[:8].upper()
    name = f"Line{camel}{digest}"
    assert _LOGICAL_ID.fullmatch(name), name
    return name


def _format_ts(value: datetime) -> str:
    return value.strftime(RFC3339_UTC_FORMAT)


def _records(plan: pd.DataFrame | pa.Table) -> list[dict[str, Any]]:
    """Plan rows as dicts, from either a pandas DataFrame or a pyarrow Table."""
    is_table = isinstance(plan, pa.Table)
    columns = plan.column_names if is_table else list(plan.columns)
    missing = [c for c in REQUIRED_COLUMNS if c not in columns]
    if missing:
        raise ValueError(f"plan is missing columns {missing}; expected the PLAN schema")
    wanted = [*REQUIRED_COLUMNS, *(c for c in (*OPTIONAL_COLUMNS, WARM_COLUMN) if c in columns)]  # old plans lack them
    if is_table:
        return plan.select(wanted).to_pylist()
    return plan[wanted].to_dict(orient="records")


def _validate_row(row: Mapping[str, Any]) -> dict[str, Any]:
    """Validate every templated field of one plan row; return the normalised values."""
    valid_from = check_timestamp(row["valid_from"], "valid_from")
    valid_to = check_timestamp(row["valid_to"], "valid_to")
    if valid_to <= valid_from:
        raise UnsafePlanValue(
            "valid_to", row["valid_to"], f"must be after valid_from ({_format_ts(valid_from)})"
        )
    return {
        "plan_id": check_plan_id(row["plan_id"]),
        "valid_from": valid_from,
        "valid_to": valid_to,
        "region": check_region(row["region"]),
        "resource_type": check_tag_value(row["resource_type"], "resource_type"),
        "quantity": check_quantity(row["quantity"], "quantity"),
        "instance_type": check_instance_type(row["instance_type"]),
        "purchase_option": check_purchase_option(row["purchase_option"]),
        "count": check_count(row["count"]),
        "line_id": check_tag_value(row["line_id"], "line_id"),
        WARM_COLUMN: _warm_count(row.get(WARM_COLUMN)),
        "zone_counts": _zone_counts(row.get("zone_counts"), region=check_region(row["region"]), count=check_count(row["count"])),
    }


def warm_pool_size(count: int, purchase_option: str, warm_count: int | None) -> int:
    """The warm pool kept beside a line: the plan's warm_count, or ⌈count × WARM_POOL_FRACTION⌉ for plans
    without one; none for spot (Auto Scaling refuses warm pools on spot and mixed-instances groups)."""
    if purchase_option != "on_demand":
        return 0
    return math.ceil(count * WARM_POOL_FRACTION) if warm_count is None else warm_count


def _warm_count(value: object) -> int | None:
    """The plan's warm instances for a line (pipeline.plan.warm); None when the plan has none planned (null/NaN/absent)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, float) and value.is_integer():  # pandas reads a nullable int64 column as float
        value = int(value)
    return check_count(value, WARM_COLUMN)


def _zone_counts(text: Any, *, region: str, count: int) -> tuple[tuple[str, int], ...] | None:
    """A row's planned zones ({zone: instances} JSON) validated: zones of its region, whole counts,
    holding at least the line's count. None when the plan names no zones (older plans)."""
    if text is None or (isinstance(text, float) and math.isnan(text)):
        return None
    try:
        parsed = json.loads(str(text))
    except json.JSONDecodeError:
        raise UnsafePlanValue("zone_counts", text, "must be a JSON object {zone: instances}") from None
    if not isinstance(parsed, dict) or not parsed:
        raise UnsafePlanValue("zone_counts", text, "must be a non-empty JSON object {zone: instances}")
    zones = []
    for zone, n in sorted(parsed.items()):
        if re.fullmatch(re.escape(region) + "[a-z]", str(zone)) is None:
            raise UnsafePlanValue("zone_counts", zone, f"is not an availability zone of {region} (e.g. {region}a)")
        zones.append((str(zone), check_count(n)))
    if sum(n for _, n in zones) < count:
        raise UnsafePlanValue("zone_counts", text, f"holds fewer instances than the line's count {count}")
    return tuple(zones)


def _tau(manifest: Mapping[str, Any]) -> str | None:
    """The manifest's newsvendor τ (one number, or one per resource type) for header comments."""
    tau = manifest.get("tau")
    if tau is None:
        return None
    items = sorted(tau.items()) if isinstance(tau, Mapping) else [(None, tau)]
    parts = []
    for resource, value in items:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= float(value) <= 1.0:
            raise UnsafePlanValue("tau", value, "must be a number in [0, 1]")
        if resource is not None and not str(resource).isidentifier():
            raise UnsafePlanValue("tau", resource, "resource type keys must be plain identifiers")
        parts.append(f"{float(value):.6g}" if resource is None else f"{resource}={float(value):.6g}")
    return ", ".join(parts)


def all_pairs(regions: Iterable[str]) -> list[tuple[str, str, float | None]]:
    """Every unordered pair of the given regions (the fallback when there is no pair forecast)."""
    return [(a, b, None) for a, b in combinations(sorted(set(regions)), 2)]


def pairs_from_forecast(
    forecast: pa.Table,
    regions: Iterable[str],
    start: datetime,
    end: datetime,
    min_requests: float = MIN_PAIR_REQUESTS,
) -> list[tuple[str, str, float]]:
    """Region pairs the pair forecast expects traffic between during ``[start, end)``.

    ``forecast`` is the long forecast table (``series_id, ds, mean, ...``); pair series are
    ``pair:<src>→<dst>:requests``. Both directions of a pair are added up; a pair is planned when
    the expected requests reach ``min_requests``. Only pairs of ``regions`` are considered.
    """
    import pyarrow.compute as pc

    wanted = set(regions)
    table = forecast.select(["series_id", "ds", "mean"])
    ds = table.column("ds")
    mask = pc.and_(
        pc.greater_equal(ds, pa.scalar(start, type=ds.type)), pc.less(ds, pa.scalar(end, type=ds.type))
    )
    table = table.filter(mask)
    totals: dict[tuple[str, str], float] = {}
    for series_id, mean in zip(table.column("series_id").to_pylist(), table.column("mean").to_pylist()):
        match = re.fullmatch(r"pair:([a-z0-9-]+)→([a-z0-9-]+):requests", series_id or "")
        if not match or mean is None or not math.isfinite(mean):
            continue
        src, dst = match.groups()
        if src == dst or src not in wanted or dst not in wanted:
            continue
        pair = (min(src, dst), max(src, dst))
        totals[pair] = totals.get(pair, 0.0) + max(float(mean), 0.0)
    return [(a, b, round(total, 3)) for (a, b), total in sorted(totals.items()) if total >= min_requests]


@dataclass(frozen=True)
class _Window:
    """One window of the plan: rows sharing a ``valid_from``, which must share one ``valid_to``."""

    start: datetime
    end: datetime
    rows: list[dict[str, Any]]


@dataclass(frozen=True)
class _Span:
    """The windows provisioned now, in order: those starting within :data:`PROVISIONED_SPAN` of the first."""

    windows: tuple[_Window, ...]

    @property
    def start(self) -> datetime:
        return self.windows[0].start

    @property
    def end(self) -> datetime:
        return self.windows[-1].end

    @property
    def rows(self) -> list[dict[str, Any]]:
        return [row for window in self.windows for row in window.rows]


@dataclass
class _LineRows:
    """What a line's resource rows in one window agree on, plus the storage they reserve."""

    region: str
    instance_type: str
    purchase_option: str
    count: int
    zones: tuple[tuple[str, int], ...] | None = None  # the plan's per-zone counts (None: not named)
    storage: float = 0.0
    warm: int | None = None  # the plan's warm_count (None: size the pool by WARM_POOL_FRACTION)

    @property
    def shape(self) -> tuple[str, str, str, int, tuple[tuple[str, int], ...] | None]:
        return (self.region, self.instance_type, self.purchase_option, self.count, self.zones)


# A line with instances in one window: its line id and rows.
_Present = tuple[str, _LineRows]


def build_model(
    plan: pd.DataFrame | pa.Table,
    manifest: Mapping[str, Any],
    peering: Sequence[tuple[str, str, float | None]] | None = None,
    peering_source: str | None = None,
    zones_per_region: int | None = None,
) -> InfraModel:
    """Validate ``plan`` (PLAN schema) and ``manifest`` and reduce the span (the windows starting
    within :data:`PROVISIONED_SPAN` of the first: the first window alone for an hourly plan) to an
    :class:`InfraModel`.

    Lines sit in the zones the plan names (its ``zone_counts``, N+1 across zones included);
    ``zones_per_region`` (the deprecated ``PEERSCALE_AZ_PER_REGION``) overrides that with an even
    spread of ``count`` over the region's first zones. A plan naming no zones uses ``<region>a``.

    ``peering`` lists region pairs to peer (``(a, b, expected_requests)``); pairs naming a region
    without lines are dropped. ``None`` means every pair of regions with lines.

    Every row is validated, not only the span's: a plan carrying an unsafe value anywhere is
    suspect as a whole. Raises :class:`UnsafePlanValue` for unsafe values and ``ValueError`` for an
    empty or inconsistent plan (a window with several ends, overlapping windows).
    """
    plan_id = check_plan_id(manifest.get("plan_id"), "manifest.plan_id")
    tau = _tau(manifest)
    span = _span(_checked_rows(plan, plan_id=plan_id))
    lines, skipped = _infra_lines(span, zones_per_region=zones_per_region)
    active = sorted({line.region for line in lines})
    pairs, source = _peering_pairs(active, peering=peering, peering_source=peering_source)
    return InfraModel(
        plan_id=plan_id,
        tau=tau,
        valid_from=_format_ts(span.start),
        valid_to=_format_ts(span.end),
        regions=_infra_regions(span, lines=lines, pairs=pairs),
        lines=tuple(lines),
        skipped_line_ids=tuple(sorted(skipped)),
        peering=tuple(pairs),
        peering_source=check_tag_value(source, "peering_source"),
    )


def _checked_rows(plan: pd.DataFrame | pa.Table, *, plan_id: str) -> list[dict[str, Any]]:
    """Every row validated and carrying the manifest's plan id: one bad row condemns the plan."""
    checked = [_validate_row(row) for row in _records(plan)]
    if not checked:
        raise ValueError("plan has no rows; nothing to render")
    for row in checked:
        if row["plan_id"] != plan_id:
            raise UnsafePlanValue(
                "plan_id", row["plan_id"], f"every row must carry the manifest's plan_id {plan_id!r}"
            )
    return checked


def _span(checked: list[dict[str, Any]]) -> _Span:
    """The windows starting before the first one's start + :data:`PROVISIONED_SPAN`, which must not
    overlap: two counts for one instant would be a contradiction. A window without any row leaves a
    gap, through which the window before holds on (never fewer instances than planned)."""
    first = min(row["valid_from"] for row in checked)
    by_start: dict[datetime, list[dict[str, Any]]] = {}
    for row in checked:
        if row["valid_from"] < first + PROVISIONED_SPAN:
            by_start.setdefault(row["valid_from"], []).append(row)
    windows = tuple(_window(start, rows) for start, rows in sorted(by_start.items()))
    for before, after in pairwise(windows):
        if after.start < before.end:
            raise ValueError(
                f"window starting {_format_ts(after.start)} overlaps the one before it "
                f"({_format_ts(before.start)} to {_format_ts(before.end)}); windows must not overlap"
            )
    return _Span(windows)


def _window(start: datetime, rows: list[dict[str, Any]]) -> _Window:
    """The rows starting at ``start``, which must share one end."""
    ends = {row["valid_to"] for row in rows}
    if len(ends) != 1:
        raise ValueError(
            f"window starting {_format_ts(start)} has several valid_to values "
            f"{sorted(_format_ts(e) for e in ends)}; a window must have one end"
        )
    return _Window(start=start, end=ends.pop(), rows=rows)


def _rows_by_line(window_rows: list[dict[str, Any]]) -> dict[str, _LineRows]:
    """Group the window's resource rows by line id; a line's rows must agree on its shape."""
    by_line: dict[str, _LineRows] = {}
    for row in window_rows:
        current = _LineRows(row["region"], row["instance_type"], row["purchase_option"], row["count"], row["zone_counts"])
        seen = by_line.setdefault(row["line_id"], current)
        if seen.shape != current.shape:
            raise ValueError(
                f"line {row['line_id']!r} has inconsistent (region, instance_type, "
                f"purchase_option, count, zone_counts) across its resource rows: {seen.shape} vs {current.shape}"
            )
        if row["resource_type"] == STORAGE_RESOURCE:
            seen.storage += row["quantity"]
        if row[WARM_COLUMN] is not None:
            seen.warm = row[WARM_COLUMN]
    return by_line


def _window_lines(window: _Window) -> tuple[dict[str, _Present], list[tuple[str, str]]]:
    """The window's lines with instances by line key (one line per key), and its zero-count
    lines as (key, line id)."""
    lines: dict[str, _Present] = {}
    zero: list[tuple[str, str]] = []
    for line_id, info in _rows_by_line(window.rows).items():
        key = line_key(info.region, info.instance_type, info.purchase_option)
        if info.count == 0:
            zero.append((key, line_id))
        elif key in lines:
            raise ValueError(
                f"lines {lines[key][0]!r} and {line_id!r} both hold {key} in the window starting {_format_ts(window.start)}"
            )
        else:
            lines[key] = (line_id, info)
    return lines, zero


def _infra_lines(span: _Span, *, zones_per_region: int | None = None) -> tuple[list[InfraLine], list[str]]:
    """One line per key with instances in some window of the span (sorted, with unique resource
    names), and the zero-count line ids of keys without instances anywhere in the span: those get
    no resources (AWS refuses zero-instance reservations). A key at 0 in one window but not in
    another is a line whose group the schedule takes to 0."""
    per_window = [_window_lines(window) for window in span.windows]
    keys = sorted({key for present, _ in per_window for key in present})
    lines = [
        _infra_line(key, [present.get(key) for present, _ in per_window], span=span, zones_per_region=zones_per_region)
        for key in keys
    ]
    provisioned = set(keys)
    skipped = [line_id for _, zero in per_window for key, line_id in zero if key not in provisioned]
    lines.sort(key=lambda line: (line.region, line.purchase_option, line.instance_type, line.line_id))
    _check_unique([line.name for line in lines] + [line.logical_id for line in lines])
    return lines, skipped


def _infra_line(key: str, present: list[_Present | None], *, span: _Span, zones_per_region: int | None = None) -> InfraLine:
    """The line of ``key`` over the span (``present``: its rows per window, None without instances).

    Its line id and shape come from its first window with instances. The warm pool and the data
    volume are the span's largest: neither can follow a schedule (AWS has no scheduled action for
    a warm pool's size, and a launch template holds one volume size).
    """
    found = [p for p in present if p is not None]
    line_id, info = found[0]
    windows = [
        WindowCount(_format_ts(window.start), 0) if p is None
        else WindowCount(_format_ts(window.start), p[1].count, _line_zones(p[1], zones_per_region))
        for window, p in zip(span.windows, present, strict=True)
    ]
    line = InfraLine(
        key=key,
        line_id=line_id,
        name=resource_name(key),
        logical_id=logical_id(key),
        region=info.region,
        provider_alias=provider_alias(info.region),
        instance_type=info.instance_type,
        purchase_option=info.purchase_option,
        count=windows[0].count,
        warm_pool=max(warm_pool_size(rows.count, rows.purchase_option, rows.warm) for _, rows in found),
        storage_gib=max(_volume_gib(lid, rows) for lid, rows in found),
        valid_from=_format_ts(span.start),
        valid_to=_format_ts(span.end),
        zones=windows[0].zones,
        later=tuple(windows[1:]),
    )
    check_schedule(line.schedule, start=span.start, end=span.end, field=f"schedule of {key}")
    return line


def _line_zones(info: _LineRows, zones_per_region: int | None) -> tuple[tuple[str, int], ...]:
    """A line's zones in one window: the plan's, or the ``zones_per_region`` override's even spread."""
    if zones_per_region or info.zones is None:
        return zone_split(info.region, info.count, zones_per_region)
    return info.zones


def _volume_gib(line_id: str, info: _LineRows) -> int:
    """The data volume each of a window's instances carries: its storage over its count, rounded up."""
    per_instance = math.ceil(info.storage / info.count - EPS) if info.storage > 0 else 0
    if per_instance > MAX_VOLUME_GIB:
        raise UnsafePlanValue(
            "quantity", info.storage,
            f"line {line_id} needs {per_instance} GiB per instance; a gp3 volume holds at most {MAX_VOLUME_GIB}",
        )
    return per_instance


def zone_split(region: str, count: int, zones: int | None = 1) -> tuple[tuple[str, int], ...]:
    """``count`` instances over the region's first ``zones`` availability zones (``a``, ``b``, ...),
    as evenly as possible, the remainder on the first zones; at most one zone per instance."""
    zones = 1 if zones is None else zones
    if zones < 1:
        raise ValueError(f"zones per region must be at least 1, got {zones}")
    used = max(1, min(zones, count, 26))
    base, extra = divmod(count, used)
    return tuple((f"{region}{chr(ord('a') + i)}", base + (1 if i < extra else 0)) for i in range(used))


def _peering_pairs(
    active: list[str],
    *,
    peering: Sequence[tuple[str, str, float | None]] | None,
    peering_source: str | None,
) -> tuple[list[PeeringPair], str]:
    """The pairs to peer among the regions with lines, and where that list came from."""
    if peering is None:
        wanted = all_pairs(active)
        source = peering_source or "all plan regions"
    else:
        wanted = list(peering)
        source = peering_source or "given"
    pairs: list[PeeringPair] = []
    for a, b, expected in wanted:
        a, b = sorted((check_region(a, "peering region"), check_region(b, "peering region")))
        if a == b or a not in active or b not in active:
            continue
        pairs.append(PeeringPair(a, b, None if expected is None else float(expected)))
    return sorted(set(pairs), key=lambda p: p.key), source


def _infra_regions(
    span: _Span, *, lines: list[InfraLine], pairs: list[PeeringPair]
) -> tuple[InfraRegion, ...]:
    """Every region of the span; one whose lines are all zero still gets a provider: the plan names it."""
    active = {line.region for line in lines}
    spot_regions = {line.region for line in lines if line.purchase_option == "spot"}
    peered = {p.requester for p in pairs} | {p.accepter for p in pairs}
    return tuple(
        InfraRegion(
            name=region,
            provider_alias=provider_alias(region),
            default_availability_zone=next((line.availability_zones[0] for line in lines
                                            if line.region == region and line.availability_zones), f"{region}a"),
            has_spot=region in spot_regions,
            has_lines=region in active,
            has_transit_gateway=region in peered,
        )
        for region in sorted({row["region"] for row in span.rows})
    )


def _check_unique(names: list[str]) -> None:
    seen: set[str] = set()
    for name in names:
        if name in seen:  # a sha256 prefix collision; refuse rather than overwrite a resource
            raise ValueError(f"two plan lines map to the same resource name {name!r}")
        seen.add(name)
