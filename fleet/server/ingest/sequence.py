"""Per-terminal dedupe by (terminal, seq), gap recording and agent-reset detection.

The agent numbers status reports and events from one counter (its durable outbox allocates
`seq`), +1 per message, surviving restarts; delivery is at least once, so the same seq comes
again after a reconnect, and an outbox replay or a shared subscription over several replicas can
deliver a little out of order. `SequenceTracker.observe(terminal, seq, ts)` answers:

- `New()`                 -- the next seq, or a late one that fills a hole in the window
                             (`late=True`: older than the newest seen, so it must not overwrite
                             the terminal's latest state);
- `New(gap=Gap(a, b))`    -- seqs a+1 .. b-1 were never seen (yet); one may still arrive late,
                             which then comes back as `New(late=True)`;
- `Duplicate()`           -- already seen: drop it;
- `New(reset=Reset(p))`   -- the agent started a new sequence (see below); p was the old high.

Memory is bounded: per terminal the highest seq, its ts, and a bitmap of which of the last
`window` seqs were seen (a Python int; 4,096 bits = 512 bytes). At most `max_terminals` are
remembered (least recently seen evicted); `known()` tells the caller when to `restore()` a
terminal from the DB's `last_seq` first.

Reset rule (a reinstalled terminal, or an outbox file that was lost and restarted at 1). A
backwards seq is a reset, not a duplicate, when either
  1. it is below the window (`seq <= high - window`): we could not dedupe it anyway, and an
     at-least-once replay never lags that far behind what it already delivered; or
  2. its `ts` is strictly newer than the `ts` of the highest seq seen. A redelivery carries the
     byte-identical payload, so its ts is the original's; a late message was built before the
     high one, so its ts is not newer. Only a new sequence produces a lower seq with a newer ts.
     (A clock stepped backwards on the kiosk, combined with out-of-order delivery, can fool this;
     the cost is one spurious reset and gap record, never a lost message.)
After a reset the tracker forgets the old window and starts afresh from the new seq.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime


@dataclass(frozen=True, slots=True)
class Gap:
    """Seqs strictly between `after` and `before` have not been seen."""

    after: int
    before: int

    @property
    def missing(self) -> int:
        return self.before - self.after - 1


@dataclass(frozen=True, slots=True)
class Reset:
    previous: int


@dataclass(frozen=True, slots=True)
class New:
    gap: Gap | None = None
    late: bool = False
    reset: Reset | None = None


@dataclass(frozen=True, slots=True)
class Duplicate:
    pass


Outcome = New | Duplicate

_DUPLICATE = Duplicate()
_NEW = New()
_LATE = New(late=True)


class _Terminal:
    __slots__ = ("high", "high_ts", "seen")

    def __init__(self, high: int, high_ts: datetime | None, seen: int) -> None:
        self.high = high
        self.high_ts = high_ts
        #: bit k set <=> seq (high - k) was seen, for k < window.
        self.seen = seen


class SequenceTracker:
    def __init__(self, window: int = 4096, max_terminals: int = 100_000) -> None:
        if window < 1 or max_terminals < 1:
            raise ValueError("window and max_terminals must be positive")
        self.window = window
        self.max_terminals = max_terminals
        self._mask = (1 << window) - 1
        self._terminals: OrderedDict[str, _Terminal] = OrderedDict()

    def known(self, terminal: str) -> bool:
        return terminal in self._terminals

    def high(self, terminal: str) -> int | None:
        t = self._terminals.get(terminal)
        return t.high if t else None

    def restore(
        self,
        terminal: str,
        last_seq: int,
        last_ts: datetime | None = None,
        missing: tuple[int, ...] = (),
    ) -> None:
        """Start from what the DB knows: everything up to `last_seq` was stored except `missing`.

        Without the list of gaps the whole window counts as seen: after a server restart a
        late message for a hole older than that is dropped as a duplicate rather than
        double-stored. Pass the open gaps' seqs to let them still be filled.
        """
        seen = self._mask
        for seq in missing:
            k = last_seq - seq
            if 0 < k < self.window:
                seen &= ~(1 << k)
        self._put(terminal, _Terminal(last_seq, last_ts, seen))

    def forget(self, terminal: str) -> None:
        self._terminals.pop(terminal, None)

    def observe(self, terminal: str, seq: int, ts: datetime | None = None) -> Outcome:
        t = self._terminals.get(terminal)
        if t is None:
            # First sight (and nothing restored): nothing to compare with, so no gap either.
            self._put(terminal, _Terminal(seq, ts, 1))
            return _NEW
        self._terminals.move_to_end(terminal)
        if seq > t.high:
            delta = seq - t.high
            gap = Gap(t.high, seq) if delta > 1 else None
            # A shift of more than the window would only build a huge int to mask away.
            t.seen = ((t.seen << delta) | 1) & self._mask if delta < self.window else 1
            t.high, t.high_ts = seq, ts
            return New(gap=gap) if gap else _NEW
        k = t.high - seq
        newer = ts is not None and t.high_ts is not None and ts > t.high_ts
        if k >= self.window or newer:
            previous = t.high
            self._put(terminal, _Terminal(seq, ts, 1))
            return New(reset=Reset(previous))
        bit = 1 << k
        if t.seen & bit:
            return _DUPLICATE
        t.seen |= bit
        return _LATE

    def _put(self, terminal: str, state: _Terminal) -> None:
        self._terminals[terminal] = state
        self._terminals.move_to_end(terminal)
        while len(self._terminals) > self.max_terminals:
            self._terminals.popitem(last=False)

    def __len__(self) -> int:
        return len(self._terminals)
