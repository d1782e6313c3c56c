"""Decision log: every IRC decision goes to `lake/raw/irc_outcomes`, without blocking requests.

The request path appends a plain tuple to a bounded deque (a few hundred ns); a background
thread drains it every `flush_interval_s` (or as soon as `batch_size` records wait) and writes
one Parquet file per hour partition per batch:

    lake/raw/irc_outcomes/date=YYYY-MM-DD/hour=HH/part-<uuid>.parquet

Files are append-only and uniquely named, so any number of processes and replicas can log to
the same lake; locally each file is written under a dot-name and renamed (readers, which skip
dot-files, never see half a file). The partition is the hour of `requested_at` (the data
interval the next hourly run reads). When the queue is full a record is dropped and counted
(`dropped`), never waited for; `close()` (also run at interpreter exit) flushes what is queued.
pyarrow is imported by the writer thread, not by `import pipeline.irc`.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import math
import numbers
import os
import socket
import threading
import time
import uuid
import weakref
from collections import deque
from datetime import UTC, datetime
from typing import Any

from pipeline.common.numeric import SECONDS_PER_HOUR

log = logging.getLogger(__name__)

DATASET = "irc_outcomes"
_US_PER_HOUR = SECONDS_PER_HOUR * 1_000_000  # outcome timestamps are µs since the epoch
_CHUNK = 256  # records converted to Arrow per GIL hold
_YIELD_S = 0.0002

# Column order of the tuples the coordinator submits (see Coordinator._outcome).
COLUMNS: tuple[str, ...] = (
    "request_id", "requested_at", "decided_at", "source_region", "destination_region", "priority",
    "vcpu", "memory_gib", "storage_gib", "bandwidth_gbps", "duration_s",
    "status", "path", "latency_class", "miss_reason", "short_resources",
    "allocation_id", "plan_id", "decision_us", "provisioning_s", "instance", "serving_region",
)
_STRING = {"request_id", "source_region", "destination_region", "priority", "status", "path", "latency_class",
           "miss_reason", "short_resources", "allocation_id", "plan_id", "instance", "serving_region"}
_TIME = {"requested_at", "decided_at"}


def outcome_schema() -> Any:
    """pyarrow schema of `raw/irc_outcomes` (columns above; times UTC microseconds)."""
    import pyarrow as pa

    utc = pa.timestamp("us", tz="UTC")
    return pa.schema(
        [(name, utc if name in _TIME else pa.string() if name in _STRING else pa.float64()) for name in COLUMNS]
    )


def default_instance() -> str:
    """hostname:pid:short-uuid - which replica decided (several may log to one lake)."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


def _as_str(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):
        return value
    try:
        return repr(value)[:200]
    except ValueError:  # an int past repr()'s 4,300 digits
        return f"<{type(value).__name__} too large to show>"


def _as_float(value: Any) -> float | None:
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        try:
            number = float(value)
        except OverflowError:  # an int beyond any float: logged as missing, like inf
            return None
        return number if math.isfinite(number) else None
    return None


def _as_time(value: Any) -> datetime | None:
    try:
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            return datetime.fromtimestamp(value, tz=UTC)
        if isinstance(value, datetime) and value.tzinfo is not None and value.utcoffset() is not None:
            return value.astimezone(UTC)
    except (OverflowError, ValueError, OSError):  # outside the calendar: logged as missing
        return None
    return None


