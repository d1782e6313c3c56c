"""IRC over HTTP: decisions per second and p50/p99 latency of `peerscale irc serve`, loaded by wrk on loopback.

    .venv/bin/python bench/irc_http.py [--quick] [--duration 10] [--workers 1] [--connections 16]
                                       [--postgres postgresql://postgres@127.0.0.1:5432/test]

For the SQLite (WAL file) and PostgreSQL ledgers it starts the real service (uvicorn workers, bearer
token, outcome log on, a 6-region x 6-window plan with ample capacity) and points wrk - a C load
generator from Debian, in its own process - at POST /v1/requests for a fixed time, rotating through
2,000 distinct request bodies. Latency is wrk's, per request, from the client side of the socket.
Every answer must be a 200 decision (wrk's non-2xx count is reported and must be 0).

Baseline, measured in the same run: the library itself on the same ledger, one thread, in process
(`Coordinator.handle_peering_request`, as `bench/irc.py` times it), so the table shows what HTTP,
JSON and the worker processes cost on top. The last line is one JSON object. Floors (2 cores):
>= 3,000 decisions/s over HTTP with the SQLite ledger at p99 <= 25 ms. The machine's load average
is printed: wrk, the workers and whatever else runs share the same cores.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from irc import REGIONS, RESOURCES, make_requests, run, write_plan  # noqa: E402  (bench/irc.py)

from pipeline.irc import Coordinator, open_ledger  # noqa: E402

TOKEN = "bench-" + uuid.uuid4().hex
BODIES = 2000

WRK_SCRIPT = """
local bodies = {}
for line in io.lines(os.getenv("IRC_BODIES")) do bodies[#bodies + 1] = line end
local headers = {["Content-Type"] = "application/json", ["Authorization"] = "Bearer " .. os.getenv("IRC_TOKEN")}
local counter = 0
request = function()
  counter = counter + 1
  return wrk.format("POST", "/v1/requests", headers, bodies[(counter % #bodies) + 1])
end
done = function(summary, latency, requests)
  io.write(string.format('RESULT {"requests": %d, "duration_us": %d, "non2xx": %d, "socket_errors": %d, '
    .. '"timeouts": %d, "p50_us": %d, "p90_us": %d, "p99_us": %d, "max_us": %d}\\n',
    summary.requests, summary.duration, summary.errors.status,
    summary.errors.connect + summary.errors.read + summary.errors.write, summary.errors.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max))
end
"""


def write_bodies(path: Path, n: int) -> None:
    """n distinct requests (the bench stream of bench/irc.py) as one JSON body a line."""
    lines = []
    for r in make_requests(n, seed=7):
        row = {"request_id": r.request_id, "requested_at": r.requested_at.isoformat(), "source_region": r.source_region,
               "destination_region": r.destination_region, "duration_s": r.duration_s, "priority": r.priority,
               **r.resource_requirements}
        lines.append(json.dumps(row))
    path.write_text("\n".join(lines) + "\n")


def library_baseline(lake: Path, url: str, n: int) -> dict[str, float]:
    """The same ledger, in process, one thread: what the decision itself costs."""
    ledger = open_ledger(url)
    irc = Coordinator(lake, ledger, reload_interval_s=None)
    try:
        run(irc, make_requests(min(1000, n), seed=99), 1)
        return run(irc, make_requests(n, seed=3), 1)
    finally:
        irc.close()
        ledger.close()


def serve(lake: Path, url: str, workers: int, tmp: Path) -> tuple[subprocess.Popen, str]:
    token_file = tmp / "token"
    token_file.write_text(TOKEN + "\n")
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipeline.cli", "irc", "serve", "--port", "0", "--lake", str(lake), "--ledger", url,
         "--workers", str(workers), "--token-file", str(token_file), "--reload-interval", "60"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )
    banner = json.loads(proc.stdout.readline() or "{}")  # type: ignore[union-attr]
    if not banner:
        raise RuntimeError(f"irc serve did not start: {proc.communicate(timeout=60)[1][-2000:]}")
    base = banner["listening"]
    for _ in range(200):  # every worker up: readiness answers (the plan is verified)
        try:
            with urllib.request.urlopen(base + "/readyz", timeout=5) as response:
                if response.status == 200:
                    break
        except OSError:
            time.sleep(0.1)
    return proc, base


def load(base: str, bodies: Path, tmp: Path, seconds: float, connections: int) -> dict[str, float]:
    script = tmp / "irc.lua"
    script.write_text(WRK_SCRIPT)
    env = {**os.environ, "IRC_BODIES": str(bodies), "IRC_TOKEN": TOKEN}
    out = subprocess.run(["wrk", "-t1", f"-c{connections}", f"-d{seconds:g}s", "--timeout", "10s", "-s", str(script), base],
                         capture_output=True, text=True, env=env, timeout=seconds + 120, check=True).stdout
    result = json.loads(next(line for line in out.splitlines() if line.startswith("RESULT ")).removeprefix("RESULT "))
    result["decisions_per_s"] = result["requests"] / (result["duration_us"] / 1e6)
    return result


def worker_cpu_s(base: str) -> float:
    """CPU seconds all workers used so far (the service's own counter, summed over workers, dead ones included)."""
    request = urllib.request.Request(base + "/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
    with urllib.request.urlopen(request, timeout=30) as response:
        for line in response.read().decode().splitlines():
            if line.startswith("peerscale_irc_process_cpu_seconds_total "):
                return float(line.split()[1])
    return float("nan")


def children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def bench_ledger(name: str, url: str, lake: Path, bodies: Path, tmp: Path, args: argparse.Namespace) -> dict[str, float]:
    baseline = library_baseline(lake, url, 2000 if args.quick else 10_000)
    proc, base = serve(lake, url, args.workers, tmp)
    try:
        load(base, bodies, tmp, 1.0, args.connections)  # warm-up: connections, prepared statements, caches
        # CPU per decision does not depend on what else runs on the machine (wall-clock rates do).
        workers_before, wrk_before = worker_cpu_s(base), children_cpu_s()
        http = load(base, bodies, tmp, args.duration, args.connections)
        workers_cpu, wrk_cpu = worker_cpu_s(base) - workers_before, children_cpu_s() - wrk_before
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=120)
    print(f"{name:>9}  library, 1 thread in process: {baseline['decisions_per_s']:>8,.0f} decisions/s  "
          f"p50 {baseline['p50_us']:>8.1f} µs  p99 {baseline['p99_us']:>8.1f} µs", flush=True)
    print(f"{'':>9}  HTTP, {args.workers} workers, {args.connections} connections: {http['decisions_per_s']:>8,.0f} decisions/s  "
          f"p50 {http['p50_us'] / 1000:>6.2f} ms  p90 {http['p90_us'] / 1000:>6.2f} ms  p99 {http['p99_us'] / 1000:>6.2f} ms  "
          f"(non-2xx {http['non2xx']}, socket errors {http['socket_errors']}; "
          f"{http['decisions_per_s'] / baseline['decisions_per_s']:.2f}x the library)", flush=True)
    server_us = workers_cpu / http["requests"] * 1e6
    print(f"{'':>9}  CPU per decision: service {server_us:,.0f} µs, wrk {wrk_cpu / http['requests'] * 1e6:,.0f} µs "
          f"(library {1e6 / baseline['decisions_per_cpu_s']:,.0f} µs)", flush=True)
    return {
        f"{name}_http_decisions_per_s": round(http["decisions_per_s"], 1), f"{name}_http_p50_ms": http["p50_us"] / 1000,
        f"{name}_http_p99_ms": http["p99_us"] / 1000, f"{name}_http_non2xx": http["non2xx"],
        f"{name}_http_socket_errors": http["socket_errors"],
        f"{name}_library_decisions_per_s": round(baseline["decisions_per_s"], 1), f"{name}_library_p99_us": baseline["p99_us"],
        f"{name}_http_vs_library": round(http["decisions_per_s"] / baseline["decisions_per_s"], 3),
        f"{name}_http_service_cpu_us_per_decision": round(server_us, 1),
        f"{name}_http_wrk_cpu_us_per_decision": round(wrk_cpu / http["requests"] * 1e6, 1),
        f"{name}_library_cpu_us_per_decision": round(1e6 / baseline["decisions_per_cpu_s"], 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--postgres", default="postgresql://postgres@127.0.0.1:5432/test")
    parser.add_argument("--quick", action="store_true", help="3 s of load per ledger (smoke run)")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of load per ledger")
    # One worker: wrk needs most of the second core, and two SQLite workers wait for each other's write
    # transactions (bench/RESULTS.md, "IRC performance floors": 1 worker 3,391-3,630 /s at p99 9.5-12.4 ms,
    # 2 workers 1,537-2,189 /s on the same machine minutes apart).
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--connections", type=int, default=16)
    args = parser.parse_args()
    if args.quick:
        args.duration = 3.0
    if shutil.which("wrk") is None:
        print("wrk is not installed (apt-get install wrk): nothing measured")
        print(json.dumps({"error": "wrk not installed"}))
        return 1
    figures: dict[str, float | None] = {"workers": args.workers, "connections": args.connections, "duration_s": args.duration,
                                        "cpus": os.cpu_count() or 0, "load_avg_1m_before": round(os.getloadavg()[0], 2)}
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        lake = tmp / "lake"
        write_plan(lake, "plan-bench", 6 * len(REGIONS) * len(RESOURCES), REGIONS)
        bodies = tmp / "bodies.jsonl"
        write_bodies(bodies, BODIES)
        print(f"IRC over HTTP ({args.duration:g} s of wrk per ledger), plan of {len(REGIONS)} regions x 6 windows:", flush=True)
        figures.update(bench_ledger("sqlite", f"sqlite://{tmp}/ledger.db", lake, bodies, tmp, args))
        url = f"{args.postgres}?schema=irc_http_bench_{uuid.uuid4().hex[:8]}"
        try:
            figures.update(bench_ledger("postgres", url, lake, bodies, tmp, args))
        except Exception as exc:
            print(f"postgres: not measured ({type(exc).__name__}: {exc})", flush=True)
        finally:
            try:
                from pipeline.irc.ledger.postgres import PostgresLedger

                PostgresLedger.from_url(url).drop()
            except Exception:
                pass
    figures["load_avg_1m_after"] = round(os.getloadavg()[0], 2)
    print(f"  machine: {os.cpu_count()} CPUs, 1-min load average {figures['load_avg_1m_before']} before, "
          f"{figures['load_avg_1m_after']} after (wrk, the workers and other jobs share the cores)")
    floors = {
        "sqlite_http_decisions_per_s>=3000": (figures.get("sqlite_http_decisions_per_s") or 0) >= 3000,
        "sqlite_http_p99_ms<=25": (figures.get("sqlite_http_p99_ms") or float("inf")) <= 25,
        "no_errors": not any(figures.get(f"{n}_http_{k}") for n in ("sqlite", "postgres") for k in ("non2xx", "socket_errors")),
    }
    print("floors: " + ", ".join(f"{k} {'ok' if v else 'MISSED'}" for k, v in floors.items()), flush=True)
    print(json.dumps(figures, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
