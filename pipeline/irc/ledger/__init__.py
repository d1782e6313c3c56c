"""Ledgers of the pre-allocated capacity: one contract (`protocol`), three backends.

* `InMemoryLedger` (`memory`) - one process;
* `SQLiteLedger` (`sqlite`) - several processes on one host;
* `PostgresLedger` (`postgres`) - several IRC replicas.

`open_ledger(url)` picks one from a URL; the SQLite and PostgreSQL backends are imported only
when asked for, so `import pipeline.irc` stays light.
"""

from __future__ import annotations

from pipeline.irc.ledger.memory import InMemoryLedger
from pipeline.irc.ledger.protocol import DEFAULT_RETENTION_S, TOLERANCE, Ledger, fits

__all__ = ["DEFAULT_RETENTION_S", "TOLERANCE", "InMemoryLedger", "Ledger", "fits", "open_ledger"]


def open_ledger(url: str | None = None) -> Ledger:
    """A ledger from a URL: `memory` (default), `sqlite:///path/to/ledger.db`, `postgresql://...`.

    PostgreSQL URLs may carry `?schema=NAME` (default `peerscale_irc`) for the ledger's tables.
    """
    if url is None or url in ("", "memory", "memory://"):
        return InMemoryLedger()
    if url.startswith("sqlite:"):
        from pipeline.irc.ledger.sqlite import SQLiteLedger

        path = url[len("sqlite:"):]
        if path.startswith("//"):
            path = path[2:]
        return SQLiteLedger(path)
    if url.startswith(("postgresql://", "postgres://")):
        from pipeline.irc.ledger.postgres import PostgresLedger

        return PostgresLedger.from_url(url)
    raise ValueError(f"unknown ledger URL {url!r}: use memory, sqlite:///path or postgresql://...")
