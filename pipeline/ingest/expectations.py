"""Row-level validation of source data with Great Expectations.

Each dataset has one expectation suite. We run it on a typed pandas frame with
`result_format=COMPLETE` and a row key, so every failing row is traced back to the
expectation that failed: those rows go to quarantine with that reason, the rest go on.
Great Expectations is imported lazily: it costs seconds and the IRC must never load it.
"""

from __future__ import annotations

import logging
import math
import os
from collections import defaultdict
from collections.abc import Sequence
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from pipeline.common.schemas import (
    CALENDAR_DATES,
    INSTANCE_TYPE_PATTERN,
    MAX_ACTIVE_USERS,
    MAX_DURATION_S,
    MAX_EVENT_DAYS,
    MAX_HOURLY_PRICE_USD,
    MAX_INSTANCE_SIZE,
    MAX_QUANTITY,
    MAX_TRANSACTIONS_PER_S,
    MAX_UPLIFT,
    PRIORITIES,
    REGION_PATTERN,
    RESOURCE_TYPES,
)
from pipeline.ingest.lines import Problem

if TYPE_CHECKING:
    import pandas as pd

ROW_KEY = "_row"
UTILIZATIONS = ("cpu_utilization", "memory_utilization", "bandwidth_utilization")
CATALOG_SIZES = ("vcpu", "memory_gib", "storage_gib", "network_gbps")
# (dataset, column) -> the name of the upper bound it is checked against, for reasons that name it.
BOUND_NAMES: dict[tuple[str, str], str] = {
    **{("peering_requests", r): f"MAX_QUANTITY[{r!r}]" for r in RESOURCE_TYPES},
    ("peering_requests", "duration_s"): "MAX_DURATION_S",
    ("app_telemetry", "active_users"): "MAX_ACTIVE_USERS",
    ("app_telemetry", "transactions_per_s"): "MAX_TRANSACTIONS_PER_S",
    ("calendar", "expected_uplift"): "MAX_UPLIFT",
    **{("instance_catalog", c): f"MAX_INSTANCE_SIZE[{c!r}]" for c in CATALOG_SIZES},
    ("instance_catalog", "on_demand_hourly"): "MAX_HOURLY_PRICE_USD",
    ("instance_catalog", "spot_hourly"): "MAX_HOURLY_PRICE_USD",
}


def _expectations(dataset: str, known_regions: Sequence[str]) -> list[Any]:
    """The expectation list of one dataset (GE objects, built on demand)."""
    import great_expectations as gx

    E = gx.expectations
    regions = sorted(known_regions)

    def not_null(*cols: str) -> list[Any]:
        return [E.ExpectColumnValuesToNotBeNull(column=c) for c in cols]

    def between(col: str, low: float, high: float, *, strict_min: bool = False) -> Any:
        return E.ExpectColumnValuesToBeBetween(column=col, min_value=low, max_value=high, strict_min=strict_min)

    def true(*cols: str) -> list[Any]:
        return [E.ExpectColumnValuesToBeInSet(column=c, value_set=[True]) for c in cols]

    if dataset == "peering_requests":
        quantities = list(RESOURCE_TYPES)
        return [
            *not_null("request_id", "requested_at", "source_region", "destination_region", *quantities, "duration_s", "priority"),
            E.ExpectColumnValuesToBeInSet(column="source_region", value_set=regions),
            E.ExpectColumnValuesToBeInSet(column="destination_region", value_set=regions),
            E.ExpectColumnValuesToBeInSet(column="same_region", value_set=[False]),
            *[between(r, 0, MAX_QUANTITY[r]) for r in quantities],
            between("duration_s", 0, MAX_DURATION_S, strict_min=True),
            E.ExpectColumnValuesToBeInSet(column="priority", value_set=list(PRIORITIES)),
        ]
    if dataset == "region_telemetry":
        return [
            *not_null("ts", "region", *UTILIZATIONS),
            E.ExpectColumnValuesToBeInSet(column="region", value_set=regions),
            *[between(c, 0, 1) for c in UTILIZATIONS],
        ]
    if dataset == "app_telemetry":
        return [
            *not_null("ts", "region", "active_users", "transactions_per_s"),
            E.ExpectColumnValuesToBeInSet(column="region", value_set=regions),
            between("active_users", 0, MAX_ACTIVE_USERS),
            between("transactions_per_s", 0, MAX_TRANSACTIONS_PER_S),
        ]
    if dataset == "calendar":
        return [
            *not_null("event_id", "name", "kind", "regions", "start_date", "end_date", "expected_uplift"),
            E.ExpectColumnValuesToBeInSet(column="kind", value_set=["campaign", "holiday", "season"]),
            *true("regions_known", "dates_ordered", "dates_in_range", "event_within_max_days"),
            between("expected_uplift", -1, MAX_UPLIFT, strict_min=True),
        ]
    if dataset == "resource_pools":
        return [
            *not_null("region", "resource_type", "available_quantity", "total_quantity"),
            E.ExpectColumnValuesToMatchRegex(column="region", regex=REGION_PATTERN.pattern),
            E.ExpectColumnValuesToBeInSet(column="resource_type", value_set=list(RESOURCE_TYPES)),
            *[E.ExpectColumnValuesToBeBetween(column=c, min_value=0) for c in ("available_quantity", "total_quantity")],
            *true("available_within_total", "total_within_bound"),
        ]
    if dataset == "instance_catalog":
        return [
            *not_null("region", "instance_type", *CATALOG_SIZES, "on_demand_hourly", "spot_hourly", "spot_interruption_rate"),
            E.ExpectColumnValuesToMatchRegex(column="region", regex=REGION_PATTERN.pattern),
            E.ExpectColumnValuesToBeInSet(column="region", value_set=regions),
            E.ExpectColumnValuesToMatchRegex(column="instance_type", regex=INSTANCE_TYPE_PATTERN.pattern),
            *[between(c, 0, MAX_INSTANCE_SIZE[c], strict_min=c != "storage_gib") for c in CATALOG_SIZES],
            between("on_demand_hourly", 0, MAX_HOURLY_PRICE_USD, strict_min=True),
            between("spot_hourly", 0, MAX_HOURLY_PRICE_USD, strict_min=True),
            between("spot_interruption_rate", 0, 1),
            *true("spot_not_above_on_demand"),
        ]
    raise ValueError(f"no expectation suite for dataset {dataset!r}")


