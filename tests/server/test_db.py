"""The fleet database on SQLite and PostgreSQL: migrations, models, constraints, bounds."""

from __future__ import annotations

import asyncio
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from tortoise import Tortoise
from tortoise.connection import get_connection
from tortoise.exceptions import IntegrityError, ValidationError
from tortoise.migrations.autodetector import MigrationAutodetector

from fleet.server.db import apply_migrations, close_db, init_db, is_postgres, tortoise_config
from fleet.server.db.alerts import ack_alert, clear_alert, open_alert
from fleet.server.db.dead_letters import record_dead_letter, trim_dead_letters
from fleet.server.db.models import (
    Alert,
    ApiToken,
    DeadLetter,
    PresenceReason,
    Role,
    SeqGap,
    Site,
    SiteKind,
    StatusSample,
    Terminal,
    TerminalEvent,
)

T0 = datetime(2026, 11, 27, 9, 30, tzinfo=UTC)


async def _terminal(tid: str = "T-001") -> Terminal:
    site, _ = await Site.get_or_create(
        id="jinjiang-hall", defaults={"name": "锦江区政务服务中心", "kind": SiteKind.HALL}
    )
    return await Terminal.create(id=tid, site=site, model="kiosk-a4", mqtt_username=tid)


async def _tables() -> set[str]:
    conn = get_connection("default")
    if conn.capabilities.dialect == "sqlite":
        rows = await conn.execute_query_dict("SELECT name FROM sqlite_master WHERE type='table'")
    else:
        rows = await conn.execute_query_dict(
            "SELECT tablename AS name FROM pg_tables WHERE schemaname='public'"
        )
    return {r["name"] for r in rows}


async def test_migrations_apply_on_empty_database_and_are_idempotent(db_url: str) -> None:
    await init_db(db_url)
    try:
        expected = {"site", "terminal", "status_sample", "seq_gap", "terminal_event", "alert"}
        expected |= {"dead_letter", "api_token"}
        assert expected <= await _tables()
        await apply_migrations(db_url)  # nothing pending: a no-op, not an error
        await _terminal()
    finally:
        await close_db()
    await init_db(db_url)  # a restart on an up-to-date database keeps the data
    try:
        assert await Terminal.filter(id="T-001").count() == 1
    finally:
        await close_db()


async def test_models_round_trip(db: str) -> None:
    t = await _terminal()
    t.online, t.presence_reason, t.presence_changed_at = True, PresenceReason.CLEAN, T0
    t.last_seen, t.last_seq, t.paper_pct, t.tags = T0, 1041, 18, ["一楼", "a4"]
    t.status = {"v": 1, "seq": 1041, "printer": {"reasons": ["media-low"]}}
    await t.save()
    got = await Terminal.get(id="T-001").prefetch_related("site")
    assert got.site.name == "锦江区政务服务中心" and got.site.kind is SiteKind.HALL
    assert got.presence_reason is PresenceReason.CLEAN and got.online
    assert got.last_seen == T0 and got.last_seq == 1041 and got.tags == ["一楼", "a4"]
    assert got.status == t.status

    await StatusSample.create(
        terminal=t, seq=1041, ts=T0, received_at=T0 + timedelta(seconds=1), paper_pct=18,
        printer_state="idle", reasons=["media-low"], reader_state="ok", toner_pct=41,
    )  # fmt: skip
    sample = await StatusSample.get(terminal_id="T-001", seq=1041)
    assert sample.reasons == ["media-low"] and sample.toner_pct == 41 and not sample.downsampled
    await SeqGap.create(terminal=t, after_seq=1041, before_seq=1045)
    await TerminalEvent.create(terminal=t, seq=7, kind="paper_refilled", ts=T0, data={"n": 500})
    assert (await TerminalEvent.get(terminal_id="T-001")).data == {"n": 500}
    assert (await SeqGap.get(terminal_id="T-001")).before_seq == 1045
    await ApiToken.create(name="ops", role=Role.AUDITOR, token_sha256="0" * 64)
    assert (await ApiToken.get(name="ops")).role is Role.AUDITOR


async def test_terminal_id_must_match_design_regex(db: str) -> None:
    await _terminal("ok_ID-1")
    for bad in ("-starts-with-dash", "has/slash", "x" * 65, "has+plus", "中文"):
        with pytest.raises(ValidationError):
            await _terminal(bad)


async def test_duplicate_sample_is_refused_by_the_database(db: str) -> None:
    t = await _terminal()
    await StatusSample.create(terminal=t, seq=5, ts=T0, received_at=T0)
    with pytest.raises(IntegrityError):
        await StatusSample.create(terminal=t, seq=5, ts=T0, received_at=T0)


async def test_one_active_alert_per_terminal_and_rule(db: str) -> None:
    t = await _terminal()
    await Alert.create(terminal=t, rule="paper_low", severity="warning", opened_at=T0)
    with pytest.raises(IntegrityError):
        await Alert.create(terminal=t, rule="paper_low", severity="warning", opened_at=T0)
    await Alert.create(terminal=t, rule="paper_out", severity="critical", opened_at=T0)
    # Cleared alerts are history: any number of them next to one active.
    for _ in range(3):
        assert await clear_alert("T-001", "paper_low")
        _, opened = await open_alert("T-001", "paper_low", "warning")
        assert opened
    assert await Alert.filter(terminal_id="T-001", rule="paper_low").count() == 4
    assert await Alert.filter(terminal_id="T-001", rule="paper_low", cleared_at=None).count() == 1
    assert not await clear_alert("T-001", "door_open")


