"""Shadow peering: run a candidate plan or configuration beside production on the same requests.

The candidate is an ordinary `Coordinator` with its own ledger, its own on-demand pool copy and
no outcome logging (`candidate_coordinator`), so nothing it does can touch production state.

* `ShadowMirror` wraps a live production coordinator: `handle_peering_request` answers from
  production and hands the request (and later its release) to a background thread that feeds
  the candidate - a bounded queue, never blocking, drops counted. `report()` compares both.
* `replay_shadow` replays a request stream (e.g. a day of `peering_requests`) through both,
  in request-time order; expiry returns capacity as the replayed clock advances.

The report, side by side: requests, pre-allocation hit rate (pre-allocated / valid requests),
on-demand share, failures, miss reasons, and cost over the replayed period = pre-allocation
cost (plan lines' hourly_cost, pro rata over the requests' time span; paid used or not) +
on-demand cost (each on-demand session's quantity x hours x the CostModel's c_under, the
price of demand that misses the pre-allocation).
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import threading
from collections import Counter, deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from pipeline.common.numeric import SECONDS_PER_HOUR
from pipeline.irc.coordinator import Coordinator
from pipeline.irc.ledger import Ledger
from pipeline.irc.messages import PeeringRequest, PeeringResponse

log = logging.getLogger(__name__)


def _unit_costs() -> dict[str, float]:
    from pipeline.common.config import CostModel  # stdlib-only module

    return dict(CostModel().c_under)


@dataclass
class SideStats:
    """Running totals of one side (production or candidate)."""

    name: str
    plan_ids: set[str] = field(default_factory=set)
    requests: int = 0
    invalid: int = 0
    preallocated: int = 0
    on_demand: int = 0
    failures: int = 0
    miss_reasons: Counter = field(default_factory=Counter)
    on_demand_cost_usd: float = 0.0
    first_at_s: float = math.inf
    last_at_s: float = -math.inf

    def record(self, request: Any, response: PeeringResponse, unit_costs: Mapping[str, float]) -> None:
        self.requests += 1
        if response.plan_id:
            self.plan_ids.add(response.plan_id)
        if response.status == "failure" and response.region is None:
            self.invalid += 1
            return
        at = getattr(request, "requested_at", None)
        if isinstance(at, datetime) and at.tzinfo is not None:
            stamp = at.timestamp()
            self.first_at_s = min(self.first_at_s, stamp)
            self.last_at_s = max(self.last_at_s, stamp)
        if response.miss_reason:
            self.miss_reasons[response.miss_reason] += 1
        if response.path == "preallocated":
            self.preallocated += 1
        elif response.path == "on_demand":
            self.on_demand += 1
            hours = _number(getattr(request, "duration_s", 0.0)) / SECONDS_PER_HOUR
            requirements = getattr(request, "resource_requirements", {}) or {}
            self.on_demand_cost_usd += hours * sum(
                _number(q) * unit_costs.get(rt, 0.0) for rt, q in requirements.items()
            )
        else:
            self.failures += 1

    @property
    def valid(self) -> int:
        return self.requests - self.invalid

    def summary(self, coordinator: Coordinator | None) -> dict[str, Any]:
        valid = self.valid
        prealloc_cost = 0.0
        plan = coordinator.plan if coordinator is not None else None
        if plan is not None and self.last_at_s >= self.first_at_s:
            prealloc_cost = plan.cost_between(self.first_at_s, max(self.last_at_s, self.first_at_s + 1.0))
        return {
            "name": self.name,
            "plan_id": ",".join(sorted(self.plan_ids)) or (plan.plan_id if plan is not None else None),
            "requests": self.requests,
            "valid": valid,
            "preallocated": self.preallocated,
            "on_demand": self.on_demand,
            "failures": self.failures,
            "invalid": self.invalid,
            "hit_rate": self.preallocated / valid if valid else None,
            "on_demand_share": self.on_demand / valid if valid else None,
            "failure_rate": self.failures / valid if valid else None,
            "miss_reasons": dict(sorted(self.miss_reasons.items())),
            "preallocation_cost_usd": round(prealloc_cost, 4),
            "on_demand_cost_usd": round(self.on_demand_cost_usd, 4),
            "total_cost_usd": round(prealloc_cost + self.on_demand_cost_usd, 4),
        }


@dataclass
class ShadowReport:
    """Side-by-side comparison of production and candidate on the same request stream."""

    production: dict[str, Any]
    candidate: dict[str, Any]
    disagreements: int  # requests whose path differs between the two sides
    dropped: int = 0  # mirrored requests the candidate never saw (queue full)

    METRICS = ("requests", "valid", "preallocated", "on_demand", "failures", "invalid", "hit_rate",
               "on_demand_share", "failure_rate", "preallocation_cost_usd", "on_demand_cost_usd", "total_cost_usd")

    def to_dict(self) -> dict[str, Any]:
        return {"production": self.production, "candidate": self.candidate,
                "disagreements": self.disagreements, "dropped": self.dropped}

    def rows(self) -> list[tuple[str, Any, Any, Any]]:
        """(metric, production, candidate, candidate - production) for tables."""
        out = []
        for metric in self.METRICS:
            p, c = self.production.get(metric), self.candidate.get(metric)
            delta = c - p if isinstance(p, (int, float)) and isinstance(c, (int, float)) else None
            out.append((metric, p, c, delta))
        return out


class _Comparison:
    def __init__(self) -> None:
        self.unit_costs = _unit_costs()
        self.production = SideStats("production")
        self.candidate = SideStats("candidate")
        self.disagreements = 0

    def record(self, request: Any, production: PeeringResponse, candidate: PeeringResponse) -> None:
        self.production.record(request, production, self.unit_costs)
        self.candidate.record(request, candidate, self.unit_costs)
        if production.path != candidate.path:
            self.disagreements += 1

    def report(self, production: Coordinator | None, candidate: Coordinator | None, dropped: int = 0) -> ShadowReport:
        return ShadowReport(self.production.summary(production), self.candidate.summary(candidate),
                            self.disagreements, dropped)


def candidate_coordinator(
    lake_root: str | os.PathLike[str],
    plan_id: str | None = None,
    *,
    priority_ceilings: Mapping[str, float] | None = None,
    ledger: Ledger | None = None,
    name: str = "candidate",
) -> Coordinator:
    """A coordinator that can never touch production state: own ledger (default in-memory), own
    pool copy, no outcome logging; pinned to `plan_id` when given, else following LATEST."""
    return Coordinator(
        lake_root,
        ledger=ledger,
        plan_id=plan_id,
        reload_interval_s=None if plan_id else 10.0,
        outcomes=False,
        priority_ceilings=priority_ceilings,
        name=name,
    )


def replay_shadow(
    requests: Iterable[PeeringRequest], production: Coordinator, candidate: Coordinator
) -> ShadowReport:
    """Send every request (in the given order) through both coordinators; compare."""
    comparison = _Comparison()
    for request in requests:
        comparison.record(request, production.handle_peering_request(request), candidate.handle_peering_request(request))
    return comparison.report(production, candidate)


class ShadowMirror:
    """Serve from production, mirror to a candidate in the background (see module docstring)."""

    def __init__(self, production: Coordinator, candidate: Coordinator, *, max_queue: int = 100_000) -> None:
        if candidate.ledger is production.ledger:
            raise ValueError("the shadow candidate must have its own ledger")
        self.production = production
        self.candidate = candidate
        self.max_queue = max_queue
        self._queue: deque[tuple[str, Any, Any]] = deque()
        self._wake = threading.Event()
        self._idle = threading.Condition()
        self._busy = False
        self._stop = False
        self._dropped = 0
        self._comparison = _Comparison()
        self._allocation_map: dict[str, str] = {}  # production allocation id -> candidate's
        self._thread = threading.Thread(target=self._run, name="irc-shadow", daemon=True)
        self._thread.start()

    def handle_peering_request(self, request: PeeringRequest) -> PeeringResponse:
        """Production's decision (returned), the request mirrored to the candidate."""
        response = self.production.handle_peering_request(request)
        self.mirror(request, response)
        return response

    def mirror(self, request: PeeringRequest, production_response: PeeringResponse) -> bool:
        """Queue a request production already decided; False (counted) if the queue is full."""
        return self._put(("request", request, production_response))

    def release(self, allocation_id: str) -> bool:
        released = self.production.release(allocation_id)
        self._put(("release", allocation_id, None))
        return released

    def _put(self, item: tuple[str, Any, Any]) -> bool:
        if len(self._queue) >= self.max_queue or self._stop:
            self._dropped += 1
            return False
        self._queue.append(item)
        self._wake.set()
        return True

    def _run(self) -> None:
        while True:
            self._wake.wait(0.5)
            self._wake.clear()
            while self._queue:
                with self._idle:
                    self._busy = True
                try:
                    kind, payload, production_response = self._queue.popleft()
                    if kind == "request":
                        response = self.candidate.handle_peering_request(payload)
                        self._comparison.record(payload, production_response, response)
                        if production_response.allocation_id and response.allocation_id:
                            self._allocation_map[production_response.allocation_id] = response.allocation_id
                    else:
                        mapped = self._allocation_map.pop(payload, None)
                        if mapped is not None:
                            self.candidate.release(mapped)
                except Exception:
                    log.exception("IRC shadow: candidate failed on a mirrored item")
                finally:
                    with self._idle:
                        self._busy = False
                        self._idle.notify_all()
            if self._stop and not self._queue:
                return

    def drain(self, timeout_s: float = 30.0) -> bool:
        """Wait until the candidate has processed everything queued so far."""
        with self._idle:
            return self._idle.wait_for(lambda: not self._queue and not self._busy, timeout=timeout_s)

    def report(self, wait: bool = True) -> ShadowReport:
        if wait:
            self._wake.set()
            self.drain()
        return self._comparison.report(self.production, self.candidate, self._dropped)

    def close(self) -> None:
        self._stop = True
        self._wake.set()
        self._thread.join(timeout=30)
        self.candidate.close()


