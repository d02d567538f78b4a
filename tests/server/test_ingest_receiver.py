"""The ingest receiver against a real Mosquitto: all messages arrive, shared subscriptions split
them, a persistent session keeps them while the server is down, and unacked ones come again."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import AsyncIterator, Iterator
from itertools import count
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from agent import report
from agent.config import BrokerConfig
from agent.mqtt_link import MqttLink
from agent.outbox import Outbox
from fleet.server.ingest.presence import PresenceTracker
from fleet.server.ingest.receiver import Received, Receiver, ReceiverConfig, subscriptions
from fleet.server.ingest.sequence import New, SequenceTracker
from fleet.server.ingest.validate import Presence, Rejection, Status, parse
from fleet.server.settings import Settings
from tests.services import mosquitto

SERVER_PW = "server-secret"
USERS = {
    "fleet-server": SERVER_PW,
    "T-0001": "t1-secret",
    "T-0002": "t2-secret",
    "T-0003": "t3-secret",
}
_ids = count()


@pytest.fixture(scope="module")
def broker() -> Iterator[mosquitto.Broker]:
    # One broker for the module (tests use distinct client ids): starting one per test is the
    # slow part, and the machine is shared.
    if not mosquitto.available():
        pytest.skip("mosquitto is not installed (apt-get install mosquitto)")
    b = mosquitto.Broker(users=dict(USERS))
    b.start()
    yield b
    b.close()


def config(broker: mosquitto.Broker, client_id: str | None = None, **kw: object) -> ReceiverConfig:
    return ReceiverConfig(
        host="127.0.0.1",
        port=broker.port,
        username="fleet-server",
        password=SERVER_PW,
        client_id=client_id or f"fleet-test-{os.getpid()}-{next(_ids)}",
        **kw,  # type: ignore[arg-type]
    )


@pytest.fixture
async def receivers() -> AsyncIterator[list[Receiver]]:
    made: list[Receiver] = []
    yield made
    for r in made:
        await r.stop()


async def started(made: list[Receiver], cfg: ReceiverConfig) -> Receiver:
    r = Receiver(cfg)
    made.append(r)
    await r.start()
    await r.wait_connected(10)
    return r


def publish(
    broker: mosquitto.Broker, user: str, items: list[tuple[str, bytes]], retain: bool = False
) -> None:
    """Publish at QoS 1 as a terminal and wait for every PUBACK."""
    c = mqtt.Client(
        CallbackAPIVersion.VERSION2, client_id=f"{user}-pub", protocol=MQTTProtocolVersion.MQTTv5
    )
    c.username_pw_set(user, USERS[user])
    c.connect("127.0.0.1", broker.port)
    c.loop_start()
    try:
        infos = [c.publish(topic, payload, qos=1, retain=retain) for topic, payload in items]
        for info in infos:
            info.wait_for_publish(10)
    finally:
        c.disconnect()
        c.loop_stop()


def subscribe_as(broker: mosquitto.Broker, user: str, filters: list[str]) -> mqtt.Client:
    """A terminal's client subscribed (SUBACK received) to `filters`; the caller disconnects."""
    c = mqtt.Client(
        CallbackAPIVersion.VERSION2, client_id=f"{user}-sub", protocol=MQTTProtocolVersion.MQTTv5
    )
    c.username_pw_set(user, USERS[user])
    acked = threading.Event()
    c.on_subscribe = lambda *_: acked.set()
    c.connect("127.0.0.1", broker.port)
    c.loop_start()
    c.subscribe([(f, 1) for f in filters])
    assert acked.wait(10)
    return c


def status(terminal: str, seq: int) -> tuple[str, bytes]:
    return f"fleet/v1/t/{terminal}/status", json.dumps({"v": 1, "seq": seq}).encode()


async def collect(r: Receiver, n: int, timeout: float = 10.0, ack: bool = True) -> list[Received]:
    got: list[Received] = []
    deadline = time.monotonic() + timeout
    while len(got) < n:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        try:
            batch = await asyncio.wait_for(r.batch(), left)
        except TimeoutError:
            break
        got += batch
        if ack:
            r.ack_many(batch)
    return got


