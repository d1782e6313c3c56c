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

from pipeline.irc.contract import MAX_DURATION_S, MAX_QUANTITY, PRIORITIES, REGION_PATTERN, RESOURCE_TYPES

_PRIORITY_SET = frozenset(PRIORITIES)
_RESOURCE_SET = frozenset(RESOURCE_TYPES)
_SHOWN_CHARS = 60  # a hostile value is quoted in the message, but never at length


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
        raise InvalidRequest(f"requested_at must be a datetime, got {_show(requested_at)}")
    if requested_at.tzinfo is None or requested_at.utcoffset() is None:
        raise InvalidRequest("requested_at is a naive datetime; give it a timezone (UTC)")

    # Each check's common case inline (a known region name, a plain float duration); the rest in the helpers.
    source = getattr(request, "source_region", None)
    if known_regions is None or type(source) is not str or source not in known_regions:
        source = _check_region("source_region", source, known_regions)
    destination = getattr(request, "destination_region", None)
    if known_regions is None or type(destination) is not str or destination not in known_regions:
        destination = _check_region("destination_region", destination, known_regions)
    if source == destination:
        raise InvalidRequest(f"source_region and destination_region are both {source!r}")

    requirements = _check_requirements(raw_requirements)

    duration_s = getattr(request, "duration_s", None)
    if type(duration_s) is not float or not 0 < duration_s <= MAX_DURATION_S:
        duration_s = _check_duration(duration_s)

    priority = getattr(request, "priority", "normal")
    if type(priority) is not str or priority not in _PRIORITY_SET:
        raise InvalidRequest(f"unknown priority {_show(priority)}; expected one of {', '.join(PRIORITIES)}")

    start_s = requested_at.timestamp()
    try:
        utc = requested_at if requested_at.tzinfo is UTC else requested_at.astimezone(UTC)
    except OverflowError:  # year 1 or 9999 with an offset that leaves the calendar
        raise InvalidRequest(f"requested_at {requested_at.isoformat()} is outside the calendar in UTC") from None
    return ValidRequest(
        request_id, utc, source, destination, requirements, duration_s, priority, start_s, start_s + duration_s
    )


def _check_duration(duration: Any) -> float:
    """A positive, finite number of seconds up to the contract's longest session."""
    value = _as_float(duration) if _is_number(duration) else None
    if value is None or not 0 < value < math.inf:
        raise InvalidRequest(f"duration_s must be a positive, finite number of seconds, got {_show(duration)}")
    if value > MAX_DURATION_S:
        raise InvalidRequest(
            f"duration_s {value:g} is longer than the longest session the contract admits ({MAX_DURATION_S:,.0f} s, 30 days)"
        )
    return value


def _check_region(field: str, value: Any, known_regions: Set[str] | None) -> str:
    if known_regions is not None and type(value) is str and value in known_regions:
        return value  # fast path: the plan's region names were checked against the pattern at load
    if not isinstance(value, str) or not REGION_PATTERN.match(value):
        raise InvalidRequest(f"{field} {_show(value)} is not a valid region name")
    if known_regions is not None and value not in known_regions:
        raise InvalidRequest(f"unknown region {_show(value)} in {field}")
    return value


def _check_requirements(raw: Any) -> dict[str, float]:
    if not (type(raw) is dict or isinstance(raw, Mapping)) or not raw:
        raise InvalidRequest("resource_requirements is missing or empty")
    clean: dict[str, float] = {}
    for resource_type, quantity in raw.items():
        if resource_type not in _RESOURCE_SET:
            raise InvalidRequest(
                f"unknown resource type {_show(resource_type)}; expected one of {', '.join(RESOURCE_TYPES)}"
            )
        kind = type(quantity)
        if kind is float and 0 < quantity <= MAX_QUANTITY[resource_type]:  # fast path: a plain positive number
            clean[resource_type] = quantity
            continue
        if quantity is None or (isinstance(quantity, float) and math.isnan(quantity)):
            raise InvalidRequest(f"missing quantity for {resource_type}")
        if not _is_number(quantity):
            raise InvalidRequest(f"non-numeric quantity for {resource_type}: {_show(quantity)}")
        value = _as_float(quantity)
        if value is None or not math.isfinite(value):
            raise InvalidRequest(f"non-finite quantity for {resource_type}: {_show(quantity)}")
        if value < 0:
            raise InvalidRequest(f"negative quantity for {resource_type}: {_show(quantity)}")
        if value > MAX_QUANTITY[resource_type]:
            raise InvalidRequest(
                f"{resource_type} {value:g} is above the largest request the contract admits ({MAX_QUANTITY[resource_type]:g})"
            )
        if value > 0:
            clean[resource_type] = value
    if not clean:
        raise InvalidRequest("resource_requirements requests no resources (all quantities are 0)")
    return clean


def _as_float(value: Any) -> float | None:
    """float(value), or None when it does not fit a float (an int of 400 digits)."""
    try:
        return float(value)
    except (OverflowError, ValueError, TypeError):
        return None


def _show(value: Any) -> str:
    """repr() for a message, cut short: the caller sent it, the caller may have sent megabytes."""
    if isinstance(value, int) and value.bit_length() > _SHOWN_CHARS * 3:  # repr() refuses ints past 4300 digits
        return f"<int of {value.bit_length()} bits>"
    text = repr(value)
    return text if len(text) <= _SHOWN_CHARS else text[: _SHOWN_CHARS - 1] + "…"


def _is_number(value: Any) -> bool:
    kind = type(value)
    if kind is float or kind is int:
        return True
    return isinstance(value, numbers.Real) and not isinstance(value, bool)
