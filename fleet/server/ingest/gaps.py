"""The holes a restarted server must still let fill: seqs of open gaps that never arrived.

`SequenceTracker.restore()` without them counts the whole window below `last_seq` as seen, so a
late report for a hole that opened before the restart would be dropped as a duplicate. The DB
knows better: `seq_gap` rows say which seqs were missing when the gap was found, and
`status_sample` / `terminal_event` which of them arrived since.
"""

from __future__ import annotations

from collections import defaultdict

from fleet.server.db.models import SeqGap, StatusSample, Terminal, TerminalEvent


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
