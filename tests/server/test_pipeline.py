"""The ingest pipeline on a real database (SQLite and PostgreSQL): what a batch of messages leaves
in the tables, in memory and in the counters. Messages are fed as the receiver hands them over,
with the server's clock under the test's control."""

from __future__ import annotations

import asyncio
import json
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from fleet.server.alerts import AlertEngine
from fleet.server.alerts.rules import CLEAN_OFFLINE_GRACE_S, WILL_OFFLINE_GRACE_S
from fleet.server.db.models import (
    Alert,
    DeadLetter,
    DesiredDoc,
    SeqGap,
    Site,
    SiteKind,
    StatusSample,
    Terminal,
    TerminalEvent,
)
from fleet.server.events_bus import EventBus
from fleet.server.ingest import gaps
from fleet.server.ingest import pipeline as pipeline_module
from fleet.server.ingest.pipeline import NotActive, Pipeline
from fleet.server.ingest.presence import PresenceTracker
from fleet.server.ingest.receiver import Received
from fleet.server.ingest.retention import apply_retention
from fleet.server.ingest.store import SEQ_BAND
from fleet.server.metrics import FleetMetrics
from fleet.server.settings import Settings

T0 = datetime(2026, 11, 25, 6, 0, tzinfo=UTC).timestamp()


