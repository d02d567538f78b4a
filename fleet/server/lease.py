"""Which replica runs the singletons: a lease row in PostgreSQL, renewed by its holder.

With several `fleet serve` on one database, some work must run exactly once: handling the ingest's
messages (each terminal's state needs one writer), the presence and alert timers, the forecast,
the rollout timers, the history retention, the desired state's recompute at start. The replica
holding the lease `leader` runs them all; the others serve the API and relay what the broker
hands them (ingest/inbox.py).

Taking and renewing is one statement, decided by the database's clock (the replicas' clocks
never compare): the row is written if it is ours or has expired. The holder renews every
`renew_s`, and counts itself leader only until `ttl_s - margin_s` after it *sent* its last
successful renewal, so it stops before anyone else may start. A holder that stops cleanly deletes
its row: another replica takes over at its next try (`renew_s`). A holder killed, or cut off from
the database, is replaced once its row expires: within `ttl_s + renew_s` (11 s by default).

A holder id is new at every start (replica id, pid, random), so a replica restarted at once never
believes it still holds what its previous life held.

Without replicas (SQLite) there is nothing to share: `Leadership.solo()` is held at once and
never touches the database.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager

from tortoise.connection import get_connection

from fleet.server.db.deadline import within

log = logging.getLogger(__name__)

LEADER = "leader"
TTL_S = 9.0
RENEW_S = 2.0
#: How long before the database's expiry the holder stops counting itself leader.
MARGIN_S = 2.0

_TAKE = """
INSERT INTO "lease" ("name", "holder", "expires_at")
VALUES ($1, $2, now() + make_interval(secs => $3))
ON CONFLICT ("name") DO UPDATE
    SET "holder" = EXCLUDED."holder", "expires_at" = EXCLUDED."expires_at"
    WHERE "lease"."holder" = EXCLUDED."holder" OR "lease"."expires_at" < now()
RETURNING "holder"
"""
_RELEASE = 'DELETE FROM "lease" WHERE "name" = $1 AND "holder" = $2'


def new_holder_id(replica_id: str) -> str:
    return f"{replica_id}:{os.getpid()}:{secrets.token_hex(4)}"


class Leadership:
    """The lease `name` as this process sees it: `held`, and events for waiting on a change."""

    def __init__(
        self,
        holder: str,
        name: str = LEADER,
        *,
        ttl_s: float = TTL_S,
        renew_s: float = RENEW_S,
        margin_s: float = MARGIN_S,
        shared: bool = True,
        on_change: Callable[[bool], None] | None = None,
    ) -> None:
        """`on_change(held)` is called at each change (a metric)."""
        if shared and renew_s >= ttl_s - margin_s:
            raise ValueError("renew_s must be well under ttl_s - margin_s")
        self.holder = holder
        self.name = name
        self.ttl_s, self.renew_s, self.margin_s = ttl_s, renew_s, margin_s
        self.shared = shared
        self.on_change = on_change
        self._until = float("inf") if not shared else 0.0
        self._gained = asyncio.Event()
        self._lost = asyncio.Event()
        #: Terms of leadership begun in this process (for logs and tests).
        self.terms = 0
        self._update()

    @classmethod
    def solo(cls) -> Leadership:
        """A lease nobody else wants: held from the start (one server on SQLite)."""
        return cls("solo", shared=False)

    @property
    def held(self) -> bool:
        return time.monotonic() < self._until

    def _update(self) -> None:
        held = self.held
        if held != self._gained.is_set() and self.on_change is not None:
            self.on_change(held)
        if held and not self._gained.is_set():
            self.terms += 1
            log.info("lease %r held by this replica (%s)", self.name, self.holder)
        (self._gained.set if held else self._gained.clear)()
        (self._lost.clear if held else self._lost.set)()

    async def wait_held(self) -> None:
        await self._gained.wait()

    async def wait_lost(self) -> None:
        await self._lost.wait()

    async def try_take(self) -> bool:
        """One attempt to take or renew the lease; True when this process holds it now."""
        sent = time.monotonic()
        conn = get_connection("default")
        # A row back when it was written (ours now), none when it is someone else's. (Not
        # execute_query: for an INSERT it returns the command tag's OID as the row count.)
        written = await conn.execute_query_dict(_TAKE, [self.name, self.holder, self.ttl_s])
        if written:
            self._until = sent + self.ttl_s - self.margin_s
        return bool(written)

    async def run(self, stop: asyncio.Event) -> None:
        """Take and renew until `stop`, then give the lease back."""
        if not self.shared:
            await stop.wait()
            return
        was_held = False
        while not stop.is_set():
            try:
                # A database gone silent must not hold the renewal past the margin.
                await within(self.try_take(), self.renew_s)
            except Exception as e:  # the lease runs out on its own; the next try may succeed
                log.warning("lease %r: renewing failed (%r)", self.name, e)
            self._update()
            if was_held and not self.held:
                log.error("lease %r lost: singletons stop on this replica", self.name)
            was_held = self.held
            wait = self.renew_s
            if self.held:  # wake up when it would run out, should renewals keep failing
                wait = min(wait, max(0.05, self._until - time.monotonic()))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), wait)
        await self.release()

    async def release(self) -> None:
        if not self.shared or not self.held:
            return
        self._until = 0.0
        self._update()
        try:
            conn = get_connection("default")
            await within(conn.execute_query(_RELEASE, [self.name, self.holder]), 2.0)
            log.info("lease %r given back", self.name)
        except Exception as e:  # it expires on its own
            log.warning("lease %r: giving it back failed (%r)", self.name, e)


SingletonHook = Callable[[], AbstractAsyncContextManager[None]]


async def run_while_held(
    leadership: Leadership, hooks: Sequence[SingletonHook], stop: asyncio.Event
) -> None:
    """Run `hooks` (entered in order, left in reverse) during each term of `leadership`."""
    while not stop.is_set():
        if not await _first(leadership.wait_held(), stop.wait()):
            return
        async with AsyncExitStack() as stack:
            for hook in hooks:
                await stack.enter_async_context(hook())
            await _first(leadership.wait_lost(), stop.wait())


async def _first(wanted: Awaitable[object], stop: Awaitable[object]) -> bool:
    """Await both until one ends; True when it was `wanted`."""
    a, b = asyncio.ensure_future(wanted), asyncio.ensure_future(stop)
    done, pending = await asyncio.wait({a, b}, return_when=asyncio.FIRST_COMPLETED)
    for task in pending:
        task.cancel()
    return a in done


@asynccontextmanager
async def leadership_running(leadership: Leadership) -> AsyncIterator[asyncio.Event]:
    """Run the lease's renewals for the block; the event it yields stops them."""
    stop = asyncio.Event()
    task = asyncio.create_task(leadership.run(stop), name=f"lease-{leadership.name}")
    try:
        yield stop
    finally:
        stop.set()
        await task
