"""The ledger contract, identical for the in-memory, SQLite and PostgreSQL backends.

PostgreSQL tests run against the real server (PEERSCALE_TEST_POSTGRES, default
postgresql://postgres@127.0.0.1:5432/test), each in its own schema, dropped afterwards. If the
server is unreachable they fail with the reason - they are never skipped.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest

from pipeline.common import schemas
from pipeline.irc import Coordinator, PeeringRequest, stress
from pipeline.irc.ledger import InMemoryLedger, Ledger, open_ledger
from pipeline.irc.ledger.protocol import TOLERANCE, fits, over_capacity, over_capacity_sql
from pipeline.irc.ledger.sqlite import SQLiteLedger
from tests.test_irc import publish_plan

REPO = Path(__file__).resolve().parents[1]
PG_URL = os.environ.get("PEERSCALE_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
EU, US = "eu-west-1", "us-east-1"
H = 3600
T = 1_767_225_600  # 2026-01-01T00:00Z
ROWS = [
    (T + w * H, T + (w + 1) * H, EU, rt, q)
    for w in range(3)
    for rt, q in (("vcpu", 8.0), ("memory_gib", 32.0))
]


def postgres_url() -> str:
    """A fresh schema on the test server (fails loudly when the server is not there)."""
    try:
        import psycopg

        with psycopg.connect(PG_URL, connect_timeout=5) as conn:
            conn.execute("SELECT 1")
    except Exception as exc:
        pytest.fail(
            f"PostgreSQL is not reachable at {PG_URL} ({type(exc).__name__}: {exc}). The IRC's replica ledger is "
            "tested against a real server: start PostgreSQL or point PEERSCALE_TEST_POSTGRES at one.",
            pytrace=False,
        )
    return f"{PG_URL}?schema=irc_test_{uuid.uuid4().hex[:12]}"


def drop_postgres(url: str) -> None:
    from pipeline.irc.ledger.postgres import PostgresLedger

    ledger = PostgresLedger.from_url(url)
    ledger.drop()
    ledger.close()


@pytest.fixture(params=["memory", "sqlite", "postgres"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "memory":
        yield "memory"
    elif request.param == "sqlite":
        yield f"sqlite://{tmp_path / 'ledger.db'}"
    else:
        pg = postgres_url()
        yield pg
        drop_postgres(pg)


@pytest.fixture
def ledger(url: str) -> Iterator[Ledger]:
    store = open_ledger(url)
    store.load_capacities(ROWS, "plan-a")
    yield store
    store.close()


# -- contract ------------------------------------------------------------------------------------


def test_all_or_nothing_across_windows_and_resources(ledger: Ledger) -> None:
    assert ledger.reserve("pre-1", EU, {"vcpu": 5.0}, T + H - 600, T + H + 600) == ()
    assert ledger.usage(T, EU)["vcpu"] == 5.0 and ledger.usage(T + H, EU)["vcpu"] == 5.0
    assert ledger.usage(T + 2 * H, EU).get("vcpu", 0.0) == 0.0
    # memory fits, vcpu does not (in window 1): nothing at all is taken.
    assert ledger.reserve("pre-2", EU, {"vcpu": 4.0, "memory_gib": 1.0}, T + H + 60, T + H + 120) == ("vcpu",)
    assert ledger.usage(T + H, EU) == {"vcpu": 5.0, "memory_gib": 0.0}
    assert ledger.reserve("pre-3", EU, {"vcpu": 3.0, "memory_gib": 32.0}, T + H + 60, T + H + 120) == ()
    assert ledger.reserve("pre-4", EU, {"vcpu": 1.0}, T, T + 60) == ()  # window 0 still has room
    assert sorted(ledger.reserve("pre-5", EU, {"vcpu": 1.0, "storage_gib": 1.0}, T + 60, T + 120)) == ["storage_gib"]
    assert ledger.reserve("pre-6", "us-east-1", {"vcpu": 1.0}, T, T + 60) == ("vcpu",)  # unknown region
    assert ledger.reserve("pre-7", EU, {"vcpu": 1.0}, T + 10 * H, T + 11 * H) == ("vcpu",)  # no window


def test_exact_fill_is_granted_and_ceiling_is_respected(ledger: Ledger) -> None:
    assert ledger.reserve("pre-1", EU, {"vcpu": 7.5}, T, T + 60, 0.9) == ("vcpu",)  # 7.5 > 0.9 × 8
    assert ledger.reserve("pre-2", EU, {"vcpu": 7.2}, T, T + 60, 0.9) == ()  # = 0.9 × 8 (float sum)
    assert ledger.reserve("pre-3", EU, {"vcpu": 0.8}, T, T + 60, 1.0) == ()  # fills it exactly
    assert ledger.reserve("pre-4", EU, {"vcpu": 1e-6}, T, T + 60, 1.0) == ("vcpu",)


# -- one capacity rule: used + q <= ceiling x capacity, up to TOLERANCE x max(1, limit) ------------

# (capacity, ceiling): tolerance relative to the limit, with a priority ceiling, absolute below 1 unit.
BOUNDARY_LIMITS = [(8.0, 1.0), (8.0, 0.95), (0.25, 1.0)]
# Excess over an exactly full window, in tolerances, and whether it is granted.
BOUNDARY_EXCESS = [(0.0, True), (0.5, True), (2.0, False)]


def _boundary_cases() -> list[tuple[float, float, float, float, bool]]:
    """(capacity, ceiling, half, tail, granted): a window half full, then `tail` more."""
    cases = []
    for capacity, ceiling in BOUNDARY_LIMITS:
        limit = capacity * ceiling
        for excess, granted in BOUNDARY_EXCESS:
            cases.append((capacity, ceiling, limit / 2, limit / 2 + excess * TOLERANCE * max(1.0, limit), granted))
    return cases


def test_capacity_rule_boundary_is_the_same_on_every_backend(url: str) -> None:
    """Exactly full and full + tolerance/2 are granted, full + 2 x tolerance is refused - as `over_capacity` says."""
    cases = _boundary_cases()
    store = open_ledger(url)
    store.load_capacities([(T + k * H, T + (k + 1) * H, EU, "vcpu", c[0]) for k, c in enumerate(cases)], "plan-a")
    try:
        for k, (capacity, ceiling, half, tail, granted) in enumerate(cases):
            start = T + k * H
            assert store.reserve(f"pre-{k}-half", EU, {"vcpu": half}, start, start + 60, ceiling) == ()
            decision = store.reserve(f"pre-{k}-tail", EU, {"vcpu": tail}, start, start + 60, ceiling) == ()
            assert decision is granted, (capacity, ceiling, tail)
            assert over_capacity(half, tail, capacity, ceiling) is not granted
    finally:
        store.close()


def test_on_demand_fits_applies_the_same_rule() -> None:
    for capacity, ceiling, half, tail, granted in _boundary_cases():
        if ceiling == 1.0:
            assert fits({"vcpu": tail}, {"vcpu": half}, {"vcpu": capacity}) is granted, (capacity, tail)


def test_postgres_rule_fragment_evaluates_like_the_python_rule() -> None:
    """The SQL the PostgreSQL ledger embeds gives `over_capacity`'s answer on and around the boundary."""
    postgres_url()  # fails loudly when the server is not there
    import psycopg

    cases = []
    for capacity in (0.0, 0.25, 1.0, 8.0, 1e6):
        for ceiling in (0.85, 0.95, 1.0):
            limit = capacity * ceiling
            for excess in (-1.0, 0.0, 0.5, 2.0):
                cases.append((limit / 2, limit / 2 + excess * TOLERANCE * max(1.0, limit), capacity, ceiling))
    expression = over_capacity_sql(used="v.u", quantity="v.q", capacity="v.c", ceiling="v.k")
    with psycopg.connect(PG_URL, connect_timeout=5) as conn:
        rows = conn.execute(
            f"SELECT {expression} FROM unnest(%s::float8[], %s::float8[], %s::float8[], %s::float8[]) "
            "WITH ORDINALITY AS v(u, q, c, k, i) ORDER BY v.i",
            [list(column) for column in zip(*cases, strict=True)],
        ).fetchall()
    assert [row[0] for row in rows] == [over_capacity(*case) for case in cases]
    assert {row[0] for row in rows} == {True, False}


