"""The IRC's metrics through prometheus_client, across the worker processes of `peerscale irc serve`.

Imported only by the HTTP service (`pipeline.irc.http_app`), never by `import pipeline.irc`: the
library keeps its own dependency-free counters (`pipeline.irc.metrics`). `PrometheusMetrics` is a
`DecisionMetrics` that also feeds prometheus_client, under the same metric names, so the
coordinator's `metrics()` and the service's `/metrics` always agree.

Multi-process mode: with PROMETHEUS_MULTIPROC_DIR set (by `serve`, before any worker imports
prometheus_client) every worker writes its counters and histograms to memory-mapped files there
and a scrape of any worker sums them (`collect`). Gauges carry a multiprocess mode: the plan's age
and validity are the worst live worker's (`livemax` / `livemin`), queues are summed over live
workers, per-process figures keep a `pid` label. Workers that are gone are reaped at scrape time
(`mark_process_dead`), so their gauges vanish while their counts stay in the totals.
"""

from __future__ import annotations

import glob
import os
import re
from collections.abc import Iterable, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, multiprocess
from prometheus_client.process_collector import ProcessCollector

from pipeline.irc.metrics import _ALWAYS, EVENTS, LATENCY_BUCKETS_S, PATHS, DecisionMetrics

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# How gauges of several workers combine (prometheus_client multiprocess modes), by metric name.
GAUGE_MODES: Mapping[str, str] = {
    "peerscale_irc_plan_age_seconds": "livemax",  # the stalest plan any live worker serves from
    "peerscale_irc_plan_valid_remaining_seconds": "livemin",
    "peerscale_irc_plan_info": "livemax",
    "peerscale_irc_outcomes_pending": "livesum",
    "peerscale_irc_ready": "livemin",  # 1 only when every live worker is ready
    # Per-process figures (/proc): one series per live worker, with a pid label.
    **{f"peerscale_irc_worker_{name}": "liveall" for name in (
        "virtual_memory_bytes", "resident_memory_bytes", "start_time_seconds", "open_fds", "max_fds")},
}
DEFAULT_GAUGE_MODE = "livemax"  # ledger utilization: the same shared ledger seen by every worker
_PID_FILE = re.compile(r"_(\d+)\.db$")


def multiprocess_dir() -> str | None:
    """The multi-process directory in force, or None (single-process: one registry in memory)."""
    return os.environ.get(MULTIPROC_ENV) or None


