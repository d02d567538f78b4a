"""Which discrete events a new device reading means: print_completed, paper_refilled, device_error.

Events are edges, not levels: a jam raises one `device_error` when it appears, not one per poll.
A sensor that flaps (a door switch bouncing) raises at most one event per reason per
`repeat_after_s`; the status reports still carry every state it was seen in.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from agent.drivers.base import PrinterStatus, ReaderStatus
from agent.paper import Refill

#: printer-state-reasons that stop a kiosk from printing. Warnings (media-low, toner-low) are
#: in every status report but are not device errors.
PRINTER_ERRORS = frozenset(
    {
        "offline",
        "shutdown",
        "media-empty",
        "media-needed",
        "media-jam",
        "toner-empty",
        "marker-supply-empty",
        "door-open",
        "cover-open",
        "input-tray-missing",
        "output-area-full",
        "other",
    }
)
READER_ERRORS = frozenset({"error", "no_reader", "offline"})


@dataclass(frozen=True)
class Event:
    kind: str
    data: dict[str, Any] = field(default_factory=dict)


class EventDetector:
    def __init__(self, repeat_after_s: float) -> None:
        self.repeat_after_s = repeat_after_s
        self._pages: int | None = None
        self._printer_errors: frozenset[str] = frozenset()
        self._reader_state: str | None = None
        self._last_emitted: dict[tuple[str, str], float] = {}

    def printer(
        self, now: float, status: PrinterStatus, refill: Refill | None, error: str | None
    ) -> list[Event]:
        out: list[Event] = []
        pages = status.pages_total
        if pages is not None:
            if self._pages is not None and pages > self._pages:
                # The licence serial is not known to the status path; the print path (a later
                # issue) will send it. `serial` is present so the payload shape never changes.
                out.append(
                    Event(
                        "print_completed",
                        {"pages": pages - self._pages, "pages_total": pages, "serial": None},
                    )
                )
            self._pages = pages
        if refill:
            paper = asdict(refill.paper) if refill.paper else None
            out.append(
                Event("paper_refilled", {"device": "printer", "how": refill.how, "paper": paper})
            )
        errors = frozenset(status.reasons) & PRINTER_ERRORS
        if status.state == "offline":
            # While the printer cannot be read its other errors are unknown, not cleared: keep
            # them, so a jam that outlasts a cable pull is not reported a second time.
            errors = errors | self._printer_errors | {"offline"}
        for reason in sorted(errors - self._printer_errors):
            data = {"device": "printer", "driver": status.driver, "reason": reason}
            if reason == "offline" and error:
                data["detail"] = error
            out.extend(self._limited(now, "device_error", data))
        self._printer_errors = errors
        return out

    def reader(self, now: float, status: ReaderStatus, error: str | None) -> list[Event]:
        out: list[Event] = []
        if status.state in READER_ERRORS and status.state != self._reader_state:
            data: dict[str, Any] = {
                "device": "reader",
                "driver": status.driver,
                "reason": status.state,
            }
            if error or status.detail:
                data["detail"] = error or status.detail
            out.extend(self._limited(now, "device_error", data))
        self._reader_state = status.state
        return out

    def _limited(self, now: float, kind: str, data: dict[str, Any]) -> list[Event]:
        key = (str(data["device"]), str(data["reason"]))
        last = self._last_emitted.get(key)
        if last is not None and now - last < self.repeat_after_s:
            return []
        self._last_emitted[key] = now
        return [Event(kind, data)]
