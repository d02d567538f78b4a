"""The publisher against a real Mosquitto: the retained document is an envelope the agent opens,
a terminal that connects later gets it, and a broker that lost it gets it again on reconnect."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator

import pytest

from agent.desired.document import open_envelope
from fleet.server.db.models import LayerScope
from fleet.server.mqtt_publish import Publisher, PublisherConfig, PublishError
from tests.server.desired_support import KEY, seed, service
from tests.server.mqtt_helpers import connect
from tests.services import mosquitto

pytestmark = pytest.mark.skipif(not mosquitto.available(), reason="mosquitto not installed")

USERS = {"fleet-server": "server-secret", "T1": "t1-secret", "T2": "t2-secret"}


@pytest.fixture
def broker() -> Iterator[mosquitto.Broker]:
    b = mosquitto.Broker(USERS).start()
    try:
        yield b
    finally:
        b.close()


def _publisher(broker: mosquitto.Broker) -> Publisher:
    return Publisher(
        PublisherConfig(
            "127.0.0.1", broker.port, "fleet-server", USERS["fleet-server"], puback_timeout_s=5
        )
    )


def _retained(broker: mosquitto.Broker, tid: str) -> bytes:
    client = connect(broker.port, tid, USERS[tid])
    try:
        client.subscribe(f"fleet/v1/t/{tid}/desired")
        assert client.wait_for(lambda r: len(r) >= 1, 5), f"no retained document for {tid}"
        return client.received[0][1]
    finally:
        client.close()


async def test_published_document_is_retained_and_opens(db: str, broker: mosquitto.Broker) -> None:
    await seed({"S1": ["T1", "T2"]})
    pub = _publisher(broker)
    svc = service(pub)

    async def republish() -> None:
        await svc.republish_latest()

    pub.on_connect = republish
    await pub.start()
    try:
        await pub.wait_connected(5)
        out = await svc.set_layer(LayerScope.SITE, "S1", {"paper": {"low_pct": 25}}, "admin")
        assert {(o.result, o.published) for o in out} == {("new", True)}
        # T1 connects only now: the retained copy is waiting.
        raw = await asyncio.to_thread(_retained, broker, "T1")
        opened = open_envelope(raw, KEY.verifying_key(), "T1")
        assert opened.version == 1 and opened.hash == out[0].hash
        assert opened.document["config"]["paper"]["low_pct"] == 25

        broker.stop()  # no persistence: the retained copies are gone
        await asyncio.sleep(0.3)
        with pytest.raises(PublishError):
            await pub.publish("fleet/v1/t/T1/cmd", json.dumps({"v": 1}).encode())
        failed = await svc.set_layer(LayerScope.SITE, "S1", {"paper": {"low_pct": 26}}, "a")
        assert {(o.result, o.published) for o in failed} == {("new", False)}
        broker.start()
        await pub.wait_connected(10)
        # The on-connect republish restores the latest document of each terminal.
        raw = await asyncio.to_thread(_retained, broker, "T2")
        opened = open_envelope(raw, KEY.verifying_key(), "T2")
        assert opened.version == 2 and opened.document["config"]["paper"]["low_pct"] == 26
    finally:
        await pub.stop()
