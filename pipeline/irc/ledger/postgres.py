"""PostgreSQL ledger: several IRC replicas share the pre-allocation.

Each decision is **one round trip**: a PL/pgSQL function locks the region's capacity rows of
every window the session overlaps (always in the order region, window_start, resource_type,
shared by release and sweep, so transactions never deadlock), checks them and debits them, all
in the function's implicit transaction. A plan load takes an EXCLUSIVE lock on the capacity
table for its single upsert statement (reads stay possible), so a reservation either sees the
new windows or is charged to them by the load's carry-in - never neither.

Expiry runs on the **server's clock**: `sweep(now)` returns only what ended by the earlier of `now`
and the server's `clock_timestamp()`, so replicas whose clocks disagree (or a replica replaying
history, or a request dated 2099) can never free a session another replica still holds.

Commits are durable by default (`synchronous_commit` on: one WAL flush per decision, amortised
across concurrent replicas by group commit). `synchronous_commit=False` (URL
`?synchronous_commit=off`) trades that for speed: after a *server* crash the last fraction of a
second of reservations may be forgotten (the database stays consistent; those sessions' capacity
could be granted twice until they end).

psycopg is imported only here, so only deployments that use PostgreSQL need it
(`pip install 'peerscale[postgres]'`).
"""

from __future__ import annotations

import contextlib
import re
import threading
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from pipeline.irc.ledger.protocol import DEFAULT_RETENTION_S, over_capacity_sql
from pipeline.irc.plan_source import CapacityRow

DEFAULT_SCHEMA = "peerscale_irc"
_IDENTIFIER = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")

# The capacity rule of `reserve`, generated from the one Python definition (ledger.protocol).
_OVER_CAPACITY = over_capacity_sql(used="c.used", quantity="r.q", capacity="c.capacity", ceiling="p_ceiling")

