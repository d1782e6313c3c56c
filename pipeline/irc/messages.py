"""Request and response types of the Inter-Region Coordinator.

Plain frozen dataclasses so that callers (CLI, services, replay of `peering_requests`) can build
them without any heavy dependency. Construction never validates: a malformed request must come
back as a failure *response* from the coordinator, not as an exception at the call site.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any, Literal

from pipeline.irc.contract import RESOURCE_TYPES

Status = Literal["success", "failure"]
# failover: the destination's failover partner's pre-allocation (its N+1 headroom); relocated: the
# pre-allocation of a region the plan moved the destination's demand to (coordinator docstring).
# warm: the destination's warm (stopped, pre-initialised) capacity, started for the request.
Path = Literal["preallocated", "warm", "on_demand", "failover", "relocated", "none"]
LatencyClass = Literal["low", "warm", "medium"]


@dataclass(frozen=True)
class PeeringRequest:
    """One peering request (DESIGN domain contract); served by its destination region."""

    request_id: str
    requested_at: datetime  # tz-aware; naive values are rejected by validation, never guessed
    source_region: str
    destination_region: str
    resource_requirements: dict[str, float]
    duration_s: float
    priority: str = "normal"

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> PeeringRequest:
        """Build a request from the flat `peering_requests` source row.

        Lenient on purpose: numeric strings (CSV) become floats, ISO strings become datetimes,
        and anything unparseable is kept as-is so the coordinator reports *why* it is invalid.
        Blank/NaN quantities become None ("missing"). A resource column absent from the row is
        simply not requested.
        """
        requirements: dict[str, Any] = {}
        nested = row.get("resource_requirements")
        if isinstance(nested, Mapping):
            requirements.update({str(k): _coerce_number(v) for k, v in nested.items()})
        for resource_type in RESOURCE_TYPES:
            if resource_type in row:
                requirements[resource_type] = _coerce_number(row[resource_type])
        priority = row.get("priority")
        if priority is None or (isinstance(priority, str) and not priority.strip()):
            priority = "normal"  # a blank cell: the contract's default
        return cls(
            request_id=_coerce_str(row.get("request_id")),
            requested_at=_coerce_datetime(row.get("requested_at")),
            source_region=_coerce_str(row.get("source_region")),
            destination_region=_coerce_str(row.get("destination_region")),
            resource_requirements=requirements,
            duration_s=_coerce_number(row.get("duration_s")),
            priority=priority.strip() if isinstance(priority, str) else priority,  # anything else: validation names it
        )


@dataclass(frozen=True)
class PeeringResponse:
    """Decision for one request: which path served it, and the handle to release it later."""

    request_id: str
    status: Status
    path: Path
    latency_class: LatencyClass | None
    allocation_id: str | None
    message: str
    region: str | None
    plan_id: str | None = None  # plan the decision was taken under (for irc_outcomes feedback)
    # Why the pre-allocation did not serve the request (None on a hit or an invalid request):
    # exhausted | not_planned | no_window | no_plan | plan_expired | plan_not_yet_valid | ledger_error
    # | region_unhealthy
    miss_reason: str | None = None
    short_resources: tuple[str, ...] = ()  # resources the pre-allocation (or the pool) lacked
    provisioning_s: float | None = None  # modeled time until the capacity is usable (0 when pre-allocated)
    # Where the capacity is held: the destination, its failover partner or a relocation target (None on a failure).
    serving_region: str | None = None
    # A warm start topped up from the pre-allocation: the units taken from it (the rest started warm).
    preallocated_part: dict[str, float] | None = None

    @property
    def ok(self) -> bool:
        return self.status == "success"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (CLI output, HTTP answers): every field. Built field by field, not with
        dataclasses.asdict, whose recursive deep copy cost more than the rest of an HTTP answer."""
        return {name: getattr(self, name) for name in _RESPONSE_FIELDS}


_RESPONSE_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(PeeringResponse))
_new_object = object.__new__
_set_attribute = object.__setattr__


def preallocated_response(request_id: str, allocation_id: str, message: str, region: str, plan_id: str) -> PeeringResponse:
    """`PeeringResponse(...)` of a pre-allocated grant, equal to the one the constructor builds, at half its cost:
    a frozen dataclass sets its twelve fields one `object.__setattr__` at a time (the most common answer)."""
    response = _new_object(PeeringResponse)
    _set_attribute(response, "__dict__", {
        "request_id": request_id, "status": "success", "path": "preallocated", "latency_class": "low",
        "allocation_id": allocation_id, "message": message, "region": region, "plan_id": plan_id, "miss_reason": None,
        "short_resources": (), "provisioning_s": 0.0, "serving_region": region, "preallocated_part": None,
    })
    return response


def _coerce_str(value: Any) -> Any:
    return value.strip() if isinstance(value, str) else value


def _coerce_number(value: Any) -> Any:
    """Numbers stay numbers, numeric strings become floats, blanks/NaN become None (missing)."""
    if value is None:
        return None
    if isinstance(value, str):
        text = value.strip()
        if not text:
            return None
        try:
            value = float(text)
        except ValueError:
            return value  # kept so validation can say "non-numeric"
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        try:
            number = float(value)
        except OverflowError:
            return math.inf  # an integer beyond any float (JSON allows 4,300 digits): validation says non-finite
        return None if math.isnan(number) else number
    return value


def _coerce_datetime(value: Any) -> Any:
    """ISO strings (with 'Z' or an offset) become datetimes; the tz is kept, never invented."""
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value.strip())
        except ValueError:
            return value
    return value
