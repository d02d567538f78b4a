"""The reporting loop with fake devices and a fake clock: when reports go, which events a reading
means, paper estimates. (What the broker sees is proven against a real Mosquitto elsewhere.)"""

from __future__ import annotations

import json
import threading
from dataclasses import replace
from pathlib import Path
from typing import Any

from agent.devices import BoundedDevice
from agent.drivers.base import DriverError, PaperLevel, PrinterStatus, ReaderStatus
from agent.outbox import Outbox
from agent.paper import PaperTracker
from agent.reporter import Reporter


class FakePrinter:
    """A test double: the test sets what the next read returns, or makes it fail."""

    name = "fake"

    def __init__(self, status: PrinterStatus) -> None:
        self.status = status
        self.fail: str | None = None
        self.hang = threading.Event()
        self.hanging = False

    def read(self) -> PrinterStatus:
        if self.hanging:
            self.hang.wait(5)
        if self.fail:
            raise DriverError(self.name, self.fail)
        return self.status

    def close(self) -> None:
        self.hang.set()


class FakeReader:
    name = "fake"

    def __init__(self) -> None:
        self.status = ReaderStatus(driver="fake", state="ok", card_present=False)

    def read(self) -> ReaderStatus:
        return self.status

    def close(self) -> None:
        pass


IDLE = PrinterStatus(
    driver="fake",
    state="idle",
    paper=PaperLevel(level_pct=50, sheets_left=250, capacity=500),
    toner_pct=80,
    pages_total=1000,
)


class Rig:
    def __init__(self, tmp_path: Path, printer: PrinterStatus = IDLE, **kw: Any) -> None:
        self.outbox = Outbox(tmp_path / "o.db", 10_000_000)
        self.printer = FakePrinter(printer)
        self.reader = FakeReader()
        self.woken = 0
        settings: dict[str, Any] = {
            "status_interval_s": 30.0,
            "poll_interval_s": 2.0,
            "debounce_s": 5.0,
            **kw,
        }
        self.paper = PaperTracker(self.outbox, capacity=settings.pop("capacity", None))
        self.reporter = Reporter(
            terminal_id="T-0001",
            outbox=self.outbox,
            agent_version="9.9.9",
            data_dir=tmp_path,
            printer=BoundedDevice(self.printer, budget_s=0.5),
            reader=BoundedDevice(self.reader, budget_s=0.5),
            paper=self.paper,
            wake=self._wake,
            **settings,
        )
        self._taken = 0

    def _wake(self) -> None:
        self.woken += 1

    def new(self) -> list[dict[str, Any]]:
        """Messages enqueued since the last call, decoded, with their kind."""
        rows = self.outbox.peek(limit=10_000)[self._taken :]
        self._taken += len(rows)
        return [{"kind": r.kind, "topic": r.topic, **json.loads(r.payload)} for r in rows]

    def statuses(self) -> list[dict[str, Any]]:
        return [m for m in self.new() if m["kind"] == "status"]


