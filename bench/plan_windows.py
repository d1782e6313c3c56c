"""Plans of 60-, 30- and 15-minute windows side by side on the samples (issue #16 item 3).

For each of `--hours` consecutive run hours, every window length gets its own lake (a copy of one
seeded history) and runs the real stages: ingest the hour → features → hourly forecast → windows
forecast (below 60 minutes) → plan. Each plan is then scored over the hour it is in force (the next
run replaces it) against what really happened, at the finest resolution, 15 minutes: the realized
peak of every region and resource (the features' own SQL over the whole request log, future included)
against the capacity the plan holds in that quarter-hour. Printed per window length: the share of
(quarter-hour, region, resource) cells the plan covered, the shortfall and idle unit-hours (vCPU), and
the pre-allocation's cost over the hour, and the newsvendor's total: that cost plus every resource's
unmet unit-hours at its reference c_under (what a miss costs: pipeline.common.config.CostModel, the
planner's own objective); the ratios are against the first length given (60). Last line JSON.

Usage: `PYTHONPATH=$PWD .venv/bin/python bench/plan_windows.py [--hours 6] [--minutes 60,30,15]`.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import pandas as pd
from rich.console import Console
from rich.table import Table

from pipeline.common import lake
from pipeline.common.config import REPO_ROOT, Settings
from pipeline.common.intervals import DataInterval, parse_utc
from pipeline.common.schemas import PEERING_REQUESTS, RESOURCE_TYPES
from pipeline.features.build import FeatureWindow, compute_features, window_feature
from pipeline.plan.planner import read_plan
from pipeline.run import backfill_ingest, stage_features, stage_forecast, stage_forecast_windows, stage_ingest, stage_plan

HISTORY_FROM = "2026-01-12T00:00"
FIRST_RUN_END = "2026-01-28T19:00"
QUARTER = timedelta(minutes=15)


def realized_quarter_peaks(settings: Settings, start: pd.Timestamp, end: pd.Timestamp) -> pd.DataFrame:
    """The true 15-minute peaks of [start, end) from a lake holding the whole range (future included)."""
    requests = lake.read_time_range(settings.lake_root, "peering_requests", start - timedelta(days=3), end, "requested_at")
    regions = sorted(set(lake.read_reference(settings.lake_root, "resource_pools", end).column("region").to_pylist()))
    tables = compute_features(requests.select(PEERING_REQUESTS.names), regions, FeatureWindow(start, end), 15)
    return tables[window_feature("region_demand", 15)].to_pandas()


def score_hour(plan: pd.DataFrame, truth: pd.DataFrame, hour_start: pd.Timestamp, c_under: dict[str, float]) -> dict[str, float]:
    """Cover, shortfall, idle, cost and miss cost of a plan over the hour from `hour_start`, quarter by quarter."""
    held = plan.groupby(["valid_from", "valid_to", "region", "resource_type"], as_index=False)["quantity"].sum()
    cells = covered = 0
    short = idle = cost = miss = 0.0
    for q in range(4):
        t0 = hour_start + q * QUARTER
        live = held[(held["valid_from"] <= t0) & (held["valid_to"] > t0)]
        cap = {(r, k): v for r, k, v in live[["region", "resource_type", "quantity"]].itertuples(index=False)}
        rows = plan[(plan["valid_from"] <= t0) & (plan["valid_to"] > t0)]
        cost += float(rows["hourly_cost"].sum()) * 0.25
        for row in truth[truth["window_start"] == t0].itertuples(index=False):
            for k in RESOURCE_TYPES:
                need, have = float(getattr(row, k)), cap.get((row.region, k), 0.0)
                cells += 1
                covered += have >= need - 1e-9
                miss += max(need - have, 0.0) * 0.25 * c_under[k]
                if k == "vcpu":
                    short += max(need - have, 0.0) * 0.25
                    idle += max(have - need, 0.0) * 0.25
    return {"cells": cells, "covered": covered, "short_vcpu_h": short, "idle_vcpu_h": idle, "cost_usd": cost, "miss_usd": miss}


def run_setting(seed: Path, work: Path, source: Settings, minutes: int, ends: list[pd.Timestamp],
                truth: pd.DataFrame) -> dict[str, float]:
    """Every run hour with plans of `minutes` windows, in a lake of its own; the hours' scores summed."""
    root = work / f"w{minutes}"
    shutil.copytree(seed, root / "lake")
    settings = replace(source, lake_root=str(root / "lake"), build_root=str(root / "build"), plan_window_minutes=minutes)
    total: dict[str, float] = {"cells": 0, "covered": 0, "short_vcpu_h": 0.0, "idle_vcpu_h": 0.0, "cost_usd": 0.0, "miss_usd": 0.0,
                               "seconds": 0.0}
    for end in ends:
        interval = DataInterval.ending_at(end.to_pydatetime(), hours=1)
        started = time.perf_counter()
        stage_ingest(interval, settings)
        stage_features(interval, settings)
        forecast = stage_forecast(interval, settings)
        windows = stage_forecast_windows(interval, settings)
        planned = stage_plan(interval, settings, forecast["run_id"], windows.get("run_id"))
        total["seconds"] += time.perf_counter() - started
        plan, _ = read_plan(settings, planned["plan_id"], planned["attempt"])
        for key, value in score_hour(plan, truth, end, settings.cost.c_under).items():
            total[key] += value
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hours", type=int, default=6, help="consecutive run hours scored (default 6)")
    parser.add_argument("--minutes", default="60,30,15", help="window lengths, the first is the baseline (default 60,30,15)")
    args = parser.parse_args()
    lengths = [int(m) for m in args.minutes.split(",")]
    work = Path(tempfile.mkdtemp(prefix="peerscale-windows-"))
    source = Settings(source_root=str(REPO_ROOT / "data_samples"), lake_root=str(work / "seed"), build_root=str(work / "build"))
    first_end = pd.Timestamp(parse_utc(FIRST_RUN_END))
    ends = [first_end + timedelta(hours=k) for k in range(args.hours)]
    backfill_ingest(HISTORY_FROM, (first_end - timedelta(hours=1)).isoformat(), source)
    truth_settings = replace(source, lake_root=str(work / "truth"))
    shutil.copytree(work / "seed", work / "truth")
    backfill_ingest((first_end - timedelta(hours=1)).isoformat(), (ends[-1] + timedelta(hours=1)).isoformat(), truth_settings)
    truth = realized_quarter_peaks(truth_settings, ends[0], ends[-1] + timedelta(hours=1))
    results = {m: run_setting(work / "seed", work, source, m, ends, truth) for m in lengths}
    print_table(results, lengths[0], args.hours)
    shutil.rmtree(work, ignore_errors=True)


