"""The IPP binary encoding (RFC 8010) on hand-built bytes: what we send, what we accept, and that
nothing malformed gets through as anything but IppDecodeError."""

from __future__ import annotations

import contextlib
import random
from datetime import datetime, timedelta, timezone

import pytest

from agent.drivers import ipp_wire as w

GET_PRINTER_ATTRIBUTES_REQUEST = (
    b"\x01\x01"  # version 1.1
    b"\x00\x0b"  # Get-Printer-Attributes
    b"\x00\x00\x00\x07"  # request-id 7
    b"\x01"  # operation-attributes-tag
    b"\x47\x00\x12attributes-charset\x00\x05utf-8"
    b"\x48\x00\x1battributes-natural-language\x00\x02en"
    b"\x45\x00\x0bprinter-uri\x00\x19ipp://localhost/ipp/print"
    b"\x44\x00\x14requested-attributes\x00\x0dprinter-state"
    b"\x44\x00\x00\x00\x15printer-state-reasons"  # additional value: empty name
    b"\x03"  # end-of-attributes-tag
)

RESPONSE = (
    b"\x02\x00"  # version 2.0
    b"\x00\x00"  # successful-ok
    b"\x00\x00\x00\x2a"  # request-id 42
    b"\x01"
    b"\x47\x00\x12attributes-charset\x00\x05utf-8"
    b"\x04"  # printer-attributes-tag
    b"\x23\x00\x0dprinter-state\x00\x04\x00\x00\x00\x03"
    b"\x44\x00\x15printer-state-reasons\x00\x10media-low-report"
    b"\x44\x00\x00\x00\x10toner-low-report"
    b"\x34\x00\x11media-col-default\x00\x00"
    b"\x4a\x00\x00\x00\x0cmedia-source"
    b"\x44\x00\x00\x00\x04main"
    b"\x4a\x00\x00\x00\x0amedia-size"
    b"\x34\x00\x00\x00\x00"
    b"\x4a\x00\x00\x00\x0bx-dimension"
    b"\x21\x00\x00\x00\x04\x00\x00\x52\x08"
    b"\x37\x00\x00\x00\x00"
    b"\x37\x00\x00\x00\x00"
    b"\x13\x00\x0bmedia-ready\x00\x00"
    b"\x35\x00\x0cprinter-info\x00\x0b\x00\x02en\x00\x05Kiosk"
    b"\x31\x00\x14printer-current-time\x00\x0b\x07\xea\x0b\x1b\x09\x1e\x00\x05+\x08\x00"
    b"\x33\x00\x10copies-supported\x00\x08\x00\x00\x00\x01\x00\x00\x03\xe7"
    b"\x32\x00\x1aprinter-resolution-default\x00\x09\x00\x00\x02\x58\x00\x00\x02\x58\x03"
    b"\x22\x00\x0fcolor-supported\x00\x01\x00"
    b"\x30\x00\x0eprinter-supply\x00\x03a=1"
    b"\x7f\x00\x03ext\x00\x08\x40\x00\x00\x01abcd"
    b"\x02"  # job-attributes-tag: a second group
    b"\x21\x00\x06job-id\x00\x04\x00\x00\x00\x05"
    b"\x03"
    b"DATA"
)


def test_encode_get_printer_attributes() -> None:
    body = w.encode_request(
        w.GET_PRINTER_ATTRIBUTES,
        7,
        [
            (
                w.OPERATION_ATTRIBUTES,
                [
                    w.attr("attributes-charset", w.CHARSET, "utf-8"),
                    w.attr("attributes-natural-language", w.NATURAL_LANGUAGE, "en"),
                    w.attr("printer-uri", w.URI, "ipp://localhost/ipp/print"),
                    w.attr(
                        "requested-attributes", w.KEYWORD, "printer-state", "printer-state-reasons"
                    ),
                ],
            )
        ],
    )
    assert body == GET_PRINTER_ATTRIBUTES_REQUEST


def test_encode_integers_booleans_and_data() -> None:
    body = w.encode_request(
        w.PRINT_JOB,
        1,
        [(w.OPERATION_ATTRIBUTES, [w.attr("job-id", w.INTEGER, -2), w.attr("b", w.BOOLEAN, True)])],
        data=b"%PDF",
        version=(2, 0),
    )
    assert body == (
        b"\x02\x00\x00\x02\x00\x00\x00\x01\x01"
        b"\x21\x00\x06job-id\x00\x04\xff\xff\xff\xfe"
        b"\x22\x00\x01b\x00\x01\x01"
        b"\x03%PDF"
    )


@pytest.mark.parametrize(
    "tag, value", [(w.INTEGER, "3"), (w.KEYWORD, 3), (w.BOOLEAN, 1), (w.INTEGER, True)]
)
def test_encode_refuses_mismatched_values(tag: int, value: int | str) -> None:
    with pytest.raises(ValueError, match="cannot encode"):
        w.encode_request(1, 1, [(w.OPERATION_ATTRIBUTES, [w.attr("x", tag, value)])])