def test_release_is_exactly_once_and_capacity_is_reusable(ledger: Ledger) -> None:
    assert ledger.reserve("pre-1", EU, {"vcpu": 8.0, "memory_gib": 2.0}, T + 100, T + 2 * H) == ()
    assert ledger.reserve("pre-2", EU, {"vcpu": 1.0}, T + 200, T + 300) == ("vcpu",)
    assert ledger.release("pre-1") is True
    assert ledger.release("pre-1") is False
    assert ledger.release("pre-unknown") is False
    assert ledger.usage(T, EU) == {"vcpu": 0.0, "memory_gib": 0.0}
    assert ledger.reserve("pre-3", EU, {"vcpu": 8.0}, T + 200, T + 2 * H) == ()


def test_duplicate_allocation_id_is_refused(ledger: Ledger) -> None:
    assert ledger.reserve("pre-1", EU, {"vcpu": 1.0}, T, T + 60) == ()
    with pytest.raises(Exception):  # noqa: B017 - backend-specific error type; the coordinator catches it
        ledger.reserve("pre-1", EU, {"vcpu": 1.0}, T, T + 60)
    assert ledger.usage(T, EU)["vcpu"] == 1.0


def test_sweep_returns_expired_allocations_and_old_windows(ledger: Ledger) -> None:
    assert ledger.reserve("pre-short", EU, {"vcpu": 6.0}, T + 10, T + 600) == ()
    assert ledger.reserve("pre-long", EU, {"vcpu": 2.0}, T + 20, T + 2 * H + 10) == ()
    assert ledger.sweep(T + 599) == 0
    assert ledger.sweep(T + 600) == 1
    assert ledger.release("pre-short") is False  # already expired: exactly once
    assert ledger.usage(T, EU)["vcpu"] == 2.0 and ledger.usage(T + 2 * H, EU)["vcpu"] == 2.0
    assert ledger.utilization(T + 30) == {(EU, "vcpu"): (8.0, 2.0), (EU, "memory_gib"): (32.0, 0.0)}
    # Windows that ended more than the retention (a day) ago are dropped.
    assert ledger.sweep(T + 25 * H + 5) == 1
    assert ledger.usage(T, EU) == {} and ledger.usage(T + 2 * H, EU)["vcpu"] == 0.0


