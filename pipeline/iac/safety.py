"""Validation of plan values before they become infrastructure, and credential guards.

Plan values no longer reach HCL: Terraform gets them as JSON data (``plan.auto.tfvars.json``,
read literally, never as templates) and CloudFormation as JSON parameters, so the HCL quoting
filters this module used to provide are gone. What stays is still needed: every value is checked
against the plan contracts in :mod:`pipeline.common.schemas` (region, instance type, plan id,
purchase option, counts, quantities, UTC timestamps, the per-window schedules) because it becomes an AWS name, tag or
count; free text (line ids, reasons) is kept free of quotes, template markers and control
characters because it ends up in tags, logs and the Markdown of approval requests; and rendered
output and errors are scanned for credentials and redacted.
"""

from __future__ import annotations

import math
import numbers
import os
import re
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from pipeline.common.schemas import (
    INSTANCE_TYPE_PATTERN,
    PLAN_ID_PATTERN,
    PURCHASE_OPTIONS,
    REGION_PATTERN,
)

__all__ = [
    "UnsafePlanValue",
    "UnsafeRenderedOutput",
    "assert_no_credentials",
    "check_count",
    "check_instance_type",
    "check_plan_id",
    "check_purchase_option",
    "check_quantity",
    "check_region",
    "check_rfc3339",
    "check_schedule",
    "check_tag_value",
    "check_timestamp",
    "redact",
    "secret_values",
]

# AWS caps tag values at 256 characters; longer values would fail at apply time, not render time.
MAX_TAG_VALUE_LENGTH = 256