_DDL = """
CREATE SCHEMA IF NOT EXISTS {s};
CREATE TABLE IF NOT EXISTS {s}.capacity (
    region        text   NOT NULL,
    window_start  bigint NOT NULL,
    window_end    bigint NOT NULL,
    resource_type text   NOT NULL,
    capacity      float8 NOT NULL,
    used          float8 NOT NULL DEFAULT 0,
    plan_id       text   NOT NULL,
    PRIMARY KEY (region, window_start, resource_type)
);
CREATE TABLE IF NOT EXISTS {s}.allocations (
    allocation_id text    PRIMARY KEY,
    region        text    NOT NULL,
    starts_at     float8  NOT NULL,
    expires_at    float8  NOT NULL,
    types         text[]  NOT NULL,
    qty           float8[] NOT NULL,
    priority      text
);
CREATE INDEX IF NOT EXISTS allocations_expiry ON {s}.allocations (expires_at);
CREATE INDEX IF NOT EXISTS allocations_region ON {s}.allocations (region, starts_at);

CREATE OR REPLACE FUNCTION {s}.reserve(
    p_id text, p_region text, p_start float8, p_end float8,
    p_types text[], p_qty float8[], p_ceiling float8, p_priority text
) RETURNS text[] LANGUAGE plpgsql AS $fn$
DECLARE
    v_windows bigint[];
    v_short   text[];
BEGIN
    SELECT array_agg(DISTINCT l.window_start) INTO v_windows FROM (
        SELECT c.window_start FROM {s}.capacity c
        WHERE c.region = p_region AND c.window_start < p_end AND c.window_end > p_start
        ORDER BY c.window_start, c.resource_type
        FOR UPDATE
    ) l;
    IF v_windows IS NULL THEN
        RETURN p_types;
    END IF;
    SELECT array_agg(DISTINCT r.t ORDER BY r.t) INTO v_short
    FROM unnest(p_types, p_qty) AS r(t, q)
    CROSS JOIN unnest(v_windows) AS w(ws)
    LEFT JOIN {s}.capacity c
        ON c.region = p_region AND c.window_start = w.ws AND c.resource_type = r.t
    WHERE c.capacity IS NULL
       OR {over_capacity};
    IF v_short IS NOT NULL THEN
        RETURN v_short;
    END IF;
    UPDATE {s}.capacity c SET used = c.used + r.q
    FROM unnest(p_types, p_qty) AS r(t, q)
    WHERE c.region = p_region AND c.window_start = ANY (v_windows) AND c.resource_type = r.t;
    INSERT INTO {s}.allocations (allocation_id, region, starts_at, expires_at, types, qty, priority)
    VALUES (p_id, p_region, p_start, p_end, p_types, p_qty, p_priority);
    RETURN '{{}}'::text[];
END
$fn$;

CREATE OR REPLACE FUNCTION {s}.release(p_id text) RETURNS boolean LANGUAGE plpgsql AS $fn$
DECLARE
    a {s}.allocations%ROWTYPE;
BEGIN
    DELETE FROM {s}.allocations WHERE allocation_id = p_id RETURNING * INTO a;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    PERFORM 1 FROM {s}.capacity c
    WHERE c.region = a.region AND c.window_start < a.expires_at AND c.window_end > a.starts_at
    ORDER BY c.window_start, c.resource_type
    FOR UPDATE;
    UPDATE {s}.capacity c SET used = greatest(0, c.used - r.q)
    FROM unnest(a.types, a.qty) AS r(t, q)
    WHERE c.region = a.region AND c.window_start < a.expires_at AND c.window_end > a.starts_at
      AND c.resource_type = r.t;
    RETURN true;
END
$fn$;

CREATE OR REPLACE FUNCTION {s}.sweep(p_now float8, p_retention float8) RETURNS integer
LANGUAGE plpgsql AS $fn$
DECLARE
    -- Never past the server's clock: the one clock every replica shares (see the module docstring).
    v_now    float8 := least(p_now, extract(epoch FROM clock_timestamp())::float8);
    v_n      integer;
    v_region text[];
    v_start  float8[];
    v_end    float8[];
    v_t      text[];
    v_q      float8[];
BEGIN
    -- SKIP LOCKED: a sweep never waits for (or deadlocks with) a release or another replica's sweep.
    WITH victims AS (
        SELECT allocation_id FROM {s}.allocations
        WHERE expires_at <= v_now
        ORDER BY allocation_id
        LIMIT 100000
        FOR UPDATE SKIP LOCKED
    ), gone AS (
        DELETE FROM {s}.allocations a USING victims v
        WHERE a.allocation_id = v.allocation_id
        RETURNING a.allocation_id, a.region, a.starts_at, a.expires_at, a.types, a.qty
    )
    SELECT count(DISTINCT g.allocation_id), array_agg(g.region), array_agg(g.starts_at),
           array_agg(g.expires_at), array_agg(r.t), array_agg(r.q)
    INTO v_n, v_region, v_start, v_end, v_t, v_q
    FROM gone g CROSS JOIN LATERAL unnest(g.types, g.qty) AS r(t, q);
    IF v_n > 0 THEN
        PERFORM 1 FROM {s}.capacity c
        JOIN unnest(v_region, v_start, v_end, v_t) AS i(region, s, e, t)
          ON c.region = i.region AND c.resource_type = i.t AND c.window_start < i.e AND c.window_end > i.s
        ORDER BY c.region, c.window_start, c.resource_type
        FOR UPDATE OF c;
        UPDATE {s}.capacity c SET used = greatest(0, c.used - d.q)
        FROM (
            SELECT c2.region, c2.window_start, c2.resource_type, sum(i.q) AS q
            FROM {s}.capacity c2
            JOIN unnest(v_region, v_start, v_end, v_t, v_q) AS i(region, s, e, t, q)
              ON c2.region = i.region AND c2.resource_type = i.t AND c2.window_start < i.e AND c2.window_end > i.s
            GROUP BY 1, 2, 3
        ) d
        WHERE c.region = d.region AND c.window_start = d.window_start AND c.resource_type = d.resource_type;
    END IF;
    DELETE FROM {s}.capacity c USING (
        SELECT region, window_start, resource_type FROM {s}.capacity
        WHERE window_end <= v_now - p_retention
        FOR UPDATE SKIP LOCKED
    ) old
    WHERE c.region = old.region AND c.window_start = old.window_start AND c.resource_type = old.resource_type;
    RETURN v_n;
END
$fn$;
"""

