"""Server time per page of the analyst app (pipeline.ui) on a lake of 30 days of hourly plans at 30 regions.

    .venv/bin/python bench/ui.py                  # build the synthetic lake in a temp dir, time every page
    .venv/bin/python bench/ui.py --lake /tmp/l    # keep (or reuse) the lake there

The lake is written in the real layout by the real writers (plan_files.write_attempt and
write_manifest, lake.write_hour_partitions, lake.write_parquet_atomic): 720 published plans (6
windows × 30 regions × 6 instance lines × 4 resources = 4,320 rows each, every row with a reason
of ~700 characters; manifests carrying 1,140 series' models and 180 packing records, like the real
planner's), alerts for every hour, 7 days of IRC outcomes (1,000 decisions an hour), 3 days of
peering requests, 30 days of quarantined rows, a backtest summary; forecasts (1,020 series × 48 h)
and features for the newest 6 hourly runs only (what the pages read).

Each page is requested `--repeat` times in-process (FastAPI's TestClient: the app's own time,
no network); the first request of each page is reported apart (cold: DuckDB, Altair and the
manifests read for the first time). Baseline: the existing static HTML report
(pipeline.report.html.write_plan_report) for the newest plan, timed in the same process.
Figures are printed, never asserted; the last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import warnings
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

DAYS, REGION_COUNT, WINDOWS, RECENT_RUNS = 30, 30, 6, 6
END = datetime(2026, 3, 1, tzinfo=UTC)  # the newest plan is made at END - 1 h
RESOURCES = ("vcpu", "memory_gib", "storage_gib", "bandwidth_gbps")
TYPES = (("c6i.4xlarge", 16, 32, 200, 12.5, 0.68), ("m6i.2xlarge", 8, 32, 100, 6.0, 0.38), ("r6i.2xlarge", 8, 64, 100, 6.0, 0.5))
REASON = ("{r} {w}: q0.90 of {k} demand = {d:.2f} (committed+ensemble forecast) + {f:.2f} failover headroom; this line holds "
          "{q:.2f} ({q:.2f} counted); {n} × {t} — $0.0548 per vCPU-h, the cheapest {o} type for vcpu; one of 5 types able to "
          "host the 5 largest session(s); {o} at ${p:.4f}/h: the spot share cap is reached (30% of vCPU is spot, ≤30% allowed); "
          "N+1: keeps {f:.2f} {k} headroom for its partner (100% of its critical/high demand); churn: {n}→{n} vs the previous "
          "plan (the change beats the churn penalty, 25% of the price per instance changed); packing: 20/20 sessions placed "
          "(hosting_model), 18% of vCPU stranded; CP-SAT optimal (model gap 0.00%, region cost ${c:.4f}/h)")


def region_names() -> list[str]:
    names = [f"{a}-{b}-{n}" for n in (1, 2) for a in ("us", "eu", "ap", "sa", "ca", "me", "af", "mx")
             for b in ("east", "west", "central", "north")]
    return sorted(names[:REGION_COUNT])


def token(at: datetime) -> str:
    return f"{at:%Y%m%dT%H%MZ}"


def series_ids(regions: list[str]) -> list[str]:
    out = [f"region:{r}:{k}" for r in regions for k in RESOURCES]
    out += [f"pair:{a}→{b}:requests" for a in regions for b in regions if a != b]
    return out + [f"inbound:{r}:requests" for r in regions]


def plan_table(plan_id: str, made: datetime, regions: list[str], rng: np.random.Generator) -> pa.Table:
    rows: dict[str, list] = {k: [] for k in ("plan_id", "valid_from", "valid_to", "region", "resource_type", "quantity", "instance_type",
                                             "purchase_option", "count", "hourly_cost", "demand_quantile", "line_id", "reason",
                                             "effective_quantity", "failover_quantity", "relocated_quantity", "previous_count")}
    for j in range(WINDOWS):
        w = made + timedelta(hours=j)
        for r in regions:
            demand = {k: float(v) for k, v in zip(RESOURCES, rng.uniform([50, 200, 2000, 5], [300, 1200, 9000, 40]))}
            for t, *cap, price in TYPES:
                for option in ("on_demand", "spot"):
                    n = int(rng.integers(1, 8))
                    p = price if option == "on_demand" else price * 0.55
                    line = f"{r}/{token(w)}/{t}/{option}"
                    for k, c in zip(RESOURCES, cap):
                        q = c * n
                        for col, v in (("plan_id", plan_id), ("valid_from", w), ("valid_to", w + timedelta(hours=1)), ("region", r),
                                       ("resource_type", k), ("quantity", float(q)), ("instance_type", t), ("purchase_option", option),
                                       ("count", n), ("hourly_cost", p * n / 4), ("demand_quantile", demand[k]), ("line_id", line),
                                       ("effective_quantity", float(q)), ("failover_quantity", demand[k] * 0.2),
                                       ("relocated_quantity", 0.0), ("previous_count", n)):
                            rows[col].append(v)
                        rows["reason"].append(REASON.format(r=r, w=f"{w:%Y-%m-%dT%H:%MZ}", k=k, d=demand[k], f=demand[k] * 0.2, q=q, n=n,
                                                            t=t, o=option, p=p * n, c=p * n * 3))
    from pipeline.plan.planner import PLAN_FILE_SCHEMA

    return pa.table(rows, schema=PLAN_FILE_SCHEMA)


def manifest(plan_id: str, made: datetime, regions: list[str], ids: list[str], cost: float, rng: np.random.Generator) -> dict:
    windows = [made + timedelta(hours=j) for j in range(WINDOWS)]
    return {
        "created_at": made.isoformat(), "data_interval": {"start": (made - timedelta(hours=1)).isoformat(), "end": made.isoformat()},
        "valid_from": windows[0].isoformat(), "valid_to": (windows[-1] + timedelta(hours=1)).isoformat(), "windows": WINDOWS,
        "forecast_run_id": f"hourly-{token(made)}",
        "model_per_series": dict.fromkeys(ids + [f"fresh:{r}:{k}" for r in regions for k in RESOURCES], "ensemble"),
        "tau": dict.fromkeys(RESOURCES, 0.9), "objective": cost, "lower_bound": cost * 0.995, "gap": float(rng.uniform(0, 0.01)),
        "hourly_cost_total": cost, "shortfall": [], "rows": WINDOWS * len(regions) * 24,
        "windows_detail": [{"window": w.isoformat(), "cost": cost / WINDOWS, "status": ["OPTIMAL"]} for w in windows],
        "packing": [{"window": w.isoformat(), "region": r, "placed": 20, "sessions": 20, "unhosted_sessions": 0}
                    for w in windows for r in regions],
        "redundancy": {r: {"partner": regions[(i + 1) % len(regions)], "absorbs": [regions[i - 1]]} for i, r in enumerate(regions)},
        "churn": {"previous_plan_id": f"plan-{token(made - timedelta(hours=1))}", "instances_added": 10, "instances_removed": 12},
    }


def write_plans(lake_root: str, regions: list[str]) -> list[str]:
    from pipeline.common import plan_files

    rng = np.random.default_rng(7)
    ids = series_ids(regions)
    made_all = [END - timedelta(hours=h) for h in range(DAYS * 24, 0, -1)]
    plan_ids = []
    for made in made_all:
        plan_id = f"plan-{token(made)}"
        table = plan_table(plan_id, made, regions, rng)
        sink = pa.BufferOutputStream()
        import pyarrow.parquet as pq

        pq.write_table(table, sink, compression="zstd")
        pools = pa.table({"region": regions, "resource_type": ["vcpu"] * len(regions), "available_quantity": [1e4] * len(regions),
                          "total_quantity": [1e4] * len(regions)})
        psink = pa.BufferOutputStream()
        pq.write_table(pools, psink)
        cost = float(sum(table.column("hourly_cost").to_pylist()) / WINDOWS)
        attempt = plan_files.write_attempt(lake_root, plan_id, {"plan.parquet": sink.getvalue().to_pybytes(),
                                                                "resource_pools.parquet": psink.getvalue().to_pybytes()},
                                           manifest(plan_id, made, regions, ids, cost, rng))
        folder = plan_files.attempt_dir(lake_root, plan_id, attempt)
        body = plan_files.read_manifest(lake_root, plan_id, attempt)
        plan_files.write_manifest(folder, {**body, "status": "published"})
        plan_ids.append(plan_id)
    from pipeline.common import storage

    storage.write_text_atomic(plan_files.latest_pointer(lake_root), plan_files.pointer_text(plan_ids[-1], 1))
    storage.write_text_atomic(storage.join(lake_root, "plans", "APPLIED"), plan_ids[-25] + "\n")
    return plan_ids


def write_recent_runs(lake_root: str, regions: list[str]) -> None:
    """Forecasts and features of the newest RECENT_RUNS hourly runs (what the forecast and plan pages read)."""
    from pipeline.common import lake, storage
    from pipeline.common.schemas import FORECAST

    rng = np.random.default_rng(11)
    ids = series_ids(regions)
    pairs = [(a, b) for a in regions for b in regions if a != b]
    for back in range(RECENT_RUNS, 0, -1):
        made = END - timedelta(hours=back)
        steps = [made + timedelta(hours=h) for h in range(48)]
        n = len(ids) * len(steps)
        mean = rng.uniform(5, 300, n)
        spread = mean * 0.2
        cols = {"series_id": np.repeat(ids, len(steps)), "ds": steps * len(ids), "model": ["ensemble"] * n, "mean": mean, "q50": mean,
                "q80": mean + spread * 0.8, "q90": mean + spread, "q95": mean + spread * 1.3, "q99": mean + spread * 2,
                "lo_80": mean - spread, "hi_80": mean + spread, "lo_95": mean - 2 * spread, "hi_95": mean + 2 * spread}
        run = f"hourly-{token(made)}"
        lake.write_parquet_atomic(pa.table(cols, schema=FORECAST), storage.join(lake.forecast_dir(lake_root, run), "forecast.parquet"))
        selection = {sid: {"model": "ensemble", "members": ["seasonal_mean", "global_gbm"], "quantile_method": "empirical",
                           "quantile_cv_vs_snaive": 0.85, "pinball_at_tau": {"ensemble": 1.0, "seasonal_naive": 1.2},
                           "mase": {"ensemble": 0.8, "seasonal_naive": 1.0}, "score": {"ensemble": 0.83, "seasonal_naive": 1.0},
                           "quantile_cv_pinball": {"empirical": 1.0, "pooled": 1.05}, "quantile_cv_coverage": {"80": 0.82, "95": 0.95}}
                     for sid in ids + [f"fresh:{r}:{k}" for r in regions for k in RESOURCES]}
        lake.write_json_atomic(storage.join(lake.forecast_dir(lake_root, run), "manifest.json"),
                               {"run_id": run, "selection": selection, "models": ["seasonal_naive", "seasonal_mean", "global_gbm"],
                                "engine": {"quantile_methods": {"chosen": {"empirical": len(selection)}, "share_cv80_within_70_90": 0.9}}})
        hours = [made - timedelta(hours=h) for h in range(14 * 24, 0, -1)]
        demand = {"hour": np.tile(hours, len(regions)), "region": np.repeat(regions, len(hours))}
        for k, hi in zip(RESOURCES, (300, 1200, 9000, 40)):
            demand[k] = rng.uniform(0, hi, len(hours) * len(regions))
        demand["arrivals"] = rng.integers(0, 50, len(hours) * len(regions))
        volume = {"hour": np.tile(hours, len(pairs)), "source_region": np.repeat([a for a, _ in pairs], len(hours)),
                  "destination_region": np.repeat([b for _, b in pairs], len(hours)),
                  "requests": rng.integers(0, 20, len(hours) * len(pairs))}
        for name, table in (("region_demand_hourly", demand), ("pair_volume_hourly", volume)):
            t = pa.table(table)
            t = t.set_column(0, "hour", t.column("hour").cast(pa.timestamp("us", tz="UTC")))
            lake.write_parquet_atomic(t, lake.features_path(lake_root, name, f"{token(made)}-14d"))


def write_operations(lake_root: str, regions: list[str]) -> None:
    """7 days of IRC outcomes, 3 days of requests, 30 days of quarantine, an alert file per hour, a backtest."""
    from pipeline.common import lake, storage
    from pipeline.common.intervals import DataInterval
    from pipeline.common.schemas import PEERING_REQUESTS, QUARANTINE
    from pipeline.irc.outcomes import outcome_schema

    rng = np.random.default_rng(13)
    schema = outcome_schema()
    start = END - timedelta(days=7)
    n = 7 * 24 * 1000
    at = [start + timedelta(seconds=float(s)) for s in np.sort(rng.uniform(0, 7 * 86400, n))]
    cols = {f.name: [None] * n for f in schema}
    cols.update(request_id=[f"r{i}" for i in range(n)], requested_at=at, decided_at=at, destination_region=list(rng.choice(regions, n)),
                source_region=list(rng.choice(regions, n)), status=["success"] * n, priority=["normal"] * n,
                path=list(rng.choice(["preallocated", "on_demand"], n, p=[0.93, 0.07])))
    lake.write_hour_partitions(pa.table(cols, schema=schema), lake.raw_dir(lake_root, "irc_outcomes"), "requested_at",
                               DataInterval(start, END))
    rstart = END - timedelta(days=3)
    m = 3 * 24 * 1000
    rat = [rstart + timedelta(seconds=float(s)) for s in np.sort(rng.uniform(0, 3 * 86400, m))]
    req = {"request_id": [f"q{i}" for i in range(m)], "requested_at": rat, "source_region": list(rng.choice(regions, m)),
           "destination_region": list(rng.choice(regions, m)), "vcpu": rng.uniform(1, 16, m), "memory_gib": rng.uniform(1, 64, m),
           "storage_gib": rng.uniform(0, 500, m), "bandwidth_gbps": rng.uniform(0, 2, m), "duration_s": rng.uniform(60, 20000, m),
           "priority": ["normal"] * m}
    lake.write_hour_partitions(pa.table(req, schema=PEERING_REQUESTS), lake.raw_dir(lake_root, "peering_requests"), "requested_at",
                               DataInterval(rstart, END))
    for day in range(DAYS):
        d0 = END - timedelta(days=DAYS - day)
        rows = [{"dataset": "peering_requests", "source_file": f"{d0:%Y-%m-%d}.csv", "line_number": i,
                 "reason": f"vcpu: cannot parse '{i} vCPU'", "raw": f"q{i},{d0:%Y-%m-%d},x", "reason_kind": "vcpu: cannot parse"}
                for i in range(20)]
        lake.write_hour_partitions(pa.Table.from_pylist(rows, schema=QUARANTINE), lake.quarantine_dir(lake_root, "peering_requests"), None,
                                   DataInterval(d0, d0 + timedelta(hours=1)))
    for h in range(DAYS * 24):
        end = END - timedelta(hours=DAYS * 24 - h - 1)
        alerts = [{"rule": "utilization", "severity": "warning", "subject": regions[h % len(regions)], "value": 0.2, "threshold": 0.3,
                   "message": "peak vCPU demand used 20% of the pre-allocated"}] if h % 5 == 0 else []
        lake.write_json_atomic(storage.join(lake_root, "alerts", f"{token(end)}.json"), {"alerts": alerts, "interval_end": end.isoformat()})
    policies = {p: {"requests": 1000, "hit_rate": hr, "failures": 0, "cost_vs_oracle": 1.1,
                    "cost": {"preallocation": c, "on_demand": 5.0, "cold_start_penalty": 1.0, "shortfall_penalty": 0.0, "total": c + 6}}
                for p, hr, c in (("predictive", 0.93, 40.0), ("static", 0.85, 60.0), ("oracle", 0.99, 35.0))}
    lake.write_json_atomic(storage.join(lake_root, "backtests", "backtest-x.json"),
                           {"from": start.isoformat(), "to": END.isoformat(), "hours": 168, "policies": policies})


def build(lake_root: str) -> dict[str, float]:
    regions = region_names()
    took = {}
    t = time.perf_counter()
    write_plans(lake_root, regions)
    took["plans_s"] = time.perf_counter() - t
    t = time.perf_counter()
    write_recent_runs(lake_root, regions)
    write_operations(lake_root, regions)
    took["rest_s"] = time.perf_counter() - t
    return took


def pages(regions: list[str]) -> dict[str, str]:
    newest = f"plan-{token(END - timedelta(hours=1))}"
    week = f"plan-{token(END - timedelta(hours=25))}"
    return {
        "plans (7 days)": "/",
        "plans (30 days)": f"/?start={END - timedelta(days=DAYS):%Y-%m-%dT%H:%M}",
        "plan detail": f"/plans/{week}",
        "plan detail, reason search": f"/plans/{newest}?q=spot%20at",
        "compare (applied vs latest)": "/compare",
        "forecast search (all)": "/forecasts",
        "forecast search (pairs into a region)": f"/forecasts?q=%E2%86%92{regions[0]}&kind=pair",
        "series (region)": f"/forecasts/series?id=region:{regions[3]}:vcpu",
        "series (pair)": f"/forecasts/series?id=pair:{regions[1]}%E2%86%92{regions[2]}:requests",
        "operations (7 days)": "/operations",
        "requests behind a window": f"/requests?region={regions[0]}&start={END - timedelta(hours=3):%Y-%m-%dT%H:%M}"
                                    f"&end={END - timedelta(hours=2):%Y-%m-%dT%H:%M}",
    }


def time_pages(lake_root: str, repeat: int) -> list[dict]:
    from fastapi.testclient import TestClient

    from pipeline.ui.webapp import create_app

    client = TestClient(create_app(lake_root))
    out = []
    for name, path in pages(region_names()).items():
        times = []
        for _ in range(repeat + 1):
            t = time.perf_counter()
            response = client.get(path)
            times.append(time.perf_counter() - t)
            assert response.status_code == 200, (path, response.status_code, response.text[:500])
        warm = sorted(times[1:])
        out.append({"page": name, "cold_s": times[0], "p50_s": statistics.median(warm),
                    "p95_s": warm[min(len(warm) - 1, round(0.95 * (len(warm) - 1)))], "kb": len(response.content) // 1024})
    return out


def baseline_report(lake_root: str) -> float:
    """The existing static report of the newest plan (matplotlib PNGs), timed once."""
    from pipeline.common.config import Settings
    from pipeline.common.intervals import DataInterval
    from pipeline.report.html import write_plan_report

    newest = END - timedelta(hours=1)
    settings = Settings(lake_root=lake_root, build_root=str(Path(lake_root).parent / "build"))
    t = time.perf_counter()
    write_plan_report(f"plan-{token(newest)}", DataInterval(newest - timedelta(hours=1), newest), settings)
    return time.perf_counter() - t


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lake", help="Where to build (or reuse) the synthetic lake (default: a temp dir, removed after).")
    parser.add_argument("--repeat", type=int, default=20, help="Warm requests per page (default 20).")
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    workdir = Path(args.lake) if args.lake else Path(tempfile.mkdtemp(prefix="peerscale-ui-bench-"))
    lake_root = str(workdir / "lake")
    built: dict[str, float] = {}
    if not (workdir / "lake" / "plans" / "LATEST").exists():
        built = build(lake_root)
        print(f"lake built in {built['plans_s']:.0f} s (720 plans) + {built['rest_s']:.0f} s (forecasts, features, operations)", flush=True)
    rows = time_pages(lake_root, args.repeat)
    report_s = baseline_report(lake_root)
    print(f"{'page':40s} {'cold s':>8s} {'p50 s':>8s} {'p95 s':>8s} {'KiB':>7s}  p95 / static report")
    for r in rows:
        print(f"{r['page']:40s} {r['cold_s']:8.3f} {r['p50_s']:8.3f} {r['p95_s']:8.3f} {r['kb']:7d}  {r['p95_s'] / report_s:8.3f}")
    print(f"{'baseline: static report of one plan':40s} {report_s:8.3f}")
    worst = max(rows, key=lambda r: r["p95_s"])
    print(f"worst p95: {worst['page']} {worst['p95_s']:.3f} s (floor 1 s) on {os.cpu_count()} cores")
    if not args.lake:
        import shutil

        shutil.rmtree(workdir, ignore_errors=True)
    print(json.dumps({"bench": "ui", "plans": DAYS * 24, "regions": REGION_COUNT, "repeat": args.repeat, "pages": rows,
                      "static_report_s": round(report_s, 3), "worst_p95_s": round(worst["p95_s"], 4), "build": built}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
