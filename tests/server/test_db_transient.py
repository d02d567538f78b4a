"""Which database errors mean "try again" (the ingest keeps the message) and which mean "this row
is wrong" (dead-lettered), and the pool fix, on a real PostgreSQL whose backends are killed."""

from __future__ import annotations

import sqlite3

import asyncpg
import pytest
from tortoise.exceptions import IntegrityError, OperationalError
from tortoise.transactions import in_transaction

from fleet.server.db import close_db, init_db
from fleet.server.db.models import Site, SiteKind
from fleet.server.db.transient import is_transient, reset_pool
from tests.services import postgres


def _caused(outer: Exception, cause: BaseException) -> Exception:
    outer.__cause__ = cause
    return outer


@pytest.mark.parametrize(
    "exc",
    [
        ConnectionRefusedError(111, "refused"),
        TimeoutError(),
        asyncpg.exceptions.ConnectionDoesNotExistError("closed in the middle of operation"),
        asyncpg.exceptions.InterfaceError("connection has been released back to the pool"),
        asyncpg.exceptions.CannotConnectNowError("the database system is starting up"),
        asyncpg.exceptions.AdminShutdownError("terminating connection"),
        asyncpg.exceptions.DeadlockDetectedError("deadlock detected"),
        asyncpg.exceptions.SerializationError("could not serialize access"),
        sqlite3.OperationalError("database is locked"),
        _caused(OperationalError("wrapped"), sqlite3.OperationalError("database is locked")),
        _caused(OperationalError("wrapped"), asyncpg.exceptions.ConnectionDoesNotExistError("x")),
    ],
)
def test_the_database_being_away_is_transient(exc: Exception) -> None:
    assert is_transient(exc)


@pytest.mark.parametrize(
    "exc",
    [
        IntegrityError("duplicate key"),
        _caused(OperationalError("wrapped"), asyncpg.exceptions.DataError("value too long")),
        asyncpg.exceptions.UndefinedColumnError("no such column"),
        ValueError("bad value"),
        TypeError("bad type"),
        sqlite3.OperationalError("no such table: x"),
    ],
)
def test_bad_rows_and_bugs_are_not(exc: Exception) -> None:
    assert not is_transient(exc)


async def test_a_task_recovers_after_its_connections_were_killed() -> None:
    """Tortoise 1.1 left the task's current connection pointing at a dead one when BEGIN failed,
    so every later query of the task failed ("released back to the pool"). With pool_fix, a
    failed transaction is followed by a working one in the same task."""
    if not postgres.available():
        pytest.skip("postgresql not installed")
    pg = postgres.Postgres().start()
    try:
        url = pg.new_database()
        await init_db(url)
        try:
            await Site.create(id="S1", name="one", kind=SiteKind.HALL)
            name = url.rsplit("/", 1)[1]
            pg.psql(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                f"WHERE datname = '{name}' AND pid <> pg_backend_pid()"
            )
            failures = 0
            for attempt in range(5):
                try:
                    async with in_transaction() as conn:
                        await Site.create(id=f"S{attempt + 2}", name="x", kind=SiteKind.HALL,
                                          using_db=conn)  # fmt: skip
                    break
                except Exception as e:
                    assert is_transient(e), repr(e)
                    failures += 1
                    reset_pool()
            assert failures >= 1, "the killed connection was never noticed"
            assert await Site.all().count() == 2
        finally:
            await close_db()
    finally:
        pg.close()
