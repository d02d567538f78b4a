"""What a restarted server must know to judge seqs as it did before the restart.

- The holes it must still let fill: seqs of open gaps that never arrived.
  `SequenceTracker.restore()` without them counts the whole window below `last_seq` as seen, so a
  late report for a hole that opened before the restart would be dropped as a duplicate. The DB
  knows better: `seq_gap` rows say which seqs were missing when the gap was found, and
  `status_sample` / `terminal_event` which of them arrived since.
- The agent's `ts` of each terminal's `last_seq`: without it a terminal that starts a new
  sequence (reinstalled, outbox lost) after the restart looks like a replay, and its messages
  would be dropped as duplicates until its seq passed below the window (4,096 messages).
"""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, datetime
from typing import Any

from tortoise import connections

from fleet.server.db.models import SeqGap, StatusSample, Terminal, TerminalEvent

#: The row of each terminal's last_seq, wherever it was stored (retention may have removed it).
_LAST_TS_SQL = """
SELECT t.id, s.ts FROM terminal t
  JOIN status_sample s ON s.terminal_id = t.id AND s.seq = t.last_seq
UNION ALL
SELECT t.id, e.ts FROM terminal t
  JOIN terminal_event e ON e.terminal_id = t.id AND e.seq = t.last_seq
"""


async def missing_seqs(window: int) -> dict[str, tuple[int, ...]]:
    """Per terminal, the seqs in its tracker window (last_seq - window, last_seq) never stored."""
    last = dict(await Terminal.filter(last_seq__isnull=False).values_list("id", "last_seq"))
    holes: dict[str, set[int]] = defaultdict(set)
    gaps = await SeqGap.all().values_list("terminal_id", "after_seq", "before_seq")
    for tid, after, before in gaps:
        high = last.get(tid)
        if high is None:
            continue
        low = max(after + 1, high - window + 1)
        holes[tid].update(range(low, min(before, high)))
    out: dict[str, tuple[int, ...]] = {}
    for tid, seqs in holes.items():
        if not seqs:
            continue
        lo, hi = min(seqs), max(seqs)
        for model in (StatusSample, TerminalEvent):
            stored = await model.filter(terminal_id=tid, seq__gte=lo, seq__lte=hi).values_list(
                "seq", flat=True
            )
            seqs.difference_update(stored)
        if seqs:
            out[tid] = tuple(sorted(seqs))
    return out


async def last_seq_ts() -> dict[str, datetime]:
    """Per terminal, the agent's `ts` of its `last_seq` message, where that row is still stored."""
    rows = await connections.get("default").execute_query_dict(_LAST_TS_SQL)
    return {str(r["id"]): ts for r in rows if (ts := _aware(r["ts"])) is not None}


def _aware(value: Any) -> datetime | None:
    """A timestamp as the driver returns it (asyncpg: datetime; SQLite: text), in UTC."""
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            return None
    if not isinstance(value, datetime):
        return None
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)