async def test_concurrent_opens_make_one_alert(db: str) -> None:
    await _terminal()
    results = await asyncio.gather(
        *(open_alert("T-001", "paper_out", "critical", f"attempt {i}") for i in range(20))
    )
    assert sum(opened for _, opened in results) == 1
    assert len({a.id for a, _ in results}) == 1
    assert await Alert.filter(rule="paper_out", active_key=1).count() == 1


async def test_concurrent_raw_inserts_are_refused(db: str) -> None:
    """The guarantee is the database's, not open_alert's: racing plain INSERTs lose too."""
    t = await _terminal()
    results = await asyncio.gather(
        *(
            Alert.create(terminal=t, rule="jam", severity="critical", opened_at=T0)
            for _ in range(10)
        ),
        return_exceptions=True,
    )
    assert sum(isinstance(r, Alert) for r in results) == 1
    assert all(isinstance(r, (Alert, IntegrityError)) for r in results)


async def test_ack_alert_once(db: str) -> None:
    await _terminal()
    alert, _ = await open_alert("T-001", "toner_low", "warning")
    assert await ack_alert(alert.id, "operator-zhang")
    assert not await ack_alert(alert.id, "someone-else")
    got = await Alert.get(id=alert.id)
    assert got.acked_by == "operator-zhang" and got.acked_at is not None


async def test_dead_letters_store_garbage_and_stay_bounded(db: str) -> None:
    await record_dead_letter(
        "fleet/v1/t/x/status", "not JSON", b"\x00\xff\xfe{garbage", max_payload_chars=64
    )
    await record_dead_letter(
        "fleet/v1/t/x/status", "too large", b"x" * 10_000, max_payload_chars=64
    )
    stored = await DeadLetter.all().order_by("id")
    assert "\x00" not in stored[0].payload and "garbage" in stored[0].payload
    assert len(stored[1].payload) == 64
    for i in range(20):
        await record_dead_letter("t", f"r{i}", b"{}")
    assert await trim_dead_letters(5) == 17
    assert [d.reason for d in await DeadLetter.all().order_by("id")] == [
        f"r{i}" for i in range(15, 20)
    ]
    assert await trim_dead_letters(5) == 0


async def test_models_and_committed_migrations_agree(tmp_path: Path) -> None:
    """A model change without its migration fails here, not on a production database."""
    await init_db(f"sqlite://{tmp_path / 'fleet.sqlite3'}", migrate=False)
    try:
        apps = tortoise_config("sqlite://:memory:")["apps"]
        writers = await MigrationAutodetector(Tortoise.apps, apps).changes()
        assert not writers, (
            "models changed: run "
            "`python -m tortoise -c fleet.server.db.TORTOISE_ORM makemigrations`"
        )
    finally:
        await close_db()


async def test_replicas_migrating_together_do_not_collide(db_url: str) -> None:
    """Two fleet replicas starting at once on PostgreSQL: the advisory lock serialises them."""
    if not is_postgres(db_url):
        pytest.skip("SQLite serves one server process; replicas need PostgreSQL")
    await init_db(db_url, migrate=False)
    try:
        await asyncio.gather(apply_migrations(db_url), apply_migrations(db_url))
        await _terminal()
    finally:
        await close_db()


async def test_sqlite_waits_for_the_write_lock_and_uses_wal(db: str) -> None:
    if is_postgres(db):
        pytest.skip("SQLite pragmas")
    conn = get_connection("default")
    assert (await conn.execute_query_dict("PRAGMA busy_timeout"))[0]["timeout"] == 5000
    assert (await conn.execute_query_dict("PRAGMA journal_mode"))[0]["journal_mode"] == "wal"
    assert (await conn.execute_query_dict("PRAGMA foreign_keys"))[0]["foreign_keys"] == 1


MIGRATE_CHILD = """
import asyncio, sys
from fleet.server.db import close_db, init_db

async def main() -> None:
    await init_db(sys.argv[1])
    await close_db()

asyncio.run(main())
"""


async def test_servers_starting_together_on_one_sqlite_file_migrate_once(tmp_path: Path) -> None:
    """Three processes open a new SQLite file at the same moment: all start, each migration is
    recorded once (the flock beside the file orders them)."""
    url = f"sqlite://{tmp_path / 'fleet.db'}"
    root = Path(__file__).resolve().parents[2]
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            MIGRATE_CHILD,
            url,
            cwd=root,
            stderr=asyncio.subprocess.PIPE,
        )
        for _ in range(3)
    ]
    try:
        # Without the lock the racing processes were seen to hang, not fail: bound the wait.
        results = await asyncio.wait_for(asyncio.gather(*(p.communicate() for p in procs)), 60)
    except TimeoutError:
        for p in procs:
            if p.returncode is None:
                p.kill()
        raise AssertionError("servers migrating one SQLite file together hung") from None
    assert [p.returncode for p in procs] == [0, 0, 0], [err.decode()[-500:] for _, err in results]
    await init_db(url)
    try:
        rows = await get_connection("default").execute_query_dict(
            "SELECT app, name FROM tortoise_migrations"
        )
    finally:
        await close_db()
    names = [r["name"] for r in rows]
    assert names and len(names) == len(set(names))
