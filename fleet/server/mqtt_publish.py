"""The server's MQTT publisher: desired-state documents (retained) and commands, QoS 1.

A paho v5 client on its own network thread, separate from the ingest's subscriber (which has its
own session and client id). `publish` waits for the broker's PUBACK: only then has the broker
taken the message (and, for a retained one, replaced the terminal's retained copy).

When the broker is down `publish` fails at once with `PublishError` instead of letting paho queue
the message for some later connection: the database stays the source of truth, and on every
(re)connection `on_connect` runs (the desired service republishes every terminal's latest document
then, so a copy lost with a broker's state comes back).

Thread-safety: paho calls back on its thread; every callback only hands over to the event loop
(`call_soon_threadsafe`), and the futures are settled there. paho calls `on_publish` holding its
own message lock, so taking any lock of ours in a callback could deadlock against `publish`.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode

log = logging.getLogger(__name__)


class PublishError(RuntimeError):
    """The broker did not take the message (not connected, refused, or no PUBACK in time)."""


@dataclass(frozen=True)
class PublisherConfig:
    host: str
    port: int
    username: str
    password: str
    #: Must differ from the ingest's client id, or the broker would drop one for the other.
    client_id: str = "fleet-server-pub"
    tls: bool = False
    ca_file: str | None = None
    keepalive_s: int = 30
    puback_timeout_s: float = 10.0
    reconnect_min_s: int = 1
    reconnect_max_s: int = 30


class Publisher:
    """`await start()`, then `await publish(topic, payload, retain=...)`; `await stop()`."""

    def __init__(
        self,
        config: PublisherConfig,
        on_connect: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.config = config
        self.on_connect = on_connect
        self._loop: asyncio.AbstractEventLoop | None = None
        self._client: mqtt.Client | None = None
        self._connected = asyncio.Event()
        self._waiting: dict[int, asyncio.Future[int]] = {}
        self._early: dict[int, int] = {}
        # Mids whose publish gave up waiting: their late PUBACK must not ack a later message.
        self._abandoned: set[int] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        #: Messages the broker acknowledged, for tests and logs.
        self.published = 0

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    async def start(self) -> None:
        """Start connecting in the background (paho retries with backoff until `stop`)."""
        self._loop = asyncio.get_running_loop()
        c = self.config
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=c.client_id, protocol=mqtt.MQTTv5
        )
        client.username_pw_set(c.username, c.password)
        if c.tls:
            client.tls_set(ca_certs=c.ca_file, cert_reqs=ssl.CERT_REQUIRED)
        client.reconnect_delay_set(c.reconnect_min_s, c.reconnect_max_s)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        self._client = client
        client.connect_async(c.host, c.port, keepalive=c.keepalive_s, clean_start=True)
        client.loop_start()

    async def wait_connected(self, timeout: float) -> None:
        await asyncio.wait_for(self._connected.wait(), timeout)

    async def stop(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            client.disconnect()
            await asyncio.to_thread(client.loop_stop)
        self._connected.clear()
        for task in list(self._tasks):
            task.cancel()
        self._fail_waiting("publisher stopped")

    async def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        """Publish with QoS 1 and wait for the PUBACK; raises PublishError."""
        client = self._client
        if client is None or not self.connected:
            raise PublishError("not connected to the broker")
        info = client.publish(topic, payload, qos=1, retain=retain)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            raise PublishError(f"publish failed: {mqtt.error_string(info.rc)}")
        # No await since publish(): an early PUBACK is still queued behind us on the loop.
        rc = self._early.pop(info.mid, None)
        if rc is None:
            assert self._loop is not None
            future: asyncio.Future[int] = self._loop.create_future()
            self._waiting[info.mid] = future
            try:
                rc = await asyncio.wait_for(future, self.config.puback_timeout_s)
            except TimeoutError:
                self._abandoned.add(info.mid)
                raise PublishError(f"no PUBACK for {topic} in time") from None
            finally:
                self._waiting.pop(info.mid, None)
        # 0 success, 0x10 "no matching subscribers": both mean the broker took it.
        if rc >= 0x80:
            raise PublishError(f"broker refused {topic}: reason code {rc:#x}")
        self.published += 1

    # -- paho's thread -> the loop -------------------------------------------------------------

    def _on_connect(self, _c: Any, _u: Any, _f: Any, rc: ReasonCode, _p: Any) -> None:
        if rc.is_failure:
            log.error("publisher: broker refused the connection: %s", rc)
            return
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self._connected_now)

    def _on_disconnect(self, _c: Any, _u: Any, _f: Any, rc: ReasonCode, _p: Any) -> None:
        assert self._loop is not None
        if self._loop.is_closed():
            return
        self._loop.call_soon_threadsafe(self._disconnected_now, str(rc))

    def _on_publish(self, _c: Any, _u: Any, mid: int, rc: ReasonCode, _p: Any) -> None:
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self._acked, mid, int(rc.value))

    # -- on the loop ---------------------------------------------------------------------------

    def _connected_now(self) -> None:
        log.info("publisher connected to %s:%d", self.config.host, self.config.port)
        self._connected.set()
        if self.on_connect is not None:
            task = asyncio.ensure_future(self._run_on_connect(self.on_connect))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    @staticmethod
    async def _run_on_connect(hook: Callable[[], Awaitable[None]]) -> None:
        try:
            await hook()
        except Exception:
            log.exception("publisher: the on-connect hook failed")

    def _disconnected_now(self, reason: str) -> None:
        if self._connected.is_set():
            log.warning("publisher lost the broker (%s); reconnecting", reason)
        self._connected.clear()
        self._fail_waiting(f"connection lost ({reason})")

    def _acked(self, mid: int, rc: int) -> None:
        if mid in self._abandoned:
            self._abandoned.discard(mid)
            return
        future = self._waiting.pop(mid, None)
        if future is None:
            self._early[mid] = rc
        elif not future.done():
            future.set_result(rc)

    def _fail_waiting(self, why: str) -> None:
        waiting, self._waiting = self._waiting, {}
        self._early.clear()
        self._abandoned.clear()
        for future in waiting.values():
            if not future.done():
                future.set_exception(PublishError(why))
