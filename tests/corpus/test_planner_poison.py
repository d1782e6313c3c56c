"""Corpus: poison in what the planner reads — a huge, infinite, NaN or negative value in a pool, the
catalog, a forecast quantile or a recent request. Each case asserts the plan stage still plans every
region, names exactly what it clamped (source, region, resource, field, worst value, bound, rows) in
the manifest and in one log line, keeps every other input row as it was, and that the plan it writes
publishes and verifies like any other.

On main before the bounds, every poisoned case raised TypeError / OverflowError / ValueError inside
OR-Tools and stopped all planning.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.common import plan_files
from pipeline.common.intervals import DataInterval
from pipeline.common.schemas import MAX_HOURLY_PRICE_USD, MAX_INSTANCE_SIZE, MAX_QUANTITY
from pipeline.irc.plan_source import load_latest_plan
from pipeline.plan import build_plan, read_plan
from pipeline.publish.pointer import publish
from tests.conftest import RUN_END, settings_for

INF, NAN = float("inf"), float("nan")
REGION = "us-east-1"
FORECAST_RUN = "hourly-20260129T0000Z"
LAST_REQUEST_HOUR = "date=2026-01-28/hour=22"


def _edit_parquet(path: Path, change: Callable[[pd.DataFrame], pd.DataFrame]) -> int:
    """Rewrite one Parquet file through `change` (schema kept); returns its row count."""
    table = pq.read_table(path)
    frame = change(table.to_pandas())
    path.unlink()  # the lake copy is hard-linked: write a new file, never through the shared inode
    pq.write_table(pa.Table.from_pandas(frame, schema=table.schema, preserve_index=False), path)
    return len(frame)


def _newest(lake: Path, dataset: str) -> Path:
    return sorted((lake / "raw" / dataset).rglob("*.parquet"))[-1]


def _pools(resource: str, field: str, value: float) -> Callable[[Path], int]:
    def setup(lake: Path) -> int:
        def change(frame: pd.DataFrame) -> pd.DataFrame:
            frame.loc[(frame["region"] == REGION) & (frame["resource_type"] == resource), field] = value
            return frame
        return _edit_parquet(_newest(lake, "resource_pools"), change)
    return setup


def _catalog(field: str, value: float, instance_type: str = "m6i.large") -> Callable[[Path], int]:
    def setup(lake: Path) -> int:
        def change(frame: pd.DataFrame) -> pd.DataFrame:
            frame.loc[(frame["region"] == REGION) & (frame["instance_type"] == instance_type), field] = value
            return frame
        return _edit_parquet(_newest(lake, "instance_catalog"), change)
    return setup


def _forecast(resource: str, value: float) -> Callable[[Path], int]:
    def setup(lake: Path) -> int:
        def change(frame: pd.DataFrame) -> pd.DataFrame:
            mask = frame["series_id"] == f"region:{REGION}:{resource}"
            for column in ("mean", "q50", "q80", "q90", "q95", "q99", "lo_80", "hi_80", "lo_95", "hi_95"):
                frame.loc[mask, column] = value
            return frame
        return _edit_parquet(lake / "forecasts" / f"run={FORECAST_RUN}" / "forecast.parquet", change)
    return setup


def _request(field: str, value: float, rows: int = 1) -> Callable[[Path], int]:
    def setup(lake: Path) -> int:
        def change(frame: pd.DataFrame) -> pd.DataFrame:
            index = frame.index[frame["destination_region"] == REGION][:rows]
            frame.loc[index, field] = value
            return frame
        return _edit_parquet(next((lake / "raw" / "peering_requests" / LAST_REQUEST_HOUR).glob("*.parquet")), change)
    return setup


# case id → (lake setup, the clamp entries expected as (source, resource_type or None, field, value, bound, rows))
Clamp = tuple[str, str | None, str, Any, float, int]
CASES: dict[str, tuple[Callable[[Path], int], list[Clamp]]] = {
    "pool-available-inf": (_pools("vcpu", "available_quantity", INF),
                           [("resource_pools", "vcpu", "available_quantity", "inf", MAX_QUANTITY["vcpu"], 1)]),
    "pool-total-1e300": (_pools("memory_gib", "total_quantity", 1e300),
                         [("resource_pools", "memory_gib", "total_quantity", 1e300, MAX_QUANTITY["memory_gib"], 1)]),
    "pool-available-nan": (_pools("storage_gib", "available_quantity", NAN),
                           [("resource_pools", "storage_gib", "available_quantity", "nan", MAX_QUANTITY["storage_gib"], 1)]),
    "pool-available-negative": (_pools("bandwidth_gbps", "available_quantity", -5.0),
                                [("resource_pools", "bandwidth_gbps", "available_quantity", -5.0,
                                  MAX_QUANTITY["bandwidth_gbps"], 1)]),
    "pool-at-the-bound": (_pools("vcpu", "available_quantity", MAX_QUANTITY["vcpu"]), []),
    "forecast-quantiles-inf": (_forecast("vcpu", INF),
                               [("forecast", "vcpu", "demand", "inf", MAX_QUANTITY["vcpu"], 6)]),
    "forecast-quantiles-nan": (_forecast("memory_gib", NAN),
                               [("forecast", "memory_gib", "demand", "nan", MAX_QUANTITY["memory_gib"], 6)]),
    "forecast-quantiles-1e300": (_forecast("storage_gib", 1e300),
                                 [("forecast", "storage_gib", "demand", 1e300, MAX_QUANTITY["storage_gib"], 6)]),
    "forecast-quantiles-negative": (_forecast("bandwidth_gbps", -1e9), []),  # floored at 0 by the quantile step
    "catalog-price-inf": (_catalog("on_demand_hourly", INF),
                          [("instance_catalog", None, "on_demand_hourly", "inf", MAX_HOURLY_PRICE_USD, 1)]),
    "catalog-vcpu-1e300": (_catalog("vcpu", 1e300), [("instance_catalog", None, "vcpu", 1e300, MAX_INSTANCE_SIZE["vcpu"], 1)]),
    "catalog-interruption-nan": (_catalog("spot_interruption_rate", NAN),
                                 [("instance_catalog", None, "spot_interruption_rate", "nan", 1.0, 1)]),
    "request-vcpu-1e300": (_request("vcpu", 1e300), [("peering_requests", "vcpu", "vcpu", 1e300, MAX_QUANTITY["vcpu"], 1)]),
    "request-vcpu-inf-twice": (_request("vcpu", INF, rows=2), [("peering_requests", "vcpu", "vcpu", "inf", MAX_QUANTITY["vcpu"], 2)]),
    "request-at-the-contract-bound": (_request("vcpu", MAX_QUANTITY["vcpu"]), []),
}


@pytest.fixture()
def poisoned(published_root: Path, tmp_path: Path) -> Path:
    """A copy of the published lake; hard links (the lake's writers replace files, never write through them)."""
    shutil.copytree(published_root / "lake", tmp_path / "lake", copy_function=os.link)
    return tmp_path


@pytest.mark.parametrize("case", sorted(CASES))
def test_poison_is_clamped_named_and_the_plan_publishes(case: str, poisoned: Path, caplog: pytest.LogCaptureFixture) -> None:
    setup, expected = CASES[case]
    lake = poisoned / "lake"
    baseline_regions = set(read_plan(settings_for(poisoned), "plan-20260129T0000Z")[0]["region"])
    input_rows = setup(lake)
    settings = settings_for(poisoned)
    with caplog.at_level(logging.WARNING, logger="pipeline.plan.bounds"):
        planned = build_plan(DataInterval.ending_at(RUN_END), settings, FORECAST_RUN)
    assert planned["attempt"] == 2  # the published attempt 1 is untouched
    publish(planned["plan_id"], settings, attempt=planned["attempt"])
    rows, manifest = read_plan(settings, planned["plan_id"])
    got = [(c["source"], c["resource_type"], c["field"], c["value"], c["bound"], c["rows"]) for c in manifest["clamped"]]
    assert got == expected, manifest["clamped"]
    assert all(c["region"] == REGION for c in manifest["clamped"])
    assert set(rows["region"]) == baseline_regions and len(rows) == planned["rows"] > 0  # every region still planned
    assert rows["quantity"].map(math.isfinite).all() and (rows["quantity"] >= 0).all()
    assert input_rows > sum(c["rows"] for c in manifest["clamped"])  # the other input rows were read as they were
    warnings = [r.getMessage() for r in caplog.records if r.name == "pipeline.plan.bounds"]
    if expected:
        assert len(warnings) == 1 and f"{expected[0][0]} {REGION}/" in warnings[0] and expected[0][2] in warnings[0], warnings
    else:
        assert warnings == []
    plan = load_latest_plan(str(lake))  # what the IRC serves: hashes verified, pools finite
    assert plan.attempt == 2 and all(math.isfinite(v) for pools in plan.pools.values() for v in pools.values())
    assert plan_files.read_latest(str(lake)) == (planned["plan_id"], 2)