_OD_DDL = """
CREATE TABLE IF NOT EXISTS {s}.od_pools (
    region        text   NOT NULL,
    resource_type text   NOT NULL,
    capacity      float8 NOT NULL,
    plan_id       text   NOT NULL,
    PRIMARY KEY (region, resource_type)
);
CREATE TABLE IF NOT EXISTS {s}.od_grants (
    allocation_id text   NOT NULL,
    region        text   NOT NULL,
    resource_type text   NOT NULL,  -- '' (quantity 0) marks a grant that holds nothing
    quantity      float8 NOT NULL,
    expires_at    float8 NOT NULL,
    PRIMARY KEY (allocation_id, resource_type)
);
CREATE INDEX IF NOT EXISTS od_grants_region ON {s}.od_grants (region, expires_at);
CREATE INDEX IF NOT EXISTS od_grants_expiry ON {s}.od_grants (expires_at);
CREATE TABLE IF NOT EXISTS {s}.meta (key text PRIMARY KEY, value text NOT NULL);

-- On-demand admission: the region's pool rows are locked (in resource_type order) for the check and
-- the insert, so admissions in one region are serialised across replicas and never exceed the pool.
CREATE OR REPLACE FUNCTION {s}.admit(
    p_id text, p_region text, p_types text[], p_qty float8[], p_expires float8, p_now float8
) RETURNS boolean LANGUAGE plpgsql AS $fn$
DECLARE
    v_cutoff float8 := least(coalesce(p_now, 'infinity'::float8), extract(epoch FROM clock_timestamp())::float8);
BEGIN
    PERFORM 1 FROM {s}.od_pools WHERE region = p_region ORDER BY resource_type FOR UPDATE;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    IF EXISTS (SELECT 1 FROM {s}.od_grants WHERE allocation_id = p_id) THEN
        RAISE EXCEPTION 'allocation_id % already in use', p_id USING ERRCODE = 'unique_violation';
    END IF;
    IF EXISTS (
        SELECT 1 FROM unnest(p_types, p_qty) AS r(t, q)
        LEFT JOIN {s}.od_pools p ON p.region = p_region AND p.resource_type = r.t
        LEFT JOIN (
            SELECT g.resource_type, sum(g.quantity) AS used FROM {s}.od_grants g
            WHERE g.region = p_region AND g.expires_at > v_cutoff GROUP BY g.resource_type
        ) u ON u.resource_type = r.t
        WHERE r.q > 0 AND {over_pool}
    ) THEN
        RETURN false;
    END IF;
    INSERT INTO {s}.od_grants (allocation_id, region, resource_type, quantity, expires_at)
    SELECT p_id, p_region, r.t, r.q, p_expires FROM unnest(p_types, p_qty) AS r(t, q) WHERE r.q > 0;
    IF NOT FOUND THEN
        INSERT INTO {s}.od_grants VALUES (p_id, p_region, '', 0, p_expires);
    END IF;
    RETURN true;
END
$fn$;
"""
# The pool rule of `admit`: the same `over_capacity` expression, ceiling 1 (ledger.protocol).
_OVER_POOL = over_capacity_sql(used="coalesce(u.used, 0)", quantity="r.q", capacity="coalesce(p.capacity, 0)",
                               ceiling="1.0")
_CUTOFF = "least(%(now)s, extract(epoch FROM clock_timestamp())::float8)"

_LOAD = """
INSERT INTO {s}.capacity AS cur (region, window_start, window_end, resource_type, capacity, used, plan_id)
SELECT n.region, n.ws, n.we, n.t, n.cap,
       coalesce((
           SELECT sum(r.q) FROM {s}.allocations a CROSS JOIN LATERAL unnest(a.types, a.qty) AS r(t, q)
           WHERE a.region = n.region AND r.t = n.t AND a.starts_at < n.we AND a.expires_at > n.ws
       ), 0),
       %(plan_id)s
FROM unnest(%(region)s::text[], %(ws)s::bigint[], %(we)s::bigint[], %(t)s::text[], %(cap)s::float8[])
     AS n(region, ws, we, t, cap)
ON CONFLICT (region, window_start, resource_type) DO UPDATE
SET capacity = EXCLUDED.capacity, window_end = EXCLUDED.window_end, plan_id = EXCLUDED.plan_id
WHERE cur.plan_id <= EXCLUDED.plan_id
"""