# Sequences that end or template an HCL quoted string; control characters (newline included)
# would also let a value escape a comment line.
_FORBIDDEN_SEQUENCES: tuple[str, ...] = ("${", "%{", '"', "'", "\\")
_CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f]")
# The one timestamp form rendered IaC carries: RFC 3339, UTC, whole seconds (what AWS schedules take).
RFC3339_UTC_FORMAT = "%Y-%m-%dT%H:%M:%SZ"
_RFC3339_UTC = re.compile(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z$")

# Credential shapes that must never appear in rendered IaC: AWS key ids and provider arguments
# that carry secrets. Provider configuration takes credentials from the environment instead.
_CREDENTIAL_PATTERNS: tuple[re.Pattern[str], ...] = (
    re.compile(r"\b(?:AKIA|ASIA|AIDA|AROA)[A-Z0-9]{16}\b"),
    re.compile(r"\b(?:access_key|secret_key|token|aws_secret_access_key|aws_session_token)\s*="),
    re.compile(r"\bshared_credentials_files?\b"),
    re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
)

# Environment variables whose values are secrets: their values must never be written or logged.
SECRET_ENV_VARS: tuple[str, ...] = (
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_SECURITY_TOKEN",
    "TF_TOKEN",
)
_MIN_SECRET_LENGTH = 8


class UnsafePlanValue(ValueError):
    """A plan or manifest value that must not be rendered into infrastructure code.

    Carries the offending ``field`` and ``value`` so callers can quarantine or report the plan;
    the message says what a valid value looks like.
    """

    def __init__(self, field: str, value: Any, hint: str = "") -> None:
        self.field = field
        self.value = value
        self.hint = hint
        message = f"unsafe plan value for {field!r}: {value!r}"
        if hint:
            message += f" — {hint}"
        super().__init__(message)


class UnsafeRenderedOutput(RuntimeError):
    """Rendered IaC text that looks like it holds credentials: a template bug, not a plan bug."""


def _require_str(field: str, value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise UnsafePlanValue(field, value, "expected a non-empty string")
    return value


def check_region(value: Any, field: str = "region") -> str:
    """Return ``value`` if it is an AWS-style region name such as ``us-east-1``."""
    value = _require_str(field, value)
    if not REGION_PATTERN.fullmatch(value):
        raise UnsafePlanValue(
            field, value, f"use a region name like 'us-east-1' matching {REGION_PATTERN.pattern}"
        )
    return value


def check_instance_type(value: Any, field: str = "instance_type") -> str:
    """Return ``value`` if it is an instance type such as ``m5.large``."""
    value = _require_str(field, value)
    if not INSTANCE_TYPE_PATTERN.fullmatch(value):
        raise UnsafePlanValue(
            field,
            value,
            f"use an instance type like 'm5.large' matching {INSTANCE_TYPE_PATTERN.pattern}",
        )
    return value


def check_plan_id(value: Any, field: str = "plan_id") -> str:
    """Return ``value`` if it is a plan id (letters, digits, ``_.-``, at most 128 characters)."""
    value = _require_str(field, value)
    if not PLAN_ID_PATTERN.fullmatch(value):
        raise UnsafePlanValue(
            field, value, f"plan ids must match {PLAN_ID_PATTERN.pattern}; regenerate the plan id"
        )
    return value


def check_purchase_option(value: Any, field: str = "purchase_option") -> str:
    """Return ``value`` if it is one of :data:`pipeline.common.schemas.PURCHASE_OPTIONS`."""
    if value not in PURCHASE_OPTIONS:
        raise UnsafePlanValue(field, value, f"must be one of {', '.join(PURCHASE_OPTIONS)}")
    return str(value)


def check_count(value: Any, field: str = "count") -> int:
    """Return ``value`` as an ``int`` if it is a non-negative integer (bools and floats refused).

    Floats are refused rather than rounded: a fractional or NaN count means the planner's output
    drifted from the PLAN schema, and silently rounding capacity would hide that.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise UnsafePlanValue(field, value, "must be an integer instance count (int64 column)")
    count = int(value)
    if count < 0:
        raise UnsafePlanValue(field, value, "instance counts cannot be negative")
    return count


def check_quantity(value: Any, field: str = "quantity") -> float:
    """Return ``value`` as a float if it is a finite, non-negative number (bools refused)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise UnsafePlanValue(field, value, "must be a number (float64 column)")
    quantity = float(value)
    if not math.isfinite(quantity) or quantity < 0:
        raise UnsafePlanValue(field, value, "must be finite and non-negative")
    return quantity


def check_tag_value(value: Any, field: str) -> str:
    """Return ``value`` if it can be an AWS tag value and sit in logs and Markdown unchanged."""
    value = _require_str(field, value)
    for sequence in _FORBIDDEN_SEQUENCES:
        if sequence in value:
            raise UnsafePlanValue(
                field,
                value,
                f"remove {sequence!r}: quotes, backslashes and '${{' / '%{{' "
                "are not allowed in plan values that become tags and names",
            )
    if _CONTROL_CHARS.search(value):
        raise UnsafePlanValue(field, value, "remove newlines and other control characters")
    if len(value) > MAX_TAG_VALUE_LENGTH:
        raise UnsafePlanValue(
            field, value, f"shorten to at most {MAX_TAG_VALUE_LENGTH} characters (AWS tag limit)"
        )
    return value


def check_timestamp(value: Any, field: str) -> datetime:
    """Return ``value`` as a UTC ``datetime``; naive or missing timestamps are refused.

    A naive timestamp is ambiguous, and an ``end_date`` an hour off would release or keep
    capacity at the wrong time.
    """
    if value is None or (isinstance(value, float) and math.isnan(value)):
        raise UnsafePlanValue(field, value, "timestamp is missing")
    if not isinstance(value, datetime):
        raise UnsafePlanValue(field, value, "expected a timestamp (timestamp[us, tz=UTC] column)")
    try:
        if value != value:  # pandas.NaT compares unequal to itself
            raise UnsafePlanValue(field, value, "timestamp is missing")
    except TypeError:  # pragma: no cover - exotic datetime subclasses
        pass
    if value.tzinfo is None or value.utcoffset() is None:
        raise UnsafePlanValue(field, value, "timestamps must be tz-aware UTC")
    return value.astimezone(UTC)


def check_rfc3339(value: Any, field: str) -> datetime:
    """Return ``value`` (``2025-03-01T00:15:00Z``: RFC 3339, UTC, whole seconds) as a UTC datetime.

    Rendered schedules are compared and sorted as instants; any other spelling (an offset, a
    fraction) could be read differently by Terraform, CloudFormation and the Auto Scaling API.
    """
    if not isinstance(value, str) or not _RFC3339_UTC.fullmatch(value):
        raise UnsafePlanValue(field, value, "must be an RFC 3339 UTC time like 2025-03-01T00:15:00Z")
    try:
        return datetime.strptime(value, RFC3339_UTC_FORMAT).replace(tzinfo=UTC)
    except ValueError:
        raise UnsafePlanValue(field, value, "is not a valid date and time") from None


def check_schedule(
    steps: Sequence[tuple[Any, Any]], *, start: datetime, end: datetime, field: str = "schedule"
) -> tuple[tuple[str, int], ...]:
    """Return ``steps`` ((time, instances) pairs) if every time is RFC 3339 UTC, strictly inside
    ``(start, end)`` and later than the one before, and every count is a non-negative integer.

    A schedule outside its span would resize a group after the window end emptied it (or before
    the apply); out of order, the group would end a window at the wrong size.
    """
    previous = start
    out = []
    for when, count in steps:
        at = check_rfc3339(when, field)
        if not previous < at < end:
            raise UnsafePlanValue(
                field, when,
                f"must be after {previous.strftime(RFC3339_UTC_FORMAT)} (the span's start or the step before) "
                f"and before the span's end {end.strftime(RFC3339_UTC_FORMAT)}",
            )
        out.append((when, check_count(count, field)))
        previous = at
    return tuple(out)


def secret_values() -> list[str]:
    """Values of the secret environment variables that are set (``TF_TOKEN_*`` included)."""
    names = [n for n in os.environ if n in SECRET_ENV_VARS or n.startswith("TF_TOKEN_")]
    values = {os.environ[n] for n in names}
    return sorted((v for v in values if len(v) >= _MIN_SECRET_LENGTH), key=len, reverse=True)


def redact(text: str) -> str:
    """``text`` with every secret environment value replaced by ``***`` (for errors and logs)."""
    for value in secret_values():
        text = text.replace(value, "***")
    return text


def assert_no_credentials(text: str, name: str) -> None:
    """Raise :class:`UnsafeRenderedOutput` if ``text`` contains credential-like content.

    Checks credential shapes (AWS key ids, provider secret arguments, private keys) and the
    values of the secret environment variables (``AWS_SECRET_ACCESS_KEY`` and friends).
    """
    for value in secret_values():
        if value in text:
            raise UnsafeRenderedOutput(
                f"{name} contains the value of a secret environment variable; IaC must take AWS "
                "credentials from the environment at run time, never from templates or plan values"
            )
    for pattern in _CREDENTIAL_PATTERNS:
        match = pattern.search(text)
        if match:
            raise UnsafeRenderedOutput(
                f"{name} contains credential-like text {match.group(0)!r}; IaC must take AWS "
                "credentials from the environment, never from templates or plan values"
            )
