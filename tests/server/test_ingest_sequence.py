"""Dedupe by (terminal, seq), gaps, late arrivals, resets, bounded memory and restore."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest

from fleet.server.ingest.sequence import Duplicate, Gap, New, Reset, SequenceTracker

T0 = datetime(2026, 11, 27, 9, 0, tzinfo=UTC)


def ts(seq: int) -> datetime:
    """The agent builds seq and ts together, so a later seq never has an earlier ts."""
    return T0 + timedelta(seconds=seq)


def test_in_order_is_new_and_repeats_are_duplicates() -> None:
    t = SequenceTracker()
    assert [t.observe("A", s, ts(s)) for s in (1, 2, 3)] == [New(), New(), New()]
    assert t.observe("A", 3, ts(3)) == Duplicate()
    assert t.observe("A", 1, ts(1)) == Duplicate()
    assert t.high("A") == 3


def test_terminals_are_independent() -> None:
    t = SequenceTracker()
    assert t.observe("A", 5) == New()
    assert t.observe("B", 5) == New()
    assert t.observe("A", 5) == Duplicate()


def test_gap_is_recorded_and_late_arrival_fills_it() -> None:
    t = SequenceTracker()
    t.observe("A", 10, ts(10))
    r = t.observe("A", 14, ts(14))
    assert r == New(gap=Gap(10, 14))
    assert isinstance(r, New) and r.gap is not None and r.gap.missing == 3
    assert t.observe("A", 12, ts(12)) == New(late=True)
    assert t.observe("A", 12, ts(12)) == Duplicate()
    assert t.observe("A", 11, ts(11)) == New(late=True)
    assert t.observe("A", 15, ts(15)) == New()


def test_outbox_replay_after_reconnect_is_all_duplicates() -> None:
    """The agent re-sends from the oldest row it has no PUBACK for: those we have are dropped."""
    t = SequenceTracker()
    for s in range(1, 101):
        t.observe("A", s, ts(s))
    assert all(t.observe("A", s, ts(s)) == Duplicate() for s in range(60, 101))
    assert t.observe("A", 101, ts(101)) == New()


def test_shuffled_delivery_stores_each_seq_exactly_once() -> None:
    rng = random.Random(4)
    seqs = [s for s in range(1, 2001) for _ in (1, 2)]  # every message twice (at-least-once)
    # Local disorder only, as a replay or two replicas produce: shuffle within blocks.
    blocks = [seqs[i : i + 50] for i in range(0, len(seqs), 50)]
    for b in blocks:
        rng.shuffle(b)
    t = SequenceTracker(window=256)
    stored = [s for b in blocks for s in b if isinstance(t.observe("A", s, ts(s)), New)]
    assert sorted(stored) == list(range(1, 2001))


def test_jump_larger_than_window_is_a_gap_not_a_crash() -> None:
    t = SequenceTracker(window=64)
    t.observe("A", 1, ts(1))
    assert t.observe("A", 10_000_000, ts(10_000_000)) == New(gap=Gap(1, 10_000_000))
    assert t.observe("A", 10_000_000, ts(10_000_000)) == Duplicate()
    assert t.observe("A", 9_999_999, ts(9_999_999)) == New(late=True)


def test_reset_far_below_the_window() -> None:
    """A reinstalled terminal starts again at 1: one reset, not thousands of duplicates."""
    t = SequenceTracker(window=128)
    t.observe("A", 5000, ts(5000))
    r = t.observe("A", 1)  # no ts: the window rule alone decides
    assert r == New(reset=Reset(previous=5000))
    assert t.observe("A", 2) == New()
    assert t.observe("A", 1) == Duplicate()


def test_reset_within_the_window_is_told_by_a_newer_ts() -> None:
    """A terminal reinstalled early (old high 50, window 4096) is not mistaken for a replay."""
    t = SequenceTracker()
    t.observe("A", 50, ts(50))
    assert t.observe("A", 1, ts(10_000)) == New(reset=Reset(previous=50))
    assert t.observe("A", 2, ts(10_001)) == New()
    # A true late message (ts not newer than the high's) stays a late message.
    t2 = SequenceTracker()
    t2.observe("A", 50, ts(50))
    assert t2.observe("A", 1, ts(1)) == New(late=True)
    assert t2.observe("A", 1, ts(1)) == Duplicate()


def test_redelivery_of_the_high_seq_is_a_duplicate_even_with_ts() -> None:
    t = SequenceTracker()
    t.observe("A", 7, ts(7))
    assert t.observe("A", 7, ts(7)) == Duplicate()
    # Same seq, newer ts: a different message, so a new sequence (a reinstall reaching 7).
    assert t.observe("A", 7, ts(99)) == New(reset=Reset(previous=7))


def test_restore_from_db_last_seq() -> None:
    t = SequenceTracker(window=64)
    t.restore("A", last_seq=500, last_ts=ts(500))
    assert t.known("A")
    assert t.observe("A", 500, ts(500)) == Duplicate()
    assert t.observe("A", 480, ts(480)) == Duplicate()  # stored before the restart
    assert t.observe("A", 502, ts(502)) == New(gap=Gap(500, 502))


def test_restore_with_open_gaps_lets_them_fill() -> None:
    t = SequenceTracker(window=64)
    t.restore("A", last_seq=500, missing=(498, 499, 10))  # 10 is outside the window
    assert t.observe("A", 499) == New(late=True)
    assert t.observe("A", 498) == New(late=True)
    assert t.observe("A", 497) == Duplicate()


def test_memory_is_bounded_per_terminal_and_in_terminals() -> None:
    t = SequenceTracker(window=64, max_terminals=3)
    for s in range(1, 100_000, 7):
        t.observe("A", s)
    assert t._terminals["A"].seen.bit_length() <= 64
    for name in ("B", "C", "D"):
        t.observe(name, 1)
    assert len(t) == 3 and not t.known("A")  # least recently seen went first
    t.observe("B", 2)
    t.observe("E", 1)
    assert t.known("B") and not t.known("C")


def test_bad_parameters() -> None:
    with pytest.raises(ValueError):
        SequenceTracker(window=0)
