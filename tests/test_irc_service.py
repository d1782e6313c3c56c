"""Shadow peering, replicas sharing a ledger, and the HTTP service - through real processes."""

from __future__ import annotations

import csv
import json
import signal
import subprocess
import sys
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow.dataset as ds
import pytest
from typer.testing import CliRunner

from pipeline.cli.app import app
from pipeline.irc import Coordinator, PeeringRequest, ShadowMirror, replay_shadow
from pipeline.irc.shadow import candidate_coordinator, load_requests
from tests.test_irc import publish_plan
from tests.test_irc_ledgers import drop_postgres, postgres_url

REPO = Path(__file__).resolve().parents[1]
T0 = datetime(2025, 3, 1, 10, tzinfo=UTC)
EU, US = "eu-west-1", "us-east-1"
COLUMNS = ["request_id", "requested_at", "source_region", "destination_region", "vcpu", "memory_gib", "storage_gib",
           "bandwidth_gbps", "duration_s", "priority"]


def write_requests(path: Path, n: int, vcpu: float = 1.0, duration_s: float = 3600.0, step_s: float = 30.0) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(COLUMNS)
        for i in range(n):
            at = (T0 + timedelta(seconds=step_s * i)).isoformat().replace("+00:00", "Z")
            writer.writerow([f"req-{i:04d}", at, US, EU, vcpu, 2, 0, 0.1, duration_s, "normal"])
        writer.writerow(["req-bad", "not-a-time", US, EU, 1, 1, 0, 0, 60, "normal"])  # kept, decided invalid
    return path


def cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipeline.cli", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture
def lake(tmp_path: Path) -> Path:
    root = tmp_path / "lake"
    publish_plan(root, "plan-b", T0, hours=2, capacity={EU: {"vcpu": 20.0, "memory_gib": 64.0, "bandwidth_gbps": 4.0}},
                 hourly_cost=2.0, latest=False)
    publish_plan(root, "plan-a", T0, hours=2, capacity={EU: {"vcpu": 8.0, "memory_gib": 64.0, "bandwidth_gbps": 4.0}})
    return root


# -- shadow ----------------------------------------------------------------------------------------


def test_replay_shadow_compares_plans_side_by_side(lake: Path, tmp_path: Path) -> None:
    stream = load_requests(write_requests(tmp_path / "r.csv", 40))
    assert [r.request_id for r in stream][-1] == "req-bad"  # unparseable time sorts last
    production = candidate_coordinator(lake, "plan-a", name="production")
    candidate = candidate_coordinator(lake, "plan-b")
    report = replay_shadow(stream, production, candidate).to_dict()
    p, c = report["production"], report["candidate"]
    assert (p["requests"], p["valid"], p["invalid"]) == (41, 40, 1)
    assert p["preallocated"] == 7 and c["preallocated"] == 19  # 95 % of 8 and of 20 vcpu (normal priority)
    assert p["hit_rate"] == pytest.approx(7 / 40) and c["hit_rate"] == pytest.approx(19 / 40)
    assert p["on_demand"] == 8 and p["failures"] == 25  # the 8-vcpu pool, then nothing left
    assert c["on_demand"] == 8 and c["failures"] == 13  # the same pool, reached later
    assert c["failure_rate"] < p["failure_rate"]
    assert c["preallocation_cost_usd"] > p["preallocation_cost_usd"] > 0
    assert p["on_demand_cost_usd"] == c["on_demand_cost_usd"] > 0  # 8 on-demand sessions of 1 vcpu, 2 GiB, 0.1 Gbps for 1 h each
    # Requests 7-18 pre-allocated only by the candidate, 19-26 on demand there but failed in production.
    assert report["disagreements"] == 12 + 8


def test_shadow_mirror_never_touches_production_state(lake: Path) -> None:
    reference = Coordinator(lake, reload_interval_s=None, outcomes=False)
    production = Coordinator(lake, reload_interval_s=None, outcomes=False)
    mirror = ShadowMirror(production, candidate_coordinator(lake, "plan-b"))
    window = T0.timestamp()
    live = []
    for i in range(30):
        request = PeeringRequest(f"r{i}", T0 + timedelta(seconds=i), US, EU, {"vcpu": 1.0}, 3600.0)
        got, expected = mirror.handle_peering_request(request), reference.handle_peering_request(request)
        assert (got.path, got.status) == (expected.path, expected.status)
        live.append(got)
    assert production.ledger.usage(window, EU) == reference.ledger.usage(window, EU) == {
        "vcpu": 7.0, "memory_gib": 0.0, "bandwidth_gbps": 0.0, "storage_gib": 0.0}
    for response in live[:5]:
        assert mirror.release(response.allocation_id)  # type: ignore[arg-type]
    report = mirror.report()
    assert report.production["preallocated"] == 7 and report.candidate["preallocated"] == 19
    assert mirror.candidate.ledger.usage(window, EU)["vcpu"] == pytest.approx(14.0)  # releases were mirrored
    assert production.ledger.usage(window, EU)["vcpu"] == pytest.approx(2.0)
    assert report.dropped == 0
    mirror.close()
    with pytest.raises(ValueError, match="own ledger"):
        ShadowMirror(production, Coordinator(lake, production.ledger, reload_interval_s=None, outcomes=False))


