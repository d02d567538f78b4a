"""ESC/POS receipt printers: real-time status (DLE EOT 1-4) mapped onto IPP printer-state-reasons.

Addresses:
    tcp://HOST[:PORT]          raw TCP, port 9100 when omitted ("tcp://[::1]:9100" for IPv6)
    /dev/ttyUSB0[?OPTIONS]     serial device through pyserial; OPTIONS are `&`-joined, all optional:
                               baud=9600, bytesize=8, parity=N|E|O|M|S, stopbits=1|1.5|2,
                               flow=none|rtscts|xonxoff  (match the printer's DIP switches;
                               for DTR/DSR use none: DTR stays on while the port is open)

Every `read()` opens the connection, asks the four real-time status requests, and closes it again:
a receipt printer's port 9100 or serial line is also the kiosk's print path, and many accept a
single client, so the agent must not hold it between polls.

Status bytes, per Epson's ESC/POS reference for DLE EOT n (TM-T88III specification rev. B sheets
73-74; ESC/POS Application Programming Guide ver. 10.01 pp. 303-304). In every byte bit 1 and bit
4 are fixed on and bits 0 and 7 fixed off; a byte that breaks this is not a status byte.

    n=1 printer status   bit 3  offline
    n=2 offline cause    bit 2  cover open              -> cover-open
                         bit 3  paper fed by the button (not mapped: shows as n=1 offline)
                         bit 5  printing stopped by paper end -> media-empty
                         bit 6  error occurred          -> other, when n=3 names no cause
    n=3 error cause      bit 3  autocutter error        -> media-jam (Epson: "due to paper jams
                                                           or the like"; the fix is the same)
                         bit 5  unrecoverable error     -> other
                         bit 6  auto-recoverable error  -> other (head overheat)
                         bit 2  not read: "undefined" on several models (TM-T88III, TM-T85)
    n=4 roll paper       bits 2,3 near-end sensor       -> media-low (unless media-empty)
                         bits 5,6 end sensor            -> media-empty
    Either bit of a pair counts: some models wire one sensor to each bit.

State: `stopped` when paper end, cover open, an error, or an offline printer stops printing;
`idle` otherwise (near-end alone still prints). DLE EOT never tells that a job is printing, so
this driver does not report `printing`. An offline printer whose cause none of the bits above
explains gets the `offline` reason, so a stopped printer always says why.

Paper: the sensors say only "enough", "near end" or "end"; a roll's length in between is unknown.
So `level_pct`/`sheets_left` are 0 when the end sensor reports no paper and None otherwise; the
near end travels as the `media-low` reason, and `capacity` is passed through for estimators.

Failures: no answer within `timeout_s` (connect, write or any of the four answers) means the
printer is offline and the paper unknown; a refused or dropped connection, a missing device or a
garbage byte raises DriverError.
"""

from __future__ import annotations

import math
import os
import select
import socket
import termios
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import serial

from agent import testpage
from agent.drivers.base import DriverError, PaperLevel, PrinterState, PrinterStatus, offline_printer

NAME = "escpos"
DEFAULT_TCP_PORT = 9100
DLE_EOT = b"\x10\x04"
REQUESTS = (1, 2, 3, 4)

FIXED_MASK = 0b1001_0011  # bits 7, 4, 1, 0
FIXED_VALUE = 0b0001_0010  # bits 4 and 1 on, 7 and 0 off

OFFLINE = 0x08  # n=1
COVER_OPEN = 0x04  # n=2
PAPER_END_STOP = 0x20  # n=2
ERROR_OCCURRED = 0x40  # n=2
AUTOCUTTER_ERROR = 0x08  # n=3
UNRECOVERABLE_ERROR = 0x20  # n=3
AUTO_RECOVERABLE_ERROR = 0x40  # n=3
CAUSES_READ = AUTOCUTTER_ERROR | UNRECOVERABLE_ERROR | AUTO_RECOVERABLE_ERROR
NEAR_END = 0x0C  # n=4, bits 2 and 3
PAPER_END = 0x60  # n=4, bits 5 and 6

