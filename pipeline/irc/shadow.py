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

import codecs
import csv
import json
import logging
import math
import os
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, overload

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
        elif response.status != "success":  # failover / relocated successes are neither hits nor failures
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
    clock: Callable[[], float] | None = time.time,
) -> Coordinator:
    """A coordinator that can never touch production state: own ledger (default in-memory), own
    pool copy, no outcome logging; pinned to `plan_id` when given, else following LATEST.

    `clock` as for `Coordinator`: the wall clock beside a live production (`ShadowMirror`);
    `REQUEST_TIME` to replay a stream deterministically (`replay_shadow`).
    """
    return Coordinator(
        lake_root,
        ledger=ledger,
        plan_id=plan_id,
        reload_interval_s=None if plan_id else 10.0,
        outcomes=False,
        priority_ceilings=priority_ceilings,
        name=name,
        clock=clock,
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

# Columns a `peering_requests` file must have (resource columns and priority may be left out).
REQUIRED_COLUMNS = ("request_id", "requested_at", "source_region", "destination_region", "duration_s")
MAX_RAW_CHARS = 500  # of a rejected line kept in its report
_LOGGED_REJECTS = 20  # rejected lines logged one by one; the rest are counted


@dataclass(frozen=True)
class RejectedLine:
    """A line of a request file that is not a row at all (it is not replayed; every other line is)."""

    line: int  # 1-based line in the file (a JSON array: the item's position; Parquet: the row)
    reason: str
    raw: str  # the line as read, undecodable bytes escaped, cut at MAX_RAW_CHARS


@dataclass(frozen=True)
class RequestFile(Sequence[PeeringRequest]):
    """The requests of one file in request-time order, with the lines that could not be read.

    A sequence of its requests, so it replays as a list does; `lines[i]` is where `requests[i]`
    came from. Rows whose *values* are wrong (a bad time, a NaN) are requests like any other: the
    coordinator decides them invalid and says why.
    """

    path: str
    requests: tuple[PeeringRequest, ...]
    lines: tuple[int, ...]
    rejected: tuple[RejectedLine, ...] = ()

    def __len__(self) -> int:
        return len(self.requests)

    @overload
    def __getitem__(self, index: int) -> PeeringRequest: ...

    @overload
    def __getitem__(self, index: slice) -> Sequence[PeeringRequest]: ...

    def __getitem__(self, index: int | slice) -> PeeringRequest | Sequence[PeeringRequest]:
        return self.requests[index]

    def __iter__(self) -> Iterator[PeeringRequest]:
        return iter(self.requests)


def load_requests(path: str | os.PathLike[str]) -> RequestFile:
    """Peering requests from a file in the `peering_requests` format: .csv, .jsonl/.json or .parquet.

    Every line is read on its own: a line that is not a row (an unclosed quote, a byte that is not
    UTF-8, a NUL, the wrong number of fields, a JSON line that is not an object) is reported in
    `rejected` with its line number and reason - and logged - while every other line is kept. Rows
    are parsed leniently (`PeeringRequest.from_row`) so that bad values come back as failure
    decisions, and sorted by requested_at (unparseable times last, in file order). A file that
    cannot be read at all (missing, no header, a broken JSON array) raises OSError/ValueError.
    """
    file = Path(path)
    suffix = file.suffix.lower()
    if suffix == ".csv":
        rows, rejected = _read_csv(file.read_bytes())
    elif suffix in (".jsonl", ".json", ".ndjson"):
        rows, rejected = _read_json(file.read_bytes())
    elif suffix == ".parquet":
        import pyarrow.parquet as pq

        rows, rejected = list(enumerate(pq.read_table(file).to_pylist(), start=1)), []
    else:
        raise ValueError(f"{file}: unsupported request file type {suffix!r} (use .csv, .jsonl or .parquet)")
    for bad in rejected[:_LOGGED_REJECTS]:
        log.warning("%s line %d skipped: %s", file, bad.line, bad.reason)
    if len(rejected) > _LOGGED_REJECTS:
        log.warning("%s: %d more lines skipped", file, len(rejected) - _LOGGED_REJECTS)
    parsed = [(line, PeeringRequest.from_row(row)) for line, row in rows]

    def key(item: tuple[int, tuple[int, PeeringRequest]]) -> tuple[float, int]:
        index, (_, request) = item
        at = request.requested_at
        if isinstance(at, datetime) and at.tzinfo is not None and at.utcoffset() is not None:
            return (at.timestamp(), index)
        return (math.inf, index)

    ordered = [entry for _, entry in sorted(enumerate(parsed), key=key)]
    return RequestFile(
        path=str(file),
        requests=tuple(request for _, request in ordered),
        lines=tuple(line for line, _ in ordered),
        rejected=tuple(rejected),
    )


def _physical_lines(data: bytes) -> list[bytes]:
    """The file's lines without their terminators (\n or \r\n), a UTF-8 BOM dropped."""
    if data.startswith(codecs.BOM_UTF8):
        data = data[len(codecs.BOM_UTF8):]
    lines = data.split(b"\n")
    if lines and not lines[-1]:
        lines.pop()
    return [line[:-1] if line.endswith(b"\r") else line for line in lines]


def _reject(line: int, reason: str, raw: bytes) -> RejectedLine:
    return RejectedLine(line, reason, raw.decode("utf-8", "backslashreplace")[:MAX_RAW_CHARS])


def _decode(raw: bytes, line: int) -> str | RejectedLine:
    """The line as text, or why it is not: undecodable bytes and NULs are refused, never guessed."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return _reject(line, f"not UTF-8: byte 0x{raw[exc.start]:02x} at column {exc.start + 1}", raw)
    if "\x00" in text:
        return _reject(line, f"NUL byte at column {text.index(chr(0)) + 1}", raw)
    return text


def _csv_fields(text: str) -> list[str]:
    """One line's fields; csv.Error when the line is not a CSV record on its own."""
    try:
        return next(csv.reader([text], strict=True))
    except csv.Error as exc:
        hint = " (an unclosed quote)" if "unexpected end of data" in str(exc) else ""
        raise csv.Error(f"not a CSV record: {exc}{hint}") from None


def _read_csv(data: bytes) -> tuple[list[tuple[int, dict[str, Any]]], list[RejectedLine]]:
    """Rows of a CSV file, each physical line parsed alone (no field of the format spans lines)."""
    lines = _physical_lines(data)
    header = _decode(lines[0], 1) if lines else None
    if not isinstance(header, str):
        raise ValueError(f"no readable header line ({header.reason if header else 'the file is empty'})")
    try:
        names = [name.strip() for name in _csv_fields(header)]
    except csv.Error as exc:
        raise ValueError(f"line 1 (header): {exc}") from None
    missing = [column for column in REQUIRED_COLUMNS if column not in names]
    if missing or len(set(names)) != len(names):
        problem = f"missing column(s) {', '.join(missing)}" if missing else "a column name repeats"
        raise ValueError(f"line 1 (header): {problem}; expected the peering_requests columns {', '.join(REQUIRED_COLUMNS)}, ...")
    rows: list[tuple[int, dict[str, Any]]] = []
    rejected: list[RejectedLine] = []
    for number, raw in enumerate(lines[1:], start=2):
        if not raw.strip():
            continue  # a blank line holds no row
        text = _decode(raw, number)
        if isinstance(text, RejectedLine):
            rejected.append(text)
            continue
        try:
            fields = _csv_fields(text)
        except csv.Error as exc:
            rejected.append(_reject(number, str(exc), raw))
            continue
        if len(fields) != len(names):
            rejected.append(_reject(number, f"{len(fields)} fields where the header has {len(names)}", raw))
            continue
        rows.append((number, dict(zip(names, fields, strict=True))))
    return rows, rejected


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON (write null for a missing value)")


def _read_json(data: bytes) -> tuple[list[tuple[int, dict[str, Any]]], list[RejectedLine]]:
    """Rows of a JSON Lines file, each line parsed alone; or of one JSON array (one document)."""
    lines = _physical_lines(data)
    rows: list[tuple[int, dict[str, Any]]] = []
    rejected: list[RejectedLine] = []
    if b"".join(lines).lstrip().startswith(b"["):  # one JSON array: it parses whole or not at all
        try:
            items = json.loads(b"\n".join(lines).decode("utf-8"), parse_constant=_no_constant)
        except (ValueError, RecursionError) as exc:
            raise ValueError(f"not a JSON array of request objects: {exc}") from None
        for position, item in enumerate(items, start=1):
            if isinstance(item, dict):
                rows.append((position, item))
            else:
                rejected.append(_reject(position, f"item {position} is not a JSON object", json.dumps(item).encode()))
        return rows, rejected
    for number, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        text = _decode(raw, number)
        if isinstance(text, RejectedLine):
            rejected.append(text)
            continue
        try:
            value = json.loads(text, parse_constant=_no_constant)
        except json.JSONDecodeError as exc:
            rejected.append(_reject(number, f"not JSON: {exc.msg} at column {exc.colno}", raw))
            continue
        except RecursionError:
            rejected.append(_reject(number, "not JSON: nested too deep", raw))
            continue
        except ValueError as exc:  # NaN/Infinity, ints over 4300 digits
            rejected.append(_reject(number, f"not JSON: {exc}", raw))
            continue
        if isinstance(value, dict):
            rows.append((number, value))
        else:
            rejected.append(_reject(number, f"not a JSON object but {type(value).__name__}", raw))
    return rows, rejected


def _number(value: Any) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return 0.0
    return number if math.isfinite(number) and number > 0 else 0.0
