"""MqttLink's side of desired state, in-process against a real Mosquitto: `desired` and `cmd`
routed to their callbacks, `on_ready` on every connection, and `publish` (non-outbox) keeping
only the latest `reported` while offline but every `cmd/result`."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.publish
import pytest

from agent.mqtt_link import MqttLink
from agent.outbox import Outbox
from tests.agent.agent_harness import PASSWORDS, Subscriber, wait_until
from tests.agent.test_mqtt_link import broker_config
from tests.services.mosquitto import Broker


@pytest.fixture
def outbox(tmp_path: Path) -> Iterator[Outbox]:
    ob = Outbox(tmp_path / "o.db", 10_000_000)
    yield ob
    ob.close()


def test_routing_ready_and_latest_reported(persistent_broker: Broker, outbox: Outbox) -> None:
    broker = persistent_broker
    desired: list[bytes] = []
    cmds: list[bytes] = []
    ready: list[int] = []
    link = MqttLink(
        terminal_id="T-0001",
        broker=broker_config(broker),
        outbox=outbox,
        agent_version="9.9.9",
        on_desired=desired.append,
        on_cmd=cmds.append,
        on_ready=lambda: ready.append(1),
    )
    # Queued before any connection: of three `reported` only the last goes; results all go.
    for i in range(3):
        link.publish("reported", json.dumps({"n": i}).encode())
        link.publish("cmd/result", json.dumps({"id": f"c{i}"}).encode())
    sub = Subscriber(broker, "fleet/v1/t/T-0001/#", persistent=True)
    link.start()
    try:
        assert wait_until(lambda: len(sub.on("result")) == 3 and bool(ready), 10)
        assert wait_until(lambda: len(sub.on("reported")) >= 1, 5)
        assert [m.json()["n"] for m in sub.on("reported")] == [2]
        assert [m.json()["id"] for m in sub.on("result")] == ["c0", "c1", "c2"]
        auth = {"username": "fleet-server", "password": PASSWORDS["fleet-server"]}
        for kind, body in (("desired", b"D"), ("cmd", b"C")):
            paho.mqtt.publish.single(
                f"fleet/v1/t/T-0001/{kind}",
                body,
                qos=1,
                hostname="127.0.0.1",
                port=broker.port,
                auth=auth,  # type: ignore[arg-type]
            )
        assert wait_until(lambda: desired == [b"D"] and cmds == [b"C"], 10)

        # A broker restart: on_ready again, and what was published meanwhile goes out. (The
        # subscriber's session, and so what is sent to it while it reconnects, survives.)
        broker.stop()
        assert wait_until(lambda: not link.connected, 10)
        link.publish("reported", b'{"n":3}')
        link.publish("reported", b'{"n":4}')
        broker.start()
        assert wait_until(lambda: len(ready) >= 2 and len(sub.on("reported")) >= 2, 15)
        assert [m.json()["n"] for m in sub.on("reported")] == [2, 4]
    finally:
        link.stop(1.0)
        sub.close()
