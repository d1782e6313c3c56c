"""A DuckDB connection over a requests table, with the `sessions` view every feature query reads.

The feature queries (`sql/*.sql`) compute concurrent levels from session starts and ends; what a
session holds, where and until when, is defined once in `sql/sessions.sql`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import duckdb
import pyarrow as pa

SESSIONS_SQL = Path(__file__).resolve().parent / "sql" / "sessions.sql"


@contextmanager
def session_connection(requests: pa.Table, regions: Sequence[str], **tables: pa.Table) -> Iterator[duckdb.DuckDBPyConnection]:
    """An in-memory connection (UTC) with `requests`, `regions(region)`, the `sessions` view and
    `tables` registered by name; closed on exit."""
    con = duckdb.connect()
    try:
        con.execute("SET TimeZone = 'UTC'")
        con.register("requests", requests)
        con.register("regions", pa.table({"region": pa.array(sorted(regions), pa.string())}))
        for name, table in tables.items():
            con.register(name, table)
        con.execute(SESSIONS_SQL.read_text())
        yield con
    finally:
        con.close()


def utc_column(values: Sequence[object]) -> pa.Array:
    """Timestamps as the lake's `timestamp[us, UTC]` (what the queries compare sessions against)."""
    return pa.array(list(values), pa.timestamp("us", tz="UTC"))


__all__ = ["session_connection", "utc_column"]