async def quiet(r: Receiver, seconds: float = 0.3) -> list[Received]:
    """Whatever else arrives within `seconds` (expected: nothing)."""
    return await collect(r, 1, timeout=seconds)


def test_subscription_filters() -> None:
    assert subscriptions() == [
        "fleet/v1/t/+/presence",
        "fleet/v1/t/+/status",
        "fleet/v1/t/+/event",
        "fleet/v1/t/+/reported",
        "fleet/v1/t/+/cmd/result",
    ]
    assert subscriptions(shared=True, group="g")[0] == "$share/g/fleet/v1/t/+/presence"


async def test_messages_from_several_publishers_all_arrive(
    broker: mosquitto.Broker, receivers: list[Receiver]
) -> None:
    r = await started(receivers, config(broker))
    terminals = ["T-0001", "T-0002", "T-0003"]
    kinds = ["presence", "status", "event", "reported", "cmd/result"]
    sent: set[tuple[str, bytes]] = set()
    for t in terminals:
        items = [(f"fleet/v1/t/{t}/{kinds[i % 5]}", b'{"v":1,"i":%d}' % i) for i in range(100)]
        sent |= set(items)
        await asyncio.to_thread(publish, broker, t, items)
    got = await collect(r, len(sent))
    assert {(m.topic, m.payload) for m in got} == sent
    assert len(got) == len(sent)  # and each once
    assert all(m.qos == 1 and m.received_at > 0 for m in got)
    # What the server publishes itself (desired, cmd) is not ingested.
    await asyncio.to_thread(publish, broker, "fleet-server", [("fleet/v1/t/T-0001/desired", b"{}")])
    assert await quiet(r) == []


async def test_shared_subscription_splits_the_stream(
    broker: mosquitto.Broker, receivers: list[Receiver]
) -> None:
    group = f"g{next(_ids)}"
    a = await started(receivers, config(broker, shared=True, group=group))
    b = await started(receivers, config(broker, shared=True, group=group))
    items = [status("T-0001", s) for s in range(200)]
    await asyncio.to_thread(publish, broker, "T-0001", items)
    got_a, got_b = await asyncio.gather(collect(a, 100, 3.0), collect(b, 100, 3.0))
    got_a += await quiet(a)
    got_b += await quiet(b)
    assert got_a and got_b, (len(got_a), len(got_b))
    pa, pb = [m.payload for m in got_a], [m.payload for m in got_b]
    assert not set(pa) & set(pb)
    assert sorted(pa + pb) == sorted(p for _, p in items)


async def test_persistent_session_keeps_messages_while_the_server_is_down(
    broker: mosquitto.Broker, receivers: list[Receiver]
) -> None:
    cfg = config(broker)
    first = await started(receivers, cfg)
    await first.stop()
    items = [status("T-0002", s) for s in range(50)]
    await asyncio.to_thread(publish, broker, "T-0002", items)
    again = await started(receivers, cfg)
    got = await collect(again, 50)
    assert [m.payload for m in got] == [p for _, p in items]  # all, in order


async def test_receive_maximum_holds_back_instead_of_dropping(
    broker: mosquitto.Broker, receivers: list[Receiver]
) -> None:
    """A consumer that does not ack gets Receive Maximum messages, then none until it acks."""
    r = await started(receivers, config(broker, receive_maximum=10))
    items = [status("T-0003", s) for s in range(50)]
    await asyncio.to_thread(publish, broker, "T-0003", items)
    held = await collect(r, 50, timeout=1.0, ack=False)
    assert len(held) == 10
    assert r.ack_many(held) == 10
    rest = await collect(r, 40)
    assert [m.payload for m in held + rest] == [p for _, p in items]