def test_new_windows_carry_in_live_sessions_and_older_plans_never_win(ledger: Ledger) -> None:
    assert ledger.reserve("pre-long", EU, {"vcpu": 3.0, "memory_gib": 4.0}, T + 2 * H + 60, T + 5 * H) == ()
    newer = [(T + w * H, T + (w + 1) * H, EU, rt, q) for w in (2, 3, 4) for rt, q in (("vcpu", 6.0), ("memory_gib", 0.0))]
    ledger.load_capacities(newer, "plan-b")
    # Window 3 and 4 are new: the live session is already charged there.
    assert ledger.usage(T + 3 * H, EU) == {"vcpu": 3.0, "memory_gib": 4.0}
    assert ledger.utilization(T + 2 * H + 1)[(EU, "vcpu")] == (6.0, 3.0)  # window 2: capacity from plan-b
    assert ledger.utilization(T + 2 * H + 1)[(EU, "memory_gib")] == (0.0, 4.0)  # plan-b dropped it: 0
    assert ledger.reserve("pre-x", EU, {"vcpu": 3.0}, T + 3 * H, T + 3 * H + 60) == ()
    assert ledger.reserve("pre-y", EU, {"vcpu": 0.5}, T + 3 * H, T + 3 * H + 60) == ("vcpu",)
    # A replica still on plan-a reloading it does not overwrite plan-b's windows.
    ledger.load_capacities(ROWS, "plan-a")
    assert ledger.utilization(T + 2 * H + 1)[(EU, "vcpu")] == (6.0, 3.0)
    assert ledger.release("pre-long") is True
    assert ledger.usage(T + 4 * H, EU) == {"vcpu": 0.0, "memory_gib": 0.0}


# -- concurrency ---------------------------------------------------------------------------------


def _check(ledger: Ledger, runs: list[dict], swept: bool) -> int:
    """Usage equals the live grants and never exceeds capacity, in every window; returns grants."""
    errors = [e for run in runs for e in run["errors"]]
    assert errors == [], errors[:5]
    granted = [g for run in runs for g in run["granted"]]
    released = {r for run in runs for r in run["released"]}
    if swept:
        ledger.sweep(stress.SWEEP_AT)
    live = [g for g in granted if g[0] not in released and not (swept and g[5])]
    for start, end, region, rt, capacity in stress.ledger_fixture_rows():
        expected = sum(g[4].get(rt, 0.0) for g in live if g[1] == region and g[2] < end and g[3] > start)
        assert expected <= capacity + 1e-6, (region, start, rt, expected, capacity)
        assert ledger.usage(start, region).get(rt, 0.0) == pytest.approx(expected, abs=1e-6), (region, start, rt)
    return len(granted)




def test_many_threads_never_overgrant(url: str) -> None:
    store = open_ledger(url)
    store.load_capacities(stress.ledger_fixture_rows(), "plan-stress")
    try:
        first = stress.run(store, threads=8, ops=150, seed=1, release_share=0.0, sweep=False)
        granted = _check(store, [first], swept=False)
        assert 0 < granted < 8 * 150  # contention: capacity ran out

        second = stress.run(store, threads=8, ops=150, seed=2, release_share=0.4, sweep=True)
        _check(store, [first, second], swept=True)
        _release_all_and_refill(store, [first, second])
    finally:
        store.close()


def _release_all_and_refill(store: Ledger, runs: list[dict]) -> None:
    for run in runs:
        for grant in run["granted"]:
            store.release(grant[0])
    for start, end, region, rt, capacity in stress.ledger_fixture_rows():
        assert store.usage(start, region).get(rt, 0.0) == pytest.approx(0.0, abs=1e-6)
        assert store.reserve(f"pre-refill-{region}-{start}-{rt}", region, {rt: capacity}, start, end) == ()


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_several_processes_never_overgrant(backend: str, tmp_path: Path) -> None:
    url = f"sqlite://{tmp_path / 'shared.db'}" if backend == "sqlite" else postgres_url()
    try:
        subprocess.run([sys.executable, "-m", "pipeline.irc.stress", "--ledger", url, "--load"], check=True, cwd=REPO)
        workers = [
            subprocess.Popen(
                [sys.executable, "-m", "pipeline.irc.stress", "--ledger", url, "--threads", "4", "--ops", "120",
                 "--seed", str(seed), "--release-share", "0.3", "--sweep"],
                cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            )
            for seed in (11, 12, 13)
        ]
        runs = []
        for worker in workers:
            out, err = worker.communicate(timeout=120)
            assert worker.returncode == 0, err
            runs.append(json.loads(out))
        store = open_ledger(url)
        try:
            granted = _check(store, runs, swept=True)
            assert granted > 0 and {g[0].split("-")[1] for run in runs for g in run["granted"]} == {"s11", "s12", "s13"}
            _release_all_and_refill(store, runs)
        finally:
            store.close()
    finally:
        if backend == "postgres":
            drop_postgres(url)


def test_sqlite_ledger_persists_across_reopen(tmp_path: Path) -> None:
    path = tmp_path / "l.db"
    first = SQLiteLedger(path)
    first.load_capacities(ROWS, "plan-a")
    assert first.reserve("pre-1", EU, {"vcpu": 5.0}, T, T + 60) == ()
    first.close()
    again = SQLiteLedger(path)
    assert again.usage(T, EU)["vcpu"] == 5.0 and again.live_allocations() == 1
    assert again.release("pre-1") is True
    again.close()


