"""Shadow peering, replicas sharing a ledger, and the HTTP service - through real processes."""

from __future__ import annotations

import csv
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
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


# -- HTTP service (`peerscale irc serve`: uvicorn workers) ------------------------------------------

TOKEN = "test-token-0123456789abcdef"
AT = (T0 + timedelta(minutes=5)).isoformat()
GOOD = {"requested_at": AT, "source_region": US, "destination_region": EU, "vcpu": 2, "memory_gib": 4, "duration_s": 600}


class Served:
    """`peerscale irc serve ...` in a process: its banner, HTTP calls, SIGTERM at the end."""

    def __init__(self, *args: str, env: dict[str, str] | None = None, token: str | None = None,
                 context: ssl.SSLContext | None = None) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "pipeline.cli", "irc", "serve", "--port", "0", *args],
                                     cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     env={**os.environ, **(env or {})}, start_new_session=True)
        line = self.proc.stdout.readline()  # type: ignore[union-attr]
        if not line:
            raise AssertionError(self.proc.communicate(timeout=60)[1])
        self.banner = json.loads(line)
        self.base = self.banner["listening"]
        self.token, self.context = token, context

    def call(self, method: str, path: str, payload: dict | None = None, *, token: str | None = "default") -> tuple[int, dict | str]:
        headers = {"Content-Type": "application/json"} if payload is not None else {}
        token = self.token if token == "default" else token
        if token:
            headers["Authorization"] = f"Bearer {token}"
        data = json.dumps(payload).encode() if payload is not None else None
        request = urllib.request.Request(self.base + path, data=data, headers=headers, method=method)
        try:
            with urllib.request.urlopen(request, timeout=30, context=self.context) as response:
                status, text, kind = response.status, response.read().decode(), response.headers["Content-Type"]
        except urllib.error.HTTPError as exc:
            status, text, kind = exc.code, exc.read().decode(), exc.headers["Content-Type"]
        return status, json.loads(text) if kind == "application/json" else text

    def stop(self) -> str:
        self.proc.send_signal(signal.SIGTERM)
        _, err = self.proc.communicate(timeout=90)
        assert self.proc.returncode == 0, err[-3000:]
        return err

    def __enter__(self) -> Served:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc.poll() is None:  # a failed test: the supervisor and its workers (their own session) go
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.communicate(timeout=60)


def metric(text: str, name: str) -> float:
    """The value of one sample line of the exposition (0 when absent)."""
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    return 0.0


def test_serve_answers_requests_and_metrics(lake: Path) -> None:
    with Served("--lake", str(lake)) as served:
        assert served.banner["plan_id"] == "plan-a" and served.banner["auth"] == "none"  # loopback: no token needed
        status, decision = served.call("POST", "/v1/requests", GOOD)
        assert status == 200 and (decision["status"], decision["path"]) == ("success", "preallocated")  # type: ignore[index]
        _, invalid = served.call("POST", "/v1/requests", {**GOOD, "vcpu": -1})
        assert invalid["status"] == "failure" and "negative" in invalid["message"]  # type: ignore[index]
        _, released = served.call("POST", "/v1/release", {"allocation_id": decision["allocation_id"]})  # type: ignore[index]
        assert released["released"] is True  # type: ignore[index]
        _, text = served.call("GET", "/metrics")
        assert metric(text, 'peerscale_irc_requests_total{path="preallocated",status="success"}') == 1  # type: ignore[arg-type]
        assert metric(text, "peerscale_irc_releases_total") == 1  # type: ignore[arg-type]
        assert metric(text, 'peerscale_irc_plan_info{plan_id="plan-a"}') == 1  # type: ignore[arg-type]
        assert "peerscale_irc_worker_resident_memory_bytes{pid=" in text  # type: ignore[operator]
        assert served.call("GET", "/healthz")[1]["plan_id"] == "plan-a"  # type: ignore[index]
        assert served.call("GET", "/readyz") == (200, {"ready": True, "plan_id": "plan-a", "mode": "plan", "reason": None})
        status, api = served.call("GET", "/openapi.json")
        assert status == 200 and {"/v1/requests", "/v1/release", "/readyz"} <= set(api["paths"])  # type: ignore[index]
        served.stop()
    logged = ds.dataset(lake / "raw" / "irc_outcomes", format="parquet", partitioning="hive").to_table()
    assert logged.num_rows == 2  # flushed on shutdown
    assert sorted(logged.column("serving_region").to_pylist(), key=str) == [None, EU]  # the invalid one is served nowhere


