"""The durable outbox on its own: order, seq, the disk budget, crashes and broken files."""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from agent.outbox import ROW_OVERHEAD, Outbox

TOPIC = "fleet/v1/t/T-0001/status"


def payload(size: int = 100) -> bytes:
    return b"x" * size


def add(ob: Outbox, kind: str = "status", size: int = 100) -> int | None:
    return ob.enqueue(kind, TOPIC, lambda seq: f"{seq:08d}".encode() + payload(size - 8))


def row_bytes(size: int = 100) -> int:
    return len(TOPIC) + size + ROW_OVERHEAD


def test_rows_come_out_in_order_with_consecutive_seq(tmp_path: Path) -> None:
    ob = Outbox(tmp_path / "o.db", 1_000_000)
    seqs = [add(ob, kind) for kind in ("status", "event", "status", "event", "status")]
    assert seqs == [1, 2, 3, 4, 5]
    rows = ob.peek()
    assert [r.seq for r in rows] == [1, 2, 3, 4, 5]
    assert [r.kind for r in rows] == ["status", "event", "status", "event", "status"]
    assert rows[0].payload.startswith(b"00000001")  # the payload was built with its seq
    assert [r.seq for r in ob.peek(after_id=rows[1].id, limit=2)] == [3, 4]
    ob.ack([rows[0].id, rows[2].id])
    assert [r.seq for r in ob.peek()] == [2, 4, 5]
    assert ob.stats().queued == 3
    ob.ack(r.id for r in ob.peek())
    assert ob.stats().queued == 0 and ob.stats().bytes == 0
    # Ids are never reused once the table empties (the sender remembers the last id it sent).
    add(ob)
    assert ob.peek()[0].id > rows[-1].id
    ob.close()


def test_seq_and_counts_survive_reopen(tmp_path: Path) -> None:
    ob = Outbox(tmp_path / "o.db", 1_000_000)
    for _ in range(3):
        add(ob)
    ob.reject([ob.peek()[0].id])
    ob.close()
    ob = Outbox(tmp_path / "o.db", 1_000_000)
    assert ob.next_seq == 4
    assert ob.stats().queued == 2 and ob.stats().rejected == 1
    assert add(ob) == 4
    assert ob.recovered is None
    ob.close()


def test_wal_mode_and_full_sync(tmp_path: Path) -> None:
    ob = Outbox(tmp_path / "o.db", 1_000_000)
    add(ob)
    db = sqlite3.connect(tmp_path / "o.db")
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    db.close()
    assert ob._db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    ob.close()


def test_budget_drops_oldest_status_first_and_keeps_events(tmp_path: Path) -> None:
    ob = Outbox(tmp_path / "o.db", budget_bytes=10 * row_bytes())
    kinds = ["status", "event"] * 5  # exactly the budget
    for k in kinds:
        add(ob, k)
    assert ob.stats().queued == 10 and ob.stats().dropped_status == 0
    assert add(ob, "status") == 11  # makes room by dropping status seq 1
    assert add(ob, "event") == 12  # ... and status seq 3
    s = ob.stats()
    assert (s.queued, s.dropped_status, s.dropped_events) == (10, 2, 0)
    assert s.bytes <= ob.budget_bytes
    rows = ob.peek()
    assert [r.seq for r in rows] == [2, 4, 5, 6, 7, 8, 9, 10, 11, 12]
    assert [r.seq for r in rows if r.kind == "event"] == [2, 4, 6, 8, 10, 12]
    ob.close()


def test_only_events_left_refuses_the_newcomer_and_counts_it(tmp_path: Path) -> None:
    ob = Outbox(tmp_path / "o.db", budget_bytes=4 * row_bytes())
    for _ in range(4):
        add(ob, "event")
    assert add(ob, "event") is None  # refused: the four older events stay
    assert add(ob, "status") is None  # a status cannot push out events either
    s = ob.stats()
    assert (s.queued, s.dropped_status, s.dropped_events) == (4, 1, 1)
    assert [r.seq for r in ob.peek()] == [1, 2, 3, 4]
    # A refused message takes no seq: the next one sent continues without a gap.
    ob.ack([ob.peek()[0].id])
    assert add(ob, "event") == 5
    ob.close()
    ob = Outbox(tmp_path / "o.db", budget_bytes=4 * row_bytes())
    assert (ob.stats().dropped_status, ob.stats().dropped_events) == (1, 1)
    ob.close()


def test_a_big_event_does_not_flush_status_rows_for_nothing(tmp_path: Path) -> None:
    ob = Outbox(tmp_path / "o.db", budget_bytes=4 * row_bytes())
    add(ob, "status")
    add(ob, "event")
    add(ob, "event")
    assert add(ob, "event", size=3 * 100) is None  # would not fit even without the status row
    assert [r.kind for r in ob.peek()] == ["status", "event", "event"]
    assert ob.stats().dropped_status == 0 and ob.stats().dropped_events == 1
    ob.close()


