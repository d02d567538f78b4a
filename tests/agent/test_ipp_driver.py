"""The IPP driver against a real IPP Everywhere printer (CUPS's ippeveprinter), and against
servers that misbehave on purpose (garbage, truncated IPP, HTTP errors, silence)."""

from __future__ import annotations

import contextlib
import signal
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator, Sequence

import pytest

from agent.drivers import ipp_wire as w
from agent.drivers.base import DriverError, PaperLevel, PrinterStatus
from agent.drivers.ipp import IppPrinter, parse_uri, status_from_attributes
from tests.services import ippeveprinter
from tests.services.ports import free_port

PDF = b"%PDF-1.4\n1 0 obj<</Type/Catalog>>endobj\ntrailer<</Root 1 0 R>>\n%%EOF\n"


@pytest.fixture
def printer() -> Iterator[ippeveprinter.IppEvePrinter]:
    if not ippeveprinter.available():
        pytest.skip(
            "ippeveprinter or dbus-daemon is not installed "
            "(apt-get install cups-ipp-utils dbus-daemon; make test installs them)"
        )
    p = ippeveprinter.IppEvePrinter().start()
    yield p
    p.close()


@pytest.fixture
def driver(printer: ippeveprinter.IppEvePrinter) -> Iterator[IppPrinter]:
    d = IppPrinter(printer.uri, timeout_s=2.0)
    yield d
    d.close()


def wait_job_done(driver: IppPrinter, job_id: int, timeout_s: float = 5.0) -> str:
    deadline = time.monotonic() + timeout_s
    while (state := driver.job_state(job_id)) not in ("completed", "aborted", "canceled"):
        assert time.monotonic() < deadline, f"job {job_id} still {state} after {timeout_s}s"
        time.sleep(0.02)
    return state


# --- a real printer -------------------------------------------------------------------------


def test_ready_printer(printer: ippeveprinter.IppEvePrinter, driver: IppPrinter) -> None:
    printer.set_paper(main=250)
    printer.set_supplies(toner=80)
    status = driver.read()
    assert status.driver == "ipp"
    assert status.state == "idle"
    assert status.reasons == ()
    assert status.paper == PaperLevel(level_pct=100, sheets_left=250, capacity=250)
    assert status.toner_pct == 80
    assert status.pages_total is None  # ippeveprinter keeps no counter: unknown, not 0
    assert status.to_json()["reasons"] == []


def test_paper_low(printer: ippeveprinter.IppEvePrinter, driver: IppPrinter) -> None:
    printer.set_paper(main=5)
    status = driver.read()
    assert status.reasons == ("media-low",)
    assert status.state == "idle"  # low is a warning, the kiosk still prints
    assert status.paper == PaperLevel(level_pct=2, sheets_left=5, capacity=250)


def test_paper_empty(printer: ippeveprinter.IppEvePrinter, driver: IppPrinter) -> None:
    printer.set_paper(main=0)
    status = driver.read()
    assert status.reasons == ("media-empty",)
    assert status.paper == PaperLevel(level_pct=0, sheets_left=0, capacity=250)
    # ippeveprinter itself says "idle" with media-empty-report; a kiosk that cannot print is not.
    assert status.state == "stopped"


def test_paper_refilled_clears_the_reason(
    printer: ippeveprinter.IppEvePrinter, driver: IppPrinter
) -> None:
    printer.set_paper(main=0)
    assert driver.read().reasons == ("media-empty",)
    printer.set_paper(main=125)
    status = driver.read()
    assert (status.state, status.reasons) == ("idle", ())
    assert status.paper == PaperLevel(level_pct=50, sheets_left=125, capacity=250)


def test_unknown_paper_is_not_empty(
    printer: ippeveprinter.IppEvePrinter, driver: IppPrinter
) -> None:
    printer.set_paper(main=-2)
    status = driver.read()
    assert status.paper == PaperLevel(level_pct=None, sheets_left=None, capacity=250)
    assert "media-empty" not in status.reasons
    assert status.state == "idle"


