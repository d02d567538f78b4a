"""The ingest's database side: what one batch of messages changes, written in few statements.

The pipeline (pipeline.py) decides; this module only writes. One `BatchWrite` collects a batch's
rows and latest-state updates, and `write_batch` stores them in one transaction: on SQLite a
transaction per message would cost an fsync each, and on both backends it means the batch is
stored whole or not at all before its messages are acknowledged.

Alert transitions are written apart, after the batch, one statement each: an insert that meets
the one-open-alert-per-(terminal, rule) constraint is the expected outcome of a race (another
replica, a redelivery after a crash) and must not abort the batch's transaction on PostgreSQL.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from tortoise.backends.base.client import BaseDBAsyncClient
from tortoise.exceptions import IntegrityError
from tortoise.expressions import F
from tortoise.transactions import in_transaction

from fleet.server.alerts import Cleared, Opened
from fleet.server.alerts import Transition as AlertTransition
from fleet.server.db.models import (
    Alert,
    DeadLetter,
    PresenceReason,
    SeqGap,
    Site,
    SiteKind,
    StatusSample,
    Terminal,
    TerminalEvent,
)

log = logging.getLogger(__name__)

#: Where terminals that report before anyone registered them are filed (see pipeline.py).
UNASSIGNED_SITE = "unassigned"


#: status_sample columns written by the ingest, in the order of a `SampleRow`.
SAMPLE_COLUMNS = (
    "terminal_id",
    "seq",
    "ts",
    "received_at",
    "paper_pct",
    "printer_state",
    "reasons",
    "reader_state",
    "toner_pct",
    "downsampled",
)
#: One history row, as the database takes it: datetimes UTC-aware, `reasons` as JSON text.
SampleRow = tuple[str, int, datetime, datetime, int | None, str | None, str, str | None, int | None,
                  bool]  # fmt: skip


#: A terminal that starts a new sequence (reinstalled, outbox lost) reuses seqs its old sequence
#: stored; the old rows move down, out of the way, into a band of their own: the k-th sequence
#: archived lies in (-k * SEQ_BAND, -(k - 1) * SEQ_BAND). No sequence reaches 2**40 messages.
SEQ_BAND = 1 << 40


@dataclass
class SequenceReset:
    """Terminal `terminal` started a new sequence in this batch; the rows of the batch collected
    before it (indices into samples, events, gaps) belong to the old one and are archived too."""

    terminal: str
    samples: list[int]
    events: list[int]
    gaps: list[int]


@dataclass
class BatchWrite:
    """Everything one batch changes in the database."""

    samples: list[SampleRow] = field(default_factory=list)
    events: list[TerminalEvent] = field(default_factory=list)
    gaps: list[SeqGap] = field(default_factory=list)
    dead: list[DeadLetter] = field(default_factory=list)
    #: terminal -> columns of its latest state to set (merged across the batch, last wins).
    latest: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: Terminals to create first (auto-registration), with their model name.
    new_terminals: dict[str, str] = field(default_factory=dict)
    resets: list[SequenceReset] = field(default_factory=list)

    def update(self, terminal: str, **columns: Any) -> None:
        self.latest.setdefault(terminal, {}).update(columns)

    def __bool__(self) -> bool:
        return bool(
            self.samples
            or self.events
            or self.gaps
            or self.dead
            or self.latest
            or self.new_terminals
        )


async def write_batch(batch: BatchWrite, dead_letter_max_per_terminal: int) -> None:
    """Store one batch in one transaction; raises what the database raises."""
    async with in_transaction() as conn:
        if batch.new_terminals:
            await _register(batch.new_terminals, conn)
        for reset in batch.resets:
            await _archive_sequence(reset, batch, conn)
        # ignore_conflicts: a sample stored before a crash and redelivered after the restart
        # (its ack lost) is already there; the unique (terminal, seq) makes the retry harmless.
        if batch.samples:
            await conn.execute_many(_insert_sql(conn, "status_sample", SAMPLE_COLUMNS),
                                    [list(row) for row in batch.samples])  # fmt: skip
        if batch.events:
            await TerminalEvent.bulk_create(batch.events, ignore_conflicts=True, using_db=conn)
        if batch.gaps:
            await SeqGap.bulk_create(batch.gaps, using_db=conn)
        await _update_terminals(batch.latest, conn)
        if batch.dead:
            await DeadLetter.bulk_create(batch.dead, using_db=conn)
            for terminal in {d.terminal for d in batch.dead}:
                await _trim_dead_letters(terminal, dead_letter_max_per_terminal, conn)


async def _trim_dead_letters(terminal: str | None, keep: int, conn: BaseDBAsyncClient) -> None:
    """Keep a terminal's newest `keep` dead letters. Ids only grow: one range delete does it."""
    mine = (
        DeadLetter.filter(terminal=terminal)
        if terminal is not None
        else DeadLetter.filter(terminal__isnull=True)
    )
    oldest_kept = (
        await mine.using_db(conn).order_by("-id").offset(keep - 1).limit(1).values_list("id")
    )
    if oldest_kept:
        await mine.filter(id__lt=oldest_kept[0][0]).using_db(conn).delete()


