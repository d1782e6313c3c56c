"""UTC data intervals, end-exclusive `[start, end)`: the unit every task is a transaction on."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

HOUR = timedelta(hours=1)


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
