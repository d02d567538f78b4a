"""Every replica's event stream shows every event: the events bus carried over PostgreSQL.

An event published on one replica's bus (the leader's ingest: status, presence, alerts, rollout
progress; any replica's API: an alert acknowledged, a rollout paused) is sent with
`pg_notify('fleet_events', …)` on a connection of the bridge's own; each replica LISTENs on that
channel and delivers what other replicas sent to its own subscribers (its SSE streams).

A live view, not a log: while the bridge's connection is down (the database restarting) events
from other replicas are missed, and a dashboard reloads the current state over REST when its
stream reconnects, as after any drop (events_bus.py). Outgoing events wait in a bounded queue
meanwhile; the oldest go first when it is full. NOTIFY carries at most 8,000 bytes: a bigger
event stays local (none of ours comes near it).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any

import asyncpg

from fleet.server.db.deadline import within
from fleet.server.events_bus import EventBus, EventKind

log = logging.getLogger(__name__)

CHANNEL = "fleet_events"
#: PostgreSQL's limit on a NOTIFY payload is 8,000 bytes.
MAX_PAYLOAD = 7900
OUTBOX_MAX = 10_000
RECONNECT_MAX_S = 5.0


class EventsBridge:
    """Carries `bus` events between replicas; `origin` tells this replica's own apart."""

    def __init__(
        self,
        bus: EventBus,
        dsn: str,
        origin: str,
        on_remote: Callable[[EventKind, Mapping[str, Any]], None] | None = None,
    ) -> None:
        self.bus = bus
        self.dsn = dsn
        self.origin = origin
        self.on_remote = on_remote
        self._out: deque[str] = deque(maxlen=OUTBOX_MAX)
        self._wake = asyncio.Event()
        self.connected = False
        #: Counts, for the logs and tests.
        self.sent = self.received = self.dropped = 0

    def forward(self, kind: EventKind, data: Mapping[str, Any]) -> None:
        """The bus's `forward`: queue the event for the other replicas."""
        text = json.dumps({"o": self.origin, "k": kind, "d": data}, default=str)
        if len(text.encode()) > MAX_PAYLOAD:
            log.warning("a %s event of %d bytes stays on this replica", kind, len(text))
            self.dropped += 1
            return
        if len(self._out) == self._out.maxlen:
            self.dropped += 1
        self._out.append(text)
        self._wake.set()

    def _heard(self, _conn: object, _pid: int, _channel: str, payload: str) -> None:
        try:
            msg = json.loads(payload)
            if msg["o"] == self.origin:
                return
            kind, data = msg["k"], msg["d"]
        except (ValueError, KeyError, TypeError):
            log.warning("events bridge: unreadable notification %.80r", payload)
            return
        self.received += 1
        self.bus.deliver(kind, data)
        if self.on_remote is not None:
            self.on_remote(kind, data)

    async def run(self, stop: asyncio.Event) -> None:
        waker = asyncio.create_task(self._wake_at(stop))
        try:
            await self._run(stop)
        finally:
            waker.cancel()

    async def _wake_at(self, stop: asyncio.Event) -> None:
        await stop.wait()
        self._wake.set()

    async def _run(self, stop: asyncio.Event) -> None:
        delay = 0.2
        while not stop.is_set():
            conn: asyncpg.Connection | None = None
            try:
                conn = await within(asyncpg.connect(self.dsn, timeout=10), 12)
                assert conn is not None
                await conn.add_listener(CHANNEL, self._heard)
                self.connected, delay = True, 0.2
                log.info("events bridge listening on %r", CHANNEL)
                await self._send(conn, stop)
            except Exception as e:  # the database away: try again
                if not stop.is_set():
                    log.warning("events bridge: %r; reconnecting in %.1f s", e, delay)
            finally:
                self.connected = False
                if conn is not None:
                    with contextlib.suppress(Exception):
                        await within(conn.close(), 2)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay)
            delay = min(delay * 2, RECONNECT_MAX_S)

    async def _send(self, conn: asyncpg.Connection, stop: asyncio.Event) -> None:
        while not stop.is_set():
            while self._out:
                await conn.execute("SELECT pg_notify($1, $2)", CHANNEL, self._out[0])
                self._out.popleft()
                self.sent += 1
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                # Now and then a query of our own: a connection that died unnoticed is found.
                await asyncio.wait_for(self._wake.wait(), 5.0)
            if not self._out and not stop.is_set():
                await within(conn.execute("SELECT 1"), 5.0)
