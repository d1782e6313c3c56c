"""Inter-Region Coordinator: serve each peering request from the pre-allocation, else on demand.

Decision order (DESIGN, IRC box): validate → pre-allocated (low latency, capacity already up)
→ on demand from the pools snapshot (medium latency, cold launch) → failure naming the short
resources. The coordinator never raises to its caller: a bad plan means on-demand serving, a bad
request or an internal error means a failure response (DESIGN principle 4).
"""

from __future__ import annotations

import logging
import os
import threading
import uuid
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pipeline.irc.ledger import InMemoryLedger, Ledger
from pipeline.irc.models import PeeringRequest, PeeringResponse
from pipeline.irc.ondemand import OnDemandAllocator, PoolAllocator, UncheckedAllocator
from pipeline.irc.plan_source import (
    LoadedPlan,
    PlanUnavailable,
    PreAllocationTable,
    load_plan,
    load_pools,
    read_latest_plan_id,
)
from pipeline.irc.validation import InvalidRequest, ValidRequest, validate_request

log = logging.getLogger(__name__)

PREALLOCATED_PREFIX = "pre-"
ON_DEMAND_PREFIX = "od-"


@dataclass(frozen=True)
class _PlanState:
    """What one load of `plans/LATEST` produced; swapped as a whole (seam for live reload)."""

    plan: LoadedPlan | None
    error: str | None  # why there is no usable plan
    pools: PreAllocationTable | None
    known_regions: frozenset[str] | None  # None: nothing loaded, check the name pattern only


