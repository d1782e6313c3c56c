"""Inter-Region Coordinator (IRC): request-time serving of peering requests from the plan.

Imports only the stdlib at `import pipeline.irc` (pyarrow is loaded when a plan is first read;
psycopg only by the PostgreSQL ledger), so it can be embedded in latency-sensitive services
without pulling the batch stack (pandas, Airflow, Prophet, OR-Tools, GE, DuckDB).

    from pipeline.irc import Coordinator, PeeringRequest
    irc = Coordinator("lake/")                       # follows lake/plans/LATEST, logs outcomes
    response = irc.handle_peering_request(request)   # never raises
    irc.release(response.allocation_id)              # when the peering ends (or let it expire)

Sessions expire by the wall clock, never by the time a request claims; a replay of a recorded
stream passes `clock=REQUEST_TIME` (see `pipeline.irc.coordinator`).
"""

from pipeline.irc.coordinator import DEFAULT_PRIORITY_CEILINGS, REQUEST_TIME, Coordinator
from pipeline.irc.ledger import InMemoryLedger, Ledger, open_ledger
from pipeline.irc.messages import PeeringRequest, PeeringResponse
from pipeline.irc.ondemand import LatencyModel, OnDemandAllocator, PoolAllocator
from pipeline.irc.outcomes import OutcomeLog
from pipeline.irc.shadow import ShadowMirror, ShadowReport, replay_shadow

__all__ = [
    "DEFAULT_PRIORITY_CEILINGS",
    "REQUEST_TIME",
    "Coordinator",
    "InMemoryLedger",
    "LatencyModel",
    "Ledger",
    "OnDemandAllocator",
    "OutcomeLog",
    "PeeringRequest",
    "PeeringResponse",
    "PoolAllocator",
    "ShadowMirror",
    "ShadowReport",
    "open_ledger",
    "replay_shadow",
]