def status(seq: int, *, at: float = T0, paper: int = 80, reasons: list[str] | None = None) -> bytes:
    ts = datetime.fromtimestamp(int(at), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    doc: dict[str, Any] = {
        "v": 1,
        "seq": seq,
        "ts": ts,
        "agent": "1.2.0",
        "printer": {
            "driver": "sim",
            "state": "idle",
            "reasons": reasons or [],
            "paper": {"level_pct": paper, "sheets_left": paper * 5, "capacity": 500},
            "toner_pct": 60,
        },
        "reader": {"driver": "sim", "state": "ok", "card_present": False},
    }
    return json.dumps(doc).encode()


def event(seq: int, *, at: float = T0, kind: str = "paper_refilled") -> bytes:
    ts = datetime.fromtimestamp(int(at), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return json.dumps({"v": 1, "seq": seq, "ts": ts, "agent": "1.2.0", "event": kind}).encode()


def presence(online: bool, *, at: float = T0, reason: str | None = None) -> bytes:
    ts = datetime.fromtimestamp(int(at), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    doc: dict[str, Any] = {"v": 1, "online": online, "ts": ts, "agent": "1.2.0"}
    if reason:
        doc["reason"] = reason
    return json.dumps(doc).encode()


_mids = iter(range(1, 1 << 30))


def msg(terminal: str, kind: str, payload: bytes, at: float = T0) -> Received:
    return Received(
        topic=f"fleet/v1/t/{terminal}/{kind}",
        payload=payload,
        qos=1,
        retain=False,
        dup=False,
        mid=next(_mids),
        received_at=at,
        connection=1,
    )


def settings(db_url: str, **kw: Any) -> Settings:
    return Settings(dev_mode=True, database_url=db_url, **kw)


async def make_pipeline(db_url: str, **kw: Any) -> Pipeline:
    p = Pipeline(
        settings(db_url, **kw.pop("settings", {})),
        bus=kw.pop("bus", None),
        metrics=kw.pop("metrics", None),
        engine=kw.pop("engine", AlertEngine(hold_down_s=60)),
        presence=kw.pop("presence", PresenceTracker(status_interval_s=30, hold_s=30)),
        clock=lambda: T0,
    )
    await p.restore()
    return p


async def seed(*terminals: str) -> None:
    site = await Site.create(id="S1", name="Hall", kind=SiteKind.HALL)
    for tid in terminals:
        await Terminal.create(id=tid, site=site, model="sim", mqtt_username=tid)


async def test_stores_latest_state_and_history(db: str) -> None:
    await seed("T1")
    bus = EventBus()
    sub = bus.subscribe()
    p = await make_pipeline(db, bus=bus)
    await p.handle(
        [msg("T1", "status", status(1, paper=80)), msg("T1", "status", status(2, paper=79))]
    )
    t = await Terminal.get(id="T1")
    assert (t.last_seq, t.paper_pct, t.printer_state, t.reader_state) == (2, 79, "idle", "ok")
    assert t.online and t.agent_version == "1.2.0"
    assert await StatusSample.filter(terminal_id="T1").count() == 2
    kinds = []
    while (event := await sub.get(timeout=0)) is not None:
        kinds.append((event.kind, event.data.get("terminal")))
    assert ("status", "T1") in kinds and ("presence", "T1") in kinds


async def test_duplicates_ignored_and_gaps_recorded(db: str) -> None:
    await seed("T1")
    metrics = FleetMetrics()
    p = await make_pipeline(db, metrics=metrics)
    first = [msg("T1", "status", status(s)) for s in (1, 2, 3)]
    await p.handle(first)
    await p.handle(first[1:])  # redelivered after a reconnect
    await p.handle([msg("T1", "status", status(7))])  # 4..6 never came
    late = msg("T1", "status", status(5, paper=10))
    await p.handle([late])  # one of them, late: history, not the latest state
    assert sorted(await StatusSample.filter(terminal_id="T1").values_list("seq", flat=True)) == [
        1,
        2,
        3,
        5,
        7,
    ]
    gaps = await SeqGap.filter(terminal_id="T1").values_list("after_seq", "before_seq")
    assert gaps == [(3, 7)]
    t = await Terminal.get(id="T1")
    assert t.last_seq == 7 and t.paper_pct == 80
    assert p.counts["duplicate"] == 2 and p.counts["stored"] == 5
    assert metrics.ingest_messages.labels("duplicate")._value.get() == 2


async def test_restart_restores_sequence(db: str) -> None:
    await seed("T1")
    p = await make_pipeline(db)
    batch = [msg("T1", "status", status(s)) for s in (1, 2)]
    await p.handle(batch)
    again = await make_pipeline(db)  # a new process: only the database remembers
    await again.handle(batch)  # stored but not acked before the crash: redelivered
    assert again.counts["duplicate"] == 2
    assert await StatusSample.filter(terminal_id="T1").count() == 2


async def test_restart_still_lets_an_open_gap_fill(db: str) -> None:
    """Seqs 3 and 4 never came before the restart; after it, a late 4 is stored, and a
    redelivered 5 is still a duplicate."""
    await seed("T1")
    p = await make_pipeline(db)
    await p.handle([msg("T1", "status", status(s)) for s in (1, 2, 5)])
    assert await SeqGap.filter(terminal_id="T1").count() == 1
    again = await make_pipeline(db)
    await again.handle([msg("T1", "status", status(s)) for s in (4, 5, 4)])
    assert again.counts["duplicate"] == 2
    stored = (
        await StatusSample.filter(terminal_id="T1").order_by("seq").values_list("seq", flat=True)
    )
    assert stored == [1, 2, 4, 5]
    third = await make_pipeline(db)  # 4 is no longer missing: only 3 is
    await third.handle([msg("T1", "status", status(s)) for s in (4, 3)])
    assert third.counts["duplicate"] == 1
    assert await StatusSample.filter(terminal_id="T1").count() == 5


async def test_a_new_sequence_after_a_server_restart_is_a_reset_not_duplicates(db: str) -> None:
    """The terminal was reinstalled (its outbox starts again at 1) while the server was down:
    the restored tracker knows the ts of seq 3, so seq 1 with a newer ts is a new sequence."""
    await seed("T1")
    p = await make_pipeline(db)
    await p.handle([msg("T1", "status", status(s, at=T0 + s)) for s in (1, 2, 3)])
    assert (await gaps.last_seq_ts())["T1"] == datetime.fromtimestamp(int(T0 + 3), UTC)
    again = await make_pipeline(db)
    await again.handle([msg("T1", "status", status(s, at=T0 + 100 + s, paper=50)) for s in (1, 2)])
    assert again.counts["duplicate"] == 0 and again.counts["stored"] == 2
    t = await Terminal.get(id="T1")
    assert (t.last_seq, t.paper_pct) == (2, 50)
    # Nothing of either sequence is lost: the old one moved down into a band of its own.
    rows = (
        await StatusSample.filter(terminal_id="T1").order_by("ts").values_list("seq", "paper_pct")
    )
    band = SEQ_BAND
    assert rows == [(1 - band, 80), (2 - band, 80), (3 - band, 80), (1, 50), (2, 50)]
    # A redelivery of the new sequence's messages after another restart is a duplicate.
    third = await make_pipeline(db)
    await third.handle([msg("T1", "status", status(2, at=T0 + 102, paper=50))])
    assert third.counts["duplicate"] == 1


async def test_sequence_resets_archive_each_old_sequence_in_its_own_band(db: str) -> None:
    """Three sequences of events (same seqs each time), one reset inside a batch after rows of
    the old sequence: every event is kept, each sequence in its own band, and the gaps move
    with theirs."""
    await seed("T1")
    p = await make_pipeline(db)

    def events(seqs: tuple[int, ...], at: float) -> list[Received]:
        return [msg("T1", "event", event(s, at=at + s)) for s in seqs]

    await p.handle(events((1, 2, 4), T0))  # 3 missing: a gap (2, 4)
    await p.handle([*events((5,), T0), *events((1, 2), T0 + 100)])  # reset mid-batch
    await p.handle(events((1, 3), T0 + 200))  # another new sequence (newer ts), gap (1, 3)
    assert p.counts["duplicate"] == 0
    stored = (
        await TerminalEvent.filter(terminal_id="T1").order_by("ts").values_list("seq", flat=True)
    )
    b = SEQ_BAND
    assert stored == [1 - b, 2 - b, 4 - b, 5 - b, 1 - 2 * b, 2 - 2 * b, 1, 3]
    gaps = (
        await SeqGap.filter(terminal_id="T1").order_by("id").values_list("after_seq", "before_seq")
    )
    assert gaps == [(2 - b, 4 - b), (1, 3)]
    assert (await Terminal.get(id="T1")).last_seq == 3


GARBAGE = [
    ("fleet/v1/t/T1/status", b"\xff\xfe not utf-8"),
    ("fleet/v1/t/T1/status", b"{not json"),
    ("fleet/v1/t/T1/status", b"[1, 2]"),
    ("fleet/v1/t/T1/status", b'{"v": 2, "seq": 1}'),
    ("fleet/v1/t/T1/status", b'{"v": 1, "seq": "one", "ts": "x", "agent": "a"}'),
    ("fleet/v1/t/T1/status", b'{"v": 1, "note": "\\u0000"}'),
    ("fleet/v1/t/T1/status", b"[" * 100_000),
    ("fleet/v1/t/T1/event", b'{"v": 1, "terminal": "T2"}'),
    ("fleet/v1/t/bad id/status", b"{}"),
    ("fleet/v1/t/T1/status", b"\x00" * 70_000),
]


async def test_garbage_is_dead_lettered_with_a_reason(db: str) -> None:
    await seed("T1")
    metrics = FleetMetrics()
    p = await make_pipeline(db, metrics=metrics)
    batch = [
        Received(topic, payload, 1, False, False, i, T0, 1)
        for i, (topic, payload) in enumerate(GARBAGE, 1)
    ]
    await p.handle([*batch, msg("T1", "status", status(1))])
    rows = await DeadLetter.all().order_by("id")
    assert len(rows) == len(GARBAGE)
    reasons = [r.reason.split(":")[0] for r in rows]
    assert reasons[:4] == ["not_utf8", "not_json", "not_object", "bad_version"]
    assert "terminal_mismatch" in reasons and "bad_topic" in reasons
    assert "payload_too_large" in reasons
    assert all(len(r.payload) <= 4096 and "\x00" not in r.payload for r in rows)
    assert metrics.ingest_messages.labels("rejected")._value.get() == len(GARBAGE)
    assert await StatusSample.filter(terminal_id="T1").count() == 1  # the good one got through


async def test_dead_letters_are_bounded(db: str) -> None:
    p = await make_pipeline(db, settings={"dead_letter_max_per_terminal": 5})
    for i in range(3):
        await p.handle([msg("T1", "status", f"junk {i}-{k}".encode()) for k in range(4)])
    rows = await DeadLetter.all().order_by("id").values_list("payload", flat=True)
    assert rows == ["junk 1-3", "junk 2-0", "junk 2-1", "junk 2-2", "junk 2-3"]


async def test_one_terminals_flood_keeps_the_others_dead_letters(db: str) -> None:
    """Issue 12: the bound is per terminal; T1's garbage cannot erase T2's evidence."""
    p = await make_pipeline(db, settings={"dead_letter_max_per_terminal": 5})
    await p.handle([msg("T2", "status", b"T2 junk")])
    for i in range(10):
        await p.handle([msg("T1", "status", f"junk {i}-{k}".encode()) for k in range(50)])
    assert await DeadLetter.filter(terminal="T1").count() == 5
    assert await DeadLetter.filter(terminal="T2").values_list("payload", flat=True) == ["T2 junk"]


async def test_reports_from_a_wrong_clock_are_dead_lettered(db: str) -> None:
    """Issue 12: a ts of year 9999 was stored and was the newest sample for ever; year 0001 too.
    Both are refused (`clock_skew`), counted, and what was good is stored."""
    await seed("T1")
    metrics = FleetMetrics()
    p = await make_pipeline(db, metrics=metrics)
    far = [
        json.loads(status(seq)) | {"ts": ts}
        for seq, ts in ((1, "9999-12-31T23:59:59Z"), (2, "0001-01-01T00:00:00Z"))
    ]
    ahead_11_min = status(3, at=T0 + 660)
    ok_late = status(4, at=T0 - 7 * 86400)  # an outbox emptying after a week offline
    ok_ahead = status(5, at=T0 + 60)  # a clock a minute fast
    await p.handle(
        [msg("T1", "status", json.dumps(d).encode()) for d in far]
        + [msg("T1", "status", b) for b in (ahead_11_min, ok_late, ok_ahead)]
        + [
            msg(
                "T1",
                "event",
                json.dumps(json.loads(event(6)) | {"ts": "1970-01-02T00:00:00Z"}).encode(),
            )
        ]
    )
    dead = await DeadLetter.all().order_by("id").values_list("reason", flat=True)
    assert [d.split(":")[0] for d in dead] == ["clock_skew"] * 4
    assert "ahead of the server" in dead[0] and "older than the history retention" in dead[1]
    assert await StatusSample.filter(terminal_id="T1").order_by("seq").values_list(
        "seq", flat=True
    ) == [4, 5]
    assert metrics.ingest_messages.labels("rejected")._value.get() == 4
    assert (await Terminal.get(id="T1")).last_seq == 5


async def test_what_the_receiver_could_not_decode_is_dead_lettered(db: str) -> None:
    """A PUBLISH with a broken header or a topic that is not UTF-8 reaches the pipeline as a
    refused message: dead-lettered with its reason (and then acknowledged like any other)."""
    p = await make_pipeline(db)
    bad = Received("fleet/v1/t/T1/status", b"", 1, False, False, 7, T0, 1, refused="bad_packet: x")
    await p.handle([bad, msg("T1", "status", status(1))])
    row = await DeadLetter.get()
    assert (row.reason, row.terminal) == ("bad_packet: x", "T1")
    assert await StatusSample.filter(terminal_id="T1").count() == 1


async def test_a_terminal_over_its_rate_is_held_to_it_and_others_are_not(db: str) -> None:
    """Issue 12 attack: one terminal's credentials stored 6,700 valid reports a second. Past its
    burst a terminal is held to its rate: the rest is counted, one dead letter a batch, nothing
    stored; another terminal in the same batches is untouched."""
    await seed("T1", "T2")
    metrics = FleetMetrics()
    p = await make_pipeline(
        db,
        metrics=metrics,
        settings={"ingest_terminal_burst": 10, "ingest_terminal_rate_per_s": 1.0},
    )
    flood = [msg("T1", "status", status(seq)) for seq in range(1, 101)]
    honest = [msg("T2", "status", status(seq)) for seq in range(1, 4)]
    await p.handle(flood[:50] + honest[:1])
    await p.handle(flood[50:] + honest[1:])
    assert await StatusSample.filter(terminal_id="T1").count() == 10
    assert await StatusSample.filter(terminal_id="T2").count() == 3
    dead = await DeadLetter.filter(terminal="T1").values_list("reason", flat=True)
    assert dead == [
        "rate_limited: 40 messages over the terminal's rate, not stored",
        "rate_limited: 50 messages over the terminal's rate, not stored",
    ]
    assert metrics.ingest_messages.labels("rate_limited")._value.get() == 90
    # Time refills it: 5 s later five more are taken.
    later = [msg("T1", "status", status(seq), at=T0 + 5) for seq in range(101, 111)]
    await p.handle(later)
    assert await StatusSample.filter(terminal_id="T1").count() == 15


async def test_reasons_are_bounded(db: str) -> None:
    await seed("T1")
    p = await make_pipeline(db)
    many = status(1, reasons=[f"r{i}" for i in range(33)])
    long = status(2, reasons=["x" * 65])
    await p.handle([msg("T1", "status", many), msg("T1", "status", long)])
    reasons = await DeadLetter.all().order_by("id").values_list("reason", flat=True)
    assert reasons == [
        "schema: printer.reasons: more than 32 reasons",
        "schema: printer.reasons[0]: longer than 64 characters",
    ]


async def test_unknown_terminal_is_auto_registered(db: str) -> None:
    p = await make_pipeline(db)
    await p.handle([msg("NEW-1", "status", status(1))])
    t = await Terminal.get(id="NEW-1")
    assert t.site_id == "unassigned" and t.last_seq == 1


async def test_paper_out_opens_one_alert_and_clears_on_the_refill(db: str) -> None:
    await seed("T1")
    p = await make_pipeline(db)
    out = status(1, paper=0, reasons=["media-empty"])
    await p.handle([msg("T1", "status", out)])
    await p.handle([msg("T1", "status", status(2, paper=0, reasons=["media-empty"]), T0 + 1)])
    active = await Alert.filter(terminal_id="T1", active_key=1).values_list("rule", flat=True)
    assert active == ["paper_out"]
    await p.handle([msg("T1", "status", status(3, paper=100), T0 + 10)])  # refilled
    alert = await Alert.get(rule="paper_out")  # cleared by that report, not a minute later
    assert alert.active_key is None and alert.cleared_at == datetime.fromtimestamp(T0 + 10, UTC)


async def test_one_active_alert_per_terminal_and_rule_under_concurrency(db: str) -> None:
    """Two replicas (own engines, shared DB) see the same jam at once: the DB keeps one."""
    await seed("T1")
    replicas = [await make_pipeline(db) for _ in range(4)]
    jam = status(1, reasons=["media-jam"])
    await asyncio.gather(*(r.handle([msg("T1", "status", jam)]) for r in replicas))
    assert await Alert.filter(terminal_id="T1", rule="jam", active_key=1).count() == 1
    assert await Alert.filter(terminal_id="T1", rule="jam").count() == 1


async def test_presence_will_and_timeout(db: str) -> None:
    await seed("T1", "T2")
    p = await make_pipeline(db)
    await p.handle([msg("T1", "presence", presence(True)), msg("T2", "status", status(1))])
    await p.handle([msg("T1", "presence", presence(False, reason="will"), T0 + 5)])
    t1 = await Terminal.get(id="T1")
    assert not t1.online and t1.presence_reason == "will"
    await p.tick(T0 + 50)
    assert (await Terminal.get(id="T2")).online  # 50 s of silence: under 3 x 30 s
    await p.tick(T0 + 91)
    t2 = await Terminal.get(id="T2")
    assert not t2.online and t2.presence_reason == "timeout"
    offline = await Alert.filter(rule="terminal_offline", active_key=1).values_list(
        "terminal_id", flat=True
    )
    assert sorted(offline) == ["T1", "T2"]


async def test_a_clean_goodbye_is_alerted_only_if_the_terminal_stays_away(db: str) -> None:
    """An agent restarting (into a new version, say) says goodbye and is back within the
    presence hold: no alert. One that said goodbye and stays away is alerted after the grace."""
    await seed("T1", "T2")
    p = await make_pipeline(db)
    await p.handle([msg(t, "presence", presence(True)) for t in ("T1", "T2")])
    await p.handle(
        [msg(t, "presence", presence(False, reason="clean"), T0 + 5) for t in ("T1", "T2")]
    )
    await p.handle([msg("T1", "presence", presence(True, at=T0 + 8), T0 + 8)])  # T1 is back
    await p.tick(T0 + 36)  # the hold is over: T1 online again
    assert (await Terminal.get(id="T1")).online
    assert not (await Terminal.get(id="T2")).online
    await p.tick(T0 + 5 + CLEAN_OFFLINE_GRACE_S - 1)
    assert await Alert.filter(rule="terminal_offline").count() == 0
    await p.tick(T0 + 5 + CLEAN_OFFLINE_GRACE_S + 1)
    alerts = await Alert.filter(rule="terminal_offline").values_list("terminal_id", "detail")
    assert alerts == [("T2", "clean shutdown")]


async def test_retention_expires_and_downsamples(db: str) -> None:
    await seed("T1")
    now = datetime(2026, 11, 25, 6, 0, tzinfo=UTC)
    # The ingest refuses reports older than its retention: let this one take 40 days.
    p = await make_pipeline(db, settings={"history_retention_days": 60})
    old = now - timedelta(days=40)
    batch = [msg("T1", "status", status(1, at=old.timestamp()))]
    day_ago = now - timedelta(hours=30)
    # One report every 30 s for an hour, a day and more ago: 4 quarter-hours.
    start = day_ago.replace(minute=0, second=0)
    batch += [
        msg("T1", "status", status(2 + i, at=(start + timedelta(seconds=30 * i)).timestamp()))
        for i in range(120)
    ]
    batch.append(msg("T1", "status", status(200, at=(now - timedelta(hours=1)).timestamp())))
    await p.handle(batch)
    result = await apply_retention(settings(db), now)
    assert result.expired == 1
    assert await StatusSample.filter(terminal_id="T1").count() == 4 + 1
    assert await StatusSample.filter(downsampled=True).count() == 4
    again = await apply_retention(settings(db), now)
    assert again.thinned == 0 and await StatusSample.all().count() == 5


class FakeSource:
    """Hands over prepared batches like `Receiver.batch`, and records the acks."""

    def __init__(self, batches: list[list[Received]]) -> None:
        self.batches = batches
        self.acked: list[int] = []

    async def batch(self, max_items: int = 500, linger_s: float = 0.002) -> list[Received]:
        if not self.batches:
            await asyncio.Event().wait()  # idle, like a quiet broker
        return self.batches.pop(0)

    def ack_many(self, msgs: list[Received]) -> int:
        self.acked += [m.mid for m in msgs]
        return len(msgs)


async def test_run_acks_after_storing_and_survives_a_bug(db: str, monkeypatch: Any) -> None:
    await seed("T1")
    p = await make_pipeline(db)
    good = [msg("T1", "status", status(1))]
    bad = [msg("T1", "status", status(2))]
    after = [msg("T1", "status", status(3))]
    source = FakeSource([good, bad, after])
    real_apply = p._apply

    def buggy(*args: Any) -> str:
        if args[1].seq == 2:
            raise RuntimeError("a bug")
        return real_apply(*args)

    monkeypatch.setattr(p, "_apply", buggy)
    task = asyncio.create_task(p.run(source))
    for _ in range(200):
        if len(source.acked) == 3:
            break
        await asyncio.sleep(0.01)
    p.stop()
    await asyncio.wait_for(task, 5)
    assert source.acked == [m.mid for m in good + bad + after]
    assert sorted(await StatusSample.all().values_list("seq", flat=True)) == [1, 3]
    dead = await DeadLetter.all().values_list("reason", flat=True)
    assert [r.split(":")[0] for r in dead] == ["internal_error"]
    assert p.counts["error"] == 1


async def test_a_pipeline_that_is_not_active_does_nothing(db: str) -> None:
    """Replicas: a pipeline acts only while its replica holds the lease. Past it (a stall, a
    lost lease) a batch is refused unacknowledged and the timers are still."""
    await seed("T1")
    p = await make_pipeline(db)
    p.active = lambda: False
    with pytest.raises(NotActive):
        await p.handle([msg("T1", "status", status(1))])
    assert await StatusSample.filter(terminal_id="T1").count() == 0
    await p.tick(T0 + 10_000)  # far past every timeout
    assert (await Terminal.get(id="T1")).presence_changed_at is None

    class Once:
        """A source with one batch; records acknowledgements."""

        def __init__(self) -> None:
            self.batches = [[msg("T1", "status", status(1))]]
            self.acked = 0

        async def batch(self, max_items: int = 500, linger_s: float = 0.0) -> list[Received]:
            if self.batches:
                return self.batches[0]  # the same rows again until acknowledged (the inbox)
            await asyncio.sleep(3600)
            return []

        def ack_many(self, msgs: list[Received]) -> int:
            self.acked += len(msgs)
            self.batches.clear()
            return len(msgs)

    source = Once()
    run = asyncio.create_task(p.run(source))
    await asyncio.sleep(0.5)
    assert source.acked == 0 and not run.done()  # waits, holds, does not end
    p.active = lambda: True  # the lease renewed late after all
    for _ in range(100):
        if source.acked:
            break
        await asyncio.sleep(0.05)
    assert source.acked == 1
    assert await StatusSample.filter(terminal_id="T1").count() == 1
    p.stop()
    await run


async def test_a_stalled_process_gives_everyone_a_grace(
    db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A process that did not run for a while (a stall) heard nobody: its timers must not call
    the terminals offline the moment it runs again."""
    monkeypatch.setattr(pipeline_module, "STALL_S", 0.3)
    await seed("T1")
    clock = [T0]
    p = await make_pipeline(db)
    p.clock = lambda: clock[0]
    await p.handle([msg("T1", "status", status(1), at=T0)])
    ticks = asyncio.create_task(p.run_ticks(0.05))
    await asyncio.sleep(0.1)
    time.sleep(0.5)  # the event loop stalls: nothing runs
    clock[0] = T0 + 100  # past the 90 s timeout when it runs again
    await asyncio.sleep(0.2)
    assert p.presence.is_online("T1"), "timed out right after a stall"
    clock[0] = T0 + 100 + 91  # a full timeout after the stall: now it counts
    await asyncio.sleep(0.2)
    assert p.presence.is_online("T1") is False
    p.stop()
    await ticks


async def test_issue_20_presence_and_alerts_follow_the_terminals_own_evidence(db: str) -> None:
    """A report is proof of life (online at once after a Will); a Will is alerted only if the
    terminal stays away past its grace; a cleared alert keeps its severity on the stream."""
    await seed("T1", "T2")
    bus = EventBus()
    sub = bus.subscribe()
    p = await make_pipeline(db, bus=bus, presence=PresenceTracker(status_interval_s=30))
    await p.handle([msg(t, "status", status(1)) for t in ("T1", "T2")])
    # Both killed: their Wills. T1 is restarted (by systemd) and reports 6 s later; T2 is not.
    await p.handle(
        [msg(t, "presence", presence(False, reason="will"), T0 + 2) for t in ("T1", "T2")]
    )
    assert not (await Terminal.get(id="T1")).online
    await p.handle([msg("T1", "status", status(2), T0 + 8)])
    assert (await Terminal.get(id="T1")).online  # at once: no hold before showing it online
    await p.tick(T0 + 2 + WILL_OFFLINE_GRACE_S - 1)
    assert await Alert.filter(rule="terminal_offline").count() == 0
    await p.tick(T0 + 2 + WILL_OFFLINE_GRACE_S)
    offline = await Alert.filter(rule="terminal_offline").values_list("terminal_id", flat=True)
    assert offline == ["T2"]  # the one that did not come back
    # T2 comes back: its alert clears on that report, and the event says how severe it was.
    await p.handle([msg("T2", "status", status(2), T0 + 40)])
    alert = await Alert.get(rule="terminal_offline")
    assert alert.active_key is None and alert.cleared_at == datetime.fromtimestamp(T0 + 40, UTC)
    events = []
    while (event := await sub.get(timeout=0)) is not None:
        if event.kind == "alert":
            events.append(event.data)
    assert [(e["transition"], e["severity"]) for e in events] == [
        ("opened", "critical"),
        ("cleared", "critical"),
    ]


async def test_issue_20_the_offline_timeout_follows_the_applied_interval(db: str) -> None:
    """A terminal told to report every 5 s (its applied document) is timed out after 3 x 5 s,
    not after 3 x the server's 30 s; also after a restart (restore)."""
    await seed("T1", "T2")
    payload = json.dumps({"config": {"status_interval_s": 5}})
    await DesiredDoc.create(terminal_id="T1", version=1, hash="sha256:" + "0" * 64,
                            payload=payload, envelope="", created_at=datetime.now(UTC))  # fmt: skip
    p = await make_pipeline(db, presence=PresenceTracker(status_interval_s=30))
    applied = {"v": 1, "ts": "2026-11-25T06:00:05Z", "result": "ok", "error": None,
               "version": 1, "hash": "sha256:" + "0" * 64,
               "applied": {"version": 1, "hash": "sha256:" + "0" * 64}}  # fmt: skip
    await p.handle([msg(t, "status", status(1)) for t in ("T1", "T2")])
    await p.handle([msg("T1", "reported", json.dumps(applied).encode())])
    await p.tick(T0 + 16)
    assert not (await Terminal.get(id="T1")).online
    assert (await Terminal.get(id="T1")).presence_reason == "timeout"
    assert (await Terminal.get(id="T2")).online  # the server's 30 s: 90 s
    again = await make_pipeline(db, presence=PresenceTracker(status_interval_s=30))
    assert again.presence.timeout_s("T1") == 15 and again.presence.timeout_s("T2") == 90