async def test_ack_after_reconnect_is_skipped_and_the_message_comes_again(
    broker: mosquitto.Broker, receivers: list[Receiver]
) -> None:
    r = await started(receivers, config(broker, reconnect_min_s=1, reconnect_max_s=1))
    await asyncio.to_thread(publish, broker, "T-0001", [status("T-0001", 1)])
    (first,) = await collect(r, 1, ack=False)
    # Cut the connection (a network failure); it reconnects to the same session.
    r.drop_connection()
    (again,) = await collect(r, 1, ack=False)
    assert again.payload == first.payload and again.dup
    assert again.connection == first.connection + 1
    assert r.ack(first) is False and r.acks_skipped == 1
    assert r.ack(again) is True
    assert await quiet(r) == []


CHILD = textwrap.dedent(
    """
    import asyncio, sys
    from fleet.server.ingest.receiver import Receiver, ReceiverConfig

    async def main() -> None:
        r = Receiver(ReceiverConfig(host="127.0.0.1", port=int(sys.argv[1]),
                                    username="fleet-server", password=sys.argv[2],
                                    client_id=sys.argv[3]))
        await r.start()
        await r.wait_connected(10)
        print("ready", flush=True)
        m = await r.get()
        print("got", m.payload.decode(), flush=True)  # stored? never: killed before the ack
        await asyncio.sleep(60)

    asyncio.run(main())
    """
)


async def test_server_killed_before_ack_gets_the_message_again(
    broker: mosquitto.Broker, receivers: list[Receiver]
) -> None:
    client_id = f"fleet-killed-{next(_ids)}"
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(broker.port), SERVER_PW, client_id],
        stdout=subprocess.PIPE,
        text=True,
        cwd=root,
        env={**os.environ, "PYTHONPATH": root},
    )
    try:
        assert child.stdout is not None
        line = await asyncio.wait_for(asyncio.to_thread(child.stdout.readline), 20)
        assert line.strip() == "ready"
        await asyncio.to_thread(publish, broker, "T-0002", [status("T-0002", 77)])
        line = await asyncio.wait_for(asyncio.to_thread(child.stdout.readline), 10)
        assert line.strip() == 'got {"v": 1, "seq": 77}'
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    r = await started(receivers, config(broker, client_id))
    (m,) = await collect(r, 1)
    assert m.payload == b'{"v": 1, "seq": 77}' and m.dup


async def test_full_hand_over_queue_blocks_instead_of_dropping(
    broker: mosquitto.Broker, receivers: list[Receiver]
) -> None:
    r = await started(receivers, config(broker, max_queue=5))
    items = [status("T-0001", s) for s in range(50)]
    await asyncio.to_thread(publish, broker, "T-0001", items)
    await asyncio.sleep(0.3)
    # Reading pauses at the bound (TCP backpressure); one read may carry a few more.
    assert 5 <= r.pending() < 50
    got = await collect(r, 50)
    assert [m.payload for m in got] == [p for _, p in items]


async def test_wrong_password_never_connects(
    broker: mosquitto.Broker, receivers: list[Receiver]
) -> None:
    cfg = ReceiverConfig(
        host="127.0.0.1", port=broker.port, username="fleet-server", password="wrong"
    )
    r = Receiver(cfg)
    receivers.append(r)
    await r.start()
    with pytest.raises(TimeoutError):
        await r.wait_connected(0.5)
    assert r.connects == 0 and not r.connected


async def test_retained_presence_only_for_a_new_subscription(
    broker: mosquitto.Broker, receivers: list[Receiver]
) -> None:
    """A reconnect to a live session does not replay every terminal's retained presence."""
    topic = f"fleet/v1/t/T-ret{next(_ids)}/presence"
    pres = b'{"v":1,"online":true,"ts":"2026-11-27T09:30:00Z","agent":"1"}'
    retained = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=MQTTProtocolVersion.MQTTv5)
    retained.username_pw_set("fleet-server", SERVER_PW)
    retained.connect("127.0.0.1", broker.port)
    retained.loop_start()
    try:
        retained.publish(topic, pres, qos=1, retain=True).wait_for_publish(10)
        cfg = config(broker)
        first = await started(receivers, cfg)
        (m,) = await collect(first, 1)
        assert (m.topic, m.payload, m.retain) == (topic, pres, True)
        await first.stop()
        again = await started(receivers, cfg)
        assert await quiet(again) == []
    finally:
        # Clear it: the broker is shared by this module's tests.
        retained.publish(topic, b"", qos=1, retain=True).wait_for_publish(10)
        retained.disconnect()
        retained.loop_stop()