#: Test page framing: ESC @ (initialise), ESC a 1 (centre), FS & (Chinese character mode, GB18030
#: on the mainland models that have it; plain ASCII prints the same either way) ... FS . (leave it),
#: four line feeds and GS V 66 0 (feed to the cutter and cut).
INIT = b"\x1b@\x1ba\x01\x1c&"
FEED_AND_CUT = b"\x1c.\n\n\n\n\x1dVB\x00"

#: Reasons that stop printing; `media-low` alone does not.
STOPPING = frozenset({"cover-open", "media-empty", "media-jam", "other", "offline"})


@dataclass(frozen=True)
class RealTimeStatus:
    """The answers to DLE EOT 1, 2, 3 and 4, each checked against the fixed bits."""

    printer: int
    offline_cause: int
    error_cause: int
    paper: int


def check_status_byte(n: int, value: int) -> int:
    """The byte itself, or DriverError when its fixed bits say it is not a status byte."""
    if value & FIXED_MASK != FIXED_VALUE:
        raise DriverError(NAME, f"garbage answer 0x{value:02x} to DLE EOT {n}")
    return value


def reasons_of(status: RealTimeStatus) -> tuple[str, ...]:
    """IPP printer-state-reasons keywords for the four status bytes, sorted."""
    found: set[str] = set()
    if status.paper & PAPER_END or status.offline_cause & PAPER_END_STOP:
        found.add("media-empty")
    elif status.paper & NEAR_END:
        found.add("media-low")  # an ended roll also trips the near-end sensor: say "empty" once
    if status.offline_cause & COVER_OPEN:
        found.add("cover-open")
    if status.error_cause & AUTOCUTTER_ERROR:
        found.add("media-jam")
    if status.error_cause & (UNRECOVERABLE_ERROR | AUTO_RECOVERABLE_ERROR):
        found.add("other")
    if status.offline_cause & ERROR_OCCURRED and not status.error_cause & CAUSES_READ:
        found.add("other")  # an error whose cause sits in a bit we do not read
    if status.printer & OFFLINE and not found & STOPPING:
        found.add("offline")
    return tuple(sorted(found))


def paper_of(status: RealTimeStatus, capacity: int | None) -> PaperLevel:
    """Only the end sensor gives a number (0); anything above it is unknown, not full."""
    if status.paper & PAPER_END:
        return PaperLevel(level_pct=0, sheets_left=0, capacity=capacity)
    return PaperLevel(capacity=capacity)


def decode(status: RealTimeStatus, capacity: int | None = None) -> PrinterStatus:
    reasons = reasons_of(status)
    state: PrinterState = "stopped" if STOPPING.intersection(reasons) else "idle"
    return PrinterStatus(
        driver=NAME, state=state, reasons=reasons, paper=paper_of(status, capacity)
    )


def page_bytes(page: testpage.TestPage) -> bytes:
    """The test page as an ESC/POS byte stream; never contains a DLE EOT request."""
    text = "".join(line + "\n" for line in page.lines())
    return INIT + text.encode("gb18030", "replace") + FEED_AND_CUT


def _remaining(deadline: float) -> float:
    return max(0.0, deadline - time.monotonic())


def _ready(fd: int, events: int, timeout_s: float) -> bool:
    """poll(), not select(): the agent is long-lived and its descriptors may pass 1024."""
    poller = select.poll()
    poller.register(fd, events)
    return bool(poller.poll(math.ceil(timeout_s * 1000)))


