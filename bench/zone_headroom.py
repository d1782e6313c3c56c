"""What N+1 across availability zones costs on the demo plan (pipeline/plan/zones.py).

Seeds a temporary lake with the committed samples, runs the demo hour once, then re-plans the same
hour under several zone settings and prints, per setting, the optimiser's cost over the plan's
windows, the zone headroom's cost, and the first window's planned and provisioned instances. The
last line is one JSON object. Usage: `PYTHONPATH=$PWD .venv/bin/python bench/zone_headroom.py`.
"""

from __future__ import annotations

import json
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import pandas as pd

from pipeline.common.config import REPO_ROOT, Settings
from pipeline.common.intervals import DataInterval
from pipeline.plan.planner import build_plan
from pipeline.plan.policy import PlannerConfig
from pipeline.run import backfill_ingest, run_hourly

HISTORY_FROM, RUN_START, RUN_END = "2026-01-12T00:00", "2026-01-28T23:00", "2026-01-29T00:00"
SETTINGS = {"one zone": {"per_region": 1}, "2 zones": {"per_region": 2}, "3 zones (default)": {},
            "3 zones, no N+1": {"n_plus_one": False}}


def main() -> None:
    root = Path(tempfile.mkdtemp(prefix="peerscale-zones-"))
    settings = Settings(source_root=str(REPO_ROOT / "data_samples"), lake_root=str(root / "lake"), build_root=str(root / "build"))
    backfill_ingest(HISTORY_FROM, RUN_START, settings)
    run_hourly(RUN_END, settings)
    manifest = json.loads(next((root / "lake" / "plans").glob("plan_id=*/attempt=*/manifest.json")).read_text())
    figures = {}
    for name, zones in SETTINGS.items():
        started = time.perf_counter()
        out = build_plan(DataInterval.ending_at(RUN_END), replace(settings), manifest["forecast_run_id"],
                         config=PlannerConfig(zones=zones))
        plan_dir = root / "lake" / "plans" / f"plan_id={out['plan_id']}" / f"attempt={out['attempt']}"
        new = json.loads((plan_dir / "manifest.json").read_text())
        plan = pd.read_parquet(plan_dir / "plan.parquet")
        first = plan[plan["valid_from"] == plan["valid_from"].min()].drop_duplicates("line_id")
        z = new["zones"]
        figures[name] = {"cost_before_zones": z["hourly_cost_before_zones"], "zone_headroom_cost": z["hourly_cost_zone_headroom"],
                         "cost_total": new["hourly_cost_total"],
                         "ratio": round(new["hourly_cost_total"] / z["hourly_cost_before_zones"], 4),
                         "first_window_planned": int(first["count"].sum()),
                         "first_window_provisioned": int((first["count"] + first["zone_spare_count"]).sum()),
                         "plan_s": round(time.perf_counter() - started, 1)}
        print(f"{name:>20}: ${figures[name]['cost_total']:.2f} over {new['windows']} windows "
              f"(optimiser ${z['hourly_cost_before_zones']:.2f} + zone headroom ${z['hourly_cost_zone_headroom']:.2f}, "
              f"{figures[name]['ratio']}x); first window {figures[name]['first_window_planned']} planned → "
              f"{figures[name]['first_window_provisioned']} instances")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
