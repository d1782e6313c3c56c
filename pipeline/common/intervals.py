"""UTC data intervals, end-exclusive `[start, end)`: the unit every task is a transaction on."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

HOUR = timedelta(hours=1)

# A source timestamp: date, time to the minute, optional seconds and fraction, optional zone.
_SOURCE_TS = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})[T ](\d{2}):(\d{2})(?::(\d{2})(?:\.(\d+))?)?(Z|z|[+-]\d{2}:?\d{2})?$",
    re.ASCII,
)
_SHOWN_CHARS = 64  # how much of a rejected value an error message repeats
_UTC_OFFSETS = frozenset({"Z", "z", "+00:00", "-00:00", "+0000", "-0000"})
MAX_FRACTION_DIGITS = 6  # the lake stores microseconds


class TimestampRejected(ValueError):
    """A source timestamp that breaks the contract; `kind` names the rule for grouping."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


def parse_utc(value: str | datetime) -> datetime:
    """Parse an ISO timestamp; naive values are taken as UTC, aware ones converted to UTC."""
    if isinstance(value, datetime):
        dt = value
    else:
        text = value.strip().replace("Z", "+00:00")
        try:
            dt = datetime.fromisoformat(text)
        except ValueError as exc:
            raise ValueError(f"not an ISO-8601 timestamp: {value!r} (use e.g. 2026-01-29T00:00)") from exc
    if dt.tzinfo is None:
        return dt.replace(tzinfo=UTC)
    return dt.astimezone(UTC)


def parse_explicit_utc(text: str) -> datetime:
    """Parse a *source* timestamp strictly: ISO-8601 with an explicit UTC designator, at most µs.

    Unlike `parse_utc` (operator input, where a naive time means UTC), data must say it is UTC:
    a naive time's zone would be a guess, and another offset means the exporter is not writing
    the documented UTC (files are cut at UTC midnight), so both are rejected rather than
    converted. Digits beyond microseconds are rejected unless they are zeros, because the lake
    cannot hold them and rounding would move a row across an hour boundary.
    """
    match = _SOURCE_TS.match(text.strip())
    shown = repr(text if len(text) <= _SHOWN_CHARS else text[:_SHOWN_CHARS] + "…")
    if match is None:
        raise TimestampRejected("cannot parse", f"{shown} is not an ISO-8601 timestamp like 2026-01-05T13:04:22Z")
    year, month, day, hour, minute, second, fraction, zone = match.groups()
    if zone is None:
        raise TimestampRejected("no time zone", f"{shown} has no time zone; write UTC explicitly, e.g. {text.strip()}Z")
    if zone not in _UTC_OFFSETS:
        raise TimestampRejected("not UTC", f"{shown} has offset {zone}; source timestamps must be UTC (Z or +00:00)")
    digits = fraction or ""
    if len(digits) > MAX_FRACTION_DIGITS and digits[MAX_FRACTION_DIGITS:].strip("0"):
        raise TimestampRejected(
            "finer than microseconds", f"{shown} has {len(digits)} fractional digits; at most {MAX_FRACTION_DIGITS} (microseconds)"
        )
    micros = int(digits[:MAX_FRACTION_DIGITS].ljust(MAX_FRACTION_DIGITS, "0")) if digits else 0
    try:
        return datetime(int(year), int(month), int(day), int(hour), int(minute), int(second or 0), micros, tzinfo=UTC)
    except ValueError as exc:
        raise TimestampRejected("cannot parse", f"{shown} is not a valid time ({exc})") from None


@dataclass(frozen=True)
class DataInterval:
    """A half-open UTC window `[start, end)` aligned to whole hours."""

    start: datetime
    end: datetime

    def __post_init__(self) -> None:
        for name in ("start", "end"):
            value = getattr(self, name)
            if value.tzinfo is None:
                raise ValueError(f"interval {name} must be timezone-aware UTC, got {value!r}")
            if value.minute or value.second or value.microsecond:
                raise ValueError(f"interval {name} must be on a whole hour, got {value.isoformat()}")
        if self.end <= self.start:
            raise ValueError(f"empty interval: start {self.start.isoformat()} is not before end {self.end.isoformat()}")

    @classmethod
    def ending_at(cls, end: str | datetime, hours: int = 1) -> DataInterval:
        """The `hours`-long interval that ends at `end` (what an hourly run covers)."""
        end_dt = parse_utc(end)
        return cls(end_dt - hours * HOUR, end_dt)

    @classmethod
    def between(cls, start: str | datetime, end: str | datetime) -> DataInterval:
        return cls(parse_utc(start), parse_utc(end))

    @property
    def token(self) -> str:
        """A path-safe id of the interval's end, e.g. 20260129T0000Z."""
        return self.end.strftime("%Y%m%dT%H%MZ")

    def hours(self) -> list[datetime]:
        """Start of every hour inside the interval."""
        count = int((self.end - self.start) / HOUR)
        return [self.start + i * HOUR for i in range(count)]

    def days(self) -> list[date]:
        """Every UTC date the interval touches."""
        first, last = self.start.date(), (self.end - timedelta(microseconds=1)).date()
        return [first + timedelta(days=i) for i in range((last - first).days + 1)]

    def __str__(self) -> str:
        return f"[{self.start.isoformat()}, {self.end.isoformat()})"