class Link:
    """An open socket or serial port, driven through its file descriptor with poll().

    Polling against the deadline, not socket or pyserial timeouts, bounds every step: changing a
    pyserial timeout rewrites the line settings (tcsetattr) on each call, which some devices refuse.
    """

    def __init__(self, fd: int, close: Callable[[], None], peer: str) -> None:
        self._fd = fd
        self._close = close
        self.peer = peer

    def drain(self, deadline: float) -> None:
        """Discard bytes already received: late answers, or status the printer sent unasked."""
        while time.monotonic() < deadline and self._wait_readable(0):
            self._read(4096)

    def send(self, data: bytes, deadline: float) -> bool:
        """False when the printer did not take the bytes in time (e.g. flow control held)."""
        view = memoryview(data)
        while view:
            if not _ready(self._fd, select.POLLOUT, _remaining(deadline)):
                return False
            try:
                view = view[os.write(self._fd, view) :]
            except BlockingIOError:
                continue
            except OSError as exc:
                raise DriverError(NAME, f"{self.peer}: lost while sending: {exc}") from exc
        return True

    def read_byte(self, deadline: float) -> int | None:
        """The next byte, or None when none came in time."""
        while self._wait_readable(_remaining(deadline)):
            data = self._read(1)
            if data:
                return data[0]
        return None

    def _wait_readable(self, timeout_s: float) -> bool:
        # POLLHUP and POLLERR wake it too; the read that follows turns them into DriverError.
        return _ready(self._fd, select.POLLIN, timeout_s)

    def _read(self, size: int) -> bytes:
        """Called only once poll() said readable, so no data means the peer is gone."""
        try:
            data = os.read(self._fd, size)
        except BlockingIOError:
            return b""  # a spurious wake-up
        except OSError as exc:
            raise DriverError(NAME, f"{self.peer}: lost while reading: {exc}") from exc
        if not data:
            raise DriverError(NAME, f"{self.peer}: printer closed the connection")
        return data

    def close(self) -> None:
        self._close()


def connect_tcp(host: str, port: int, deadline: float) -> Link | None:
    """None when the connection did not complete in time: an unanswered connect is offline."""
    try:
        sock = socket.create_connection((host, port), timeout=_remaining(deadline) or 1e-3)
    except TimeoutError:
        return None
    except OSError as exc:
        raise DriverError(NAME, f"cannot connect to {host}:{port}: {exc}") from exc
    sock.setblocking(False)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return Link(sock.fileno(), sock.close, f"{host}:{port}")


@dataclass(frozen=True)
class SerialSettings:
    port: str
    baudrate: int = 9600
    bytesize: int = 8
    parity: str = "N"
    stopbits: float = 1
    flow: str = "none"

    def open_kwargs(self) -> dict[str, Any]:
        return {
            "port": self.port,
            "baudrate": self.baudrate,
            "bytesize": self.bytesize,
            "parity": self.parity,
            "stopbits": self.stopbits,
            "rtscts": self.flow == "rtscts",
            "xonxoff": self.flow == "xonxoff",
        }


_SERIAL_OPTIONS: dict[str, tuple[str, Any, tuple[Any, ...]]] = {
    "baud": ("baudrate", int, ()),
    "bytesize": ("bytesize", int, (5, 6, 7, 8)),
    "parity": ("parity", str.upper, ("N", "E", "O", "M", "S")),
    "stopbits": ("stopbits", float, (1, 1.5, 2)),
    "flow": ("flow", str.lower, ("none", "rtscts", "xonxoff")),
}


def parse_serial(address: str) -> SerialSettings:
    """`/dev/ttyS0?baud=19200&parity=E` -> SerialSettings; ValueError names a bad option."""
    path, _, query = address.partition("?")
    values: dict[str, Any] = {}
    for key, raw in parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query)):
        if key not in _SERIAL_OPTIONS:
            raise ValueError(f"escpos: unknown serial option {key!r} in {address!r}")
        field, convert, allowed = _SERIAL_OPTIONS[key]
        try:
            value = convert(raw)
        except ValueError:
            raise ValueError(f"escpos: bad {key}={raw!r} in {address!r}") from None
        if (allowed and value not in allowed) or (field == "baudrate" and value <= 0):
            raise ValueError(f"escpos: bad {key}={raw!r} in {address!r}")
        values[field] = value
    return SerialSettings(port=path, **values)