def print_table(results: dict[int, dict[str, float]], base: int, hours: int) -> None:
    """The per-length figures and their ratios to the baseline, then one JSON line."""
    table = Table(title=f"plans by window length, {hours} run hours of the samples, scored per quarter-hour")
    for col in ("window", "covered", "short vCPU-h", "idle vCPU-h", "cost $", "cost ×base", "cost + misses $", "total ×base", "run s"):
        table.add_column(col, justify="right")
    out: dict[str, object] = {"hours": hours, "baseline_minutes": base}
    for m, r in results.items():
        share = r["covered"] / max(r["cells"], 1)
        ratio = r["cost_usd"] / results[base]["cost_usd"] if results[base]["cost_usd"] else float("nan")
        total = r["cost_usd"] + r["miss_usd"]
        total_ratio = total / (results[base]["cost_usd"] + results[base]["miss_usd"])
        table.add_row(f"{m} min", f"{share:.2%}", f"{r['short_vcpu_h']:.1f}", f"{r['idle_vcpu_h']:.1f}", f"{r['cost_usd']:.2f}",
                      f"{ratio:.3f}", f"{total:.2f}", f"{total_ratio:.3f}", f"{r['seconds']:.1f}")
        out[f"w{m}"] = {"covered": round(share, 4), "short_vcpu_h": round(r["short_vcpu_h"], 2),
                        "idle_vcpu_h": round(r["idle_vcpu_h"], 2), "cost_usd": round(r["cost_usd"], 2),
                        "cost_vs_base": round(float(ratio), 4), "total_usd": round(total, 2),
                        "total_vs_base": round(float(total_ratio), 4), "run_s": round(r["seconds"], 1)}
    Console().print(table)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
