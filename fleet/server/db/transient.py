"""Telling a database that is away from a row that is wrong, and recovering from the first.

The ingest acknowledges a message only once its rows are committed, or once it is dead-lettered
*because of its content*. Everything else the database can throw -- a connection lost in the
middle of a query, a pool whose connection died inside a transaction ("connection has been
released back to the pool"), PostgreSQL shutting down or starting up, a deadlock, a
serialisation failure, SQLite busy -- means "try again later": the message stays unacknowledged
and the broker keeps it. Before this split, asyncpg's `ConnectionDoesNotExistError` fell through
to the dead-letter path and 75,865 acknowledged reports were lost for good (issue 13).

`is_transient` looks at the exception and at what caused it (Tortoise wraps driver errors);
`reset_pool` throws the connection pool away so the next query opens fresh connections instead
of reusing one that died.
"""

from __future__ import annotations

import logging
import sqlite3

import asyncpg
from tortoise.connection import get_connection
from tortoise.exceptions import (
    DBConnectionError,
    OperationalError,
    TransactionManagementError,
)

log = logging.getLogger(__name__)

#: SQLSTATE classes that say nothing about the data: connection exception (08), transaction
#: rollback -- serialisation failure, deadlock (40), insufficient resources (53), operator
#: intervention -- admin shutdown, cannot connect now (57), system error (58).
_TRANSIENT_SQLSTATE_CLASSES = frozenset({"08", "40", "53", "57", "58"})
#: SQLite errors of the moment, not of the data.
_TRANSIENT_SQLITE = ("locked", "busy", "disk i/o error", "unable to open")


def is_transient(exc: BaseException) -> bool:
    """True when `exc` (or what caused it) says the database is unavailable, not the data bad."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if _transient_alone(current):
            return True
        current = current.__cause__ or current.__context__
    return False


def _transient_alone(exc: BaseException) -> bool:
    if isinstance(exc, OSError | TimeoutError | DBConnectionError | TransactionManagementError):
        return True
    if isinstance(
        exc,
        asyncpg.PostgresConnectionError | asyncpg.InterfaceError | asyncpg.InternalClientError,
    ):
        # InternalClientError: a pooled connection left mid-operation by the cut ("cannot
        # switch to state 15; another operation is in progress"), seen in the fault test.
        return True
    if isinstance(exc, asyncpg.PostgresError):
        state = getattr(exc, "sqlstate", None) or ""
        return state[:2] in _TRANSIENT_SQLSTATE_CLASSES
    if isinstance(exc, sqlite3.OperationalError):
        text = str(exc).lower()
        return any(word in text for word in _TRANSIENT_SQLITE)
    if isinstance(exc, OperationalError) and exc.__cause__ is None and exc.__context__ is None:
        # Tortoise raised it without a driver error: its own "database is locked" and the like.
        text = str(exc).lower()
        return any(word in text for word in _TRANSIENT_SQLITE)
    return False


def reset_pool() -> None:
    """Drop the PostgreSQL pool (its connections may be dead or mid-transaction); the next query
    makes a new one (Tortoise creates the pool on first use). SQLite has no pool."""
    try:
        conn = get_connection("default")
    except Exception:  # not opened (tests of parts without a database)
        return
    pool = getattr(conn, "_pool", None)
    if pool is None or not hasattr(pool, "terminate"):
        return
    try:
        pool.terminate()  # immediate: closing politely would wait on the dead connections
    except Exception:  # a pool already half gone: forgetting it is all that matters
        log.debug("terminating the database pool failed", exc_info=True)
    conn._pool = None
