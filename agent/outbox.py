"""The durable outbox: every report and event is on disk before it is sent, until the broker has it.

paho-mqtt keeps unacknowledged QoS 1 messages in memory only, so a power cut or a SIGKILL would
lose them; and while the broker is unreachable nothing can be sent at all. So the agent writes each
message here first (one SQLite row) and deletes the row only when the broker acknowledged it
(PUBACK). After an outage the rows go out in insertion order. The `seq` of DESIGN.md is allocated
in the same transaction that inserts the row, so a seq is never used twice and never skipped by a
crash.

Durability: WAL mode with `synchronous=FULL`. NORMAL would survive a SIGKILL too (the WAL is in
the OS cache), but a power cut could roll back the last commits -- and kiosks do lose power. A
rolled-back `next_seq` would then hand out a seq the server has already seen, with different
content. The write rate is a handful of rows a minute, so an fsync per commit costs nothing that
matters; acknowledged rows are deleted in batches so a backlog flush does not pay one fsync per
message.

Budget: the rows' bytes (topic + payload + an estimated per-row overhead) are kept under
`budget_bytes`. When a new message does not fit, the oldest *status* rows are dropped first: a later
status report supersedes an earlier one. Events (and any other kind) are never compacted: when only
they are left and the new message still does not fit, the *new* message is refused -- the older
events stay, so what reaches the server is an unbroken prefix of history. Every dropped or refused
message is counted (`dropped_status`, `dropped_events`), the counts persist, and they go out in
every status report, so the loss is visible rather than silent. A refused message takes no seq; a
compacted one leaves a gap the counts explain.

A file SQLite cannot read (a half-written copy, a bad sector) is moved aside and a fresh outbox is
started, carrying on from the old `next_seq` when it can still be read; `recovered` says what
happened.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
#: The kind that may be compacted away under budget pressure (a newer report supersedes it).
STATUS = "status"
#: Estimated bytes SQLite spends per row beyond topic and payload (record header, rowid, index
#: entry, page slack). The budget is about the order of magnitude of disk use, not the exact byte.
ROW_OVERHEAD = 64
COUNTERS = ("dropped_status", "dropped_events", "rejected")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value ANY) STRICT;
-- AUTOINCREMENT: ids must never be reused once the table empties, or the sender, which
-- remembers the last id it handed to the broker, would skip new rows.
CREATE TABLE IF NOT EXISTS outbox (
    id      INTEGER PRIMARY KEY AUTOINCREMENT,
    seq     INTEGER NOT NULL,
    kind    TEXT NOT NULL,
    topic   TEXT NOT NULL,
    payload BLOB NOT NULL,
    qos     INTEGER NOT NULL,
    retain  INTEGER NOT NULL,
    size    INTEGER NOT NULL,
    created REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS outbox_kind ON outbox (kind, id);
"""


class OutboxError(Exception):
    """The outbox file is unusable in a way a fresh start would not fix (permissions, disk)."""


@dataclass(frozen=True)
class Row:
    id: int
    seq: int
    kind: str
    topic: str
    payload: bytes
    qos: int
    retain: bool


@dataclass(frozen=True)
class Stats:
    queued: int
    bytes: int
    dropped_status: int
    dropped_events: int
    rejected: int

    def to_json(self) -> dict[str, int]:
        """The `outbox` field of a status report (cumulative counts since the outbox was made)."""
        return {
            "queued": self.queued,
            "dropped_status": self.dropped_status,
            "dropped_events": self.dropped_events,
            "rejected": self.rejected,
        }


