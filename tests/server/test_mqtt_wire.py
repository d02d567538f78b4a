"""The ingest's MQTT 5 codec: packets split anywhere still decode, malformed ones are refused,
and what we encode is what paho (an independent implementation) decodes."""

from __future__ import annotations

import contextlib
import random

import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from fleet.server.ingest import mqtt_wire as wire


def publish_packet(
    topic: bytes, payload: bytes, qos: int = 1, pid: int = 7, props: bytes = b"", flags: int = 0
) -> bytes:
    body = len(topic).to_bytes(2, "big") + topic
    if qos:
        body += pid.to_bytes(2, "big")
    body += wire.varint(len(props)) + props + payload
    return bytes([0x30 | flags | (qos << 1)]) + wire.varint(len(body)) + body


def test_varint_round_trip_at_the_boundaries() -> None:
    for n in (0, 127, 128, 16_383, 16_384, 2_097_151, 2_097_152, 268_435_455):
        encoded = wire.varint(n)
        assert wire._read_varint(encoded, 0, len(encoded)) == (n, len(encoded))
    with pytest.raises(wire.ProtocolError):
        wire._read_varint(b"\xff\xff\xff\xff\x01", 0, 5)


def test_publish_split_at_every_byte_decodes_once() -> None:
    # A user property and a message expiry to skip, a 300-byte payload (2-byte length).
    props = b"\x26" + b"\x00\x01k" + b"\x00\x01v" + b"\x02\x00\x00\x00\x3c"
    packets = [
        publish_packet(b"fleet/v1/t/T-1/status", b"x" * 300, props=props),
        publish_packet(b"fleet/v1/t/T-2/event", b"{}", qos=0, flags=0x01),
        b"\xd0\x00",  # PINGRESP
        publish_packet(b"fleet/v1/t/T-3/presence", b"", pid=65535, flags=0x08),
    ]
    stream = b"".join(packets)
    for cut in range(1, len(stream)):
        d = wire.Decoder()
        got = d.feed(stream[:cut]) + d.feed(stream[cut:])
        assert len(got) == 4, cut
        a, b, ping, c = got
        assert isinstance(a, wire.Publish) and isinstance(b, wire.Publish)
        assert isinstance(c, wire.Publish) and isinstance(ping, wire.Packet)
        assert (a.topic, a.payload, a.qos, a.packet_id) == (
            b"fleet/v1/t/T-1/status",
            b"x" * 300,
            1,
            7,
        )
        assert (b.qos, b.retain, b.payload) == (0, True, b"{}")
        assert (c.dup, c.packet_id, c.payload) == (True, 65535, b"")
        assert ping.type == wire.PINGRESP


@pytest.mark.parametrize(
    "packet",
    [
        b"\x36\x05\x00\x01a\x00\x01",  # QoS 3
        b"\x30\x01\x00",  # too short for a topic length
        b"\x32\x03\x00\x01t",  # QoS 1 without room for a packet id: nothing could ack it
        b"\x10\x00",  # CONNECT from a broker
        b"\x30\xff\xff\xff\xff\x01",  # remaining length of five bytes
    ],
)
def test_malformed_packets_are_protocol_errors(packet: bytes) -> None:
    with pytest.raises(wire.ProtocolError):
        wire.Decoder().feed(packet)


@pytest.mark.parametrize(
    ("props", "problem"),
    [(b"\x7f\x00", "unknown property"), (b"\x02\x00", "overrun")],
)
def test_a_publish_with_a_broken_header_is_handed_over_not_fatal(
    props: bytes, problem: str
) -> None:
    """Issue 12: closing the connection would have the broker redeliver it for ever. It comes
    out as a BadPublish with its packet id, so the receiver can acknowledge it, and the
    packets after it still decode."""
    bad = publish_packet(b"fleet/v1/t/T1/status", b"p", props=props)
    good = publish_packet(b"fleet/v1/t/T1/status", b"{}")
    out = wire.Decoder().feed(bad + good)
    assert isinstance(out[0], wire.BadPublish) and problem in out[0].problem
    assert (out[0].topic, out[0].qos, out[0].packet_id) == (b"fleet/v1/t/T1/status", 1, 7)
    assert isinstance(out[1], wire.Publish) and out[1].payload == b"{}"


def test_connect_announces_the_largest_packet_we_take() -> None:
    pkt = wire.connect("fleet-server.ingest", "u", "p", 30, False, 3600, 1000)
    assert bytes([wire.MAXIMUM_PACKET_SIZE]) + wire.MAX_PACKET.to_bytes(4, "big") in pkt


def test_oversized_packet_is_refused_before_it_is_buffered() -> None:
    with pytest.raises(wire.ProtocolError, match="over"):
        wire.Decoder().feed(b"\x30" + wire.varint(wire.MAX_PACKET + 1))


def test_random_garbage_never_raises_anything_but_protocol_error() -> None:
    rng = random.Random(5)
    for _ in range(3000):
        d = wire.Decoder()
        data = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 64)))
        with contextlib.suppress(wire.ProtocolError):
            d.feed(data)


def test_connect_and_subscribe_decode_with_paho() -> None:
    """paho's own property decoder reads our CONNECT properties back."""
    pkt = wire.connect("fleet-server", "u", "p", 30, False, 3600, 1000)
    assert pkt[0] == 0x10
    length, pos = wire._read_varint(pkt, 1, len(pkt))
    body = pkt[pos:]
    assert len(body) == length
    assert body[:7] == b"\x00\x04MQTT\x05" and body[7] == 0xC0  # user+password, no clean start
    props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    _, used = props.unpack(body[10:])  # type: ignore[no-untyped-call]
    assert getattr(props, "SessionExpiryInterval") == 3600  # noqa: B009
    assert getattr(props, "ReceiveMaximum") == 1000  # noqa: B009
    assert body[10 + used :] == b"\x00\x0cfleet-server\x00\x01u\x00\x01p"
    sub = wire.subscribe(1, ["a/+", "$share/g/b"], qos=1, retain_handling=1)
    assert sub == b"\x82\x16\x00\x01\x00\x00\x03a/+\x11\x00\x0a$share/g/b\x11"
    assert wire.puback(0x1234) == b"\x40\x02\x12\x34"
