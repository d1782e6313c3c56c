"""The ledger contract, identical for the in-memory, SQLite and PostgreSQL backends.

PostgreSQL tests run against the real server (PEERSCALE_TEST_POSTGRES, default
postgresql://postgres@127.0.0.1:5432/test), each in its own schema, dropped afterwards. If the
server is unreachable they fail with the reason - they are never skipped.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline.irc import stress
from pipeline.irc.ledger import InMemoryLedger, Ledger, open_ledger
from pipeline.irc.ledger.protocol import TOLERANCE, fits, over_capacity, over_capacity_sql
from pipeline.irc.ledger.sqlite import SQLiteLedger

REPO = Path(__file__).resolve().parents[1]
PG_URL = os.environ.get("PEERSCALE_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
EU = "eu-west-1"
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
