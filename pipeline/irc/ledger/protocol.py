"""Ledger of the pre-allocated capacity: atomic all-or-nothing reservations across windows.

A plan pre-allocates capacity per (window, region, resource_type); a peering session holds its
resources in its destination region from `requested_at` for `duration_s`, so a reservation
debits **every ledger window the session overlaps**, atomically, or none of them. Three
backends share one contract and one test-suite:

* `InMemoryLedger` - one process (one lock, sub-10 µs);
* `SQLiteLedger` (`pipeline.irc.ledger.sqlite`) - several processes on one host (WAL file);
* `PostgresLedger` (`pipeline.irc.ledger.postgres`) - several IRC replicas (server functions).

Contract (every backend):

* `used(w, region, rt)` is the sum of the live allocations of that region which overlap window
  `w` and request `rt`; a grant needs `used + q <= ceiling x capacity` (up to `TOLERANCE`, see
  `over_capacity`) in every overlapped window for every requested resource (`ceiling`
  implements the priority rule, see coordinator). The rule is written once, here: the in-memory
  and SQLite backends call `short_resources`, the PostgreSQL one embeds `over_capacity_sql`.
* Warm capacity (a plan with the warm tier, `pipeline.plan.warm`) is stated as rows of the region key
  `<region>/warm` (`plan_source.warm_key`) and reserved by the same `reserve`: one rule, one
  atomicity, on every backend.
* Windows are keyed by their start (POSIX seconds). Loading a plan upserts its windows; a window
  that appears for the first time is charged with the live allocations that already overlap it
  ("carry-in"), so sessions that outlive the plan that granted them stay accounted for. A plan
  with an older `plan_id` never overwrites a window loaded by a newer one (replicas converge).
* Allocations expire at `requested_at + duration_s`: `sweep(now)` returns their capacity (leaked
  allocations come back); explicit `release` still works and is exactly-once.
* On-demand admission (`load_pools`, `admit`, `release_admission`, `pool_available`,
  `sweep_admissions`): the plan's `resource_pools` snapshot (what each region can launch beyond the
  pre-allocation) is stored beside the capacity, and an on-demand grant is admitted only while the
  live grants of its region stay within the pool (`fits`: the same `over_capacity` rule, ceiling
  1) - atomically, so replicas sharing a SQLite or PostgreSQL ledger can never admit more than the
  pool between them (the in-memory ledger counts per process). A grant is live until its
  `expires_at_s` (expiry is implicit: grants that ended by min(now, the ledger's clock) no longer
  count; `sweep_admissions` only deletes them). The newest `plan_id` wins a pool load (an older
  plan's load is ignored) and replaces the whole snapshot; live grants stay counted against it.
  A region without a pool admits nothing.
* A shared ledger trusts no caller's `now`: SQLite and PostgreSQL sweep up to the earlier of `now`
  and their own clock (the host's wall clock; the server's `clock_timestamp()`), so no replica -
  skewed, replaying, or fed a request dated 2099 - can free a session that is still running. The
  in-memory ledger belongs to one coordinator and follows its clock (`Coordinator(clock=...)`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Protocol, runtime_checkable

from pipeline.common.numeric import EPS, SECONDS_PER_DAY
from pipeline.irc.plan_source import CapacityRow

# Float sums of fractional quantities must not refuse a request that exactly fills capacity:
# the capacity rule allows `TOLERANCE x max(1, limit)` above the limit (relative above 1 unit).
TOLERANCE = EPS
DEFAULT_RETENTION_S = float(SECONDS_PER_DAY)  # windows that ended a day before "now" are dropped by sweep()


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
        """Release allocations that expired at or before `now_s` (shared ledgers: and by their own clock); how many."""
        ...

    def usage(self, window_start_s: int, region: str) -> dict[str, float]:
        """Quantities currently reserved in one window (inspection, metrics, tests)."""
        ...

    def utilization(self, at_s: float) -> dict[tuple[str, str], tuple[float, float]]:
        """{(region, resource_type): (capacity, used)} of the windows containing `at_s`."""
        ...

    # -- on-demand admission (see the module docstring) -----------------------------------------

    #: True when the ledger is shared by processes (SQLite, PostgreSQL): the coordinator then admits
    #: on-demand requests through it (`ondemand.LedgerPoolAllocator`) instead of a per-process pool.
    shared: bool

    def load_pools(self, pools: Mapping[str, Mapping[str, float]], plan_id: str) -> None:
        """Adopt a plan's {region: {resource_type: available}} pools unless a newer plan's are loaded."""
        ...

    def admit(
        self, allocation_id: str, region: str, requirements: Mapping[str, float], expires_at_s: float,
        now_s: float | None = None,
    ) -> bool:
        """Admit an on-demand grant if every requirement fits the region's pool with the live grants."""
        ...

    def release_admission(self, allocation_id: str) -> bool:
        """Give an on-demand grant back; False if unknown or already released/swept."""
        ...

    def pool_available(self, region: str, now_s: float | None = None) -> dict[str, float]:
        """{resource_type: pool - live grants} of a region ({} when it has no pool)."""
        ...

    def sweep_admissions(self, now_s: float) -> int:
        """Delete grants that ended by min(now_s, the ledger's clock); how many."""
        ...

    def close(self) -> None:
        """Release connections/files."""
        ...