def test_serve_checks_bearer_tokens_and_marks_regions(lake: Path, tmp_path: Path) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text(f"# IRC clients\n{TOKEN}\n\nanother-token-abcdefghijkl  # the dashboard\n")
    with Served("--lake", str(lake), "--token-file", str(tokens), "--no-log-outcomes", token=TOKEN) as served:
        assert served.banner["auth"] == "bearer"
        for wrong in (None, "not-the-token-at-all-000", TOKEN[:-1]):
            status, answer = served.call("POST", "/v1/requests", GOOD, token=wrong)
            assert status == 401 and "bearer token" in answer["error"]  # type: ignore[index]
        assert served.call("GET", "/metrics", token=None)[0] == 401
        assert served.call("GET", "/healthz", token=None)[0] == 200 and served.call("GET", "/readyz", token=None)[0] == 200
        assert served.call("POST", "/v1/requests", GOOD, token="another-token-abcdefghijkl")[1]["path"] == "preallocated"  # type: ignore[index]

        assert served.call("PUT", f"/v1/admin/unhealthy-regions/{EU}", {"note": "AZ outage"}, token=None)[0] == 401
        status, marked = served.call("PUT", f"/v1/admin/unhealthy-regions/{EU}", {"note": "AZ outage"})
        assert status == 200 and marked["unhealthy"] == {EU: "AZ outage"}  # type: ignore[index]
        assert "AZ outage" in (lake / "irc" / "unhealthy_regions").read_text()  # every replica reads this file
        _, decision = served.call("POST", "/v1/requests", GOOD)
        assert decision["serving_region"] != EU and decision["miss_reason"] == "region_unhealthy"  # type: ignore[index]
        assert served.call("PUT", "/v1/admin/unhealthy-regions/not%20a%20region")[0] == 400
        assert served.call("DELETE", f"/v1/admin/unhealthy-regions/{EU}")[1]["unhealthy"] == {}  # type: ignore[index]
        assert served.call("GET", "/v1/admin/unhealthy-regions")[1]["unhealthy"] == {}  # type: ignore[index]
        served.stop()


@pytest.mark.parametrize(("args", "env", "message"), [
    (["--host", "0.0.0.0"], {}, "no bearer tokens while listening on 0.0.0.0"),
    (["--workers", "2"], {}, "needs a shared ledger"),
    ([], {"PEERSCALE_IRC_TOKENS": "short"}, "at least 16 printable characters"),
    (["--tls-cert", "/nonexistent/cert.pem"], {}, "both --tls-cert and --tls-key"),
    (["--ledger", "mysql://x"], {}, "ledger 'mysql://x'"),
    (["--tls-cert", "README.md", "--tls-key", "README.md"], {}, "cannot use --tls-cert README.md"),  # files, not PEM
])
def test_serve_refuses_an_unsafe_or_broken_configuration(lake: Path, args: list[str], env: dict[str, str], message: str) -> None:
    result = subprocess.run([sys.executable, "-m", "pipeline.cli", "irc", "serve", "--port", "0", "--lake", str(lake), *args],
                            cwd=REPO, capture_output=True, text=True, timeout=120, env={**os.environ, **env})
    assert result.returncode == 2 and message in " ".join(result.stderr.split()), result.stderr
    assert "short" not in result.stderr.replace("shortest", "")  # a token is never echoed


