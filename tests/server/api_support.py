"""Helpers for the API tests: the pinned clock, the app and its client, tokens, a seeded fleet.
The fixtures that use them are in api_fixtures.py."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import httpx
import uvicorn
from fastapi import FastAPI

from fleet.server.api import AppContext, create_app
from fleet.server.db.models import (
    Alert,
    Role,
    Site,
    SiteKind,
    StatusSample,
    Terminal,
)
from fleet.server.settings import Settings
from fleet.server.tokens import create_token, revoke_token
from tests.services.ports import free_port

#: Wednesday 2026-11-25 14:00 in Asia/Shanghai: a service day, in service hours.
NOW = datetime(2026, 11, 25, 6, 0, tzinfo=UTC)


@dataclass
class Api:
    app: FastAPI
    ctx: AppContext
    client: httpx.AsyncClient
    #: role name -> a valid bearer token of that role.
    tokens: dict[str, str] = field(default_factory=dict)

    def auth(self, role: str = "operator") -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[role]}"}


async def make_token(role: Role, name: str | None = None, revoked: bool = False) -> str:
    new = await create_token(name or f"{role.value}-1", role)
    if revoked:
        await revoke_token(new.record.id)
    return new.secret


def make_app(database_url: str) -> tuple[FastAPI, AppContext]:
    settings = Settings(dev_mode=True, database_url=database_url)
    ctx = AppContext(settings, clock=lambda: NOW)
    ctx.metrics.min_refresh_s = 0.0  # every scrape sees the DB as the test left it
    return create_app(settings, manage_db=False, context=ctx), ctx


async def seed_fleet() -> None:
    """Two sites, five terminals in different states, open and cleared alerts, paper history.

    T1 S1 online idle      paper 30, falling 10 %/h since 11:00 local -> runs out ~17:00
    T2 S1 online stopped   paper 0, paper_out open
    T3 S2 offline          paper 15, paper_low and terminal_offline open
    T4 S2 online printing  paper 50, steady; a jam cleared an hour ago, another two days ago
    T5 S2 online, printer offline
    """
    s1 = await Site.create(id="S1", name="Service hall", kind=SiteKind.HALL)
    s2 = await Site.create(id="S2", name="Jinjiang street centre", kind=SiteKind.STREET)
    seen = NOW - timedelta(seconds=20)
    rows = [
        ("T1", s1, True, "idle", 30),
        ("T2", s1, True, "stopped", 0),
        ("T3", s2, False, "idle", 15),
        ("T4", s2, True, "printing", 50),
        ("T5", s2, True, "offline", None),
    ]
    for tid, site, online, printer, paper in rows:
        await Terminal.create(
            id=tid,
            site=site,
            model="kiosk-a",
            mqtt_username=tid,
            online=online,
            printer_state=printer,
            paper_pct=paper,
            reader_state="ok",
            last_seen=seen,
            last_seq=100,
            agent_version="1.2.0",
            status={"v": 1, "seq": 100, "desired": "sha256:abc", "agent": "1.2.0"},
        )
    await _alert("T2", "paper_out", "critical", NOW - timedelta(minutes=30))
    await _alert("T3", "paper_low", "warning", NOW - timedelta(hours=2))
    await _alert("T3", "terminal_offline", "critical", NOW - timedelta(minutes=10))
    await _alert(
        "T4", "jam", "critical", NOW - timedelta(hours=2), cleared=NOW - timedelta(hours=1)
    )
    await _alert("T4", "jam", "critical", NOW - timedelta(days=2), cleared=NOW - timedelta(days=2))
    # T1: a sample every 5 minutes, 11:00-14:00 local, 60 % down to 30 %.
    start = NOW - timedelta(hours=3)
    for i in range(37):
        ts = start + timedelta(minutes=5 * i)
        await _sample("T1", i + 1, ts, round(60 - 30 * i / 36))
    for i in range(37):
        await _sample("T4", i + 1, start + timedelta(minutes=5 * i), 50)


async def _alert(
    terminal: str, rule: str, severity: str, opened: datetime, cleared: datetime | None = None
) -> Alert:
    return await Alert.create(
        terminal_id=terminal,
        rule=rule,
        severity=severity,
        opened_at=opened,
        cleared_at=cleared,
        active_key=None if cleared else 1,
    )


async def _sample(terminal: str, seq: int, ts: datetime, paper: int) -> None:
    await StatusSample.create(
        terminal_id=terminal,
        seq=seq,
        ts=ts,
        received_at=ts + timedelta(milliseconds=50),
        paper_pct=paper,
        printer_state="idle",
        reasons=[],
        reader_state="ok",
        toner_pct=40,
    )


@asynccontextmanager
async def served(app: FastAPI) -> AsyncIterator[str]:
    """The app behind a real uvicorn on a free loopback port, in this event loop; yields its URL.

    httpx's ASGI transport buffers whole responses, so a stream that never ends needs a socket.
    The lifespan is off: the test has opened the database already.
    """
    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, lifespan="off", log_level="warning")
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    try:
        while not server.started:
            if task.done():
                task.result()  # raises what made it stop
            await asyncio.sleep(0.01)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 10)


async def sse_events(lines: AsyncIterator[str]) -> AsyncIterator[dict[str, str]]:
    """Parse a text/event-stream into blocks: {"event": ..., "data": ..., "id": ...} or
    {"comment": ...}; `retry` blocks are yielded too."""
    block: dict[str, str] = {}
    async for line in lines:
        if line == "":
            if block:
                yield block
            block = {}
        elif line.startswith(":"):
            block["comment"] = line[1:].strip()
        else:
            name, _, value = line.partition(":")
            block[name] = value.removeprefix(" ")