# ---------------------------------------------------------------------------------------------
# Request files
# ---------------------------------------------------------------------------------------------


def load_requests(path: str | os.PathLike[str]) -> list[PeeringRequest]:
    """Peering requests from a file in the `peering_requests` format: .csv, .jsonl/.json or .parquet.

    Rows are parsed leniently (`PeeringRequest.from_row`) so that bad rows come back as failure
    decisions, and sorted by requested_at (unparseable times last, in file order).
    """
    file = Path(path)
    suffix = file.suffix.lower()
    if suffix == ".csv":
        with file.open(newline="", encoding="utf-8") as handle:
            rows: list[Mapping[str, Any]] = list(csv.DictReader(handle))
    elif suffix in (".jsonl", ".json", ".ndjson"):
        text = file.read_text(encoding="utf-8")
        stripped = text.lstrip()
        rows = json.loads(text) if stripped.startswith("[") else [
            json.loads(line) for line in text.splitlines() if line.strip()
        ]
    elif suffix == ".parquet":
        import pyarrow.parquet as pq

        rows = pq.read_table(file).to_pylist()
    else:
        raise ValueError(f"{file}: unsupported request file type {suffix!r} (use .csv, .jsonl or .parquet)")
    requests = [PeeringRequest.from_row(row) for row in rows]

    def key(item: tuple[int, PeeringRequest]) -> tuple[float, int]:
        index, request = item
        at = request.requested_at
        if isinstance(at, datetime) and at.tzinfo is not None:
            return (at.timestamp(), index)
        return (math.inf, index)

    return [request for _, request in sorted(enumerate(requests), key=key)]


def _number(value: Any) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return 0.0
    return number if math.isfinite(number) and number > 0 else 0.0
