"""Ledger of the pre-allocated capacity: atomic all-or-nothing reservations across windows.

A plan pre-allocates capacity per (window, region, resource_type); a peering session holds its
resources in its destination region from `requested_at` for `duration_s`, so a reservation
debits **every ledger window the session overlaps**, atomically, or none of them. Three
backends share one contract and one test-suite:

* `InMemoryLedger` - one process (one lock, sub-10 µs);
* `SQLiteLedger` (`pipeline.irc.ledger_sqlite`) - several processes on one host (WAL file);
* `PostgresLedger` (`pipeline.irc.ledger_postgres`) - several IRC replicas (server functions).

Contract (every backend):

* `used(w, region, rt)` is the sum of the live allocations of that region which overlap window
  `w` and request `rt`; a grant needs `used + q <= ceiling x capacity` in every overlapped window
  for every requested resource (`ceiling` implements the priority rule, see coordinator).
* Windows are keyed by their start (POSIX seconds). Loading a plan upserts its windows; a window
  that appears for the first time is charged with the live allocations that already overlap it
  ("carry-in"), so sessions that outlive the plan that granted them stay accounted for. A plan
  with an older `plan_id` never overwrites a window loaded by a newer one (replicas converge).
* Allocations expire at `requested_at + duration_s`: `sweep(now)` returns their capacity (leaked
  allocations come back); explicit `release` still works and is exactly-once.
"""

from __future__ import annotations

import bisect
import heapq
import threading
from collections.abc import Iterable, Mapping
from typing import Protocol, runtime_checkable

from pipeline.irc.plan_source import CapacityRow

# Float sums of fractional quantities must not refuse a request that exactly fills capacity.
_TOLERANCE = 1e-9
DEFAULT_RETENTION_S = 86400.0  # windows that ended a day before "now" are dropped by sweep()


@runtime_checkable
class Ledger(Protocol):
    """Atomic reservations against pre-allocated capacity (see the module docstring)."""

    #: True when reserve() itself returns expired allocations (no separate sweep needed).
    sweeps_inline: bool

    def load_capacities(self, rows: Iterable[CapacityRow], plan_id: str) -> None:
        """Upsert the plan's (window_start_s, window_end_s, region, resource_type, quantity) rows."""
        ...

    def reserve(
        self,
        allocation_id: str,
        region: str,
        requirements: Mapping[str, float],
        start_s: float,
        end_s: float,
        ceiling: float = 1.0,
        priority: str = "normal",
        now_s: float | None = None,
    ) -> tuple[str, ...]:
        """Reserve in every window overlapping [start_s, end_s); () when granted, else the short resources.

        `now_s` (default start_s) is the time up to which a ledger that sweeps inline may expire.
        """
        ...

    def release(self, allocation_id: str) -> bool:
        """Return an allocation's capacity; False if unknown or already released/expired."""
        ...

    def sweep(self, now_s: float) -> int:
        """Release allocations that expired at or before `now_s`; returns how many."""
        ...

    def usage(self, window_start_s: int, region: str) -> dict[str, float]:
        """Quantities currently reserved in one window (inspection, metrics, tests)."""
        ...

    def utilization(self, at_s: float) -> dict[tuple[str, str], tuple[float, float]]:
        """{(region, resource_type): (capacity, used)} of the windows containing `at_s`."""
        ...

    def close(self) -> None:
        """Release connections/files."""
        ...


def fits(
    requirements: Mapping[str, float], used: Mapping[str, float], capacity: Mapping[str, float]
) -> bool:
    """True when every requirement fits in capacity - used (used by the on-demand pools)."""
    for resource_type, quantity in requirements.items():
        limit = capacity.get(resource_type, 0.0)
        if used.get(resource_type, 0.0) + quantity > limit + _TOLERANCE * max(1.0, limit):
            return False
    return True