def _all_known(text: Any, known: set[str]) -> bool:
    """A calendar `regions` cell: `*`, or a `;`-list of known regions with no empty entry."""
    return isinstance(text, str) and (text == "*" or (bool(text) and all(r.strip() in known for r in text.split(";"))))


def _pairwise(frame: pd.DataFrame, a: str, b: str, test: Any) -> list[bool]:
    """test(a, b) per row, False where either is missing (the not-null rule names that)."""
    return [bool(x is not None and y is not None and x == x and y == y and test(x, y)) for x, y in zip(frame[a], frame[b])]


def add_derived_columns(dataset: str, frame: pd.DataFrame, known_regions: Sequence[str]) -> pd.DataFrame:
    """Cross-column rules become boolean columns so plain column expectations can check them."""
    frame = frame.copy()
    if dataset == "peering_requests":
        frame["same_region"] = frame["source_region"] == frame["destination_region"]
    elif dataset == "calendar":
        known = set(known_regions)
        first, last = CALENDAR_DATES
        frame["regions_known"] = [_all_known(text, known) for text in frame["regions"]]
        frame["dates_ordered"] = _pairwise(frame, "start_date", "end_date", lambda s, e: s <= e)
        frame["dates_in_range"] = _pairwise(frame, "start_date", "end_date", lambda s, e: first <= s and e <= last)
        frame["event_within_max_days"] = _pairwise(frame, "start_date", "end_date", lambda s, e: (e - s).days < MAX_EVENT_DAYS)
    elif dataset == "resource_pools":
        frame["available_within_total"] = _pairwise(frame, "available_quantity", "total_quantity", lambda a, t: a <= t)
        frame["total_within_bound"] = _pairwise(
            frame, "resource_type", "total_quantity", lambda r, t: t <= MAX_QUANTITY.get(r, math.inf)
        )
    elif dataset == "instance_catalog":
        frame["spot_not_above_on_demand"] = _pairwise(frame, "spot_hourly", "on_demand_hourly", lambda s, o: s <= o)
    return frame


@lru_cache(maxsize=1)
def _context() -> Any:
    """One ephemeral GE context per process, progress bars off (they would flood task logs)."""
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")
    logging.getLogger("great_expectations").setLevel(logging.WARNING)
    import great_expectations as gx

    context = gx.get_context(mode="ephemeral")
    try:
        from great_expectations.data_context.types.base import ProgressBarsConfig

        context.variables.progress_bars = ProgressBarsConfig(globally=False, metric_calculations=False)
    except Exception:  # an older/newer GE without this knob: bars are cosmetic only
        pass
    context.data_sources.add_pandas("peerscale")
    return context


