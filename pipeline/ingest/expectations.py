"""Row-level validation of source data with Great Expectations.

Each dataset has one expectation suite. We run it on a typed pandas frame with
`result_format=COMPLETE` and a row key, so every failing row is traced back to the
expectation that failed: those rows go to quarantine with that reason, the rest go on.
Great Expectations is imported lazily: it costs seconds and the IRC must never load it.
"""

from __future__ import annotations

import logging
import os
from collections import defaultdict
from collections.abc import Sequence
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from pipeline.common.numeric import SECONDS_PER_DAY
from pipeline.common.schemas import INSTANCE_TYPE_PATTERN, PRIORITIES, REGION_PATTERN, RESOURCE_TYPES

if TYPE_CHECKING:
    import pandas as pd

ROW_KEY = "_row"
MAX_DURATION_S = 30.0 * SECONDS_PER_DAY  # longest plausible peering request; longer ones are quarantined


def _expectations(dataset: str, known_regions: Sequence[str]) -> list[Any]:
    """The expectation list of one dataset (GE objects, built on demand)."""
    import great_expectations as gx

    E = gx.expectations
    regions = sorted(known_regions)

    def not_null(*cols: str) -> list[Any]:
        return [E.ExpectColumnValuesToNotBeNull(column=c) for c in cols]

    def non_negative(*cols: str) -> list[Any]:
        return [E.ExpectColumnValuesToBeBetween(column=c, min_value=0) for c in cols]

    if dataset == "peering_requests":
        quantities = list(RESOURCE_TYPES)
        return [
            *not_null("request_id", "requested_at", "source_region", "destination_region", *quantities, "duration_s", "priority"),
            E.ExpectColumnValuesToBeInSet(column="source_region", value_set=regions),
            E.ExpectColumnValuesToBeInSet(column="destination_region", value_set=regions),
            E.ExpectColumnValuesToBeInSet(column="same_region", value_set=[False]),
            *non_negative(*quantities),
            E.ExpectColumnValuesToBeBetween(column="duration_s", min_value=0, max_value=MAX_DURATION_S, strict_min=True),
            E.ExpectColumnValuesToBeInSet(column="priority", value_set=list(PRIORITIES)),
        ]
    if dataset == "region_telemetry":
        utils = ["cpu_utilization", "memory_utilization", "bandwidth_utilization"]
        return [
            *not_null("ts", "region", *utils),
            E.ExpectColumnValuesToBeInSet(column="region", value_set=regions),
            *[E.ExpectColumnValuesToBeBetween(column=c, min_value=0, max_value=1) for c in utils],
        ]
    if dataset == "app_telemetry":
        return [
            *not_null("ts", "region", "active_users", "transactions_per_s"),
            E.ExpectColumnValuesToBeInSet(column="region", value_set=regions),
            *non_negative("active_users", "transactions_per_s"),
        ]
    if dataset == "calendar":
        return [
            *not_null("event_id", "name", "kind", "regions", "start_date", "end_date", "expected_uplift"),
            E.ExpectColumnValuesToBeInSet(column="kind", value_set=["campaign", "holiday", "season"]),
            E.ExpectColumnValuesToBeInSet(column="regions_known", value_set=[True]),
            E.ExpectColumnValuesToBeInSet(column="dates_ordered", value_set=[True]),
            E.ExpectColumnValuesToBeBetween(column="expected_uplift", min_value=-1, max_value=10),
        ]
    if dataset == "resource_pools":
        return [
            *not_null("region", "resource_type", "available_quantity", "total_quantity"),
            E.ExpectColumnValuesToMatchRegex(column="region", regex=REGION_PATTERN.pattern),
            E.ExpectColumnValuesToBeInSet(column="resource_type", value_set=list(RESOURCE_TYPES)),
            *non_negative("available_quantity", "total_quantity"),
            E.ExpectColumnValuesToBeInSet(column="available_within_total", value_set=[True]),
        ]
    if dataset == "instance_catalog":
        numbers = ["vcpu", "memory_gib", "storage_gib", "network_gbps", "on_demand_hourly", "spot_hourly", "spot_interruption_rate"]
        return [
            *not_null("region", "instance_type", *numbers),
            E.ExpectColumnValuesToMatchRegex(column="region", regex=REGION_PATTERN.pattern),
            E.ExpectColumnValuesToMatchRegex(column="instance_type", regex=INSTANCE_TYPE_PATTERN.pattern),
            *non_negative(*numbers),
            E.ExpectColumnValuesToBeBetween(column="on_demand_hourly", min_value=0, strict_min=True),
            E.ExpectColumnValuesToBeBetween(column="spot_interruption_rate", min_value=0, max_value=1),
            E.ExpectColumnValuesToBeInSet(column="spot_not_above_on_demand", value_set=[True]),
        ]
    raise ValueError(f"no expectation suite for dataset {dataset!r}")


