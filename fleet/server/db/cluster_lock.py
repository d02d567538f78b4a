"""One writer at a time across replicas: a PostgreSQL advisory lock around a block of work.

The rollout engine changes a rollout in several statements (read the state, decide, write the
terminals, start a wave); one asyncio lock keeps that whole within one process. With replicas the
same decisions are taken on the lease holder (update events, timers) and on whichever replica an
admin's request reached (pause, resume, abort, create), so the lock must hold across processes.
`ClusterLock` is the asyncio lock plus, with a database URL, a session-level advisory lock taken
on a connection of its own (the pool's connections change from one statement to the next, and an
advisory lock belongs to the session that took it).

If that connection dies inside the block, PostgreSQL releases the lock with it: the block then
finishes unprotected. A connection is opened again for the next block; while the database is
away, entering fails with the database's error, as any statement would.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from types import TracebackType
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from fleet.server.db.deadline import within
from fleet.server.settings import Settings

log = logging.getLogger(__name__)


def asyncpg_dsn(database_url: str) -> str:
    """The Tortoise URL as asyncpg takes it (its query parameters are Tortoise's, not libpq's)."""
    parts = urlsplit(database_url)
    return urlunsplit(("postgresql", parts.netloc, parts.path, "", ""))


def cluster_dsn(settings: Settings) -> str | None:
    """What a `ClusterLock` of this server takes: the database with replicas, None alone."""
    return asyncpg_dsn(settings.database_url) if settings.replicated else None


class ClusterLock:
    def __init__(self, key: int, dsn: str | None = None) -> None:
        """`key`: the advisory lock's number (one per kind of work); `dsn` None: this process
        only (SQLite, one server)."""
        self.key = key
        self.dsn = dsn
        self._local = asyncio.Lock()
        self._conn: asyncpg.Connection | None = None

    async def __aenter__(self) -> None:
        await self._local.acquire()
        if self.dsn is None:
            return
        try:
            conn = self._conn
            if conn is None or conn.is_closed():
                conn = self._conn = await within(asyncpg.connect(self.dsn, timeout=10), 12)
            assert conn is not None
            await conn.execute("SELECT pg_advisory_lock($1)", self.key)
        except BaseException:
            await self._drop()
            self._local.release()
            raise

    async def __aexit__(
        self, _t: type[BaseException] | None, _e: BaseException | None, _tb: TracebackType | None
    ) -> None:
        try:
            if self._conn is not None:
                try:
                    await within(self._conn.execute("SELECT pg_advisory_unlock($1)", self.key), 5)
                except Exception as e:  # gone with its connection; a new one next time
                    log.warning("advisory lock %d: unlocking failed (%r)", self.key, e)
                    await self._drop()
        finally:
            self._local.release()

    async def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.terminate()

    async def close(self) -> None:
        await self._drop()