def over_capacity(used: float, quantity: float, capacity: float, ceiling: float = 1.0) -> bool:
    """The capacity rule: True when `used + quantity` exceeds `ceiling x capacity` by more than float error.

    The one definition every backend applies (PostgreSQL through `over_capacity_sql`, which must
    stay the same expression); the tolerance is `TOLERANCE x max(1, limit)`.
    """
    limit = capacity * ceiling
    return used + quantity > limit + TOLERANCE * max(1.0, limit)


def headroom(used: float, capacity: float, ceiling: float = 1.0) -> float:
    """What a cell can still grant under the capacity rule: `ceiling x capacity − used`, never below 0
    (a quantity up to it is never `over_capacity`)."""
    return max(capacity * ceiling - used, 0.0)


def over_capacity_sql(used: str, quantity: str, capacity: str, ceiling: str) -> str:
    """`over_capacity` as a SQL boolean expression over the given column/parameter names."""
    limit = f"{capacity} * {ceiling}"
    return f"{used} + {quantity} > {limit} + {TOLERANCE!r} * greatest(1.0, {limit})"


def short_resources(
    windows: Iterable[Mapping[str, Sequence[float]]], requirements: Mapping[str, float], ceiling: float = 1.0
) -> tuple[str, ...]:
    """Requested resources the pre-allocation cannot grant, sorted; () when the reservation fits.

    `windows` holds one {resource_type: (capacity, used)} mapping per window the session overlaps.
    With no window at all every requested resource is short; otherwise a resource is short when
    some window has no cell for it or the cell is `over_capacity`.
    """
    short: set[str] | None = None
    overlapped = False
    for cells in windows:
        overlapped = True
        for resource_type, quantity in requirements.items():
            cell = cells.get(resource_type)
            # Within the limit itself a cell always fits (the tolerance only widens it), so the rule is
            # only evaluated near or above the limit: the in-memory ledger's hot path skips the call.
            if cell is None or (
                cell[1] + quantity > cell[0] * ceiling and over_capacity(cell[1], quantity, cell[0], ceiling)
            ):
                short = (short or set()) | {resource_type}
    if not overlapped:
        return tuple(sorted(requirements))
    return tuple(sorted(short)) if short else ()


def fits(
    requirements: Mapping[str, float], used: Mapping[str, float], capacity: Mapping[str, float]
) -> bool:
    """True when every requirement fits in capacity - used (used by the on-demand pools)."""
    for resource_type, quantity in requirements.items():
        if over_capacity(used.get(resource_type, 0.0), quantity, capacity.get(resource_type, 0.0)):
            return False
    return True
