"""The reporting loop: poll the devices, turn readings into status reports and events, enqueue them.

Timing, all from one monotonic clock:
- devices are read every `poll_interval_s` (each read bounded, see agent.devices);
- a status report goes out at once when what the devices say changed, but at most one such
  change report per `debounce_s` -- a flapping sensor yields one report per window carrying its
  latest state, not one per flap;
- otherwise a status report goes out every `status_interval_s` after the previous one;
- events go out as soon as they are seen.

Everything goes through the durable outbox (which allocates `seq`); the MQTT link is only woken.
`tick(now)` does what is due and says when it next needs to run, so tests drive it with a fake
clock and no sleeping.

`reconfigure()` (any thread: the desired-state worker) hands new settings over; they are taken
at the start of the next tick, on the reporting thread, which it wakes. A new applied document
hash counts as a change, so a status report carrying it goes out within `debounce_s`.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from agent import report
from agent.devices import BoundedDevice
from agent.drivers.base import DriverError, PrinterStatus, ReaderStatus, offline_printer
from agent.events import Event, EventDetector
from agent.host import host_info
from agent.outbox import Outbox
from agent.paper import PaperTracker

log = logging.getLogger(__name__)

#: The longest the loop sleeps without looking at `stop` (which a caller may set unannounced).
MAX_SLEEP_S = 1.0


def _dumps(payload: dict[str, Any]) -> bytes:
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()


class Reporter:
    def __init__(
        self,
        *,
        terminal_id: str,
        outbox: Outbox,
        agent_version: str,
        data_dir: Path,
        status_interval_s: float,
        poll_interval_s: float,
        debounce_s: float,
        printer: BoundedDevice[PrinterStatus] | None = None,
        reader: BoundedDevice[ReaderStatus] | None = None,
        paper: PaperTracker | None = None,
        wake: Callable[[], None] = lambda: None,
        on_devices_ok: Callable[[], None] = lambda: None,
        clock: Callable[[], float] = time.monotonic,
        desired: str | None = None,
        paper_low_pct: int | None = None,
    ) -> None:
        self.terminal_id = terminal_id
        self.outbox = outbox
        self.agent_version = agent_version
        self.data_dir = data_dir
        self.status_interval_s = status_interval_s
        self.poll_interval_s = poll_interval_s
        self.debounce_s = debounce_s
        self.printer = printer
        self.reader = reader
        self.paper = paper
        self.wake = wake
        #: Called after a poll that read every configured device without an error (the
        #: update health check's "drivers readable").
        self.on_devices_ok = on_devices_ok
        self.clock = clock
        #: The applied desired-state document's hash, carried by every status report.
        self.desired = desired
        #: Under this paper level the report carries `media-low` (None: the printer decides).
        self.paper_low_pct = paper_low_pct
        self._settings_lock = threading.Lock()
        self._pending: dict[str, Any] | None = None
        self._kick = threading.Event()
        self._report_now = False
        self.started = time.monotonic()
        self.events = EventDetector(repeat_after_s=debounce_s)
        self._status_topic = report.topic(terminal_id, "status")
        self._event_topic = report.topic(terminal_id, "event")
        self.printer_status: PrinterStatus | None = None
        self.reader_status: ReaderStatus | None = None
        self._reported: tuple[PrinterStatus | None, ReaderStatus | None, str | None] | None = None
        self._next_poll = -math.inf
        self._last_report = -math.inf
        self._last_change_report = -math.inf

    def run(self, stop: threading.Event) -> None:
        """Report until `stop` is set (by the SIGTERM handler, which also calls `kick`)."""
        while not stop.is_set():
            due = self.tick(self.clock())
            self._kick.wait(min(MAX_SLEEP_S, max(0.0, due - self.clock())))
            self._kick.clear()

    def refresh(self) -> None:
        """Poll and send a status report now (any thread: the `refresh_status` command)."""
        with self._settings_lock:
            self._report_now = True
        self.kick()

    def kick(self) -> None:
        """Wake `run` now (new settings, or a stop)."""
        self._kick.set()

    def reconfigure(
        self,
        *,
        status_interval_s: float,
        poll_interval_s: float,
        debounce_s: float,
        paper_low_pct: int | None,
        paper_capacity: int | None,
        desired: str | None,
    ) -> None:
        """New settings from the desired state (any thread); taken at the next tick."""
        with self._settings_lock:
            self._pending = {
                "status_interval_s": status_interval_s,
                "poll_interval_s": poll_interval_s,
                "debounce_s": debounce_s,
                "paper_low_pct": paper_low_pct,
                "paper_capacity": paper_capacity,
                "desired": desired,
            }
        self.kick()

    def _take_settings(self, now: float) -> None:
        with self._settings_lock:
            new, self._pending = self._pending, None
        if new is None:
            return
        self.status_interval_s = new["status_interval_s"]
        self.debounce_s = new["debounce_s"]
        self.events.repeat_after_s = new["debounce_s"]
        if new["poll_interval_s"] != self.poll_interval_s:
            self.poll_interval_s = new["poll_interval_s"]
            self._next_poll = min(self._next_poll, now + self.poll_interval_s)
        self.paper_low_pct = new["paper_low_pct"]
        if self.paper is not None and new["paper_capacity"] is not None:
            self.paper.capacity = new["paper_capacity"]
        self.desired = new["desired"]
        log.info(
            "settings: status every %gs, poll every %gs, debounce %gs, paper low %s%%, desired %s",
            self.status_interval_s,
            self.poll_interval_s,
            self.debounce_s,
            self.paper_low_pct,
            self.desired,
        )

    def tick(self, now: float) -> float:
        """Do what is due at `now`; returns the time the next thing is due."""
        self._take_settings(now)
        with self._settings_lock:
            refresh, self._report_now = self._report_now, False
        if now >= self._next_poll or refresh:
            self.poll(now)
            self._next_poll = now + self.poll_interval_s
        if refresh:
            self._report(now)
        changed = self._content() != self._reported
        if changed and now - self._last_change_report >= self.debounce_s:
            self._report(now)
            self._last_change_report = now
            changed = False
        elif now - self._last_report >= self.status_interval_s:
            self._report(now)
            changed = self._content() != self._reported
        due = min(self._next_poll, self._last_report + self.status_interval_s)
        if changed:
            due = min(due, self._last_change_report + self.debounce_s)
        return due

    def poll(self, now: float) -> None:
        """Read the devices once and enqueue the events the readings mean."""
        events: list[Event] = []
        perr = rerr = None
        if self.printer is not None:
            pstatus, perr = self._read_printer(self.printer)
            refill = None
            if self.paper is not None:
                pstatus, refill = self.paper.update(pstatus)
            pstatus = self._low_paper(pstatus)
            self.printer_status = pstatus
            events += self.events.printer(now, pstatus, refill, perr)
        if self.reader is not None:
            rstatus, rerr = self._read_reader(self.reader)
            self.reader_status = rstatus
            events += self.events.reader(now, rstatus, rerr)
        for e in events:
            self.emit(e.kind, **e.data)
        if perr is None and rerr is None:
            self.on_devices_ok()

    def _low_paper(self, status: PrinterStatus) -> PrinterStatus:
        """`media-low` under the configured threshold, whatever the printer's own sensor says."""
        paper, low = status.paper, self.paper_low_pct
        if (
            low is None
            or paper is None
            or paper.level_pct is None
            or paper.level_pct >= low
            or {"media-low", "media-empty"} & set(status.reasons)
        ):
            return status
        return replace(status, reasons=tuple(sorted((*status.reasons, "media-low"))))

    def emit(self, kind: str, **data: Any) -> int | None:
        """Enqueue one event now; returns its seq (None if the outbox refused it)."""

        def build(seq: int) -> bytes:
            return _dumps(
                report.event(seq=seq, kind=kind, agent_version=self.agent_version, **data)
            )

        seq = self.outbox.enqueue("event", self._event_topic, build)
        log.info("event %s seq=%s %s", kind, seq, data)
        self.wake()
        return seq

    def _report(self, now: float) -> None:
        stats = self.outbox.stats()
        printer, reader = self.printer_status, self.reader_status
        desired = self.desired

        def build(seq: int) -> bytes:
            payload = report.status(
                seq=seq,
                agent_version=self.agent_version,
                printer=printer,
                reader=reader,
                host=host_info(self.data_dir, self.started),
                desired=desired,
            )
            # An added field (DESIGN.md allows additions): what the outbox lost or holds, so
            # compaction under a long outage and broker refusals are visible on the server.
            payload["outbox"] = stats.to_json()
            return _dumps(payload)

        self.outbox.enqueue("status", self._status_topic, build)
        self._reported = (printer, reader, desired)
        self._last_report = now
        self.wake()

    def _content(self) -> tuple[PrinterStatus | None, ReaderStatus | None, str | None]:
        # The device readings and the applied document: host figures (uptime, free disk)
        # change every time and must not count as a change, or every poll would report.
        return (self.printer_status, self.reader_status, self.desired)

    @staticmethod
    def _read_printer(dev: BoundedDevice[PrinterStatus]) -> tuple[PrinterStatus, str | None]:
        try:
            return dev.read(), None
        except DriverError as e:
            log.warning("printer read failed: %s", e)
            return offline_printer(dev.name), str(e)

    @staticmethod
    def _read_reader(dev: BoundedDevice[ReaderStatus]) -> tuple[ReaderStatus, str | None]:
        try:
            return dev.read(), None
        except DriverError as e:
            log.warning("reader read failed: %s", e)
            return ReaderStatus(driver=dev.name, state="offline", detail=str(e)), str(e)
