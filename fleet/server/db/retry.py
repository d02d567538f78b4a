"""Waiting out a database that is away: retry in place, keep the caller's messages unacked.

Used by everything that must not acknowledge a message before its rows are committed: the
ingest's pipeline and, with replicas, the relay that files messages into the inbox. An error that
says the database is away (`transient.is_transient`) is retried with a capped backoff and a fresh
pool, and `ok` is False meanwhile (/healthz reports it); any other error is the caller's to
handle. A stop asked for while waiting raises `StorageUnavailable`: the caller then leaves its
messages unacknowledged and the broker keeps them for the next server.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Protocol, TypeVar

from fleet.server.db.deadline import within
from fleet.server.db.transient import is_transient, reset_pool

log = logging.getLogger(__name__)

T = TypeVar("T")

#: The longest wait between two tries.
RETRY_MAX_S = 10.0


class StorageUnavailable(Exception):
    """The database was still away when a stop was asked for: nothing was acknowledged."""


class Counter(Protocol):
    def inc(self, amount: float = 1) -> None: ...


class StorageRetry:
    """`await retry("what", op)`: op() until it succeeds or fails for a reason of its own."""

    def __init__(
        self, stop: asyncio.Event, retries: Counter | None = None, deadline_s: float = 15.0
    ) -> None:
        """`deadline_s`: a call that has not answered by then counts as the database being away
        (a server gone silent never answers; db/deadline.py)."""
        self._stop = stop
        self._retries = retries
        self.deadline_s = deadline_s
        #: False while the database is unavailable.
        self.ok = True

    async def __call__(self, what: str, op: Callable[[], Awaitable[T]]) -> T:
        delay = 0.1
        while True:
            try:
                result = await within(op(), self.deadline_s)
            except Exception as e:
                if not is_transient(e):
                    raise
                self.ok = False
                if self._retries is not None:
                    self._retries.inc()
                reset_pool()  # its connections may be dead or stuck in a failed transaction
                if self._stop.is_set():
                    raise StorageUnavailable(f"{what}: {e!r}") from e
                log.error("%s failed (%r); retrying in %.1f s", what, e, delay)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), delay)
                delay = min(delay * 2, RETRY_MAX_S)
                continue
            if not self.ok:
                log.warning("the database is back: %s succeeded", what)
                self.ok = True
            return result