REGION_COLUMNS = {"region", "source_region", "destination_region"}
# derived column -> (kind, message) of the cross-column rule it checks
DERIVED_RULES: dict[str, tuple[str, str]] = {
    "same_region": ("same source and destination region", "source_region equals destination_region (a peering needs two regions)"),
    "regions_known": ("regions: unknown region", "regions lists a region that is not in inventory/pools.csv (or an empty entry)"),
    "dates_ordered": ("end_date before start_date", "start_date is after end_date"),
    "dates_in_range": ("dates: out of range", f"an event date is outside CALENDAR_DATES = [{CALENDAR_DATES[0]}, {CALENDAR_DATES[1]}]"),
    "event_within_max_days": ("dates: above MAX_EVENT_DAYS", f"the event lasts more than MAX_EVENT_DAYS = {MAX_EVENT_DAYS} days"),
    "available_within_total": ("available_quantity above total_quantity", "available_quantity exceeds total_quantity"),
    "total_within_bound": (
        "total_quantity: above MAX_QUANTITY",
        "total_quantity is above MAX_QUANTITY[resource_type] = " + ", ".join(f"{k} {v:g}" for k, v in MAX_QUANTITY.items()),
    ),
    "spot_not_above_on_demand": ("spot_hourly above on_demand_hourly", "spot_hourly is above on_demand_hourly"),
}


def _describe(dataset: str, config: Any, value: Any) -> Problem:
    """The rule a failed expectation checks (kind) and a one-line reason with the offending value."""
    kwargs = config.kwargs
    column = kwargs.get("column", "?")
    kind = config.type
    if column in DERIVED_RULES:
        return Problem(*DERIVED_RULES[column])
    if kind == "expect_column_values_to_not_be_null":
        return Problem(f"{column}: missing value", f"{column}: missing value")
    if kind == "expect_column_values_to_be_in_set":
        if column in REGION_COLUMNS:
            return Problem(f"{column}: unknown region",
                           f"{column}: unknown region {value!r} (known regions come from the valid rows of inventory/pools.csv)")
        return Problem(f"{column}: not an allowed value", f"{column}: {value!r} is not one of {sorted(kwargs['value_set'])}")
    if kind == "expect_column_values_to_be_between":
        low, high = kwargs.get("min_value"), kwargs.get("max_value")
        bound = BOUND_NAMES.get((dataset, column))
        if high is not None and bound and isinstance(value, int | float) and value > high:
            return Problem(f"{column}: above {bound.split('[')[0]}", f"{column}: {value!r} is above {bound} = {high:g}")
        lower = f"{'>' if kwargs.get('strict_min') else '>='} {low}"
        bounds = lower if high is None else f"{lower} and <= {high:g}"
        return Problem(f"{column}: out of range", f"{column}: {value!r} out of range (must be {bounds})")
    if kind == "expect_column_values_to_match_regex":
        return Problem(f"{column}: does not match the pattern", f"{column}: {value!r} does not match {kwargs['regex']}")
    return Problem(f"{column}: fails {kind}", f"{column}: {value!r} fails {kind}")


def failing_rows(dataset: str, frame: pd.DataFrame, known_regions: Sequence[str]) -> dict[int, list[Problem]]:
    """Validate `frame` (which must carry the ROW_KEY column) and map each failing row to its problems."""
    if frame.empty:
        return {}
    import great_expectations as gx

    context = _context()
    frame = add_derived_columns(dataset, frame, known_regions)
    name = f"{dataset}-{abs(hash((tuple(sorted(known_regions)), len(frame))))}"
    source = context.data_sources.get("peerscale")
    asset = source.add_dataframe_asset(name)
    batch_definition = asset.add_batch_definition_whole_dataframe("whole")
    suite = gx.ExpectationSuite(name=name, expectations=_expectations(dataset, known_regions))
    try:
        batch = batch_definition.get_batch(batch_parameters={"dataframe": frame})
        result = batch.validate(
            suite, result_format={"result_format": "COMPLETE", "unexpected_index_column_names": [ROW_KEY]}
        )
    finally:
        source.delete_asset(name)
    reasons: dict[int, list[Problem]] = defaultdict(list)
    for outcome in result.results:
        if outcome.success:
            continue
        if outcome.exception_info and outcome.exception_info.get("raised_exception"):
            raise RuntimeError(f"validation of {dataset} could not run: {outcome.exception_info.get('exception_message')}")
        column = outcome.expectation_config.kwargs.get("column")
        for item in outcome.result.get("unexpected_index_list") or []:
            key = item[ROW_KEY] if isinstance(item, dict) else item
            value: Any = item.get(column) if isinstance(item, dict) else None
            if hasattr(value, "item"):
                value = value.item()  # numpy scalar → plain Python for a readable repr
            reasons[int(key)].append(_describe(dataset, outcome.expectation_config, value))
    return dict(reasons)