def test_toner_low_and_empty(printer: ippeveprinter.IppEvePrinter, driver: IppPrinter) -> None:
    printer.set_supplies(toner=7)
    status = driver.read()
    assert (status.toner_pct, status.reasons, status.state) == (7, ("toner-low",), "idle")
    printer.set_supplies(toner=0)
    status = driver.read()
    assert (status.toner_pct, status.reasons, status.state) == (0, ("toner-empty",), "stopped")
    printer.set_supplies(toner=60)
    status = driver.read()
    assert (status.toner_pct, status.reasons, status.state) == (60, (), "idle")


def test_print_document_completes(printer: ippeveprinter.IppEvePrinter, driver: IppPrinter) -> None:
    job_id = driver.print_document(PDF, job_name="licence 91510107MA6C5X1234")
    assert isinstance(job_id, int) and job_id > 0
    assert wait_job_done(driver, job_id) == "completed"
    spooled = list(printer.spool.glob(f"{job_id}-*.pdf"))
    assert [f.read_bytes() for f in spooled] == [PDF]
    assert driver.print_document(PDF) == job_id + 1


def test_media_jam_from_the_print_command(
    printer: ippeveprinter.IppEvePrinter, driver: IppPrinter
) -> None:
    printer.set_paper(main=250)
    printer.next_job_says("STATE: +media-jam")
    wait_job_done(driver, driver.print_document(PDF))
    status = driver.read()
    assert status.reasons == ("media-jam",)
    assert status.state == "stopped"
    printer.next_job_says("STATE: -media-jam")  # the technician cleared it
    wait_job_done(driver, driver.print_document(PDF))
    assert (driver.read().state, driver.read().reasons) == ("idle", ())


def test_cover_open_and_jam_together(
    printer: ippeveprinter.IppEvePrinter, driver: IppPrinter
) -> None:
    printer.next_job_says("STATE: +cover-open,media-jam-error")
    wait_job_done(driver, driver.print_document(PDF))
    status = driver.read()
    assert status.reasons == ("cover-open", "media-jam")
    assert status.state == "stopped"


def test_marker_levels_win_over_printer_supply(
    printer: ippeveprinter.IppEvePrinter, driver: IppPrinter
) -> None:
    # CUPS queues report toner as marker-* (from their backends); the print command can set them.
    printer.set_supplies(toner=80)
    printer.next_job_says(
        "ATTR: marker-names=Black,Cyan marker-types=toner,toner "
        "marker-colors=#000000,#00FFFF marker-levels=42,90"
    )
    wait_job_done(driver, driver.print_document(PDF))
    assert driver.read().toner_pct == 42


def test_printer_gone(printer: ippeveprinter.IppEvePrinter, driver: IppPrinter) -> None:
    driver.read()
    printer.kill()
    started = time.monotonic()
    with pytest.raises(DriverError, match="cannot connect") as e:
        driver.read()
    assert time.monotonic() - started < driver.timeout_s
    assert e.value.driver == "ipp"
    with pytest.raises(DriverError):
        driver.print_document(PDF)


def test_printer_hung(printer: ippeveprinter.IppEvePrinter) -> None:
    """A frozen printer still accepts connections (the kernel does) but never answers."""
    driver = IppPrinter(printer.uri, timeout_s=0.5)
    driver.read()
    assert printer.printer is not None
    printer.printer.send_signal(signal.SIGSTOP)
    try:
        started = time.monotonic()
        with pytest.raises(DriverError, match=r"within 0\.5s"):
            driver.read()
        assert 0.4 < time.monotonic() - started < 1.5
    finally:
        printer.printer.send_signal(signal.SIGCONT)
    driver.read()


def test_wrong_printer_path(printer: ippeveprinter.IppEvePrinter) -> None:
    driver = IppPrinter(f"ipp://localhost:{printer.port}/ipp/nothere", timeout_s=2.0)
    with pytest.raises(DriverError, match="client-error-not-found"):
        driver.read()


def test_http_uri(printer: ippeveprinter.IppEvePrinter) -> None:
    driver = IppPrinter(f"http://localhost:{printer.port}/ipp/print", timeout_s=2.0)
    assert driver.read().state == "idle"


def test_printer_uri_attribute_is_always_ipp() -> None:
    assert parse_uri("http://10.0.0.5/ipp/print").printer_uri == "ipp://10.0.0.5:631/ipp/print"
    assert parse_uri("https://[fe80::1]:8443/p").printer_uri == "ipps://[fe80::1]:8443/p"
    assert parse_uri("ipps://printer.lan/ipp/print").tls
    assert parse_uri("ipp://printer.lan").path == "/"


