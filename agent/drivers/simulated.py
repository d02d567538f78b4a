"""Simulated printer and card reader, for demos, the fleet simulator and load tests.

The printer carries a paper model: citizens arrive as a Poisson process at `prints_per_hour`, each
licence takes `sheets_per_licence` sheets, each print jams with probability `jam_rate`, and a jam or
an empty tray stops the printer until staff call `clear_jam()` or `refill()`. The model advances
lazily by the time elapsed on `clock` whenever it is read, so a fake clock in a test (or a
sped-up one in a demo) drives it deterministically together with `seed`.

The simulator knows its tray exactly, so its paper level is reported with `estimated=False`.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable

from agent.drivers.base import DriverError, PaperLevel, PrinterState, PrinterStatus, ReaderStatus
from agent.testpage import TestPage

NAME = "sim"
#: Under this share of the tray the printer says `media-low` (IPP printers use similar thresholds).
LOW_PAPER_FRACTION = 0.20
#: Under this share of the cartridge the printer says `toner-low`.
LOW_TONER_FRACTION = 0.10

Clock = Callable[[], float]


def _poisson_gap(rng: random.Random, per_hour: float) -> float:
    """Seconds to the next arrival of a Poisson process with `per_hour` arrivals an hour."""
    return rng.expovariate(per_hour / 3600.0) if per_hour > 0 else math.inf


def _pct(left: int, full: int) -> int:
    # Rounded up, so a tray with one sheet left never reads 0 % (0 % means empty).
    return (left * 100 + full - 1) // full


class SimulatedPrinter:
    """A licence printer with a paper tray, a toner cartridge, and jams."""

    name = NAME

    def __init__(
        self,
        capacity: int = 500,
        sheets_per_licence: int = 1,
        prints_per_hour: float = 20.0,
        jam_rate: float = 0.0,
        start_sheets: int | None = None,
        seed: int | None = None,
        clock: Clock = time.monotonic,
        toner_pages: int = 6000,
    ) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1 sheet")
        if sheets_per_licence < 1:
            raise ValueError("sheets_per_licence must be at least 1")
        if prints_per_hour < 0:
            raise ValueError("prints_per_hour must not be negative")
        if not 0.0 <= jam_rate <= 1.0:
            raise ValueError("jam_rate is a probability per print, between 0 and 1")
        if start_sheets is not None and not 0 <= start_sheets <= capacity:
            raise ValueError("start_sheets must be between 0 and capacity")
        if toner_pages < 1:
            raise ValueError("toner_pages must be at least 1")
        self.capacity = capacity
        self.sheets_per_licence = sheets_per_licence
        self.prints_per_hour = prints_per_hour
        self.jam_rate = jam_rate
        self.toner_pages = toner_pages
        self._rng = random.Random(seed)
        self._clock = clock
        self._sheets = capacity if start_sheets is None else start_sheets
        self._toner_left = toner_pages
        self._jammed = False
        self._pages_total = 0
        self._completed = 0
        self._closed = False
        self._now = clock()
        self._next_arrival = self._now + _poisson_gap(self._rng, prints_per_hour)

    # -- what a driver offers ------------------------------------------------------------------

    def read(self) -> PrinterStatus:
        self._advance()
        reasons: list[str] = []
        if self._jammed:
            reasons.append("media-jam")
        if self._sheets == 0:
            reasons.append("media-empty")
        elif self._sheets < self.capacity * LOW_PAPER_FRACTION:
            reasons.append("media-low")
        if self._toner_left == 0:
            reasons.append("toner-empty")
        elif self._toner_left < self.toner_pages * LOW_TONER_FRACTION:
            reasons.append("toner-low")
        state: PrinterState = "stopped" if self._stopped() else "idle"
        return PrinterStatus(
            driver=NAME,
            state=state,
            reasons=tuple(sorted(reasons)),
            paper=PaperLevel(
                level_pct=_pct(self._sheets, self.capacity),
                sheets_left=self._sheets,
                capacity=self.capacity,
                estimated=False,
            ),
            toner_pct=_pct(self._toner_left, self.toner_pages),
            pages_total=self._pages_total,
        )

    def close(self) -> None:
        self._closed = True

    # -- what staff and citizens do ------------------------------------------------------------

    def print_licence(self) -> bool:
        """One print now, outside the random arrivals; True when the licence came out whole."""
        self._advance()
        return self._print_one()

    def print_test_page(self, page: TestPage) -> str:
        """One sheet from the tray, not counted as a licence; DriverError when stopped."""
        self._advance()
        if self._stopped():
            reasons = [r for r in self.read().reasons if r not in ("media-low", "toner-low")]
            raise DriverError(NAME, f"printer is stopped ({', '.join(reasons)})")
        self._sheets -= 1
        self._toner_left -= 1
        self._pages_total += 1
        return f"test page printed, {self._sheets} sheets left"

    def refill(self, sheets: int | None = None) -> int:
        """Put paper in the tray (a full tray by default); returns the sheets added."""
        self._advance()
        target = self.capacity if sheets is None else min(self.capacity, self._sheets + sheets)
        added = target - self._sheets
        self._sheets = target
        self._restart_arrivals()
        return added

    def clear_jam(self) -> None:
        self._advance()
        self._jammed = False
        self._restart_arrivals()

    def replace_toner(self) -> None:
        self._advance()
        self._toner_left = self.toner_pages
        self._restart_arrivals()

    def take_completed(self) -> int:
        """Licences printed whole since the last call (the agent turns each into an event)."""
        done, self._completed = self._completed, 0
        return done

    @property
    def sheets_left(self) -> int:
        return self._sheets

    @property
    def jammed(self) -> bool:
        return self._jammed

    # -- the model -----------------------------------------------------------------------------

    def _stopped(self) -> bool:
        return self._jammed or self._sheets == 0 or self._toner_left == 0

    def _advance(self) -> None:
        if self._closed:
            raise DriverError(NAME, "printer is closed")
        now = self._clock()
        while self._next_arrival <= now:
            if self._stopped():
                # Citizens who find the printer out of order leave; nothing queues up. Arrivals
                # are memoryless, so the next one is drawn afresh when the printer works again.
                self._next_arrival = math.inf
                break
            self._print_one()
            self._next_arrival += _poisson_gap(self._rng, self.prints_per_hour)
        self._now = now

    def _restart_arrivals(self) -> None:
        if self._next_arrival == math.inf and not self._stopped():
            self._next_arrival = self._now + _poisson_gap(self._rng, self.prints_per_hour)

    def _print_one(self) -> bool:
        if self._stopped():
            return False
        if self._rng.random() < self.jam_rate:
            # The sheet caught in the rollers is lost and the licence is not printed.
            self._jammed = True
            self._sheets -= 1
            return False
        used = min(self.sheets_per_licence, self._sheets, self._toner_left)
        self._sheets -= used
        self._toner_left -= used
        self._pages_total += used
        if used < self.sheets_per_licence:
            return False  # ran out mid-licence: the printer now stops on media-empty
        self._completed += 1
        return True


class SimulatedReader:
    """An ID-card reader: cards arrive at `card_rate` an hour and stay `card_hold_s` seconds."""

    name = NAME

    def __init__(
        self,
        card_rate: float = 0.0,
        fault: bool = False,
        card_hold_s: float = 20.0,
        seed: int | None = None,
        clock: Clock = time.monotonic,
    ) -> None:
        if card_rate < 0:
            raise ValueError("card_rate must not be negative")
        if card_hold_s <= 0:
            raise ValueError("card_hold_s must be positive")
        self.card_rate = card_rate
        self.fault = fault
        self.card_hold_s = card_hold_s
        self._rng = random.Random(seed)
        self._clock = clock
        self._closed = False
        self._card_in = clock() + _poisson_gap(self._rng, card_rate)

    def read(self) -> ReaderStatus:
        if self._closed:
            raise DriverError(NAME, "reader is closed")
        if self.fault:
            return ReaderStatus(
                driver=NAME, state="error", reader_name="Simulated Reader 0", detail="fault"
            )
        now = self._clock()
        while self._card_in + self.card_hold_s <= now:
            self._card_in += self.card_hold_s + _poisson_gap(self._rng, self.card_rate)
        return ReaderStatus(
            driver=NAME,
            state="ok",
            card_present=self._card_in <= now,
            reader_name="Simulated Reader 0",
        )

    def close(self) -> None:
        self._closed = True
