"""Issue 13, replicas: the lease, the ingest inbox and the events bridge, on a real PostgreSQL.

Two `Leadership`s, relays and bridges in one process stand for two replicas: what they share is
the database, exactly as two `fleet serve` share it (tests/faults/test_replicas.py runs the real
processes).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

import pytest

from fleet.server.db.cluster_lock import ClusterLock, asyncpg_dsn
from fleet.server.db.retry import StorageRetry
from fleet.server.events_bridge import EventsBridge
from fleet.server.events_bus import EventBus
from fleet.server.ingest.inbox import InboxSource, Relay
from fleet.server.ingest.receiver import Received
from fleet.server.lease import Leadership, run_while_held

pytestmark = pytest.mark.parametrize("db_backend", ["postgres"], indirect=True)

FAST = {"ttl_s": 1.5, "renew_s": 0.25, "margin_s": 0.5}


async def _until(check: object, timeout: float, what: str) -> float:
    started = time.monotonic()
    while not check():  # type: ignore[operator]
        if time.monotonic() - started > timeout:
            raise AssertionError(f"{what}: not within {timeout} s")
        await asyncio.sleep(0.02)
    return time.monotonic() - started


@contextlib.asynccontextmanager
async def running(lease: Leadership) -> AsyncIterator[tuple[asyncio.Event, asyncio.Task[None]]]:
    stop = asyncio.Event()
    task = asyncio.create_task(lease.run(stop))
    try:
        yield stop, task
    finally:
        stop.set()
        if not task.done():
            await task


async def test_one_holder_at_a_time_and_failover_after_a_kill(db: str) -> None:
    a, b = Leadership("a", **FAST), Leadership("b", **FAST)
    async with running(a) as (_, task_a):
        await _until(lambda: a.held, 3, "a holds the lease")
        async with running(b):
            overlap = 0
            for _ in range(40):  # two seconds: renewals go on, the holder stays, never both
                overlap += a.held and b.held
                await asyncio.sleep(0.05)
            assert overlap == 0 and a.held
            assert a.terms == 1 and b.terms == 0
            # A kill: the holder's renewals stop without giving the lease back.
            task_a.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task_a
            assert a.held  # it still believes so, until its margin runs out...
            took = await _until(lambda: b.held, 5, "the other takes over")
            assert not a.held, "the killed holder must count itself out before the other starts"
            # The database's expiry (ttl) plus at most one renewal period.
            assert took <= FAST["ttl_s"] + FAST["renew_s"] + 0.5, took


async def test_a_clean_stop_hands_over_at_the_next_renewal(db: str) -> None:
    a, b = Leadership("a", **FAST), Leadership("b", **FAST)
    async with running(a) as (stop_a, task_a):
        await _until(lambda: a.held, 3, "a holds it")
        async with running(b):
            await asyncio.sleep(0.5)
            assert not b.held
            stop_a.set()
            await task_a
            took = await _until(lambda: b.held, 3, "b takes over")
            assert took < FAST["renew_s"] + 0.5, took


async def test_singletons_run_only_during_a_term(db: str) -> None:
    a = Leadership("a", **FAST)
    runs: list[str] = []

    @contextlib.asynccontextmanager
    async def singleton() -> AsyncIterator[None]:
        runs.append("start")
        try:
            yield
        finally:
            runs.append("stop")

    stop = asyncio.Event()
    group = asyncio.create_task(run_while_held(a, [singleton], stop))
    await asyncio.sleep(0.3)
    assert runs == []  # not held yet: nothing runs
    async with running(a) as (stop_a, task_a):
        await _until(lambda: runs == ["start"], 3, "started with the term")
        stop_a.set()
        await task_a
        await _until(lambda: runs == ["start", "stop"], 3, "stopped when the term ended")
    stop.set()
    await group


def _received(i: int) -> Received:
    topic = f"fleet/v1/t/K-{i % 3:03d}/status"
    return Received(topic, f'{{"n":{i}}}'.encode(), 1, False, False, i, 1000.0 + i, 1)


class ListSource:
    """Batches from a list; records what was acknowledged."""

    def __init__(self, batches: list[list[Received]]) -> None:
        self.batches = batches
        self.acked: list[int] = []

    async def batch(self, max_items: int = 500, linger_s: float = 0.0) -> list[Received]:
        if self.batches:
            return self.batches.pop(0)
        await asyncio.sleep(3600)
        return []

    def ack_many(self, msgs: list[Received]) -> int:
        self.acked += [m.mid for m in msgs]
        return len(msgs)


async def test_relays_file_and_the_inbox_hands_out_in_order_once(db: str) -> None:
    stop = asyncio.Event()
    retry = StorageRetry(stop)
    one = ListSource([[_received(i) for i in range(0, 5)], [_received(i) for i in range(10, 12)]])
    two = ListSource([[_received(i) for i in range(5, 10)]])
    tasks = [asyncio.create_task(Relay(retry, 100).run(s, stop)) for s in (one, two)]
    await _until(lambda: len(one.acked) + len(two.acked) == 12, 5, "all relayed")
    stop.set()
    await asyncio.gather(*tasks)

    source = InboxSource(StorageRetry(asyncio.Event()), poll_s=0.01)
    first = await source.batch(4)
    assert len(first) == 4
    # Not acknowledged: the next read hands out the same rows again (a leader that died).
    assert [m.mid for m in await InboxSource(retry).batch(4)] == [m.mid for m in first]
    source.ack_many(first)
    rest = await source.batch(100)
    assert len(rest) == 8
    assert {m.payload for m in first + rest} == {_received(i).payload for i in range(12)}
    assert rest[0].received_at >= 1000.0 and rest[0].topic.startswith("fleet/v1/t/K-")
    source.ack_many(rest)
    await source.flush()
    nothing = asyncio.create_task(source.batch(100))
    await asyncio.sleep(0.1)
    assert not nothing.done()  # an empty inbox: it waits
    nothing.cancel()


async def test_every_replica_sees_every_event(db: str) -> None:
    bus_a, bus_b = EventBus(), EventBus()
    seen_remote: list[str] = []
    bridges = [
        EventsBridge(bus_a, asyncpg_dsn(db), "a"),
        EventsBridge(bus_b, asyncpg_dsn(db), "b", on_remote=lambda k, d: seen_remote.append(k)),
    ]
    bus_a.forward, bus_b.forward = bridges[0].forward, bridges[1].forward
    stop = asyncio.Event()
    tasks = [asyncio.create_task(b.run(stop)) for b in bridges]
    try:
        await _until(lambda: all(b.connected for b in bridges), 5, "both listening")
        sub_a, sub_b = bus_a.subscribe(), bus_b.subscribe()
        bus_a.publish("alert", {"id": 1, "terminal": "K-001", "transition": "opened"})
        bus_b.publish("presence", {"terminal": "K-002", "online": False})
        got_a = [await sub_a.get(3), await sub_a.get(3)]
        got_b = [await sub_b.get(3), await sub_b.get(3)]
        for got in (got_a, got_b):
            assert sorted(e.kind for e in got if e is not None) == ["alert", "presence"]
        assert await sub_a.get(0.3) is None  # its own event is not delivered twice
        assert seen_remote == ["alert"]
        # Too big for NOTIFY: it stays on its replica, counted.
        bus_a.publish("status", {"terminal": "K-003", "pad": "x" * 9000})
        assert bridges[0].dropped == 1
    finally:
        stop.set()
        await asyncio.gather(*tasks)


async def test_the_rollout_lock_holds_across_replicas(db: str) -> None:
    """Two engines' locks (two replicas) on one key: one block at a time; a lock whose
    connection died is taken again on a new one."""
    a, b = ClusterLock(4242, asyncpg_dsn(db)), ClusterLock(4242, asyncpg_dsn(db))
    order: list[str] = []

    async def work(lock: ClusterLock, name: str, hold_s: float) -> None:
        async with lock:
            order.append(f"{name}+")
            await asyncio.sleep(hold_s)
            order.append(f"{name}-")

    first = asyncio.create_task(work(a, "a", 0.5))
    await asyncio.sleep(0.1)
    await work(b, "b", 0)
    await first
    assert order == ["a+", "a-", "b+", "b-"]
    assert a._conn is not None
    a._conn.terminate()  # its connection gone (a database restart)
    await work(a, "a", 0)
    await work(b, "b", 0)
    assert order[-4:] == ["a+", "a-", "b+", "b-"]
    await a.close()
    await b.close()
