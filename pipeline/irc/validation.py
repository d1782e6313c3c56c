"""Request validation: turn a PeeringRequest into a clean, normalised form or a clear reason.

Kept apart from the coordinator so the rules are testable on their own and identical for every
ledger/allocator backend.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Set
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from pipeline.schemas import PRIORITIES, REGION_PATTERN, RESOURCE_TYPES


class InvalidRequest(ValueError):
    """The request can never be served as sent; the message is shown to the caller."""


@dataclass(frozen=True)
class ValidRequest:
    """A request that passed validation: UTC time, float quantities, zero quantities dropped."""

    request_id: str
    requested_at: datetime
    source_region: str
    destination_region: str
    requirements: Mapping[str, float]  # only strictly positive quantities
    duration_s: float
    priority: str


def validate_request(request: Any, known_regions: Set[str] | None) -> ValidRequest:
    """Check a request; raise InvalidRequest naming the first problem found.

    `known_regions` is the set of regions the loaded plan/pools know; None means no inventory is
    loaded, so only the region name pattern can be checked.
    """
    if not all(hasattr(request, f) for f in ("request_id", "requested_at", "resource_requirements")):
        raise InvalidRequest(f"not a PeeringRequest: {type(request).__name__}")

    request_id = request.request_id
    if not isinstance(request_id, str) or not request_id.strip():
        raise InvalidRequest("request_id must be a non-empty string")

    requested_at = request.requested_at
    if not isinstance(requested_at, datetime):
        raise InvalidRequest(f"requested_at must be a datetime, got {requested_at!r}")
    if requested_at.tzinfo is None or requested_at.utcoffset() is None:
        raise InvalidRequest("requested_at is a naive datetime; give it a timezone (UTC)")

    source = _check_region("source_region", request.source_region, known_regions)
    destination = _check_region("destination_region", request.destination_region, known_regions)
    if source == destination:
        raise InvalidRequest(f"source_region and destination_region are both {source!r}")

    requirements = _check_requirements(request.resource_requirements)

    duration = request.duration_s
    if not _is_number(duration) or not math.isfinite(duration) or duration <= 0:
        raise InvalidRequest(f"duration_s must be a positive number of seconds, got {duration!r}")

    priority = request.priority
    if priority not in PRIORITIES:
        raise InvalidRequest(f"unknown priority {priority!r}; expected one of {', '.join(PRIORITIES)}")

    return ValidRequest(
        request_id=request_id,
        requested_at=requested_at.astimezone(timezone.utc),
        source_region=source,
        destination_region=destination,
        requirements=requirements,
        duration_s=float(duration),
        priority=priority,
    )


def _check_region(field: str, value: Any, known_regions: Set[str] | None) -> str:
    if not isinstance(value, str) or not REGION_PATTERN.match(value):
        raise InvalidRequest(f"{field} {value!r} is not a valid region name")
    if known_regions is not None and value not in known_regions:
        raise InvalidRequest(f"unknown region {value!r} in {field}")
    return value


def _check_requirements(raw: Any) -> dict[str, float]:
    if not isinstance(raw, Mapping) or not raw:
        raise InvalidRequest("resource_requirements is missing or empty")
    clean: dict[str, float] = {}
    for resource_type, quantity in raw.items():
        if resource_type not in RESOURCE_TYPES:
            raise InvalidRequest(
                f"unknown resource type {resource_type!r}; expected one of {', '.join(RESOURCE_TYPES)}"
            )
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
    return isinstance(value, numbers.Real) and not isinstance(value, bool)