def test_readiness_needs_a_plan_unless_on_demand_only(tmp_path: Path) -> None:
    empty = tmp_path / "empty-lake"
    with Served("--lake", str(empty), "--no-log-outcomes") as served:
        status, answer = served.call("GET", "/readyz")
        assert status == 503 and answer["ready"] is False and "LATEST" in answer["reason"]  # type: ignore[index]
        assert served.call("GET", "/healthz")[0] == 200  # alive all the same
        served.stop()
    with Served("--lake", str(empty), "--no-log-outcomes", "--on-demand-only") as served:
        assert served.call("GET", "/readyz")[1]["mode"] == "on-demand-only"  # type: ignore[index]
        assert served.call("GET", "/readyz")[0] == 200
        served.stop()


def worker_pids(text: str) -> set[str]:
    return {line.split('pid="')[1].split('"')[0] for line in text.splitlines()
            if line.startswith("peerscale_irc_worker_start_time_seconds")}


def test_workers_share_one_ledger_and_one_set_of_metrics(lake: Path, tmp_path: Path) -> None:
    """Two workers on a SQLite ledger: the plan is granted once; every scrape sums both workers; a worker
    killed is replaced, its counts stay and its per-process series go."""
    with Served("--lake", str(lake), "--workers", "2", "--ledger", f"sqlite://{tmp_path / 'ledger.db'}",
                "--no-log-outcomes") as served:
        paths = [served.call("POST", "/v1/requests", {**GOOD, "vcpu": 1})[1]["path"] for _ in range(12)]  # type: ignore[index]
        assert paths.count("preallocated") == 7  # 95 % of 8 vcpu, whichever worker answered
        texts = [served.call("GET", "/metrics")[1] for _ in range(4)]
        assert {metric(t, 'peerscale_irc_requests_total{path="preallocated",status="success"}') for t in texts} == {7}  # type: ignore[arg-type]
        pids = worker_pids(texts[-1])  # type: ignore[arg-type]
        for _ in range(300):  # each worker publishes its gauges once started (slowly on a loaded machine)
            if len(pids) == 2:
                break
            time.sleep(0.2)
            pids = worker_pids(served.call("GET", "/metrics")[1])  # type: ignore[arg-type]
        assert len(pids) == 2
        victim = int(sorted(pids)[0])
        os.kill(victim, signal.SIGKILL)
        for _ in range(300):  # the supervisor replaces it (slowly on a loaded machine)
            text = served.call("GET", "/metrics")[1]
            live = worker_pids(text)  # type: ignore[arg-type]
            if len(live) == 2 and str(victim) not in live:
                break
            time.sleep(0.2)
        assert len(live) == 2 and str(victim) not in live
        assert metric(text, 'peerscale_irc_requests_total{path="preallocated",status="success"}') == 7  # type: ignore[arg-type]
        served.stop()


def test_decisions_arriving_together_share_one_sqlite_transaction(lake: Path, tmp_path: Path) -> None:
    """Group commit in the service: requests that reach the decision in one turn of the event loop are decided in
    one ledger transaction, answered after its commit, and granted exactly what one-by-one decisions would."""
    import asyncio
    import contextlib
    from collections.abc import Iterator

    from pipeline.irc import open_ledger
    from pipeline.irc.http_app import DecisionBatcher

    store = open_ledger(f"sqlite://{tmp_path / 'ledger.db'}")
    coordinator = Coordinator(lake, store, reload_interval_s=None, outcomes=False)
    real, commits = store.batch, []  # type: ignore[attr-defined]

    @contextlib.contextmanager
    def counted() -> Iterator[None]:
        with real():
            yield
        commits.append(store.live_allocations())  # what other processes can see once the batch committed

    store.batch = counted  # type: ignore[attr-defined]
    batcher = DecisionBatcher(coordinator)

    async def burst() -> list[dict[str, object]]:
        rows = [{**GOOD, "request_id": f"r{i}", "vcpu": 1} for i in range(12)]
        return await asyncio.gather(*(batcher.decide(PeeringRequest.from_row(row)) for row in rows))

    answers = asyncio.run(burst())
    assert (batcher.batches, batcher.decisions, len(commits)) == (1, 12, 1)
    assert [a["path"] for a in answers].count("preallocated") == 7  # 95 % of 8 vcpu, as one by one
    assert commits == [7] and coordinator.metrics()["requests"] == 12
    coordinator.close()
    store.close()