# --- servers that misbehave -----------------------------------------------------------------

Handler = Callable[[socket.socket, bytes], None]


class RawServer:
    """A loopback TCP server whose handler gets each connection and the HTTP request bytes."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.sock.getsockname()[1])
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    @property
    def uri(self) -> str:
        return f"ipp://127.0.0.1:{self.port}/ipp/print"

    def _serve(self) -> None:
        self.sock.settimeout(0.1)
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            # OSError: the client gave up, which is what some tests want.
            with conn, contextlib.suppress(OSError):
                self.handler(conn, read_request(conn))

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=5)
        self.sock.close()


def read_request(conn: socket.socket) -> bytes:
    conn.settimeout(5)
    data = b""
    while b"\r\n\r\n" not in data:
        data += conn.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    while len(body) < length:
        body += conn.recv(65536)
    return body


def http_answer(body: bytes, status: str = "200 OK", ctype: str = "application/ipp") -> bytes:
    head = f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
    return head.encode() + b"\r\n" + body


def request_id(request: bytes) -> int:
    return int(struct.unpack(">I", request[4:8])[0])


def ipp_answer(request: bytes, status: int = 0, rid: int | None = None, **printer: int) -> bytes:
    ops = [
        w.attr("attributes-charset", w.CHARSET, "utf-8"),
        w.attr("attributes-natural-language", w.NATURAL_LANGUAGE, "en"),
        w.attr("status-message", w.TEXT, "it broke"),
    ]
    attrs = [w.attr(name.replace("_", "-"), w.ENUM, v) for name, v in printer.items()]
    groups = [(w.OPERATION_ATTRIBUTES, ops), (w.PRINTER_ATTRIBUTES, attrs)]
    return w.encode_request(status, request_id(request) if rid is None else rid, groups)


def answers(payload: Callable[[bytes], bytes]) -> Handler:
    def handler(conn: socket.socket, request: bytes) -> None:
        conn.sendall(payload(request))

    return handler


def never_answers(conn: socket.socket, request: bytes) -> None:
    conn.settimeout(None)
    conn.recv(1)  # until the client hangs up


def trickles(conn: socket.socket, request: bytes) -> None:
    """One byte of an endless header every 50 ms: each recv succeeds, none finishes."""
    conn.sendall(b"HTTP/1.1 200 OK\r\n")
    while True:
        conn.sendall(b"X")
        time.sleep(0.05)


def ipp_ok(r: bytes) -> bytes:
    return ipp_answer(r, printer_state=3)


def stalls_mid_body(conn: socket.socket, request: bytes) -> None:
    """Headers and half the body, then nothing: the answer never completes."""
    answer = http_answer(ipp_ok(request))
    conn.sendall(answer[:-10])
    conn.settimeout(None)
    conn.recv(1)  # until the client hangs up


GARBAGE: dict[str, tuple[Handler, str]] = {
    "junk bytes": (answers(lambda r: http_answer(b"\x7fELF\x02\x01\x01garbage")), "not valid IPP"),
    "empty body": (answers(lambda r: http_answer(b"")), "not valid IPP"),
    "truncated ipp": (answers(lambda r: http_answer(ipp_ok(r)[:-9])), "truncated"),
    "no end tag": (answers(lambda r: http_answer(ipp_ok(r)[:-1])), "truncated"),
    "http 500": (
        answers(lambda r: http_answer(b"oops", "500 Internal Server Error", "text/plain")),
        "HTTP 500",
    ),
    "html page": (answers(lambda r: http_answer(b"<html></html>", ctype="text/html")), "text/html"),
    "body cut short": (answers(lambda r: http_answer(ipp_ok(r))[:-20]), "cut off"),
    "not http": (answers(lambda r: b"SSH-2.0-OpenSSH_9.2\r\n"), "connection to .* failed"),
    "hangs up": (answers(lambda r: b""), "connection to .* failed"),
    "ipp error": (
        answers(lambda r: http_answer(ipp_answer(r, status=0x0500))),
        "internal-error: it broke",
    ),
    "other request id": (
        answers(lambda r: http_answer(ipp_answer(r, rid=request_id(r) + 7, printer_state=3))),
        "is for request",
    ),
    "no printer-state": (answers(lambda r: http_answer(ipp_answer(r))), "no valid printer-state"),
    "bad printer-state": (
        answers(lambda r: http_answer(ipp_answer(r, printer_state=9))),
        "no valid printer-state",
    ),
}


@pytest.fixture
def serve() -> Iterator[Callable[[Handler], RawServer]]:
    servers: list[RawServer] = []

    def start(handler: Handler) -> RawServer:
        servers.append(RawServer(handler))
        return servers[-1]

    yield start
    for s in servers:
        s.close()


@pytest.mark.parametrize("case", list(GARBAGE))
def test_garbage_answers(case: str, serve: Callable[[Handler], RawServer]) -> None:
    handler, message = GARBAGE[case]
    driver = IppPrinter(serve(handler).uri, timeout_s=2.0)
    started = time.monotonic()
    with pytest.raises(DriverError, match=message):
        driver.read()
    assert time.monotonic() - started < 1.0


def test_the_fake_server_speaks_valid_ipp(serve: Callable[[Handler], RawServer]) -> None:
    """The garbage cases differ from this by one defect each."""
    driver = IppPrinter(serve(answers(lambda r: http_answer(ipp_answer(r, printer_state=4)))).uri)
    status = driver.read()
    assert (status.state, status.reasons, status.paper, status.toner_pct) == (
        "printing",
        (),
        None,
        None,
    )


@pytest.mark.parametrize(
    "handler", [never_answers, trickles, stalls_mid_body], ids=["silent", "trickle", "stall"]
)
def test_slow_server_times_out(handler: Handler, serve: Callable[[Handler], RawServer]) -> None:
    driver = IppPrinter(serve(handler).uri, timeout_s=0.5)
    started = time.monotonic()
    with pytest.raises(DriverError, match=r"no complete answer .* within 0\.5s"):
        driver.read()
    assert 0.45 < time.monotonic() - started < 1.2


def test_nothing_listening() -> None:
    driver = IppPrinter(f"ipp://127.0.0.1:{free_port()}/ipp/print", timeout_s=1.0)
    with pytest.raises(
        DriverError, match=r"cannot connect to 127\.0\.0\.1:\d+: Connection refused"
    ):
        driver.read()


def test_bad_uri_is_a_config_error() -> None:
    with pytest.raises(ValueError, match="not an IPP printer URI"):
        IppPrinter("lpd://printer/queue")
    with pytest.raises(ValueError, match="timeout_s"):
        IppPrinter("ipp://printer/ipp/print", timeout_s=0)
    with pytest.raises(ValueError, match="capacity"):
        IppPrinter("ipp://printer/ipp/print", capacity=0)


# --- mapping rules on hand-built attributes -------------------------------------------------


def tray(level: int, maxcapacity: int = 250, name: str = "main", unit: str = "") -> bytes:
    return (
        f"type=sheetFeedAutoRemovableTray;mediafeed=0;mediaxfeed=0;maxcapacity={maxcapacity};"
        f"level={level};status=0;name={name};" + (f"unit={unit};" if unit else "")
    ).encode()


def mapped(
    capacity: int | None = None, tray_name: str | None = None, **attrs: Sequence[w.IppValue]
) -> PrinterStatus:
    named: dict[str, Sequence[w.IppValue]] = {"printer-state": [3]}
    named.update({k.replace("_", "-"): v for k, v in attrs.items()})
    return status_from_attributes(named, capacity, tray_name)


def test_reasons_lose_their_severity_and_none() -> None:
    reasons: list[w.IppValue] = ["toner-low-warning", "media-empty-error", "media-empty-report", 3]
    assert mapped(printer_state_reasons=reasons).reasons == ("media-empty", "toner-low")
    assert mapped(printer_state_reasons=["none"]).reasons == ()


@pytest.mark.parametrize(
    "state, reasons, expected",
    [
        (3, [], "idle"),
        (4, ["media-low-warning"], "printing"),
        (5, ["paused"], "stopped"),
        (4, ["media-needed-warning", "media-empty-warning"], "stopped"),
        (3, ["door-open-report"], "stopped"),
        (5, ["offline-report"], "offline"),
    ],
)
def test_state(state: int, reasons: list[w.IppValue], expected: str) -> None:
    assert mapped(printer_state=[state], printer_state_reasons=reasons).state == expected


def test_missing_or_odd_printer_state_is_an_error() -> None:
    with pytest.raises(DriverError, match="no valid printer-state"):
        status_from_attributes({})
    with pytest.raises(DriverError, match="no valid printer-state"):
        mapped(printer_state=["idle"])


def test_paper_capacity_from_config_when_the_tray_does_not_say() -> None:
    paper = mapped(capacity=500, printer_input_tray=[tray(90, maxcapacity=-2)]).paper
    assert paper == PaperLevel(level_pct=18, sheets_left=90, capacity=500)
    paper = mapped(printer_input_tray=[tray(90, maxcapacity=-2)]).paper
    assert paper == PaperLevel(level_pct=None, sheets_left=90, capacity=None)
    # the printer's own capacity wins over config
    paper = mapped(capacity=500, printer_input_tray=[tray(90)]).paper
    assert paper == PaperLevel(level_pct=36, sheets_left=90, capacity=250)


def test_paper_unknown_and_some_left_are_not_numbers() -> None:
    assert mapped(printer_input_tray=[tray(-2)]).paper == PaperLevel(capacity=250)
    assert mapped(printer_input_tray=[tray(-3)]).paper == PaperLevel(capacity=250)
    assert mapped().paper is None  # no tray reported at all
    assert mapped(printer_input_tray=[b"garbage"]).paper is None


def test_paper_in_percent_units() -> None:
    # maxcapacity counts percent then, not sheets: sheets only with the tray size from config
    percent = [tray(30, maxcapacity=100, unit="percent")]
    assert mapped(capacity=400, printer_input_tray=percent).paper == PaperLevel(30, 120, 400)
    assert mapped(printer_input_tray=percent).paper == PaperLevel(30, None, None)


def test_which_tray() -> None:
    trays: list[w.IppValue] = [
        tray(-2, maxcapacity=-2, name="auto"),
        tray(10, name="tray-1"),
        tray(200, maxcapacity=500, name="tray-2"),
    ]
    # the first tray that knows its level ...
    assert mapped(printer_input_tray=trays).paper == PaperLevel(4, 10, 250)
    # ... unless the printer feeds from another one by default ...
    default: list[w.IppValue] = [{"media-source": ["tray-2"]}]
    paper = mapped(printer_input_tray=trays, media_col_default=default).paper
    assert paper == PaperLevel(40, 200, 500)
    # ... or config names one; a configured tray the printer lacks is unknown, not another tray.
    assert mapped(tray_name="tray-1", printer_input_tray=trays).paper == PaperLevel(4, 10, 250)
    assert mapped(tray_name="tray-9", printer_input_tray=trays).paper is None


def test_toner_from_markers_prefers_black() -> None:
    types = ["toner", "toner", "waste-toner"]
    levels = [70, 12, 99]
    by_name = mapped(
        marker_names=["Cyan", "Black", "Waste"], marker_types=types, marker_levels=levels
    )
    assert by_name.toner_pct == 12
    colors = ["#00FFFF", "#000000", "none"]
    by_color = mapped(marker_names=["C", "K", "W"], marker_colors=colors, marker_types=types,
                      marker_levels=levels)  # fmt: skip
    assert by_color.toner_pct == 12
    assert mapped(marker_levels=[-1], marker_types=["toner"]).toner_pct is None
    assert mapped(marker_levels=[50], marker_types=["waste-toner"]).toner_pct is None


def test_toner_from_printer_supply() -> None:
    supply = b"index=2;class=supplyThatIsConsumed;type=toner;unit=percent;maxcapacity=100;level=%d;"
    assert mapped(printer_supply=[supply % 33]).toner_pct == 33
    assert mapped(printer_supply=[supply % -3]).toner_pct is None  # "some left": not a number
    sheets = b"type=tonerCartridge;maxcapacity=8000;level=2000;colorantname=black;"
    assert mapped(printer_supply=[sheets]).toner_pct == 25
    assert mapped(printer_supply=[b"type=wasteToner;level=20;"]).toner_pct is None


def test_pages_total() -> None:
    assert mapped(printer_impressions_completed=[18211]).pages_total == 18211
    assert mapped(printer_impressions_completed=[w.OutOfBand(0x12)]).pages_total is None
    assert mapped().pages_total is None
