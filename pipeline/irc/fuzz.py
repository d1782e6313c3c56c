"""Hostile replicas: IRC processes x threads on one shared ledger, fed random and hostile requests.

    python -m pipeline.irc.fuzz --lake LAKE --ledger URL --threads 4 --ops 150 --seed 1 [--clock-offset S]

Each process is one IRC replica: a `Coordinator` on the shared ledger - on the default (wall)
clock, or with `--clock-offset` on a clock that many seconds wrong, to play a replica whose clock
drifted - and its HTTP front (the service's uvicorn app, in a thread) on a free loopback port. Its threads send requests through the
Python API or as JSON over HTTP: valid ones (random priorities, sizes and durations from a tenth
of a second to minutes, so sessions end while the run goes on) and hostile ones (`HOSTILE`: dated
2099 or 1970, naive, NaN-like strings, negative, huge or non-finite quantities and durations,
bodies that are not JSON). They release some of their grants - some twice, and ids that never
existed - and now and then reload the plan, as a replica restarting would.

The process prints one JSON object: every pre-allocated grant with the wall-clock instants
between which it was certainly held (from the return of its grant to the call of its release, or
its end), the decision of every hostile kind, and any error. The tests replay those instants
against the plan: at no instant may the sessions certainly held exceed a window's capacity.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

from pipeline.irc.coordinator import Coordinator
from pipeline.irc.ledger import open_ledger
from pipeline.irc.messages import PeeringRequest

REGIONS = ("eu-west-1", "us-east-1")
SOURCE = "ap-southeast-2"  # every request comes from here; the destinations hold the resources
PRIORITIES = ("low", "normal", "high", "critical")
HTTP_SHARE = 0.3  # of the requests sent over HTTP
HOSTILE_SHARE = 0.15
RELOAD_SHARE = 0.01
# Hostile kinds: name -> what to change in a valid JSON row (None: a body that is not JSON at all).
HOSTILE: dict[str, dict[str, Any] | None] = {
    "dated_2099": {"requested_at": "2099-01-01T00:00:00Z"},
    "dated_1970": {"requested_at": "1970-01-01T00:00:00Z"},
    "naive_time": {"requested_at": "2026-01-01T00:00:00"},
    "nan_time": {"requested_at": "NaN"},
    "nan_quantity": {"vcpu": "NaN"},
    "inf_quantity": {"vcpu": "inf"},
    "overflow_quantity": {"vcpu": "1e999"},
    "negative_quantity": {"vcpu": -4},
    "huge_quantity": {"vcpu": 1e300},
    "nan_duration": {"duration_s": "nan"},
    "zero_duration": {"duration_s": 0},
    "huge_duration": {"duration_s": 1e12},
    "bad_priority": {"priority": "urgent!"},
    "not_json": None,
}
# Kinds a coordinator must refuse as invalid (the others may be served on demand, never pre-allocated).
INVALID_KINDS = frozenset(HOSTILE) - {"dated_1970", "huge_quantity", "not_json"}


class _Replica:
    """One process's coordinator, its HTTP address, its clock, and what its threads recorded."""

    def __init__(self, coordinator: Coordinator, base_url: str, clock: Callable[[], float]) -> None:
        self.coordinator = coordinator
        self.base_url = base_url
        self.clock = clock
        self.lock = threading.Lock()
        self.granted: list[list[Any]] = []  # [id, region, start_s, end_s, requirements, held_from, held_to]
        self.hostile: Counter[str] = Counter()  # "kind:path" -> count
        self.errors: list[str] = []
        self.released_twice = 0

    def decide(self, row: dict[str, Any], over_http: bool) -> dict[str, Any]:
        """The decision for one JSON row, through the API or over HTTP (the same JSON either way)."""
        if not over_http:
            return self.coordinator.handle_peering_request(PeeringRequest.from_row(row)).to_dict()
        return self.post("/v1/requests", json.dumps(row).encode())

    def post(self, path: str, body: bytes) -> dict[str, Any]:
        request = urllib.request.Request(self.base_url + path, data=body, method="POST",
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                return dict(json.loads(response.read()))
        except urllib.error.HTTPError as exc:  # 4xx: a JSON error body
            return {"http_status": exc.code, **json.loads(exc.read())}


def _row(rng: random.Random, replica: _Replica, index: str) -> dict[str, Any]:
    """A valid request dated now on the replica's clock (a little in the past, as a queue would)."""
    at = replica.clock() - rng.uniform(0.0, 0.5)
    long_lived = rng.random() < 0.3
    return {
        "request_id": index,
        "requested_at": datetime.fromtimestamp(at, UTC).isoformat(),
        "source_region": SOURCE,
        "destination_region": rng.choice(REGIONS),
        "vcpu": round(rng.uniform(0.5, 4.0), 3),
        "memory_gib": round(rng.uniform(1.0, 12.0), 3),
        "duration_s": round(rng.uniform(60.0, 600.0) if long_lived else rng.uniform(0.1, 1.5), 3),
        "priority": rng.choice(PRIORITIES),
    }


def _hostile(rng: random.Random, replica: _Replica, row: dict[str, Any], over_http: bool) -> None:
    """Send one hostile request and count its decision by kind."""
    kind = rng.choice(sorted(HOSTILE))
    change = HOSTILE[kind]
    if change is None:
        decision = replica.post("/v1/requests", b'{"vcpu": 1, "requested_at": ')
        outcome = f"http_{decision.get('http_status')}"
    else:
        decision = replica.decide({**row, **change}, over_http)
        invalid = decision["status"] == "failure" and decision["message"].startswith("Invalid request")
        outcome = "invalid" if invalid else str(decision["path"])
    with replica.lock:
        replica.hostile[f"{kind}:{outcome}"] += 1


def _release(rng: random.Random, replica: _Replica, mine: list[list[Any]]) -> None:
    """Release a random grant of this thread (now and then twice, or an id that never existed)."""
    grant = mine.pop(rng.randrange(len(mine)))
    grant[6] = time.time()  # from here on the session may be gone
    replica.coordinator.release(grant[0])
    if rng.random() < 0.2:
        again = replica.post("/v1/release", json.dumps({"allocation_id": grant[0]}).encode())
        unknown = replica.coordinator.release(f"pre-never-{rng.random()}")
        if again.get("released") or unknown:
            with replica.lock:
                replica.released_twice += 1


def _worker(replica: _Replica, seed: int, index: int, ops: int, barrier: threading.Barrier) -> None:
    rng = random.Random(seed * 1000 + index)
    mine: list[list[Any]] = []
    barrier.wait()
    for n in range(ops):
        try:
            row = _row(rng, replica, f"f{seed}-{index}-{n}")
            over_http = rng.random() < HTTP_SHARE
            if rng.random() < HOSTILE_SHARE:
                _hostile(rng, replica, row, over_http)
            else:
                decision = replica.decide(row, over_http)
                if decision["path"] == "preallocated":
                    start = datetime.fromisoformat(row["requested_at"]).timestamp()
                    requirements = {rt: row[rt] for rt in ("vcpu", "memory_gib")}
                    grant = [decision["allocation_id"], row["destination_region"], start, start + row["duration_s"],
                             requirements, time.time(), None]
                    mine.append(grant)
                    with replica.lock:
                        replica.granted.append(grant)
            if mine and rng.random() < 0.25:
                _release(rng, replica, mine)
            if rng.random() < RELOAD_SHARE:
                replica.coordinator.reload(force=True)  # a replica restarting loads the plan again
            time.sleep(rng.uniform(0.0, 0.004))
        except Exception as exc:
            with replica.lock:
                replica.errors.append(f"{type(exc).__name__}: {exc}")


def run(lake: str, ledger_url: str, *, threads: int, ops: int, seed: int, clock_offset_s: float = 0.0) -> dict[str, Any]:
    """One replica's run; returns its grants, hostile decisions and errors (see the module doc)."""
    ledger = open_ledger(ledger_url)
    clock: Callable[[], float] = time.time
    extra: dict[str, Any] = {}
    if clock_offset_s:
        def clock() -> float:
            return time.time() + clock_offset_s
        extra["clock"] = clock  # otherwise the default clock is what is tested
    from pipeline.irc.http_app import ServiceState
    from pipeline.irc.prometheus import PrometheusMetrics
    from pipeline.irc.service import ThreadedService

    metrics = PrometheusMetrics()
    coordinator = Coordinator(lake, ledger, reload_interval_s=None, outcomes=False, sweep_interval_s=0.2, metrics=metrics,
                              **extra)
    # Decisions on a thread pool, as `serve` runs them on a shared ledger: HTTP requests decide concurrently
    # with each other and with the API calls.
    executor = ThreadPoolExecutor(2, thread_name_prefix="irc-decide")
    with ThreadedService(ServiceState(coordinator, metrics, executor=executor)) as service:
        replica = _Replica(coordinator, service.url, clock)
        barrier = threading.Barrier(threads)
        pool = [threading.Thread(target=_worker, args=(replica, seed, k, ops, barrier)) for k in range(threads)]
        for thread in pool:
            thread.start()
        for thread in pool:
            thread.join()
    executor.shutdown(wait=True)
    coordinator.close()
    ledger.close()
    return {"granted": replica.granted, "hostile": dict(replica.hostile), "errors": replica.errors,
            "released_twice": replica.released_twice, "metrics": coordinator.metrics()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lake", required=True)
    parser.add_argument("--ledger", required=True)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--ops", type=int, default=150)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--clock-offset", type=float, default=0.0, help="seconds this replica's clock is wrong by")
    args = parser.parse_args(argv)
    result = run(args.lake, args.ledger, threads=args.threads, ops=args.ops, seed=args.seed,
                 clock_offset_s=args.clock_offset)
    json.dump(result, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
