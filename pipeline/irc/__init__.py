"""Inter-Region Coordinator (IRC): request-time serving of peering requests from the plan.

Imports only the stdlib, pyarrow and pipeline.schemas, so it can be embedded in latency-sensitive
services without pulling the batch stack (pandas, Airflow, Prophet, OR-Tools, GE, DuckDB).
"""

from pipeline.irc.coordinator import Coordinator
from pipeline.irc.models import PeeringRequest, PeeringResponse

__all__ = ["Coordinator", "PeeringRequest", "PeeringResponse"]