def test_decode_every_value_type() -> None:
    msg = w.decode_message(RESPONSE)
    assert (msg.version, msg.code, msg.request_id) == ((2, 0), 0, 42)
    assert msg.status_name == "successful-ok"
    assert [tag for tag, _ in msg.groups] == [1, 4, 2]
    printer = msg.group(w.PRINTER_ATTRIBUTES)
    assert printer["printer-state"] == [3]
    assert printer["printer-state-reasons"] == ["media-low-report", "toner-low-report"]
    assert printer["media-col-default"] == [
        {"media-source": ["main"], "media-size": [{"x-dimension": [21000]}]}
    ]
    assert printer["media-ready"] == [w.OutOfBand(0x13)]
    assert printer["printer-info"] == ["Kiosk"]
    cst = timezone(timedelta(hours=8))
    assert printer["printer-current-time"] == [datetime(2026, 11, 27, 9, 30, 0, 500_000, cst)]
    assert printer["copies-supported"] == [(1, 999)]
    assert printer["printer-resolution-default"] == [(600, 600, 3)]
    assert printer["color-supported"] == [False]
    assert printer["printer-supply"] == [b"a=1"]
    assert printer["ext"] == [b"\x40\x00\x00\x01abcd"]
    assert msg.group(w.JOB_ATTRIBUTES) == {"job-id": [5]}
    assert msg.group(w.UNSUPPORTED_ATTRIBUTES) == {}
    assert msg.data == b"DATA"


def test_round_trip_of_our_request() -> None:
    msg = w.decode_message(GET_PRINTER_ATTRIBUTES_REQUEST + b"payload")
    ops = msg.group(w.OPERATION_ATTRIBUTES)
    assert ops["requested-attributes"] == ["printer-state", "printer-state-reasons"]
    assert (msg.code, msg.request_id, msg.data) == (w.GET_PRINTER_ATTRIBUTES, 7, b"payload")


def test_every_truncation_is_a_decode_error() -> None:
    end = RESPONSE.rindex(b"\x03DATA")
    for cut in range(end + 1):  # everything before the end-of-attributes tag
        with pytest.raises(w.IppDecodeError):
            w.decode_message(RESPONSE[:cut])


@pytest.mark.parametrize(
    "raw, message",
    [
        (b"HTTP/1.1 200 OK\r\n", "not IPP: version 72.84"),
        (b"\x01\x01\x00\x00\x00\x00\x00\x01\x20", "expected a delimiter tag"),
        (b"\x01\x01\x00\x00\x00\x00\x00\x01\x04\x44\x00\x00\x00\x01x\x03", "without an attribute"),
        (b"\x01\x01\x00\x00\x00\x00\x00\x01\x04\x21\x00\x01n\x00\x02\x00\x01\x03", "needs 4 bytes"),
        (b"\x01\x01\x00\x00\x00\x00\x00\x01\x04\x44\x00\x01n\x00\x01\xff\x03", "not UTF-8"),
        (b"\x01\x01\x00\x00\x00\x00\x00\x01\x04\x44\x00\x01n\xff\xff\x03", "truncated"),
        (b"\x01\x01\x00\x00\x00\x00\x00\x01\x04\x37\x00\x00\x00\x00\x03", "outside a collection"),
        (
            b"\x01\x01\x00\x00\x00\x00\x00\x01\x04\x34\x00\x01c\x00\x00\x44\x00\x00\x00\x01x\x03",
            "before any member name",
        ),
        (
            b"\x01\x01\x00\x00\x00\x00\x00\x01\x04\x31\x00\x01d\x00\x0b"
            b"\x07\xea\x0d\x01\x00\x00\x00\x00+\x00\x00\x03",
            "dateTime out of range",
        ),
    ],
    ids=["http", "group", "orphan", "short-int", "utf8", "length", "end-coll", "member", "date"],
)  # fmt: skip
def test_malformed(raw: bytes, message: str) -> None:
    with pytest.raises(w.IppDecodeError, match=message):
        w.decode_message(raw)


def test_deep_nesting_is_refused() -> None:
    depth = w.MAX_DEPTH + 2
    nested = b"\x34\x00\x01c\x00\x00" + b"\x4a\x00\x00\x00\x01m\x34\x00\x00\x00\x00" * depth
    raw = b"\x01\x01\x00\x00\x00\x00\x00\x01\x04" + nested
    with pytest.raises(w.IppDecodeError, match="nested deeper"):
        w.decode_message(raw)


def test_random_bytes_only_raise_decode_errors() -> None:
    rng = random.Random(8010)
    for _ in range(3000):
        raw = bytearray(RESPONSE)
        for _ in range(rng.randint(1, 6)):
            raw[rng.randrange(len(raw))] = rng.randrange(256)
        with contextlib.suppress(w.IppDecodeError):
            w.decode_message(bytes(raw))
    for _ in range(1000):
        noise = bytes(rng.randrange(256) for _ in range(rng.randint(0, 64)))
        with contextlib.suppress(w.IppDecodeError):
            w.decode_message(b"\x01\x01" + noise)