class Coordinator:
    """Request-time decision maker over one lake; thread-safe, safe to share across threads."""

    def __init__(
        self,
        lake_root: str | os.PathLike[str],
        ledger: Ledger | None = None,
        on_demand: OnDemandAllocator | None = None,
    ) -> None:
        self._lake_root = lake_root
        self._ledger: Ledger = ledger if ledger is not None else InMemoryLedger()
        self._counters: Counter[str] = Counter()
        self._counters_lock = threading.Lock()
        self._state = self._load_state()
        if on_demand is None:
            pools = self._state.pools
            on_demand = PoolAllocator(pools) if pools is not None else UncheckedAllocator()
        self._on_demand: OnDemandAllocator = on_demand

    # -- public API ----------------------------------------------------------------------------

    @property
    def plan(self) -> LoadedPlan | None:
        """The plan in use, or None when serving on demand only."""
        return self._state.plan

    @property
    def plan_error(self) -> str | None:
        """Why no plan is in use (None when one is)."""
        return self._state.error

    def metrics(self) -> dict[str, int]:
        """Counters by outcome (requests, preallocated, on_demand, failed_*, served_without_plan)."""
        with self._counters_lock:
            return dict(self._counters)

    def handle_peering_request(self, request: PeeringRequest) -> PeeringResponse:
        """Decide one request. Never raises."""
        self._count("requests")
        try:
            return self._handle(request)
        except Exception as exc:  # noqa: BLE001 - the caller must never see an exception
            log.exception("IRC internal error on request %r", getattr(request, "request_id", None))
            self._count("failed_internal")
            return PeeringResponse(
                request_id=str(getattr(request, "request_id", "")),
                status="failure",
                path="none",
                latency_class=None,
                allocation_id=None,
                message=f"Internal error: {type(exc).__name__}: {exc}",
                region=None,
                plan_id=self._plan_id,
            )

    def release(self, allocation_id: str) -> bool:
        """Give an allocation's capacity back to where it came from; False if unknown/released."""
        try:
            if not isinstance(allocation_id, str):
                return False
            if allocation_id.startswith(PREALLOCATED_PREFIX):
                released = self._ledger.release(allocation_id)
            elif allocation_id.startswith(ON_DEMAND_PREFIX):
                released = self._on_demand.release(allocation_id)
            else:
                return False
            if released:
                self._count("released")
            return released
        except Exception:  # noqa: BLE001
            log.exception("IRC release of %r failed", allocation_id)
            return False

    # -- decision ------------------------------------------------------------------------------

    def _handle(self, request: PeeringRequest) -> PeeringResponse:
        state = self._state
        try:
            valid = validate_request(request, state.known_regions)
        except InvalidRequest as exc:
            self._count("failed_validation")
            return self._response(
                getattr(request, "request_id", ""), "failure", "none", None, None,
                f"Invalid request: {exc}", None,
            )

        region = valid.destination_region
        reason = self._try_preallocated(state, valid)
        if isinstance(reason, PeeringResponse):
            return reason

        if state.plan is None:
            self._count("served_without_plan")
        allocation_id = ON_DEMAND_PREFIX + uuid.uuid4().hex
        if self._on_demand.try_allocate(region, valid.requirements, allocation_id):
            self._count("on_demand")
            caveat = "" if self._on_demand.checks_capacity else " (no pool snapshot: capacity not verified)"
            return self._response(
                valid.request_id, "success", "on_demand", "medium", allocation_id,
                f"Served on demand in {region}: {reason}{caveat}", region,
            )

        self._count("failed_insufficient")
        return self._response(
            valid.request_id, "failure", "none", None, None,
            f"Insufficient resources in {region}: {self._shortfall(region, valid.requirements)}; "
            f"pre-allocation: {reason}",
            region,
        )

    def _try_preallocated(self, state: _PlanState, valid: ValidRequest) -> PeeringResponse | str:
        """A success response from the pre-allocation, or the reason it could not serve."""
        plan = state.plan
        if plan is None:
            return f"no plan loaded ({state.error})"
        at = valid.requested_at
        if at >= plan.valid_to:
            return f"plan {plan.plan_id} expired at {plan.valid_to.isoformat()}"
        if at < plan.valid_from:
            return f"plan {plan.plan_id} not valid before {plan.valid_from.isoformat()}"
        window = plan.window_at(at)
        if window is None:
            return f"plan {plan.plan_id} has no window covering {at.isoformat()}"

        region = valid.destination_region
        planned = window.allocation.get(region, {})
        unplanned = sorted(rt for rt in valid.requirements if planned.get(rt, 0.0) <= 0.0)
        if unplanned:
            return f"nothing pre-allocated for {', '.join(unplanned)} in {region}, window {window.key}"

        allocation_id = PREALLOCATED_PREFIX + uuid.uuid4().hex
        try:
            reserved = self._ledger.try_reserve(window.key, region, valid.requirements, allocation_id)
        except Exception as exc:  # noqa: BLE001 - a broken ledger degrades to on-demand
            log.exception("IRC ledger error")
            return f"ledger unavailable ({type(exc).__name__}: {exc})"
        if not reserved:
            return f"pre-allocation exhausted in {region}, window {window.key}"
        self._count("preallocated")
        return self._response(
            valid.request_id, "success", "preallocated", "low", allocation_id,
            f"Pre-allocated in {region} from plan {plan.plan_id}, window {window.key}", region,
        )

    def _shortfall(self, region: str, requirements: Mapping[str, float]) -> str:
        available = self._on_demand.available(region)
        short = [
            f"{rt} (requested {q:g}, available {available.get(rt, 0.0):g})"
            for rt, q in sorted(requirements.items())
            if q > available.get(rt, 0.0)
        ]
        return ", ".join(short) if short else "on-demand pool taken by concurrent requests"

    # -- plumbing ------------------------------------------------------------------------------

    def _load_state(self) -> _PlanState:
        """Load LATEST; on any failure keep whatever pools snapshot is readable."""
        try:
            plan_id = read_latest_plan_id(self._lake_root)
        except PlanUnavailable as exc:
            log.warning("IRC: no plan, serving on demand: %s", exc)
            return _PlanState(plan=None, error=str(exc), pools=None, known_regions=None)
        except Exception as exc:  # noqa: BLE001
            log.exception("IRC: unexpected error reading LATEST")
            return _PlanState(plan=None, error=f"{type(exc).__name__}: {exc}", pools=None, known_regions=None)

        try:
            plan = load_plan(self._lake_root, plan_id)
            self._ledger.load_capacities(
                {w.key: w.allocation for w in plan.windows}
            )
            return _PlanState(plan=plan, error=None, pools=plan.pools, known_regions=plan.regions)
        except Exception as exc:  # noqa: BLE001 - PlanUnavailable, or a failing ledger backend
            if not isinstance(exc, PlanUnavailable):
                log.exception("IRC: unexpected error loading plan %s", plan_id)
            log.warning("IRC: plan %s unusable, serving on demand: %s", plan_id, exc)
            error = str(exc) if isinstance(exc, PlanUnavailable) else f"{type(exc).__name__}: {exc}"
        try:
            pools: PreAllocationTable | None = load_pools(self._lake_root, plan_id)
        except Exception:  # noqa: BLE001
            pools = None
        known = frozenset(pools) if pools else None
        return _PlanState(plan=None, error=error, pools=pools, known_regions=known)

    @property
    def _plan_id(self) -> str | None:
        return self._state.plan.plan_id if self._state.plan is not None else None

    def _response(
        self,
        request_id: Any,
        status: str,
        path: str,
        latency_class: str | None,
        allocation_id: str | None,
        message: str,
        region: str | None,
    ) -> PeeringResponse:
        return PeeringResponse(
            request_id=str(request_id) if request_id is not None else "",
            status=status,  # type: ignore[arg-type]
            path=path,  # type: ignore[arg-type]
            latency_class=latency_class,  # type: ignore[arg-type]
            allocation_id=allocation_id,
            message=message,
            region=region,
            plan_id=self._plan_id,
        )

    def _count(self, name: str) -> None:
        with self._counters_lock:
            self._counters[name] += 1
