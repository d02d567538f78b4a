"""A fix for Tortoise 1.1's pooled transactions when the database dies in the middle of one.

`TransactionContextPooled.__aenter__` (tortoise/backends/base/client.py) takes a connection from
the pool, makes it the task's current connection (a context variable) and then sends BEGIN. When
BEGIN fails -- the connection was cut by a PostgreSQL restart -- `__aexit__` never runs: the
context variable keeps pointing at that dead connection, and every later query of the same task
fails with "connection has been released back to the pool" or "connection is closed", for as long
as the task lives. The ingest, the rollout engine and the other background loops are such tasks:
one database restart disabled them for good (issue 13 measured it). `__aexit__` has the same hole
when giving the connection back to the pool fails.

`install()` replaces both methods with versions that always restore the context variable and
give the connection back (or drop it). Tested against a real PostgreSQL whose backends are
killed between two queries (tests/faults/test_database_faults.py).
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

from tortoise.backends.base.client import TransactionContextPooled
from tortoise.connection import get_connections
from tortoise.exceptions import TransactionManagementError

log = logging.getLogger(__name__)


async def _aenter(self: Any) -> Any:
    await self.ensure_connection()
    pool = self.client._parent._pool
    self.client._connection = await pool.acquire()
    self.token = get_connections().set(self.connection_name, self.client)
    try:
        await self.client.begin()
    except BaseException:
        get_connections().reset(self.token)
        await _give_back(pool, self.client._connection)
        raise
    return self.client


async def _aexit(self: Any, exc_type: Any, exc_val: Any, exc_tb: Any) -> None:
    try:
        if not self.client._finalized:
            if exc_type:
                if exc_type is not TransactionManagementError:
                    await self.client.rollback()
            else:
                await self.client.commit()
    finally:
        try:
            pool = self.client._parent._pool
            if pool:
                await _give_back(pool, self.client._connection)
        finally:
            get_connections().reset(self.token)


async def _give_back(pool: Any, connection: Any) -> None:
    """Release to the pool; a connection the pool will not take back is closed instead."""
    try:
        await pool.release(connection)
    except Exception:
        log.debug("releasing a broken connection failed; terminating it", exc_info=True)
        with contextlib.suppress(Exception):
            connection.terminate()


def install() -> None:
    """Patch Tortoise (idempotent); called when the database is opened."""
    TransactionContextPooled.__aenter__ = _aenter  # type: ignore[method-assign]
    TransactionContextPooled.__aexit__ = _aexit  # type: ignore[method-assign]