class _Sink:
    """The queue and the writing; shared by the facade and its writer thread."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.queue: deque[tuple[Any, ...]] = deque()
        self.write_lock = threading.Lock()
        self.stats_lock = threading.Lock()
        self.written = 0
        self.dropped = 0
        self.write_errors = 0
        self.files = 0

    def count_dropped(self, n: int = 1) -> None:
        with self.stats_lock:
            self.dropped += n

    def flush(self) -> int:
        with self.write_lock:
            batch = []
            queue = self.queue
            while queue:
                try:
                    batch.append(queue.popleft())
                except IndexError:  # pragma: no cover - drained concurrently
                    break
            if not batch:
                return 0
            try:
                written = self._write(batch)
            except Exception:
                log.exception("IRC outcome log: could not write %d records to %s", len(batch), self.base)
                with self.stats_lock:
                    self.write_errors += 1
                    self.dropped += len(batch)
                return 0
            with self.stats_lock:
                self.written += written
            return written

    def _write(self, batch: list[tuple[Any, ...]]) -> int:
        import pyarrow as pa

        tables = []
        for start in range(0, len(batch), _CHUNK):
            tables.append(self._convert(batch[start:start + _CHUNK]))
            # Converting Python values holds the GIL: pause between chunks so request threads
            # never wait behind a whole batch (keeps the decision p99 flat while we flush).
            time.sleep(_YIELD_S)
        return self._write_partitions(pa.concat_tables(tables))

    def _convert(self, records: list[tuple[Any, ...]]) -> Any:
        import pyarrow as pa

        try:
            return _table(records)
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError, OverflowError):
            cleaned = []
            for record in records:  # slow path: one odd record must not lose the batch
                try:
                    cleaned.append(clean_record(record))
                except Exception:
                    self.count_dropped()
            return _table(cleaned)

    def _write_partitions(self, table: Any) -> int:
        import pyarrow.compute as pc
        import pyarrow.parquet as pq

        from pipeline.common import storage

        if table.num_rows == 0:
            return 0
        stamp = pc.coalesce(table["requested_at"], table["decided_at"])
        hours = pc.divide(stamp.cast("int64"), _US_PER_HOUR)  # whole hours since the epoch (1970 onwards)
        fs, base = storage.filesystem(self.base)
        local = not storage.is_s3(self.base)
        total = 0
        for hour in sorted(pc.unique(hours).to_pylist()):
            part = table.filter(pc.equal(hours, hour))
            moment = datetime.fromtimestamp(hour * SECONDS_PER_HOUR, tz=UTC)
            directory = f"{base}/date={moment:%Y-%m-%d}/hour={moment:%H}"
            name = f"part-{uuid.uuid4().hex}.parquet"
            fs.create_dir(directory, recursive=True)
            if local:
                tmp = f"{directory}/.{name}.tmp"
                with fs.open_output_stream(tmp) as out:
                    pq.write_table(part, out)
                os.replace(tmp, f"{directory}/{name}")
            else:
                with fs.open_output_stream(f"{directory}/{name}") as out:
                    pq.write_table(part, out)
            total += part.num_rows
            with self.stats_lock:
                self.files += 1
        return total


def _table(records: list[tuple[Any, ...]]) -> Any:
    """Columns straight from the tuples (times as POSIX seconds); raises on an odd value."""
    import pyarrow as pa
    import pyarrow.compute as pc

    schema = outcome_schema()
    columns = list(zip(*records)) if records else [()] * len(COLUMNS)
    arrays = []
    for name, values in zip(COLUMNS, columns):
        if name in _TIME:
            seconds = pa.array(values, pa.float64())
            arrays.append(pc.multiply(seconds, 1e6).cast(pa.int64(), safe=False).cast(schema.field(name).type))
        else:
            arrays.append(pa.array(values, schema.field(name).type))
    return pa.Table.from_arrays(arrays, schema=schema)


def clean_record(record: tuple[Any, ...]) -> tuple[Any, ...]:
    """Any record → strings, finite floats (times as POSIX seconds) or None; decided_at defaults to now."""
    row: list[Any] = []
    for name, value in zip(COLUMNS, record):
        if name in _STRING:
            row.append(_as_str(value))
        elif name in _TIME:
            moment = _as_time(value)
            row.append(moment.timestamp() if moment is not None else None)
        else:
            row.append(_as_float(value))
    if row[2] is None:
        row[2] = datetime.now(UTC).timestamp()
    return tuple(row)


def _writer(sink: _Sink, owner: weakref.ref[OutcomeLog], wake: threading.Event, stop: threading.Event,
            interval_s: float) -> None:
    """Writer thread: flush every interval; exits (after a last flush) on close or when the owner is gone."""
    while not stop.is_set():
        wake.wait(interval_s)
        wake.clear()
        sink.flush()
        if owner() is None:
            break
    sink.flush()
    _live_sinks.discard(sink)


class OutcomeLog:
    """Bounded, non-blocking, batched Parquet writer of decisions (see module docstring)."""

    def __init__(
        self,
        lake_root: str | os.PathLike[str],
        dataset: str = DATASET,
        *,
        batch_size: int = 5000,
        flush_interval_s: float = 2.0,
        max_queue: int = 200_000,
    ) -> None:
        self.base = f"{os.fspath(lake_root).rstrip('/')}/raw/{dataset}"
        self.batch_size = batch_size
        self.flush_interval_s = flush_interval_s
        self.max_queue = max_queue
        self._sink = _Sink(self.base)
        self._queue = self._sink.queue
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._start_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._closed = False

    # -- request path --------------------------------------------------------------------------

    def submit(self, record: tuple[Any, ...]) -> bool:
        """Queue one record; False (and counted) when the queue is full or the log is closed."""
        queue = self._queue
        if len(queue) >= self.max_queue or self._closed:
            self._sink.count_dropped()
            return False
        queue.append(record)
        if self._thread is None:
            self._start()
        if len(queue) >= self.batch_size:
            self._wake.set()
        return True

    # -- writer --------------------------------------------------------------------------------

    def _start(self) -> None:
        with self._start_lock:
            if self._thread is None and not self._closed:
                _live_sinks.add(self._sink)
                thread = threading.Thread(
                    target=_writer,
                    args=(self._sink, weakref.ref(self), self._wake, self._stop, self.flush_interval_s),
                    name="irc-outcome-log",
                    daemon=True,
                )
                thread.start()
                self._thread = thread

    def pending(self) -> int:
        return len(self._queue)

    def flush(self) -> int:
        """Write everything queued now (from any thread); returns records written."""
        return self._sink.flush()

    def stats(self) -> dict[str, int]:
        sink = self._sink
        with sink.stats_lock:
            return {"written": sink.written, "dropped": sink.dropped, "write_errors": sink.write_errors,
                    "files": sink.files, "pending": len(sink.queue)}

    def close(self) -> None:
        """Stop the writer and flush what is queued (idempotent)."""
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        self._wake.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=30)
        self._sink.flush()
        _live_sinks.discard(self._sink)

    def __enter__(self) -> OutcomeLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


_live_sinks: set[_Sink] = set()


@atexit.register
def _flush_all_at_exit() -> None:
    for sink in list(_live_sinks):
        with contextlib.suppress(Exception):
            sink.flush()
