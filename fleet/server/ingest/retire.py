"""A replica that is gone: what the broker holds for it goes to the inbox, then its session.

A replica's ingest session (`CLIENT_ID.ingest.REPLICA_ID`) stays a member of the shared group
while the replica is down: the broker goes on handing it its share of the terminals' messages and
queues them for it (Mosquitto does; the MQTT spec allows it). A replica killed, or stopped for
good, would sit on its share -- every other report of half the fleet, with two replicas -- and
the lease holder would call those terminals offline while they report.

So every replica writes a heartbeat (`replica` table) every HEARTBEAT_S, and the lease holder
retires the session of a replica not heard for STALE_S (`sweep`): it takes the session over,
unsubscribes it (nothing new is routed to it), files everything the broker had queued for it
into the inbox, as the replica's own relay would have, and ends the session. The lease holder's
own session is never retired, so the group always keeps one member that queues. A replica that
comes back subscribes again and takes its share again. `fleet replicas retire` does the same by
hand, and refuses a replica whose heartbeat is fresh.

A replica that is alive but has lost the database (no heartbeat, its relay holding its batch)
would go on taking its share and holding it. So the lease holder first asks a quiet replica to
leave the group (a message on `leave_topic`, its own), and waits ASK_WAIT_S: a replica that
cannot store obeys (it unsubscribes, keeps what it holds, and subscribes again once it can
store); one that can store ignores it. Only then does it retire the session; a replica that is
alive takes its session back at its next reconnect, the retirement stops at once, leaving the
session as it is, and is tried again later (a growing wait). Nothing is lost either way:
whatever was filed is acknowledged, and what was not stays with the broker or the replica.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial

from tortoise.connection import get_connection

from fleet.server.db.deadline import within
from fleet.server.db.retry import StorageRetry
from fleet.server.ingest.inbox import file_batch
from fleet.server.ingest.receiver import Receiver, ReceiverConfig
from fleet.server.settings import Settings

log = logging.getLogger(__name__)

HEARTBEAT_S = 2.0
#: A replica not heard for this long is gone (well under the presence timeout of 3 intervals).
STALE_S = 6.0
#: How long a replica asked to leave has to do so before its session is taken over.
ASK_WAIT_S = 2.0
#: After a retirement that found the replica alive, the next try waits this (then twice that...).
RETRY_MIN_S = 10.0
RETRY_MAX_S = 120.0

_BEAT = (
    'INSERT INTO "replica" ("id", "holder", "seen_at") VALUES ($1, $2, now()) '
    'ON CONFLICT ("id") DO UPDATE SET "holder" = EXCLUDED."holder", "seen_at" = now()'
)
_STALE = (
    'SELECT "id" FROM "replica" WHERE "id" <> $1 '
    'AND "seen_at" < now() - make_interval(secs => $2) ORDER BY "id"'
)
_FRESH = (
    'SELECT "id" FROM "replica" WHERE "id" = $1 AND "seen_at" >= now() - make_interval(secs => $2)'
)
_FORGET = 'DELETE FROM "replica" WHERE "id" = $1 AND "seen_at" < now() - make_interval(secs => $2)'


def leave_topic(replica_id: str) -> str:
    """Where the lease holder asks replica `replica_id` to leave the shared group."""
    return f"fleet/v1/replicas/{replica_id}/leave"


@dataclass(frozen=True)
class BrokerAt:
    host: str
    port: int
    tls: bool = False


async def beat(replica_id: str, holder: str) -> None:
    await get_connection("default").execute_query_dict(_BEAT, [replica_id, holder])


async def run_heartbeat(replica_id: str, holder: str, stop: asyncio.Event) -> None:
    while not stop.is_set():
        try:
            await within(beat(replica_id, holder), HEARTBEAT_S)
        except Exception as e:  # the database away: the others will notice, as they should
            log.warning("replica heartbeat failed (%r)", e)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), HEARTBEAT_S)


async def is_fresh(replica_id: str) -> bool:
    rows = await get_connection("default").execute_query_dict(_FRESH, [replica_id, STALE_S])
    return bool(rows)


async def retire(
    settings: Settings, broker: BrokerAt, replica_id: str, idle_s: float = 1.0
) -> int | None:
    """Move replica `replica_id`'s queued messages to the inbox and end its session; the number
    moved, or None when the replica took its session back meanwhile (it is alive)."""
    stop = asyncio.Event()
    retry = StorageRetry(stop)
    receiver = Receiver(
        ReceiverConfig(
            host=broker.host,
            port=broker.port,
            username=settings.broker_admin_user,
            password=settings.broker_admin_password.get_secret_value(),
            client_id=f"{settings.broker_client_id}.ingest.{replica_id}",
            tls=broker.tls,
            shared=True,
            group=settings.ingest_share_group,
        )
    )
    moved = 0
    ended = False
    try:
        await receiver.start()
        await receiver.wait_connected(10)
        await receiver.leave()
        while True:
            if receiver.connects != 1 or not receiver.connected:
                log.warning("replica %s took its session back: it is alive", replica_id)
                return None
            try:
                msgs = await asyncio.wait_for(receiver.batch(500), idle_s)
            except TimeoutError:
                break
            await retry(f"filing {len(msgs)} messages", partial(file_batch, msgs))
            receiver.ack_many(msgs)
            moved += len(msgs)
        # The acks are written before the DISCONNECT that ends the session.
        await receiver.stop(end_session=True)
        ended = True
    finally:
        if not ended:
            await receiver.stop()  # the session stays, with what is left in it
    await get_connection("default").execute_query(_FORGET, [replica_id, STALE_S])
    log.warning("replica %s retired: %d queued messages moved to the inbox", replica_id, moved)
    return moved


@dataclass
class Sweeper:
    """The lease holder's round: retire the sessions of replicas gone quiet."""

    settings: Settings
    broker: BrokerAt
    #: Asks a replica to leave the group (a message on its `leave_topic`).
    ask: Callable[[str], Awaitable[None]] | None = None
    #: replica id -> (monotonic time of the next try, wait after that).
    _backoff: dict[str, tuple[float, float]] = field(default_factory=dict)
    #: replica id -> when it was asked to leave.
    _asked: dict[str, float] = field(default_factory=dict)
    retired: int = 0

    async def sweep(self) -> None:
        conn = get_connection("default")
        rows = await conn.execute_query_dict(_STALE, [self.settings.replica_id, STALE_S])
        stale = [str(row["id"]) for row in rows]
        for rid in set(self._asked) - set(stale):  # heard again
            self._asked.pop(rid, None)
            self._backoff.pop(rid, None)
        now = time.monotonic()
        for rid in stale:
            if rid not in self._asked:
                self._asked[rid] = now
                if self.ask is not None:
                    try:
                        await self.ask(rid)
                    except Exception as e:  # the takeover below does without
                        log.warning("asking replica %s to leave failed (%r)", rid, e)
            if now - self._asked[rid] < ASK_WAIT_S:
                continue
            next_try, wait = self._backoff.get(rid, (0.0, RETRY_MIN_S))
            if now < next_try:
                continue
            moved = await retire(self.settings, self.broker, rid)
            if moved is None:
                self._backoff[rid] = (now + wait, min(wait * 2, RETRY_MAX_S))
            else:
                self._backoff.pop(rid, None)
                self._asked.pop(rid, None)
                self.retired += 1

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await self.sweep()
            except Exception:  # the next round tries again
                log.exception("retiring gone replicas failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), HEARTBEAT_S)
