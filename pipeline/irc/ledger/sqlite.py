"""SQLite (WAL) ledger: several IRC processes on one host share one file.

Every mutation is one `BEGIN IMMEDIATE` transaction: SQLite admits one writer at a time across
all processes, so check-and-debit over every window a session overlaps is atomic without any
row-level locking; readers (metrics) never block writers in WAL mode. `synchronous=NORMAL`
keeps commits off fsync (a power cut may lose the last reservations, never corrupt the file),
and the WAL is checkpointed by a background thread (PASSIVE, every `checkpoint_interval_s`)
instead of by whichever request happens to cross SQLite's auto-checkpoint threshold - so no
decision pays for a checkpoint's fsync.

Writers of one file also queue on an advisory `flock` of `<file>.writer-lock` before `BEGIN
IMMEDIATE`: the kernel wakes the next writer as soon as the lock is free, where SQLite's own busy
handler sleeps 1, 2, 5, 10 ... ms between retries - with two HTTP workers contending that sleep,
not the work, bounded throughput and made the p99. SQLite's lock still decides correctness (a
process without the flock, or one that waited past `timeout_s` for it, is serialised by `BEGIN
IMMEDIATE` as before). A reservation that fits is debited by one UPDATE over every cell.
`batch()` groups the writes of several decisions into one transaction (group commit: one commit,
one WAL append for all; `Coordinator.handle_batch`, used by the HTTP service).
Same contract as `pipeline.irc.ledger` (carry-in, plan_id ordering, expiry - bounded by the host's
wall clock, which every process sharing the file reads).
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import TypeVar

from pipeline.irc.ledger.protocol import DEFAULT_RETENTION_S, fits, short_resources
from pipeline.irc.plan_source import CapacityRow

try:  # advisory writer queue (module doc); without fcntl SQLite's busy handler alone serialises writers
    import fcntl
except ImportError:  # pragma: no cover - not POSIX
    fcntl = None  # type: ignore[assignment]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS irc_capacity (
    region        TEXT    NOT NULL,
    window_start  INTEGER NOT NULL,
    window_end    INTEGER NOT NULL,
    resource_type TEXT    NOT NULL,
    capacity      REAL    NOT NULL,
    used          REAL    NOT NULL DEFAULT 0,
    plan_id       TEXT    NOT NULL,
    PRIMARY KEY (region, window_start, resource_type)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS irc_allocations (
    allocation_id TEXT PRIMARY KEY,
    region        TEXT NOT NULL,
    starts_at     REAL NOT NULL,
    expires_at    REAL NOT NULL,
    requirements  TEXT NOT NULL,
    priority      TEXT
);
CREATE INDEX IF NOT EXISTS irc_allocations_expiry ON irc_allocations (expires_at);
CREATE INDEX IF NOT EXISTS irc_allocations_region ON irc_allocations (region, starts_at);
CREATE TABLE IF NOT EXISTS irc_od_pools (
    region        TEXT NOT NULL,
    resource_type TEXT NOT NULL,
    capacity      REAL NOT NULL,
    plan_id       TEXT NOT NULL,
    PRIMARY KEY (region, resource_type)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS irc_od_grants (
    allocation_id TEXT NOT NULL,
    region        TEXT NOT NULL,
    resource_type TEXT NOT NULL,  -- '' (quantity 0) marks a grant that holds nothing
    quantity      REAL NOT NULL,
    expires_at    REAL NOT NULL,
    PRIMARY KEY (allocation_id, resource_type)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS irc_od_grants_region ON irc_od_grants (region, expires_at);
CREATE INDEX IF NOT EXISTS irc_od_grants_expiry ON irc_od_grants (expires_at);
CREATE TABLE IF NOT EXISTS irc_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
"""

_OVERLAP = "region = ? AND window_start < ? AND window_end > ?"
_T = TypeVar("_T")
# The debit of a reservation that fits: one statement for every cell (one UPDATE per cell cost more; RETURNING
# instead of the SELECT before it cost four times a plain UPDATE, measured in bench/RESULTS.md).
_DEBIT = ("UPDATE irc_capacity SET used = used + CASE resource_type {cases} END "
          f"WHERE {_OVERLAP} AND resource_type IN ({{types}})")
