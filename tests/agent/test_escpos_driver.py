"""The ESC/POS driver against the DLE EOT simulator, over TCP and over a real pty serial line."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest

from agent.drivers.base import DriverError, PaperLevel, PrinterState, PrinterStatus
from agent.drivers.escpos import (
    EscPosPrinter,
    RealTimeStatus,
    SerialSettings,
    check_status_byte,
    decode,
    parse_serial,
)
from tests.agent.escpos_sim import Behaviour, SerialPrinterSim, SimState, TcpPrinterSim
from tests.services.ports import free_port

TIMEOUT_S = 0.3
#: Scheduling slack for "the read ends within its timeout" on a loaded two-core machine.
SLACK_S = 0.7


@pytest.fixture
def tcp_sim() -> Iterator[TcpPrinterSim]:
    sim = TcpPrinterSim()
    yield sim
    sim.close()


@pytest.fixture
def serial_sim() -> Iterator[SerialPrinterSim]:
    sim = SerialPrinterSim()
    yield sim
    sim.close()


def read_tcp(sim: TcpPrinterSim, **kwargs: Any) -> PrinterStatus:
    return EscPosPrinter(sim.address, timeout_s=TIMEOUT_S, **kwargs).read()


def assert_offline_unknown(status: PrinterStatus) -> None:
    """What silence must look like: offline, paper unknown, and never "no paper"."""
    assert status.state == "offline"
    assert status.reasons == ("offline",)
    assert status.paper is None
    assert "media-empty" not in status.reasons


def timed(fn: Any) -> tuple[Any, float]:
    start = time.monotonic()
    result = fn()
    return result, time.monotonic() - start


# --- the mapping, end to end over TCP -----------------------------------------------------------

UNKNOWN = PaperLevel()
EMPTY = PaperLevel(level_pct=0, sheets_left=0)

MAPPINGS: list[tuple[str, dict[str, Any], PrinterState, tuple[str, ...], PaperLevel]] = [
    ("ready", {}, "idle", (), UNKNOWN),
    ("near end", {"paper": "near_end"}, "idle", ("media-low",), UNKNOWN),
    ("paper end", {"paper": "end"}, "stopped", ("media-empty",), EMPTY),
    ("cover open", {"cover_open": True}, "stopped", ("cover-open",), UNKNOWN),
    ("autocutter error", {"cutter_error": True}, "stopped", ("media-jam",), UNKNOWN),
    ("unrecoverable error", {"unrecoverable_error": True}, "stopped", ("other",), UNKNOWN),
    ("head overheat", {"auto_recoverable_error": True}, "stopped", ("other",), UNKNOWN),
    ("waiting for recovery", {"waiting_online_recovery": True}, "stopped", ("offline",), UNKNOWN),
    ("feed button", {"feed_button": True}, "stopped", ("offline",), UNKNOWN),
    (
        "near-end stop (ESC c 4)",
        {"paper": "near_end", "stop_at_near_end": True},
        "stopped",
        ("media-empty",),
        UNKNOWN,
    ),
    (
        "cover open, paper near end",
        {"cover_open": True, "paper": "near_end"},
        "stopped",
        ("cover-open", "media-low"),
        UNKNOWN,
    ),
    (
        "everything at once",
        {"cover_open": True, "paper": "end", "cutter_error": True, "unrecoverable_error": True},
        "stopped",
        ("cover-open", "media-empty", "media-jam", "other"),
        EMPTY,
    ),
]


@pytest.mark.parametrize(
    ("state", "expected_state", "reasons", "paper"),
    [m[1:] for m in MAPPINGS],
    ids=[m[0] for m in MAPPINGS],
)
def test_mapping_over_tcp(
    tcp_sim: TcpPrinterSim,
    state: dict[str, Any],
    expected_state: PrinterState,
    reasons: tuple[str, ...],
    paper: PaperLevel,
) -> None:
    tcp_sim.state = SimState(**state)
    status = read_tcp(tcp_sim)
    assert status == PrinterStatus("escpos", expected_state, reasons, paper)
    assert tcp_sim.requests == [1, 2, 3, 4]


def test_capacity_is_passed_through_never_invented(tcp_sim: TcpPrinterSim) -> None:
    assert read_tcp(tcp_sim, capacity=250).paper == PaperLevel(capacity=250)
    tcp_sim.state.paper = "end"
    assert read_tcp(tcp_sim, capacity=250).paper == PaperLevel(0, 0, 250)


def test_each_read_sees_the_current_state(tcp_sim: TcpPrinterSim) -> None:
    printer = EscPosPrinter(tcp_sim.address, timeout_s=TIMEOUT_S)
    assert printer.read().state == "idle"
    tcp_sim.state.cover_open = True
    assert printer.read().reasons == ("cover-open",)
    tcp_sim.state.cover_open = False
    assert printer.read().state == "idle"
    printer.close()
    printer.close()


def test_to_json_matches_the_status_report(tcp_sim: TcpPrinterSim) -> None:
    tcp_sim.state.paper = "near_end"
    assert read_tcp(tcp_sim, capacity=300).to_json() == {
        "driver": "escpos",
        "state": "idle",
        "reasons": ["media-low"],
        "paper": {"level_pct": None, "sheets_left": None, "capacity": 300, "estimated": False},
        "toner_pct": None,
        "pages_total": None,
    }


# --- the decoder on bytes straight from the Epson tables ----------------------------------------


@pytest.mark.parametrize(
    ("raw", "state", "reasons"),
    [
        ((0x12, 0x12, 0x12, 0x12), "idle", ()),
        # Out of paper as a TM printer answers: offline, paper-end stop, both roll sensors.
        ((0x1A, 0x32, 0x12, 0x7E), "stopped", ("media-empty",)),
        # One sensor per bit (e.g. two near-end sensors): either bit counts.
        ((0x12, 0x12, 0x12, 0x16), "idle", ("media-low",)),
        ((0x12, 0x12, 0x12, 0x32), "stopped", ("media-empty",)),
        # n=2 says "error" but n=3 names no cause we read (bit 2 differs between models).
        ((0x1A, 0x52, 0x16, 0x12), "stopped", ("other",)),
        # Undefined bits (n=1 bit 2: drawer pin; bit 6: feed button) change nothing.
        ((0x16, 0x12, 0x12, 0x12), "idle", ()),
    ],
)
def test_decode_epson_bytes(
    raw: tuple[int, int, int, int], state: str, reasons: tuple[str, ...]
) -> None:
    status = decode(RealTimeStatus(*raw))
    assert (status.state, status.reasons) == (state, reasons)


@pytest.mark.parametrize("value", [0x00, 0xFF, 0x10, 0x02, 0x13, 0x92, 0x41])
def test_a_byte_breaking_the_fixed_bits_is_garbage(value: int) -> None:
    with pytest.raises(DriverError, match="garbage"):
        check_status_byte(1, value)


def test_every_byte_keeping_the_fixed_bits_is_accepted() -> None:
    valid = [v for v in range(256) if v & 0x93 == 0x12]
    assert len(valid) == 16
    for v in valid:
        assert check_status_byte(4, v) == v
        decode(RealTimeStatus(v, v, v, v))  # never raises


# --- failure modes over TCP ----------------------------------------------------------------------


def test_printer_gone_is_a_driver_error(tcp_sim: TcpPrinterSim) -> None:
    tcp_sim.close()
    with pytest.raises(DriverError, match="cannot connect"):
        read_tcp(tcp_sim)


def test_nothing_listening_is_a_driver_error() -> None:
    with pytest.raises(DriverError) as err:
        EscPosPrinter(f"tcp://127.0.0.1:{free_port()}", timeout_s=TIMEOUT_S).read()
    assert err.value.driver == "escpos"


def test_silent_printer_is_offline_and_paper_unknown(tcp_sim: TcpPrinterSim) -> None:
    tcp_sim.state.paper = "end"  # what it would say, had it answered
    tcp_sim.behaviour = Behaviour(mode="silent")
    status, elapsed = timed(lambda: read_tcp(tcp_sim))
    assert_offline_unknown(status)
    assert TIMEOUT_S * 0.9 <= elapsed < TIMEOUT_S + SLACK_S
    assert tcp_sim.requests == [1]  # it gave up at the first unanswered request


@pytest.mark.parametrize("answered", [1, 2, 3])
def test_partial_answers_then_silence_are_offline(tcp_sim: TcpPrinterSim, answered: int) -> None:
    tcp_sim.state.paper = "end"
    tcp_sim.behaviour = Behaviour(answer_limit=answered, after_limit="silent")
    status, elapsed = timed(lambda: read_tcp(tcp_sim))
    assert_offline_unknown(status)
    assert elapsed < TIMEOUT_S + SLACK_S


def test_partial_answers_then_hang_up_is_a_driver_error(tcp_sim: TcpPrinterSim) -> None:
    tcp_sim.behaviour = Behaviour(answer_limit=2, after_limit="close")
    with pytest.raises(DriverError, match="closed the connection"):
        read_tcp(tcp_sim)


def test_hang_up_on_first_request_is_a_driver_error(tcp_sim: TcpPrinterSim) -> None:
    tcp_sim.behaviour = Behaviour(mode="close")
    with pytest.raises(DriverError, match="closed the connection"):
        read_tcp(tcp_sim)


def test_garbage_is_a_driver_error(tcp_sim: TcpPrinterSim) -> None:
    tcp_sim.behaviour = Behaviour(mode="garbage")
    with pytest.raises(DriverError, match="garbage answer 0xff to DLE EOT 1"):
        read_tcp(tcp_sim)


def test_garbage_in_the_last_answer_is_a_driver_error(tcp_sim: TcpPrinterSim) -> None:
    tcp_sim.behaviour = Behaviour(answer_limit=3, after_limit="garbage")
    with pytest.raises(DriverError, match="DLE EOT 4"):
        read_tcp(tcp_sim)


def test_stray_bytes_are_drained_before_each_request(tcp_sim: TcpPrinterSim) -> None:
    """Each answer is followed by a byte that, read as the next answer, would mean cover open."""
    tcp_sim.behaviour = Behaviour(extra=True)
    status = read_tcp(tcp_sim)
    assert (status.state, status.reasons) == ("idle", ())


def test_connect_that_never_completes_is_offline() -> None:
    """A listener whose accept queue is full drops the SYN: the connect itself goes unanswered."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(0)
    port = server.getsockname()[1]
    queued = [socket.socket() for _ in range(4)]
    for s in queued:
        s.setblocking(False)
        s.connect_ex(("127.0.0.1", port))
    try:
        status, elapsed = timed(
            lambda: EscPosPrinter(f"tcp://127.0.0.1:{port}", timeout_s=TIMEOUT_S).read()
        )
        assert_offline_unknown(status)
        assert elapsed < TIMEOUT_S + SLACK_S
    finally:
        for s in [*queued, server]:
            s.close()


