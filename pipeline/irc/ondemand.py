"""On-demand capacity: the fallback when the pre-allocation cannot serve a request.

`PoolAllocator` is the default `OnDemandAllocator`: it debits the `resource_pools` snapshot
published with the plan (what each region can still launch beyond the pre-allocation), so the
IRC refuses requests a region could not absorb instead of promising capacity that is not there.
Without any snapshot (no plan ever published) it passes requests through and says so
(`checks_capacity` is False): the cloud's own API is then the only arbiter.

Grants expire like pre-allocations (`requested_at + duration_s`), so a caller that never calls
`release` does not drain the pool. `PoolAllocator`'s pool is per process (the default with the
in-memory ledger). With a shared ledger (SQLite, PostgreSQL) the coordinator uses
`LedgerPoolAllocator` instead: the pools snapshot is stored in the ledger and every grant is
admitted there atomically (`Ledger.admit`), so replicas sharing the ledger never admit more than
the pool between them. The cloud API stays the final arbiter of what actually launches.

Modeled latency (`LatencyModel`): launching on demand is not free. Each resource type has a base
provisioning time (instances ~60 s: the middle of the 25-90 s cold launch range; volumes 30 s;
bandwidth/peering attachments 10 s); a request that leaves the region's pool more than 80 %
drawn needs new nodes (~240 s, the 3-5 min range). The response carries the estimate in
`provisioning_s`; pre-allocated capacity is 0 s.
"""

from __future__ import annotations

import heapq
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from pipeline.irc.ledger import Ledger, fits


@dataclass(frozen=True)
class LatencyModel:
    """Seconds until on-demand capacity is usable (see module docstring)."""

    base_s: Mapping[str, float] = field(
        default_factory=lambda: {"vcpu": 60.0, "memory_gib": 60.0, "storage_gib": 30.0, "bandwidth_gbps": 10.0}
    )
    default_s: float = 60.0
    scarce_s: float = 240.0
    scarce_above: float = 0.8  # share of the pool snapshot drawn after the grant

    def estimate(self, requirements: Mapping[str, float], drawn_share: float = 0.0) -> float:
        base = max((self.base_s.get(rt, self.default_s) for rt in requirements), default=self.default_s)
        return max(base, self.scarce_s) if drawn_share > self.scarce_above else base


@runtime_checkable
class OnDemandAllocator(Protocol):
    """Allocates beyond the pre-allocation; all-or-nothing and thread-safe."""

    @property
    def checks_capacity(self) -> bool:
        """False when grants are not backed by a known inventory (the message says so)."""
        ...

    def try_allocate(
        self, region: str, requirements: Mapping[str, float], allocation_id: str, expires_at_s: float | None = None
    ) -> bool:
        """Take all requirements from the region's pool or nothing."""
        ...

    def release(self, allocation_id: str) -> bool:
        """Give an allocation back; False if unknown or already released/expired."""
        ...

    def available(self, region: str) -> dict[str, float]:
        """What the region could still grant (used to name short resources)."""
        ...

    def provisioning_s(self, region: str, requirements: Mapping[str, float]) -> float:
        """Modeled seconds until a grant just made is usable."""
        ...

    def sweep(self, now_s: float) -> int:
        """Return grants that expired at or before now_s."""
        ...


class PoolAllocator:
    """Debits/credits an in-memory copy of the pools snapshot {region: {resource_type: available}}."""

    def __init__(
        self, pools: Mapping[str, Mapping[str, float]] | None = None, latency: LatencyModel | None = None
    ) -> None:
        self._lock = threading.Lock()
        self._latency = latency or LatencyModel()
        self._snapshot: dict[str, dict[str, float]] | None = None
        self._available: dict[str, dict[str, float]] = {}
        self._granted: dict[str, tuple[str, dict[str, float], float]] = {}
        self._expiry: list[tuple[float, str]] = []
        self.load_pools(pools)

    @property
    def checks_capacity(self) -> bool:
        return self._snapshot is not None

    @property
    def regions(self) -> frozenset[str]:
        return frozenset(self._available)

    def load_pools(self, pools: Mapping[str, Mapping[str, float]] | None) -> None:
        """Adopt a new snapshot (new plan); live grants stay debited from it."""
        with self._lock:
            if pools is None:
                self._snapshot = None
                self._available = {}
                return
            self._snapshot = {region: dict(q) for region, q in pools.items()}
            available = {region: dict(q) for region, q in pools.items()}
            for region, quantities, _ in self._granted.values():
                pool = available.get(region)
                if pool is not None:
                    for rt, q in quantities.items():
                        pool[rt] = max(0.0, pool.get(rt, 0.0) - q)
            self._available = available

    def try_allocate(
        self, region: str, requirements: Mapping[str, float], allocation_id: str, expires_at_s: float | None = None
    ) -> bool:
        wanted = {rt: float(q) for rt, q in requirements.items() if q > 0}
        with self._lock:
            if allocation_id in self._granted:
                raise ValueError(f"allocation_id {allocation_id!r} already in use")
            end = float("inf") if expires_at_s is None else expires_at_s
            if self._snapshot is None:
                self._granted[allocation_id] = (region, {}, end)
            else:
                pool = self._available.get(region)
                if pool is None or not fits(wanted, {}, pool):
                    return False
                for resource_type, quantity in wanted.items():
                    pool[resource_type] = max(0.0, pool.get(resource_type, 0.0) - quantity)
                self._granted[allocation_id] = (region, wanted, end)
            if expires_at_s is not None:
                heapq.heappush(self._expiry, (end, allocation_id))
            return True

    def release(self, allocation_id: str) -> bool:
        with self._lock:
            return self._release_locked(allocation_id)

    def _release_locked(self, allocation_id: str) -> bool:
        grant = self._granted.pop(allocation_id, None)
        if grant is None:
            return False
        region, quantities, _ = grant
        pool = self._available.get(region)
        if pool is not None:
            for resource_type, quantity in quantities.items():
                pool[resource_type] = pool.get(resource_type, 0.0) + quantity
        return True

    def sweep(self, now_s: float) -> int:
        released = 0
        with self._lock:
            while self._expiry and self._expiry[0][0] <= now_s:
                end, allocation_id = heapq.heappop(self._expiry)
                grant = self._granted.get(allocation_id)
                if grant is not None and grant[2] == end and self._release_locked(allocation_id):
                    released += 1
        return released

    def available(self, region: str) -> dict[str, float]:
        with self._lock:
            return dict(self._available.get(region, {}))

    def provisioning_s(self, region: str, requirements: Mapping[str, float]) -> float:
        drawn = 0.0
        with self._lock:
            if self._snapshot is not None:
                snapshot, pool = self._snapshot.get(region, {}), self._available.get(region, {})
                for rt in requirements:
                    total = snapshot.get(rt, 0.0)
                    if total > 0:
                        drawn = max(drawn, 1.0 - pool.get(rt, 0.0) / total)
        return self._latency.estimate(requirements, drawn)

    def live_grants(self) -> int:
        with self._lock:
            return len(self._granted)