async def test_real_agent_presence_and_reports_through_the_ingest(
    broker: mosquitto.Broker, receivers: list[Receiver], tmp_path: Path
) -> None:
    """The agent's own link (agent/mqtt_link.py) against the presence rule of presence.py: a
    clean stop reads as `clean`, a dropped connection (the broker publishes the Will) as `will`;
    its outbox's status reports validate and dedupe."""
    r = await started(receivers, config(broker))
    tracker = PresenceTracker(hold_s=0)
    seqs = SequenceTracker()
    transitions: list[tuple[bool, str | None]] = []

    async def drain(n: int) -> None:
        for m in await collect(r, n):
            msg = parse(m.topic, m.payload)
            assert not isinstance(msg, Rejection), msg
            if isinstance(msg, Presence):
                got = tracker.presence(msg.terminal, online=msg.online, ts=msg.ts, now=time.time())
            else:
                assert isinstance(msg, Status)
                assert isinstance(seqs.observe(msg.terminal, msg.seq, msg.ts), New)
                got = tracker.alive(msg.terminal, time.time())
            transitions.extend((t.online, t.reason) for t in got)

    cfg = BrokerConfig(
        url=broker.url,
        host="127.0.0.1",
        port=broker.port,
        tls=False,
        username="T-0001",
        password=USERS["T-0001"],
        reconnect_min_s=0.1,
        reconnect_max_s=0.2,
    )
    outbox = Outbox(tmp_path / "outbox.db", 1_000_000)
    topic = report.topic("T-0001", "status")

    def build(seq: int) -> bytes:
        doc = report.status(seq=seq, agent_version="9.9.9", printer=None, reader=None, host={})
        return json.dumps(doc).encode()

    link = MqttLink(terminal_id="T-0001", broker=cfg, outbox=outbox, agent_version="9.9.9")
    link.start()
    try:
        outbox.enqueue("status", topic, build)
        link.wake()
        await drain(2)  # online presence, one status
        # Timestamps have one-second resolution: let the second turn before saying goodbye.
        await asyncio.sleep(1.05)
        await asyncio.to_thread(link.stop, 2.0)
        await drain(1)
        assert transitions == [(True, None), (False, "clean")]

        link = MqttLink(terminal_id="T-0001", broker=cfg, outbox=outbox, agent_version="9.9.9")
        link.start()
        await drain(1)  # online again
        await asyncio.sleep(1.05)  # the Will must be recognised even seconds later
        client = link._client
        sock = client.socket() if client else None
        assert isinstance(sock, socket.socket)
        sock.shutdown(socket.SHUT_RDWR)  # a network failure: no DISCONNECT, the Will goes out
        await drain(2)  # the Will, then online as the link reconnects
        assert transitions[2:] == [(True, None), (False, "will"), (True, None)]
    finally:
        await asyncio.to_thread(link.stop, 1.0)
        outbox.close()
        # Clear the retained presence: the broker is shared by this module's tests.
        await asyncio.to_thread(
            publish, broker, "T-0001", [(report.topic("T-0001", "presence"), b"")], True
        )


async def test_reconnects_after_a_broker_restart(
    broker: mosquitto.Broker, receivers: list[Receiver]
) -> None:
    # Last in the module: the restart drops every session (persistence is off).
    r = await started(receivers, config(broker, reconnect_min_s=1, reconnect_max_s=2))
    broker.stop()
    for _ in range(50):
        if not r.connected:
            break
        await asyncio.sleep(0.05)
    assert not r.connected
    broker.start()
    deadline = time.monotonic() + 15
    while r.connects < 2 and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    await r.wait_connected(10)
    await asyncio.to_thread(publish, broker, "T-0003", [status("T-0003", 9)])
    # Retained presence left by earlier tests may come first (the session is new).
    got = await collect(r, 1)
    while got and got[-1].topic != status("T-0003", 9)[0]:
        got += await collect(r, 1)
    assert got[-1].payload == status("T-0003", 9)[1]


