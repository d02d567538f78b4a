"""Opening and closing the fleet database, and bringing its schema up to date.

The schema comes from the migrations in `fleet/server/db/migrations/` (Tortoise's built-in
migration framework) on SQLite and PostgreSQL alike. After a model change, generate the next one:

    .venv/bin/python -m tortoise -c fleet.server.db.TORTOISE_ORM makemigrations
"""

from __future__ import annotations

import asyncio
import fcntl
from pathlib import Path
from typing import IO, Any

from tortoise import Tortoise
from tortoise.backends.base.executor import EXECUTOR_CACHE
from tortoise.connection import get_connection
from tortoise.migrations.executor import MigrationExecutor

from fleet.server.db import pool_fix
from fleet.server.settings import is_postgres

APP_LABEL = "fleet"
MODELS_MODULE = "fleet.server.db.models"
MIGRATIONS_MODULE = "fleet.server.db.migrations"
# An arbitrary constant: the PostgreSQL advisory lock that serialises migrations, so two server
# replicas starting together do not both try to create the same tables.
_MIGRATION_LOCK_ID = 0x666C656574  # "fleet"


# SQLite pragmas (Tortoise passes URL parameters through as pragmas; it already sets WAL and
# foreign keys). busy_timeout: `fleet tokens …` and `fleet terminals add` write while `fleet serve`
# runs, and must wait for its write lock instead of failing at once. synchronous=NORMAL is the
# setting SQLite recommends with WAL: never corrupt, and a power cut loses at most the last
# commits, a fair price for the ingest's write rate.
_SQLITE_DEFAULTS = {"busy_timeout": "5000", "synchronous": "NORMAL"}


def tortoise_config(database_url: str) -> dict[str, Any]:
    """The Tortoise config for our one app on `database_url` (sqlite://PATH or postgres://…)."""
    return {
        "connections": {"default": _with_sqlite_defaults(database_url)},
        "apps": {
            APP_LABEL: {
                "models": [MODELS_MODULE],
                "default_connection": "default",
                "migrations": MIGRATIONS_MODULE,
            }
        },
        "use_tz": True,
        "timezone": "UTC",
    }


async def init_db(database_url: str, *, migrate: bool = True) -> None:
    """Open the database for this process and (by default) apply pending migrations.

    The ORM state is also registered as the process-wide fallback, because the FastAPI lifespan
    that calls this runs in another task than the requests that query.
    """
    _make_sqlite_folder(database_url)
    pool_fix.install()
    await Tortoise.init(config=tortoise_config(database_url), _enable_global_fallback=True)
    if migrate:
        await apply_migrations(database_url)


async def apply_migrations(database_url: str) -> None:
    """Apply every migration not yet recorded in the database; a no-op when up to date."""
    connection = get_connection("default")
    apps = tortoise_config(database_url)["apps"]
    if is_postgres(database_url):
        # Session-level lock on one pooled connection, so lock and unlock use the same session.
        async with connection.acquire_connection() as raw:
            await raw.execute(f"SELECT pg_advisory_lock({_MIGRATION_LOCK_ID})")
            try:
                await MigrationExecutor(connection, apps).migrate()
            finally:
                await raw.execute(f"SELECT pg_advisory_unlock({_MIGRATION_LOCK_ID})")
    else:
        # SQLite serialises single writes, not a whole migration run: two processes starting on
        # one file would both see a migration as pending. An flock beside the file orders them.
        lock = await asyncio.to_thread(_sqlite_migration_lock, database_url)
        try:
            await MigrationExecutor(connection, apps).migrate()
        finally:
            if lock is not None:
                lock.close()  # releases the flock


async def close_db() -> None:
    await Tortoise.close_connections()
    # Tortoise caches each model's INSERT/UPDATE SQL by connection *name*, not dialect: without
    # this, reopening the process on another backend (the test suite does) reuses SQLite's
    # "?" placeholders on PostgreSQL.
    EXECUTOR_CACHE.clear()


def _sqlite_migration_lock(database_url: str) -> IO[bytes] | None:
    """Hold an exclusive flock on `<db file>.migrate.lock` (None for an in-memory database)."""
    rest = database_url.partition("://")[2]
    if rest.startswith(":memory:"):
        return None
    handle = open(rest.split("?", 1)[0] + ".migrate.lock", "ab")  # noqa: SIM115  # held open
    fcntl.flock(handle, fcntl.LOCK_EX)  # blocks for the length of another server's migrations
    return handle


def _with_sqlite_defaults(database_url: str) -> str:
    if not database_url.startswith("sqlite://"):
        return database_url
    path, _, query = database_url.partition("?")
    params = dict(p.split("=", 1) for p in query.split("&") if "=" in p)
    return path + "?" + "&".join(f"{k}={v}" for k, v in {**_SQLITE_DEFAULTS, **params}.items())


def _make_sqlite_folder(database_url: str) -> None:
    scheme, _, rest = database_url.partition("://")
    if scheme != "sqlite" or rest.startswith(":memory:"):
        return
    path = rest.split("?", 1)[0]
    Path(path).parent.mkdir(parents=True, exist_ok=True)


#: For Tortoise's command line (`python -m tortoise -c fleet.server.db.TORTOISE_ORM …`):
#: an in-memory database is enough to diff the models against the migrations.
TORTOISE_ORM = tortoise_config("sqlite://:memory:")