def test_two_workers_under_concurrent_load_never_over_grant(lake: Path, tmp_path: Path) -> None:
    """Many clients at once on two workers sharing SQLite: each worker commits the requests that arrive together
    as one batch, and between them they grant exactly the plan's 95 % of 8 vcpu and the pool - never more."""
    import sqlite3
    from concurrent.futures import ThreadPoolExecutor

    ledger = tmp_path / "ledger.db"
    with Served("--lake", str(lake), "--workers", "2", "--ledger", f"sqlite://{ledger}", "--no-log-outcomes") as served:
        for _ in range(300):  # both workers up
            if served.call("GET", "/readyz")[0] == 200:
                break
            time.sleep(0.1)
        with ThreadPoolExecutor(16) as pool:
            answers = list(pool.map(lambda i: served.call("POST", "/v1/requests", {**GOOD, "vcpu": 0.5, "memory_gib": 1})[1],
                                    range(80)))
        paths = [a["path"] for a in answers]  # type: ignore[index]
        # 7.6 vcpu of pre-allocation (95 % of 8) and the 8 vcpu on-demand pool, in grants of 0.5: 15 and 16
        assert (paths.count("preallocated"), paths.count("on_demand"), paths.count("none")) == (15, 16, 49)
        served.stop()
    with sqlite3.connect(ledger) as conn:
        used, capacity = conn.execute("SELECT used, capacity FROM irc_capacity WHERE region = ? AND resource_type = 'vcpu' "
                                      "AND window_start = ?", (EU, int(T0.timestamp()))).fetchone()
    assert used == 7.5 and capacity == 8.0


def test_the_decision_route_answers_like_the_starlette_route(lake: Path, tmp_path: Path) -> None:
    """`POST /v1/requests` in front of Starlette (the hot route) gives the same answers, errors and HTTP metrics as
    the same route through Starlette, for good and bad requests alike."""
    import asyncio

    from pipeline.irc import open_ledger
    from pipeline.irc.http_app import ServiceState, build_app
    from pipeline.irc.prometheus import PrometheusMetrics

    token = "t" * 32
    good = json.dumps({**GOOD, "request_id": "r1"}).encode()
    cases = [  # (headers, body)
        ({"authorization": f"Bearer {token}", "content-type": "application/json"}, good),
        ({"content-type": "application/json"}, good),  # 401
        ({"authorization": f"Bearer {token}", "content-type": "text/plain"}, good),  # 415
        ({"authorization": f"Bearer {token}", "content-type": "application/json"}, b"[1, 2]"),  # 400
        ({"authorization": f"Bearer {token}", "content-type": "application/json"}, b"{" * 70_000),  # 413
        ({"authorization": f"Bearer {token}", "content-type": "application/json", "transfer-encoding": "chunked"}, good),
        ({"authorization": f"Bearer {token}", "content-type": "application/json"}, b'{"vcpu": NaN}'),  # 400
    ]

    def answers(fast: bool) -> tuple[list[tuple[int, dict[str, str], object]], str]:
        store = open_ledger(f"sqlite://{tmp_path / f'{fast}.db'}")
        metrics = PrometheusMetrics()
        coordinator = Coordinator(lake, store, reload_interval_s=None, outcomes=False, metrics=metrics)
        app = build_app(ServiceState(coordinator, metrics, tokens=frozenset([token.encode()]), fast_decision_route=fast))

        async def call(headers: dict[str, str], body: bytes) -> tuple[int, dict[str, str], object]:
            raw = [(k.encode(), v.encode()) for k, v in headers.items()]
            if "transfer-encoding" not in headers:
                raw.append((b"content-length", str(len(body)).encode()))
            scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
                     "path": "/v1/requests", "raw_path": b"/v1/requests", "query_string": b"", "root_path": "",
                     "server": ("127.0.0.1", 80), "client": ("127.0.0.1", 5), "headers": raw}
            sent: list[dict[str, object]] = []

            async def receive() -> dict[str, object]:
                return {"type": "http.request", "body": body, "more_body": False}

            async def send(message: dict[str, object]) -> None:
                sent.append(message)

            await app(scope, receive, send)  # type: ignore[arg-type]
            head = {k.decode(): v.decode() for k, v in sent[0]["headers"]}  # type: ignore[attr-defined]
            payload = json.loads(sent[1]["body"])  # type: ignore[arg-type]
            payload.pop("allocation_id", None)
            return sent[0]["status"], {k: head[k] for k in ("content-type", "connection", "www-authenticate") if k in head}, payload  # type: ignore[return-value]

        got = [asyncio.run(call(headers, body)) for headers, body in cases]
        from prometheus_client import generate_latest

        counted = "\n".join(line for line in generate_latest(metrics.registry).decode().splitlines()
                             if line.startswith("peerscale_irc_http_requests_total{"))
        coordinator.close()
        store.close()
        return got, counted

    fast, fast_counted = answers(True)
    slow, slow_counted = answers(False)
    assert [status for status, _, _ in fast] == [200, 401, 415, 400, 413, 411, 400]
    assert fast == slow and fast_counted == slow_counted and 'code="413"' in fast_counted