_DEBIT_SQL = {n: _DEBIT.format(cases=" ".join(["WHEN ? THEN ?"] * n), types=", ".join("?" * n)) for n in range(1, 9)}
_LOCK_POLL_S = (0.00005, 0.001)  # first and longest pause between tries of a busy writer lock


class SQLiteLedger:
    """Ledger in one SQLite file; safe across threads (one connection + lock) and processes."""

    sweeps_inline = False
    shared = True

    def __init__(self, path: str | os.PathLike[str], *, timeout_s: float = 30.0,
                 retention_s: float = DEFAULT_RETENTION_S, checkpoint_interval_s: float | None = 1.0) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._retention_s = retention_s
        self._timeout_s = timeout_s
        self._lock = threading.RLock()  # re-entered by the writes of a `batch()` on its thread
        self._in_batch = False  # a `batch()` transaction is open (read and set under self._lock)
        self._writer_fd = _open_writer_lock(self.path)
        self._conn = sqlite3.connect(
            str(self.path), timeout=timeout_s, isolation_level=None, check_same_thread=False
        )
        deadline = time.monotonic() + timeout_s
        _until_unlocked(lambda: self._conn.execute("PRAGMA journal_mode=WAL"), deadline)
        self._conn.execute("PRAGMA synchronous=NORMAL")
        with self._lock:
            _until_unlocked(lambda: self._write(lambda c: c.executescript(_SCHEMA) and None, begin=False), deadline)
        self._stop = threading.Event()
        if checkpoint_interval_s is not None:
            self._conn.execute("PRAGMA wal_autocheckpoint=0")  # the thread below checkpoints instead
            threading.Thread(
                target=_checkpointer,
                args=(str(self.path), timeout_s, self._stop, checkpoint_interval_s),
                name="irc-sqlite-checkpoint",
                daemon=True,
            ).start()
            weakref.finalize(self, self._stop.set)

    def __repr__(self) -> str:
        return f"SQLiteLedger({str(self.path)!r})"

    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        """Group commit: every write of this thread until the block ends is part of one IMMEDIATE transaction
        (each in its own savepoint, so a write that fails is undone alone), committed when the block ends.

        Nothing is durable - nor may be reported to a client - before the block has ended without an
        exception; when it raises (the commit failed, or SQLite rolled the transaction back on its own,
        e.g. disk full) none of the block's writes happened. Other threads wait for the block; other
        processes are serialised by SQLite's write lock as ever, so a batch can never over-grant.
        """
        with self._lock:
            if self._in_batch:  # nested: part of the enclosing batch
                yield
                return
            conn = self._conn
            queued = self._queue_writer()
            try:
                conn.execute("BEGIN IMMEDIATE")
                self._in_batch = True
                try:
                    yield
                    if not conn.in_transaction:
                        raise sqlite3.OperationalError("SQLite rolled the batch's transaction back")
                    conn.execute("COMMIT")
                except BaseException:
                    if conn.in_transaction:
                        with contextlib.suppress(sqlite3.Error):
                            conn.execute("ROLLBACK")
                    raise
                finally:
                    self._in_batch = False
            finally:
                if queued is not None:
                    fcntl.flock(queued, fcntl.LOCK_UN)

    def _write(self, body: Callable[[sqlite3.Connection], _T], begin: bool = True) -> _T:
        """Run body(conn) in one IMMEDIATE transaction (caller holds self._lock), or in a savepoint of the
        open `batch()`."""
        conn = self._conn
        if not begin:
            return body(conn)
        if self._in_batch:
            return self._write_in_batch(conn, body)
        queued = self._queue_writer()
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                result = body(conn)
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
            return result
        finally:
            if queued is not None:
                fcntl.flock(queued, fcntl.LOCK_UN)

    @staticmethod
    def _write_in_batch(conn: sqlite3.Connection, body: Callable[[sqlite3.Connection], _T]) -> _T:
        if not conn.in_transaction:  # rolled back under us: nothing may be written outside the batch
            raise sqlite3.OperationalError("the batch's transaction was rolled back; its writes are refused")
        conn.execute("SAVEPOINT irc_write")
        try:
            result = body(conn)
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK TO irc_write")
                conn.execute("RELEASE irc_write")
            raise
        conn.execute("RELEASE irc_write")
        return result

    def _queue_writer(self) -> int | None:
        """Take the advisory writer lock (module doc): its descriptor, or None when there is none or it stayed busy for `timeout_s`
        (then `BEGIN IMMEDIATE` and SQLite's busy handler decide, as without it)."""
        fd = self._writer_fd
        if fd is None:
            return None
        pause, deadline = _LOCK_POLL_S[0], None
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return fd
            except BlockingIOError:
                pass
            except OSError:
                return None
            now = time.monotonic()
            if deadline is None:
                deadline = now + self._timeout_s
            elif now >= deadline:
                return None
            time.sleep(pause)
            pause = min(pause * 2, _LOCK_POLL_S[1])

    # -- plan loading --------------------------------------------------------------------------

    def load_capacities(self, rows: Iterable[CapacityRow], plan_id: str) -> None:
        rows = [(int(s), int(e), r, t, float(q)) for s, e, r, t, q in rows]

        def body(conn: sqlite3.Connection) -> None:
            existing = {
                (r, s, t): p
                for r, s, t, p in conn.execute("SELECT region, window_start, resource_type, plan_id FROM irc_capacity")
            }
            updates, inserts = [], []
            for start, end, region, resource_type, quantity in rows:
                owner = existing.get((region, start, resource_type))
                if owner is None:
                    inserts.append((region, start, end, resource_type, quantity))
                elif owner <= plan_id:
                    updates.append((quantity, end, plan_id, region, start, resource_type))
            conn.executemany(
                "UPDATE irc_capacity SET capacity = ?, window_end = ?, plan_id = ? "
                "WHERE region = ? AND window_start = ? AND resource_type = ?",
                updates,
            )
            if inserts:
                live: dict[str, list[tuple[float, float, dict[str, float]]]] = {}
                for region, starts_at, expires_at, requirements in conn.execute(
                    "SELECT region, starts_at, expires_at, requirements FROM irc_allocations"
                ):
                    live.setdefault(region, []).append((starts_at, expires_at, json.loads(requirements)))
                conn.executemany(
                    "INSERT INTO irc_capacity (region, window_start, window_end, resource_type, capacity, used, plan_id) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?)",
                    [
                        (region, start, end, rt, quantity,
                         sum(req.get(rt, 0.0) for s, e, req in live.get(region, ()) if s < end and e > start),
                         plan_id)
                        for region, start, end, rt, quantity in inserts
                    ],
                )

        with self._lock:
            self._write(body)

    # -- request path --------------------------------------------------------------------------

    def reserve(
        self,
        allocation_id: str,
        region: str,
        requirements: Mapping[str, float],
        start_s: float,
        end_s: float,
        ceiling: float = 1.0,
        priority: str = "normal",
        now_s: float | None = None,
    ) -> tuple[str, ...]:
        n = len(requirements)
        params: list[object] = []
        for resource_type, quantity in requirements.items():
            params += (resource_type, quantity)
        params += (region, end_s, start_s, *requirements)
        debit = _DEBIT_SQL.get(n) or _DEBIT.format(cases=" ".join(["WHEN ? THEN ?"] * n), types=", ".join("?" * n))

        def body(conn: sqlite3.Connection) -> tuple[str, ...]:
            cells: dict[int, dict[str, tuple[float, float]]] = {}
            for window_start, resource_type, capacity, used in conn.execute(
                f"SELECT window_start, resource_type, capacity, used FROM irc_capacity WHERE {_OVERLAP}",
                (region, end_s, start_s),
            ):
                cells.setdefault(window_start, {})[resource_type] = (capacity, used)
            short = short_resources(cells.values(), requirements, ceiling)
            if short:
                return short
            conn.execute(debit, params)  # the cells just read: same predicate, same transaction
            conn.execute(
                "INSERT INTO irc_allocations (allocation_id, region, starts_at, expires_at, requirements, priority) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (allocation_id, region, start_s, end_s, json.dumps(dict(requirements)), priority),
            )
            return ()

        with self._lock:
            return self._write(body)

    @staticmethod
    def _credit(conn: sqlite3.Connection, region: str, starts_at: float, expires_at: float, requirements: str) -> None:
        conn.executemany(
            f"UPDATE irc_capacity SET used = max(0.0, used - ?) WHERE {_OVERLAP} AND resource_type = ?",
            [(q, region, expires_at, starts_at, rt) for rt, q in json.loads(requirements).items()],
        )

    def release(self, allocation_id: str) -> bool:
        def body(conn: sqlite3.Connection) -> bool:
            row = conn.execute(
                "DELETE FROM irc_allocations WHERE allocation_id = ? RETURNING region, starts_at, expires_at, requirements",
                (allocation_id,),
            ).fetchone()
            if row is None:
                return False
            self._credit(conn, *row)
            return True

        with self._lock:
            return self._write(body)

    def sweep(self, now_s: float) -> int:
        """Expire what ended by `now_s` - but never past this host's clock: every process sharing the
        file reads the same clock, so no caller (a skewed replica, a replay, a request dated 2099)
        can free a session another process still holds."""
        wall = time.time()
        if not now_s <= wall:  # also a NaN
            now_s = wall

        def body(conn: sqlite3.Connection) -> int:
            gone = conn.execute(
                "DELETE FROM irc_allocations WHERE expires_at <= ? RETURNING region, starts_at, expires_at, requirements",
                (now_s,),
            ).fetchall()
            for row in gone:
                self._credit(conn, *row)
            conn.execute("DELETE FROM irc_capacity WHERE window_end <= ?", (now_s - self._retention_s,))
            return len(gone)

        with self._lock:
            return self._write(body)

    # -- inspection ----------------------------------------------------------------------------

    def usage(self, window_start_s: int, region: str) -> dict[str, float]:
        with self._lock:
            return dict(self._conn.execute(
                "SELECT resource_type, used FROM irc_capacity WHERE region = ? AND window_start = ?",
                (region, int(window_start_s)),
            ).fetchall())

    def utilization(self, at_s: float) -> dict[tuple[str, str], tuple[float, float]]:
        with self._lock:
            rows = self._conn.execute(
                "SELECT region, resource_type, capacity, used FROM irc_capacity WHERE window_start <= ? AND window_end > ?",
                (at_s, at_s),
            ).fetchall()
        return {(r, t): (c, u) for r, t, c, u in rows}

    def live_allocations(self) -> int:
        with self._lock:
            return int(self._conn.execute("SELECT count(*) FROM irc_allocations").fetchone()[0])

    # -- on-demand admission (one IMMEDIATE transaction per grant: processes never over-admit) -----

    def load_pools(self, pools: Mapping[str, Mapping[str, float]], plan_id: str) -> None:
        rows = [(region, rt, float(q), plan_id) for region, quantities in pools.items() for rt, q in quantities.items()]

        def body(conn: sqlite3.Connection) -> None:
            current = conn.execute("SELECT value FROM irc_meta WHERE key = 'pools_plan_id'").fetchone()
            if current is not None and current[0] > plan_id:
                return  # a newer plan's pools are in force
            conn.execute("INSERT OR REPLACE INTO irc_meta (key, value) VALUES ('pools_plan_id', ?)", (plan_id,))
            conn.execute("DELETE FROM irc_od_pools")
            conn.executemany(
                "INSERT INTO irc_od_pools (region, resource_type, capacity, plan_id) VALUES (?, ?, ?, ?)", rows
            )

        with self._lock:
            self._write(body)

    def admit(self, allocation_id: str, region: str, requirements: Mapping[str, float], expires_at_s: float,
              now_s: float | None = None) -> bool:
        wanted = {rt: float(q) for rt, q in requirements.items() if q > 0}
        cutoff = _cutoff(now_s)

        def body(conn: sqlite3.Connection) -> bool:
            if conn.execute("SELECT 1 FROM irc_od_grants WHERE allocation_id = ? LIMIT 1", (allocation_id,)).fetchone():
                raise ValueError(f"allocation_id {allocation_id!r} already in use")
            pool = dict(conn.execute("SELECT resource_type, capacity FROM irc_od_pools WHERE region = ?", (region,)))
            if not pool or not fits(wanted, self._used(conn, region, cutoff), pool):
                return False
            conn.executemany(
                "INSERT INTO irc_od_grants (allocation_id, region, resource_type, quantity, expires_at) VALUES (?, ?, ?, ?, ?)",
                [(allocation_id, region, rt, q, expires_at_s) for rt, q in wanted.items()]
                or [(allocation_id, region, "", 0.0, expires_at_s)],
            )
            return True

        with self._lock:
            return self._write(body)

    @staticmethod
    def _used(conn: sqlite3.Connection, region: str, cutoff: float) -> dict[str, float]:
        return dict(conn.execute(
            "SELECT resource_type, sum(quantity) FROM irc_od_grants WHERE region = ? AND expires_at > ? "
            "GROUP BY resource_type",
            (region, cutoff),
        ))

    def release_admission(self, allocation_id: str) -> bool:
        with self._lock:
            return self._write(lambda conn: conn.execute(
                "DELETE FROM irc_od_grants WHERE allocation_id = ?", (allocation_id,)
            ).rowcount > 0)

    def pool_available(self, region: str, now_s: float | None = None) -> dict[str, float]:
        cutoff = _cutoff(now_s)
        with self._lock:
            pool = dict(self._conn.execute("SELECT resource_type, capacity FROM irc_od_pools WHERE region = ?", (region,)))
            used = self._used(self._conn, region, cutoff)
        return {rt: max(0.0, q - used.get(rt, 0.0)) for rt, q in pool.items()}

    def sweep_admissions(self, now_s: float) -> int:
        cutoff = _cutoff(now_s)
        with self._lock:
            gone = self._write(lambda conn: conn.execute(
                "DELETE FROM irc_od_grants WHERE expires_at <= ? RETURNING allocation_id", (cutoff,)
            ).fetchall())
        return len({row[0] for row in gone})

    def close(self) -> None:
        self._stop.set()
        with self._lock:
            self._conn.close()
            if self._writer_fd is not None:
                os.close(self._writer_fd)
                self._writer_fd = None