def test_sqlite_writers_queue_on_the_writer_lock_and_fall_back_to_sqlite_after_the_timeout(tmp_path: Path) -> None:
    """A writer waits for the advisory lock another process holds (instead of SQLite's sleeping busy handler);
    one that waited `timeout_s` goes ahead under SQLite's own lock, so a stuck holder never blocks it for good."""
    import fcntl

    path = tmp_path / "l.db"
    store = SQLiteLedger(path, timeout_s=60.0, checkpoint_interval_s=None)
    store.load_capacities(ROWS, "plan-a")
    holder = os.open(f"{path}.writer-lock", os.O_RDWR)
    fcntl.flock(holder, fcntl.LOCK_EX)  # another writer in its transaction
    answers: list[tuple[str, ...]] = []
    writer = threading.Thread(target=lambda: answers.append(store.reserve("pre-1", EU, {"vcpu": 2.0}, T, T + 60)))
    writer.start()
    writer.join(0.5)
    assert writer.is_alive() and answers == []  # queued behind the holder
    fcntl.flock(holder, fcntl.LOCK_UN)
    writer.join(30)
    assert answers == [()] and store.usage(T, EU)["vcpu"] == 2.0
    store.close()

    impatient = SQLiteLedger(path, timeout_s=0.2, checkpoint_interval_s=None)
    fcntl.flock(holder, fcntl.LOCK_EX)  # held for good: the writer gives up waiting and SQLite serialises it
    try:
        assert impatient.reserve("pre-2", EU, {"vcpu": 3.0}, T, T + 60) == ()
        assert impatient.usage(T, EU)["vcpu"] == 5.0
    finally:
        fcntl.flock(holder, fcntl.LOCK_UN)
        os.close(holder)
        impatient.close()


def test_sqlite_batch_is_one_transaction_and_a_failed_write_is_undone_alone(tmp_path: Path) -> None:
    """Group commit: the block's writes are invisible to other connections until it ends, a write that fails
    inside it (a duplicate id after its debit) is rolled back alone, and a block that raises leaves nothing."""
    import sqlite3

    path = tmp_path / "l.db"
    store = SQLiteLedger(path, checkpoint_interval_s=None)
    store.load_capacities(ROWS, "plan-a")
    other = SQLiteLedger(path, checkpoint_interval_s=None)  # another replica's view
    with store.batch():
        assert store.reserve("pre-1", EU, {"vcpu": 2.0}, T, T + 60) == ()
        with pytest.raises(sqlite3.IntegrityError):
            store.reserve("pre-1", EU, {"vcpu": 4.0}, T, T + 60)
        assert store.reserve("pre-2", EU, {"vcpu": 5.0}, T, T + 60) == ()
        assert store.reserve("pre-3", EU, {"vcpu": 2.0}, T, T + 60) == ("vcpu",)  # sees the batch's own debits
        assert store.usage(T, EU)["vcpu"] == 7.0 and other.usage(T, EU)["vcpu"] == 0.0
    assert other.usage(T, EU)["vcpu"] == 7.0 and other.live_allocations() == 2

    with pytest.raises(RuntimeError), store.batch():
        assert store.reserve("pre-4", EU, {"vcpu": 1.0}, T, T + 60) == ()
        raise RuntimeError("the commit never happens")
    assert other.usage(T, EU)["vcpu"] == 7.0 and other.live_allocations() == 2
    assert store.reserve("pre-4", EU, {"vcpu": 1.0}, T, T + 60) == ()  # outside a batch again: its own commit
    assert other.usage(T, EU)["vcpu"] == 8.0
    store.close()
    other.close()


def test_postgres_url_options() -> None:
    url = postgres_url()
    try:
        store = open_ledger(url + "&synchronous_commit=off")
        assert "synchronous_commit=off" in repr(store)
        assert store._conn().execute("SHOW synchronous_commit").fetchone()[0] == "off"  # type: ignore[attr-defined]
        store.load_capacities(ROWS, "plan-a")
        assert store.reserve("pre-1", EU, {"vcpu": 1.0}, T, T + 60) == ()
        store.close()
    finally:
        drop_postgres(url)


def test_open_ledger_urls(tmp_path: Path) -> None:
    assert isinstance(open_ledger(None), InMemoryLedger) and isinstance(open_ledger("memory"), InMemoryLedger)
    store = open_ledger(f"sqlite://{tmp_path / 'x.db'}")
    assert isinstance(store, SQLiteLedger) and store.path == tmp_path / "x.db"
    store.close()
    with pytest.raises(ValueError, match="unknown ledger URL"):
        open_ledger("redis://localhost")


# -- time safety: a request's claimed time never frees a live session in a shared ledger ----------


def _shared_url(backend: str, tmp_path: Path) -> str:
    return f"sqlite://{tmp_path / 'shared.db'}" if backend == "sqlite" else postgres_url()


