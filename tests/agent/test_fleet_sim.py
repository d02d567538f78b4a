"""`fleet-sim` against a real Mosquitto with per-terminal passwords and the terminal ACL.

What is checked is what a subscriber (the fleet server's user) receives, never exit codes or
SUBACKs: Mosquitto accepts a forbidden publish and drops it silently.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from agent.sim import credentials
from agent.sim.sites import layout
from tests.services import mosquitto

ROOT = Path(__file__).resolve().parents[2]
SERVER_PASSWORD = "server-secret"
N = 50


@dataclass
class Received:
    """Everything the fleet server's user sees on fleet/v1/t/#, in arrival order."""

    messages: list[tuple[str, str, dict[str, Any], bool]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, msg: mqtt.MQTTMessage) -> None:
        parts = msg.topic.split("/")
        with self.lock:
            self.messages.append((parts[3], parts[4], json.loads(msg.payload), msg.retain))

    def of(self, kind: str) -> list[tuple[str, dict[str, Any], bool]]:
        with self.lock:
            return [(t, body, r) for t, k, body, r in self.messages if k == kind]

    def latest_presence(self) -> dict[str, bool]:
        return {t: body["online"] for t, body, _ in self.of("presence")}


class Subscriber:
    def __init__(self, port: int) -> None:
        self.received = Received()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        self.client.username_pw_set("fleet-server", SERVER_PASSWORD)
        self.client.on_message = lambda c, u, m: self.received.add(m)
        subscribed = threading.Event()
        self.client.on_subscribe = lambda *a: subscribed.set()
        self.client.connect("127.0.0.1", port)
        self.client.subscribe("fleet/v1/t/#", qos=1)
        self.client.loop_start()
        assert subscribed.wait(10), "no SUBACK"

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def wait_for(check: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(0.1)


@pytest.fixture
def broker() -> Iterator[mosquitto.Broker]:
    """A broker whose password file `fleet-sim make-passwd` wrote: N terminals + the server."""
    if not mosquitto.available():
        pytest.skip("mosquitto is not installed (make test installs it: apt-get install mosquitto)")
    b = mosquitto.Broker(users={})
    sim(
        "make-passwd",
        *("--terminals", str(N), "--out", str(b.dir / "passwd")),
        *("--password-template", "pw-{id}", "--user", f"fleet-server:{SERVER_PASSWORD}"),
    ).check_returncode()
    b.start()
    yield b
    b.close()


def sim(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent.sim", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def start_sim(broker: mosquitto.Broker, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            *(sys.executable, "-m", "agent.sim", "--terminals", str(N), "--broker", broker.url),
            *("--status-interval", "1", "--duration", "40", "--stats-interval", "1", *args),
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def stop(proc: subprocess.Popen[str], sig: int) -> tuple[str, str]:
    proc.send_signal(sig)
    try:
        return proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


IDS = [s.terminal_id for s in layout(N)]


def test_every_terminal_connects_reports_in_sequence_and_leaves_a_will(
    broker: mosquitto.Broker,
) -> None:
    sub = Subscriber(broker.port)
    proc = start_sim(broker, "--password-template", "pw-{id}")
    try:

        def three_each() -> bool:
            counts = {t: 0 for t in IDS}
            for t, _, _ in sub.received.of("status"):
                counts[t] += 1
            return min(counts.values()) >= 3

        wait_for(three_each, 30, "three status reports from every terminal")
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""

        # Each terminal connected with its own credentials and said so, retained, with its site.
        online = [(t, body, retained) for t, body, retained in sub.received.of("presence")]
        assert {t for t, body, _ in online if body["online"]} == set(IDS)
        sites = {t: body["site"]["id"] for t, body, _ in online}
        assert sites["WH-HALL-01"] == "WH-HALL"

        # Statuses arrive in order per terminal; with the events they count up by one from 1
        # (the two topics share one seq, as the agent's outbox allocates it).
        seqs: dict[str, list[int]] = {t: [] for t in IDS}
        for t, body, _ in sub.received.of("status"):
            assert body["v"] == 1 and body["printer"]["driver"] == "sim"
            seqs[t].append(body["seq"])
        for t, got in seqs.items():
            assert got == sorted(got), t
            # One connection delivers in order, so what arrived so far is a prefix: no gap.
            merged = sorted(got + [b["seq"] for e, b, _ in sub.received.of("event") if e == t])
            assert merged == list(range(1, len(merged) + 1)), t

        # A late subscriber gets every terminal's retained presence: online.
        late = Subscriber(broker.port)
        wait_for(lambda: len(late.received.latest_presence()) == N, 10, "retained presence")
        assert all(late.received.latest_presence().values())
        assert all(r for _, _, r in late.received.of("presence"))
        late.close()

        # SIGKILL: no goodbye from the simulator; the broker publishes every Last Will.
        stop(proc, signal.SIGKILL)
        wait_for(
            lambda: not any(sub.received.latest_presence().values()),
            15,
            "presence online:false (the Last Will) from every terminal",
        )
        after = Subscriber(broker.port)
        wait_for(lambda: len(after.received.latest_presence()) == N, 10, "retained wills")
        assert not any(after.received.latest_presence().values())
        after.close()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        sub.close()


def test_a_wrong_password_keeps_only_that_terminal_out(
    broker: mosquitto.Broker, tmp_path: Path
) -> None:
    users = credentials.from_template("pw-{id}", IDS)
    victim = IDS[7]
    users[victim] = "not-its-password"
    creds = tmp_path / "creds"
    credentials.write_credentials(creds, users)
    sub = Subscriber(broker.port)
    proc = start_sim(broker, "--password-file", str(creds))
    try:
        others = set(IDS) - {victim}
        wait_for(
            lambda: {t for t, _, _ in sub.received.of("status")} >= others,
            30,
            "statuses from every terminal with a good password",
        )
        time.sleep(1.0)
        assert victim not in {t for t, _, _ in sub.received.of("status")}
        assert victim not in sub.received.latest_presence()
        out, _ = stop(proc, signal.SIGTERM)
        summary = json.loads(out.strip().splitlines()[-1])
        assert summary["refused"] >= 1 and summary["connects"] == N - 1
    finally:
        sub.close()


def test_sigterm_leaves_cleanly_with_presence_offline(broker: mosquitto.Broker) -> None:
    sub = Subscriber(broker.port)
    proc = start_sim(broker, "--password-template", "pw-{id}")
    try:
        wait_for(lambda: len(sub.received.latest_presence()) == N, 30, "every terminal online")
        # The first reports go out at a random point of the first interval: wait for one.
        wait_for(lambda: bool(sub.received.of("status")), 10, "a first status report")
        out, err = stop(proc, signal.SIGTERM)
        assert proc.returncode == 0, err
        summary = json.loads(out.strip().splitlines()[-1])
        assert summary["connects"] == N and summary["connected"] == 0
        assert summary["denied"] == 0 and summary["status_sent"] >= 1
        wait_for(
            lambda: not any(sub.received.latest_presence().values()), 10, "presence online:false"
        )
    finally:
        sub.close()


def test_terminals_come_back_after_a_broker_restart(broker: mosquitto.Broker) -> None:
    sub = Subscriber(broker.port)
    proc = start_sim(broker, "--password-template", "pw-{id}")
    try:
        wait_for(
            lambda: {t for t, _, _ in sub.received.of("status")} == set(IDS),
            30,
            "a status from every terminal",
        )
        sub.close()
        broker.stop()
        time.sleep(1.0)
        broker.start()
        sub = Subscriber(broker.port)
        wait_for(
            lambda: {t for t, _, _ in sub.received.of("status")} == set(IDS),
            40,
            "statuses from every terminal after the restart",
        )
        assert set(sub.received.latest_presence()) == set(IDS)
        assert all(sub.received.latest_presence().values())
        seqs: dict[str, list[int]] = {t: [] for t in IDS}
        for t, body, _ in sub.received.of("status"):
            seqs[t].append(body["seq"])
        for t, got in seqs.items():
            # seq carries on from before the outage (nothing restarts at 1) and only increases.
            assert got[0] > 1 and got == sorted(set(got)), t
        out, _ = stop(proc, signal.SIGTERM)
        summary = json.loads(out.strip().splitlines()[-1])
        assert summary["disconnects"] == N and summary["connects"] == 2 * N
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        sub.close()


def publish_as(port: int, user: str, topic: str, payload: str) -> None:
    """One QoS 1 publish on a fresh connection logged in as `user`.

    Fresh each time: Mosquitto 2.0.11 answers a forbidden MQTT v5 publish with PUBACK 135 and
    then drops the connection ("Bad socket read/write"), so one client cannot send several.
    """
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=user, protocol=mqtt.MQTTv5)
    client.username_pw_set(user, f"pw-{user}")
    acked = threading.Event()
    client.on_publish = lambda *a: acked.set()
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        wait_for(client.is_connected, 10, f"{user} to log in with its own password")
        client.publish(topic, payload, qos=1)
        assert acked.wait(10), f"no PUBACK for {topic}"
    finally:
        client.disconnect()
        client.loop_stop()


def test_one_terminal_cannot_publish_as_another(broker: mosquitto.Broker) -> None:
    """The broker's ACL, with the passwords make-passwd wrote: A may write only A's topics."""
    a, b = IDS[0], IDS[1]
    sub = Subscriber(broker.port)
    try:
        forged = json.dumps({"v": 1, "seq": 99, "forged": True})
        for kind in ("status", "presence", "event"):
            publish_as(broker.port, a, f"fleet/v1/t/{b}/{kind}", forged)
        publish_as(broker.port, a, f"fleet/v1/t/{a}/status", json.dumps({"v": 1, "seq": 1}))
        # The control message arrives, so anything forged would have arrived before it.
        wait_for(lambda: any(t == a for t, _, _ in sub.received.of("status")), 10, "A's own status")
        with sub.received.lock:
            from_b = [m for m in sub.received.messages if m[0] == b]
        assert from_b == []
    finally:
        sub.close()
