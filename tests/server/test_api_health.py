"""GET /healthz (readiness) and /healthz/live, and the app's lifespan with hooks."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx

from fleet.server.api import AppContext, LifespanHook, create_app
from fleet.server.db import close_db
from fleet.server.settings import Settings
from tests.server.api_support import Api

pytest_plugins = ["tests.server.api_fixtures"]


async def test_ready_without_an_ingest(api: Api) -> None:
    r = await api.client.get("/healthz")
    assert r.status_code == 200
    assert r.json() == {"status": "ok", "checks": {"db": "ok", "ingest": "not_attached"}}


async def test_ingest_state_decides_readiness(api: Api) -> None:
    connected = False
    api.ctx.ingest_ready = lambda: connected
    r = await api.client.get("/healthz")
    assert r.status_code == 503
    assert r.json() == {"status": "unavailable", "checks": {"db": "ok", "ingest": "down"}}
    connected = True
    r = await api.client.get("/healthz")
    assert r.status_code == 200 and r.json()["checks"]["ingest"] == "ok"


async def test_lifespan_opens_the_db_runs_hooks_and_closes(db_url: str) -> None:
    """The app opens (and migrates) the database itself, enters hooks in order and leaves them
    in reverse before the database closes; afterwards readiness fails, liveness does not."""
    trace: list[str] = []

    def hook(name: str) -> LifespanHook:
        @asynccontextmanager
        async def run(ctx: AppContext) -> AsyncIterator[None]:
            trace.append(f"enter {name}")
            ctx.ingest_ready = lambda: True
            yield
            trace.append(f"exit {name}")

        return run

    app = create_app(Settings(dev_mode=True, database_url=db_url), hooks=[hook("a"), hook("b")])
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://api.test") as client:
        async with app.router.lifespan_context(app):
            assert trace == ["enter a", "enter b"]
            r = await client.get("/healthz")
            assert r.json() == {"status": "ok", "checks": {"db": "ok", "ingest": "ok"}}
        assert trace == ["enter a", "enter b", "exit b", "exit a"]
        r = await client.get("/healthz")
        assert r.status_code == 503 and r.json()["checks"]["db"] == "down"
        r = await client.get("/healthz/live")
        assert r.status_code == 200
    await close_db()  # idempotent: the conftest's `db` fixture is not in use here