def open_serial(settings: SerialSettings) -> Link:
    """pyserial sets the line up (speed, framing, flow control); the Link does the I/O."""
    try:
        port = serial.Serial(**settings.open_kwargs(), timeout=0)
    except (serial.SerialException, OSError, ValueError, termios.error) as exc:
        raise DriverError(NAME, f"cannot open {settings.port}: {exc}") from exc
    return Link(port.fileno(), port.close, settings.port)


def query(link: Link, deadline: float) -> RealTimeStatus | None:
    """Ask DLE EOT 1-4 one at a time; None as soon as one goes unanswered."""
    answers: list[int] = []
    for n in REQUESTS:
        link.drain(deadline)
        if not link.send(DLE_EOT + bytes([n]), deadline):
            return None
        value = link.read_byte(deadline)
        if value is None:
            return None
        answers.append(check_status_byte(n, value))
    return RealTimeStatus(*answers)


class EscPosPrinter:
    """Status of an ESC/POS receipt printer on TCP (port 9100) or a serial line."""

    name = NAME

    def __init__(self, address: str, timeout_s: float = 2.0, capacity: int | None = None) -> None:
        if timeout_s <= 0:
            raise ValueError("escpos: timeout_s must be positive")
        self.address = address
        self.timeout_s = timeout_s
        self.capacity = capacity
        self._tcp: tuple[str, int] | None = None
        self._serial: SerialSettings | None = None
        if address.startswith("tcp://"):
            self._tcp = _parse_tcp(address)
        elif address.startswith("/"):
            self._serial = parse_serial(address)
        else:
            raise ValueError(f"escpos: address {address!r} is neither tcp://HOST:PORT nor /dev/...")

    def read(self) -> PrinterStatus:
        deadline = time.monotonic() + self.timeout_s
        link = self._open(deadline)
        if link is None:
            return offline_printer(NAME)
        try:
            status = query(link, deadline)
        finally:
            link.close()
        return offline_printer(NAME) if status is None else decode(status, self.capacity)

    def print_test_page(self, page: testpage.TestPage) -> str:
        """Status first (a stopped printer gets nothing), the page, then status again.

        ESC/POS says nothing about a print job; the best proof there is: the printer took
        every byte and, asked right after, reports no error and still has paper.
        """
        deadline = time.monotonic() + self.timeout_s
        link = self._open(deadline)
        if link is None:
            raise DriverError(NAME, f"{self.address}: no connection within {self.timeout_s:g}s")
        try:
            data = page_bytes(page)
            for step in ("before", "after"):
                status = query(link, deadline)
                if status is None:
                    raise DriverError(NAME, f"no status answer {step} printing")
                decoded = decode(status, self.capacity)
                if decoded.state != "idle":
                    reasons = ", ".join(decoded.reasons)
                    raise DriverError(NAME, f"printer stopped {step} printing ({reasons})")
                if step == "before" and not link.send(data, deadline):
                    raise DriverError(NAME, f"printer did not take the page in {self.timeout_s:g}s")
        finally:
            link.close()
        return f"{len(data)} bytes printed on {link.peer}"

    def _open(self, deadline: float) -> Link | None:
        if self._tcp is not None:
            return connect_tcp(*self._tcp, deadline)
        assert self._serial is not None
        return open_serial(self._serial)

    def close(self) -> None:
        """Nothing stays open between reads; kept for the Printer protocol."""


def _parse_tcp(address: str) -> tuple[str, int]:
    parts = urlsplit(address)
    try:
        port = DEFAULT_TCP_PORT if parts.port is None else parts.port
    except ValueError:
        raise ValueError(f"escpos: bad port in {address!r}") from None
    if not parts.hostname or not port or parts.path not in ("", "/") or parts.query:
        raise ValueError(f"escpos: expected tcp://HOST:PORT, got {address!r}")
    return parts.hostname, port