def _this_hour() -> datetime:
    now = time.time()
    return datetime.fromtimestamp(now - now % H, UTC)


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_shared_ledgers_never_sweep_past_their_own_clock(backend: str, tmp_path: Path) -> None:
    """sweep(2099) on SQLite / PostgreSQL returns only what ended by the host's / server's clock."""
    url = _shared_url(backend, tmp_path)
    store = open_ledger(url)
    try:
        now = time.time()
        start = int(now - now % H)
        store.load_capacities([(start + w * H, start + (w + 1) * H, EU, "vcpu", 8.0) for w in (-1, 0, 1)], "plan-a")
        assert store.reserve("pre-ended", EU, {"vcpu": 2.0}, now - 120, now - 60) == ()
        assert store.reserve("pre-live", EU, {"vcpu": 5.0}, now - 60, now + 3600) == ()
        assert store.sweep(4_102_444_800.0) == 1  # 2100-01-01: only the session that really ended
        assert store.sweep(float("nan")) == 0
        assert store.usage(start, EU)["vcpu"] == 5.0  # the live one, and every window, are still there
        # in the first minute of the hour the live session began in the previous window too
        assert store.usage(start - H, EU) == {"vcpu": 5.0 if now - 60 < start else 0.0}
        assert store.usage(start + H, EU)["vcpu"] == 5.0
        assert store.reserve("pre-more", EU, {"vcpu": 4.0}, now, now + 60) == ("vcpu",)
        assert store.release("pre-live") is True
    finally:
        store.close()
        if backend == "postgres":
            drop_postgres(url)


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_a_request_dated_2099_cannot_make_replicas_grant_twice(backend: str, tmp_path: Path) -> None:
    """Issue #14's finding: two coordinators, default clock, one request dated 2099, a replica restarts.
    On the old code the 2099 request expired every live session and the new replica granted the
    whole window again (276 vCPU live against 138 planned)."""
    lake, url = tmp_path / "lake", _shared_url(backend, tmp_path)
    start = _this_hour()
    publish_plan(lake, "plan-now", start, hours=2, capacity={EU: {"vcpu": 138.0}})
    now = datetime.now(UTC)
    replicas: list[Coordinator] = []

    def replica() -> Coordinator:
        replicas.append(Coordinator(lake, open_ledger(url), reload_interval_s=None, outcomes=False))
        return replicas[-1]

    def fill(irc: Coordinator, tag: str) -> int:
        return sum(
            irc.handle_peering_request(PeeringRequest(f"{tag}{i}", now, US, EU, {"vcpu": 1.0}, 3600.0, "critical")).path
            == "preallocated"
            for i in range(150)
        )

    try:
        first, second = replica(), replica()
        assert fill(first, "a") == 138
        late = datetime(2099, 1, 1, tzinfo=UTC)
        decision = second.handle_peering_request(PeeringRequest("evil", late, US, EU, {"vcpu": 1.0}, 60.0, "critical"))
        assert decision.status == "failure" and "ahead of this coordinator's clock" in decision.message
        second.sweep(late.timestamp())  # even an explicit sweep at 2099 frees nothing
        assert fill(replica(), "c") == 0
        assert first.ledger.usage(int(start.timestamp()), EU)["vcpu"] == pytest.approx(138.0)
        assert first.ledger.live_allocations() == 138  # type: ignore[attr-defined]
    finally:
        for irc in replicas:
            irc.close()
            irc.ledger.close()
        if backend == "postgres":
            drop_postgres(url)


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_a_replaying_or_skewed_replica_cannot_free_another_replicas_sessions(backend: str, tmp_path: Path) -> None:
    """A replica replaying by request time, or whose clock runs an hour fast, shares the ledger with
    a live one: its requests dated ahead are served, but expire nothing the live replica holds."""
    from pipeline.irc.coordinator import REQUEST_TIME

    lake, url = tmp_path / "lake", _shared_url(backend, tmp_path)
    start = _this_hour()
    publish_plan(lake, "plan-now", start, hours=3, capacity={EU: {"vcpu": 10.0}})
    now = datetime.now(UTC)
    live = Coordinator(lake, open_ledger(url), reload_interval_s=None, outcomes=False)
    replay = Coordinator(lake, open_ledger(url), reload_interval_s=None, outcomes=False, clock=REQUEST_TIME)
    fast = Coordinator(lake, open_ledger(url), reload_interval_s=None, outcomes=False,
                       clock=lambda: time.time() + H)
    try:
        held = live.handle_peering_request(PeeringRequest("held", now, US, EU, {"vcpu": 6.0}, 600.0, "critical"))
        assert held.path == "preallocated"
        for n, irc in enumerate((replay, fast)):
            ahead = now + timedelta(minutes=45)  # past the held session's end by their clocks, not by the wall's
            decision = irc.handle_peering_request(PeeringRequest(f"x{n}", ahead, US, EU, {"vcpu": 1.0}, 1.0, "critical"))
            assert decision.status == "success", decision.message
            irc.sweep(ahead.timestamp())
        # the two 1-vCPU requests count in this window only when `ahead` still falls inside it
        theirs = 2.0 if ahead < start + timedelta(hours=1) else 0.0
        assert live.ledger.usage(int(start.timestamp()), EU)["vcpu"] == pytest.approx(6.0 + theirs)
        refused = live.handle_peering_request(PeeringRequest("more", now, US, EU, {"vcpu": 5.0}, 60.0, "critical"))
        assert refused.path != "preallocated"
    finally:
        for irc in (live, replay, fast):
            irc.close()
            irc.ledger.close()
        if backend == "postgres":
            drop_postgres(url)


# -- concurrency fuzz: hostile replicas on one ledger never grant more than the plan ----------------

FUZZ_CAPACITY = {"eu-west-1": {"vcpu": 24.0, "memory_gib": 96.0}, "us-east-1": {"vcpu": 16.0, "memory_gib": 64.0}}
FUZZ_POOLS = {region: {"vcpu": 8.0, "memory_gib": 32.0} for region in (*FUZZ_CAPACITY, "ap-southeast-2")}
# (seed, clock offset in seconds): two replicas on the default clock, one 15 minutes fast, one 15 slow.
FUZZ_REPLICAS = ((101, 0.0), (102, 0.0), (103, 900.0), (104, -900.0))
FUZZ_THREADS, FUZZ_OPS = 3, 90