class Outbox:
    """A FIFO of MQTT messages in SQLite; safe to use from the reporter and the MQTT thread."""

    def __init__(self, path: str | Path, budget_bytes: int) -> None:
        self.path = Path(path)
        self.budget_bytes = budget_bytes
        #: Set when an unreadable file was moved aside: what happened, for the log and an event.
        self.recovered: str | None = None
        self._lock = threading.Lock()
        self._count = 0
        self._bytes = 0
        self._next_seq = 1
        self._counters = dict.fromkeys(COUNTERS, 0)
        self._db = self._open()
        self._load_state()

    # -- writing -------------------------------------------------------------------------------

    def enqueue(
        self,
        kind: str,
        topic: str,
        build: Callable[[int], bytes],
        *,
        qos: int = 1,
        retain: bool = False,
    ) -> int | None:
        """Store one message; `build(seq)` makes its payload. Returns the seq, or None if refused.

        The seq is taken, the payload built and the row inserted in one transaction, so a crash
        at any point either keeps all of it or none of it.
        """
        with self._lock:
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            try:
                seq = self._next_seq
                payload = build(seq)
                size = len(topic.encode()) + len(payload) + ROW_OVERHEAD
                freed_rows, freed_bytes = self._make_room(size)
                if freed_rows < 0:
                    # Even with every status row gone it would not fit: refuse the newcomer, keep
                    # the older rows (an unbroken prefix of history) and say so in the counts.
                    self._bump("dropped_status" if kind == STATUS else "dropped_events", 1)
                    db.execute("COMMIT")
                    log.warning(
                        "outbox full (%d bytes budget): new %s message refused",
                        self.budget_bytes,
                        kind,
                    )
                    return None
                db.execute(
                    "INSERT INTO outbox (seq, kind, topic, payload, qos, retain, size, created)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (seq, kind, topic, payload, qos, int(retain), size, time.time()),
                )
                self._set_meta("next_seq", seq + 1)
                db.execute("COMMIT")
            except BaseException:
                self._rollback()
                raise
            self._next_seq = seq + 1
            self._count += 1 - freed_rows
            self._bytes += size - freed_bytes
            return seq

    def _make_room(self, size: int) -> tuple[int, int]:
        """Delete the oldest status rows until `size` more bytes fit; returns (rows, bytes).

        Returns (-1, 0) without deleting anything when dropping every status row would not
        make enough room.
        """
        excess = self._bytes + size - self.budget_bytes
        if excess <= 0:
            return 0, 0
        (status_bytes,) = self._db.execute(
            "SELECT COALESCE(SUM(size), 0) FROM outbox WHERE kind = ?", (STATUS,)
        ).fetchone()
        if status_bytes < excess:
            return -1, 0
        rows = freed = 0
        while freed < excess:
            victims = self._db.execute(
                "SELECT id, size FROM outbox WHERE kind = ? ORDER BY id LIMIT 64", (STATUS,)
            ).fetchall()
            if not victims:
                break
            for row_id, row_size in victims:
                self._db.execute("DELETE FROM outbox WHERE id = ?", (row_id,))
                rows += 1
                freed += row_size
                if freed >= excess:
                    break
        self._bump("dropped_status", rows)
        log.warning("outbox over budget: dropped the %d oldest status reports", rows)
        return rows, freed

    # -- sending -------------------------------------------------------------------------------

    def peek(self, after_id: int = 0, limit: int = 100) -> list[Row]:
        """The oldest rows with id > after_id, in the order they were enqueued."""
        with self._lock:
            cur = self._db.execute(
                "SELECT id, seq, kind, topic, payload, qos, retain FROM outbox"
                " WHERE id > ? ORDER BY id LIMIT ?",
                (after_id, limit),
            )
            return [Row(r[0], r[1], r[2], r[3], bytes(r[4]), r[5], bool(r[6])) for r in cur]

    def ack(self, ids: Iterable[int]) -> None:
        """The broker has these rows: forget them (one transaction for the whole batch)."""
        self._delete(list(ids), None)

    def reject(self, ids: Iterable[int]) -> None:
        """The broker refused these rows for good (e.g. not authorised): drop and count them."""
        self._delete(list(ids), "rejected")

    def _delete(self, ids: list[int], counter: str | None) -> None:
        if not ids:
            return
        with self._lock:
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            try:
                rows = freed = 0
                for i in range(0, len(ids), 500):
                    chunk = ids[i : i + 500]
                    marks = ",".join("?" * len(chunk))
                    sizes = db.execute(
                        f"DELETE FROM outbox WHERE id IN ({marks}) RETURNING size", chunk
                    ).fetchall()
                    rows += len(sizes)
                    freed += sum(s for (s,) in sizes)
                if counter and rows:
                    self._bump(counter, rows)
                db.execute("COMMIT")
            except BaseException:
                self._rollback()
                raise
            self._count -= rows
            self._bytes -= freed
            if self._count == 0:
                # Give the pages of a drained backlog back to the file system.
                db.execute("PRAGMA incremental_vacuum")

    # -- state ---------------------------------------------------------------------------------

    def stats(self) -> Stats:
        with self._lock:
            return Stats(
                queued=self._count,
                bytes=self._bytes,
                dropped_status=self._counters["dropped_status"],
                dropped_events=self._counters["dropped_events"],
                rejected=self._counters["rejected"],
            )

    @property
    def next_seq(self) -> int:
        with self._lock:
            return self._next_seq

    def get_meta(self, key: str) -> Any:
        """A small persistent value (the paper tracker keeps its refill baseline here)."""
        with self._lock:
            return self._meta(key)

    def set_meta(self, key: str, value: int | str | None) -> None:
        with self._lock:
            self._set_meta(key, value)

    def close(self) -> None:
        with self._lock:
            try:
                self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            except sqlite3.Error as e:
                log.warning("outbox checkpoint on close failed: %s", e)
            self._db.close()

    # -- internals -----------------------------------------------------------------------------

    def _set_meta(self, key: str, value: int | str | None) -> None:
        self._db.execute(
            "INSERT INTO meta (key, value) VALUES (?, ?)"
            " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (key, value),
        )

    def _bump(self, counter: str, n: int) -> None:
        # Updated in memory at once; a rollback reloads everything from the file.
        self._counters[counter] += n
        self._set_meta(counter, self._counters[counter])

    def _meta(self, key: str) -> Any:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else row[0]

    def _rollback(self) -> None:
        # The failed statement may already have ended the transaction.
        with contextlib.suppress(sqlite3.Error):
            self._db.execute("ROLLBACK")
        self._load_state_unlocked()

    def _load_state(self) -> None:
        with self._lock:
            self._load_state_unlocked()

    def _load_state_unlocked(self) -> None:
        count, size = self._db.execute(
            "SELECT COUNT(*), COALESCE(SUM(size), 0) FROM outbox"
        ).fetchone()
        self._count, self._bytes = int(count), int(size)
        self._next_seq = int(self._meta("next_seq") or 1)
        self._counters = {c: int(self._meta(c) or 0) for c in COUNTERS}

    def _open(self) -> sqlite3.Connection:
        try:
            return _connect(self.path)
        except sqlite3.DatabaseError as e:
            if isinstance(e, sqlite3.OperationalError) and not _looks_corrupt(e):
                # Locked, read-only or disk full: moving the file aside would not help.
                raise OutboxError(f"cannot open outbox {self.path}: {e}") from e
            reason = str(e)
        moved = _move_aside(self.path)
        next_seq = _salvage_next_seq(moved)
        db = _connect(self.path)
        if next_seq is not None:
            db.execute(
                "INSERT INTO meta (key, value) VALUES ('next_seq', ?)"
                " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (next_seq,),
            )
        self.recovered = (
            f"outbox {self.path} was unreadable ({reason}); moved it to {moved.name} and started"
            " a fresh outbox; "
            + (
                f"seq continues at {next_seq}"
                if next_seq is not None
                else "the old seq could not be read, so seq restarts at 1"
            )
        )
        log.error("%s", self.recovered)
        return db