class PostgresLedger:
    """Ledger in a PostgreSQL schema; thread-safe (one connection per thread) and replica-safe."""

    sweeps_inline = False
    shared = True

    def __init__(self, dsn: str, schema: str = DEFAULT_SCHEMA, *, retention_s: float = DEFAULT_RETENTION_S,
                 connect_timeout_s: int = 5, synchronous_commit: bool = True) -> None:
        if not _IDENTIFIER.match(schema):
            raise ValueError(f"invalid PostgreSQL schema name {schema!r}")
        try:
            import psycopg  # noqa: F401 - fail early with the fix
        except ImportError as exc:  # pragma: no cover - depends on the install
            raise ImportError("the PostgreSQL ledger needs psycopg: pip install 'peerscale[postgres]'") from exc
        self.dsn = dsn
        self.schema = schema
        self._retention_s = retention_s
        self._connect_timeout_s = connect_timeout_s
        self.synchronous_commit = synchronous_commit
        self._local = threading.local()
        self._connections: list[Any] = []
        self._connections_lock = threading.Lock()
        self._reserve_sql = f"SELECT {schema}.reserve(%s, %s, %s, %s, %s::text[], %s::float8[], %s, %s)"
        self._release_sql = f"SELECT {schema}.release(%s)"
        self._setup()

    @classmethod
    def from_url(cls, url: str) -> PostgresLedger:
        """`postgresql://user@host:port/db?schema=NAME&synchronous_commit=off` (those two are ours,
        the rest goes to libpq)."""
        parts = urlsplit(url)
        query = dict(parse_qsl(parts.query))
        schema = query.pop("schema", DEFAULT_SCHEMA)
        durable = query.pop("synchronous_commit", "on").lower() not in ("off", "false", "0", "no")
        dsn = urlunsplit(parts._replace(scheme="postgresql", query=urlencode(query)))
        return cls(dsn, schema, synchronous_commit=durable)

    def __repr__(self) -> str:
        durability = "" if self.synchronous_commit else ", synchronous_commit=off"
        return f"PostgresLedger(schema={self.schema!r}{durability})"

    # -- connections ---------------------------------------------------------------------------

    def _conn(self) -> Any:
        conn = getattr(self._local, "conn", None)
        if conn is None or conn.closed or conn.broken:
            import psycopg

            conn = psycopg.connect(self.dsn, autocommit=True, connect_timeout=self._connect_timeout_s)
            if not self.synchronous_commit:
                conn.execute("SET synchronous_commit = off")
            self._local.conn = conn
            with self._connections_lock:
                self._connections.append(conn)
        return conn

    def _setup(self) -> None:
        conn = self._conn()
        with conn.transaction():
            # Replicas may start together: serialise DDL (CREATE OR REPLACE FUNCTION is not concurrent-safe).
            conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"peerscale-irc-ddl:{self.schema}",))
            conn.execute(_DDL.format(s=self.schema, over_capacity=_OVER_CAPACITY))
            conn.execute(_OD_DDL.format(s=self.schema, over_pool=_OVER_POOL))

    def drop(self) -> None:
        """Drop the ledger's schema and everything in it (tests, decommissioning)."""
        self._conn().execute(f"DROP SCHEMA IF EXISTS {self.schema} CASCADE")

    # -- plan loading --------------------------------------------------------------------------

    def load_capacities(self, rows: Iterable[CapacityRow], plan_id: str) -> None:
        rows = list(rows)
        params = {
            "plan_id": plan_id,
            "region": [r[2] for r in rows],
            "ws": [int(r[0]) for r in rows],
            "we": [int(r[1]) for r in rows],
            "t": [r[3] for r in rows],
            "cap": [float(r[4]) for r in rows],
        }
        conn = self._conn()
        with conn.transaction():
            conn.execute(f"LOCK TABLE {self.schema}.capacity IN EXCLUSIVE MODE")
            conn.execute(_LOAD.format(s=self.schema), params)

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
        types = list(requirements)
        short = self._conn().execute(
            self._reserve_sql,
            (allocation_id, region, start_s, end_s, types, [float(requirements[t]) for t in types], ceiling, priority),
        ).fetchone()[0]
        return tuple(short)

    def release(self, allocation_id: str) -> bool:
        return bool(self._conn().execute(self._release_sql, (allocation_id,)).fetchone()[0])

    def sweep(self, now_s: float) -> int:
        return int(self._conn().execute(
            f"SELECT {self.schema}.sweep(%s, %s)", (now_s, self._retention_s)
        ).fetchone()[0])

    # -- inspection ----------------------------------------------------------------------------

    def usage(self, window_start_s: int, region: str) -> dict[str, float]:
        rows = self._conn().execute(
            f"SELECT resource_type, used FROM {self.schema}.capacity WHERE region = %s AND window_start = %s",
            (region, int(window_start_s)),
        ).fetchall()
        return dict(rows)

    def utilization(self, at_s: float) -> dict[tuple[str, str], tuple[float, float]]:
        rows = self._conn().execute(
            f"SELECT region, resource_type, capacity, used FROM {self.schema}.capacity "
            "WHERE window_start <= %s AND window_end > %s",
            (at_s, at_s),
        ).fetchall()
        return {(r, t): (c, u) for r, t, c, u in rows}

    def live_allocations(self) -> int:
        return int(self._conn().execute(f"SELECT count(*) FROM {self.schema}.allocations").fetchone()[0])

    # -- on-demand admission (the `admit` server function: one round trip per grant) --------------

    def load_pools(self, pools: Mapping[str, Mapping[str, float]], plan_id: str) -> None:
        rows = [(region, rt, float(q)) for region, quantities in pools.items() for rt, q in quantities.items()]
        s = self.schema
        conn = self._conn()
        with conn.transaction():
            conn.execute(f"LOCK TABLE {s}.od_pools IN EXCLUSIVE MODE")  # waits for admissions in flight
            current = conn.execute(f"SELECT value FROM {s}.meta WHERE key = 'pools_plan_id'").fetchone()
            if current is not None and current[0] > plan_id:
                return  # a newer plan's pools are in force
            conn.execute(
                f"INSERT INTO {s}.meta (key, value) VALUES ('pools_plan_id', %s) "
                "ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value", (plan_id,),
            )
            # Upsert (not delete + insert): an admission waiting on a row lock then reads the new row.
            conn.execute(
                f"DELETE FROM {s}.od_pools p WHERE NOT EXISTS (SELECT 1 FROM unnest(%(r)s::text[], %(t)s::text[]) "
                "AS n(region, t) WHERE n.region = p.region AND n.t = p.resource_type)",
                {"r": [r[0] for r in rows], "t": [r[1] for r in rows]},
            )
            conn.execute(
                f"INSERT INTO {s}.od_pools AS cur (region, resource_type, capacity, plan_id) "
                "SELECT n.region, n.t, n.q, %(plan_id)s FROM unnest(%(r)s::text[], %(t)s::text[], %(q)s::float8[]) "
                "AS n(region, t, q) ON CONFLICT (region, resource_type) DO UPDATE "
                "SET capacity = EXCLUDED.capacity, plan_id = EXCLUDED.plan_id",
                {"plan_id": plan_id, "r": [r[0] for r in rows], "t": [r[1] for r in rows], "q": [r[2] for r in rows]},
            )

    def admit(self, allocation_id: str, region: str, requirements: Mapping[str, float], expires_at_s: float,
              now_s: float | None = None) -> bool:
        types = list(requirements)
        return bool(self._conn().execute(
            f"SELECT {self.schema}.admit(%s, %s, %s::text[], %s::float8[], %s, %s)",
            (allocation_id, region, types, [float(requirements[t]) for t in types], float(expires_at_s), now_s),
        ).fetchone()[0])

    def release_admission(self, allocation_id: str) -> bool:
        return int(self._conn().execute(
            f"WITH gone AS (DELETE FROM {self.schema}.od_grants WHERE allocation_id = %s RETURNING 1) "
            "SELECT count(*) FROM gone", (allocation_id,),
        ).fetchone()[0]) > 0

    def pool_available(self, region: str, now_s: float | None = None) -> dict[str, float]:
        s = self.schema
        rows = self._conn().execute(
            f"SELECT p.resource_type, p.capacity - coalesce((SELECT sum(g.quantity) FROM {s}.od_grants g "
            f"WHERE g.region = p.region AND g.resource_type = p.resource_type AND g.expires_at > {_CUTOFF}), 0) "
            f"FROM {s}.od_pools p WHERE p.region = %(region)s",
            {"region": region, "now": float("inf") if now_s is None else now_s},
        ).fetchall()
        return {rt: max(0.0, q) for rt, q in rows}

    def sweep_admissions(self, now_s: float) -> int:
        return int(self._conn().execute(
            f"WITH gone AS (DELETE FROM {self.schema}.od_grants WHERE expires_at <= {_CUTOFF} "
            "RETURNING allocation_id) SELECT count(DISTINCT allocation_id) FROM gone",
            {"now": now_s},
        ).fetchone()[0])

    def close(self) -> None:
        with self._connections_lock:
            connections, self._connections = self._connections, []
        for conn in connections:
            with contextlib.suppress(Exception):
                conn.close()
        self._local = threading.local()
