"""The terminal's MQTT v5 connection: presence, Last Will, subscriptions, and draining the outbox.

One thread owns the paho client and runs its network loop through paho's external-loop API
(`socket()`, `loop_read/write/misc`), selecting also on a wake-up pipe so a new outbox row goes out
at once without polling. Every paho call and callback therefore happens on this one thread.

- Session: fixed client id (the terminal id), `clean_start=False` and a session expiry, so the
  broker keeps our subscriptions and queues `cmd` messages while we are away.
- Presence: a Last Will `online:false` (retained, QoS 1) set before every connection attempt, and
  a retained `online:true` published on every CONNACK; a clean shutdown publishes `online:false`
  itself and then disconnects normally (which discards the Will).
- Subscriptions are (re)made in on_connect, so they hold even when the broker lost our session.
- Reconnect: capped exponential backoff with jitter (agent.backoff), reset on a successful CONNACK.
- Outbox: rows are published in id order with at most `inflight_max` awaiting PUBACK (also capped
  by the broker's Receive Maximum). A row is deleted when its PUBACK arrives. Each connection
  uses a fresh paho client and starts again from the oldest row still in the outbox, exactly as
  after a process restart: one path for both, and paho never re-sends on its own a message we
  have since decided to drop. Delivery is at least once: the server drops duplicates by `seq`.
- PUBACK failures are not success. A refusal that can never succeed (135 not authorised, topic
  name invalid, packet too large, payload format invalid) drops the row, counted as `rejected`
  in the outbox and logged -- retrying would block the queue forever. Any other failure code
  (quota exceeded, unspecified error) keeps the row and re-sends from the oldest queued row after
  a backoff, at most `MAX_TRANSIENT_TRIES` times per row, then drops it as rejected too.
- Mosquitto 2.0 closes the connection right after a PUBACK 135, and if more of our packets are
  still unread it resets it, which discards the PUBACK before we can read it: the refusal would
  look like a network error, and the same message would go again on every reconnect. Hence:
  * each connection starts with presence alone and waits for its PUBACK before subscribing and
    sending rows, and then sends rows with a window that starts at 1 and doubles with each
    success ("slow start"), so a refused message is the last thing on the wire and its 135 is
    seen;
  * a refused topic is remembered for `REFUSAL_HOLD_S`: rows for it are dropped (counted as
    rejected) without being sent, and a refused presence is not re-published on connect --
    otherwise a terminal whose id does not match its credentials would reconnect for ever
    without getting to its queue. After the hold one message probes again, in case the
    broker's ACL was fixed meanwhile.
- Incoming messages are routed by topic suffix: `desired` to `on_desired(payload)`, `cmd` to
  `on_cmd(payload)` (other suffixes to `handlers`). Callbacks run on this thread, so they must
  only hand the payload over (agent.desired.apply queues it to its own worker).
- Messages that are answers rather than reports (`reported`, `cmd/result`) do not go through the
  outbox: `publish(kind, payload)` queues them in memory, and they go QoS 1 ahead of outbox rows
  when connected, within the same window. Of `reported` only the latest queued one is kept: it
  is a state, not a history. One sent but not acknowledged when the connection drops is sent
  again on the next one. `on_ready()` is called on every connection once traffic may flow, so
  the caller can say its current state.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import select
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from agent import report
from agent.backoff import Backoff
from agent.config import BrokerConfig
from agent.outbox import Outbox, Row

log = logging.getLogger(__name__)

#: PUBACK reason codes that will never turn into success by sending the same message again.
PERMANENT_REFUSALS = frozenset({0x87, 0x90, 0x95, 0x99})
MAX_TRANSIENT_TRIES = 5
#: How long a refused topic is not sent to again (see the module docstring).
REFUSAL_HOLD_S = 300.0
#: Subscriptions the agent makes; handlers for them are plugged in by later features.
SUBSCRIBED = ("desired", "cmd")

#: Kinds of `publish` for which a newer queued message replaces an older one.
LATEST_ONLY = frozenset({"reported"})
#: At most this many `publish` messages wait for a connection; the oldest go first.
MAX_DIRECT_QUEUED = 100

Handler = Callable[[str, bytes], None]


class MqttLink:
    def __init__(
        self,
        *,
        terminal_id: str,
        broker: BrokerConfig,
        outbox: Outbox,
        agent_version: str,
        handlers: Mapping[str, Handler] | None = None,
        on_desired: Callable[[bytes], None] | None = None,
        on_cmd: Callable[[bytes], None] | None = None,
        on_ready: Callable[[], None] | None = None,
        on_status_acked: Callable[[], None] | None = None,
    ) -> None:
        self.terminal_id = terminal_id
        self.broker = broker
        self.outbox = outbox
        self.agent_version = agent_version
        self.handlers = dict(handlers or {})
        if on_desired is not None:
            self.handlers["desired"] = lambda topic, payload: on_desired(payload)
        if on_cmd is not None:
            self.handlers["cmd"] = lambda topic, payload: on_cmd(payload)
        self.on_ready = on_ready
        #: Called (on the link's thread) when the broker acknowledged a status report.
        self.on_status_acked = on_status_acked
        self._direct_lock = threading.Lock()
        #: (kind, payload) waiting to be published; and those awaiting PUBACK, by mid.
        self._direct: deque[tuple[str, bytes]] = deque()
        self._direct_inflight: dict[int, tuple[str, bytes]] = {}
        self.backoff = Backoff(broker.reconnect_min_s, broker.reconnect_max_s)
        self.connected = False
        self._presence_topic = report.topic(terminal_id, "presence")
        self._window = broker.inflight_max
        #: The slow-start window of the current connection (grows to `_window`).
        self._cwnd = 1
        #: True once presence is acknowledged on this connection: rows may go.
        self._ready = False
        self._inflight: dict[int, Row] = {}
        self._last_sent_id = 0
        self._acks: list[tuple[Row, ReasonCode]] = []
        self._tries: dict[int, int] = {}
        self._rewind_at: float | None = None
        self._refused: dict[str, float] = {}
        self._presence_mid: int | None = None
        self._presence_acked = threading.Event()
        self._next_attempt = 0.0
        self._stop = threading.Event()
        self._flush_deadline = 0.0
        self._wake_lock = threading.Lock()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._client: mqtt.Client | None = None
        self._thread = threading.Thread(target=self._run, name="mqtt-link", daemon=True)

    # -- public, any thread --------------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def wake(self) -> None:
        """New rows are in the outbox: send them now rather than at the next loop timeout."""
        # The lock keeps a late wake-up from writing to a closed (and maybe reused) fd number.
        with self._wake_lock, contextlib.suppress(BlockingIOError):
            if self._wake_w >= 0:
                os.write(self._wake_w, b"w")  # BlockingIOError: one is already pending

    def publish(self, kind: str, payload: bytes) -> None:
        """Queue a non-outbox message for `fleet/v1/t/{id}/{kind}` (any thread), QoS 1."""
        with self._direct_lock:
            if kind in LATEST_ONLY:
                self._direct = deque(m for m in self._direct if m[0] != kind)
            self._direct.append((kind, payload))
            while len(self._direct) > MAX_DIRECT_QUEUED:
                dropped = self._direct.popleft()
                log.warning("dropped an unsent %s message: too many queued", dropped[0])
        self.wake()

    def stop(self, flush_s: float) -> None:
        """Flush for at most `flush_s`, say goodbye (presence offline), disconnect, join."""
        self._flush_deadline = time.monotonic() + flush_s
        self._stop.set()
        self.wake()
        if self._thread.is_alive():
            self._thread.join(flush_s + 5.0)
        if self._thread.is_alive():
            log.error("MQTT link did not stop in time")
            return
        with self._wake_lock:
            for fd in (self._wake_r, self._wake_w):
                with contextlib.suppress(OSError):
                    os.close(fd)
            self._wake_r = self._wake_w = -1

    # -- set-up --------------------------------------------------------------------------------

    def _make_client(self) -> mqtt.Client:
        c = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=self.terminal_id,
            protocol=MQTTProtocolVersion.MQTTv5,
        )
        c.enable_logger(logging.getLogger("agent.paho"))
        c.username_pw_set(self.broker.username, self.broker.password)
        if self.broker.tls:
            # Certificate and host name are verified; the system CAs are used unless a CA file
            # (a private fleet CA) is configured.
            c.tls_set(ca_certs=str(self.broker.ca_file) if self.broker.ca_file else None)
        # We bound the window ourselves; paho must never park a message in its own queue.
        c.max_inflight_messages_set(0)
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_publish = self._on_publish
        c.on_message = self._on_message
        # The Will is fixed at CONNECT time, so its ts is that of the connection it guards.
        c.will_set(self._presence_topic, self._presence(False, "will"), qos=1, retain=True)
        return c

    def _presence(self, online: bool, reason: str | None = None) -> bytes:
        payload = report.presence(online, self.agent_version, reason=reason)
        return json.dumps(payload, separators=(",", ":")).encode()

    # -- the loop ------------------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._step()
            except Exception:
                # A bug here must not end reporting for months: log it, drop the connection and
                # start over after a backoff. The outbox still holds everything.
                log.exception("MQTT link error; reconnecting")
                self._drop_connection()
        try:
            self._shutdown()
        except Exception:
            log.exception("MQTT link shutdown failed")

    def _step(self) -> None:
        if self._client is None or self._client.socket() is None:
            self.connected = False
            wait = self._next_attempt - time.monotonic()
            if wait > 0:
                self._sleep(wait)
                return
            self._connect()
            return
        self._io(1.0)
        self._settle()
        self._pump()

    def _connect(self) -> None:
        self._settle()  # PUBACKs that arrived before the old connection dropped still count
        self._inflight.clear()
        self._requeue_direct()
        self._last_sent_id = 0
        self._rewind_at = None
        self._client = self._make_client()
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = self.broker.session_expiry_s
        try:
            self._client.connect(
                self.broker.host,
                self.broker.port,
                keepalive=self.broker.keepalive_s,
                clean_start=False,
                properties=props,
            )
        except (OSError, ValueError) as e:
            self._schedule_retry(f"cannot connect to {self.broker.url}: {e}")

    def _schedule_retry(self, why: str) -> None:
        delay = self.backoff.next()
        self._next_attempt = time.monotonic() + delay
        log.warning("%s; retrying in %.1f s", why, delay)

    def _sleep(self, seconds: float) -> None:
        """Wait, but return early when woken (a stop request, or new rows to send)."""
        select.select([self._wake_r], [], [], seconds)
        self._drain_wake()

    def _drain_wake(self) -> None:
        try:
            while os.read(self._wake_r, 512):
                pass
        except (BlockingIOError, OSError):
            pass

    def _io(self, timeout: float) -> None:
        c = self._client
        sock = c.socket() if c is not None else None
        if c is None or sock is None:
            self._sleep(timeout)
            return
        # TLS may hold decrypted bytes that select() cannot see.
        pending = sock.pending() if hasattr(sock, "pending") else 0
        fd = sock.fileno()
        wlist = [fd] if c.want_write() else []
        readable, writable, _ = select.select(
            [fd, self._wake_r], wlist, [], 0.0 if pending else timeout
        )
        if self._wake_r in readable:
            self._drain_wake()
        if fd in readable or pending:
            c.loop_read()
        if writable and c.socket() is not None:
            c.loop_write()
        if c.socket() is not None:
            c.loop_misc()

    def _drop_connection(self) -> None:
        sock = self._client.socket() if self._client is not None else None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.close()
        self._client = None  # the next connection gets a fresh client
        self.connected = False
        self._schedule_retry("connection dropped after an error")

    # -- paho callbacks (on this thread) -------------------------------------------------------

    def _on_connect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.ConnectFlags,
        reason: ReasonCode,
        props: Properties | None,
    ) -> None:
        if reason.is_failure:
            # paho closes the socket and calls on_disconnect, which schedules the retry.
            log.error("broker %s refused the connection: %s", self.broker.url, reason)
            return
        self.backoff.reset()
        self.connected = True
        receive_max = getattr(props, "ReceiveMaximum", None) if props else None
        self._window = self.broker.inflight_max
        if isinstance(receive_max, int) and receive_max > 1:
            self._window = min(self._window, receive_max - 1)  # one slot for presence
        log.info(
            "connected to %s as %s (session present: %s)",
            self.broker.url,
            self.terminal_id,
            flags.session_present,
        )
        self._cwnd = 1
        self._ready = False
        if self._is_refused(self._presence_topic):
            log.warning("not publishing presence: the broker refused it (wrong terminal id?)")
            self._open_for_traffic(client)
        else:
            # Alone on the wire until acknowledged (see the module docstring).
            info = client.publish(self._presence_topic, self._presence(True), qos=1, retain=True)
            self._presence_mid = info.mid

    def _open_for_traffic(self, client: mqtt.Client) -> None:
        client.subscribe(
            [(report.topic(self.terminal_id, k), SubscribeOptions(qos=1)) for k in SUBSCRIBED]
        )
        self._ready = True
        if self.on_ready is not None:
            try:
                self.on_ready()
            except Exception:
                log.exception("on_ready failed")

    def _on_disconnect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.DisconnectFlags,
        reason: ReasonCode,
        props: Properties | None,
    ) -> None:
        was = self.connected
        self.connected = False
        if self._stop.is_set():
            return
        self._schedule_retry(
            f"{'connection to ' + self.broker.url + ' lost' if was else 'not connected'}: {reason}"
        )

    def _on_publish(
        self,
        client: mqtt.Client,
        userdata: Any,
        mid: int,
        reason: ReasonCode,
        props: Properties | None,
    ) -> None:
        if mid == self._presence_mid:
            self._presence_mid = None
            if reason.is_failure:
                log.error("broker refused our presence message: %s", reason)
                if reason.value in PERMANENT_REFUSALS:
                    self._refused[self._presence_topic] = time.monotonic()
            self._presence_acked.set()
            if not self._ready and not self._stop.is_set():
                self._open_for_traffic(client)
            return
        direct = self._direct_inflight.pop(mid, None)
        if direct is not None:
            topic = report.topic(self.terminal_id, direct[0])
            if reason.is_failure:
                log.error("broker refused %s message: %s; dropped", direct[0], reason)
                if reason.value in PERMANENT_REFUSALS:
                    self._refused[topic] = time.monotonic()
            else:
                self._cwnd = min(self._window, self._cwnd * 2)
            return
        row = self._inflight.pop(mid, None)
        if row is not None:
            self._acks.append((row, reason))
            if not reason.is_failure:
                self._cwnd = min(self._window, self._cwnd * 2)

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        kind = msg.topic.rsplit("/", 1)[-1]
        handler = self.handlers.get(kind)
        if handler is None:
            log.info("received %s (%d bytes); no handler yet, ignored", msg.topic, len(msg.payload))
            return
        try:
            handler(msg.topic, bytes(msg.payload))
        except Exception:
            log.exception("handler for %s failed", msg.topic)

    # -- the outbox ----------------------------------------------------------------------------

    def _settle(self) -> None:
        """Apply the PUBACKs received: delete acknowledged rows, count or retry refused ones."""
        if not self._acks:
            return
        acks, self._acks = self._acks, []
        ok: list[int] = []
        refused: list[int] = []
        for row, reason in acks:
            if not reason.is_failure:
                ok.append(row.id)
                self._tries.pop(row.id, None)
                continue
            tries = self._tries.get(row.id, 0) + 1
            if reason.value in PERMANENT_REFUSALS or tries >= MAX_TRANSIENT_TRIES:
                log.error(
                    "broker refused %s seq=%s on %s: %s; dropped (counted as rejected)",
                    row.kind,
                    row.seq,
                    row.topic,
                    reason,
                )
                refused.append(row.id)
                self._tries.pop(row.id, None)
                if reason.value in PERMANENT_REFUSALS:
                    self._refused[row.topic] = time.monotonic()
            else:
                self._tries[row.id] = tries
                delay = self.backoff.next()
                log.warning(
                    "broker refused %s seq=%s for now: %s; resending in %.1f s",
                    row.kind,
                    row.seq,
                    reason,
                    delay,
                )
                self._rewind_at = time.monotonic() + delay
        self.outbox.ack(ok)
        self.outbox.reject(refused)
        if self.on_status_acked is not None and any(
            row.kind == "status" and not reason.is_failure for row, reason in acks
        ):
            try:
                self.on_status_acked()
            except Exception:  # a hook must not stop the link
                log.exception("on_status_acked failed")

    def _pump(self) -> None:
        c = self._client
        if not self.connected or not self._ready or c is None or c.socket() is None:
            return
        if self._rewind_at is not None:
            # Let the window drain, wait the delay, then go again from the oldest queued row,
            # which is the one the broker refused for now.
            if self._inflight or time.monotonic() < self._rewind_at:
                return
            self._rewind_at = None
            self._last_sent_id = 0
        if not self._pump_direct(c):
            return
        free = min(self._cwnd, self._window) - len(self._inflight) - len(self._direct_inflight)
        held: list[Row] = []
        try:
            while free > 0:
                rows = self.outbox.peek(self._last_sent_id, 100)
                if not rows:
                    return
                for row in rows:
                    if self._is_refused(row.topic):
                        held.append(row)
                        self._last_sent_id = row.id
                        continue
                    if free <= 0:
                        return
                    info = c.publish(row.topic, row.payload, qos=row.qos, retain=row.retain)
                    if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                        # The connection just went; the next one starts again from the outbox.
                        log.debug("publish of seq=%s not sent: %s", row.seq, info.rc)
                        return
                    self._inflight[info.mid] = row
                    self._last_sent_id = row.id
                    free -= 1
        finally:
            if held:
                log.error(
                    "dropped %d messages for %s without sending: the broker refused that topic"
                    " (counted as rejected)",
                    len(held),
                    ", ".join(sorted({r.topic for r in held})),
                )
                self.outbox.reject(r.id for r in held)

    def _pump_direct(self, c: mqtt.Client) -> bool:
        """Send queued `publish` messages within the window; False if the connection went."""
        while True:
            if len(self._inflight) + len(self._direct_inflight) >= min(self._cwnd, self._window):
                return True
            with self._direct_lock:
                if not self._direct:
                    return True
                kind, payload = self._direct.popleft()
            topic = report.topic(self.terminal_id, kind)
            if self._is_refused(topic):
                log.error("dropped a %s message without sending: the broker refused it", kind)
                continue
            info = c.publish(topic, payload, qos=1)
            if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                with self._direct_lock:
                    self._direct.appendleft((kind, payload))
                return False
            self._direct_inflight[info.mid] = (kind, payload)

    def _requeue_direct(self) -> None:
        """Messages sent on a lost connection without a PUBACK go again, before newer ones."""
        if not self._direct_inflight:
            return
        unacked = [self._direct_inflight[mid] for mid in sorted(self._direct_inflight)]
        self._direct_inflight.clear()
        with self._direct_lock:
            queued = {k for k, _ in self._direct if k in LATEST_ONLY}
            for kind, payload in reversed(unacked):
                if kind in queued:
                    continue  # a newer one of a latest-only kind is already waiting
                self._direct.appendleft((kind, payload))
                if kind in LATEST_ONLY:
                    queued.add(kind)

    def _is_refused(self, topic: str) -> bool:
        since = self._refused.get(topic)
        if since is None:
            return False
        if time.monotonic() - since >= REFUSAL_HOLD_S:
            del self._refused[topic]  # probe once more: the ACL may have been fixed
            return False
        return True

    # -- shutdown ------------------------------------------------------------------------------

    def _shutdown(self) -> None:
        c = self._client
        if c is not None and self.connected and c.socket() is not None:
            while self.connected and time.monotonic() < self._flush_deadline:
                self._settle()
                if (
                    not self._inflight
                    and not self._direct_inflight
                    and not self._direct
                    and self.outbox.stats().queued == 0
                ):
                    break
                self._pump()
                self._io(min(0.2, max(0.0, self._flush_deadline - time.monotonic())))
            self._settle()
            if self.connected and not self._is_refused(self._presence_topic):
                self._presence_acked.clear()
                info = c.publish(
                    self._presence_topic, self._presence(False, "clean"), qos=1, retain=True
                )
                self._presence_mid = info.mid
                # Give the goodbye a second even when the flush used up the deadline.
                deadline = max(self._flush_deadline, time.monotonic() + 1.0)
                while (
                    not self._presence_acked.is_set()
                    and c.socket() is not None
                    and time.monotonic() < deadline
                ):
                    self._io(0.1)
                self._settle()
            c.disconnect()
            end = time.monotonic() + 1.0
            while c.socket() is not None and c.want_write() and time.monotonic() < end:
                self._io(0.1)
        left = self.outbox.stats().queued
        if left:
            log.info(
                "stopped with %d messages still in the outbox; they go out on next start", left
            )