def _connect(path: Path) -> sqlite3.Connection:
    # isolation_level=None: we issue BEGIN IMMEDIATE / COMMIT ourselves, so the seq read and the
    # insert are one write transaction. check_same_thread=False: the Outbox lock serialises use.
    db = sqlite3.connect(path, timeout=10.0, isolation_level=None, check_same_thread=False)
    try:
        # auto_vacuum only takes effect on a new, empty file, which is the only time it matters.
        db.execute("PRAGMA auto_vacuum = INCREMENTAL")
        mode = db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise sqlite3.OperationalError(f"cannot switch to WAL mode (got {mode})")
        db.execute("PRAGMA synchronous = FULL")
        db.execute("PRAGMA journal_size_limit = 4194304")
        problems = [r[0] for r in db.execute("PRAGMA quick_check").fetchall()]
        if problems != ["ok"]:
            raise sqlite3.DatabaseError("integrity check failed: " + "; ".join(problems[:3]))
        db.executescript(_SCHEMA)
        row = db.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
        if row is None:
            db.execute("INSERT INTO meta (key, value) VALUES ('schema', ?)", (SCHEMA_VERSION,))
        elif row[0] != SCHEMA_VERSION:
            # Written by another agent version we cannot read; keep it for inspection.
            raise sqlite3.DatabaseError(f"unknown outbox schema version {row[0]!r}")
    except BaseException:
        db.close()
        raise
    return db


