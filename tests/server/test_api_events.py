"""The events bus, and GET /api/v1/events (server-sent events) over a real socket."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncGenerator

import httpx
import pytest

from fleet.server.api.routes.events import _stream
from fleet.server.events_bus import EventBus, SubscriberDropped
from tests.server.api_support import Api, served, sse_events

pytest_plugins = ["tests.server.api_fixtures"]


# --- the bus -----------------------------------------------------------------------------------


async def test_every_subscriber_gets_every_event_in_order() -> None:
    bus = EventBus()
    a, b = bus.subscribe(), bus.subscribe()
    sent = [bus.publish("status", {"terminal": f"T{i}"}) for i in range(3)]
    for sub in (a, b):
        got = [await sub.get(timeout=1) for _ in range(3)]
        assert got == sent
    assert [e.id for e in sent] == [1, 2, 3]
    assert await a.get(timeout=0.01) is None  # nothing more: a timeout, not an error


async def test_a_slow_subscriber_is_dropped_and_others_are_not() -> None:
    bus = EventBus()
    slow, fast = bus.subscribe(queue_size=2), bus.subscribe(queue_size=100)
    for i in range(5):  # never blocks, however far behind `slow` is
        bus.publish("alert", {"n": i})
    assert slow.dropped and bus.subscribers == 1 and bus.dropped_total == 1
    with pytest.raises(SubscriberDropped):
        await slow.get(timeout=1)
    got = [await fast.get(timeout=1) for _ in range(5)]
    assert [e.data["n"] for e in got if e is not None] == [0, 1, 2, 3, 4]


async def test_a_waiting_subscriber_wakes_when_dropped() -> None:
    bus = EventBus()
    sub = bus.subscribe(queue_size=1)
    waiter = asyncio.create_task(sub.get(timeout=5))
    await asyncio.sleep(0)
    bus.publish("status", {})
    assert (await waiter) is not None
    bus.publish("status", {})
    bus.publish("status", {})
    with pytest.raises(SubscriberDropped):
        await sub.get(timeout=5)


async def test_closing_unsubscribes() -> None:
    bus = EventBus()
    async with bus.subscribe():
        assert bus.subscribers == 1
    assert bus.subscribers == 0


async def test_publish_threadsafe() -> None:
    bus = EventBus()
    sub = bus.subscribe()
    loop = asyncio.get_running_loop()
    await asyncio.to_thread(bus.publish_threadsafe, loop, "presence", {"terminal": "T1"})
    event = await sub.get(timeout=1)
    assert event is not None and event.data == {"terminal": "T1"}


async def test_stream_ends_with_dropped_for_a_lagging_client() -> None:
    bus = EventBus()
    sub = bus.subscribe(queue_size=1)
    bus.publish("status", {})
    bus.publish("status", {})
    chunks = [c async for c in _stream(sub, None, heartbeat_s=5)]
    assert chunks == ["retry: 3000\n\n", "event: dropped\ndata: {}\n\n"]
    assert bus.subscribers == 0


# --- the route ---------------------------------------------------------------------------------


async def _open(
    client: httpx.AsyncClient, url: str, api: Api, query: str = ""
) -> AsyncGenerator[dict[str, str]]:
    async with client.stream("GET", f"{url}/api/v1/events{query}", headers=api.auth()) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        assert r.headers["cache-control"] == "no-cache"
        async for block in sse_events(r.aiter_lines()):
            yield block


async def test_sse_delivers_published_events(api: Api) -> None:
    async with served(api.app) as url, httpx.AsyncClient(timeout=5) as client:
        events = _open(client, url, api)
        assert await anext(events) == {"retry": "3000"}  # subscribed once the stream starts
        sent = api.ctx.bus.publish("status", {"terminal": "T1", "state": "idle", "paper_pct": 42})
        block = await asyncio.wait_for(anext(events), 5)
        assert block["event"] == "status" and block["id"] == str(sent.id)
        assert json.loads(block["data"]) == {"terminal": "T1", "state": "idle", "paper_pct": 42}
        api.ctx.bus.publish("alert", {"id": 7, "transition": "opened", "rule": "jam"})
        block = await asyncio.wait_for(anext(events), 5)
        assert block["event"] == "alert" and json.loads(block["data"])["rule"] == "jam"
        await events.aclose()
        # The server notices the client has gone and unsubscribes.
        for _ in range(200):
            if api.ctx.bus.subscribers == 0:
                break
            await asyncio.sleep(0.01)
        assert api.ctx.bus.subscribers == 0


async def test_sse_heartbeat_and_kind_filter(api: Api) -> None:
    api.ctx.sse_heartbeat_s = 0.05
    async with served(api.app) as url, httpx.AsyncClient(timeout=5) as client:
        events = _open(client, url, api, "?kind=alert")
        assert await anext(events) == {"retry": "3000"}
        assert await asyncio.wait_for(anext(events), 5) == {"comment": "heartbeat"}
        api.ctx.bus.publish("status", {"terminal": "T1"})
        api.ctx.bus.publish("alert", {"id": 1})
        block = await asyncio.wait_for(anext(events), 5)
        while "comment" in block:
            block = await asyncio.wait_for(anext(events), 5)
        assert block["event"] == "alert"  # the status event was filtered out
        await events.aclose()