async def test_a_publish_it_cannot_decode_is_handed_over_refused_and_the_link_stays() -> None:
    """Issue 12, poison messages on the wire. Mosquitto never forwards a PUBLISH with a broken
    header or a topic that is not UTF-8, so a scripted broker on a socket sends them (the one
    fake here: it stands for a broker bug or a hostile broker in between). Before, the first
    closed the connection and would come back on every reconnect; now both are handed over
    refused, acknowledged like any other once handled, and the good message between them
    flows on the same connection."""
    from fleet.server.ingest import mqtt_wire as wire

    def publish(topic: bytes, pid: int, props: bytes = b"", payload: bytes = b"{}") -> bytes:
        body = len(topic).to_bytes(2, "big") + topic + pid.to_bytes(2, "big")
        body += wire.varint(len(props)) + props + payload
        return b"\x32" + wire.varint(len(body)) + body

    acks: list[int] = []
    connects = 0
    done = asyncio.Event()

    async def fake_broker(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connects
        decoder = wire.Decoder()
        connects += 1
        await reader.read(4096)  # CONNECT
        writer.write(b"\x20\x03\x00\x00\x00")  # CONNACK, success, no properties
        await reader.read(4096)  # SUBSCRIBE
        writer.write(b"\x90\x04\x00\x01\x00\x01")  # SUBACK: id 1, no properties, QoS 1
        writer.write(
            publish(b"fleet/v1/t/T1/status", 11, props=b"\x7f\x00")
            + publish(b"fleet/v1/t/T1/status", 12)
            + publish(b"fleet/v1/t/T\xff/status", 13)
        )
        while len(acks) < 3:
            data = await reader.read(4096)
            if not data:
                break
            for p in decoder.feed(data):
                if isinstance(p, wire.Packet) and p.type == wire.PUBACK:
                    acks.append(int.from_bytes(p.body[:2], "big"))
        done.set()
        await asyncio.sleep(0.5)  # would a reconnect follow?
        writer.close()

    server = await asyncio.start_server(fake_broker, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    r = Receiver(
        ReceiverConfig(host="127.0.0.1", port=port, username="u", password="p", client_id="x.y")
    )
    await r.start()
    try:
        got: list[Received] = []
        while len(got) < 3:
            got += await asyncio.wait_for(r.batch(), 5)
        assert [m.mid for m in got] == [11, 12, 13]
        assert got[0].refused is not None and got[0].refused.startswith("bad_packet: ")
        assert got[1].refused is None and got[1].payload == b"{}"
        assert got[2].refused == "bad_topic: not UTF-8"
        assert r.ack_many(got) == 3
        await asyncio.wait_for(done.wait(), 5)
        assert acks == [11, 12, 13] and connects == 1
    finally:
        await r.stop()
        server.close()


async def test_a_kiosk_cannot_take_the_replicas_share(
    broker: mosquitto.Broker, receivers: list[Receiver]
) -> None:
    """Issue 13: a terminal that joins a shared group gets its share of the messages, which its
    ACL then refuses to deliver: they vanish. With the replicas' group named from the server's
    secret (Settings.ingest_share_group), a kiosk guessing `fleet` joins a group of its own."""
    group = Settings(dev_mode=True, broker_admin_password="s3cret-" * 5).ingest_share_group
    assert group.startswith("fleet-") and len(group) == 22
    r = await started(receivers, config(broker, shared=True, group=group))
    thief = await asyncio.to_thread(
        subscribe_as, broker, "T-0003", ["$share/fleet/fleet/v1/t/+/status", "$share/fleet/#"]
    )
    try:
        items = [status("T-0001", s) for s in range(100)]
        await asyncio.to_thread(publish, broker, "T-0001", items)
        got = await collect(r, 100, 5.0)
        assert sorted(m.payload for m in got) == sorted(p for _, p in items)
    finally:
        thief.disconnect()
        thief.loop_stop()
