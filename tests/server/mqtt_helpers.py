"""MQTT v5 test clients (paho) and a broker folder the `mosquitto` user can reach."""

from __future__ import annotations

import os
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties


def broker_dir() -> Path:
    """A fresh folder under /tmp, open to the broker's user (pytest's tmp_path is 0700)."""
    d = Path(tempfile.mkdtemp(prefix="fleet-broker-"))
    os.chmod(d, 0o755)
    return d / "mosquitto"


@dataclass
class Client:
    """A connected paho v5 client that records what it receives and its PUBACK reason codes."""

    mqtt: mqtt.Client
    received: list[tuple[str, bytes]] = field(default_factory=list)
    puback_reasons: dict[int, int] = field(default_factory=dict)
    cond: threading.Condition = field(default_factory=threading.Condition)
    #: Called on the network thread for each message before it is recorded (to slow it down).
    on_each: Callable[[], None] | None = None

    def wait_for(
        self, predicate: Callable[[list[tuple[str, bytes]]], bool], timeout: float
    ) -> bool:
        with self.cond:
            return self.cond.wait_for(lambda: predicate(self.received), timeout)

    def count_until_quiet(self, expected: int, quiet_s: float = 1.0, limit_s: float = 15) -> int:
        """How many messages arrive: stop at `expected`, or after `quiet_s` without a new one."""
        deadline = time.monotonic() + limit_s
        last, last_change = -1, time.monotonic()
        while time.monotonic() < deadline:
            with self.cond:
                self.cond.wait(0.05)
                n = len(self.received)
            if n >= expected:
                return n
            if n != last:
                last, last_change = n, time.monotonic()
            elif time.monotonic() - last_change > quiet_s:
                break
        return last

    def subscribe(self, *topics: str) -> None:
        done = threading.Event()
        self.mqtt.on_subscribe = lambda *a: done.set()
        self.mqtt.subscribe([(t, 1) for t in topics])
        assert done.wait(5), f"no SUBACK for {topics}"

    def publish(self, topic: str, payload: bytes | str, retain: bool = False) -> int:
        """Publish with QoS 1, wait for the PUBACK, return its reason code."""
        info = self.mqtt.publish(topic, payload, qos=1, retain=retain)
        info.wait_for_publish(5)
        assert info.is_published(), f"no PUBACK for {topic}"
        return self.puback_reasons.get(info.mid, 0)

    def close(self) -> None:
        self.mqtt.disconnect()
        self.mqtt.loop_stop()


def connect(
    port: int,
    username: str,
    password: str,
    *,
    client_id: str = "",
    clean_start: bool = True,
    session_expiry_s: int = 0,
) -> Client:
    """Connect (v5) and start the network loop; raises AssertionError if the login fails."""
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    client = Client(c)
    c.username_pw_set(username, password)
    connected = threading.Event()
    reason: list[Any] = []

    def on_connect(_c: Any, _u: Any, _f: Any, rc: Any, _p: Any) -> None:
        reason.append(rc)
        connected.set()

    def on_message(_c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        if client.on_each is not None:
            client.on_each()
        with client.cond:
            client.received.append((msg.topic, bytes(msg.payload)))
            client.cond.notify_all()

    def on_publish(_c: Any, _u: Any, mid: int, rc: Any, _p: Any) -> None:
        client.puback_reasons[mid] = int(rc.value)

    c.on_connect = on_connect
    c.on_message = on_message
    c.on_publish = on_publish
    props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    props.SessionExpiryInterval = session_expiry_s
    c.connect("127.0.0.1", port, keepalive=30, clean_start=clean_start, properties=props)
    c.loop_start()
    if not connected.wait(5) or reason[0].is_failure:
        c.loop_stop()
        raise AssertionError(f"{username} could not connect: {reason}")
    return client
