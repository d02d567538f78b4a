"""The MQTT 5 packets a subscribe-only client needs, as bytes in and out (OASIS MQTT 5.0, ch. 3).

Why our own: the ingest only connects, subscribes, receives PUBLISH and sends PUBACK. paho-mqtt
spends about 95 us of Python per received message (packet objects, callbacks, locks, a network
thread competing with the pipeline for the GIL); decoding straight out of the socket buffer in the
event loop costs a few microseconds, and that was the difference between missing and meeting the
ingest throughput target (bench/bench_ingest.py). paho stays the agent's client, and the raw
baseline of the benchmark.

Encoders return complete packets. `Decoder.feed()` takes whatever the socket gave and returns
the complete packets in it; a partial packet waits for the next call. A malformed packet raises
`ProtocolError`, after which the connection must be closed (MQTT 5 4.13).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Final

CONNECT: Final = 1
CONNACK: Final = 2
PUBLISH: Final = 3
PUBACK: Final = 4
SUBSCRIBE: Final = 8
SUBACK: Final = 9
UNSUBSCRIBE: Final = 10
UNSUBACK: Final = 11
PINGREQ: Final = 12
PINGRESP: Final = 13
DISCONNECT: Final = 14

#: Property identifiers used here (MQTT 5 2.2.2.2).
SESSION_EXPIRY_INTERVAL: Final = 0x11
RECEIVE_MAXIMUM: Final = 0x21
MAXIMUM_PACKET_SIZE: Final = 0x27

#: Subscription option "retain handling 1": retained messages only for a new subscription.
RETAIN_SEND_IF_NEW_SUB: Final = 1

#: The largest packet we accept, announced in CONNECT as Maximum Packet Size: a broker must not
#: send us a bigger one (MQTT 5 3.1.2.11.4; it drops the message for us instead). Without that
#: announcement one oversized message made us close the connection, the broker redelivered it,
#: and the ingest was wedged for good (issue 12). Four times the embedded broker's own packet
#: limit, so only a broker configured far looser than ours can hit it.
MAX_PACKET: Final = 2 * 1024 * 1024

PINGREQ_PACKET: Final = b"\xc0\x00"
DISCONNECT_NORMAL: Final = b"\xe0\x00"
#: DISCONNECT, reason Normal, with Session Expiry Interval 0: the broker discards the session.
DISCONNECT_END_SESSION: Final = b"\xe0\x07\x00\x05\x11\x00\x00\x00\x00"

# Bytes each property's value takes, for skipping over them; -1 = varint, -2 = u16-length data,
# -3 = string pair. Identifiers not listed are a protocol error.
_PROPERTY_SIZES: Final = {
    0x01: 1, 0x02: 4, 0x03: -2, 0x08: -2, 0x09: -2, 0x0B: -1, 0x11: 4, 0x12: -2, 0x13: 2,
    0x15: -2, 0x16: -2, 0x17: 1, 0x18: 4, 0x19: 1, 0x1A: -2, 0x1C: -2, 0x1F: -2, 0x21: 2,
    0x22: 2, 0x23: 2, 0x24: 1, 0x25: 1, 0x26: -3, 0x27: 4, 0x28: 1, 0x29: 1, 0x2A: 1,
}  # fmt: skip


class ProtocolError(Exception):
    """The peer sent something that is not MQTT 5: close the connection."""


@dataclass(slots=True)  # not frozen: a frozen __init__ costs a microsecond per message
class Publish:
    topic: bytes
    payload: bytes
    qos: int
    retain: bool
    dup: bool
    packet_id: int


@dataclass(slots=True)
class BadPublish:
    """A PUBLISH whose framing is sound but whose header is not valid MQTT 5.

    The connection stays up: the receiver acknowledges it and the ingest dead-letters it.
    Closing the connection instead (MQTT's advice) would have the broker redeliver the same
    message on the next connection, for ever: one poison message would stop the ingest.
    """

    topic: bytes
    qos: int
    packet_id: int
    problem: str


@dataclass(frozen=True, slots=True)
class Packet:
    """Any packet but PUBLISH: its type, flags and the bytes after the fixed header."""

    type: int
    flags: int
    body: bytes


# -- encoding ----------------------------------------------------------------------------------


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        n, digit = divmod(n, 128)
        out.append(digit | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _string(s: str | bytes) -> bytes:
    data = s.encode() if isinstance(s, str) else s
    if len(data) > 0xFFFF:
        raise ValueError("MQTT strings are at most 65,535 bytes")
    return struct.pack("!H", len(data)) + data


def _packet(first_byte: int, body: bytes) -> bytes:
    return bytes([first_byte]) + varint(len(body)) + body


def connect(
    client_id: str,
    username: str,
    password: str,
    keepalive_s: int,
    clean_start: bool,
    session_expiry_s: int,
    receive_maximum: int,
    maximum_packet_size: int = MAX_PACKET,
) -> bytes:
    flags = 0x80 | 0x40 | (0x02 if clean_start else 0)
    props = (
        bytes([SESSION_EXPIRY_INTERVAL])
        + struct.pack("!I", session_expiry_s)
        + bytes([RECEIVE_MAXIMUM])
        + struct.pack("!H", receive_maximum)
        + bytes([MAXIMUM_PACKET_SIZE])
        + struct.pack("!I", maximum_packet_size)
    )
    body = (
        _string("MQTT")
        + bytes([5, flags])
        + struct.pack("!H", keepalive_s)
        + varint(len(props))
        + props
        + _string(client_id)
        + _string(username)
        + _string(password)
    )
    return _packet(CONNECT << 4, body)


def subscribe(packet_id: int, filters: list[str], qos: int = 1, retain_handling: int = 0) -> bytes:
    options = bytes([qos | (retain_handling << 4)])
    body = struct.pack("!H", packet_id) + b"\x00" + b"".join(_string(f) + options for f in filters)
    return _packet((SUBSCRIBE << 4) | 0x02, body)


def unsubscribe(packet_id: int, filters: list[str]) -> bytes:
    body = struct.pack("!H", packet_id) + b"\x00" + b"".join(_string(f) for f in filters)
    return _packet((UNSUBSCRIBE << 4) | 0x02, body)


def puback(packet_id: int) -> bytes:
    """PUBACK, reason Success (omitted, MQTT 5 3.4.2.1)."""
    return b"\x40\x02" + packet_id.to_bytes(2, "big")


# -- decoding ----------------------------------------------------------------------------------


def _skip_properties(data: bytes, pos: int, end: int) -> None:
    while pos < end:
        ident = data[pos]
        size = _PROPERTY_SIZES.get(ident)
        pos += 1
        if size is None:
            raise ProtocolError(f"unknown property 0x{ident:02x}")
        if size == -1:
            _, pos = _read_varint(data, pos, end)
        elif size == -2:
            pos += 2 + int.from_bytes(data[pos : pos + 2], "big")
        elif size == -3:
            for _ in range(2):
                pos += 2 + int.from_bytes(data[pos : pos + 2], "big")
        else:
            pos += size
    if pos != end:
        raise ProtocolError("properties overrun their length")


def _read_varint(data: bytes | bytearray, pos: int, end: int) -> tuple[int, int]:
    value = shift = 0
    for _ in range(4):
        if pos >= end:
            raise ProtocolError("truncated variable byte integer")
        b = data[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        if not b & 0x80:
            return value, pos
        shift += 7
    raise ProtocolError("variable byte integer longer than 4 bytes")


def parse_publish(flags: int, body: bytes) -> Publish:
    qos = (flags >> 1) & 3
    if qos == 3:
        raise ProtocolError("PUBLISH with QoS 3")
    end = len(body)
    if end < 2:
        raise ProtocolError("PUBLISH too short")
    tlen = int.from_bytes(body[0:2], "big")
    pos = 2 + tlen
    topic = body[2:pos]
    packet_id = 0
    if qos:
        packet_id = int.from_bytes(body[pos : pos + 2], "big")
        pos += 2
    plen, pos = _read_varint(body, pos, end)
    if plen:
        _skip_properties(body, pos, pos + plen)
        pos += plen
    if pos > end:
        raise ProtocolError("PUBLISH header overruns the packet")
    return Publish(
        topic=topic,
        payload=body[pos:],
        qos=qos,
        retain=bool(flags & 1),
        dup=bool(flags & 8),
        packet_id=packet_id,
    )


def _bad_publish(flags: int, body: bytes, problem: str) -> BadPublish:
    """What can be read of a PUBLISH that `parse_publish` refused; ProtocolError when not even
    its packet id can be (then nothing can acknowledge it, and the connection must go)."""
    qos = (flags >> 1) & 3
    if qos == 3 or len(body) < 2:
        raise ProtocolError(problem)
    tlen = int.from_bytes(body[0:2], "big")
    if qos and len(body) < 2 + tlen + 2:
        raise ProtocolError(problem)
    packet_id = int.from_bytes(body[2 + tlen : 4 + tlen], "big") if qos else 0
    return BadPublish(body[2 : 2 + tlen], qos, packet_id, problem)


def connack(body: bytes) -> tuple[bool, int]:
    """(session present, reason code)."""
    if len(body) < 2:
        raise ProtocolError("CONNACK too short")
    return bool(body[0] & 1), body[1]


def suback_reasons(body: bytes) -> list[int]:
    if len(body) < 3:
        raise ProtocolError("SUBACK too short")
    plen, pos = _read_varint(body, 2, len(body))
    return list(body[pos + plen :])


class Decoder:
    """Splits a byte stream into packets."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[Publish | BadPublish | Packet]:
        buf = self._buf
        buf += data
        out: list[Publish | BadPublish | Packet] = []
        pos, n = 0, len(buf)
        while n - pos >= 2:
            first = buf[pos]
            # Remaining length: the common one-byte and two-byte cases inline, for speed.
            b = buf[pos + 1]
            if b < 0x80:
                length, start = b, pos + 2
            else:
                try:
                    length, start = _read_varint(buf, pos + 1, n)
                except ProtocolError:
                    if n - pos < 5:
                        break  # the length itself is still arriving
                    raise
            if length > MAX_PACKET:
                raise ProtocolError(f"packet of {length} bytes is over {MAX_PACKET}")
            end = start + length
            if end > n:
                break
            kind = first >> 4
            body = bytes(buf[start:end])
            if kind == PUBLISH:
                try:
                    out.append(parse_publish(first & 0x0F, body))
                except ProtocolError as e:
                    out.append(_bad_publish(first & 0x0F, body, str(e)))
            elif kind in (CONNACK, SUBACK, UNSUBACK, PINGRESP, DISCONNECT, PUBACK):
                out.append(Packet(kind, first & 0x0F, body))
            else:
                raise ProtocolError(f"unexpected packet type {kind} from the broker")
            pos = end
        if pos:
            del buf[:pos]
        return out