# Samples and latest-state updates are written with plain parameterised SQL, one executemany
# each: building a Tortoise model and a query per row cost ~0.4 ms a message, more than the
# rest of the ingest together (measured: 2,400 msg/s with the ORM). The values are what Tortoise
# itself would write (aware UTC datetimes, which its SQLite adapter stores as ISO text, and
# compact JSON text), so the ORM reads them back unchanged.


def _placeholders(conn: BaseDBAsyncClient, n: int, start: int = 1) -> list[str]:
    if conn.capabilities.dialect == "postgres":
        return [f"${i}" for i in range(start, start + n)]
    return ["?"] * n


def _insert_sql(conn: BaseDBAsyncClient, table: str, columns: tuple[str, ...]) -> str:
    values = ", ".join(_placeholders(conn, len(columns)))
    # DO NOTHING: a sample stored before a crash and redelivered after the restart (its ack
    # lost) is already there; the unique (terminal, seq) makes the retry harmless.
    return f'INSERT INTO "{table}" ({", ".join(columns)}) VALUES ({values}) ON CONFLICT DO NOTHING'


def json_text(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


async def _archive_sequence(
    reset: SequenceReset, batch: BatchWrite, conn: BaseDBAsyncClient
) -> None:
    """Move the terminal's stored rows of its old sequence into the next free band (and the
    batch's rows collected before the reset with them), so the new sequence's seqs are free."""
    tid = reset.terminal
    lowest = 0
    for model in (StatusSample, TerminalEvent):
        first = await model.filter(terminal_id=tid).using_db(conn).order_by("seq").first()
        if first is not None:
            lowest = min(lowest, int(first.seq))
    bands_used = (-lowest + SEQ_BAND - 1) // SEQ_BAND  # 0 when nothing was archived yet
    shift = SEQ_BAND * (bands_used + 1)
    for model in (StatusSample, TerminalEvent):
        await model.filter(terminal_id=tid, seq__gt=0).using_db(conn).update(seq=F("seq") - shift)
    await (
        SeqGap.filter(terminal_id=tid, before_seq__gt=0)
        .using_db(conn)
        .update(after_seq=F("after_seq") - shift, before_seq=F("before_seq") - shift)
    )
    for i in reset.samples:
        sample = batch.samples[i]
        batch.samples[i] = (sample[0], sample[1] - shift, *sample[2:])
    for i in reset.events:
        batch.events[i].seq -= shift
    for i in reset.gaps:
        batch.gaps[i].after_seq -= shift
        batch.gaps[i].before_seq -= shift
    log.info("terminal %s: its previous sequence archived %d below", tid, shift)


async def _update_terminals(latest: dict[str, dict[str, Any]], conn: BaseDBAsyncClient) -> None:
    """One executemany per distinct set of columns (status reports all share one)."""
    groups: dict[tuple[str, ...], list[list[Any]]] = {}
    for terminal, columns in latest.items():
        names = tuple(sorted(columns))
        values = [json_text(columns[n]) if n == "status" else columns[n] for n in names]
        groups.setdefault(names, []).append([*values, terminal])
    for names, rows in groups.items():
        marks = _placeholders(conn, len(names) + 1)
        sets = ", ".join(f'"{n}" = {m}' for n, m in zip(names, marks, strict=False))
        await conn.execute_many(f'UPDATE "terminal" SET {sets} WHERE "id" = {marks[-1]}', rows)


async def _register(terminals: dict[str, str], conn: BaseDBAsyncClient) -> None:
    await Site.get_or_create(
        id=UNASSIGNED_SITE,
        defaults={"name": "Unassigned (reported before registration)", "kind": SiteKind.HALL},
        using_db=conn,
    )
    ids = await Terminal.filter(id__in=list(terminals)).using_db(conn).values_list("id", flat=True)
    existing = {str(tid) for tid in ids}
    rows = [
        Terminal(id=tid, site_id=UNASSIGNED_SITE, model=model, mqtt_username=tid)
        for tid, model in terminals.items()
        if tid not in existing
    ]
    if rows:
        await Terminal.bulk_create(rows, ignore_conflicts=True, using_db=conn)
        log.warning(
            "auto-registered %d terminal(s) at site %r: %s",
            len(rows),
            UNASSIGNED_SITE,
            ", ".join(sorted(r.id for r in rows)[:10]),
        )


async def persist_alert(t: AlertTransition) -> int | None:
    """Store one engine transition idempotently; the alert's id, or None if nothing changed."""
    if isinstance(t, Opened):
        try:
            alert = await Alert.create(
                terminal_id=t.terminal,
                rule=t.rule,
                severity=str(t.severity),
                opened_at=t.at,
                detail=t.detail[:1000],
                active_key=1,
            )
        except IntegrityError:
            # Already open (a race, or a redelivery after a restart): the database says one.
            return None
        return int(alert.id)
    assert isinstance(t, Cleared)
    row = await Alert.filter(terminal_id=t.terminal, rule=t.rule, active_key=1).first()
    if row is None:
        return None
    changed = await Alert.filter(id=row.id, active_key=1).update(active_key=None, cleared_at=t.at)
    return int(row.id) if changed else None


async def persist_presence(terminal: str, online: bool, reason: str | None, at: datetime) -> None:
    await Terminal.filter(id=terminal).update(
        online=online,
        presence_reason=PresenceReason(reason) if reason else None,
        presence_changed_at=at,
    )
