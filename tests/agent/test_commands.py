"""Remote commands: checks, expiry, exactly-once by id, and test pages on real printers
(CUPS's ippeveprinter over IPP, the ESC/POS simulator over TCP, the simulated printer)."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest

from agent.commands import MAX_COMMAND_BYTES, REMEMBERED, STORE_FILE, CommandRunner
from agent.drivers.escpos import EscPosPrinter, page_bytes
from agent.drivers.ipp import IppPrinter
from agent.drivers.simulated import SimulatedPrinter
from agent.testpage import TITLE_ZH, TestPage, choose_format, render_pdf, render_text
from tests.agent.escpos_sim import TcpPrinterSim
from tests.services import ippeveprinter

NOW = 1_800_000_000.0  # 2027-01-15T08:00:00Z
ISSUED = "2027-01-15T07:59:00Z"
EXPIRES = "2027-01-15T08:05:00Z"


def command(name: str = "refresh_status", cid: str = "cmd-00000001", **extra: Any) -> bytes:
    body: dict[str, Any] = {
        "v": 1,
        "id": cid,
        "name": name,
        "args": {},
        "issued_at": ISSUED,
        "expires_at": EXPIRES,
    }
    body.update(extra)
    return json.dumps(body).encode()


class Calls:
    def __init__(self) -> None:
        self.wakes = 0
        self.restarts = 0

    def wake(self) -> None:
        self.wakes += 1

    def restart(self) -> None:
        self.restarts += 1


def runner(
    state_dir: Path | None, printer: object | None = None, calls: Calls | None = None
) -> CommandRunner:
    calls = calls or Calls()
    return CommandRunner("T-0001", printer, calls.wake, calls.restart, state_dir, lambda: NOW)


def result_of(r: CommandRunner, payload: bytes) -> dict[str, Any]:
    result = r.handle(payload)
    assert result is not None
    assert set(result) == {"v", "id", "ts", "status", "detail"}
    assert result["v"] == 1 and "\n" not in result["detail"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", result["ts"])
    return result


# --- checks, expiry, deduplication -----------------------------------------------------------


def test_refresh_status_wakes_the_reporter(tmp_path: Path) -> None:
    calls = Calls()
    r = runner(tmp_path, calls=calls)
    result = result_of(r, command("refresh_status"))
    assert (result["id"], result["status"], result["ts"]) == (
        "cmd-00000001",
        "ok",
        "2027-01-15T08:00:00Z",
    )
    assert calls.wakes == 1


@pytest.mark.parametrize(
    "payload",
    [
        b"not json",
        b"\xff\xfe",
        b"[1, 2]",
        b'"a string"',
        b"{}",
        json.dumps({"v": 1, "name": "refresh_status"}).encode(),  # no id
        command(cid="short"),
        command(cid="x" * 65),
        command(cid="bad/id/with/slashes"),
        json.dumps({"id": 12345678}).encode(),
        command(pad="x" * MAX_COMMAND_BYTES),  # too large, even with a good id
    ],
)
def test_nothing_to_correlate_is_not_answered(tmp_path: Path, payload: bytes) -> None:
    calls = Calls()
    assert runner(tmp_path, calls=calls).handle(payload) is None
    assert calls.wakes == calls.restarts == 0


@pytest.mark.parametrize(
    "payload, reason",
    [
        (command("format_disk"), "unknown command 'format_disk'"),
        (command(v=2), "unsupported version 2"),
        (command(extra=1), "unknown field 'extra'"),
        (command(args={"copies": 3}), "takes no argument 'copies'"),
        (command(args=[]), "args must be an object"),
        (command(issued_at="yesterday"), "issued_at must be an RFC 3339 timestamp"),
        (command(expires_at=1800000300), "expires_at must be an RFC 3339 timestamp"),
        (command(expires_at="2027-02-30T08:00:00Z"), "expires_at is not a valid date"),
        (command(expires_at="2027-01-15T08:05:00"), "expires_at must be an RFC 3339"),
        (command(expires_at=ISSUED), "expires_at is not after issued_at"),
    ],
)
def test_malformed_commands_are_rejected_with_the_reason(
    tmp_path: Path, payload: bytes, reason: str
) -> None:
    calls = Calls()
    result = result_of(runner(tmp_path, calls=calls), payload)
    assert result["status"] == "rejected"
    assert reason in result["detail"]
    assert calls.wakes == calls.restarts == 0


def test_garbage_never_raises(tmp_path: Path) -> None:
    import random

    rng = random.Random(5)
    r = runner(tmp_path)
    good = command()
    for _ in range(500):
        data = bytearray(good)
        for _ in range(rng.randint(1, 4)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        r.handle(bytes(data))


def test_an_expired_command_is_not_run(tmp_path: Path) -> None:
    calls = Calls()
    r = runner(tmp_path, calls=calls)
    result = result_of(r, command("restart_agent", expires_at="2027-01-15T07:59:59Z"))
    assert result["status"] == "expired"
    assert "expired at 2027-01-15T07:59:59Z" in result["detail"]
    assert calls.restarts == 0


def test_a_repeated_id_is_answered_but_not_run_again_even_after_a_restart(tmp_path: Path) -> None:
    calls = Calls()
    first = result_of(runner(tmp_path, calls=calls), command("restart_agent"))
    assert (first["status"], first["detail"], calls.restarts) == ("ok", "restarting", 1)
    # The agent restarted; the broker delivers the same command again.
    again = runner(tmp_path, calls=calls)
    assert again.handle(command("restart_agent")) == first
    assert again.handle(command("restart_agent")) == first
    assert calls.restarts == 1
    # A new id runs.
    assert result_of(again, command("restart_agent", cid="cmd-00000002"))["status"] == "ok"
    assert calls.restarts == 2


def test_memory_of_ids_is_bounded_and_survives_a_corrupt_file(tmp_path: Path) -> None:
    calls = Calls()
    r = runner(tmp_path, calls=calls)
    for i in range(REMEMBERED + 20):
        r.handle(command(cid=f"cmd-{i:08d}"))
    stored = json.loads((tmp_path / STORE_FILE).read_text())["results"]
    assert len(stored) == REMEMBERED
    assert stored[-1]["id"] == f"cmd-{REMEMBERED + 19:08d}"
    assert not list(tmp_path.glob(".commands-*"))  # no temporary file left behind
    r2 = runner(tmp_path, calls=calls)
    r2.handle(command(cid=f"cmd-{REMEMBERED + 19:08d}"))  # remembered: not run
    r2.handle(command(cid="cmd-00000000"))  # forgotten (the oldest): runs again
    assert calls.wakes == REMEMBERED + 21
    (tmp_path / STORE_FILE).write_bytes(b'{"v": 1, "results": [tru')
    assert result_of(runner(tmp_path, calls=calls), command())["status"] == "ok"


def test_in_memory_store_for_the_simulator() -> None:
    calls = Calls()
    r = runner(None, calls=calls)
    assert r.handle(command()) == r.handle(command())
    assert calls.wakes == 1


def test_no_printer_or_a_driver_without_test_pages(tmp_path: Path) -> None:
    result = result_of(runner(tmp_path), command("print_test_page"))
    assert (result["status"], result["detail"]) == ("failed", "no printer configured")

    class StatusOnly:
        name = "pcl"

    result = result_of(
        runner(tmp_path, StatusOnly()), command("print_test_page", cid="cmd-2222222")
    )
    assert (result["status"], result["detail"]) == ("failed", "not supported by the pcl driver")


# --- the test page itself --------------------------------------------------------------------


PAGE = TestPage("T-0001", "2027-01-15T08:00:00Z", "cmd-00000001", ("Printer: ipp, idle",))


def test_pdf_is_well_formed() -> None:
    pdf = render_pdf(PAGE)
    assert pdf.startswith(b"%PDF-1.4\n") and pdf.endswith(b"%%EOF\n")
    startxref = int(pdf.rsplit(b"startxref\n", 1)[1].split(b"\n")[0])
    assert pdf[startxref:].startswith(b"xref\n0 9\n")
    entries = pdf[startxref:].split(b"\n")[3:11]
    for number, entry in enumerate(entries, start=1):
        offset = int(entry[:10])
        assert pdf[offset:].startswith(b"%d 0 obj\n" % number)
    stream = pdf.split(b"stream\n", 1)[1].split(b"endstream", 1)[0]
    assert b"/Length %d" % len(stream) in pdf
    assert b"(Terminal: T-0001)" in stream
    assert TITLE_ZH.encode("utf-16-be").hex().upper().encode() in stream


def test_formats() -> None:
    assert choose_format(["application/octet-stream", "application/pdf"]) == "application/pdf"
    assert choose_format(["image/pwg-raster", "text/plain; charset=utf-8"]) == (
        "text/plain; charset=utf-8"
    )
    assert choose_format(["image/pwg-raster", "image/urf"]) is None
    text = render_text(PAGE).decode()
    assert TITLE_ZH in text and "T-0001" in text and "Printer: ipp, idle" in text


# --- IPP: a real printer ---------------------------------------------------------------------


@pytest.fixture
def printer() -> Iterator[ippeveprinter.IppEvePrinter]:
    if not ippeveprinter.available():
        pytest.skip("ippeveprinter or dbus-daemon is not installed")
    p = ippeveprinter.IppEvePrinter().start()
    p.set_paper(main=200)
    p.set_supplies(toner=80)
    yield p
    p.close()


def spooled(p: ippeveprinter.IppEvePrinter) -> list[Path]:
    """Every job's document (`-k` keeps them; the print command's output goes to .prn)."""
    return sorted(f for f in p.spool.rglob("*") if f.is_file() and f.suffix != ".prn")


def test_ipp_test_page_prints_and_completes(
    printer: ippeveprinter.IppEvePrinter, tmp_path: Path
) -> None:
    r = runner(tmp_path, IppPrinter(printer.uri, timeout_s=2.0))
    result = result_of(r, command("print_test_page"))
    assert result["status"] == "ok", result
    assert re.fullmatch(r"job \d+ completed \(application/pdf\)", result["detail"])
    [doc] = spooled(printer)
    data = doc.read_bytes()
    assert data == render_pdf(TestPage("T-0001", "2027-01-15T08:00:00Z", "cmd-00000001",
                                        _lines_of(data)))  # fmt: skip
    assert b"(Terminal: T-0001)" in data and b"(Reasons: none)" in data
    assert b"(Paper: 200 sheets of 250)" in data and b"(Toner: 80%)" in data
    # Delivered twice by the broker: answered twice, printed once.
    assert r.handle(command("print_test_page")) == result
    assert len(spooled(printer)) == 1


def _lines_of(pdf: bytes) -> tuple[str, ...]:
    """The printer lines drawn on a test page (everything after the Command line)."""
    texts = re.findall(rb"\(((?:[^()\\]|\\.)*)\) Tj", pdf)
    lines = [t.decode("latin-1") for t in texts]
    return tuple(lines[lines.index("Command: cmd-00000001") + 1 :])


def test_ipp_expired_command_sends_no_job(
    printer: ippeveprinter.IppEvePrinter, tmp_path: Path
) -> None:
    r = runner(tmp_path, IppPrinter(printer.uri, timeout_s=2.0))
    payload = command("print_test_page", expires_at="2027-01-15T07:59:30Z")
    assert result_of(r, payload)["status"] == "expired"
    time.sleep(0.2)
    assert spooled(printer) == []


def test_ipp_stopped_printer_fails_without_a_job(
    printer: ippeveprinter.IppEvePrinter, tmp_path: Path
) -> None:
    printer.set_paper(main=0)
    r = runner(tmp_path, IppPrinter(printer.uri, timeout_s=2.0))
    result = result_of(r, command("print_test_page"))
    assert (result["status"], result["detail"]) == (
        "failed",
        "printer is stopped (media-empty)",
    )
    assert spooled(printer) == []


def test_ipp_job_that_never_finishes_times_out_and_is_cancelled(
    printer: ippeveprinter.IppEvePrinter, tmp_path: Path
) -> None:
    class Stuck(IppPrinter):
        cancelled: ClassVar[list[int]] = []

        def job_status(self, job_id: int) -> tuple[str, tuple[str, ...]]:
            return "processing", ("job-printing",)

        def cancel_job(self, job_id: int) -> None:
            self.cancelled.append(job_id)
            super().cancel_job(job_id)  # the real job is done already: refused, ignored

    stuck = Stuck(printer.uri, timeout_s=2.0, job_timeout_s=0.5)
    result = result_of(runner(tmp_path, stuck), command("print_test_page"))
    assert result["status"] == "failed"
    assert re.fullmatch(
        r"job (\d+) still processing after 0\.5s \(job-printing\)", result["detail"]
    )
    assert len(stuck.cancelled) == 1


def test_ipp_printer_gone(printer: ippeveprinter.IppEvePrinter, tmp_path: Path) -> None:
    driver = IppPrinter(printer.uri, timeout_s=1.0)
    printer.kill()
    result = result_of(runner(tmp_path, driver), command("print_test_page"))
    assert result["status"] == "failed" and "cannot connect" in result["detail"]


# --- ESC/POS ---------------------------------------------------------------------------------


class RecordingSim(TcpPrinterSim):
    """The DLE EOT simulator, also keeping every byte it was sent (what it would print)."""

    def __init__(self) -> None:
        self.received = bytearray()
        super().__init__()

    def _replies(self, session: Any, data: bytes) -> bytes | None:
        self.received += data
        return super()._replies(session, data)


@pytest.fixture
def escpos() -> Iterator[RecordingSim]:
    sim = RecordingSim()
    yield sim
    sim.close()


def test_escpos_test_page(escpos: RecordingSim, tmp_path: Path) -> None:
    r = runner(tmp_path, EscPosPrinter(escpos.address, timeout_s=1.0))
    result = result_of(r, command("print_test_page"))
    assert result["status"] == "ok", result
    assert result["detail"].endswith(f"bytes printed on 127.0.0.1:{escpos.port}")
    data = bytes(escpos.received)
    assert TITLE_ZH.encode("gb18030") in data and b"Terminal: T-0001" in data
    assert data.index(b"\x1b@") < data.index(b"\x1dVB\x00")  # initialise ... cut
    assert b"\x10\x04" not in page_bytes(PAGE)  # the page never looks like a status request


def test_escpos_out_of_paper_prints_nothing(escpos: RecordingSim, tmp_path: Path) -> None:
    escpos.state.paper = "end"
    r = runner(tmp_path, EscPosPrinter(escpos.address, timeout_s=1.0))
    result = result_of(r, command("print_test_page"))
    assert (result["status"], result["detail"]) == (
        "failed",
        "printer stopped before printing (media-empty)",
    )
    assert b"\x1b@" not in escpos.received


def test_escpos_printer_not_there(tmp_path: Path) -> None:
    sim = RecordingSim()
    sim.close()
    r = runner(tmp_path, EscPosPrinter(sim.address, timeout_s=0.5))
    result = result_of(r, command("print_test_page"))
    assert result["status"] == "failed" and "cannot connect" in result["detail"]


# --- the simulated printer -------------------------------------------------------------------


def test_sim_printer_uses_a_sheet_and_fails_when_empty(tmp_path: Path) -> None:
    sim = SimulatedPrinter(capacity=10, start_sheets=1, prints_per_hour=0, clock=lambda: NOW)
    r = runner(tmp_path, sim)
    result = result_of(r, command("print_test_page"))
    assert (result["status"], result["detail"]) == ("ok", "test page printed, 0 sheets left")
    assert sim.read().pages_total == 1 and sim.take_completed() == 0  # not a licence
    result = result_of(r, command("print_test_page", cid="cmd-00000002"))
    assert (result["status"], result["detail"]) == ("failed", "printer is stopped (media-empty)")
