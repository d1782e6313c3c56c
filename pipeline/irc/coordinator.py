"""Inter-Region Coordinator: serve each peering request from the pre-allocation, else on demand.

Decision (the seed's pseudocode, DESIGN "IRC" box)::

    validate(request)                       → failure "Invalid request: …" (never an exception)
    plan  = the published plan valid at requested_at (the previous one before the new one starts)
    if plan holds the destination's resources in the window of requested_at
       and the ledger reserves them in every window the session overlaps (priority ceiling):
           → success, preallocated, latency low (provisioning 0 s)
    elif the plan holds warm (stopped, pre-initialised) capacity of the destination in that window
       and the ledger reserves it in every window the session overlaps (`<region>/warm` rows) -
       all of the request, or what the pre-allocation still holds topped up with warm capacity:
           → success, warm, latency warm (modeled: WARM_START_SHARE of the on-demand provisioning time)
    elif the on-demand allocator grants them from the region's pool:
           → success, on_demand, latency medium (modeled provisioning time)
    elif the plan's failover partner of the destination holds them (its pre-allocation, which
       keeps the destination's N+1 headroom) - same ledger rule and priority ceiling:
           → success, failover, latency medium (provisioning 0 s, but the session crosses regions)
    elif a region the plan relocated the destination's demand to in this window holds them
       (most relocated first; each in its pre-allocation, same rule):
           → success, relocated, latency medium
    else   → failure "Insufficient resources in <region>: <short resources>"

**Serving topology.** `serving_region` in the response says where the capacity is held (`region`
stays the destination). The alternates come from the plan's manifest (`redundancy.<region>.partner`
and `relocations`, read once per plan load by `plan_source.read_topology`); only the plan's
pre-allocation is used there, never another region's on-demand pool (that would be slow *and*
cross-region). A region **marked unhealthy** is skipped entirely - neither its pre-allocation nor
its pool serves, so its requests go straight to its partner, then its relocation targets, and
fail with "Region unavailable: ..." (miss reason `region_unhealthy`) when none can; an unhealthy
region is never an alternate either. Alternates are tried only when the destination could not
serve (pre-allocation *and* pool), so the same-region paths keep priority and the common path pays
one dict lookup. Failover/relocated grants are not hits of the destination's plan (path differs),
and carry the destination's miss reason, so the feedback controller still sees the miss.

**Region health** is one file shared by the replicas of a lake, `<lake>/irc/unhealthy_regions`
(`health_file=` names another, local or s3://; False keeps marks in this process only): one
`region [note]` a line, `#` comments; an operator may edit it by hand. `mark_unhealthy(region,
note)` / `mark_healthy(region)` rewrite it atomically and take effect here at once; every replica
re-reads it with each plan poll (`reload_interval_s`) or on `refresh_health()`. An unreadable or
malformed file keeps the marks in force (counted as `health_read_failures`). Two admin calls at
the same instant on different replicas may lose one mark (read-modify-write of one small file):
check `unhealthy_regions` after marking. The HTTP service has no admin route yet (it has no
authentication: anyone could take a region out of service).

**Priority rule for scarce pre-allocated capacity.** A request of priority p is granted
pre-allocated capacity only while, after the grant, usage stays within `ceiling[p] x capacity`
in every window it overlaps, for every resource. Defaults: low 0.85, normal 0.95, high and
critical 1.0 - the last 5 % of each window's pre-allocation is kept for high/critical requests
(and the last 15 % is never given to low), so a burst of routine sessions cannot take the
capacity an urgent one needs. Below those levels every priority is served first come, first
served. A request refused by its ceiling goes on demand like any other miss.

**Time.** A session spans [requested_at, requested_at + duration_s) and is reserved in every
plan window it overlaps; it expires at its end. *When* it expires is decided by a trusted clock,
never by what a request claims: expiry runs at min(requested_at, clock()) as requests arrive
(inline in the in-memory ledger, every `sweep_interval_s` and on exhaustion for the shared
ledgers), so a request dated in 2099 cannot free a session that is still running, and a request
dated in the past can only free sessions that ended before its date - which the clock has passed
too. `clock` is the wall clock (`time.time`) by default. Beyond that:

* a request dated more than `max_clock_skew_s` (default 300 s) ahead of the clock is invalid
  ("Invalid request: requested_at ... is ... ahead of this coordinator's clock"): its session
  could only be held on demand, for as long as the client pretends;
* a request dated in the past is decided as of its date (a late delivery, `peerscale irc request
  --at`, a replay of a historical stream against the default clock): the plan valid then, if any;
* replays pass their own clock: `clock=REQUEST_TIME` lets the replayed requests' own times drive
  expiry (deterministic, whatever the wall clock says). It is meant for private ledgers; the
  shared ones (SQLite, PostgreSQL) never expire a session before *their* clock (the host's, the
  server's) says it ended, whichever clock a replica passes, so a skewed or replaying replica
  cannot free another replica's live sessions either.

**Plans** come from `plans/LATEST` (or are pinned with `plan_id=`). A watcher thread polls the
pointer every `reload_interval_s`; a new plan is loaded beside the current one and swapped in
with one reference assignment, so requests in flight finish on the plan they started with. A
plan's files are checked against the sha256 in its manifest when it is loaded (never per
request). A corrupt, half-written or unverifiable plan is counted and retried at the next poll
while the current plan keeps serving; with no plan in use yet, the newest verified published
plan is adopted instead (`plan_fallbacks`), so its pools still bound on-demand serving.
Requests at or after a plan's `valid_to` are served on demand and counted.

The coordinator never raises to its caller (DESIGN principle 4).
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import os
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, NamedTuple

from pipeline.irc import health
from pipeline.irc.ledger import DEFAULT_RETENTION_S, InMemoryLedger, Ledger
from pipeline.irc.ledger.protocol import headroom
from pipeline.irc.messages import Path, PeeringRequest, PeeringResponse, preallocated_response
from pipeline.irc.metrics import DecisionMetrics
from pipeline.irc.ondemand import LedgerPoolAllocator, OnDemandAllocator, PoolAllocator
from pipeline.irc.outcomes import OutcomeLog, clean_record, default_instance
from pipeline.irc.plan_source import (
    LoadedPlan,
    PlanCorrupt,
    PlanUnavailable,
    PlanWindow,
    latest_ref,
    latest_signature,
    load_newest_verified,
    load_pools,
    load_signature,
    warm_key,
)
from pipeline.irc.validation import InvalidRequest, ValidRequest, validate_request

log = logging.getLogger(__name__)

PREALLOCATED_PREFIX = "pre-"
ON_DEMAND_PREFIX = "od-"
WARM_PREFIX = "warm-"
TOP_UP_SUFFIX = "+preallocated"  # the pre-allocated part of a topped-up warm start (released with it)
# A warm-pool instance resumes from Stopped in about an eighth of a cold launch's wait (tens of seconds
# instead of minutes): the same assumption as the planner's warm-start penalty (pipeline.plan.warm).
WARM_START_SHARE = 1.0 / 8.0
DEFAULT_PRIORITY_CEILINGS: Mapping[str, float] = {"low": 0.85, "normal": 0.95, "high": 1.0, "critical": 1.0}
# Misses the planner's τ is responsible for (the feedback controller counts only these).
CAPACITY_MISSES = frozenset({"exhausted", "not_planned", "no_window"})
# A shared ledger that refuses a request sweeps expired sessions and retries, at most this often
# (in request time), so that a run of refusals does not turn into a run of sweeps.
EXHAUSTION_SWEEP_INTERVAL_S = 1.0
# A reload keeps the previous plan for late requests unless it ended this long before the new one
# starts: the ledgers drop windows after the same horizon, so it could serve nothing more.
PREVIOUS_PLAN_HORIZON_S = DEFAULT_RETENTION_S
NS_PER_US = 1000.0  # decision latencies are measured in ns, logged in µs
# `clock=REQUEST_TIME`: a replay's clock - the requests' own times drive expiry (see the module doc).
REQUEST_TIME = None
# How far ahead of the clock a request may be dated (client clocks drift; NTP keeps them within
# seconds, so five minutes is generous): beyond it the request is invalid.
DEFAULT_MAX_CLOCK_SKEW_S = 300.0
_EMPTY: Mapping[str, float] = {}


@dataclass(frozen=True)
class _PlanState:
    """What one load of the plan produced; swapped as a whole (live reload)."""

    plan: LoadedPlan | None
    previous: LoadedPlan | None  # serves requests dated before `plan.valid_from`
    error: str | None  # why there is no usable plan / why the last reload failed
    known_regions: frozenset[str] | None  # None: nothing loaded, check the name pattern only
    signature: tuple[str, float | None] | None  # LATEST (plan_id, mtime) the plan came from


# The plan serving a request time and its window containing it (a plain tuple: built per request).
_Located = tuple[LoadedPlan, PlanWindow]


class _Miss(NamedTuple):
    """Why the pre-allocation did not serve a request; the on-demand and failure steps report it."""

    reason: str  # PeeringResponse.miss_reason
    detail: str  # readable, quoted in the response message
    plan_id: str | None  # the plan the decision was taken under
    short: tuple[str, ...] = ()  # resources the pre-allocation lacked


def _unplanned(valid: ValidRequest, located: _Located, region: str) -> _Miss | None:
    """A miss when the window pre-allocates nothing of some requested resource in the region."""
    plan, window = located
    requirements = valid.requirements
    planned = window.allocation.get(region, _EMPTY)
    for rt in requirements:
        if planned.get(rt, 0.0) <= 0.0:
            unplanned = tuple(sorted(r for r in requirements if planned.get(r, 0.0) <= 0.0))
            detail = f"nothing pre-allocated for {', '.join(unplanned)} in {region}, window {window.key}"
            return _Miss("not_planned", detail, plan.plan_id, unplanned)
    return None


def _units(requirements: Mapping[str, float]) -> str:
    return ", ".join(f"{quantity:g} {resource_type}" for resource_type, quantity in requirements.items() if quantity)


def _failure(
    request_id: Any, message: str, *, region: str | None = None, miss: _Miss | None = None
) -> PeeringResponse:
    """A failure response; `request_id` is whatever the request carried (an invalid one may hold anything)."""
    return PeeringResponse(
        request_id=request_id if isinstance(request_id, str) else ("" if request_id is None else str(request_id)),
        status="failure",
        path="none",
        latency_class=None,
        allocation_id=None,
        message=message,
        region=region,
        plan_id=None if miss is None else miss.plan_id,
        miss_reason=None if miss is None else miss.reason,
        short_resources=() if miss is None else miss.short,
    )


class Coordinator:
    """Request-time decision maker over one lake; thread-safe, safe to share across threads.

    Parameters
    ----------
    lake_root: local path or s3:// URI of the lake holding `plans/`.
    ledger: pre-allocation ledger (default: a new `InMemoryLedger`); share a `SQLiteLedger` or
        `PostgresLedger` between processes/replicas.
    on_demand: on-demand allocator (default: `PoolAllocator` over the plan's pools snapshot,
        refreshed on every reload).
    plan_id: pin one published plan instead of following `LATEST` (shadow candidates, replays).
    reload_interval_s: poll period of `LATEST`; None disables the watcher (call `reload()`).
    outcomes: True logs decisions to `<lake>/raw/irc_outcomes`; an `OutcomeLog` logs there; False
        disables logging.
    priority_ceilings: share of pre-allocated capacity each priority may fill (see module doc).
    sweep_interval_s: period of expiry sweeps for shared ledgers (in the time expiry runs at).
    clock: the trusted clock (POSIX seconds) expiry never runs past, `time.time` by default;
        `REQUEST_TIME` (None) for replays: the requests' own times (see the module doc).
    max_clock_skew_s: how far ahead of `clock` a request may be dated before it is invalid.
    metrics: where decisions and events are counted (default: a new `DecisionMetrics`); the HTTP
        service passes a subclass that also feeds prometheus_client (`pipeline.irc.prometheus`).
    """

    def __init__(
        self,
        lake_root: str | os.PathLike[str],
        ledger: Ledger | None = None,
        on_demand: OnDemandAllocator | None = None,
        *,
        plan_id: str | None = None,
        reload_interval_s: float | None = 10.0,
        outcomes: bool | OutcomeLog = True,
        priority_ceilings: Mapping[str, float] | None = None,
        sweep_interval_s: float = 5.0,
        clock: Callable[[], float] | None = time.time,
        max_clock_skew_s: float = DEFAULT_MAX_CLOCK_SKEW_S,
        instance: str | None = None,
        name: str = "production",
        health_file: str | os.PathLike[str] | bool = True,
        metrics: DecisionMetrics | None = None,
    ) -> None:
        self._lake_root = lake_root
        self._unhealthy: Mapping[str, str] = {}  # region -> operator's note; replaced whole, read lock-free
        self._health_lock = threading.Lock()
        self._health_error: str | None = None
        if health_file is True:
            self._health_file: str | None = health.default_path(lake_root)
        else:
            self._health_file = None if health_file is False else os.fspath(health_file)
        self.name = name
        self._ledger: Ledger = ledger if ledger is not None else InMemoryLedger()
        self._owns_ledger = ledger is None
        self._owns_on_demand = on_demand is None
        if on_demand is None:  # a shared ledger shares the on-demand pools too (replicas never over-admit)
            on_demand = LedgerPoolAllocator(self._ledger) if getattr(self._ledger, "shared", False) else PoolAllocator(None)
        self._on_demand: OnDemandAllocator = on_demand
        self._ceilings = dict(DEFAULT_PRIORITY_CEILINGS)
        if priority_ceilings:
            for priority, ceiling in priority_ceilings.items():
                if not 0.0 < float(ceiling) <= 1.0:
                    raise ValueError(f"priority ceiling for {priority!r} must be in (0, 1], got {ceiling!r}")
                self._ceilings[priority] = float(ceiling)
        if not 0.0 <= max_clock_skew_s < float("inf"):
            raise ValueError(f"max_clock_skew_s must be a finite number of seconds >= 0, got {max_clock_skew_s!r}")
        self._pinned = plan_id
        self._sweep_interval_s = sweep_interval_s
        self._clock = clock
        self._max_clock_skew_s = max_clock_skew_s
        self._next_sweep_s = float("-inf")
        self._last_exhaustion_sweep_s = float("-inf")
        self._last_at_s = 0.0
        self._instance = instance or default_instance()
        # Allocation ids: a random per-coordinator prefix (96 bits) + a counter - unique across
        # replicas without a urandom() syscall per request (next() on a count is atomic).
        self._id_prefix = uuid.uuid4().hex[:24]
        self._ids = itertools.count(1)
        self._metrics = metrics if metrics is not None else DecisionMetrics()
        self._reload_lock = threading.Lock()
        self._failed_signature: tuple[str, float | None] | None = None
        if outcomes is True:
            self._outcomes: OutcomeLog | None = OutcomeLog(lake_root)
            self._owns_outcomes = True
        elif isinstance(outcomes, OutcomeLog):
            self._outcomes, self._owns_outcomes = outcomes, False
        else:
            self._outcomes, self._owns_outcomes = None, False
        self._state = _PlanState(plan=None, previous=None, error="not loaded yet", known_regions=None, signature=None)
        self._initial_load()
        self.refresh_health()
        self._watcher_stop = threading.Event()
        self._watcher: threading.Thread | None = None
        if reload_interval_s is not None and plan_id is None:
            self._watcher = threading.Thread(
                target=_watch,
                args=(weakref.ref(self), self._watcher_stop, float(reload_interval_s)),
                name="irc-plan-watcher",
                daemon=True,
            )
            self._watcher.start()

    # -- public API ----------------------------------------------------------------------------

    @property
    def plan(self) -> LoadedPlan | None:
        """The plan in use, or None when serving on demand only."""
        return self._state.plan

    @property
    def plan_error(self) -> str | None:
        """Why no plan is in use, or why the last reload failed (None when all is well)."""
        return self._state.error

    @property
    def ledger(self) -> Ledger:
        return self._ledger

    @property
    def on_demand(self) -> OnDemandAllocator:
        return self._on_demand

    @property
    def outcome_log(self) -> OutcomeLog | None:
        return self._outcomes

    @property
    def priority_ceilings(self) -> dict[str, float]:
        return dict(self._ceilings)

    def metrics(self) -> dict[str, int]:
        """Flat counters: requests, preallocated, on_demand, failed_<kind>, miss_<reason>, events."""
        out = self._metrics.snapshot()
        if self._outcomes is not None:
            stats = self._outcomes.stats()
            out["outcomes_written"], out["outcomes_dropped"] = stats["written"], stats["dropped"]
        return out

    def handle_peering_request(self, request: PeeringRequest) -> PeeringResponse:
        """Decide one request. Never raises."""
        decided = self._decide_timed(request)
        self._record(request, *decided)
        return decided[0]

    def handle_batch(self, requests: Sequence[PeeringRequest]) -> list[PeeringResponse]:
        """Decide several requests, in order, as `handle_peering_request` would one by one - but in one ledger
        transaction when the ledger offers it (`SQLiteLedger.batch`: group commit, one commit for all). Never raises.

        The responses, metrics and outcome records exist only once the transaction committed; when it could
        not (the commit failed, the database rolled it back), none of its grants happened and every request
        is decided again on its own. The HTTP service batches the requests that arrive together.
        """
        batch = getattr(self._ledger, "batch", None)
        on_demand = self._on_demand
        # Only when every write of a decision goes to that one transaction (the on-demand pool too): else a
        # batch that failed would be decided again over grants that stayed.
        same_store = isinstance(on_demand, LedgerPoolAllocator) and on_demand.ledger is self._ledger
        if batch is None or not same_store or len(requests) < 2:
            return [self.handle_peering_request(request) for request in requests]
        try:
            with batch():
                decided = [self._decide_timed(request) for request in requests]
        except Exception as exc:
            log.warning("IRC: a batch of %d decisions could not be committed (%s: %s); deciding them one by one",
                        len(requests), type(exc).__name__, exc)
            self._metrics.count("ledger_errors")
            return [self.handle_peering_request(request) for request in requests]
        for request, outcome in zip(requests, decided):
            self._record(request, *outcome)
        return [outcome[0] for outcome in decided]

    def _decide_timed(self, request: Any) -> tuple[PeeringResponse, ValidRequest | None, str | None, int]:
        """(response, valid request, failure kind, ns spent): the decision, not yet counted nor logged."""
        started = time.perf_counter_ns()
        try:
            response, valid = self._decide(request)
            failure = None if response.status == "success" else "invalid" if valid is None else "insufficient"
        except Exception as exc:
            log.exception("IRC internal error on request %r", getattr(request, "request_id", None))
            self._metrics.count("internal_errors")
            response = _failure(getattr(request, "request_id", ""), f"Internal error: {type(exc).__name__}: {exc}")
            valid, failure = None, "internal"
        return response, valid, failure, time.perf_counter_ns() - started

    def _record(
        self, request: Any, response: PeeringResponse, valid: ValidRequest | None, failure: str | None, elapsed: int
    ) -> None:
        """Count a decision and queue its outcome record (after its ledger writes are durable)."""
        self._metrics.observe(response.path, response.status, response.miss_reason, failure, elapsed)
        if self._outcomes is not None:
            try:
                self._outcomes.submit(self._outcome(request, valid, response, elapsed))
            except Exception:
                log.exception("IRC: could not queue the outcome of %r", response.request_id)

    def release(self, allocation_id: str | None) -> bool:
        """Give an allocation's capacity back to where it came from; False if unknown/released/expired
        (or not an allocation id at all: the HTTP service passes on whatever the client sent)."""
        try:
            if not isinstance(allocation_id, str):
                return False
            if allocation_id.startswith((PREALLOCATED_PREFIX, WARM_PREFIX)):
                released = self._ledger.release(allocation_id)
                if allocation_id.startswith(WARM_PREFIX) and not allocation_id.endswith(TOP_UP_SUFFIX):
                    self._ledger.release(allocation_id + TOP_UP_SUFFIX)  # a top-up's part, if it had one
            elif allocation_id.startswith(ON_DEMAND_PREFIX):
                released = self._on_demand.release(allocation_id)
            else:
                return False
            if released:
                self._metrics.count("released")
            return released
        except Exception:
            log.exception("IRC release of %r failed", allocation_id)
            return False

    def sweep(self, now_s: float | None = None) -> int:
        """Return every allocation that expired by `now_s` (default: the latest time expiry ran at),
        never past the clock."""
        now = self._last_at_s if now_s is None else now_s
        if self._clock is not None:
            trusted = self._clock()
            if not now <= trusted:  # also a NaN
                now = trusted
        released = 0
        try:
            released += self._ledger.sweep(now)
        except Exception:
            log.exception("IRC ledger sweep failed")
            self._metrics.count("ledger_errors")
        released += self._on_demand.sweep(now)
        if released:
            self._metrics.count("expired", released)
        return released

    def reload(self, force: bool = False) -> bool:
        """Adopt the plan LATEST points to if it changed (or `force`); True when a plan was adopted.

        On any failure the current plan stays in use and the failure is counted.
        """
        with self._reload_lock:
            signature: tuple[str, float | None] | None = None
            error: str | None = None
            try:
                if self._pinned is not None:
                    signature = (self._pinned, None)
                    if not force and self._state.signature == signature:
                        return False
                else:
                    signature = latest_signature(self._lake_root)
                    if not force and signature == self._state.signature:
                        return False
                plan = load_signature(self._lake_root, signature[0])
                self._ledger.load_capacities(plan.capacity_rows_full(), plan.plan_id)
            except Exception as exc:
                fallback = self._fallback_plan(exc, signature)
                if fallback is None:
                    self._reload_failed(exc, signature)
                    return False
                plan, error = fallback, f"LATEST unusable, serving the newest verified plan instead: {exc}"
            self._load_pools(plan.pools, plan.plan_id)
            current = self._state.plan
            previous = current if current is not None and current.plan_id != plan.plan_id else self._state.previous
            if previous is not None and previous.valid_to_s <= plan.valid_from_s - PREVIOUS_PLAN_HORIZON_S:
                previous = None
            self._state = _PlanState(
                plan=plan, previous=previous, error=error, known_regions=plan.regions, signature=signature
            )
            if error is None:
                self._failed_signature = None
            self._metrics.count("plan_reloads")
            log.info("IRC: serving plan %s (%d windows)", plan.plan_id, len(plan.windows))
            return True

    def _fallback_plan(self, exc: BaseException, signature: tuple[str, float | None] | None) -> LoadedPlan | None:
        """When LATEST is corrupt or unverifiable and nothing is being served yet, the newest verified
        published plan (counted as `plan_fallbacks`, logged once per broken publication); else None."""
        if self._pinned is not None or self._state.plan is not None or not isinstance(exc, PlanUnavailable):
            return None
        if signature is None and not isinstance(exc, PlanCorrupt):
            return None  # no LATEST at all: nothing was published live yet, so no older plan stands in
        try:
            plan = load_newest_verified(self._lake_root, skip=latest_ref(self._lake_root) if signature else None)
            self._ledger.load_capacities(plan.capacity_rows_full(), plan.plan_id)
        except Exception:
            return None
        self._metrics.count("plan_fallbacks")
        self._metrics.count("plan_reload_failures")
        if signature != self._failed_signature:
            self._failed_signature = signature
            log.warning("IRC: LATEST unusable (%s); serving the newest verified plan %s attempt %s instead",
                        exc, plan.plan_id, plan.attempt)
        return plan

    # -- region health (serving topology) -------------------------------------------------------

    @property
    def unhealthy_regions(self) -> dict[str, str]:
        """Regions marked unhealthy, with the operator's note: never served, their requests fail over."""
        return dict(self._unhealthy)

    @property
    def health_error(self) -> str | None:
        """Why the last read of the health file failed (None when it was read or is absent)."""
        return self._health_error

    def refresh_health(self) -> bool:
        """Re-read the health file (the watcher does it every poll); False when it could not be read
        (the previous marks stay in force and the failure is counted)."""
        if self._health_file is None:
            return True
        try:
            marks = health.read_marks(self._health_file)
        except Exception as exc:
            self._metrics.count("health_read_failures")
            if self._health_error is None:
                log.warning("IRC: cannot read the health file %s, keeping the marks in force: %s", self._health_file, exc)
            self._health_error = f"{type(exc).__name__}: {exc}"
            return False
        self._health_error = None
        if marks != self._unhealthy:
            log.warning("IRC: regions marked unhealthy: %s", ", ".join(sorted(marks)) or "none")
            self._unhealthy = marks
        return True

    def mark_unhealthy(self, region: str, note: str = "") -> None:
        """Stop serving from `region` (admin call): written to the health file so every replica that
        reads it follows at its next poll. Raises ValueError on a malformed region name."""
        self._set_health(region, health.clean_note(note))

    def mark_healthy(self, region: str) -> None:
        """Serve from `region` again (admin call; see `mark_unhealthy`)."""
        self._set_health(region, None)

    def _set_health(self, region: str, note: str | None) -> None:
        health.check_region(region)
        with self._health_lock:
            if self._health_file is not None:  # other replicas' marks since our last poll are kept
                marks = health.set_mark(self._health_file, region, note)
            else:
                marks = dict(self._unhealthy)
                if note is None:
                    marks.pop(region, None)
                else:
                    marks[region] = note
            self._unhealthy = marks
        log.warning("IRC: region %s marked %s", region, "healthy" if note is None else f"unhealthy ({note})")

    def metrics_text(self) -> str:
        """All metrics in the Prometheus text format (decisions, latency, plan age, utilization, outcomes)."""
        return self._metrics.render(self.gauges())

    def close(self) -> None:
        """Stop the watcher, flush the outcome log, close owned resources. Idempotent."""
        self._watcher_stop.set()
        if self._outcomes is not None and self._owns_outcomes:
            self._outcomes.close()
        elif self._outcomes is not None:
            self._outcomes.flush()
        if self._owns_ledger:
            self._ledger.close()

    def __enter__(self) -> Coordinator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- decision: validate → plan window → pre-allocated → on demand → failure ----------------

    def _decide(self, request: Any) -> tuple[PeeringResponse, ValidRequest | None]:
        """The decision of the module docstring, one named step per line; (response, valid request)."""
        state = self._state
        try:
            valid = validate_request(request, state.known_regions)
            now_s = self._advance_time(valid)
        except InvalidRequest as exc:
            return _failure(getattr(request, "request_id", ""), f"Invalid request: {exc}"), None
        located = self._plan_window(state, valid)
        if valid.destination_region in self._unhealthy:
            miss = self._unhealthy_miss(valid, located)
        else:
            outcome = located if isinstance(located, _Miss) else self._serve_preallocated(valid, located, now_s)
            if isinstance(outcome, PeeringResponse):
                return outcome, valid
            miss = outcome
            served = None if isinstance(located, _Miss) else self._serve_warm(valid, located, miss, now_s)
            if served is not None:
                return served, valid
            served = self._serve_on_demand(valid, miss, now_s)
            if served is not None:
                return served, valid
        if not isinstance(located, _Miss):
            served = self._serve_elsewhere(valid, located, miss, now_s)
            if served is not None:
                return served, valid
        return self._insufficient(valid, miss), valid

    def _advance_time(self, valid: ValidRequest) -> float:
        """The time expiry may run to for this request - min(requested_at, clock) - sweeping when due.

        Raises InvalidRequest for a request dated more than `max_clock_skew_s` ahead of the clock.
        """
        now_s = at_s = valid.start_s
        if self._clock is not None:
            trusted = self._clock()
            if at_s > trusted + self._max_clock_skew_s:
                raise InvalidRequest(
                    f"requested_at {valid.requested_at.isoformat()} is {at_s - trusted:,.0f} s ahead of this "
                    f"coordinator's clock ({_iso(trusted)}); at most {self._max_clock_skew_s:g} s of clock skew is "
                    "accepted - check the client's clock"
                )
            if now_s > trusted:
                now_s = trusted
        if now_s > self._last_at_s:
            self._last_at_s = now_s
        if now_s >= self._next_sweep_s:
            self._next_sweep_s = now_s + self._sweep_interval_s
            self.sweep(now_s)
        return now_s

    def _plan_window(self, state: _PlanState, valid: ValidRequest) -> _Located | _Miss:
        """The plan that serves the request time and its window there, or why there is none.

        Before the current plan starts, the previous plan serves the times it covers.
        """
        at_s = valid.start_s
        plan = state.plan
        if plan is None:
            self._metrics.count("served_without_plan")
            return _Miss("no_plan", f"no plan loaded ({state.error})", plan_id=None)
        if at_s >= plan.valid_to_s:
            self._metrics.count("plan_expired")
            return _Miss("plan_expired", f"plan {plan.plan_id} expired at {plan.valid_to.isoformat()}", plan.plan_id)
        if at_s < plan.valid_from_s:
            previous = state.previous
            if previous is None or not previous.valid_from_s <= at_s < previous.valid_to_s:
                detail = f"plan {plan.plan_id} not valid before {plan.valid_from.isoformat()}"
                return _Miss("plan_not_yet_valid", detail, plan.plan_id)
            plan = previous
        window = plan.window_at_s(at_s)
        if window is None:
            detail = f"plan {plan.plan_id} has no window covering {valid.requested_at.isoformat()}"
            return _Miss("no_window", detail, plan.plan_id)
        return plan, window

    def _serve_preallocated(
        self, valid: ValidRequest, located: _Located, now_s: float, region: str | None = None
    ) -> PeeringResponse | _Miss:
        """Reserve the planned capacity of `region` (default: the destination) within the priority's
        ceiling: a success, or why not."""
        plan, window = located
        region = valid.destination_region if region is None else region
        unplanned = _unplanned(valid, located, region)
        if unplanned is not None:
            return unplanned
        allocation_id = f"{PREALLOCATED_PREFIX}{self._id_prefix}{next(self._ids):x}"
        ceiling = self._ceilings.get(valid.priority, 1.0)
        try:
            short = self._reserve(allocation_id, valid, region, ceiling, now_s)
            if short and self._exhaustion_sweep_due(now_s) and self.sweep(now_s):
                short = self._reserve(allocation_id, valid, region, ceiling, now_s)  # expired sessions gave some back
        except Exception as exc:
            log.warning("IRC ledger error: %s: %s", type(exc).__name__, exc)
            self._metrics.count("ledger_errors")
            return _Miss("ledger_error", f"ledger unavailable ({type(exc).__name__}: {exc})", plan.plan_id)
        if short:
            detail = f"pre-allocation exhausted in {region} for {', '.join(short)}, window {window.key}"
            if ceiling < 1.0:
                detail += f" ({valid.priority} priority may use {ceiling:.0%} of it)"
            return _Miss("exhausted", detail, plan.plan_id, short)
        return preallocated_response(
            valid.request_id, allocation_id, f"Pre-allocated in {region} from plan {plan.plan_id}, window {window.key}",
            region, plan.plan_id,
        )

    def _reserve(
        self, allocation_id: str, valid: ValidRequest, region: str, ceiling: float, now_s: float
    ) -> tuple[str, ...]:
        """One ledger reservation of the request's session; () when granted, else the short resources."""
        return self._ledger.reserve(
            allocation_id, region, valid.requirements, valid.start_s, valid.end_s,
            ceiling=ceiling, priority=valid.priority, now_s=now_s,
        )

    def _unhealthy_miss(self, valid: ValidRequest, located: _Located | _Miss) -> _Miss:
        """Why the destination itself is skipped: an operator marked it unhealthy (module doc)."""
        region = valid.destination_region
        plan_id = located.plan_id if isinstance(located, _Miss) else located[0].plan_id
        note = self._unhealthy.get(region) or "no reason given"
        return _Miss("region_unhealthy", f"{region} is marked unhealthy ({note})", plan_id)

    def _serve_elsewhere(
        self, valid: ValidRequest, located: _Located, miss: _Miss, now_s: float
    ) -> PeeringResponse | None:
        """The destination could not serve: its failover partner's pre-allocation (the plan's N+1
        headroom), then the regions the plan relocated its demand to in this window; None when none can."""
        plan, window = located
        destination = valid.destination_region
        tried = {destination}
        for path, candidate in _alternates(plan, window, destination):
            if candidate in tried or candidate in self._unhealthy:
                continue
            tried.add(candidate)
            outcome = self._serve_preallocated(valid, located, now_s, region=candidate)
            if not isinstance(outcome, PeeringResponse):
                continue
            how = "failover partner (N+1 headroom)" if path == "failover" else "region the plan relocated its demand to"
            self._metrics.count(f"served_{path}")
            return dataclasses.replace(
                outcome,
                path=path,
                latency_class="medium",  # capacity is ready, but the session crosses regions
                message=f"Served from {candidate}, {destination}'s {how}, plan {plan.plan_id}, window {window.key}: "
                        f"{miss.detail}",
                region=destination,
                miss_reason=miss.reason,
                short_resources=miss.short,
            )
        return None

    def _exhaustion_sweep_due(self, now_s: float) -> bool:
        """A shared ledger that refuses a request sweeps expired sessions first - at most once per interval."""
        if self._ledger.sweeps_inline or now_s - self._last_exhaustion_sweep_s < EXHAUSTION_SWEEP_INTERVAL_S:
            return False
        self._last_exhaustion_sweep_s = now_s
        return True

    def _serve_warm(self, valid: ValidRequest, located: _Located, miss: _Miss, now_s: float) -> PeeringResponse | None:
        """Start the destination's warm capacity (its `<region>/warm` ledger rows), or None when the plan holds
        none there or the ledger cannot reserve it in every window the session overlaps."""
        plan, window = located
        region = valid.destination_region
        if not window.warm or not window.warm.get(region):  # no warm tier, or none planned here: no ledger call
            return None
        allocation_id = f"{WARM_PREFIX}{self._id_prefix}{next(self._ids):x}"
        part = None
        try:
            short = self._ledger.reserve(allocation_id, warm_key(region), valid.requirements, valid.start_s, valid.end_s,
                                         priority=valid.priority, now_s=now_s)
            if short:
                part = self._top_up(valid, region, allocation_id, now_s)
        except Exception as exc:
            log.warning("IRC ledger error (warm): %s: %s", type(exc).__name__, exc)
            self._metrics.count("ledger_errors")
            return None
        if short and part is None:
            return None
        started = f" ({_units(part)} from the pre-allocation, the rest warm)" if part else ""
        return PeeringResponse(
            request_id=valid.request_id,
            status="success",
            path="warm",
            latency_class="warm",
            allocation_id=allocation_id,
            message=f"Started warm capacity in {region}{started}, plan {plan.plan_id}, window {window.key}: {miss.detail}",
            region=region,
            plan_id=plan.plan_id,
            miss_reason=miss.reason,
            short_resources=miss.short,
            provisioning_s=self._on_demand.provisioning_s(region, valid.requirements) * WARM_START_SHARE,
            serving_region=region,
            preallocated_part=part,
        )

    def _top_up(self, valid: ValidRequest, region: str, allocation_id: str, now_s: float) -> dict[str, float] | None:
        """What the destination's pre-allocation still holds (within the priority's ceiling, as read
        at the session's start), reserved as `allocation_id` + TOP_UP_SUFFIX, and the rest started warm
        as `allocation_id`: the part taken from the pre-allocation, or None (nothing held) when the two
        together cannot serve the request.

        Why: a session's units need not come from one tier. A request larger than what is left of
        either would otherwise start cold whole although the region's running and warm capacity
        together hold it; on the samples these were the costliest cold starts (bench/RESULTS.md). Each
        of the two reservations is the ledger's own atomic check-and-debit in every window the session
        overlaps, so replicas never grant more than the plan holds: a part another replica took
        first makes the second reservation fail, and the first is given back."""
        ceiling = self._ceilings.get(valid.priority, 1.0)
        cells = self._ledger.utilization(valid.start_s)
        part = {}
        for resource_type, quantity in valid.requirements.items():
            capacity, used = cells.get((region, resource_type), (0.0, 0.0))
            part[resource_type] = min(quantity, headroom(used, capacity, ceiling))
        rest = {resource_type: quantity - part[resource_type] for resource_type, quantity in valid.requirements.items()}
        if not any(part.values()) or not any(rest.values()):
            return None  # nothing to top up, or the pre-allocation's miss was in a later window
        ledger = self._ledger
        if ledger.reserve(allocation_id, warm_key(region), rest, valid.start_s, valid.end_s, priority=valid.priority, now_s=now_s):
            return None
        if ledger.reserve(allocation_id + TOP_UP_SUFFIX, region, part, valid.start_s, valid.end_s,
                          ceiling=ceiling, priority=valid.priority, now_s=now_s):
            ledger.release(allocation_id)
            return None
        return part

    def _serve_on_demand(self, valid: ValidRequest, miss: _Miss, now_s: float) -> PeeringResponse | None:
        """Grant the request from the region's on-demand pool, or None when the pool cannot."""
        region, requirements = valid.destination_region, valid.requirements
        allocation_id = f"{ON_DEMAND_PREFIX}{self._id_prefix}{next(self._ids):x}"
        on_demand = self._on_demand
        try:
            on_demand.sweep(now_s)
            if not on_demand.try_allocate(region, requirements, allocation_id, valid.end_s):
                return None
        except Exception as exc:  # a shared ledger that is down: not served on demand, said in the failure
            log.warning("IRC on-demand admission error: %s: %s", type(exc).__name__, exc)
            self._metrics.count("ledger_errors")
            return None
        caveat = "" if on_demand.checks_capacity else " (no pool snapshot: capacity not verified)"
        return PeeringResponse(
            request_id=valid.request_id,
            status="success",
            path="on_demand",
            latency_class="medium",
            allocation_id=allocation_id,
            message=f"Served on demand in {region}: {miss.detail}{caveat}",
            region=region,
            plan_id=miss.plan_id,
            miss_reason=miss.reason,
            short_resources=miss.short,
            provisioning_s=on_demand.provisioning_s(region, requirements),
            serving_region=region,
        )

    def _insufficient(self, valid: ValidRequest, miss: _Miss) -> PeeringResponse:
        """The failure when neither the pre-allocation, the on-demand pool nor another region can serve it."""
        region = valid.destination_region
        if miss.reason == "region_unhealthy":
            return _failure(
                valid.request_id,
                f"Region unavailable: {miss.detail}; no failover partner or relocation target could serve it",
                region=region,
                miss=miss,
            )
        lacking = self._shortfall(region, valid.requirements) or "on-demand pool taken by concurrent requests"
        return _failure(
            valid.request_id,
            f"Insufficient resources in {region}: {lacking}; pre-allocation: {miss.detail}",
            region=region,
            miss=miss,
        )

    def _shortfall(self, region: str, requirements: Mapping[str, float]) -> str:
        try:
            available = self._on_demand.available(region)
        except Exception as exc:
            return f"on-demand pool unknown ({type(exc).__name__}: {exc})"
        return ", ".join(
            f"{rt} (requested {q:g}, available {available.get(rt, 0.0):g})"
            for rt, q in sorted(requirements.items())
            if q > available.get(rt, 0.0)
        )

    def _outcome(
        self, request: Any, valid: ValidRequest | None, response: PeeringResponse, elapsed_ns: int
    ) -> tuple[Any, ...]:
        """One `raw/irc_outcomes` record (column order: pipeline.irc.outcomes.COLUMNS)."""
        if valid is not None:
            req = valid.requirements
            return (
                valid.request_id, valid.start_s, time.time(), valid.source_region, valid.destination_region,
                valid.priority, req.get("vcpu", 0.0), req.get("memory_gib", 0.0), req.get("storage_gib", 0.0),
                req.get("bandwidth_gbps", 0.0), valid.duration_s, response.status, response.path,
                response.latency_class, response.miss_reason, ",".join(response.short_resources) or None,
                response.allocation_id, response.plan_id, elapsed_ns / NS_PER_US, response.provisioning_s,
                self._instance, response.serving_region,
            )
        raw = getattr(request, "resource_requirements", None)
        raw = raw if isinstance(raw, Mapping) else {}
        return clean_record((  # an invalid request may hold anything: normalised off the common path
            response.request_id, getattr(request, "requested_at", None), time.time(),
            getattr(request, "source_region", None), getattr(request, "destination_region", None),
            getattr(request, "priority", None), raw.get("vcpu"), raw.get("memory_gib"), raw.get("storage_gib"),
            raw.get("bandwidth_gbps"), getattr(request, "duration_s", None), response.status, response.path,
            response.latency_class, response.miss_reason, None, None, response.plan_id, elapsed_ns / NS_PER_US,
            None, self._instance, None,
        ))

    # -- plan plumbing -------------------------------------------------------------------------

    def _initial_load(self) -> None:
        if self.reload(force=True):
            return
        # No usable plan at start: keep whatever pools snapshot is readable so that on-demand
        # serving still checks capacity and region names.
        try:
            ref = (self._pinned, None) if self._pinned is not None else latest_ref(self._lake_root)
            pools = load_pools(self._lake_root, *ref)
        except Exception:
            return
        self._load_pools(pools, ref[0])
        state = self._state
        self._state = _PlanState(
            plan=None, previous=None, error=state.error, known_regions=frozenset(pools) or None, signature=None
        )

    def _load_pools(self, pools: Mapping[str, Mapping[str, float]], plan_id: str) -> None:
        """Give the plan's pools snapshot to the default allocator (into the ledger when it is shared)."""
        if not self._owns_on_demand:
            return
        if isinstance(self._on_demand, LedgerPoolAllocator):
            try:
                self._on_demand.load_pools(pools, plan_id)
            except Exception as exc:  # the plan is still served; on-demand keeps the pools in force
                log.warning("IRC: could not store plan %s's pools in the ledger: %s: %s", plan_id, type(exc).__name__, exc)
                self._metrics.count("ledger_errors")
        elif isinstance(self._on_demand, PoolAllocator):
            self._on_demand.load_pools(pools)

    def _reload_failed(self, exc: BaseException, signature: tuple[str, float | None] | None) -> None:
        message = str(exc) if isinstance(exc, PlanUnavailable) else f"{type(exc).__name__}: {exc}"
        self._metrics.count("plan_reload_failures")
        if signature != self._failed_signature:  # log once per publication, retry every poll
            self._failed_signature = signature
            if isinstance(exc, PlanUnavailable):
                log.warning("IRC: plan not adopted, keeping the current one: %s", message)
            else:
                log.exception("IRC: unexpected error loading a plan, keeping the current one")
        self._state = dataclasses.replace(self._state, error=message)

    def gauges(self) -> list[tuple[str, str, str, dict[str, object], float]]:
        """Scrape-time figures as (name, type, help, labels, value) rows: plan age, ledger utilization, outcome log."""
        state = self._state
        plan = state.plan
        now = time.time()
        gauges: list[tuple[str, str, str, dict[str, object], float]] = []
        if plan is not None:
            born = plan.created_at or plan.valid_from
            gauges.append(("peerscale_irc_plan_age_seconds", "gauge",
                           "Seconds since the plan in use was created (manifest created_at).", {}, now - born.timestamp()))
            gauges.append(("peerscale_irc_plan_valid_remaining_seconds", "gauge",
                           "Seconds of validity left at the latest request time (negative: expired).", {},
                           plan.valid_to_s - self._last_at_s))
            gauges.append(("peerscale_irc_plan_info", "gauge", "The plan in use.", {"plan_id": plan.plan_id}, 1))
        else:
            gauges.append(("peerscale_irc_plan_info", "gauge", "The plan in use.", {"plan_id": ""}, 0))
        try:
            utilization = self._ledger.utilization(self._last_at_s)
        except Exception:
            utilization = {}
        for (region, resource_type), (capacity, used) in sorted(utilization.items()):
            labels: dict[str, object] = {"region": region, "resource_type": resource_type}
            gauges.append(("peerscale_irc_preallocation_utilization", "gauge",
                           "Used share of the pre-allocation in the window of the latest request time.",
                           labels, used / capacity if capacity > 0 else float("nan")))
        for (region, resource_type), (capacity, _used) in sorted(utilization.items()):
            gauges.append(("peerscale_irc_preallocation_capacity", "gauge", "Pre-allocated quantity in that window.",
                           {"region": region, "resource_type": resource_type}, capacity))
        for (region, resource_type), (_capacity, used) in sorted(utilization.items()):
            gauges.append(("peerscale_irc_preallocation_used", "gauge", "Reserved quantity in that window.",
                           {"region": region, "resource_type": resource_type}, used))
        if self._outcomes is not None:
            stats = self._outcomes.stats()
            gauges += [
                ("peerscale_irc_outcomes_written_total", "counter", "Decisions written to raw/irc_outcomes.", {}, stats["written"]),
                ("peerscale_irc_outcomes_dropped_total", "counter",
                 "Decisions not logged (queue full or write error).", {}, stats["dropped"]),
                ("peerscale_irc_outcomes_pending", "gauge", "Decisions queued for the lake.", {}, stats["pending"]),
            ]
        return gauges


def _alternates(plan: LoadedPlan, window: PlanWindow, region: str) -> list[tuple[Path, str]]:
    """(path, region) to try after the destination, in order: its failover partner, then the regions
    the plan relocated its demand to in this window (most moved first)."""
    out: list[tuple[Path, str]] = []
    partner = plan.partners.get(region)
    if partner is not None:
        out.append(("failover", partner))
    out.extend(("relocated", target) for target in plan.relocations.get((window.start_s, region), ()))
    return out


def _iso(at_s: float) -> str:
    """A clock reading as UTC ISO-8601 for messages (a broken clock reads as itself)."""
    try:
        return datetime.fromtimestamp(at_s, UTC).isoformat()
    except (OverflowError, ValueError, OSError):
        return repr(at_s)


def _watch(ref: weakref.ref[Coordinator], stop: threading.Event, interval_s: float) -> None:
    """Plan watcher thread: poll LATEST until the coordinator is closed or garbage-collected."""
    while not stop.wait(interval_s):
        coordinator = ref()
        if coordinator is None:
            return
        try:
            coordinator.reload()
            coordinator.refresh_health()
        except Exception:
            log.exception("IRC plan watcher error")
        del coordinator
