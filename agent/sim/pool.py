"""Thousands of paho MQTT clients driven from one thread and one selector.

A paho client per terminal keeps each terminal's own connection, client id, credentials and Last
Will, exactly as a real agent has them; a thread per client (`loop_start`) would not scale to
thousands on a small host. paho 2.x supports an external loop instead: `socket()` to watch,
`loop_read()` when it is readable, `loop_write()` while `want_write()`, `loop_misc()` for
keepalives. Without a thread or a write callback, `publish()` writes to the socket at once, so
the selector only needs write interest for what a full socket buffer left behind.

Connections are opened in batches: at most `batch` wait for their CONNACK, fewer than Mosquitto's
listen backlog (100), because an overflowing accept queue drops the SYN and the (blocking) TCP
connect then stalls the whole loop for the 1 s, 3 s … SYN retransmit. A dropped or refused
connection retries with capped exponential backoff and jitter.

Each terminal subscribes to its own `desired` and `cmd` topics on every CONNACK (clean start:
the broker keeps no session, and the retained document comes again); messages are handed to
the terminal inside `loop_read`, and its answers (`reported`, `cmd/result`, a status) are queued
at once and written when the loop syncs the socket right after.
"""

from __future__ import annotations

import heapq
import random
import selectors
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from agent import report
from agent.sim.terminal import Message, SimTerminal

READ = selectors.EVENT_READ
READ_WRITE = selectors.EVENT_READ | selectors.EVENT_WRITE

# Timer kinds.
TICK, RETRY, CONNECT_TIMEOUT, RESTART, UPDATE = 0, 1, 2, 3, 4
#: The topics each terminal reads, as the agent subscribes them.
SUBSCRIBED = ("desired", "cmd")
# Connection states.
IDLE, CONNECTING, CONNECTED, WAITING = "idle", "connecting", "connected", "waiting"


@dataclass(frozen=True)
class PoolConfig:
    host: str
    port: int
    keepalive_s: int = 60
    #: At most this many connections waiting for their CONNACK at once (see the module doc).
    batch: int = 64
    connect_timeout_s: float = 15.0
    backoff_min_s: float = 1.0
    backoff_max_s: float = 60.0
    #: How often each terminal reads its devices (a change is reported at the next poll).
    poll_interval_s: float = 1.0
    #: keepalive pings are checked for every client this often.
    misc_interval_s: float = 5.0


@dataclass
class Stats:
    terminals: int = 0
    connected: int = 0
    connects: int = 0
    connect_errors: int = 0
    refused: int = 0
    disconnects: int = 0
    status_sent: int = 0
    events_sent: int = 0
    presence_sent: int = 0
    reported_sent: int = 0
    results_sent: int = 0
    desired_ok: int = 0
    desired_refused: int = 0
    restarts: int = 0
    acked: int = 0
    denied: int = 0
    #: Timers that fired late by more than a second, and the worst lateness: the loop's health.
    late_wakes: int = 0
    max_lag_s: float = 0.0
    errors: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        out = dict(self.__dict__)
        out["errors"] = self.errors[:20]
        return out


class Conn:
    """One terminal's MQTT connection and its place in the loop."""

    __slots__ = (
        "attempts",
        "client",
        "fd",
        "gen",
        "index",
        "next_poll",
        "restart_mid",
        "state",
        "term",
        "will_version",
        "writing",
    )

    def __init__(self, index: int, term: SimTerminal, client: mqtt.Client) -> None:
        self.index = index
        self.term = term
        self.client = client
        self.fd = -1
        self.state = IDLE
        self.gen = 0  # bumped per connection attempt; timers of an older attempt are ignored
        self.attempts = 0
        self.writing = False
        self.next_poll = 0.0
        #: A restart waits for the PUBACK of this (its presence offline) before it disconnects.
        self.restart_mid: int | None = None
        #: The agent version the client's Last Will names.
        self.will_version = term.agent_version