def test_first_report_at_once_then_every_status_interval(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    due = rig.reporter.tick(0.0)
    [first] = rig.new()
    assert first["kind"] == "status" and first["topic"] == "fleet/v1/t/T-0001/status"
    assert first["seq"] == 1 and first["agent"] == "9.9.9" and first["v"] == 1
    assert first["printer"]["state"] == "idle" and first["printer"]["pages_total"] == 1000
    assert first["printer"]["paper"] == {
        "level_pct": 50,
        "sheets_left": 250,
        "capacity": 500,
        "estimated": False,
    }
    assert first["reader"]["state"] == "ok"
    assert set(first["host"]) >= {"uptime_s", "disk_free_mb"}
    assert first["outbox"] == {"queued": 0, "dropped_status": 0, "dropped_events": 0, "rejected": 0}
    assert due == 2.0  # the next poll
    assert rig.woken == 1
    t = 0.0
    while t <= 90:
        t = rig.reporter.tick(t)
    msgs = rig.new()
    assert [m["seq"] for m in msgs] == [2, 3, 4]  # at 30, 60, 90 s: nothing changed
    assert all(m["kind"] == "status" for m in msgs)


def test_a_change_is_reported_at_once(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    rig.reporter.tick(0.0)
    rig.new()
    rig.printer.status = replace(IDLE, state="printing")
    rig.reporter.tick(10.0)
    [m] = rig.statuses()
    assert m["printer"]["state"] == "printing"


def test_a_flapping_sensor_yields_one_report_per_debounce_window(tmp_path: Path) -> None:
    rig = Rig(tmp_path, poll_interval_s=0.5, debounce_s=5.0)
    rig.reporter.tick(0.0)
    rig.new()
    t = 10.0
    for i in range(20):  # the door switch bounces every half second for ten seconds
        rig.printer.status = replace(IDLE, reasons=("door-open",) if i % 2 == 0 else ())
        rig.reporter.tick(t)
        t += 0.5
    msgs = rig.new()
    reports = [m for m in msgs if m["kind"] == "status"]
    events = [m for m in msgs if m["kind"] == "event"]
    assert len(reports) == 2, "twenty readings, one change report per 5 s window"
    assert len(events) == 2, "one device_error per reason per window, not one per bounce"
    # The last report carries the state the sensor settled in (closed).
    assert reports[-1]["printer"]["reasons"] == []
    rig.reporter.tick(20.0)
    assert rig.statuses() == []


def test_a_held_change_goes_out_when_the_window_ends(tmp_path: Path) -> None:
    rig = Rig(tmp_path, poll_interval_s=1.0, debounce_s=5.0)
    rig.reporter.tick(0.0)
    rig.printer.status = replace(IDLE, state="printing")
    rig.reporter.tick(10.0)
    assert [s["printer"]["state"] for s in rig.statuses()] == ["idle", "printing"]
    rig.printer.status = replace(IDLE, state="stopped", reasons=("media-jam",))
    for t in (12.0, 13.0, 14.0, 14.9):
        rig.reporter.tick(t)
    assert rig.statuses() == []  # held: a change report went out at 10 s
    assert rig.reporter.tick(14.95) == 15.0  # it asks to be woken when the window ends
    rig.reporter.tick(15.0)
    [held] = rig.statuses()
    assert held["printer"]["state"] == "stopped"


def test_print_refill_and_error_events(tmp_path: Path) -> None:
    rig = Rig(tmp_path, debounce_s=0.0)
    rig.reporter.tick(0.0)
    rig.new()
    low = replace(IDLE, reasons=("media-low",), paper=PaperLevel(5, 25, 500), pages_total=1003)
    rig.printer.status = low
    rig.reporter.tick(2.0)
    msgs = rig.new()
    [ev] = [m for m in msgs if m["kind"] == "event"]
    assert ev["topic"] == "fleet/v1/t/T-0001/event"
    assert (ev["event"], ev["pages"], ev["pages_total"]) == ("print_completed", 3, 1003)
    assert "serial" in ev
    assert [m["kind"] for m in msgs] == ["event", "status"]  # events first, same seq line
    assert msgs[0]["seq"] + 1 == msgs[1]["seq"]

    rig.printer.status = replace(low, reasons=(), paper=PaperLevel(100, 500, 500))
    rig.reporter.tick(4.0)
    [ev] = [m for m in rig.new() if m["kind"] == "event"]
    assert ev["event"] == "paper_refilled" and ev["how"] == "level_jump"
    assert ev["paper"]["level_pct"] == 100

    jam = replace(IDLE, state="stopped", reasons=("media-jam", "toner-low"), pages_total=1003)
    rig.printer.status = jam
    rig.reporter.tick(6.0)
    [ev] = [m for m in rig.new() if m["kind"] == "event"]
    assert ev["event"] == "device_error"
    assert (ev["device"], ev["reason"]) == ("printer", "media-jam")  # toner-low is a warning
    rig.reporter.tick(8.0)
    assert [m for m in rig.new() if m["kind"] == "event"] == []  # still jammed: no new event


def test_a_failing_driver_is_offline_with_one_event(tmp_path: Path) -> None:
    rig = Rig(tmp_path, debounce_s=0.0)
    rig.reporter.tick(0.0)
    rig.new()
    rig.printer.fail = "cannot connect to 10.0.0.9:631: timed out"
    for t in (2.0, 4.0, 6.0):
        rig.reporter.tick(t)
    msgs = rig.new()
    events = [m for m in msgs if m["kind"] == "event"]
    assert len(events) == 1
    assert events[0]["reason"] == "offline" and "timed out" in events[0]["detail"]
    status = next(m for m in msgs if m["kind"] == "status")
    # Unknown is not empty: an unreadable printer reports no paper level at all.
    assert status["printer"]["state"] == "offline" and status["printer"]["paper"] is None
    rig.printer.fail = None
    rig.reporter.tick(8.0)
    assert [m for m in rig.new() if m["kind"] == "event"] == []


def test_a_hung_driver_does_not_stop_reporting(tmp_path: Path) -> None:
    rig = Rig(tmp_path, debounce_s=0.0)
    rig.reporter.tick(0.0)
    rig.new()
    rig.printer.hanging = True
    rig.reporter.tick(2.0)  # waits the 0.5 s budget, not forever
    rig.reporter.tick(4.0)  # the stuck read is still running: no second thread piles up
    msgs = rig.new()
    assert [m["printer"]["state"] for m in msgs if m["kind"] == "status"] == ["offline"]
    assert "did not finish" in next(m for m in msgs if m["kind"] == "event")["detail"]
    rig.printer.close()


def test_reader_errors_raise_one_event_each(tmp_path: Path) -> None:
    rig = Rig(tmp_path, debounce_s=0.0)
    rig.reporter.tick(0.0)
    rig.new()
    rig.reader.status = ReaderStatus(driver="fake", state="no_reader", detail="unplugged")
    rig.reporter.tick(2.0)
    rig.reporter.tick(4.0)
    events = [m for m in rig.new() if m["kind"] == "event"]
    assert [(e["device"], e["reason"], e["detail"]) for e in events] == [
        ("reader", "no_reader", "unplugged")
    ]


def test_paper_estimated_from_pages_since_refill(tmp_path: Path) -> None:
    # An ESC/POS-like printer: says media-empty, never a level.
    blind = PrinterStatus(driver="fake", state="idle", pages_total=5000)
    rig = Rig(tmp_path, printer=blind, capacity=200, debounce_s=0.0)
    rig.reporter.tick(0.0)
    [s] = rig.statuses()
    assert s["printer"]["paper"] == {
        "level_pct": None,
        "sheets_left": None,
        "capacity": 200,
        "estimated": False,
    }, "no refill seen yet: the level is unknown, not full and not empty"
    rig.printer.status = replace(blind, state="stopped", reasons=("media-empty",))
    rig.reporter.tick(2.0)
    s = rig.statuses()[0]
    assert s["printer"]["paper"]["level_pct"] == 0 and not s["printer"]["paper"]["estimated"]
    rig.printer.status = blind  # staff refilled it
    rig.reporter.tick(4.0)
    msgs = rig.new()
    assert [m["event"] for m in msgs if m["kind"] == "event"] == ["paper_refilled"]
    rig.printer.status = replace(blind, pages_total=5050)
    rig.reporter.tick(6.0)
    s = rig.statuses()[0]
    assert s["printer"]["paper"] == {
        "level_pct": 75,
        "sheets_left": 150,
        "capacity": 200,
        "estimated": True,
    }
    # The refill baseline survives a restart of the agent.
    again = PaperTracker(rig.outbox, capacity=200)
    out, refill = again.update(replace(blind, pages_total=5199))
    assert refill is None
    assert out.paper == PaperLevel(level_pct=1, sheets_left=1, capacity=200, estimated=True)


def test_run_stops_when_told(tmp_path: Path) -> None:
    rig = Rig(tmp_path, status_interval_s=0.05, poll_interval_s=0.05)
    stop = threading.Event()
    t = threading.Thread(target=rig.reporter.run, args=(stop,))
    t.start()
    threading.Timer(0.3, stop.set).start()
    t.join(5)
    assert not t.is_alive()
    assert 2 <= len(rig.statuses()) <= 10  # about six; a loaded CI machine may manage fewer


def test_seq_is_shared_by_status_and_events(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    rig.reporter.tick(0.0)
    rig.reporter.emit("device_error", device="printer", reason="other")
    rig.reporter.tick(30.0)
    assert [m["seq"] for m in rig.new()] == [1, 2, 3]