# --- the serial path, over a real pty -----------------------------------------------------------


@pytest.mark.parametrize(
    ("state", "expected_state", "reasons", "paper"),
    [m[1:] for m in MAPPINGS[:5]],
    ids=[m[0] for m in MAPPINGS[:5]],
)
def test_mapping_over_serial(
    serial_sim: SerialPrinterSim,
    state: dict[str, Any],
    expected_state: PrinterState,
    reasons: tuple[str, ...],
    paper: PaperLevel,
) -> None:
    serial_sim.state = SimState(**state)
    status = EscPosPrinter(serial_sim.device, timeout_s=TIMEOUT_S).read()
    assert status == PrinterStatus("escpos", expected_state, reasons, paper)
    assert serial_sim.requests == [1, 2, 3, 4]


def test_serial_with_line_settings(serial_sim: SerialPrinterSim) -> None:
    serial_sim.state.paper = "near_end"
    address = f"{serial_sim.device}?baud=19200&parity=E&bytesize=8&stopbits=1"
    assert EscPosPrinter(address, timeout_s=TIMEOUT_S).read().reasons == ("media-low",)


def test_serial_silent_is_offline_within_the_timeout(serial_sim: SerialPrinterSim) -> None:
    serial_sim.behaviour = Behaviour(mode="silent")
    status, elapsed = timed(lambda: EscPosPrinter(serial_sim.device, timeout_s=TIMEOUT_S).read())
    assert_offline_unknown(status)
    assert elapsed < TIMEOUT_S + SLACK_S


