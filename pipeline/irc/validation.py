"""Request validation: turn a PeeringRequest into a clean, normalised form or a clear reason.

Kept apart from the coordinator so the rules are testable on their own and identical for every
ledger/allocator backend.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Set
from datetime import UTC, datetime
from typing import Any, NamedTuple

from pipeline.irc.contract import PRIORITIES, REGION_PATTERN, RESOURCE_TYPES

_PRIORITY_SET = frozenset(PRIORITIES)
_RESOURCE_SET = frozenset(RESOURCE_TYPES)


class InvalidRequest(ValueError):
    """The request can never be served as sent; the message is shown to the caller."""


class ValidRequest(NamedTuple):
    """A request that passed validation: UTC time, float quantities, zero quantities dropped.

    A NamedTuple rather than a frozen dataclass: built once per request on the hot path.
    """

    request_id: str
    requested_at: datetime
    source_region: str
    destination_region: str
    requirements: Mapping[str, float]  # only strictly positive quantities
    duration_s: float
    priority: str
    start_s: float  # requested_at as POSIX seconds
    end_s: float  # start_s + duration_s: when the session's resources come back (expiry)


def validate_request(request: Any, known_regions: Set[str] | None) -> ValidRequest:
    """Check a request; raise InvalidRequest naming the first problem found.

    `known_regions` is the set of regions the loaded plan/pools know; None means no inventory is
    loaded, so only the region name pattern can be checked.
    """
    try:
        request_id = request.request_id
        requested_at = request.requested_at
        raw_requirements = request.resource_requirements
    except AttributeError:
        raise InvalidRequest(f"not a PeeringRequest: {type(request).__name__}") from None

    if not isinstance(request_id, str) or not request_id.strip():
        raise InvalidRequest("request_id must be a non-empty string")

    if not isinstance(requested_at, datetime):
        raise InvalidRequest(f"requested_at must be a datetime, got {requested_at!r}")
    if requested_at.tzinfo is None or requested_at.utcoffset() is None:
        raise InvalidRequest("requested_at is a naive datetime; give it a timezone (UTC)")

    source = _check_region("source_region", getattr(request, "source_region", None), known_regions)
    destination = _check_region("destination_region", getattr(request, "destination_region", None), known_regions)
    if source == destination:
        raise InvalidRequest(f"source_region and destination_region are both {source!r}")

    requirements = _check_requirements(raw_requirements)

    duration: Any = getattr(request, "duration_s", None)
    if not _is_number(duration) or not math.isfinite(duration) or duration <= 0:
        raise InvalidRequest(f"duration_s must be a positive number of seconds, got {duration!r}")

    priority = getattr(request, "priority", "normal")
    if type(priority) is not str or priority not in _PRIORITY_SET:
        raise InvalidRequest(f"unknown priority {priority!r}; expected one of {', '.join(PRIORITIES)}")

    start_s = requested_at.timestamp()
    duration_s = float(duration)
    utc = requested_at if requested_at.tzinfo is UTC else requested_at.astimezone(UTC)
    return ValidRequest(
        request_id, utc, source, destination, requirements, duration_s, priority, start_s, start_s + duration_s
    )


def _check_region(field: str, value: Any, known_regions: Set[str] | None) -> str:
    if known_regions is not None and type(value) is str and value in known_regions:
        return value  # fast path: the plan's region names were checked against the pattern at load
    if not isinstance(value, str) or not REGION_PATTERN.match(value):
        raise InvalidRequest(f"{field} {value!r} is not a valid region name")
    if known_regions is not None and value not in known_regions:
        raise InvalidRequest(f"unknown region {value!r} in {field}")
    return value


def _check_requirements(raw: Any) -> dict[str, float]:
    if not (type(raw) is dict or isinstance(raw, Mapping)) or not raw:
        raise InvalidRequest("resource_requirements is missing or empty")
    clean: dict[str, float] = {}
    for resource_type, quantity in raw.items():
        if resource_type not in _RESOURCE_SET:
            raise InvalidRequest(
                f"unknown resource type {resource_type!r}; expected one of {', '.join(RESOURCE_TYPES)}"
            )
        kind = type(quantity)
        if (kind is float or kind is int) and 0 < quantity < math.inf:  # fast path: a plain positive number
            clean[resource_type] = float(quantity)
            continue
        if quantity is None or (isinstance(quantity, float) and math.isnan(quantity)):
            raise InvalidRequest(f"missing quantity for {resource_type}")
        if not _is_number(quantity):
            raise InvalidRequest(f"non-numeric quantity for {resource_type}: {quantity!r}")
        value = float(quantity)
        if not math.isfinite(value):
            raise InvalidRequest(f"non-finite quantity for {resource_type}: {quantity!r}")
        if value < 0:
            raise InvalidRequest(f"negative quantity for {resource_type}: {quantity!r}")
        if value > 0:
            clean[resource_type] = value
    if not clean:
        raise InvalidRequest("resource_requirements requests no resources (all quantities are 0)")
    return clean


def _is_number(value: Any) -> bool:
    kind = type(value)
    if kind is float or kind is int:
        return True
    return isinstance(value, numbers.Real) and not isinstance(value, bool)
