"""In-process publish/subscribe for live changes: the ingest publishes, the SSE route reads.

Publishing never blocks and never fails on a subscriber's account: each subscriber has a bounded
queue, and one that falls that far behind (a dashboard on a slow link, a tab in the background)
is dropped: its stream ends, and the browser's EventSource reconnects and reloads the current
state over REST. Blocking the ingest for one slow reader would delay every terminal's truth.

Everything here runs on the event loop's thread (the ingest pipeline and the API share one loop);
`publish_threadsafe` is for a caller on another thread. With replicas, `forward` hands every
event published here to the other replicas (events_bridge.py), which `deliver` it to their own
subscribers: every replica's stream shows every event, whichever replica made it.

Event kinds and their payloads (JSON objects):
    status    {"terminal", "site", "state", "online", "printer_state", "paper_pct",
               "reader_state", "last_seen", "seq"}                   one terminal's latest state
    presence  {"terminal", "online", "reason", "at"}                 online/offline transitions
    alert     {"id", "terminal", "rule", "severity", "transition": "opened"|"cleared"|"acked",
               "at", ...}                                             alert transitions
    rollout   {"id", "version", "state", "current_wave", "reason", "change", "at"}
                                                                      a rollout's state or wave
    rollout_terminal {"rollout", "terminal", "wave", "state", "reason", "at"}
                                                                      a terminal's update state
"""

from __future__ import annotations

import asyncio
import itertools
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

EventKind = Literal["status", "presence", "alert", "rollout", "rollout_terminal"]

#: Events a subscriber may lag behind before it is dropped. A fleet of 1,000 terminals reporting
#: every 30 s publishes ~33 status events a second: this is several seconds of slack.
DEFAULT_QUEUE_SIZE = 1024


@dataclass(frozen=True, slots=True)
class BusEvent:
    id: int  # increasing per bus: the SSE `id:` field
    kind: EventKind
    data: Mapping[str, Any]


class SubscriberDropped(Exception):
    """The subscriber fell more than its queue size behind and was removed from the bus."""


class Subscription:
    """One reader's queue. Iterate it, or call `get`; close it (or use `async with`) when done."""

    def __init__(self, bus: EventBus, maxsize: int) -> None:
        self._bus = bus
        self._maxsize = maxsize
        self._items: deque[BusEvent] = deque()
        self._wake = asyncio.Event()
        self.dropped = False

    def _offer(self, event: BusEvent) -> bool:
        if len(self._items) >= self._maxsize:
            self.dropped = True
            self._wake.set()
            return False
        self._items.append(event)
        self._wake.set()
        return True

    async def get(self, timeout: float | None = None) -> BusEvent | None:
        """The next event; None after `timeout` seconds without one. Raises SubscriberDropped."""
        if not self._items and not self.dropped:
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), timeout)
            except TimeoutError:
                return None
        if self.dropped:
            # What is queued is a prefix with a hole after it: better none than a misleading part.
            raise SubscriberDropped
        return self._items.popleft()

    def close(self) -> None:
        self._bus._remove(self)

    async def __aenter__(self) -> Subscription:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()

    def __aiter__(self) -> AsyncIterator[BusEvent]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[BusEvent]:
        while True:
            event = await self.get()
            if event is not None:
                yield event


class EventBus:
    def __init__(self, queue_size: int = DEFAULT_QUEUE_SIZE) -> None:
        self._queue_size = queue_size
        self._subs: set[Subscription] = set()
        self._ids = itertools.count(1)
        #: Subscribers dropped for lagging, since start (exported as a metric).
        self.dropped_total = 0
        self.published_total = 0
        #: Called with every event published here (not with those delivered from elsewhere).
        self.forward: Callable[[EventKind, Mapping[str, Any]], None] | None = None

    @property
    def subscribers(self) -> int:
        return len(self._subs)

    def subscribe(self, queue_size: int | None = None) -> Subscription:
        sub = Subscription(self, queue_size or self._queue_size)
        self._subs.add(sub)
        return sub

    def publish(self, kind: EventKind, data: Mapping[str, Any]) -> BusEvent:
        """Hand an event to every subscriber now (a lagging one is dropped, never waited on),
        and to `forward`."""
        event = self.deliver(kind, data)
        if self.forward is not None:
            self.forward(kind, data)
        return event

    def deliver(self, kind: EventKind, data: Mapping[str, Any]) -> BusEvent:
        """Hand an event to this process's subscribers only."""
        event = BusEvent(next(self._ids), kind, data)
        self.published_total += 1
        for sub in list(self._subs):
            if not sub._offer(event):
                self._subs.discard(sub)
                self.dropped_total += 1
        return event

    def publish_threadsafe(
        self, loop: asyncio.AbstractEventLoop, kind: EventKind, data: Mapping[str, Any]
    ) -> None:
        """`publish` from a thread other than the loop's (asyncio.Event is not thread-safe)."""
        loop.call_soon_threadsafe(self.publish, kind, data)

    def _remove(self, sub: Subscription) -> None:
        self._subs.discard(sub)