def test_shadow_command_prints_the_comparison(lake: Path, tmp_path: Path) -> None:
    requests = write_requests(tmp_path / "r.csv", 40)
    result = CliRunner().invoke(app, ["irc", "shadow", "--candidate", "plan-b", "--requests", str(requests),
                                      "--lake", str(lake)])
    assert result.exit_code == 0, result.output
    assert "hit_rate" in result.output and "plan-b" in result.output
    report = json.loads(result.output.strip().splitlines()[-1])
    assert report["candidate"]["preallocated"] == 19 and report["production"]["plan_id"] == "plan-a"
    assert not (lake / "raw" / "irc_outcomes").exists()  # a shadow run logs nothing to production's feedback

    config_only = CliRunner().invoke(app, ["irc", "shadow", "--requests", str(requests), "--lake", str(lake), "--json",
                                           "--candidate-ceilings", "normal=1.0"])
    assert config_only.exit_code == 0, config_only.output
    assert json.loads(config_only.output)["candidate"]["preallocated"] == 8

    missing = CliRunner().invoke(app, ["irc", "shadow", "--candidate", "plan-zzz", "--requests", str(requests),
                                       "--lake", str(lake)])
    assert missing.exit_code == 2 and "plan-zzz" in missing.output


# -- replicas --------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_replicas_share_the_preallocation(backend: str, lake: Path, tmp_path: Path) -> None:
    """Three IRC processes on one request stream each: together they grant the plan once, not three times."""
    requests = write_requests(tmp_path / "r.csv", 15, step_s=1.0)
    url = f"sqlite://{tmp_path / 'ledger.db'}" if backend == "sqlite" else postgres_url()
    try:
        procs = [
            subprocess.Popen([sys.executable, "-m", "pipeline.cli", "irc", "replay", "--requests", str(requests),
                              "--ledger", url, "--lake", str(lake), "--log-outcomes"],
                             cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for _ in range(3)
        ]
        summaries = []
        for proc in procs:
            out, err = proc.communicate(timeout=120)
            assert proc.returncode == 0, err
            summaries.append(json.loads(out.strip().splitlines()[-1]))
        assert sum(s.get("path_preallocated", 0) for s in summaries) == 7  # 95 % of 8 vcpu, across all replicas
        assert all(s["requests"] == 16 for s in summaries)
        logged = ds.dataset(lake / "raw" / "irc_outcomes", format="parquet", partitioning="hive").to_table()
        assert logged.num_rows == 48  # every replica's every decision, in append-only files
    finally:
        if backend == "postgres":
            drop_postgres(url)


# -- HTTP service ----------------------------------------------------------------------------------


def test_serve_answers_requests_and_metrics(lake: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipeline.cli", "irc", "serve", "--port", "0", "--lake", str(lake)],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        banner = json.loads(proc.stdout.readline())  # type: ignore[union-attr]
        base = banner["listening"]
        assert banner["plan_id"] == "plan-a"

        def post(path: str, payload: dict) -> dict:
            request = urllib.request.Request(base + path, data=json.dumps(payload).encode(),
                                             headers={"Content-Type": "application/json"}, method="POST")
            with urllib.request.urlopen(request, timeout=30) as response:
                return json.loads(response.read())

        at = (T0 + timedelta(minutes=5)).isoformat()
        decision = post("/v1/requests", {"requested_at": at, "source_region": US, "destination_region": EU,
                                         "vcpu": 2, "memory_gib": 4, "duration_s": 600})
        assert (decision["status"], decision["path"]) == ("success", "preallocated")
        invalid = post("/v1/requests", {"requested_at": at, "source_region": US, "destination_region": EU, "vcpu": -1})
        assert invalid["status"] == "failure" and "negative" in invalid["message"]
        assert post("/v1/release", {"allocation_id": decision["allocation_id"]})["released"] is True
        with urllib.request.urlopen(base + "/metrics", timeout=30) as response:
            metrics = response.read().decode()
        assert 'peerscale_irc_requests_total{path="preallocated",status="success"} 1' in metrics
        assert "peerscale_irc_releases_total 1" in metrics
        with urllib.request.urlopen(base + "/healthz", timeout=30) as response:
            assert json.loads(response.read())["plan_id"] == "plan-a"
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=60)
    assert proc.returncode == 0
    logged = ds.dataset(lake / "raw" / "irc_outcomes", format="parquet", partitioning="hive").to_table()
    assert logged.num_rows == 2  # flushed on shutdown
