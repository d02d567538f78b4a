"""The rollout engine on SQLite and PostgreSQL: planning, waves, the desired document's agent
field, failures, timeouts, the maintenance window, pause/resume/abort."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from fleet.server.db.models import (
    FailureAction,
    Rollout,
    RolloutState,
    RolloutTerminal,
    UpdateState,
)
from fleet.server.ingest.pipeline import Pipeline
from fleet.server.ingest.receiver import Received
from fleet.server.rollouts import PlanError, RolloutConflict, RolloutError, plan_waves
from fleet.server.rollouts.planner import resolve_targets
from fleet.server.settings import Settings
from tests.server.rollout_support import AFTERNOON, IDS, VERSION, Clock, Rig, rig, spec


async def states(rollout_id: int) -> dict[str, str]:
    rows = await RolloutTerminal.filter(rollout_id=rollout_id).values_list("terminal_id", "state")
    return {str(t): str(s) for t, s in rows}


async def succeed(r: Rig, ids: list[str]) -> None:
    for tid in ids:
        await r.send(tid, "update_downloading")
        await r.send(tid, "update_installing")
        await r.send(tid, "update_succeeded", version=VERSION)


# -- planning (no database) ------------------------------------------------------------------


def test_waves_canary_then_cumulative_percentages() -> None:
    waves = plan_waves(IDS, [1, "10%", "50%", "100%"])
    assert [len(w) for w in waves] == [1, 1, 8, 10]
    assert (
        waves[0] == ["T01"] and [t for w in waves for t in w] == IDS
    )  # canary first, deterministic order


def test_waves_drop_empty_ones_and_the_last_takes_the_rest() -> None:
    assert plan_waves(IDS[:5], [1, "10%", "20%"]) == [["T01"], ["T02", "T03", "T04", "T05"]]
    assert [len(w) for w in plan_waves(IDS, [2, 5])] == [2, 3, 15]


@pytest.mark.parametrize("bad", [[], [0], ["0%"], ["150%"], ["ten"], [True]])
def test_bad_wave_specs_are_refused(bad: list[int | str]) -> None:
    with pytest.raises(PlanError):
        plan_waves(IDS, bad)


async def test_targets_resolve_by_site_model_tag_and_list(db: str) -> None:
    await rig()
    assert await resolve_targets({"sites": ["S2"], "models": ["kx-escpos"]}) == [
        "T12", "T14", "T16", "T18", "T20"
    ]  # fmt: skip
    assert await resolve_targets({"tags": ["lobby"], "terminals": ["T20"]}) == ["T03", "T04", "T20"]
    for bad in ({}, {"sites": []}, {"terminals": ["NOPE"]}, {"sites": ["S9"]}, {"x": ["T01"]}):
        with pytest.raises(PlanError):
            await resolve_targets(bad)


# -- running ----------------------------------------------------------------------------------


async def test_only_started_waves_get_the_version_and_success_advances(db: str) -> None:
    r = await rig()
    ro = await r.engine.create(spec(), "admin-1")
    assert ro.state == RolloutState.RUNNING and ro.current_wave == 0
    assert r.with_version() == ["T01"]  # the canary alone
    assert r.agent("T02") is None
    await succeed(r, ["T01"])
    assert r.with_version() == ["T01", "T02"]
    await succeed(r, ["T02"])
    assert r.with_version() == IDS[:10]
    await succeed(r, IDS[2:9])
    assert r.with_version() == IDS[:10]  # wave 2 not complete yet
    await succeed(r, ["T10"])
    assert r.with_version() == IDS
    await succeed(r, IDS[10:])
    done = await Rollout.get(id=ro.id)
    assert done.state == RolloutState.COMPLETED and done.finished_at is not None
    assert set((await states(ro.id)).values()) == {"succeeded"}
    assert r.with_version() == IDS  # succeeded terminals keep naming the version they run


async def test_canary_failure_pauses_before_the_next_wave(db: str) -> None:
    r = await rig()
    ro = await r.engine.create(spec(), "admin-1")
    await r.send("T01", "update_rolled_back", version=VERSION, reason="health check failed")
    paused = await Rollout.get(id=ro.id)
    assert paused.state == RolloutState.PAUSED and "below the success threshold" in paused.reason
    row = await RolloutTerminal.get(rollout_id=ro.id, terminal_id="T01")
    assert row.state == UpdateState.ROLLED_BACK and row.reason == "health check failed"
    r.clock.advance(hours=5)
    await r.engine.tick()
    assert (await Rollout.get(id=ro.id)).state == RolloutState.PAUSED
    # No later wave ever saw the version; the canary's target is withdrawn (no retry loop).
    assert r.with_version() == []
    assert all(r.agent(t) is None for t in IDS)


async def test_canary_failure_aborts_when_asked(db: str) -> None:
    r = await rig()
    ro = await r.engine.create(spec(failure_action=FailureAction.ABORT), "admin-1")
    await r.send("T01", "update_failed", version=VERSION, reason="bad hash")
    aborted = await Rollout.get(id=ro.id)
    assert aborted.state == RolloutState.ABORTED and aborted.finished_at is not None
    assert r.with_version() == []
    assert (await states(ro.id))["T02"] == "pending"


async def test_events_for_another_version_or_after_a_result_are_ignored(db: str) -> None:
    r = await rig()
    ro = await r.engine.create(spec(), "admin-1")
    await r.send("T01", "update_failed", version="9.9.9", reason="other")
    await r.send("T05", "update_failed", version=VERSION)  # wave not started
    assert (await states(ro.id))["T01"] == "pending"
    assert (await states(ro.id))["T05"] == "pending"
    await r.send("T01", "update_succeeded", version=VERSION)
    await r.send("T01", "update_failed", version=VERSION)  # redelivered/late: result stands
    assert (await states(ro.id))["T01"] == "succeeded"


async def test_failure_limit_pauses_before_the_wave_ends(db: str) -> None:
    r = await rig()
    ro = await r.engine.create(
        spec(waves=[4, "100%"], success_threshold=0.5, max_failures=1), "admin-1"
    )
    await r.send("T01", "update_failed", version=VERSION)
    assert (await Rollout.get(id=ro.id)).state == RolloutState.RUNNING
    await r.send("T02", "update_failed", version=VERSION)
    paused = await Rollout.get(id=ro.id)
    assert paused.state == RolloutState.PAUSED and "over the limit of 1" in paused.reason
    assert r.with_version() == ["T03", "T04"]  # still updating; later waves untouched


async def test_failure_percentage_limit(db: str) -> None:
    r = await rig()
    ro = await r.engine.create(
        spec(waves=[4, "100%"], success_threshold=0.5, max_failure_pct=30), "admin-1"
    )
    await r.send("T01", "update_failed", version=VERSION)  # 25%: fine
    assert (await Rollout.get(id=ro.id)).state == RolloutState.RUNNING
    await r.send("T02", "update_rolled_back", version=VERSION)  # 50%
    assert (await Rollout.get(id=ro.id)).state == RolloutState.PAUSED


async def test_a_silent_terminal_times_out_and_counts_as_a_failure(db: str) -> None:
    r = await rig()
    ro = await r.engine.create(spec(per_terminal_timeout_s=600), "admin-1")
    await r.send("T01", "update_downloading")
    r.clock.advance(seconds=599)
    await r.engine.tick()
    assert (await states(ro.id))["T01"] == "downloading"
    r.clock.advance(seconds=2)
    await r.engine.tick()
    row = await RolloutTerminal.get(rollout_id=ro.id, terminal_id="T01")
    assert row.state == UpdateState.TIMED_OUT and "600 s" in row.reason
    assert (await Rollout.get(id=ro.id)).state == RolloutState.PAUSED
    assert r.with_version() == []


async def test_service_hours_hold_back_a_wave_until_the_hall_closes(db: str) -> None:
    r = await rig(Clock(AFTERNOON))
    ro = await r.engine.create(spec(), "admin-1")
    waiting = await Rollout.get(id=ro.id)
    assert waiting.state == RolloutState.PENDING and "maintenance window" in waiting.reason
    assert r.with_version() == []
    r.clock.advance(hours=3)  # 17:00 local: still open
    await r.engine.tick()
    assert r.with_version() == []
    r.clock.advance(hours=1)  # 18:00 local: closed
    await r.engine.tick()
    assert (await Rollout.get(id=ro.id)).state == RolloutState.RUNNING
    assert r.with_version() == ["T01"]
    # The next wave also waits for the window: succeed the canary at 09:00 the next day.
    r.clock.advance(hours=15)
    await succeed(r, ["T01"])
    assert r.with_version() == ["T01"]
    r.clock.advance(hours=9)  # 18:00 local
    await r.engine.tick()
    assert r.with_version() == ["T01", "T02"]


async def test_a_terminal_that_has_not_started_waits_for_the_next_window(db: str) -> None:
    """Offline when its wave started, back during service hours: its document names the version
    only once the hall has closed; one that is already installing keeps it."""
    r = await rig()  # 21:00 local: the window is open
    ro = await r.engine.create(
        spec(target={"terminals": ["T01", "T02"]}, waves=[2], per_terminal_timeout_s=86400), "a"
    )
    assert r.with_version() == ["T01", "T02"]
    await r.send("T01", "update_downloading", version=VERSION)
    await r.engine.tick()  # the engine's first look at the window: no edge
    sent = len(r.pub.sent)
    r.clock.advance(hours=13)  # 10:00 the next day: the hall is open
    await r.engine.tick()
    assert r.with_version() == ["T01"]  # T02 has not started: not in front of a queue
    published = len(r.pub.sent)
    assert published == sent + 1  # T02's document only
    r.clock.advance(hours=1)
    await r.engine.tick()  # no edge, nothing republished
    assert len(r.pub.sent) == published
    r.clock.advance(hours=7)  # 18:00: closed again
    await r.engine.tick()
    assert r.with_version() == ["T01", "T02"]
    # Offered again from now: its timeout counts from the window's opening, not the wave's.
    t02 = await RolloutTerminal.get(rollout_id=ro.id, terminal_id="T02")
    assert t02.started_at == r.clock.now and t02.state == UpdateState.PENDING
    await r.send("T02", "update_succeeded", version=VERSION)
    await r.send("T01", "update_succeeded", version=VERSION)
    assert (await Rollout.get(id=ro.id)).state == RolloutState.COMPLETED
    r.clock.advance(hours=16)  # the next morning: succeeded terminals keep their version
    await r.engine.tick()
    assert r.with_version() == ["T01", "T02"]


async def test_a_waiting_terminal_does_not_time_out_while_the_window_is_closed(db: str) -> None:
    r = await rig(Clock(AFTERNOON))  # 14:00: the hall is open
    window = {"start": "13:00", "end": "15:00", "tz": "Asia/Shanghai"}
    ro = await r.engine.create(
        spec(target={"terminals": ["T01"]}, waves=[1], window=window, per_terminal_timeout_s=1800),
        "a",
    )
    await r.engine.tick()
    r.clock.advance(hours=1, minutes=10)  # 15:10: window closed, 70 min after the start
    await r.engine.tick()
    row = await RolloutTerminal.get(rollout_id=ro.id, terminal_id="T01")
    assert row.state == UpdateState.PENDING and r.with_version() == []
    r.clock.advance(hours=22)  # 13:10 the next day: open again, offered again
    await r.engine.tick()
    assert r.with_version() == ["T01"]
    r.clock.advance(minutes=29)
    await r.engine.tick()
    assert (await RolloutTerminal.get(id=row.id)).state == UpdateState.PENDING
    r.clock.advance(minutes=2)  # 31 min after the window opened
    await r.engine.tick()
    assert (await RolloutTerminal.get(id=row.id)).state == UpdateState.TIMED_OUT


async def test_an_explicit_window_and_the_override(db: str) -> None:
    r = await rig(Clock(AFTERNOON))  # 14:00 Asia/Shanghai
    window = {"start": "13:00", "end": "15:00", "tz": "Asia/Shanghai"}
    a = await r.engine.create(spec(target={"terminals": ["T01"]}, window=window), "admin-1")
    night = {"start": "22:00", "end": "06:00", "tz": "Asia/Shanghai"}
    b = await r.engine.create(spec(target={"terminals": ["T02"]}, window=night), "admin-1")
    c = await r.engine.create(spec(target={"terminals": ["T03"]}, override_window=True), "x")
    got = {ro.id: ro.state for ro in await Rollout.all()}
    assert got == {
        a.id: RolloutState.RUNNING,
        b.id: RolloutState.PENDING,
        c.id: RolloutState.RUNNING,
    }
    with pytest.raises(RolloutError):
        await r.engine.create(spec(target={"terminals": ["T04"]}, window={"start": "x"}), "x")


async def test_pause_resume_abort(db: str) -> None:
    r = await rig()
    ro = await r.engine.create(spec(), "admin-1")
    await r.engine.pause(ro.id, "admin-1", "looking at logs")
    await succeed(r, ["T01"])
    assert r.with_version() == ["T01"]  # paused: no new wave
    with pytest.raises(RolloutConflict):
        await r.engine.pause(ro.id, "admin-1")
    await r.engine.resume(ro.id, "admin-1")
    assert r.with_version() == ["T01", "T02"]
    await succeed(r, ["T02"])
    await r.send("T03", "update_installing")
    await r.send("T04", "update_succeeded", version=VERSION)
    await r.engine.abort(ro.id, "admin-1", "enough")
    aborted = await Rollout.get(id=ro.id)
    assert aborted.state == RolloutState.ABORTED and aborted.reason == "enough"
    # Updated terminals keep their version (no downgrade); in-progress ones lose the target;
    # later waves never get it.
    assert r.with_version() == ["T01", "T02", "T04"]
    assert r.agent("T03") is None and r.agent("T11") is None
    for action in (r.engine.pause, r.engine.resume, r.engine.abort):
        with pytest.raises(RolloutConflict):
            await action(ro.id, "admin-1")
    with pytest.raises(LookupError):
        await r.engine.pause(999, "admin-1")


async def test_resume_after_a_failed_canary_accepts_it(db: str) -> None:
    r = await rig()
    ro = await r.engine.create(spec(max_failures=0), "admin-1")
    await r.send("T01", "update_failed", version=VERSION, reason="disk full")
    assert (await Rollout.get(id=ro.id)).state == RolloutState.PAUSED
    await r.engine.resume(ro.id, "admin-1")
    resumed = await Rollout.get(id=ro.id)
    assert resumed.state == RolloutState.RUNNING and resumed.current_wave == 1
    assert r.with_version() == ["T02"]
    await r.send("T02", "update_failed", version=VERSION)  # a new failure: over the limit again
    assert (await Rollout.get(id=ro.id)).state == RolloutState.PAUSED


async def test_a_terminal_is_in_one_active_rollout_at_a_time(db: str) -> None:
    r = await rig()
    first = await r.engine.create(spec(target={"sites": ["S1"]}), "admin-1")
    with pytest.raises(RolloutConflict, match="T01"):
        await r.engine.create(spec(target={"terminals": ["T20", "T01"]}), "admin-1")
    await r.engine.create(spec(target={"sites": ["S2"]}), "admin-1")  # disjoint: fine
    await r.engine.abort(first.id, "admin-1")
    again = await r.engine.create(spec(version="1.3.1", target={"terminals": ["T01"]}), "a")
    assert again.state == RolloutState.RUNNING
    assert r.agent("T01") == {"version": "1.3.1"}


async def test_events_and_metrics(db: str) -> None:
    r = await rig()
    sub = r.bus.subscribe()
    ro = await r.engine.create(spec(), "admin-1")
    await r.send("T01", "update_rolled_back", version=VERSION, reason="health")
    seen = []
    while (e := await sub.get(timeout=0)) is not None:
        seen.append((e.kind, dict(e.data)))
    assert ("rollout_terminal", "rolled_back") in [(k, d.get("state")) for k, d in seen]
    assert [d["state"] for k, d in seen if k == "rollout"][-1] == "paused"
    text = (await r.metrics.render()).decode()
    assert f'fleet_rollout_terminals{{rollout="{ro.id}",state="rolled_back"}} 1.0' in text
    assert f'fleet_rollout_terminals{{rollout="{ro.id}",state="pending"}} 19.0' in text
    assert 'fleet_rollout_transitions_total{state="paused"} 1.0' in text
    assert 'fleet_rollout_terminal_results_total{state="rolled_back"} 1.0' in text


async def test_the_ingest_feeds_update_events_to_the_engine(db: str) -> None:
    r = await rig()
    ro = await r.engine.create(spec(), "admin-1")
    pipeline = Pipeline(Settings(dev_mode=True), update_events=r.engine.on_update_events)
    await pipeline.restore()

    def event(seq: int, kind: str, **data: str) -> Received:
        doc = {"v": 1, "seq": seq, "ts": "2026-11-25T13:00:00Z", "agent": "1.2.0", "event": kind}
        payload = json.dumps({**doc, **data}).encode()
        # Received when it was sent: the ingest refuses a report dated far from its arrival.
        at = datetime(2026, 11, 25, 13, 0, 1, tzinfo=UTC).timestamp()
        return Received("fleet/v1/t/T01/event", payload, 1, False, False, seq, at, 1)

    await pipeline.handle([event(1, "update_downloading"), event(2, "print_completed")])
    assert (await states(ro.id))["T01"] == "downloading"
    await pipeline.handle([event(3, "update_succeeded", version=VERSION)])
    await pipeline.handle([event(3, "update_succeeded", version=VERSION)])  # duplicate: dropped
    assert (await states(ro.id))["T01"] == "succeeded"
    assert r.with_version() == ["T01", "T02"]
