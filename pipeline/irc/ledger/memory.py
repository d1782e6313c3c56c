"""`InMemoryLedger`: the ledger contract (see `protocol`) for one process, behind one lock."""

from __future__ import annotations

import bisect
import heapq
import threading
import time
from collections.abc import Iterable, Mapping

from pipeline.irc.ledger.protocol import DEFAULT_RETENTION_S, TOLERANCE, fits, short_resources
from pipeline.irc.plan_source import CapacityRow

# utilization(at_s) reads the windows overlapping [at_s, at_s + _INSTANT_S): those containing at_s.
_INSTANT_S = 1e-6


class _RegionWindows:
    """One region's windows, sorted by start; cells are {resource_type: [capacity, used]}."""

    __slots__ = ("cells", "ends", "plans", "starts")

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


def _fits_within_limit(
    overlapped: list[dict[str, list[float]]], requirements: Mapping[str, float], ceiling: float
) -> bool:
    """True when some window is overlapped and every requested cell stays within `ceiling x capacity` - where the
    capacity rule always grants (its tolerance only widens the limit); False sends it to `short_resources`."""
    if not overlapped:
        return False
    for cells in overlapped:
        for resource_type, quantity in requirements.items():
            cell = cells.get(resource_type)
            if cell is None or cell[1] + quantity > cell[0] * ceiling:
                return False
    return True


class InMemoryLedger:
    """Process-local ledger; one lock makes check-and-reserve atomic across threads."""

    sweeps_inline = True
    shared = False  # on-demand admission here counts this process only (see protocol)

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
        self._first_end = float("-inf")  # no window ends before this (sweeps skip the retention pass until then)
        self._retention_s = retention_s
        self._pools: dict[str, dict[str, float]] = {}
        self._pools_plan: str | None = None
        self._admissions: dict[str, tuple[str, dict[str, float], float]] = {}  # id -> (region, wanted, expires)
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
            self._first_end = float("-inf")  # recomputed by the next sweep
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
            overlapped = windows.overlapping(start_s, end_s) if windows is not None else []
            if not _fits_within_limit(overlapped, requirements, ceiling):  # rare: near the limit, or a cell missing
                short = short_resources(overlapped, requirements, ceiling)
                if short:
                    return short
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
                        cell[1] = remaining if remaining > TOLERANCE else 0.0
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
        if horizon >= self._first_end:  # some window ended before the retention horizon
            first_end = float("inf")
            for windows in self._regions.values():
                drop = bisect.bisect_right(windows.ends, horizon)  # ends are sorted: windows never overlap
                if drop:
                    del windows.starts[:drop], windows.ends[:drop], windows.cells[:drop], windows.plans[:drop]
                if windows.ends:
                    first_end = min(first_end, windows.ends[0])
            self._first_end = first_end
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
                for cells in windows.overlapping(at_s, at_s + _INSTANT_S):
                    for resource_type, (capacity, used) in cells.items():
                        out[(region, resource_type)] = (capacity, used)
        return out

    def live_allocations(self) -> int:
        with self._lock:
            return len(self._allocations)

    # -- on-demand admission (per process; the shared ledgers share it) --------------------------

    def load_pools(self, pools: Mapping[str, Mapping[str, float]], plan_id: str) -> None:
        with self._lock:
            if self._pools_plan is not None and self._pools_plan > plan_id:
                return
            self._pools = {region: {rt: float(q) for rt, q in quantities.items()} for region, quantities in pools.items()}
            self._pools_plan = plan_id

    def _pool_used(self, region: str, cutoff: float) -> dict[str, float]:
        used: dict[str, float] = {}
        for grant_region, wanted, expires in self._admissions.values():
            if grant_region == region and expires > cutoff:
                for rt, q in wanted.items():
                    used[rt] = used.get(rt, 0.0) + q
        return used

    def admit(self, allocation_id: str, region: str, requirements: Mapping[str, float], expires_at_s: float,
              now_s: float | None = None) -> bool:
        wanted = {rt: float(q) for rt, q in requirements.items() if q > 0}
        cutoff = time.time() if now_s is None else now_s
        with self._lock:
            if allocation_id in self._admissions:
                raise ValueError(f"allocation_id {allocation_id!r} already in use")
            pool = self._pools.get(region)
            if pool is None or not fits(wanted, self._pool_used(region, cutoff), pool):
                return False
            self._admissions[allocation_id] = (region, wanted, float(expires_at_s))
            return True

    def release_admission(self, allocation_id: str) -> bool:
        with self._lock:
            return self._admissions.pop(allocation_id, None) is not None

    def pool_available(self, region: str, now_s: float | None = None) -> dict[str, float]:
        cutoff = time.time() if now_s is None else now_s
        with self._lock:
            pool = self._pools.get(region)
            if pool is None:
                return {}
            used = self._pool_used(region, cutoff)
            return {rt: max(0.0, q - used.get(rt, 0.0)) for rt, q in pool.items()}

    def sweep_admissions(self, now_s: float) -> int:
        with self._lock:
            gone = [a for a, (_, _, expires) in self._admissions.items() if expires <= now_s]
            for allocation_id in gone:
                del self._admissions[allocation_id]
            return len(gone)

    def close(self) -> None:
        return None
