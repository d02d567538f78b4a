"""Presence: clean vs will vs timeout, and the hysteresis that keeps a flaky link from flapping."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from fleet.server.ingest.presence import PresenceTracker, Transition

T0 = datetime(2026, 11, 27, 9, 0, tzinfo=UTC)
A = "T-0001"


def agent_ts(s: float) -> datetime:
    return T0 + timedelta(seconds=s)


def tracker(hold_s: float = 30) -> PresenceTracker:
    return PresenceTracker(status_interval_s=30, timeout_intervals=3, hold_s=hold_s)


def on(p: PresenceTracker, now: float, ts: float | None = None) -> list[Transition]:
    return p.presence(A, online=True, ts=agent_ts(now if ts is None else ts), now=now)


def off(p: PresenceTracker, now: float, ts: float, reason: str | None = None) -> list[Transition]:
    return p.presence(A, online=False, ts=agent_ts(ts), now=now, reason=reason)


def test_first_sight_online_at_once() -> None:
    p = tracker()
    assert on(p, 0) == [Transition(A, True, None, 0)]
    assert on(p, 1) == []
    assert p.alive(A, 2) == []
    assert p.is_online(A) is True


def test_first_status_without_presence_is_online() -> None:
    p = tracker()
    assert p.alive(A, 5) == [Transition(A, True, None, 5)]


def test_clean_shutdown_vs_last_will() -> None:
    """The agent's goodbye is built after its online presence; its Will before (mqtt_link.py)."""
    p = tracker()
    on(p, 0, ts=100)
    assert off(p, 500, ts=600) == [Transition(A, False, "clean", 500)]
    p2 = tracker()
    on(p2, 0, ts=100)
    assert off(p2, 500, ts=100) == [Transition(A, False, "will", 500)]  # same second: the Will
    p3 = tracker()
    on(p3, 0, ts=100)
    assert off(p3, 500, ts=99) == [Transition(A, False, "will", 500)]  # built before connecting


def test_offline_with_no_online_seen_is_will() -> None:
    """A retained online:false at server start, nothing to compare with: the cautious reason."""
    p = tracker()
    assert off(p, 0, ts=50) == [Transition(A, False, "will", 0)]


def test_explicit_reason_field_wins() -> None:
    p = tracker()
    on(p, 0, ts=100)
    assert off(p, 10, ts=100, reason="clean") == [Transition(A, False, "clean", 10)]
    p2 = tracker()
    on(p2, 0, ts=100)
    assert off(p2, 10, ts=900, reason="will") == [Transition(A, False, "will", 10)]
    p3 = tracker()
    on(p3, 0, ts=100)
    assert off(p3, 10, ts=900, reason="bogus")[0].reason == "clean"  # unknown: the ts rule


def test_heartbeat_timeout_after_three_intervals() -> None:
    p = tracker()
    p.alive(A, 0)
    assert p.tick(90) == []  # exactly 3 x 30 s: not yet
    assert p.tick(90.5) == [Transition(A, False, "timeout", 90.5)]
    assert p.tick(200) == []
    assert p.reason(A) == "timeout"


def test_timeout_uses_the_terminals_own_interval() -> None:
    p = tracker()
    p.set_interval(A, 10)
    p.alive(A, 0)
    assert p.tick(31) == [Transition(A, False, "timeout", 31)]
    assert p.timeout_s("other") == 90


def test_statuses_keep_it_online() -> None:
    p = tracker()
    for t in range(0, 600, 30):
        assert p.alive(A, t) == [] or t == 0
        assert p.tick(t + 29) == []


def test_flaky_link_reports_one_offline_then_one_online_after_the_hold() -> None:
    p = tracker()
    on(p, 0, ts=0)
    out: list[Transition] = []
    # Drops and reconnects every few seconds for 20 s.
    for t in range(10, 30, 4):
        out += off(p, t, ts=t - 10)  # the Will of the previous connection
        out += on(p, t + 1)
        out += p.alive(A, t + 2)
        out += p.tick(t + 3)
    assert out == [Transition(A, False, "will", 10)]
    # Last drop at 26: online once the link has stayed up for the 30 s hold.
    assert p.tick(55) == []
    assert p.tick(56) == [Transition(A, True, None, 56)]
    assert p.tick(57) == []


def test_alive_after_the_hold_is_online_at_once() -> None:
    p = tracker()
    on(p, 0, ts=0)
    off(p, 10, ts=0)
    assert p.alive(A, 45) == [Transition(A, True, None, 45)]