def test_meta_values_persist(tmp_path: Path) -> None:
    ob = Outbox(tmp_path / "o.db", 1_000_000)
    ob.set_meta("paper.pages_at_refill", 1234)
    ob.close()
    ob = Outbox(tmp_path / "o.db", 1_000_000)
    assert ob.get_meta("paper.pages_at_refill") == 1234
    assert ob.get_meta("nothing") is None
    ob.close()


def test_garbage_file_is_moved_aside_and_a_fresh_outbox_starts(tmp_path: Path) -> None:
    path = tmp_path / "o.db"
    path.write_bytes(b"this is not SQLite at all" * 100)
    ob = Outbox(path, 1_000_000)
    assert ob.recovered is not None
    assert "was unreadable" in ob.recovered and "seq restarts at 1" in ob.recovered
    aside = [p for p in tmp_path.iterdir() if ".corrupt-" in p.name]
    assert len(aside) == 1 and aside[0].read_bytes().startswith(b"this is not SQLite")
    assert add(ob) == 1 and ob.stats().queued == 1
    ob.close()
    assert Outbox(path, 1_000_000).recovered is None  # the fresh file is fine next time


def test_half_written_file_keeps_its_seq_when_it_can(tmp_path: Path) -> None:
    path = tmp_path / "o.db"
    ob = Outbox(path, 10_000_000)
    for _ in range(150):
        add(ob, size=2000)  # dozens of pages, so half the file is many pages
    ob.close()  # checkpoints: everything is in the main file now
    size = path.stat().st_size
    with open(path, "r+b") as f:
        f.truncate(size // 2)
    ob = Outbox(path, 10_000_000)
    assert ob.recovered is not None, "a truncated database must not be used as is"
    # The WAL was checkpointed and truncated on close, so there is no margin to add.
    assert "seq continues at 151" in ob.recovered
    assert ob.stats().queued == 0
    assert add(ob) == 151
    ob.close()


def test_salvaged_seq_skips_past_commits_still_in_the_wal(tmp_path: Path) -> None:
    path = tmp_path / "o.db"
    ob = Outbox(path, 10_000_000)
    for _ in range(150):
        add(ob, size=2000)
    ob._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    for _ in range(5):
        add(ob)  # these commits live only in the WAL
    # What a crash leaves: the files as they are now (a copy, as the writer still holds them),
    # and then the main file damaged.
    crashed = tmp_path / "crashed"
    crashed.mkdir()
    shutil.copyfile(path, crashed / "o.db")
    shutil.copyfile(f"{path}-wal", crashed / "o.db-wal")
    assert (crashed / "o.db-wal").stat().st_size > 0
    os.truncate(crashed / "o.db", path.stat().st_size // 2)
    ob.close()
    ob = Outbox(crashed / "o.db", 10_000_000)
    assert ob.recovered is not None
    nxt = ob.next_seq
    assert nxt > 155, "a seq that may have been sent must never be handed out again"
    assert nxt < 200, "the margin is the WAL's frame count, not more"
    ob.close()


def test_sigkill_in_the_middle_of_writing_loses_no_committed_row(tmp_path: Path) -> None:
    """A writer killed at a random point: the file opens clean and seq matches the rows."""
    path = tmp_path / "o.db"
    writer = textwrap.dedent(
        f"""
        from agent.outbox import Outbox
        ob = Outbox({str(path)!r}, 100_000_000)
        print("ready", flush=True)
        while True:
            ob.enqueue("status", "t", lambda seq: b"%d" % seq + b"." * 2000)
        """
    )
    for round_ in range(3):
        p = subprocess.Popen(
            [sys.executable, "-c", writer],
            stdout=subprocess.PIPE,
            cwd=Path(__file__).resolve().parents[2],
        )
        assert p.stdout is not None and p.stdout.readline() == b"ready\n"
        time.sleep(0.3 + 0.2 * round_)
        os.kill(p.pid, signal.SIGKILL)
        p.wait()
        ob = Outbox(path, 100_000_000)
        assert ob.recovered is None
        rows = ob.peek(limit=1_000_000)
        seqs = [r.seq for r in rows]
        assert seqs == list(range(1, len(rows) + 1)), "a committed row is missing"
        assert ob.next_seq == len(rows) + 1, "seq and rows disagree after the kill"
        assert all(r.payload.startswith(b"%d." % r.seq) for r in rows)
        ob.close()
    assert len(rows) > 0
