"""On-demand capacity: the fallback when the pre-allocation cannot serve a request.

`PoolAllocator` debits the `resource_pools` snapshot published with the plan, so the IRC refuses
requests the region could not absorb instead of promising capacity that is not there.
`UncheckedAllocator` is used only when no snapshot exists at all (no plan ever published): the
cloud's own on-demand API is then the only arbiter, so requests are passed through and flagged.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Protocol, runtime_checkable

from pipeline.irc.ledger import fits


@runtime_checkable
class OnDemandAllocator(Protocol):
    """Allocates beyond the pre-allocation; all-or-nothing and thread-safe."""

    @property
    def checks_capacity(self) -> bool:
        """False when grants are not backed by a known inventory (message says so)."""
        ...

    def try_allocate(self, region: str, requirements: Mapping[str, float], allocation_id: str) -> bool:
        """Take all requirements from the region's pool or nothing."""
        ...

    def release(self, allocation_id: str) -> bool:
        """Give an allocation back; False if unknown or already released."""
        ...

    def available(self, region: str) -> dict[str, float]:
        """What the region could still grant (used to name short resources)."""
        ...


class PoolAllocator:
    """Debits/credits an in-memory copy of the pools snapshot {region: {resource_type: available}}."""

    checks_capacity = True

    def __init__(self, pools: Mapping[str, Mapping[str, float]]) -> None:
        self._lock = threading.Lock()
        self._available = {region: dict(q) for region, q in pools.items()}
        self._granted: dict[str, tuple[str, dict[str, float]]] = {}

    @property
    def regions(self) -> frozenset[str]:
        return frozenset(self._available)

    def try_allocate(self, region: str, requirements: Mapping[str, float], allocation_id: str) -> bool:
        wanted = {rt: float(q) for rt, q in requirements.items() if q > 0}
        with self._lock:
            if allocation_id in self._granted:
                raise ValueError(f"allocation_id {allocation_id!r} already in use")
            pool = self._available.get(region)
            if pool is None or not fits(wanted, {}, pool):
                return False
            for resource_type, quantity in wanted.items():
                pool[resource_type] = max(0.0, pool.get(resource_type, 0.0) - quantity)
            self._granted[allocation_id] = (region, wanted)
            return True

    def release(self, allocation_id: str) -> bool:
        with self._lock:
            grant = self._granted.pop(allocation_id, None)
            if grant is None:
                return False
            region, quantities = grant
            pool = self._available[region]
            for resource_type, quantity in quantities.items():
                pool[resource_type] = pool.get(resource_type, 0.0) + quantity
            return True

    def available(self, region: str) -> dict[str, float]:
        with self._lock:
            return dict(self._available.get(region, {}))


class UncheckedAllocator:
    """Grants every request (no inventory known); still tracks ids so release stays exact-once."""

    checks_capacity = False

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._granted: set[str] = set()

    def try_allocate(self, region: str, requirements: Mapping[str, float], allocation_id: str) -> bool:
        with self._lock:
            if allocation_id in self._granted:
                raise ValueError(f"allocation_id {allocation_id!r} already in use")
            self._granted.add(allocation_id)
            return True

    def release(self, allocation_id: str) -> bool:
        with self._lock:
            if allocation_id not in self._granted:
                return False
            self._granted.remove(allocation_id)
            return True

    def available(self, region: str) -> dict[str, float]:
        return {}