class _RegionWindows:
    """One region's windows, sorted by start; cells are {resource_type: [capacity, used]}."""

    __slots__ = ("starts", "ends", "cells", "plans")

    def __init__(self) -> None:
        self.starts: list[int] = []
        self.ends: list[int] = []
        self.cells: list[dict[str, list[float]]] = []
        self.plans: list[str] = []

    def overlapping(self, start_s: float, end_s: float) -> list[dict[str, list[float]]]:
        starts = self.starts
        i = bisect.bisect_right(starts, start_s) - 1
        if i < 0 or self.ends[i] <= start_s:
            i += 1
        out = []
        n = len(starts)
        while i < n and starts[i] < end_s:
            out.append(self.cells[i])
            i += 1
        return out


class InMemoryLedger:
    """Process-local ledger; one lock makes check-and-reserve atomic across threads."""

    sweeps_inline = True

    def __init__(
        self,
        rows: Iterable[CapacityRow] | None = None,
        plan_id: str = "",
        retention_s: float = DEFAULT_RETENTION_S,
    ) -> None:
        self._lock = threading.Lock()
        self._regions: dict[str, _RegionWindows] = {}
        # allocation_id -> (region, start_s, end_s, requirements)
        self._allocations: dict[str, tuple[str, float, float, dict[str, float]]] = {}
        self._expiry: list[tuple[float, str]] = []  # heap of (end_s, allocation_id)
        self._retention_s = retention_s
        if rows is not None:
            self.load_capacities(rows, plan_id)

    def __repr__(self) -> str:
        return "InMemoryLedger()"

    # -- plan loading --------------------------------------------------------------------------

    def load_capacities(self, rows: Iterable[CapacityRow], plan_id: str) -> None:
        grouped: dict[tuple[str, int], tuple[int, dict[str, float]]] = {}
        for start, end, region, resource_type, quantity in rows:
            entry = grouped.setdefault((region, int(start)), (int(end), {}))
            entry[1][resource_type] = entry[1].get(resource_type, 0.0) + float(quantity)
        with self._lock:
            pending: dict[int, set[str]] = {}  # id(cells) -> resource types that need carry-in
            for (region, start), (end, capacities) in grouped.items():
                windows = self._regions.get(region)
                if windows is None:
                    windows = self._regions[region] = _RegionWindows()
                i = bisect.bisect_left(windows.starts, start)
                if i < len(windows.starts) and windows.starts[i] == start:
                    if windows.plans[i] > plan_id:
                        continue  # a newer plan already owns this window
                    cells = windows.cells[i]
                    for resource_type, capacity in capacities.items():
                        cell = cells.get(resource_type)
                        if cell is None:
                            cells[resource_type] = [capacity, 0.0]
                            pending.setdefault(id(cells), set()).add(resource_type)
                        else:
                            cell[0] = capacity
                    windows.ends[i] = end
                    windows.plans[i] = plan_id
                else:
                    cells = {rt: [capacity, 0.0] for rt, capacity in capacities.items()}
                    windows.starts.insert(i, start)
                    windows.ends.insert(i, end)
                    windows.cells.insert(i, cells)
                    windows.plans.insert(i, plan_id)
                    pending[id(cells)] = set(capacities)
            if pending:
                # Carry-in: live allocations already hold capacity in windows they overlap.
                for region, start_s, end_s, requirements in self._allocations.values():
                    windows = self._regions.get(region)
                    if windows is None:
                        continue
                    for cells in windows.overlapping(start_s, end_s):
                        types = pending.get(id(cells))
                        if types:
                            for resource_type, quantity in requirements.items():
                                if resource_type in types:
                                    cells[resource_type][1] += quantity

    # -- request path --------------------------------------------------------------------------

    def reserve(
        self,
        allocation_id: str,
        region: str,
        requirements: Mapping[str, float],
        start_s: float,
        end_s: float,
        ceiling: float = 1.0,
        priority: str = "normal",
        now_s: float | None = None,
    ) -> tuple[str, ...]:
        now = start_s if now_s is None else now_s
        with self._lock:
            expiry = self._expiry
            if expiry and expiry[0][0] <= now:
                self._sweep_locked(now)
            if allocation_id in self._allocations:
                raise ValueError(f"allocation_id {allocation_id!r} already in use")
            windows = self._regions.get(region)
            overlapped = windows.overlapping(start_s, end_s) if windows is not None else None
            if not overlapped:
                return tuple(sorted(requirements))
            short: set[str] | None = None
            for cells in overlapped:
                for resource_type, quantity in requirements.items():
                    cell = cells.get(resource_type)
                    if cell is None:
                        short = (short or set()) | {resource_type}
                        continue
                    limit = cell[0] * ceiling
                    if cell[1] + quantity > limit + _TOLERANCE * (limit if limit > 1.0 else 1.0):
                        short = (short or set()) | {resource_type}
            if short:
                return tuple(sorted(short))
            for cells in overlapped:
                for resource_type, quantity in requirements.items():
                    cells[resource_type][1] += quantity
            # The coordinator passes a fresh dict (validation's); other callers get a private copy.
            self._allocations[allocation_id] = (
                region, start_s, end_s, requirements if type(requirements) is dict else dict(requirements)
            )
            heapq.heappush(expiry, (end_s, allocation_id))
            return ()

    def release(self, allocation_id: str) -> bool:
        with self._lock:
            return self._release_locked(allocation_id)

    def _release_locked(self, allocation_id: str) -> bool:
        allocation = self._allocations.pop(allocation_id, None)
        if allocation is None:
            return False
        region, start_s, end_s, requirements = allocation
        windows = self._regions.get(region)
        if windows is not None:
            for cells in windows.overlapping(start_s, end_s):
                for resource_type, quantity in requirements.items():
                    cell = cells.get(resource_type)
                    if cell is not None:
                        remaining = cell[1] - quantity
                        cell[1] = remaining if remaining > _TOLERANCE else 0.0
        return True

    def sweep(self, now_s: float) -> int:
        with self._lock:
            return self._sweep_locked(now_s)

    def _sweep_locked(self, now_s: float) -> int:
        expiry = self._expiry
        released = 0
        while expiry and expiry[0][0] <= now_s:
            end_s, allocation_id = heapq.heappop(expiry)
            allocation = self._allocations.get(allocation_id)
            if allocation is not None and allocation[2] == end_s and self._release_locked(allocation_id):
                released += 1
        horizon = now_s - self._retention_s
        for windows in self._regions.values():
            drop = bisect.bisect_right(windows.ends, horizon)  # ends are sorted: windows never overlap
            if drop:
                del windows.starts[:drop], windows.ends[:drop], windows.cells[:drop], windows.plans[:drop]
        return released

    # -- inspection ----------------------------------------------------------------------------

    def usage(self, window_start_s: int, region: str) -> dict[str, float]:
        with self._lock:
            windows = self._regions.get(region)
            if windows is None:
                return {}
            i = bisect.bisect_left(windows.starts, int(window_start_s))
            if i == len(windows.starts) or windows.starts[i] != int(window_start_s):
                return {}
            return {rt: cell[1] for rt, cell in windows.cells[i].items()}

    def utilization(self, at_s: float) -> dict[tuple[str, str], tuple[float, float]]:
        out: dict[tuple[str, str], tuple[float, float]] = {}
        with self._lock:
            for region, windows in self._regions.items():
                for cells in windows.overlapping(at_s, at_s + 1e-6):
                    for resource_type, (capacity, used) in cells.items():
                        out[(region, resource_type)] = (capacity, used)
        return out

    def live_allocations(self) -> int:
        with self._lock:
            return len(self._allocations)

    def close(self) -> None:
        return None


def open_ledger(url: str | None = None) -> Ledger:
    """A ledger from a URL: `memory` (default), `sqlite:///path/to/ledger.db`, `postgresql://...`.

    PostgreSQL URLs may carry `?schema=NAME` (default `peerscale_irc`) for the ledger's tables.
    """
    if url is None or url in ("", "memory", "memory://"):
        return InMemoryLedger()
    if url.startswith("sqlite:"):
        from pipeline.irc.ledger_sqlite import SQLiteLedger

        path = url[len("sqlite:"):]
        if path.startswith("//"):
            path = path[2:]
        return SQLiteLedger(path)
    if url.startswith(("postgresql://", "postgres://")):
        from pipeline.irc.ledger_postgres import PostgresLedger

        return PostgresLedger.from_url(url)
    raise ValueError(f"unknown ledger URL {url!r}: use memory, sqlite:///path or postgresql://...")
