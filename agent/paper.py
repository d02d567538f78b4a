"""Paper in the tray: what the printer says, or an estimate marked as one.

Many printers report a tray level (IPP `printer-input-tray` / `media-ready`, the simulator). Others
only say `media-empty`, or nothing. For those the level is estimated from the pages printed since
the last refill and the tray capacity, and marked `estimated: true`. Without a known refill the
estimate stays unknown: "unknown" is never reported as "empty" (nor as "full").

A refill is seen when the reported level jumps up, or when `media-empty` clears on a printer that
can be read. The page count at the last refill is kept in a small persistent store (the outbox's
meta table), so an agent restart does not reset the estimate to a full tray.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Protocol

from agent.drivers.base import PaperLevel, PrinterStatus

#: A reported level must rise by at least this many points to count as a refill (sensors jitter).
REFILL_JUMP_PCT = 10
BASELINE_KEY = "paper.pages_at_refill"


class Store(Protocol):
    def get_meta(self, key: str) -> Any: ...

    def set_meta(self, key: str, value: int | str | None) -> None: ...


@dataclass(frozen=True)
class Refill:
    """A refill was seen; `how` is "level_jump" or "media_empty_cleared"."""

    how: str
    paper: PaperLevel | None


class PaperTracker:
    def __init__(self, store: Store, capacity: int | None = None) -> None:
        self.store = store
        #: Tray capacity from the config, used when the printer does not report one.
        self.capacity = capacity
        value = store.get_meta(BASELINE_KEY)
        self.pages_at_refill: int | None = value if isinstance(value, int) else None
        self._last: PrinterStatus | None = None

    def update(self, status: PrinterStatus) -> tuple[PrinterStatus, Refill | None]:
        """The status with its paper level filled in, and the refill seen since the last one."""
        readable = status.state != "offline"
        refill = self._refill(self._last, status) if readable else None
        if refill and status.pages_total is not None:
            self._set_baseline(status.pages_total)
        elif (
            self.pages_at_refill is not None
            and status.pages_total is not None
            and status.pages_total < self.pages_at_refill
        ):
            # The counter went backwards (printer replaced or reset): the baseline means nothing.
            self._set_baseline(None)
        out = replace(status, paper=self._level(status)) if readable else status
        if readable:
            self._last = status
        return out, (Refill(refill, out.paper) if refill else None)

    def _refill(self, prev: PrinterStatus | None, cur: PrinterStatus) -> str | None:
        if prev is None:
            return None
        if "media-empty" in prev.reasons and "media-empty" not in cur.reasons:
            return "media_empty_cleared"
        p, c = prev.paper, cur.paper
        if p and c and not p.estimated and not c.estimated:
            if p.level_pct is not None and c.level_pct is not None:
                if c.level_pct - p.level_pct >= REFILL_JUMP_PCT:
                    return "level_jump"
            elif (
                p.sheets_left is not None
                and c.sheets_left is not None
                and c.capacity
                and (c.sheets_left - p.sheets_left) * 100 >= REFILL_JUMP_PCT * c.capacity
            ):
                return "level_jump"
        return None

    def _level(self, status: PrinterStatus) -> PaperLevel | None:
        paper = status.paper
        if paper and (paper.level_pct is not None or paper.sheets_left is not None):
            return paper  # the printer knows
        capacity = (paper.capacity if paper else None) or self.capacity
        if "media-empty" in status.reasons:
            return PaperLevel(level_pct=0, sheets_left=0, capacity=capacity, estimated=False)
        if capacity and status.pages_total is not None and self.pages_at_refill is not None:
            used = status.pages_total - self.pages_at_refill
            left = max(0, capacity - used)
            # Rounded up: an estimate of one sheet left must not read as 0 % (empty).
            pct = (left * 100 + capacity - 1) // capacity
            return PaperLevel(level_pct=pct, sheets_left=left, capacity=capacity, estimated=True)
        if capacity:
            return PaperLevel(capacity=capacity)
        return paper

    def _set_baseline(self, pages: int | None) -> None:
        if pages != self.pages_at_refill:
            self.pages_at_refill = pages
            self.store.set_meta(BASELINE_KEY, pages)