def test_serve_over_tls(lake: Path, tmp_path: Path) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True, timeout=60)
    context = ssl.create_default_context(cafile=str(cert))
    with Served("--lake", str(lake), "--tls-cert", str(cert), "--tls-key", str(key), "--no-log-outcomes",
                context=context) as served:
        assert served.base.startswith("https://127.0.0.1:")
        assert served.call("POST", "/v1/requests", GOOD)[1]["path"] == "preallocated"  # type: ignore[index]
        with pytest.raises(urllib.error.URLError):
            urllib.request.urlopen(served.base + "/healthz", timeout=10)  # the system CAs do not trust it
        served.stop()


def test_sigterm_drains_requests_in_flight(lake: Path) -> None:
    """A request whose body is still arriving when SIGTERM comes is answered, and its outcome is written."""
    served = Served("--lake", str(lake))
    with served:
        assert served.call("GET", "/readyz")[0] == 200
        host, port = served.base.removeprefix("http://").split(":")
        payload = json.dumps(GOOD).encode()
        head = (f"POST /v1/requests HTTP/1.1\r\nHost: irc\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(payload)}\r\n\r\n").encode()
        with socket.create_connection((host, int(port)), timeout=60) as conn:
            conn.sendall(head + payload)  # a first, whole request: the worker has accepted this connection
            first = b""
            while b'"status"' not in first or not first.rstrip().endswith(b"}"):
                first += conn.recv(65536)
            assert first.startswith(b"HTTP/1.1 200")
            conn.sendall(head + payload[:10])  # the second one stops mid-body
            time.sleep(1.0)
            served.proc.send_signal(signal.SIGTERM)
            time.sleep(1.0)
            conn.sendall(payload[10:])
            answer = b""
            while chunk := conn.recv(65536):
                answer += chunk
        assert answer.startswith(b"HTTP/1.1 200") and b'"path": "preallocated"' in answer
        served.proc.communicate(timeout=90)
        assert served.proc.returncode == 0
    logged = ds.dataset(lake / "raw" / "irc_outcomes", format="parquet", partitioning="hive").to_table()
    assert logged.column("status").to_pylist() == ["success", "success"]


