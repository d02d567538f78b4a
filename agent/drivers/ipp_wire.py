"""The IPP/1.1 binary message encoding (RFC 8010 §3), written for the IPP driver.

Only what a status reader and a job submitter need: requests with simple attribute values, and a
strict decoder for any response (collections, out-of-band values, extension tags). The decoder
never trusts a length field: every read is bounds-checked and anything malformed raises
`IppDecodeError`, so garbage from the network cannot surface as IndexError or a hang.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from typing import TypeAlias

# Delimiter tags (RFC 8010 §3.5.1).
OPERATION_ATTRIBUTES = 0x01
JOB_ATTRIBUTES = 0x02
END_OF_ATTRIBUTES = 0x03
PRINTER_ATTRIBUTES = 0x04
UNSUPPORTED_ATTRIBUTES = 0x05

# Value tags (RFC 8010 §3.5.2). 0x10-0x1f are out-of-band: no value, only a meaning.
OUT_OF_BAND_FIRST, OUT_OF_BAND_LAST = 0x10, 0x1F
INTEGER = 0x21
BOOLEAN = 0x22
ENUM = 0x23
OCTET_STRING = 0x30
DATE_TIME = 0x31
RESOLUTION = 0x32
RANGE_OF_INTEGER = 0x33
BEG_COLLECTION = 0x34
TEXT_WITH_LANGUAGE = 0x35
NAME_WITH_LANGUAGE = 0x36
END_COLLECTION = 0x37
TEXT = 0x41
NAME = 0x42
KEYWORD = 0x44
URI = 0x45
URI_SCHEME = 0x46
CHARSET = 0x47
NATURAL_LANGUAGE = 0x48
MIME_MEDIA_TYPE = 0x49
MEMBER_ATTR_NAME = 0x4A
EXTENSION = 0x7F

STRING_TAGS = frozenset({TEXT, NAME, KEYWORD, URI, URI_SCHEME, CHARSET, NATURAL_LANGUAGE,
                         MIME_MEDIA_TYPE, MEMBER_ATTR_NAME})  # fmt: skip

# Operations (RFC 8011 §5.4.15) and the status-code classes (§4.1.6).
PRINT_JOB = 0x0002
CANCEL_JOB = 0x0008
GET_JOB_ATTRIBUTES = 0x0009
GET_PRINTER_ATTRIBUTES = 0x000B

#: Deepest collection nesting accepted; real printers use two or three levels.
MAX_DEPTH = 16

STATUS_NAMES = {
    0x0000: "successful-ok",
    0x0001: "successful-ok-ignored-or-substituted-attributes",
    0x0002: "successful-ok-conflicting-attributes",
    0x0400: "client-error-bad-request",
    0x0401: "client-error-forbidden",
    0x0402: "client-error-not-authenticated",
    0x0403: "client-error-not-authorized",
    0x0404: "client-error-not-possible",
    0x0405: "client-error-timeout",
    0x0406: "client-error-not-found",
    0x040A: "client-error-document-format-not-supported",
    0x040B: "client-error-attributes-or-values-not-supported",
    0x0500: "server-error-internal-error",
    0x0501: "server-error-operation-not-supported",
    0x0503: "server-error-version-not-supported",
    0x0506: "server-error-not-accepting-jobs",
    0x0507: "server-error-busy",
}


class IppDecodeError(ValueError):
    """The bytes are not a well-formed IPP message."""


@dataclass(frozen=True)
class OutOfBand:
    """An out-of-band value (`unknown`, `no-value`, `unsupported`, ...): the tag is all it says."""

    tag: int


IppValue: TypeAlias = (
    "int | bool | str | bytes | datetime | tuple[int, int] | tuple[int, int, int] "
    "| OutOfBand | dict[str, list[IppValue]]"
)
Attributes: TypeAlias = dict[str, list[IppValue]]


@dataclass
class IppMessage:
    version: tuple[int, int]
    #: operation-id in a request, status-code in a response.
    code: int
    request_id: int
    #: (delimiter tag, attributes) in wire order; a tag may repeat (one group per job, ...).
    groups: list[tuple[int, Attributes]] = field(default_factory=list)
    data: bytes = b""

    def group(self, tag: int) -> Attributes:
        """The first group with this delimiter tag, or an empty one."""
        return next((attrs for t, attrs in self.groups if t == tag), {})

    @property
    def status_name(self) -> str:
        return STATUS_NAMES.get(self.code, f"0x{self.code:04x}")


# --- encoding -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Attr:
    """One request attribute: a name, its value tag and its values."""

    name: str
    tag: int
    values: tuple[int | bool | str, ...]


def attr(name: str, tag: int, *values: int | bool | str) -> Attr:
    return Attr(name, tag, values)


def encode_request(
    operation: int,
    request_id: int,
    groups: list[tuple[int, list[Attr]]],
    data: bytes = b"",
    version: tuple[int, int] = (1, 1),
) -> bytes:
    out = bytearray(struct.pack(">BBHI", version[0], version[1], operation, request_id))
    for tag, attrs in groups:
        out.append(tag)
        for a in attrs:
            for i, value in enumerate(a.values):
                # Additional values of a multi-valued attribute have an empty name (§3.1.5).
                _put_value(out, a.tag, a.name if i == 0 else "", value)
    out.append(END_OF_ATTRIBUTES)
    return bytes(out) + data


def _put_value(out: bytearray, tag: int, name: str, value: int | bool | str) -> None:
    raw = _encode_value(tag, value)
    name_raw = name.encode("utf-8")
    out += struct.pack(">BH", tag, len(name_raw)) + name_raw
    out += struct.pack(">H", len(raw)) + raw


def _encode_value(tag: int, value: int | bool | str) -> bytes:
    if tag == BOOLEAN and isinstance(value, bool):
        return b"\x01" if value else b"\x00"
    if tag in (INTEGER, ENUM) and isinstance(value, int) and not isinstance(value, bool):
        return struct.pack(">i", value)
    if tag in STRING_TAGS and isinstance(value, str):
        raw = value.encode("utf-8")
        if len(raw) > 0xFFFF:
            raise ValueError(f"value for tag 0x{tag:02x} is longer than 65535 bytes")
        return raw
    raise ValueError(f"cannot encode {value!r} with value tag 0x{tag:02x}")


# --- decoding -------------------------------------------------------------------------------


class _Reader:
    """A cursor over the message that refuses to read past the end."""

    def __init__(self, buf: bytes) -> None:
        self.buf = buf
        self.pos = 0

    def take(self, n: int, what: str) -> bytes:
        end = self.pos + n
        if end > len(self.buf):
            raise IppDecodeError(
                f"truncated: {what} needs {n} bytes at offset {self.pos}, "
                f"only {len(self.buf) - self.pos} left"
            )
        chunk = self.buf[self.pos : end]
        self.pos = end
        return chunk

    def byte(self, what: str) -> int:
        return self.take(1, what)[0]

    def u16(self, what: str) -> int:
        return int(struct.unpack(">H", self.take(2, what))[0])

    def peek(self) -> int | None:
        return self.buf[self.pos] if self.pos < len(self.buf) else None


def decode_message(buf: bytes) -> IppMessage:
    """Decode a whole IPP request or response; raises IppDecodeError on anything malformed."""
    r = _Reader(buf)
    major, minor = r.byte("version"), r.byte("version")
    if major not in (1, 2):
        raise IppDecodeError(f"not IPP: version {major}.{minor} (first bytes {buf[:8]!r})")
    code = r.u16("status-code")
    request_id = int(struct.unpack(">I", r.take(4, "request-id"))[0])
    msg = IppMessage((major, minor), code, request_id)
    tag = r.byte("delimiter tag")
    while tag != END_OF_ATTRIBUTES:
        if not 0x01 <= tag <= 0x0F:
            raise IppDecodeError(f"expected a delimiter tag at offset {r.pos - 1}, got 0x{tag:02x}")
        attrs: Attributes = {}
        msg.groups.append((tag, attrs))
        tag = _read_group(r, attrs)
    msg.data = buf[r.pos :]
    return msg


def _read_group(r: _Reader, attrs: Attributes) -> int:
    """Read attributes until the next delimiter tag, which it returns."""
    current: list[IppValue] | None = None
    while True:
        tag = r.byte("value tag")
        if tag <= 0x0F:
            return tag
        if tag in (MEMBER_ATTR_NAME, END_COLLECTION):
            raise IppDecodeError(f"collection tag 0x{tag:02x} outside a collection at {r.pos - 1}")
        name, value = _read_value(r, tag, depth=0)
        if name:
            current = attrs.setdefault(name, [])
        elif current is None:
            raise IppDecodeError(f"additional value without an attribute at offset {r.pos}")
        current.append(value)


def _read_value(r: _Reader, tag: int, depth: int) -> tuple[str, IppValue]:
    """Read name and value after a value tag; a collection reads its members too."""
    name = _text(r.take(r.u16("name-length"), "name"), "name")
    raw = r.take(r.u16("value-length"), "value")
    if tag == BEG_COLLECTION:
        return name, _read_collection(r, depth + 1)
    if tag == EXTENSION:
        # RFC 8010 §3.5.2: the real tag is in the value's first four bytes; none is defined.
        return name, raw
    return name, _decode_value(tag, raw)


def _read_collection(r: _Reader, depth: int) -> dict[str, list[IppValue]]:
    """Members are memberAttrName + value(s) pairs until endCollection (RFC 8010 §3.1.6)."""
    if depth > MAX_DEPTH:
        raise IppDecodeError(f"collections nested deeper than {MAX_DEPTH}")
    members: dict[str, list[IppValue]] = {}
    current: list[IppValue] | None = None
    while True:
        tag = r.byte("collection value tag")
        name, value = _read_value(r, tag, depth)
        if name:
            raise IppDecodeError(f"collection member with a name at offset {r.pos}")
        if tag == END_COLLECTION:
            return members
        if tag == MEMBER_ATTR_NAME:
            if not isinstance(value, str) or not value:
                raise IppDecodeError(f"empty member name at offset {r.pos}")
            current = members.setdefault(value, [])
        elif current is None:
            raise IppDecodeError(f"collection value before any member name at offset {r.pos}")
        else:
            current.append(value)


def _decode_value(tag: int, raw: bytes) -> IppValue:
    if OUT_OF_BAND_FIRST <= tag <= OUT_OF_BAND_LAST:
        return OutOfBand(tag)
    if tag in (INTEGER, ENUM):
        return int(struct.unpack(">i", _exact(raw, 4, tag))[0])
    if tag == BOOLEAN:
        return _exact(raw, 1, tag) != b"\x00"
    if tag == RANGE_OF_INTEGER:
        low, high = struct.unpack(">ii", _exact(raw, 8, tag))
        return (int(low), int(high))
    if tag == RESOLUTION:
        x, y, units = struct.unpack(">iib", _exact(raw, 9, tag))
        return (int(x), int(y), int(units))
    if tag == DATE_TIME:
        return _date_time(_exact(raw, 11, tag))
    if tag in (TEXT_WITH_LANGUAGE, NAME_WITH_LANGUAGE):
        return _with_language(raw)
    if tag in STRING_TAGS or 0x40 <= tag <= 0x5F:
        return _text(raw, f"value of tag 0x{tag:02x}")
    # octetString and tags this decoder does not know: keep the bytes.
    return raw


def _exact(raw: bytes, n: int, tag: int) -> bytes:
    if len(raw) != n:
        raise IppDecodeError(f"value tag 0x{tag:02x} needs {n} bytes, got {len(raw)}")
    return raw


def _text(raw: bytes, what: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise IppDecodeError(f"{what} is not UTF-8: {e}") from None


def _with_language(raw: bytes) -> str:
    """textWithLanguage: a 2-byte-length language, then a 2-byte-length text; keep the text."""
    r = _Reader(raw)
    r.take(r.u16("language length"), "language")
    text = _text(r.take(r.u16("text length"), "text"), "text")
    if r.pos != len(raw):
        raise IppDecodeError("textWithLanguage has trailing bytes")
    return text


def _date_time(raw: bytes) -> datetime:
    """RFC 2579 DateAndTime: year, month, day, hour, min, sec, deci-sec, '+'/'-', hours, mins."""
    fields = struct.unpack(">HBBBBBBcBB", raw)
    year, month, day, hour, minute, sec, deci, sign, off_h, off_m = fields
    if sign not in (b"+", b"-"):
        raise IppDecodeError(f"dateTime has a bad UTC direction {sign!r}")
    offset = timedelta(hours=off_h, minutes=off_m) * (1 if sign == b"+" else -1)
    try:
        tz = timezone(offset) if offset else UTC
        return datetime(year, month, day, hour, minute, min(sec, 59), deci * 100_000, tzinfo=tz)
    except ValueError as e:
        raise IppDecodeError(f"dateTime out of range: {e}") from None
