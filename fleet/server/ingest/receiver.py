"""The ingest's MQTT side: an MQTT 5 subscriber on the event loop (mqtt_wire.py) feeding the
pipeline.

Session
- Fixed client id (one per replica), `clean_start=False` and a session expiry, so the broker
  keeps our subscriptions and queues QoS 1 messages while the server restarts.
- Subscriptions (QoS 1) to fleet/v1/t/+/{presence,status,event,reported,cmd/result} are made in
  on every connection, so they hold even when the broker lost the session. With
  `shared=True` they go through `$share/{group}/...` and the broker hands each message to one
  replica of the group. Retain handling 1: retained presence is sent only when a subscription is
  new -- a reconnect to a live session does not replay every terminal's presence. (Mosquitto
  2.0.11 does send retained messages on a new *shared* subscription, to the member subscribing:
  each replica then gets every retained presence once -- harmless, presence is idempotent.)
- Reconnect: with exponential backoff between `reconnect_min_s` and `reconnect_max_s`, also
  when the first connection fails or the broker refuses it. Keepalive: a PINGREQ when nothing was
  sent for half the keepalive; no packet from the broker for 1.5 keepalives closes the link.

Losing nothing (manual acknowledgement)
- No PUBACK goes out on receipt: the consumer calls `Receiver.ack(msg)` once the message is
  stored. A server killed between receipt and storage never acknowledged it, so the broker
  redelivers it (DUP set) on the next connection of the same session; duplicates are then
  dropped by (terminal, seq) downstream.
- An ack must go out on the connection that delivered the message: packet ids are per
  connection, and after a reconnect the same mid may name a different message. Each message
  carries the number of the connection it came on; `ack()` of a message from an earlier
  connection is skipped (the broker redelivers it anyway) and returns False.
- A consumer that stores in batches must flush a batch before it holds Receive Maximum unacked
  messages (or whenever `batch()` finds the queue drained): the broker sends nothing more until
  some are acked, so a batch waiting on a timer for more would stall the flow.
- Every message must be acked once handled -- stored, dead-lettered, or dropped as a duplicate
  -- or the flow stops at Receive Maximum unacked messages.
- PUBACKs should leave in the order the PUBLISHes came (MQTT 5 section 4.6); the consumer acks in
  the order it took messages, which `batch()` makes natural.

Backpressure, never dropping
- The CONNECT carries Receive Maximum = `receive_maximum`: the broker sends at most that many
  unacknowledged QoS 1 messages and holds the rest in the session queue. A slow consumer that
  has not acked simply stops the flow; nothing is dropped *here*. (The broker itself must not
  drop what it queues: Mosquitto's `max_queued_messages` (default 1000) must be 0 or large for
  the server's client -- see fleet/server/broker_config.py.) Measured on Mosquitto 2.0.11: a v5
  client's Receive Maximum overrides the broker's `max_inflight_messages` (broker 100, client
  1000: 1000 unacked messages delivered; client 10: exactly 10).
- The hand-over queue is therefore bounded by Receive Maximum plus what an earlier connection
  left unacked. As a last guard (QoS 0 messages are not flow controlled) reading from the socket
  pauses while `max_queue` items are waiting: TCP backpressure, still no drop.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import random
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass

from fleet.server.ingest import mqtt_wire as wire
from fleet.server.ingest.validate import KINDS, TOPIC_PREFIX

log = logging.getLogger(__name__)

#: CONNACK reason codes worth a clear log line (MQTT 5 3.2.2.2).
_REFUSALS = {
    0x84: "unsupported protocol version",
    0x85: "client identifier not valid",
    0x86: "bad user name or password",
    0x87: "not authorized",
    0x88: "server unavailable",
    0x89: "server busy",
    0x8A: "banned",
}


def subscriptions(shared: bool = False, group: str = "fleet") -> list[str]:
    """The topic filters of the ingest, plain or as one shared-subscription group."""
    filters = [f"{TOPIC_PREFIX}+/{kind}" for kind in KINDS]
    return [f"$share/{group}/{f}" for f in filters] if shared else filters


@dataclass(frozen=True, slots=True)
class ReceiverConfig:
    host: str
    port: int
    username: str
    password: str
    #: Fixed, and distinct per replica: the broker keeps the session under this id.
    client_id: str = "fleet-server"
    shared: bool = False
    group: str = "fleet"
    #: A topic of this receiver's own (replicas: the lease holder asks a replica that cannot
    #: store to leave the group); its messages go to `on_control`, not to the consumer.
    control_topic: str | None = None
    #: How long the broker keeps the session (and queues for us) while we are away.
    session_expiry_s: int = 7 * 24 * 3600
    keepalive_s: int = 30
    receive_maximum: int = 1000
    #: Hard bound of the hand-over queue (see the module docstring).
    max_queue: int = 10_000
    reconnect_min_s: float = 1
    reconnect_max_s: float = 30
    tls: bool = False
    ca_file: str | None = None


@dataclass(frozen=True, slots=True)
class Received:
    topic: str
    payload: bytes
    qos: int
    retain: bool
    dup: bool
    mid: int
    #: time.time() when it was decoded: the start of the ingest lag.
    received_at: float
    #: Which connection delivered it (acks are only valid on that one).
    connection: int
    #: Why the receiver could not take it as a message ("reason: detail"); the pipeline
    #: dead-letters it and acknowledges it like any refused message, so it never comes back.
    refused: str | None = None


class _Link(asyncio.Protocol):
    """One TCP connection: decodes packets and hands them to the receiver."""

    def __init__(self, owner: Receiver, number: int) -> None:
        self.owner = owner
        self.number = number
        self.transport: asyncio.Transport | None = None
        self.decoder = wire.Decoder()
        self.closed = asyncio.get_running_loop().create_future()
        self.last_in = self.last_out = time.monotonic()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.last_in = time.monotonic()
        try:
            packets = self.decoder.feed(data)
        except wire.ProtocolError as e:
            log.error("ingest: broker sent a malformed packet (%s); reconnecting", e)
            self.abort()
            return
        self.owner._packets(self, packets)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(exc)

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)
            self.last_out = time.monotonic()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()


class Receiver:
    """Start with `await start()`; take messages with `get()`, `batch()` or `async for`.

    `on_link(True)` is called (on the event loop) when a connection has subscribed, and
    `on_link(False)` when that connection ends: the consumer then knows when it can hear the
    terminals (presence timeouts wait for it).
    """

    def __init__(
        self,
        config: ReceiverConfig,
        on_link: Callable[[bool], None] | None = None,
        on_control: Callable[[bytes], None] | None = None,
    ) -> None:
        self.config = config
        self.on_link = on_link
        self.on_control = on_control
        self._linked = False
        self._items: collections.deque[Received] = collections.deque()
        self._ready = asyncio.Event()
        self._connected = asyncio.Event()
        self._link: _Link | None = None
        self._live = False
        self._connection = 0
        self._paused = False
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        #: The number of the connection whose SUBACK came (a connection that got that far).
        self._subscribed_on = 0
        self._unsubscribed = asyncio.Event()
        #: Out of the group since `leave` (until `rejoin`), across reconnections.
        self.left = False
        #: Counters, for metrics and tests.
        self.connects = 0
        self.acks_skipped = 0

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="ingest-mqtt")

    async def wait_connected(self, timeout: float | None = None) -> None:
        await asyncio.wait_for(self._connected.wait(), timeout)

    @property
    def connected(self) -> bool:
        return self._live

    def rejoin(self) -> None:
        """Subscribe to the terminals' topics again after `leave` (they hold until the next
        connection anyway, which subscribes as every connection does)."""
        self.left = False
        link = self._link
        if link is not None and self._live:
            link.write(
                wire.subscribe(
                    3,
                    subscriptions(self.config.shared, self.config.group),
                    qos=1,
                    retain_handling=wire.RETAIN_SEND_IF_NEW_SUB,
                )
            )

    async def leave(self, timeout: float = 10.0) -> None:
        """Unsubscribe: the broker routes nothing new to this session, and still delivers what it
        had queued for it (retiring a replica: ingest/retire.py)."""
        link = self._link
        if link is None or not self._live:
            raise ConnectionError("not connected to the broker")
        self.left = True
        self._unsubscribed.clear()
        link.write(wire.unsubscribe(2, subscriptions(self.config.shared, self.config.group)))
        await asyncio.wait_for(self._unsubscribed.wait(), timeout)

    async def stop(self, end_session: bool = False) -> None:
        """Disconnect normally: the session (and anything unacknowledged) stays on the broker,
        unless `end_session` (then the broker discards it: only once nothing is left in it)."""
        self._closing = True
        link = self._link
        if link is not None and link.transport is not None:
            link.write(wire.DISCONNECT_END_SESSION if end_session else wire.DISCONNECT_NORMAL)
            link.transport.close()  # after the buffered DISCONNECT is written
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(link.closed), 2)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self._live = False
        self._connected.clear()

    def drop_connection(self) -> None:
        """Cut the TCP connection without DISCONNECT, as a network failure would (tests)."""
        if self._link is not None:
            self._link.abort()

    async def _run(self) -> None:
        delay = self.config.reconnect_min_s
        while not self._closing:
            try:
                established = await self._session()
            except (OSError, TimeoutError, ssl.SSLError) as e:
                log.warning("ingest cannot reach the broker: %s", e)
                established = False
            finally:
                self._live = False
                self._connected.clear()
                self._link = None
                self._set_linked(False)
            if self._closing:
                return
            delay = self.config.reconnect_min_s if established else delay
            await asyncio.sleep(delay * random.uniform(0.8, 1.2))
            delay = min(delay * 2, self.config.reconnect_max_s)

    async def _session(self) -> bool:
        """One connection, until it ends; True when it got as far as subscribing."""
        cfg = self.config
        loop = asyncio.get_running_loop()
        context = ssl.create_default_context(cafile=cfg.ca_file) if cfg.tls else None
        number = self._connection + 1
        _, link = await asyncio.wait_for(
            loop.create_connection(lambda: _Link(self, number), cfg.host, cfg.port, ssl=context),
            timeout=10,
        )
        self._connection = number
        self._link = link
        self._paused = False
        link.write(
            wire.connect(
                cfg.client_id,
                cfg.username,
                cfg.password,
                cfg.keepalive_s,
                clean_start=False,
                session_expiry_s=cfg.session_expiry_s,
                receive_maximum=cfg.receive_maximum,
            )
        )
        try:
            await self._keepalive(link)
        finally:
            link.abort()
        return self._subscribed_on == number

    async def _keepalive(self, link: _Link) -> None:
        keepalive = self.config.keepalive_s
        while not link.closed.done():
            now = time.monotonic()
            if now - link.last_in > 1.5 * keepalive:
                log.warning("ingest: broker silent for %.0f s; reconnecting", now - link.last_in)
                return
            if now - link.last_out >= keepalive / 2:
                link.write(wire.PINGREQ_PACKET)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(link.closed), min(1.0, keepalive / 4))
        exc = link.closed.result()
        if not self._closing:
            log.warning("ingest connection lost: %s; reconnecting", exc or "closed by the broker")

    # -- packets (the event loop, from _Link.data_received) ---------------------------------

    def _packets(
        self, link: _Link, packets: list[wire.Publish | wire.BadPublish | wire.Packet]
    ) -> None:
        items = self._items
        now = time.time()
        number = link.number
        for p in packets:
            if type(p) is wire.Publish:
                try:
                    topic = p.topic.decode()
                except UnicodeDecodeError:
                    # MQTT forbids it; it can never become valid: dead-lettered and acked.
                    items.append(
                        Received(
                            p.topic.decode(errors="replace"), p.payload, p.qos, p.retain,
                            p.dup, p.packet_id, now, number, refused="bad_topic: not UTF-8",
                        )
                    )  # fmt: skip
                    continue
                if topic == self.config.control_topic:
                    self._control_message(link, p)
                    continue
                items.append(
                    Received(topic, p.payload, p.qos, p.retain, p.dup, p.packet_id, now, number)
                )
            elif type(p) is wire.BadPublish:
                log.warning("broker sent a malformed PUBLISH (%s); dead-lettering it", p.problem)
                items.append(
                    Received(
                        p.topic.decode(errors="replace"), b"", p.qos, False, False, p.packet_id,
                        now, number, refused=f"bad_packet: {p.problem}",
                    )
                )  # fmt: skip
            else:
                assert isinstance(p, wire.Packet)
                self._control(link, p)
        if items:
            self._ready.set()
            if len(items) >= self.config.max_queue and link.transport is not None:
                link.transport.pause_reading()
                self._paused = True

    def _control_message(self, link: _Link, p: wire.Publish) -> None:
        """A message to this replica itself (`control_topic`): acknowledged at once, handed to
        `on_control`, never queued with the terminals' messages."""
        if p.qos:
            link.write(wire.puback(p.packet_id))
        if self.on_control is not None:
            self.on_control(p.payload)

    def _control(self, link: _Link, p: wire.Packet) -> None:
        cfg = self.config
        if p.type == wire.CONNACK:
            session_present, reason = wire.connack(p.body)
            if reason >= 0x80:
                log.error(
                    "broker refused the ingest connection: %s",
                    _REFUSALS.get(reason, f"reason 0x{reason:02x}"),
                )
                link.abort()
                return
            self._live = True
            self.connects += 1
            log.info("ingest connected as %s (session present: %s)", cfg.client_id, session_present)
            # After `leave` every connection keeps out of the group until `rejoin`.
            filters = [] if self.left else subscriptions(cfg.shared, cfg.group)
            if cfg.control_topic is not None:
                filters.append(cfg.control_topic)
            if not filters:  # out of the group, nothing of our own: ready as it is
                self._subscribed(link)
                return
            link.write(
                wire.subscribe(1, filters, qos=1, retain_handling=wire.RETAIN_SEND_IF_NEW_SUB)
            )
        elif p.type == wire.SUBACK:
            bad = [r for r in wire.suback_reasons(p.body) if r >= 0x80]
            if bad:
                log.error("ingest subscriptions refused: %s", ", ".join(f"0x{r:02x}" for r in bad))
            self._subscribed(link)
        elif p.type == wire.UNSUBACK:
            self._unsubscribed.set()
        elif p.type == wire.DISCONNECT:
            reason = p.body[0] if p.body else 0
            log.warning("broker disconnected the ingest (reason 0x%02x)", reason)
        # PINGRESP: last_in is already updated; PUBACK never comes (we do not publish).

    def _subscribed(self, link: _Link) -> None:
        self._subscribed_on = link.number
        self._connected.set()
        self._set_linked(True)

    def _set_linked(self, linked: bool) -> None:
        if linked != self._linked:
            self._linked = linked
            if self.on_link is not None:
                self.on_link(linked)

    # -- the consumer's side ----------------------------------------------------------------

    async def batch(self, max_items: int = 500, linger_s: float = 0.002) -> list[Received]:
        """Wait for at least one message; return up to `max_items`, oldest first.

        When fewer than `max_items` are waiting, wait `linger_s` once for more: a couple of
        milliseconds of latency buys batches of hundreds at load, and the pipeline's cost per
        batch (one DB transaction) is then shared.
        """
        lingered = linger_s <= 0
        items = self._items
        while True:
            n = len(items)
            if n and (n >= max_items or lingered):
                out = [items.popleft() for _ in range(min(n, max_items))]
                if not items:
                    self._ready.clear()
                self._resume()
                return out
            if n:
                lingered = True
                await asyncio.sleep(linger_s)
            else:
                self._ready.clear()
                await self._ready.wait()

    def _resume(self) -> None:
        if self._paused and len(self._items) < self.config.max_queue:
            self._paused = False
            link = self._link
            if link is not None and link.transport is not None and not link.transport.is_closing():
                link.transport.resume_reading()

    async def get(self) -> Received:
        return (await self.batch(1, linger_s=0))[0]

    def __aiter__(self) -> Receiver:
        return self

    async def __anext__(self) -> Received:
        return await self.get()

    def pending(self) -> int:
        """Messages received and not yet taken by the consumer."""
        return len(self._items)

    def ack(self, msg: Received) -> bool:
        """Acknowledge a stored message. False when its connection is gone (it will come again)."""
        if msg.qos == 0:
            return True
        link = self._link
        if link is None or not self._live or msg.connection != link.number:
            self.acks_skipped += 1
            return False
        link.write(wire.puback(msg.mid))
        return True

    def ack_many(self, msgs: list[Received]) -> int:
        """Acknowledge in order, in one write; returns how many went out."""
        link = self._link
        if link is None or not self._live:
            self.acks_skipped += sum(1 for m in msgs if m.qos)
            return sum(1 for m in msgs if not m.qos)
        number = link.number
        out = bytearray()
        sent = 0
        for m in msgs:
            if not m.qos:
                sent += 1
            elif m.connection == number:
                out += wire.puback(m.mid)
                sent += 1
            else:
                self.acks_skipped += 1
        if out:
            link.write(bytes(out))
        return sent