class LedgerMonitor:
    """Reads every capacity row of a shared ledger while replicas run: no row may vanish, none go over."""

    def __init__(self, backend: str, url: str, rows: int) -> None:
        self.backend, self.url, self.rows = backend, url, rows
        self.violations: list[str] = []
        self.polls = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _read(self, conn: Any) -> list[tuple[str, int, str, float, float]]:
        if self.backend == "sqlite":
            return conn.execute("SELECT region, window_start, resource_type, capacity, used FROM irc_capacity").fetchall()
        schema = dict(parse_qsl(urlsplit(self.url).query))["schema"]
        return conn.execute(f"SELECT region, window_start, resource_type, capacity, used FROM {schema}.capacity").fetchall()

    def _run(self) -> None:
        if self.backend == "sqlite":
            import sqlite3

            conn: Any = sqlite3.connect(self.url[len("sqlite://"):], timeout=30)
        else:
            import psycopg

            conn = psycopg.connect(PG_URL, autocommit=True)
        try:
            while not self._stop.wait(0.05):
                self._check(conn)
        finally:
            conn.close()

    def _check(self, conn: Any) -> None:
        try:
            rows = self._read(conn)
        except Exception:  # the first replica has not created the tables yet
            return
        if len(rows) == self.rows:
            self.polls += 1  # the plan is loaded: from here on every row must stay
        elif self.polls:
            self.violations.append(f"{len(rows)} capacity rows instead of {self.rows}")
        for region, window_start, rt, capacity, used in rows:
            if over_capacity(used, 0.0, capacity):
                self.violations.append(f"{region} {window_start} {rt}: {used} used of {capacity}")

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)


