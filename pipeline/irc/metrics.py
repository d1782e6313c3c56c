"""Counters and a latency histogram for the IRC, rendered in the Prometheus text format.

No client library: the request path only increments integers under one short lock; rendering
(`render`) happens at scrape time. Names follow Prometheus conventions (`_total`, `_seconds`).
"""

from __future__ import annotations

import bisect
import threading
from collections import Counter
from collections.abc import Iterable, Mapping

# Decision latency buckets, seconds: the in-memory path lives in the first ones, SQL ledgers in the ms ones.
LATENCY_BUCKETS_S: tuple[float, ...] = (
    1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 5e-2, 0.1, 0.25, 1.0,
)
_BOUNDS_NS = tuple(int(b * 1e9) for b in LATENCY_BUCKETS_S)
PATHS = ("preallocated", "warm", "on_demand", "failover", "relocated", "none")
_ALWAYS = (("preallocated", "success"), ("on_demand", "success"), ("none", "failure"))  # exported even at 0

# Event counters: name -> (metric name, help). Kept stable: dashboards and tests read them.
EVENTS: dict[str, tuple[str, str]] = {
    "released": ("peerscale_irc_releases_total", "Allocations given back by release()."),
    "expired": ("peerscale_irc_expirations_total", "Allocations returned by expiry (requested_at + duration_s)."),
    "plan_reloads": ("peerscale_irc_plan_reloads_total", "Plans adopted (initial load and live reloads)."),
    "plan_reload_failures": (
        "peerscale_irc_plan_reload_failures_total",
        "Attempts to load a published plan that failed (corrupt, half-written); the previous plan stays in use.",
    ),
    "plan_fallbacks": (
        "peerscale_irc_plan_fallbacks_total",
        "LATEST was corrupt or failed its hash check with no plan in use: the newest verified plan was adopted instead.",
    ),
    "plan_expired": (
        "peerscale_irc_requests_after_plan_validity_total",
        "Requests at or after the plan's valid_to: served on demand only.",
    ),
    "served_without_plan": ("peerscale_irc_requests_without_plan_total", "Requests decided with no usable plan."),
    "ledger_errors": ("peerscale_irc_ledger_errors_total", "Ledger failures (the request went on demand)."),
    "internal_errors": ("peerscale_irc_internal_errors_total", "Unexpected errors turned into failure responses."),
    "health_read_failures": (
        "peerscale_irc_health_read_failures_total",
        "Reads of the unhealthy-regions file that failed (the marks in force were kept).",
    ),
}


def escape_label(value: object) -> str:
    return str(value).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(**labels: object) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{k}="{escape_label(v)}"' for k, v in labels.items()) + "}"


def _number(value: float) -> str:
    if value == float("inf"):
        return "+Inf"
    return repr(float(value)) if not float(value).is_integer() else str(int(value))


class DecisionMetrics:
    """Thread-safe counters of decisions (by path/status/miss reason), latency histogram, events."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._decisions: Counter[tuple[str, str]] = Counter()  # (path, status)
        self._misses: Counter[str] = Counter()  # pre-allocation miss reason
        self._failures: Counter[str] = Counter()  # failure kind
        self._buckets: dict[str, list[int]] = {p: [0] * (len(_BOUNDS_NS) + 1) for p in PATHS}
        self._sum_ns: dict[str, int] = dict.fromkeys(PATHS, 0)
        self._events: Counter[str] = Counter()

    def observe(self, path: str, status: str, miss_reason: str | None, failure: str | None, latency_ns: int) -> None:
        index = bisect.bisect_left(_BOUNDS_NS, latency_ns)
        with self._lock:
            self._decisions[(path, status)] += 1
            if miss_reason is not None:
                self._misses[miss_reason] += 1
            if failure is not None:
                self._failures[failure] += 1
            self._buckets[path][index] += 1
            self._sum_ns[path] += latency_ns

    def count(self, event: str, n: int = 1) -> None:
        with self._lock:
            self._events[event] += n

    def snapshot(self) -> dict[str, int]:
        """Flat counters (the coordinator's `metrics()`): requests, preallocated, on_demand, failed_*, events."""
        with self._lock:
            out: Counter[str] = Counter()
            for (path, status), n in self._decisions.items():
                out["requests"] += n
                if status == "success":
                    out[path] += n
            for kind, n in self._failures.items():
                out[f"failed_{kind}"] += n
            for reason, n in self._misses.items():
                out[f"miss_{reason}"] += n
            out.update(self._events)
            return dict(out)

    def render(
        self,
        gauges: Iterable[tuple[str, str, str, Mapping[str, object], float]] = (),
    ) -> str:
        """Prometheus text exposition; `gauges` are (name, type, help, labels, value) rows added as-is."""
        with self._lock:
            decisions = dict(self._decisions)
            misses = dict(self._misses)
            failures = dict(self._failures)
            buckets = {p: list(b) for p, b in self._buckets.items()}
            sums = dict(self._sum_ns)
            events = dict(self._events)
        lines: list[str] = []

        def header(name: str, kind: str, text: str) -> None:
            lines.append(f"# HELP {name} {text}")
            lines.append(f"# TYPE {name} {kind}")

        header("peerscale_irc_requests_total", "counter", "Peering requests decided, by path and status.")
        for path, status in sorted(set(_ALWAYS) | set(decisions), key=lambda k: (PATHS.index(k[0]), k[1])):
            lines.append(f"peerscale_irc_requests_total{_labels(path=path, status=status)} {decisions.get((path, status), 0)}")
        header("peerscale_irc_preallocation_misses_total", "counter",
               "Valid requests the pre-allocation did not serve, by reason.")
        for reason, n in sorted(misses.items()):
            lines.append(f"peerscale_irc_preallocation_misses_total{_labels(reason=reason)} {n}")
        header("peerscale_irc_failures_total", "counter", "Failure responses, by kind (invalid, insufficient, internal).")
        for kind, n in sorted(failures.items()):
            lines.append(f"peerscale_irc_failures_total{_labels(kind=kind)} {n}")
        header("peerscale_irc_decision_duration_seconds", "histogram", "Time to decide one request, by path.")
        for path in PATHS:
            cumulative = 0
            for bound, n in zip((*LATENCY_BUCKETS_S, float("inf")), buckets[path]):
                cumulative += n
                labels = _labels(path=path, le=_number(bound))
                lines.append(f"peerscale_irc_decision_duration_seconds_bucket{labels} {cumulative}")
            lines.append(f"peerscale_irc_decision_duration_seconds_sum{_labels(path=path)} {sums[path] / 1e9!r}")
            lines.append(f"peerscale_irc_decision_duration_seconds_count{_labels(path=path)} {cumulative}")
        for event, (name, text) in EVENTS.items():
            header(name, "counter", text)
            lines.append(f"{name} {events.get(event, 0)}")
        seen: set[str] = set()
        for name, kind, text, gauge_labels, value in gauges:
            if name not in seen:
                header(name, kind, text)
                seen.add(name)
            lines.append(f"{name}{_labels(**gauge_labels)} {_number(value) if value == value else 'NaN'}")
        return "\n".join(lines) + "\n"