def test_serial_partial_answers_are_offline(serial_sim: SerialPrinterSim) -> None:
    serial_sim.behaviour = Behaviour(answer_limit=3, after_limit="silent")
    assert_offline_unknown(EscPosPrinter(serial_sim.device, timeout_s=TIMEOUT_S).read())


def test_serial_garbage_is_a_driver_error(serial_sim: SerialPrinterSim) -> None:
    serial_sim.behaviour = Behaviour(mode="garbage")
    with pytest.raises(DriverError, match="garbage"):
        EscPosPrinter(serial_sim.device, timeout_s=TIMEOUT_S).read()


def test_serial_stray_bytes_are_drained(serial_sim: SerialPrinterSim) -> None:
    serial_sim.behaviour = Behaviour(extra=True)
    status = EscPosPrinter(serial_sim.device, timeout_s=TIMEOUT_S).read()
    assert (status.state, status.reasons) == ("idle", ())


def test_serial_unplugged_is_a_driver_error(serial_sim: SerialPrinterSim) -> None:
    device = serial_sim.device
    serial_sim.close()
    with pytest.raises(DriverError, match="cannot open"):
        EscPosPrinter(device, timeout_s=TIMEOUT_S).read()


def test_missing_serial_device_is_a_driver_error() -> None:
    with pytest.raises(DriverError, match="cannot open /dev/ttyNOSUCH0"):
        EscPosPrinter("/dev/ttyNOSUCH0", timeout_s=TIMEOUT_S).read()