def _certainly_held(grants: list[list[Any]], cells: dict[tuple[str, int, int, str], float]) -> list[str]:
    """Sweep the instants each grant was certainly held (granted → released or ended) in wall time:
    at no instant may what is held in a window exceed its capacity. Returns the violations."""
    events = []
    for grant in grants:
        held_from, held_to = grant[5], min(grant[6] or math.inf, grant[3])
        if held_to > held_from:
            events += [(held_from, 1, grant), (held_to, 0, grant)]
    events.sort(key=lambda e: (e[0], e[1]))  # at one instant, what ends goes before what starts
    held: dict[tuple[str, int, int, str], float] = defaultdict(float)
    violations = []
    for _, starts, grant in events:
        _, region, start_s, end_s, requirements = grant[:5]
        for cell, capacity in cells.items():
            if cell[0] == region and cell[1] < end_s and cell[2] > start_s and cell[3] in requirements:
                held[cell] += requirements[cell[3]] if starts else -requirements[cell[3]]
                if starts and over_capacity(held[cell], 0.0, capacity) and held[cell] - capacity > 1e-6:
                    violations.append(f"{cell}: {held[cell]:.3f} held at once, {capacity} planned")
    return violations


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_hostile_replicas_never_overgrant(backend: str, tmp_path: Path) -> None:
    """Four replica processes x three threads (two on the wall clock, one 15 min fast, one 15 min slow),
    random priorities and durations, 15 % hostile requests (dated 2099 / 1970, naive, NaN strings over
    JSON, bad quantities and durations, bodies that are not JSON), releases, double releases and plan
    reloads: the ledger never holds more than the plan in any window, during the run or after, and
    what it holds is exactly what the clients were granted and still hold."""
    from pipeline.irc import fuzz

    lake, url = tmp_path / "lake", _shared_url(backend, tmp_path)
    start = _this_hour() - timedelta(hours=1)
    publish_plan(lake, "plan-fuzz", start, hours=4, capacity=FUZZ_CAPACITY, pools=FUZZ_POOLS)
    cells = {(region, int((start + timedelta(hours=h)).timestamp()), int((start + timedelta(hours=h + 1)).timestamp()), rt): q
             for h in range(4) for region, quantities in FUZZ_CAPACITY.items() for rt, q in quantities.items()}
    monitor = LedgerMonitor(backend, url, rows=4 * len(FUZZ_CAPACITY) * len(schemas.RESOURCE_TYPES))  # explicit zeros too
    try:
        procs = [
            subprocess.Popen([sys.executable, "-m", "pipeline.irc.fuzz", "--lake", str(lake), "--ledger", url,
                              "--threads", str(FUZZ_THREADS), "--ops", str(FUZZ_OPS), "--seed", str(seed),
                              "--clock-offset", str(offset)],
                             cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for seed, offset in FUZZ_REPLICAS
        ]
        runs = []
        for proc in procs:
            out, err = proc.communicate(timeout=300)
            assert proc.returncode == 0, err[-2000:]
            runs.append(json.loads(out))
        monitor.stop()
        assert monitor.polls > 0 and monitor.violations[:5] == []
        assert [e for run in runs for e in run["errors"]][:5] == []
        grants = [g for run in runs for g in run["granted"]]
        assert len(grants) > 50 and sum(1 for g in grants if g[6] is not None) > 10
        assert _certainly_held(grants, cells)[:5] == []
        _assert_hostile_refused(runs, fuzz)
        _assert_ledger_holds_exactly_the_live_grants(url, grants, cells)
    finally:
        monitor.stop()
        if backend == "postgres":
            drop_postgres(url)


def _assert_hostile_refused(runs: list[dict[str, Any]], fuzz: Any) -> None:
    hostile: Counter[str] = Counter()
    for run in runs:
        hostile.update(run["hostile"])
        assert run["released_twice"] == 0
    assert sum(hostile.values()) > 50 and len({key.split(":")[0] for key in hostile}) == len(fuzz.HOSTILE)
    for key, count in hostile.items():
        kind, outcome = key.split(":")
        assert outcome != "preallocated", (key, count)
        if kind in fuzz.INVALID_KINDS:
            assert outcome == "invalid", (key, count)
        elif kind == "not_json":
            assert outcome == "http_400", (key, count)


def _assert_ledger_holds_exactly_the_live_grants(url: str, grants: list[list[Any]],
                                                 cells: dict[tuple[str, int, int, str], float]) -> None:
    store = open_ledger(url)
    try:
        now = time.time()
        store.sweep(now)
        for (region, window_start, window_end, rt), capacity in cells.items():
            expected = sum(g[4].get(rt, 0.0) for g in grants
                           if g[6] is None and g[3] > now and g[1] == region and g[2] < window_end and g[3] > window_start)
            used = store.usage(window_start, region).get(rt, 0.0)
            assert used == pytest.approx(expected, abs=1e-6), (region, window_start, rt)
            assert not over_capacity(used, 0.0, capacity)
    finally:
        store.close()


# -- on-demand admission: the contract, then replicas sharing one pool ---------------------------

POOL = {EU: {"vcpu": 4.0, "memory_gib": 16.0}, US: {"vcpu": 2.0}}


def test_admission_stays_within_the_pool_all_or_nothing(ledger: Ledger) -> None:
    ledger.load_pools(POOL, "plan-a")
    assert ledger.admit("od-1", EU, {"vcpu": 3.0, "memory_gib": 8.0}, T + 600, now_s=T)
    assert not ledger.admit("od-2", EU, {"vcpu": 2.0, "memory_gib": 1.0}, T + 600, now_s=T)  # vcpu short: nothing taken
    assert ledger.pool_available(EU, now_s=T) == {"vcpu": 1.0, "memory_gib": 8.0}
    assert ledger.admit("od-3", EU, {"vcpu": 1.0, "memory_gib": 8.0}, T + 600, now_s=T)  # exact fill
    assert not ledger.admit("od-4", EU, {"memory_gib": 0.5}, T + 600, now_s=T)
    assert not ledger.admit("od-5", US, {"memory_gib": 0.5}, T + 600, now_s=T)  # no such resource in the pool
    assert not ledger.admit("od-6", "ap-southeast-2", {"vcpu": 0.5}, T + 600, now_s=T)  # no pool at all
    assert ledger.pool_available("ap-southeast-2", now_s=T) == {}
    assert ledger.admit("od-7", US, {"vcpu": 2.0, "storage_gib": 0.0}, T + 600, now_s=T)  # zero asks nothing
    with pytest.raises(Exception):  # noqa: B017 - backend-specific error type; the coordinator catches it
        ledger.admit("od-7", US, {"vcpu": 0.0}, T + 600, now_s=T)


def test_admission_release_is_exactly_once_and_expiry_frees_the_pool(ledger: Ledger) -> None:
    ledger.load_pools(POOL, "plan-a")
    assert ledger.admit("od-1", US, {"vcpu": 1.5}, T + 600, now_s=T)
    assert ledger.admit("od-empty", US, {}, T + 600, now_s=T)
    assert ledger.release_admission("od-1") and not ledger.release_admission("od-1")
    assert ledger.release_admission("od-empty") and not ledger.release_admission("unknown")
    assert ledger.admit("od-2", US, {"vcpu": 2.0}, T + 600, now_s=T)
    assert not ledger.admit("od-3", US, {"vcpu": 0.5}, T + 1200, now_s=T + 599)
    assert ledger.admit("od-4", US, {"vcpu": 0.5}, T + 1200, now_s=T + 600)  # od-2 ended: no longer counted
    assert ledger.pool_available(US, now_s=T + 600) == {"vcpu": 1.5}
    assert ledger.sweep_admissions(T + 600) == 1  # od-2 deleted; od-4 lives on
    assert not ledger.release_admission("od-2") and ledger.pool_available(US, now_s=T + 600) == {"vcpu": 1.5}


def test_newest_plan_pools_win_and_live_grants_stay_counted(ledger: Ledger) -> None:
    ledger.load_pools(POOL, "plan-b")
    assert ledger.admit("od-1", EU, {"vcpu": 3.0}, T + 600, now_s=T)
    ledger.load_pools({EU: {"vcpu": 100.0}}, "plan-a")  # older: ignored
    assert ledger.pool_available(EU, now_s=T) == {"vcpu": 1.0, "memory_gib": 16.0}
    ledger.load_pools({EU: {"vcpu": 5.0}}, "plan-c")  # newer: replaces the whole snapshot
    assert ledger.pool_available(EU, now_s=T) == {"vcpu": 2.0} and ledger.pool_available(US, now_s=T) == {}
    assert not ledger.admit("od-2", EU, {"vcpu": 2.5}, T + 600, now_s=T)
    assert ledger.admit("od-3", EU, {"vcpu": 2.0}, T + 600, now_s=T)


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_shared_admission_never_expires_past_the_ledgers_clock(backend: str, tmp_path: Path) -> None:
    url = _shared_url(backend, tmp_path)
    store = open_ledger(url)
    try:
        now = time.time()
        store.load_pools({EU: {"vcpu": 1.0}}, "plan-a")
        assert store.admit("od-live", EU, {"vcpu": 1.0}, now + 3600, now_s=now)
        late = datetime(2099, 1, 1, tzinfo=UTC).timestamp()
        assert not store.admit("od-2099", EU, {"vcpu": 1.0}, late + 60, now_s=late)  # the live grant still counts
        assert store.sweep_admissions(late) == 0 and store.pool_available(EU, now_s=late) == {"vcpu": 0.0}
    finally:
        store.close()
        if backend == "postgres":
            drop_postgres(url)


def _on_demand_plan(lake: Path, pool_vcpu: float) -> None:
    """A plan that pre-allocates nothing in EU: every EU request goes to its on-demand pool."""
    publish_plan(lake, "plan-od", _this_hour(), hours=2, capacity={US: {"vcpu": 1.0}},
                 pools={EU: {"vcpu": pool_vcpu}, US: {"vcpu": 1.0}})


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_two_coordinators_share_the_on_demand_pool(backend: str, tmp_path: Path) -> None:
    lake, url = tmp_path / "lake", _shared_url(backend, tmp_path)
    _on_demand_plan(lake, 5.0)
    now = datetime.now(UTC)
    replicas = [Coordinator(lake, open_ledger(url), reload_interval_s=None, outcomes=False) for _ in range(2)]
    try:
        decisions = [replicas[i % 2].handle_peering_request(PeeringRequest(f"r{i}", now, US, EU, {"vcpu": 1.0}, 3600.0))
                     for i in range(10)]
        assert [d.path for d in decisions] == ["on_demand"] * 5 + ["none"] * 5  # per process it would be 10
        assert "available 0" in decisions[-1].message
        assert replicas[1].on_demand.checks_capacity and replicas[0].on_demand.available(EU) == {"vcpu": 0.0}
        assert replicas[0].release(decisions[1].allocation_id)  # granted by the other replica: shared too
        again = replicas[1].handle_peering_request(PeeringRequest("again", now, US, EU, {"vcpu": 1.0}, 3600.0))
        assert again.path == "on_demand" and again.serving_region == EU
    finally:
        for irc in replicas:
            irc.close()
            irc.ledger.close()
        if backend == "postgres":
            drop_postgres(url)


_OD_WORKER = """
import json, sys, threading
from datetime import UTC, datetime
from pipeline.irc import Coordinator, PeeringRequest
from pipeline.irc.ledger import open_ledger
lake, url, tag = sys.argv[1:4]
irc = Coordinator(lake, open_ledger(url), reload_interval_s=None, outcomes=False)
granted, lock = [], threading.Lock()
def run(t):
    for i in range(25):
        now = datetime.now(UTC)
        d = irc.handle_peering_request(PeeringRequest(f"{tag}-{t}-{i}", now, "us-east-1", "eu-west-1", {"vcpu": 1.0}, 3600.0))
        assert d.path in ("on_demand", "none"), d
        if d.path == "on_demand":
            with lock:
                granted.append(d.allocation_id)
threads = [threading.Thread(target=run, args=(t,)) for t in range(4)]
[t.start() for t in threads]
[t.join() for t in threads]
irc.close()
print(json.dumps(granted))
"""


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_two_processes_never_over_admit_on_demand(backend: str, tmp_path: Path) -> None:
    """2 processes x 4 threads x 25 requests of 1 vCPU against a pool of 150: exactly 150 admitted (each
    process asks for 100, so each gets at least 50 and they overlap, whichever starts first)."""
    lake, url = tmp_path / "lake", _shared_url(backend, tmp_path)
    _on_demand_plan(lake, 150.0)
    try:
        workers = [subprocess.Popen([sys.executable, "-c", _OD_WORKER, str(lake), url, tag], cwd=REPO,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for tag in ("a", "b")]
        granted = []
        for worker in workers:
            out, err = worker.communicate(timeout=180)
            assert worker.returncode == 0, err
            granted.append(json.loads(out))
        assert min(map(len, granted)) >= 50 and len(set(granted[0]) | set(granted[1])) == 150
        store = open_ledger(url)
        try:
            assert store.pool_available(EU) == {"vcpu": 0.0}
        finally:
            store.close()
    finally:
        if backend == "postgres":
            drop_postgres(url)


_OPEN_AT_ONCE = """
import sys, time
from pipeline.irc.ledger.sqlite import SQLiteLedger
start = float(sys.argv[2])
time.sleep(max(0.0, start - time.time()))  # every process opens the new file at the same instant
ledger = SQLiteLedger(sys.argv[1], timeout_s=30.0, checkpoint_interval_s=0.01)  # as replicas run it, checkpointer on
for _ in range(20):
    ledger.load_pools({"eu-west-1": {"vcpu": 1.0}}, "plan-start")
ledger.load_pools({"eu-west-1": {"vcpu": 1.0}}, "plan-start")
"""


def test_replicas_opening_a_new_sqlite_ledger_at_once_all_start(tmp_path: Path) -> None:
    """Twelve processes create the same ledger file at the same instant, three times: SQLite may
    answer 'database is locked' without waiting while they race to switch it to WAL; none may fail."""
    for attempt in range(3):
        path = tmp_path / f"ledger-{attempt}.sqlite"
        start = time.time() + 2.0
        procs = [subprocess.Popen([sys.executable, "-c", _OPEN_AT_ONCE, str(path), str(start)], cwd=REPO,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(12)]
        for proc in procs:
            _, err = proc.communicate(timeout=120)
            assert proc.returncode == 0, err[-2000:]