def _looks_corrupt(e: sqlite3.Error) -> bool:
    text = str(e).lower()
    return any(w in text for w in ("malformed", "not a database", "corrupt", "integrity"))


def _move_aside(path: Path) -> Path:
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    target = path.with_name(f"{path.name}.corrupt-{stamp}")
    n = 1
    while target.exists():
        n += 1
        target = path.with_name(f"{path.name}.corrupt-{stamp}-{n}")
    # The WAL and shared-memory files belong to the broken file: move them with it, or SQLite
    # would try to replay the old WAL into the fresh database.
    for suffix in ("-wal", "-shm"):
        side = Path(f"{path}{suffix}")
        if side.exists():
            side.rename(f"{target}{suffix}")
    path.rename(target)
    return target


def _salvage_next_seq(path: Path) -> int | None:
    """Best effort: a seq the broken outbox never handed out, so seq need not restart at 1.

    SQLite refuses a file shorter than its header says, so a copy has its header relaxed: the
    size field is ignored (version-valid-for zeroed) and the WAL flag cleared, and whatever
    early pages survive -- the meta table is among the first -- are read. Commits still in the WAL
    are not in the file; each took at least one WAL frame and at most one seq, so adding the WAL's
    frame count gives a seq that cannot have been used: a gap at worst, never a duplicate.
    """
    copy = path.with_name(path.name + ".salvage")
    best = 0
    page_size = 4096
    try:
        shutil.copyfile(path, copy)
        with open(copy, "r+b") as f:
            header = f.read(100)
            if len(header) < 100 or not header.startswith(b"SQLite format 3\x00"):
                return None
            page_size = int.from_bytes(header[16:18], "big")
            page_size = 65536 if page_size == 1 else page_size
            f.seek(18)
            f.write(b"\x01\x01")
            f.seek(92)
            f.write(b"\x00\x00\x00\x00")
        db = sqlite3.connect(f"file:{copy}?mode=ro", uri=True, timeout=1.0)
        try:
            for query in (
                "SELECT value FROM meta WHERE key = 'next_seq'",
                "SELECT MAX(seq) + 1 FROM outbox",
            ):
                with contextlib.suppress(sqlite3.Error):
                    row = db.execute(query).fetchone()
                    if row and isinstance(row[0], int) and row[0] > best:
                        best = row[0]
        finally:
            db.close()
    except (OSError, sqlite3.Error):
        return None
    finally:
        with contextlib.suppress(OSError):
            copy.unlink()
    if not best:
        return None
    wal = Path(f"{path}-wal")
    frames = wal.stat().st_size // (page_size + 24) if wal.exists() else 0
    return best + frames
