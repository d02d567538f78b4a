"""Shared by the agent's MQTT tests: a recording subscriber, configs, the agent as a process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from agent.outbox import Outbox, Stats
from tests.services.mosquitto import Broker

ROOT = Path(__file__).resolve().parents[2]
FLEET_AGENT = Path(sys.executable).parent / "fleet-agent"
PASSWORDS = {"fleet-server": "server-secret", "T-0001": "t1-secret", "T-0002": "t2-secret"}


@dataclass(frozen=True)
class Msg:
    topic: str
    payload: bytes
    retain: bool

    def json(self) -> dict[str, Any]:
        out: dict[str, Any] = json.loads(self.payload)
        return out


class Subscriber:
    """A fleet-server client that records what it receives (QoS 1).

    `persistent=True` keeps its session across its own reconnects and a broker restart (with
    broker persistence on), so nothing published while it is away is missed.
    """

    def __init__(
        self,
        broker: Broker,
        topic: str = "fleet/#",
        *,
        persistent: bool = False,
        user: str = "fleet-server",
    ) -> None:
        self.topic = topic
        self.messages: list[Msg] = []
        self._cond = threading.Condition()
        self._subscribed = threading.Event()
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"test-sub-{uuid.uuid4().hex[:8]}",
            protocol=MQTTProtocolVersion.MQTTv5,
        )
        self.client.username_pw_set(user, PASSWORDS[user])
        self.client.reconnect_delay_set(1, 2)
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = lambda *a: self._subscribed.set()
        self.client.on_message = self._on_message
        props = None
        if persistent:
            props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            props.SessionExpiryInterval = 600
        self.client.connect("127.0.0.1", broker.port, clean_start=not persistent, properties=props)
        self.client.loop_start()
        assert self._subscribed.wait(10), "subscriber never got its SUBACK"

    def _on_connect(self, client: mqtt.Client, *args: Any) -> None:
        client.subscribe(self.topic, qos=1)

    def _on_message(self, client: mqtt.Client, userdata: Any, m: mqtt.MQTTMessage) -> None:
        with self._cond:
            self.messages.append(Msg(m.topic, bytes(m.payload), bool(m.retain)))
            self._cond.notify_all()

    def wait_for(self, pred: Callable[[list[Msg]], bool], timeout: float = 10.0) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: pred(self.messages), timeout)

    def wait_for_seqs(self, count: int, timeout: float = 10.0) -> bool:
        """Until at least `count` status/event messages have arrived (duplicates count)."""
        return self.wait_for(lambda ms: len(self.seqs()) >= count, timeout)

    def on(self, suffix: str) -> list[Msg]:
        with self._cond:
            return [m for m in self.messages if m.topic.endswith("/" + suffix)]

    def seqs(self) -> list[int]:
        """Every seq received on status and event topics, in arrival order (duplicates kept)."""
        with self._cond:
            msgs = list(self.messages)
        return [m.json()["seq"] for m in msgs if m.topic.rsplit("/", 1)[-1] in ("status", "event")]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def assert_every_seq_in_order(seqs: list[int], last: int) -> int:
    """1..last all arrived, first arrivals in increasing order; returns the duplicate count.

    QoS 1 is at least once: a message whose PUBACK was lost to a kill or an outage is sent again,
    and the server drops it by seq. Loss, a gap or a reordering is what must never happen.
    """
    first_seen: list[int] = []
    seen: set[int] = set()
    for s in seqs:
        if s not in seen:
            seen.add(s)
            first_seen.append(s)
    missing = sorted(set(range(1, last + 1)) - seen)
    assert not missing, f"{len(missing)} seqs never arrived: {missing[:20]}"
    assert first_seen == sorted(first_seen), "seqs arrived out of order"
    assert max(seen) == last, f"got seqs beyond the agent's last ({max(seen)} > {last})"
    return len(seqs) - len(first_seen)


def write_config(
    path: Path,
    broker: Broker,
    *,
    terminal_id: str = "T-0001",
    username: str | None = None,
    status_interval_s: float = 1.0,
    poll_interval_s: float = 0.5,
    reconnect_max_s: float = 1.0,
    broker_extra: str = "",
    extra: str = "",
) -> Path:
    username = username or terminal_id
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        f"""\
terminal_id = "{terminal_id}"
data_dir = "{path.parent / "data"}"
shutdown_flush_s = 3

[broker]
url = "{broker.url}"
username = "{username}"
password = "{PASSWORDS[username]}"
keepalive_s = 10
reconnect_min_s = 0.2
reconnect_max_s = {reconnect_max_s}
{broker_extra}

[intervals]
status_interval_s = {status_interval_s}
poll_interval_s = {poll_interval_s}
debounce_s = 0.2
{extra}
"""
    )
    return path


class AgentProcess:
    """`fleet-agent run --config FILE` as a real process, its log kept next to the config."""

    def __init__(self, config: Path) -> None:
        self.config = config
        self.log_path = config.parent / "agent.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> AgentProcess:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [str(FLEET_AGENT), "run", "--config", str(self.config)],
                stdout=log,
                stderr=log,
                cwd=ROOT,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        return self

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def terminate(self, timeout: float = 15.0) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def outbox(self) -> tuple[Stats, int]:
        """The outbox's counts and next seq, read from its file (the agent must be stopped)."""
        ob = Outbox(self.config.parent / "data" / "outbox.db", budget_bytes=1 << 30)
        try:
            return ob.stats(), ob.next_seq
        finally:
            ob.close()

    def ensure_stopped(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def wait_until(pred: Callable[[], bool], timeout: float, step: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(step)
    return pred()