class PrometheusMetrics(DecisionMetrics):
    """Decision counters, latency histogram and events, in prometheus_client and in the library's snapshot."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        super().__init__()
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self._p_requests = Counter("peerscale_irc_requests_total", "Peering requests decided, by path and status.",
                                 ["path", "status"], registry=r)
        self._p_misses = Counter("peerscale_irc_preallocation_misses_total",
                               "Valid requests the pre-allocation did not serve, by reason.", ["reason"], registry=r)
        self._p_failures = Counter("peerscale_irc_failures_total",
                                 "Failure responses, by kind (invalid, insufficient, internal).", ["kind"], registry=r)
        self._p_latency = Histogram("peerscale_irc_decision_duration_seconds", "Time to decide one request, by path.",
                                  ["path"], buckets=LATENCY_BUCKETS_S, registry=r)
        self._p_events = {event: Counter(name, text, registry=r) for event, (name, text) in EVENTS.items()}
        # Children cached: `.labels()` is a dict lookup plus a lock; the request path pays it once per series.
        self._request_children = {key: self._p_requests.labels(*key) for key in _ALWAYS}  # exported even at 0
        self._latency_children = {path: self._p_latency.labels(path) for path in PATHS}
        self.http_requests = Counter("peerscale_irc_http_requests_total", "HTTP answers, by route and status code.",
                                     ["route", "code"], registry=r)
        self._p_gauges: dict[str, Gauge] = {}
        self._gauge_labels: dict[str, set[tuple[str, ...]]] = {}
        self._counters: dict[str, Counter] = {}
        self._counter_seen: dict[str, float] = {}
        self._process = ProcessCollector(registry=None)

    def observe(self, path: str, status: str, miss_reason: str | None, failure: str | None, latency_ns: int) -> None:
        super().observe(path, status, miss_reason, failure, latency_ns)
        child = self._request_children.get((path, status))
        if child is None:
            child = self._request_children[(path, status)] = self._p_requests.labels(path, status)
        child.inc()
        if miss_reason is not None:
            self._p_misses.labels(miss_reason).inc()
        if failure is not None:
            self._p_failures.labels(failure).inc()
        self._latency_children[path].observe(latency_ns / 1e9)

    def count(self, event: str, n: int = 1) -> None:
        super().count(event, n)
        counter = self._p_events.get(event)
        if counter is not None:
            counter.inc(n)

    # -- scrape-time figures --------------------------------------------------------------------

    def set_gauges(self, rows: Iterable[tuple[str, str, str, Mapping[str, object], float]]) -> None:
        """Publish the coordinator's gauge rows (`Coordinator.gauges()`): gauges set, counters raised to the
        row's value; a label set no longer reported is set to 0 (a replaced plan's `plan_info`)."""
        current: dict[str, set[tuple[str, ...]]] = {}
        for name, kind, text, labels, value in rows:
            if kind == "counter":
                self._raise_counter(name, text, float(value))
                continue
            gauge = self._gauge(name, text, tuple(labels))
            key = tuple(str(labels[k]) for k in labels)
            (gauge.labels(*key) if key else gauge).set(float(value))
            current.setdefault(name, set()).add(key)
        for name, seen in self._gauge_labels.items():
            for key in seen - current.get(name, set()):
                (self._p_gauges[name].labels(*key) if key else self._p_gauges[name]).set(0.0)
        for name, keys in current.items():
            self._gauge_labels.setdefault(name, set()).update(keys)

    def _gauge(self, name: str, text: str, labelnames: tuple[str, ...]) -> Gauge:
        gauge = self._p_gauges.get(name)
        if gauge is None:
            mode: Any = GAUGE_MODES.get(name, DEFAULT_GAUGE_MODE)  # one of prometheus_client's literal modes
            gauge = self._p_gauges[name] = Gauge(name, text, labelnames, registry=self.registry, multiprocess_mode=mode)
        return gauge

    def _raise_counter(self, name: str, text: str, value: float) -> None:
        """A cumulative figure kept elsewhere (outcome log, /proc) as a counter: add what it grew by."""
        counter = self._counters.get(name)
        if counter is None:
            counter = self._counters[name] = Counter(name, text, registry=self.registry)
        grown = value - self._counter_seen.get(name, 0.0)
        if grown > 0:
            counter.inc(grown)
            self._counter_seen[name] = value

    def process_rows(self) -> list[tuple[str, str, str, dict[str, object], float]]:
        """This worker's CPU, memory, file descriptors and start time (/proc), as `set_gauges` rows."""
        rows: list[tuple[str, str, str, dict[str, object], float]] = []
        for family in self._process.collect():
            for sample in family.samples:
                if sample.name == "process_cpu_seconds_total":
                    rows.append(("peerscale_irc_process_cpu_seconds_total", "counter",
                                 "CPU seconds of the service's workers (summed, dead workers included).", {}, sample.value))
                else:
                    name = sample.name.replace("process_", "peerscale_irc_worker_", 1)
                    rows.append((name, "gauge", f"Per worker (pid label): {family.documentation}", {}, sample.value))
        return rows


def reap_dead_workers(directory: str) -> list[int]:
    """mark_process_dead for every pid with files in `directory` that no longer runs; the pids reaped."""
    reaped = []
    pids = {int(m.group(1)) for path in glob.glob(os.path.join(directory, "gauge_live*.db"))
            if (m := _PID_FILE.search(path))}
    for pid in sorted(pids):
        if pid != os.getpid() and not _alive(pid):
            multiprocess.mark_process_dead(pid, directory)
            reaped.append(pid)
    return reaped


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process: not ours to reap
    return True


def exposition(metrics: PrometheusMetrics) -> bytes:
    """The text a scrape gets: every worker's files in multi-process mode, else this process's registry."""
    directory = multiprocess_dir()
    if directory is None:
        return generate_latest(metrics.registry)
    reap_dead_workers(directory)
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=directory)
    return generate_latest(registry)


def clean_directory(directory: str) -> None:
    """Empty the multi-process directory at service start: files of an earlier run would be summed in."""
    os.makedirs(directory, exist_ok=True)
    for path in glob.glob(os.path.join(directory, "*.db")):
        os.remove(path)


def mark_exited(directory: str | None = None) -> None:
    """This worker is stopping: drop its live gauges (its counters stay in the totals)."""
    directory = directory or multiprocess_dir()
    if directory is not None:
        multiprocess.mark_process_dead(os.getpid(), directory)


__all__ = ["CONTENT_TYPE", "PrometheusMetrics", "clean_directory", "exposition", "mark_exited", "multiprocess_dir",
           "reap_dead_workers"]
