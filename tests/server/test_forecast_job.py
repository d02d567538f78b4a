"""The forecast job on a real database (SQLite and PostgreSQL): paper history in, the
`paper_runout_soon` alert opened and cleared through the pipeline's engine, with the clock
passed in."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

from fleet.server.db.models import Alert, StatusSample
from fleet.server.events_bus import EventBus
from fleet.server.forecast_job import RULE, run_forecast, run_forecast_job
from tests.server.test_pipeline import make_pipeline, seed

# Wednesday 14:00 in Asia/Shanghai: inside service hours, three service hours after 11:00.
NOW = datetime(2026, 11, 25, 6, 0, tzinfo=UTC)


async def history(tid: str, start_pct: float, per_hour: float, *, seq0: int = 1) -> None:
    """A steady consumption over the three service hours before NOW, one sample per 10 min."""
    rows = []
    for i in range(19):
        ts = NOW - timedelta(hours=3) + timedelta(minutes=10 * i)
        pct = round(start_pct - per_hour * i / 6)
        rows.append(
            StatusSample(
                terminal_id=tid,
                seq=seq0 + i,
                ts=ts,
                received_at=ts,
                paper_pct=pct,
                printer_state="idle",
            )
        )
    await StatusSample.bulk_create(rows)


async def open_alerts() -> list[tuple[str, str]]:
    return sorted(await Alert.filter(active_key=1).values_list("terminal_id", "rule"))


async def test_runout_alert_opens_and_clears_after_a_refill(db: str) -> None:
    await seed("LOW", "FULL")
    await history("LOW", 40, 10)  # 10 % left at 14:00, 10 %/h: empty about 15:00
    await history("FULL", 90, 2)  # 84 % left: days of paper
    bus = EventBus()
    sub = bus.subscribe()
    p = await make_pipeline(db, bus=bus)

    await run_forecast(p, NOW)
    assert await open_alerts() == [("LOW", RULE)]
    assert p.engine.active_rules("LOW") == {RULE} and p.engine.active_rules("FULL") == set()
    event = await sub.get(timeout=0)
    assert event is not None and event.kind == "alert"
    assert (event.data["terminal"], event.data["rule"], event.data["transition"]) == (
        "LOW",
        RULE,
        "opened",
    )

    await run_forecast(p, NOW + timedelta(minutes=5))  # still low: one alert, not two
    assert await Alert.filter(rule=RULE).count() == 1

    refilled = NOW + timedelta(minutes=10)
    await StatusSample.create(
        terminal_id="LOW",
        seq=100,
        ts=refilled,
        received_at=refilled,
        paper_pct=100,
        printer_state="idle",
    )
    await run_forecast(p, refilled)  # condition gone: cleared on that evidence
    assert await open_alerts() == []
    row = await Alert.get(terminal_id="LOW", rule=RULE)
    assert row.cleared_at == refilled
    assert await Alert.filter(terminal_id="FULL").count() == 0


async def test_offline_terminal_keeps_its_alert(db: str) -> None:
    await seed("LOW")
    await history("LOW", 40, 10)
    p = await make_pipeline(db)
    await run_forecast(p, NOW)
    p.presence.restore("LOW", online=False, reason="will", now=NOW.timestamp())
    # History has stopped (the terminal is gone): stale, so neither opened nor cleared.
    later = NOW + timedelta(hours=3)
    await run_forecast(p, later)
    await run_forecast(p, later + timedelta(seconds=61))
    assert await open_alerts() == [("LOW", RULE)]


async def test_job_runs_until_stopped(db: str) -> None:
    await seed("LOW")
    await history("LOW", 40, 10)
    p = await make_pipeline(db)
    stop = asyncio.Event()
    task = asyncio.create_task(run_forecast_job(p, stop, interval_s=0.01, clock=lambda: NOW))
    for _ in range(200):
        if await open_alerts():
            break
        await asyncio.sleep(0.01)
    stop.set()
    await asyncio.wait_for(task, 5)
    assert await open_alerts() == [("LOW", RULE)]