# --- addresses -----------------------------------------------------------------------------------


def test_serial_options_parse() -> None:
    assert parse_serial("/dev/ttyS0") == SerialSettings("/dev/ttyS0")
    assert parse_serial("/dev/ttyUSB0?baud=19200&parity=e&stopbits=2&flow=rtscts") == (
        SerialSettings("/dev/ttyUSB0", baudrate=19200, parity="E", stopbits=2, flow="rtscts")
    )


@pytest.mark.parametrize(
    "address",
    [
        "/dev/ttyS0?speed=9600",
        "/dev/ttyS0?baud=fast",
        "/dev/ttyS0?baud=0",
        "/dev/ttyS0?parity=X",
        "/dev/ttyS0?bytesize=9",
        "/dev/ttyS0?flow=dsrdtr",
        "tcp://",
        "tcp://printer:port",
        "tcp://printer:0",
        "tcp://printer:9100/queue",
        "lpt1",
        "http://printer:9100",
    ],
)
def test_bad_addresses_are_refused_up_front(address: str) -> None:
    with pytest.raises(ValueError, match="escpos"):
        EscPosPrinter(address)


def test_tcp_port_defaults_to_9100() -> None:
    assert EscPosPrinter("tcp://192.0.2.7")._tcp == ("192.0.2.7", 9100)
    assert EscPosPrinter("tcp://[::1]:9101")._tcp == ("::1", 9101)