def _open_writer_lock(path: Path) -> int | None:
    """The advisory writer-lock file beside the database (module doc), or None where it cannot be had."""
    if fcntl is None:
        return None
    try:
        return os.open(f"{path}.writer-lock", os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o600)
    except OSError:
        return None


def _cutoff(now_s: float | None) -> float:
    """Grants that ended by this time no longer count: min(now_s, this host's clock) - never later."""
    wall = time.time()
    return wall if now_s is None or not now_s <= wall else now_s


def _until_unlocked(step: Callable[[], object], deadline: float) -> None:
    """Run `step`, retrying while SQLite says the database is locked or busy, until `deadline`.

    Replicas that open a new ledger file at the same moment race to switch it to WAL and create the
    schema; SQLite may answer SQLITE_BUSY at once, without calling the busy handler, where waiting
    could deadlock (seen in CI with four fuzz replicas starting together). Both steps are idempotent.
    """
    pause = 0.005
    while True:
        try:
            step()
            return
        except sqlite3.OperationalError as exc:
            text = str(exc).lower()
            if ("locked" not in text and "busy" not in text) or time.monotonic() + pause > deadline:
                raise
        time.sleep(pause)
        pause = min(pause * 2, 0.2)


def _checkpointer(path: str, timeout_s: float, stop: threading.Event, interval_s: float) -> None:
    """Fold the WAL back into the database file now and then, off the request path."""
    conn = sqlite3.connect(path, timeout=timeout_s, isolation_level=None, check_same_thread=False)
    try:
        while not stop.wait(interval_s):
            try:
                conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
            except sqlite3.Error:  # busy or gone: try again next time
                continue
        with contextlib.suppress(sqlite3.Error):
            conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
    finally:
        conn.close()