def test_compose_runs_the_irc_on_the_shared_postgres_ledger(lake: Path) -> None:
    """docker/compose.yaml's `irc` service: its command and environment (defaults filled in, the database host
    pointed at this machine's PostgreSQL) start a real service whose health check passes and that keeps its
    pre-allocations in PostgreSQL, next to Airflow's database."""
    import yaml

    from tests.test_distributed import COMPOSE, _default

    compose = yaml.safe_load(COMPOSE.read_text())
    irc = compose["services"]["irc"]
    assert irc["depends_on"] == {"postgres": {"condition": "service_healthy"}}
    assert "peerscale-data:/data" in irc["volumes"] and irc["volumes"] == compose["x-airflow-common"]["volumes"][:1]
    env = {k: _default(str(v)) for k, v in irc["environment"].items()}
    assert env["PEERSCALE_IRC_LEDGER"].startswith("postgresql://airflow:<POSTGRES_PASSWORD>@postgres:5432/airflow?schema=")
    probe = irc["healthcheck"]["test"]
    assert probe[:2] == ["CMD", "curl"] and probe[-1] == "http://localhost:8787/readyz"
    assert int(irc["stop_grace_period"].rstrip("s")) > 30  # the service's default graceful timeout
    command = list(irc["command"])
    assert command[:2] == ["irc", "serve"] and irc["entrypoint"][-1] == "peerscale"
    url = postgres_url()
    env.update(PEERSCALE_IRC_LEDGER=url, PEERSCALE_LAKE=str(lake), PEERSCALE_IRC_TOKENS=TOKEN, PEERSCALE_S3_ENDPOINT="",
               PEERSCALE_IRC_METRICS_DIR=str(lake.parent / "metrics"))
    args = command[2:]
    args[args.index("--host") + 1], args[args.index("--port") + 1] = "127.0.0.1", "0"
    proc = subprocess.Popen([sys.executable, "-m", "pipeline.cli", *command[:2], *args], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, **env},
                            start_new_session=True)
    try:
        banner = json.loads(proc.stdout.readline() or "{}")  # type: ignore[union-attr]
        assert banner.get("workers") == 2 and banner["auth"] == "bearer", banner if banner else proc.stderr.read()  # type: ignore[union-attr]
        health = subprocess.run(["curl", "--fail", "--silent", banner["listening"] + "/readyz"], capture_output=True, text=True,
                                timeout=60)
        assert health.returncode == 0 and json.loads(health.stdout)["ready"] is True
        request = urllib.request.Request(banner["listening"] + "/v1/requests", data=json.dumps(GOOD).encode(), method="POST",
                                         headers={"Content-Type": "application/json", "Authorization": f"Bearer {TOKEN}"})
        with urllib.request.urlopen(request, timeout=30) as response:
            allocation = json.loads(response.read())["allocation_id"]
        from pipeline.irc.ledger.postgres import PostgresLedger

        ledger = PostgresLedger.from_url(url)
        try:
            assert ledger.usage(int(T0.timestamp()), EU)["vcpu"] == 2.0 and allocation.startswith("pre-")
        finally:
            ledger.close()
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=90)
        assert proc.returncode == 0
    finally:
        if proc.poll() is None:  # the supervisor and its workers
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate(timeout=60)
        drop_postgres(url)


def test_the_library_does_not_load_the_service_stack() -> None:
    """`import pipeline.irc` stays light: uvicorn, Starlette and prometheus_client load only with `serve`."""
    code = ("import sys, pipeline.irc, pipeline.irc.coordinator; "
            "print(sorted(m for m in ('uvicorn', 'starlette', 'fastapi', 'prometheus_client', 'httptools', 'uvloop') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "[]"
    loaded = subprocess.run([sys.executable, "-c", "import sys, pipeline.irc.http_app; print('starlette' in sys.modules)"],
                            cwd=REPO, capture_output=True, text=True, timeout=60, check=True)
    assert loaded.stdout.strip() == "True"  # the check above can fail
