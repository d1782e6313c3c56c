"""Usage ledger of the pre-allocation: what has been handed out per (window, region, resource).

The `Ledger` protocol is the seam for shared backends (SQLite for a laptop, PostgreSQL at scale):
capacity check and increment must be one atomic step in the backend itself, and the ledger, not
the coordinator, remembers allocations so any process can release them exactly once.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

# Float sums of fractional quantities must not refuse a request that exactly fills capacity.
_TOLERANCE = 1e-9

# {window_key: {region: {resource_type: quantity}}}
Capacities = Mapping[str, Mapping[str, Mapping[str, float]]]


@runtime_checkable
class Ledger(Protocol):
    """Atomic reservations against pre-allocated capacity."""

    def load_capacities(self, capacities: Capacities) -> None:
        """Replace the capacity table (new plan). Usage already recorded is kept, keyed by window."""
        ...

    def try_reserve(
        self, window_key: str, region: str, requirements: Mapping[str, float], allocation_id: str
    ) -> bool:
        """Reserve all requirements or nothing; record them under `allocation_id`."""
        ...

    def release(self, allocation_id: str) -> bool:
        """Return an allocation's capacity; False if unknown or already released."""
        ...

    def usage(self, window_key: str, region: str) -> dict[str, float]:
        """Quantities currently reserved (for inspection, metrics and tests)."""
        ...


def fits(
    requirements: Mapping[str, float], used: Mapping[str, float], capacity: Mapping[str, float]
) -> bool:
    """True when every requirement fits in capacity - used (shared by ledgers and pools)."""
    for resource_type, quantity in requirements.items():
        limit = capacity.get(resource_type, 0.0)
        if used.get(resource_type, 0.0) + quantity > limit + _TOLERANCE * max(1.0, limit):
            return False
    return True


@dataclass(frozen=True)
class _Reservation:
    window_key: str
    region: str
    requirements: Mapping[str, float]


class InMemoryLedger:
    """Process-local ledger; one lock makes check-and-reserve atomic across threads."""

    def __init__(self, capacities: Capacities | None = None) -> None:
        self._lock = threading.Lock()
        self._capacity: dict[str, dict[str, dict[str, float]]] = {}
        self._used: dict[tuple[str, str], dict[str, float]] = {}
        self._reservations: dict[str, _Reservation] = {}
        if capacities is not None:
            self.load_capacities(capacities)

    def load_capacities(self, capacities: Capacities) -> None:
        snapshot = {
            window: {region: dict(quantities) for region, quantities in regions.items()}
            for window, regions in capacities.items()
        }
        with self._lock:
            self._capacity = snapshot

    def try_reserve(
        self, window_key: str, region: str, requirements: Mapping[str, float], allocation_id: str
    ) -> bool:
        wanted = {rt: float(q) for rt, q in requirements.items() if q > 0}
        with self._lock:
            if allocation_id in self._reservations:
                raise ValueError(f"allocation_id {allocation_id!r} already in use")
            capacity = self._capacity.get(window_key, {}).get(region)
            if capacity is None:
                return False
            used = self._used.setdefault((window_key, region), {})
            if not fits(wanted, used, capacity):
                return False
            for resource_type, quantity in wanted.items():
                used[resource_type] = used.get(resource_type, 0.0) + quantity
            self._reservations[allocation_id] = _Reservation(window_key, region, wanted)
            return True

    def release(self, allocation_id: str) -> bool:
        with self._lock:
            reservation = self._reservations.pop(allocation_id, None)
            if reservation is None:
                return False
            used = self._used[(reservation.window_key, reservation.region)]
            for resource_type, quantity in reservation.requirements.items():
                used[resource_type] = max(0.0, used.get(resource_type, 0.0) - quantity)
            return True

    def usage(self, window_key: str, region: str) -> dict[str, float]:
        with self._lock:
            return dict(self._used.get((window_key, region), {}))