def add_derived_columns(dataset: str, frame: pd.DataFrame, known_regions: Sequence[str]) -> pd.DataFrame:
    """Cross-column rules become boolean columns so plain column expectations can check them."""
    frame = frame.copy()
    if dataset == "peering_requests":
        frame["same_region"] = frame["source_region"] == frame["destination_region"]
    elif dataset == "calendar":
        known = set(known_regions)
        frame["regions_known"] = frame["regions"].fillna("").map(
            lambda text: text == "*" or (bool(text) and all(r.strip() in known for r in text.split(";")))
        )
        frame["dates_ordered"] = (frame["start_date"] <= frame["end_date"]).fillna(False)
    elif dataset == "resource_pools":
        frame["available_within_total"] = (frame["available_quantity"] <= frame["total_quantity"]).fillna(False)
    elif dataset == "instance_catalog":
        frame["spot_not_above_on_demand"] = (frame["spot_hourly"] <= frame["on_demand_hourly"]).fillna(False)
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
DERIVED_RULES = {
    "same_region": "source_region equals destination_region (a peering needs two regions)",
    "regions_known": "regions lists a region that is not in the inventory",
    "dates_ordered": "start_date is after end_date",
    "available_within_total": "available_quantity exceeds total_quantity",
    "spot_not_above_on_demand": "spot_hourly is above on_demand_hourly",
}


def _describe(config: Any, value: Any) -> str:
    """A one-line human reason from a failed expectation and the offending value."""
    kwargs = config.kwargs
    column = kwargs.get("column", "?")
    kind = config.type
    if column in DERIVED_RULES:
        return DERIVED_RULES[column]
    if kind == "expect_column_values_to_not_be_null":
        return f"{column}: missing value"
    if kind == "expect_column_values_to_be_in_set":
        if column in REGION_COLUMNS:
            return f"{column}: unknown region {value!r} (known regions come from inventory/pools.csv)"
        return f"{column}: {value!r} is not one of {sorted(kwargs['value_set'])}"
    if kind == "expect_column_values_to_be_between":
        low, high = kwargs.get("min_value"), kwargs.get("max_value")
        bounds = f"{'>' if kwargs.get('strict_min') else '>='} {low}" if high is None else f"in [{low}, {high}]"
        return f"{column}: {value!r} out of range (must be {bounds})"
    if kind == "expect_column_values_to_match_regex":
        return f"{column}: {value!r} does not match {kwargs['regex']}"
    return f"{column}: {value!r} fails {kind}"


def failing_rows(dataset: str, frame: pd.DataFrame, known_regions: Sequence[str]) -> dict[int, list[str]]:
    """Validate `frame` (which must carry the ROW_KEY column) and map each failing row to reasons."""
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
    reasons: dict[int, list[str]] = defaultdict(list)
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
            reasons[int(key)].append(_describe(outcome.expectation_config, value))
    return dict(reasons)
