"""`airflow backfill create` on a running scheduler gives the plans `peerscale backfill` gives.

Airflow 3 backfills are created with `airflow backfill create --dag-id --from-date --to-date` and
executed by the scheduler like any run. This test brings up the native CeleryExecutor cluster of
tests/celery_cluster.py (PostgreSQL + Redis on 127.0.0.1, database dropped at the end), backfills
two hourly intervals of the seeded lake through the hourly DAG — fanned-out forecast, pools and
all — and meanwhile runs `peerscale backfill` (laptop mode, single-process forecast) over the same
hours on a copy of the same lake. The plan rows and the forecasts must be equal.

Needs PostgreSQL and Redis: runs under `make test-distributed` (PEERSCALE_DISTRIBUTED=1).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from pipeline.common.config import REPO_ROOT
from tests.celery_cluster import AIRFLOW, CeleryCluster, wait_until
from tests.conftest import RUN_END, settings_for

DAG_ID = "peerscale_hourly"
# Two hourly runs: [22:00, 23:00) and [23:00, 00:00). Airflow selects runs by logical date (the
# interval start, both ends inclusive); `peerscale backfill` by the hours in [--from, --to).
FIRST_HOUR, LAST_HOUR = "2026-01-28T22:00", "2026-01-28T23:00"
INTERVAL_ENDS = ("2026-01-28T23:00", RUN_END)
PEERSCALE = Path(sys.executable).with_name("peerscale")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(1800),
    pytest.mark.skipif(os.environ.get("PEERSCALE_DISTRIBUTED") != "1", reason="needs PostgreSQL + Redis: `make test-distributed`"),
]


def _plan_rows(root: Path, interval_end: str) -> pd.DataFrame:
    from pipeline.common.intervals import DataInterval
    from pipeline.plan import read_plan
    from pipeline.plan.planner import plan_id_for

    plan, manifest = read_plan(settings_for(root), plan_id_for(DataInterval.ending_at(interval_end)))
    assert manifest["status"] == "published"
    keys = ["valid_from", "region", "resource_type", "instance_type", "purchase_option"]
    return plan.sort_values(keys, kind="stable").reset_index(drop=True)


def _forecast(root: Path, interval_end: str) -> pd.DataFrame:
    from pipeline.common.intervals import DataInterval
    from pipeline.forecast import read_forecast
    from pipeline.forecast.engine import forecast_run_id

    return read_forecast(settings_for(root), forecast_run_id("hourly", DataInterval.ending_at(interval_end)))


def test_airflow_backfill_create_matches_peerscale_backfill(seeded_root: Path, tmp_path: Path) -> None:
    airflow_root, laptop_root = tmp_path / "airflow", tmp_path / "laptop"
    for root in (airflow_root, laptop_root):
        shutil.copytree(seeded_root / "lake", root / "lake")
    airflow_settings = settings_for(airflow_root)
    laptop_env = {**os.environ, "PEERSCALE_LAKE": str(laptop_root / "lake"), "PEERSCALE_BUILD": str(laptop_root / "build"),
                  "PEERSCALE_SOURCE": str(REPO_ROOT / "data_samples")}
    # Laptop mode in the background while the cluster starts and runs (they share the 2 cores).
    laptop_log = (tmp_path / "peerscale-backfill.log").open("w")
    laptop = subprocess.Popen([str(PEERSCALE), "backfill", "--from", FIRST_HOUR, "--to", RUN_END], env=laptop_env,
                              stdout=laptop_log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    cluster = CeleryCluster(workdir=tmp_path / "cluster", lake_root=airflow_settings.lake_root,
                            build_root=airflow_settings.build_root, workers=2, worker_concurrency=1)
    started = time.monotonic()
    try:
        cluster.start()
        cluster.wait_for_dag(DAG_ID)
        cluster.api("PATCH", f"/api/v2/dags/{DAG_ID}", {"is_paused": False})  # queued runs of paused DAGs never start
        create = subprocess.run(
            [str(AIRFLOW), "backfill", "create", "--dag-id", DAG_ID, "--from-date", f"{FIRST_HOUR}:00+00:00",
             "--to-date", f"{LAST_HOUR}:00+00:00", "--max-active-runs", "1"],  # one at a time, like the laptop
            env=cluster.env(), capture_output=True, text=True, timeout=300,
        )
        assert create.returncode == 0, create.stdout[-3000:] + create.stderr[-3000:]

        def backfill_runs() -> list[dict]:
            runs = cluster.api("GET", f"/api/v2/dags/{DAG_ID}/dagRuns?limit=100")["dag_runs"]
            return [r for r in runs if r["run_type"] == "backfill"]

        def finished() -> list[dict] | None:
            runs = backfill_runs()
            return runs if len(runs) == 2 and all(r["state"] in ("success", "failed") for r in runs) else None

        runs = wait_until("the backfill's two runs to finish", finished, timeout=1500, interval=3, alive=cluster.check_alive)
        assert sorted(r["data_interval_end"][:16] for r in runs) == list(INTERVAL_ENDS), runs
        failed = {r["dag_run_id"]: [(t["task_id"], t["map_index"], t["state"]) for t in cluster.task_instances(DAG_ID, r["dag_run_id"])
                                    if t["state"] != "success"] for r in runs if r["state"] != "success"}
        assert not failed, failed
        shard_tis = [t for r in runs for t in cluster.task_instances(DAG_ID, r["dag_run_id"]) if t["task_id"] == "forecast_shard"]
        assert len(shard_tis) >= 2 * 2, "the forecast fanned out over several shards in each run"
        print(f"\nairflow backfill: {time.monotonic() - started:.0f} s from cluster start to both runs done")
    except BaseException:
        print(cluster.log_tails(60))
        laptop.kill()
        laptop.wait(timeout=30)
        raise
    finally:
        cluster.stop()
        laptop_log.close()

    # Nothing left behind: processes, database, Redis database.
    assert all(p.popen is None or p.popen.poll() is not None for p in cluster.processes)
    assert cluster.database_exists() is False
    assert cluster.redis_db is None

    try:
        assert laptop.wait(timeout=900) == 0, (tmp_path / "peerscale-backfill.log").read_text()[-3000:]
    finally:
        if laptop.poll() is None:
            laptop.kill()
            laptop.wait(timeout=30)
    for interval_end in INTERVAL_ENDS:
        pd.testing.assert_frame_equal(_plan_rows(airflow_root, interval_end), _plan_rows(laptop_root, interval_end))
        # The DAG's sharded forecast equals the laptop's single-process one.
        pd.testing.assert_frame_equal(_forecast(airflow_root, interval_end), _forecast(laptop_root, interval_end))