class Pool:
    def __init__(
        self,
        terminals: Sequence[SimTerminal],
        passwords: Mapping[str, str],
        cfg: PoolConfig,
        clock: Callable[[], float] = time.monotonic,
        seed: int | None = None,
    ) -> None:
        self.cfg = cfg
        self.clock = clock
        self.rng = random.Random(seed)
        self.sel = selectors.DefaultSelector()
        self.stats = Stats(terminals=len(terminals))
        self.timers: list[tuple[float, int, int, int, int]] = []
        self._timer_seq = 0
        self.pending: deque[int] = deque()
        self.in_flight = 0
        self.stopping = False
        self.conns = [self._make(i, t, passwords[t.id]) for i, t in enumerate(terminals)]
        self.pending.extend(range(len(self.conns)))

    # -- set-up --------------------------------------------------------------------------------

    def _make(self, index: int, term: SimTerminal, password: str) -> Conn:
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=term.id, protocol=mqtt.MQTTv5)
        conn = Conn(index, term, client)
        client.user_data_set(conn)
        client.username_pw_set(term.id, password)
        will = term.presence(online=False, reason="will")
        client.will_set(will.topic, will.payload, qos=1, retain=True)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_message = self._on_message
        client.on_socket_open = self._on_socket_open
        client.on_socket_close = self._on_socket_close
        client.connect_async(self.cfg.host, self.cfg.port, self.cfg.keepalive_s, clean_start=True)
        return conn

    # -- timers --------------------------------------------------------------------------------

    def _at(self, when: float, kind: int, conn: Conn) -> None:
        self._timer_seq += 1
        heapq.heappush(self.timers, (when, self._timer_seq, kind, conn.index, conn.gen))

    # -- paho callbacks (run inside loop_read / loop_write / reconnect) ------------------------

    def _on_socket_open(self, client: mqtt.Client, conn: Conn, sock: Any) -> None:
        conn.fd = sock.fileno()
        conn.writing = False
        self.sel.register(conn.fd, READ, conn)

    def _on_socket_close(self, client: mqtt.Client, conn: Conn, sock: Any) -> None:
        # Called before paho closes the socket, so the selector forgets the fd before any new
        # socket can reuse its number.
        if conn.fd >= 0:
            self.sel.unregister(conn.fd)
            conn.fd = -1

    def _on_connect(
        self,
        client: mqtt.Client,
        conn: Conn,
        flags: mqtt.ConnectFlags,
        reason: ReasonCode,
        properties: Any,
    ) -> None:
        if conn.state == CONNECTING:
            self.in_flight -= 1
        if reason.is_failure:
            # Bad credentials or a full broker: paho closes the socket and on_disconnect retries.
            self.stats.refused += 1
            self._error(f"{conn.term.id}: connect refused: {reason}")
            conn.state = WAITING
            return
        conn.state = CONNECTED
        conn.attempts = 0
        conn.restart_mid = None
        self.stats.connected += 1
        self.stats.connects += 1
        self._publish(conn, conn.term.presence(online=True))
        client.subscribe(
            [(report.topic(conn.term.id, k), SubscribeOptions(qos=1)) for k in SUBSCRIBED]
        )
        now = self.clock()
        conn.term.on_connect(now)
        conn.next_poll = now + self.rng.uniform(0.0, self.cfg.poll_interval_s)
        self._at(self._next_wake(conn), TICK, conn)

    def _on_disconnect(
        self,
        client: mqtt.Client,
        conn: Conn,
        flags: mqtt.DisconnectFlags,
        reason: ReasonCode,
        properties: Any,
    ) -> None:
        if conn.state == CONNECTED:
            self.stats.connected -= 1
            if not self.stopping:
                self.stats.disconnects += 1
        elif conn.state == CONNECTING:
            self.in_flight -= 1
        conn.state = WAITING
        if not self.stopping:
            self._retry_later(conn)

    def _on_publish(
        self, client: mqtt.Client, conn: Conn, mid: int, reason: ReasonCode, properties: Any
    ) -> None:
        if reason.is_failure:
            self.stats.denied += 1  # e.g. 135 Not authorized: the ACL refused the topic
        else:
            self.stats.acked += 1
        if mid == conn.restart_mid:
            conn.restart_mid = None
            client.disconnect()  # on_disconnect schedules the reconnect

    def _on_message(self, client: mqtt.Client, conn: Conn, msg: mqtt.MQTTMessage) -> None:
        kind = msg.topic.rsplit("/", 1)[-1]
        try:
            answers = conn.term.on_message(kind, bytes(msg.payload), self.clock())
        except Exception as e:  # a bad message must not stop the loop for everyone
            self._error(f"{conn.term.id}: {kind}: {type(e).__name__}: {e}")
            return
        for answer in answers:
            self._publish(conn, answer)
        self._update_timer(conn)
        if conn.term.restart_requested:
            conn.term.restart_requested = False
            self._at(self.clock(), RESTART, conn)

    # -- connecting ----------------------------------------------------------------------------

    def _retry_later(self, conn: Conn) -> None:
        conn.attempts += 1
        cap = min(self.cfg.backoff_max_s, self.cfg.backoff_min_s * 2 ** min(conn.attempts - 1, 16))
        # Full jitter over the upper half keeps a fleet that lost the broker together from
        # coming back in lockstep.
        self._at(self.clock() + cap * self.rng.uniform(0.5, 1.0), RETRY, conn)

    def _start_connect(self, conn: Conn) -> None:
        if conn.term.agent_version != conn.will_version:
            # Updated since the last connect: the Last Will names the version it now runs.
            will = conn.term.presence(online=False, reason="will")
            conn.client.will_set(will.topic, will.payload, qos=1, retain=True)
            conn.will_version = conn.term.agent_version
        conn.gen += 1
        conn.state = CONNECTING
        self.in_flight += 1
        try:
            conn.client.reconnect()
        except OSError as e:  # refused, reset, timed out: the broker is not there (yet)
            self.stats.connect_errors += 1
            self._error(f"{conn.term.id}: connect: {e}")
            self.in_flight -= 1
            conn.state = WAITING
            self._retry_later(conn)
            return
        if conn.state != CONNECTING:
            return  # paho already dropped it; on_disconnect scheduled the retry
        self._at(self.clock() + self.cfg.connect_timeout_s, CONNECT_TIMEOUT, conn)
        self._sync_write(conn)

    def _connect_some(self) -> None:
        while self.pending and self.in_flight < self.cfg.batch and not self.stopping:
            conn = self.conns[self.pending.popleft()]
            if conn.state in (IDLE, WAITING):
                self._start_connect(conn)

    # -- I/O -----------------------------------------------------------------------------------

    def _sync_write(self, conn: Conn) -> None:
        if conn.fd < 0:
            return
        want = conn.client.want_write()
        if want != conn.writing:
            self.sel.modify(conn.fd, READ_WRITE if want else READ, conn)
            conn.writing = want

    def _publish(self, conn: Conn, msg: Message) -> int | None:
        """Queue or send `msg`; its mid, or None when paho refused it."""
        info = conn.client.publish(msg.topic, msg.payload, qos=1, retain=msg.retain)
        if info.rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_QUEUE_SIZE):
            return None
        if msg.topic.endswith("/status"):
            self.stats.status_sent += 1
        elif msg.topic.endswith("/reported"):
            self.stats.reported_sent += 1
            if b'"result":"ok"' in msg.payload:
                self.stats.desired_ok += 1
            else:
                self.stats.desired_refused += 1
        elif msg.topic.endswith("/cmd/result"):
            self.stats.results_sent += 1
        elif msg.retain:
            self.stats.presence_sent += 1
        else:
            self.stats.events_sent += 1
        return info.mid

    def _io(self, conn: Conn, mask: int) -> None:
        try:
            if mask & selectors.EVENT_READ:
                conn.client.loop_read()
            if mask & selectors.EVENT_WRITE and conn.fd >= 0:
                conn.client.loop_write()
        except Exception as e:  # one broken client must not stop thousands of others
            self._error(f"{conn.term.id}: {type(e).__name__}: {e}")
        self._sync_write(conn)

    def _error(self, text: str) -> None:
        if len(self.stats.errors) < 1000:
            self.stats.errors.append(text)

    # -- the terminals' own work ---------------------------------------------------------------

    def _fire(self, now: float, kind: int, conn: Conn) -> None:
        if kind == RETRY:
            if conn.state == WAITING and not self.stopping:
                self.pending.append(conn.index)
        elif kind == CONNECT_TIMEOUT:
            if conn.state == CONNECTING:
                self._error(f"{conn.term.id}: no CONNACK in {self.cfg.connect_timeout_s}s")
                conn.client.disconnect()  # on_disconnect schedules the retry
                self._sync_write(conn)
        elif kind == RESTART and conn.state == CONNECTED:
            # As the agent stops for systemd to start it again: presence offline, and once the
            # broker acknowledged it (and so everything before it) a clean DISCONNECT. Closing
            # the socket with PUBACKs still unread would reset the connection: the broker would
            # publish the Will, and paho would send the unacknowledged presence offline again
            # after the reconnect, leaving the retained presence offline.
            self.stats.restarts += 1
            mid = self._publish(conn, conn.term.presence(online=False, reason="clean"))
            if mid is None:
                conn.client.disconnect()
            conn.restart_mid = mid
            self._sync_write(conn)
        elif kind == UPDATE and conn.state == CONNECTED:
            for msg in conn.term.update_step(now):
                self._publish(conn, msg)
            self._sync_write(conn)
            self._update_timer(conn)
        elif kind == TICK and conn.state == CONNECTED:
            if now >= conn.next_poll:
                conn.next_poll += self.cfg.poll_interval_s
                if conn.next_poll <= now:
                    conn.next_poll = now + self.cfg.poll_interval_s
            for msg in conn.term.tick(now):
                self._publish(conn, msg)
            self._sync_write(conn)
            self._at(self._next_wake(conn), TICK, conn)

    def _update_timer(self, conn: Conn) -> None:
        """Wake for the next step of a simulated self-update on time, not at the next poll.

        A timer that finds its step already taken (by `tick`, which steps the update too) only
        schedules the next one, if any; one lost with a reconnect makes its step a poll late.
        """
        due = conn.term.updater.due
        if due is not None:
            self._at(due, UPDATE, conn)

    @staticmethod
    def _next_wake(conn: Conn) -> float:
        # The next device poll, or the next periodic report if that comes first, so reports
        # leave on their schedule and not up to a poll interval late.
        report_at = conn.term.next_report
        return conn.next_poll if report_at is None else min(conn.next_poll, report_at)

    def _run_timers(self, now: float, limit: int) -> None:
        timers = self.timers
        stats = self.stats
        for _ in range(limit):
            if not timers or timers[0][0] > now:
                return
            when, _seq, kind, index, gen = heapq.heappop(timers)
            conn = self.conns[index]
            if gen != conn.gen:
                continue  # belongs to an earlier connection of this terminal
            lag = now - when
            if lag > 1.0:
                stats.late_wakes += 1
            if lag > stats.max_lag_s:
                stats.max_lag_s = lag
            self._fire(now, kind, conn)

    def _misc(self) -> None:
        for conn in self.conns:
            if conn.state == CONNECTED:
                conn.client.loop_misc()
                self._sync_write(conn)

    # -- the loop ------------------------------------------------------------------------------

    def run(
        self,
        deadline: float,
        should_stop: Callable[[], bool] = lambda: False,
        on_stats: Callable[[Stats], None] | None = None,
        stats_interval_s: float = 10.0,
    ) -> Stats:
        """Run until `deadline` (clock seconds) or `should_stop()`; then leave cleanly."""
        next_misc = self.clock() + self.cfg.misc_interval_s
        next_stats = self.clock() + stats_interval_s
        while True:
            now = self.clock()
            if now >= deadline or should_stop():
                break
            self._connect_some()
            # Bounded, so sockets are served between timer bursts even when the loop runs late.
            self._run_timers(now, limit=2000)
            if now >= next_misc:
                self._misc()
                next_misc = now + self.cfg.misc_interval_s
            if on_stats is not None and now >= next_stats:
                on_stats(self.stats)
                next_stats = now + stats_interval_s
            timeout = 0.2
            if self.timers:
                timeout = min(timeout, max(0.0, self.timers[0][0] - self.clock()))
            for key, mask in self.sel.select(timeout):
                self._io(key.data, mask)
        self.shutdown()
        return self.stats

    def shutdown(self, grace_s: float = 5.0) -> None:
        """Leave as an agent that is stopped does: presence offline (retained), then DISCONNECT,
        so the broker discards the Last Will."""
        self.stopping = True
        for conn in self.conns:
            if conn.state == CONNECTED:
                self._publish(conn, conn.term.presence(online=False, reason="clean"))
            if conn.state in (CONNECTED, CONNECTING):
                conn.client.disconnect()
                self._sync_write(conn)
        end = self.clock() + grace_s
        while self.sel.get_map() and self.clock() < end:
            for key, mask in self.sel.select(0.1):
                self._io(key.data, mask)
        for conn in self.conns:
            if conn.fd >= 0:
                self.sel.unregister(conn.fd)
                conn.fd = -1
        self.sel.close()