class UncheckedAllocator(PoolAllocator):
    """Grants every request (no inventory known); still tracks ids so release stays exactly-once."""

    def __init__(self, latency: LatencyModel | None = None) -> None:
        super().__init__(None, latency)


class LedgerPoolAllocator:
    """On-demand admission through a shared ledger: one pool for every replica (see module docstring).

    Without a pools snapshot (no plan ever loaded) it passes requests through like `PoolAllocator`
    (`checks_capacity` False). Expiry is the ledger's: a grant stops counting once the latest time
    the coordinator swept to (never past the ledger's clock) passes its end; `sweep` deletes ended
    grants at most every `sweep_interval_s` (they no longer count anyway).
    """

    def __init__(self, ledger: Ledger, latency: LatencyModel | None = None, sweep_interval_s: float = 60.0) -> None:
        self._ledger = ledger
        self._latency = latency or LatencyModel()
        self._snapshot: dict[str, dict[str, float]] | None = None
        self._unchecked: set[str] = set()  # pass-through grants (no snapshot): ids only, exactly-once release
        self._lock = threading.Lock()
        self._now = float("-inf")
        self._next_sweep = float("-inf")
        self._sweep_interval_s = sweep_interval_s

    @property
    def ledger(self) -> Ledger:
        return self._ledger

    @property
    def checks_capacity(self) -> bool:
        return self._snapshot is not None

    def load_pools(self, pools: Mapping[str, Mapping[str, float]] | None, plan_id: str = "") -> None:
        """Store the plan's pools in the ledger (a newer plan's pools already there win)."""
        if pools is None:
            self._snapshot = None
            return
        self._ledger.load_pools(pools, plan_id)
        self._snapshot = {region: dict(q) for region, q in pools.items()}

    def _cutoff(self) -> float | None:
        return self._now if self._now != float("-inf") else None

    def try_allocate(
        self, region: str, requirements: Mapping[str, float], allocation_id: str, expires_at_s: float | None = None
    ) -> bool:
        end = float("inf") if expires_at_s is None else expires_at_s
        if self._snapshot is None:
            with self._lock:
                if allocation_id in self._unchecked:
                    raise ValueError(f"allocation_id {allocation_id!r} already in use")
                self._unchecked.add(allocation_id)
            return True
        return self._ledger.admit(allocation_id, region, requirements, end, self._cutoff())

    def release(self, allocation_id: str) -> bool:
        with self._lock:
            if allocation_id in self._unchecked:
                self._unchecked.discard(allocation_id)
                return True
        return self._ledger.release_admission(allocation_id)

    def sweep(self, now_s: float) -> int:
        with self._lock:
            if now_s > self._now:  # also skips a NaN
                self._now = now_s
            if not now_s >= self._next_sweep:  # also a NaN
                return 0
            self._next_sweep = now_s + self._sweep_interval_s
        return self._ledger.sweep_admissions(now_s)

    def available(self, region: str) -> dict[str, float]:
        if self._snapshot is None:
            return {}
        return self._ledger.pool_available(region, self._cutoff())

    def provisioning_s(self, region: str, requirements: Mapping[str, float]) -> float:
        drawn = 0.0
        snapshot = self._snapshot
        if snapshot is not None:
            total = snapshot.get(region, {})
            pool = self.available(region)
            for rt in requirements:
                if total.get(rt, 0.0) > 0:
                    drawn = max(drawn, 1.0 - pool.get(rt, 0.0) / total[rt])
        return self._latency.estimate(requirements, drawn)