def test_pending_online_dropped_if_it_times_out_during_the_hold() -> None:
    p = tracker(hold_s=200)
    on(p, 0, ts=0)
    off(p, 10, ts=0)
    on(p, 11)  # back, then silent
    # 11 + 90 passed: the link is down again -- silently, it is offline already. That timeout is
    # the latest down signal, so the hold now runs from 150.
    assert p.tick(150) == []
    assert p.tick(300) == []  # no life since: stays offline
    assert p.is_online(A) is False and p.reason(A) == "will"
    assert p.alive(A, 301) == []
    assert p.tick(349) == []
    assert p.tick(350) == [Transition(A, True, None, 350)]


def test_timeout_then_late_status_waits_for_the_hold() -> None:
    p = tracker()
    p.alive(A, 0)
    assert p.tick(91)[0].reason == "timeout"
    assert p.alive(A, 95) == []  # a slow link: not online again yet
    assert p.tick(121) == [Transition(A, True, None, 121)]


def test_clean_restart_offline_then_online() -> None:
    """An agent update: goodbye, reconnect 5 s later -- one offline (clean), one online."""
    p = tracker()
    on(p, 0, ts=0)
    assert off(p, 100, ts=100) == [Transition(A, False, "clean", 100)]
    assert on(p, 105, ts=105) == []
    assert p.tick(130) == [Transition(A, True, None, 130)]


def test_restore_gives_online_terminals_a_full_timeout() -> None:
    p = tracker()
    p.restore(A, online=True, reason=None, now=1000)
    assert p.tick(1080) == []
    assert p.tick(1091) == [Transition(A, False, "timeout", 1091)]
    p.restore("B", online=False, reason="clean", now=1000, changed_at=500)
    assert p.is_online("B") is False and p.reason("B") == "clean"
    assert p.alive("B", 1001) == [Transition("B", True, None, 1001)]  # hold long over


def test_many_terminals_tick() -> None:
    p = tracker()
    for i in range(1000):
        p.alive(f"T{i}", i % 60)
    out = p.tick(120)
    assert len(out) == 1000 - sum(1 for i in range(1000) if i % 60 >= 30)
    assert {t.reason for t in out} == {"timeout"}


def test_nobody_times_out_while_the_server_cannot_hear_the_terminals() -> None:
    """Issue 13: while the server's link to the broker is down, silence says nothing about the
    terminals; once it is back, each gets a full timeout to report before being called
    offline."""
    p = tracker()
    p.alive(A, 0)
    p.alive("B", 0)
    p.link_lost(10)
    assert p.tick(500) == []
    p.link_back(500)
    assert p.tick(590) == []  # a full timeout (90 s) from the link's return
    assert p.alive(A, 550) == []  # A reported: still online, its own timeout runs from here
    assert p.tick(591) == [Transition("B", False, "timeout", 591)]
    assert p.tick(641) == [Transition(A, False, "timeout", 641)]


def test_a_server_start_waits_for_the_link_then_gives_the_grace() -> None:
    p = tracker()
    p.restore(A, online=True, reason=None, now=1000)
    p.link_lost(1000)  # the ingest is not connected yet
    assert p.tick(1200) == []
    p.link_back(1200)
    assert p.tick(1290) == []
    assert p.tick(1291) == [Transition(A, False, "timeout", 1291)]


def test_a_last_will_during_the_grace_waits_for_the_grace() -> None:
    """A broker that stops publishes every connected client's Will: heard during the grace, a
    Will counts only if the terminal stays silent until the grace ends (timeout: 90 s)."""
    p = tracker()
    on(p, 0, ts=0)
    p.link_lost(10)
    p.link_back(20)
    assert off(p, 21, ts=0) == []
    assert p.tick(110) == []
    assert p.tick(111) == [Transition(A, False, "will", 111)]
    # Heard after its Will: the Will was the broker's, not the kiosk's.
    q = tracker()
    on(q, 0, ts=0)
    q.link_lost(10)
    q.link_back(20)
    assert off(q, 21, ts=0) == []
    assert q.alive(A, 23) == []
    assert q.tick(111) == [] and q.is_online(A)
    # Outside the grace a Will counts at once, as before.
    assert off(q, 200, ts=0) == [Transition(A, False, "will", 200)]
    # While the link is down, a Will waits as well (the grace starts when it is back).
    r = tracker()
    on(r, 0, ts=0)
    r.link_lost(10)
    assert off(r, 11, ts=0) == []
    assert r.tick(500) == []
    r.link_back(600)
    assert r.tick(691) == [Transition(A, False, "will", 691)]


def test_a_grace_after_a_stall() -> None:
    """`grace(now)`: every terminal has a full timeout from `now`, whatever the link's state."""
    p = tracker()
    on(p, 0, ts=0)
    p.grace(100)
    assert p.tick(190) == []
    assert p.tick(191) == [Transition(A, False, "timeout", 191)]
