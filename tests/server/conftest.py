"""Database fixtures: every DB test runs on SQLite and on a real PostgreSQL.

`FLEET_TEST_DATABASES` picks the backends (default "sqlite,postgres"; e.g. "sqlite" for a quick
run). PostgreSQL is one server for the session. `db` gives each test a migrated database: a new
SQLite file, or on PostgreSQL one database migrated once per session and truncated before each
test (a new database plus migrations costs ~0.4 s a test there). `db_url` gives an empty
database of either kind, for tests of the migrations themselves.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from tortoise import Tortoise
from tortoise.connection import get_connection

from fleet.server.db import close_db, init_db
from tests.services import mosquitto, postgres
from tests.services.fleet_server import Server, fleet_serve

BACKENDS = [
    b.strip() for b in os.environ.get("FLEET_TEST_DATABASES", "sqlite,postgres").split(",") if b
]


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[postgres.Postgres]:
    if not postgres.available():
        pytest.skip(
            f"PostgreSQL binaries not found in {postgres.BIN} (apt-get install postgresql, "
            "or set FLEET_PG_BIN); set FLEET_TEST_DATABASES=sqlite to run SQLite only"
        )
    server = postgres.Postgres().start()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture(scope="session")
def postgres_shared_url(postgres_server: postgres.Postgres) -> str:
    """One PostgreSQL database for the session, migrated by the first test that opens it."""
    return postgres_server.new_database()


@pytest.fixture(params=BACKENDS)
def db_backend(request: pytest.FixtureRequest) -> str:
    if request.param not in ("sqlite", "postgres"):
        raise ValueError(f"unknown FLEET_TEST_DATABASES backend {request.param!r}")
    return str(request.param)


@pytest.fixture
def db_url(db_backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty database of each backend (not opened)."""
    if db_backend == "sqlite":
        yield f"sqlite://{tmp_path / 'fleet.sqlite3'}"
        return
    server: postgres.Postgres = request.getfixturevalue("postgres_server")
    url = server.new_database()
    yield url
    server.drop_database(url)


@pytest.fixture
async def db(db_backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """A migrated database with no rows, opened for this test; its URL."""
    if db_backend == "sqlite":
        url = f"sqlite://{tmp_path / 'fleet.sqlite3'}"
    else:
        url = request.getfixturevalue("postgres_shared_url")
    await init_db(url)  # on the shared database only the first test finds work to do
    try:
        if db_backend == "postgres":
            await _truncate_all()
        yield url
    finally:
        await close_db()


async def _truncate_all() -> None:
    tables = ", ".join(f'"{m._meta.db_table}"' for m in Tortoise.apps["fleet"].values())
    await get_connection("default").execute_script(f"TRUNCATE {tables} RESTART IDENTITY CASCADE")


@pytest.fixture
def server() -> Iterator[Server]:
    """A real `fleet serve` (own Mosquitto, SQLite, 2 s status interval) and an operator token."""
    if not mosquitto.available():
        pytest.skip("mosquitto not installed")
    with fleet_serve("fleet-e2e-", status_interval_s=2) as running:
        s = Server(running.proc, running.data, running.url, running.env)
        s.token = s.fleet("tokens", "create", "--role", "operator", "--name", "e2e").split()[0]
        yield s
