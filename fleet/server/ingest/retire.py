"""Retiring a replica for good: what the broker holds for it goes to the inbox, then its session.

A replica's ingest session (`CLIENT_ID.ingest.REPLICA_ID`) stays a member of the shared group
while the replica is down: the broker goes on handing it its share of the terminals' messages
and queues them for it (Mosquitto does; the MQTT spec allows it), to be delivered when it comes
back. A replica that never comes back would take its share with it when the session expires.
`retire` takes the session over (the replica must be stopped), unsubscribes (nothing new is
routed to it), files everything the broker had queued for it into the inbox, as the replica's
own relay would have, and ends the session. The lease holder then handles those messages.
"""

from __future__ import annotations

import asyncio
import logging
from functools import partial

from fleet.server.db import close_db, init_db
from fleet.server.db.retry import StorageRetry
from fleet.server.ingest.inbox import file_batch
from fleet.server.ingest.receiver import Receiver, ReceiverConfig
from fleet.server.settings import Settings

log = logging.getLogger(__name__)


async def retire(settings: Settings, host: str, port: int, tls: bool, idle_s: float = 2.0) -> int:
    """Move the replica `settings.replica_id`'s queued messages to the inbox and end its session;
    the number of messages moved. Stops when nothing has come for `idle_s`."""
    await init_db(settings.database_url)
    stop = asyncio.Event()
    retry = StorageRetry(stop)
    receiver = Receiver(
        ReceiverConfig(
            host=host,
            port=port,
            username=settings.broker_admin_user,
            password=settings.broker_admin_password.get_secret_value(),
            client_id=f"{settings.broker_client_id}.ingest.{settings.replica_id}",
            tls=tls,
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
        await close_db()
    log.info("replica %s retired: %d messages moved to the inbox", settings.replica_id, moved)
    return moved
