"""Replicas: every replica relays, one replica handles (the ingest inbox).

The broker hands each message of the shared subscription (`$share/fleet/fleet/v1/t/+/…`) to one
replica of the group, round-robin: the reports of one terminal land on every replica in turn.
Handling them where they land would give each terminal several writers, each with half of its
story: sequence gaps that are not gaps, presence timeouts of terminals that report, alerts opened
on one replica and never cleared on the other, latest state going backwards. So the work is cut
in two:

- `Relay` (every replica): what its receiver takes goes into the `ingest_inbox` table in one
  insert per batch, and only once that is committed is it acknowledged to the broker. Nothing is
  decided here; a database that is away holds the batch (StorageRetry) and the broker holds the
  rest.
- `InboxSource` (the replica holding the lease, lease.py): the `Pipeline` reads the inbox in id
  order as it would read the broker, and "acknowledging" a batch deletes its rows. A leader that
  dies before deleting leaves the rows for the next one, which handles them again: the pipeline
  is idempotent for a redelivery (the unique (terminal, seq), the sequence tracker restored
  from the database, alerts one open per (terminal, rule)).

Rows are taken in id order, not with a cursor: an insert that commits after a later one (two
relays racing) is still found at the next read. Its messages then arrive late, which the
pipeline already handles for out-of-order delivery (history, never the latest state).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence

from tortoise.connection import get_connection
from tortoise.transactions import in_transaction

from fleet.server.db.deadline import within
from fleet.server.db.retry import StorageRetry, StorageUnavailable
from fleet.server.ingest.pipeline import MessageSource
from fleet.server.ingest.receiver import Received

log = logging.getLogger(__name__)

#: How often an empty inbox is looked at again: the latency the relay adds, at most.
POLL_S = 0.05

_INSERT = (
    'INSERT INTO "ingest_inbox" ("received_at", "topic", "payload", "refused") '
    "VALUES ($1, $2, $3, $4)"
)
_SELECT = (
    'SELECT "id", "received_at", "topic", "payload", "refused" FROM "ingest_inbox" '
    'ORDER BY "id" LIMIT $1'
)
_DELETE = 'DELETE FROM "ingest_inbox" WHERE "id" = ANY($1::bigint[])'


def _text(value: str) -> str:
    return value.replace("\x00", "\ufffd")  # PostgreSQL text cannot hold NUL


async def file_batch(msgs: Sequence[Received]) -> None:
    """Store `msgs` in the inbox, all or none."""
    rows = [
        [
            m.received_at,
            _text(m.topic),
            m.payload,
            None if m.refused is None else _text(m.refused),
        ]
        for m in msgs
    ]
    async with in_transaction() as conn:
        await conn.execute_many(_INSERT, rows)


class Relay:
    """Moves what `source` (this replica's receiver) takes into the inbox."""

    def __init__(
        self, retry: StorageRetry, batch_size: int, relayed: Callable[[int], None] | None = None
    ) -> None:
        """`relayed(n)` is told of each batch filed (a metric)."""
        self.retry = retry
        self.batch_size = batch_size
        self.relayed = 0
        self._count = relayed

    async def run(self, source: MessageSource, stop: asyncio.Event) -> None:
        while not stop.is_set():
            get = asyncio.ensure_future(source.batch(self.batch_size))
            halt = asyncio.ensure_future(stop.wait())
            done, _ = await asyncio.wait({get, halt}, return_when=asyncio.FIRST_COMPLETED)
            halt.cancel()
            if get not in done:
                get.cancel()  # batch() takes messages only when it returns: none are lost
                return
            msgs = get.result()
            if not msgs:
                continue
            if not await self._file(msgs, stop):
                log.warning("stopping with %d messages not relayed: not acknowledged, the broker "
                            "keeps them", len(msgs))  # fmt: skip
                return
            source.ack_many(msgs)
            self.relayed += len(msgs)
            if self._count is not None:
                self._count(len(msgs))

    async def _file(self, msgs: list[Received], stop: asyncio.Event) -> bool:
        """File `msgs`, however long it takes; False when a stop came first. The rows are
        generic (bytes and NUL-free text): an error that is not the database being away is
        ours, and holding the messages (the broker keeps them, /healthz says so) beats
        dropping them."""
        while True:
            try:
                await self.retry(f"relaying {len(msgs)} messages", lambda: file_batch(msgs))
                return True
            except StorageUnavailable:
                return False
            except Exception:
                log.exception("could not relay %d messages; trying again", len(msgs))
                self.retry.ok = False
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), 5.0)
                if stop.is_set():
                    return False


class InboxSource:
    """The inbox as the pipeline's `MessageSource` (on the replica holding the lease)."""

    def __init__(self, retry: StorageRetry, poll_s: float = POLL_S) -> None:
        self.retry = retry
        self.poll_s = poll_s
        self._handled: list[int] = []

    async def batch(self, max_items: int = 500, linger_s: float = 0.0) -> list[Received]:
        """The oldest `max_items` rows once there are any (the previous batch's rows deleted
        first); [] when a stop came while the database was away."""
        try:
            await self.flush()
            while True:
                rows = await self.retry("reading the inbox", lambda: self._read(max_items))
                if rows:
                    return rows
                await asyncio.sleep(self.poll_s)
        except StorageUnavailable:
            return []

    async def _read(self, limit: int) -> list[Received]:
        _, rows = await get_connection("default").execute_query(_SELECT, [limit])
        return [
            Received(
                topic=r["topic"],
                payload=bytes(r["payload"]),
                qos=1,
                retain=False,
                dup=False,
                mid=int(r["id"]),
                received_at=float(r["received_at"]),
                connection=0,
                refused=r["refused"],
            )
            for r in rows
        ]

    def ack_many(self, msgs: list[Received]) -> int:
        """Handled: their rows go with the next read (or `flush`)."""
        self._handled.extend(m.mid for m in msgs)
        return len(msgs)

    async def flush(self) -> None:
        """Delete the rows of the batches handled so far."""
        if self._handled:
            ids = list(self._handled)
            await self.retry(
                "emptying the inbox",
                lambda: get_connection("default").execute_query(_DELETE, [ids]),
            )
            del self._handled[: len(ids)]

    async def close(self) -> None:
        """At the end of a term: delete what was handled if the database lets us (if not, the
        next leader handles those rows again, harmlessly)."""
        with contextlib.suppress(Exception):
            await within(self.flush(), 2.0)
