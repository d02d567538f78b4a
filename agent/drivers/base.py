"""What every device driver returns, and the one error type it raises.

Drivers are framework-free: plain classes with a blocking `read()` that finishes within the driver's
`timeout_s` (each network or device call carries that timeout). Every failure of a device becomes a
`DriverError`, so the agent has one thing to catch. "Unknown" is never reported as "empty": a field
the device did not tell us stays `None`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

if TYPE_CHECKING:
    from agent.testpage import TestPage

PrinterState = Literal["idle", "printing", "stopped", "offline"]
ReaderState = Literal["ok", "no_reader", "error", "offline"]


class DriverError(Exception):
    """A device could not be read: unreachable, timed out, or answered garbage."""

    def __init__(self, driver: str, message: str) -> None:
        super().__init__(f"{driver}: {message}")
        self.driver = driver
        self.message = message


@dataclass(frozen=True)
class PaperLevel:
    """Paper in the tray. `estimated` is True when computed from pages printed since the refill."""

    level_pct: int | None = None
    sheets_left: int | None = None
    capacity: int | None = None
    estimated: bool = False


@dataclass(frozen=True)
class PrinterStatus:
    driver: str
    state: PrinterState
    #: IPP printer-state-reasons keywords without severity suffix ("media-low", "cover-open", ...),
    #: sorted; empty when the printer reports "none".
    reasons: tuple[str, ...] = ()
    paper: PaperLevel | None = None
    toner_pct: int | None = None
    pages_total: int | None = None

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["reasons"] = list(self.reasons)
        return out


@dataclass(frozen=True)
class ReaderStatus:
    driver: str
    state: ReaderState
    card_present: bool | None = None
    reader_name: str | None = None
    detail: str | None = field(default=None, compare=False)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def offline_printer(driver: str, reason: str = "offline") -> PrinterStatus:
    """What a printer that did not answer is: offline, paper unknown (never "empty")."""
    return PrinterStatus(driver=driver, state="offline", reasons=(reason,))


class Printer(Protocol):
    name: str

    def read(self) -> PrinterStatus:
        """Current status; raises DriverError when the printer cannot be read."""
        ...

    def close(self) -> None: ...


@runtime_checkable
class TestPagePrinter(Protocol):
    """A printer driver that can print the remote command's test page (not every one can)."""

    name: str

    def print_test_page(self, page: TestPage) -> str:
        """Print `page` and wait until it is out; returns a one-line description (the job).

        Raises DriverError with the reason when it did not print (stopped, out of paper,
        timed out, refused); NotImplementedError when this printer cannot print it at all.
        """
        ...


class Reader(Protocol):
    name: str

    def read(self) -> ReaderStatus:
        """Current status; raises DriverError when the reader stack cannot be read."""
        ...

    def close(self) -> None: ...
