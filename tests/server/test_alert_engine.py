"""The alert state machine on a fake clock: raise delay, clear on evidence, flapping, ack,
idempotence, restore."""

from __future__ import annotations

import random
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta

import pytest

from fleet.server.alerts import (
    RULES,
    ActiveAlert,
    AlertEngine,
    Cleared,
    Opened,
    RuleHit,
    Severity,
    Timing,
    Transition,
    assess,
)
from fleet.server.alerts.engine import FLAP_OPENS, FLAP_WINDOW_S

T0 = datetime(2026, 11, 27, 1, 30, tzinfo=UTC)  # 09:30 in the hall


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def advance(self, seconds: float) -> datetime:
        self.now += timedelta(seconds=seconds)
        return self.now


def hits(*rules: str) -> set[RuleHit]:
    return {RuleHit(r) for r in rules}


def kinds(ts: Iterable[Transition]) -> list[tuple[str, str]]:
    return [(type(t).__name__, t.rule) for t in ts]


@pytest.fixture
def clock() -> Clock:
    return Clock()


def test_opens_at_once_and_carries_severity_and_detail(clock: Clock) -> None:
    e = AlertEngine()
    out = e.update("k1", clock.now, {RuleHit("jam", "media-jam")})
    assert out == [Opened("k1", "jam", Severity.CRITICAL, T0, T0, "media-jam")]
    assert e.active("k1") == [ActiveAlert("k1", "jam", T0)]


def test_same_input_twice_is_idempotent(clock: Clock) -> None:
    e = AlertEngine()
    assert kinds(e.update("k1", clock.now, hits("jam", "paper_low"))) == [
        ("Opened", "jam"),
        ("Opened", "paper_low"),
    ]
    assert e.update("k1", clock.now, hits("jam", "paper_low")) == []
    assert e.update("k1", clock.advance(5), hits("jam", "paper_low")) == []
    assert len(e.active()) == 2


def test_clears_at_once_on_evidence(clock: Clock) -> None:
    """A report that shows the fault gone clears its alert at once (issue 20: a refill worker
    saw the kiosk red for a minute after refilling)."""
    e = AlertEngine(hold_down_s=60)
    e.update("k1", clock.now, hits("jam"))
    out = e.update("k1", clock.advance(10), hits())
    assert out == [Cleared("k1", "jam", clock.now, T0, False)]
    assert e.active() == []
    assert e.update("k1", clock.advance(1), hits()) == []


def test_a_flapping_condition_is_held_and_says_so(clock: Clock) -> None:
    """Present, absent, present... every 20 s: the first alerts open and clear on evidence; the
    FLAP_OPENS-th within FLAP_WINDOW_S says "flapping" and waits the hold-down to clear, so a
    sensor on the edge is one alert, not one a minute."""
    e = AlertEngine(timings={"door_open": Timing(0, 60)})
    transitions: list[Transition] = []
    for i in range(20):  # 400 s
        transitions += e.update("k1", clock.advance(20), hits() if i % 2 else hits("door_open"))
    assert kinds(transitions) == [
        ("Opened", "door_open"),
        ("Cleared", "door_open"),
        ("Opened", "door_open"),
        ("Cleared", "door_open"),
        ("Opened", "door_open"),  # the third: held from now on
    ]
    third = transitions[-1]
    assert isinstance(third, Opened) and "flapping" in third.detail
    assert e.flapping("k1", "door_open", clock.now)
    # Once it stays away past the hold-down, it clears exactly once.
    assert e.update("k1", clock.advance(20), hits()) == []
    assert kinds(e.update("k1", clock.advance(60), hits())) == [("Cleared", "door_open")]
    # Quiet for the window: evidence clears at once again.
    clock.advance(FLAP_WINDOW_S)
    assert not e.flapping("k1", "door_open", clock.now)
    e.update("k1", clock.advance(1), hits("door_open"))
    assert kinds(e.update("k1", clock.advance(1), hits())) == [("Cleared", "door_open")]


def test_raise_delay_filters_brief_conditions(clock: Clock) -> None:
    e = AlertEngine()  # door_open waits 120 s: a refill opens the door
    assert e.update("k1", clock.now, hits("door_open")) == []
    assert e.update("k1", clock.advance(60), hits("door_open")) == []
    assert e.update("k1", clock.advance(30), hits()) == []  # closed after 90 s: no alert
    assert (
        e.update("k1", clock.advance(30), hits("door_open")) == []
    )  # opened again: timer restarts
    assert e.update("k1", clock.advance(119), hits("door_open")) == []
    out = e.update("k1", clock.advance(1), hits("door_open"))
    assert len(out) == 1 and isinstance(out[0], Opened)
    assert out[0].since == clock.now - timedelta(seconds=120) and out[0].at == clock.now


def test_tick_lets_timers_expire_without_reports(clock: Clock) -> None:
    e = AlertEngine(hold_down_s=60)
    assert kinds(e.update("k1", clock.now, hits("door_open", "jam"))) == [("Opened", "jam")]
    assert kinds(e.tick(clock.advance(119))) == []
    assert kinds(e.tick(clock.advance(1))) == [("Opened", "door_open")]
    out = e.update("k1", clock.advance(1), hits())
    assert kinds(out) == [("Cleared", "door_open"), ("Cleared", "jam")]
    assert e.tick(clock.advance(1000)) == []


def test_acknowledge_keeps_alert_until_clear_and_reraise_is_new(clock: Clock) -> None:
    e = AlertEngine(hold_down_s=0)
    e.update("k1", clock.now, hits("paper_out"))
    assert e.acknowledge("k1", "paper_out") is True
    assert e.acknowledge("k1", "paper_out") is False  # idempotent
    assert e.acknowledge("k1", "jam") is False
    assert e.acknowledge("k2", "paper_out") is False
    assert e.update("k1", clock.advance(600), hits("paper_out")) == []  # still active, acked
    assert e.active() == [ActiveAlert("k1", "paper_out", T0, acknowledged=True)]
    out = e.update("k1", clock.advance(1), hits())
    assert out == [Cleared("k1", "paper_out", clock.now, T0, True)]
    out = e.update("k1", clock.advance(1), hits("paper_out"))
    assert kinds(out) == [("Opened", "paper_out")]
    assert e.active() == [ActiveAlert("k1", "paper_out", clock.now, acknowledged=False)]


def test_unknown_keeps_state_and_restarts_timers(clock: Clock) -> None:
    e = AlertEngine(hold_down_s=60)
    e.update("k1", clock.now, hits("jam"))
    # The printer drops off: we cannot tell whether the jam is cleared.
    assert e.update("k1", clock.advance(5), hits("printer_offline"), {"jam"}) == []
    out = e.update("k1", clock.advance(600), hits("printer_offline"), {"jam"})
    assert kinds(out) == [("Opened", "printer_offline")]  # after its 30 s raise delay
    assert {a.rule for a in e.active()} == {"jam", "printer_offline"}
    # Back and jam-free: both cleared on that evidence.
    assert kinds(e.update("k1", clock.advance(1), hits())) == [
        ("Cleared", "jam"),
        ("Cleared", "printer_offline"),
    ]


def test_unknown_does_not_raise(clock: Clock) -> None:
    e = AlertEngine()
    assert e.update("k1", clock.now, hits(), {"jam", "paper_out"}) == []
    assert e.active() == []


def test_terminal_offline_does_not_clear_paper_out(clock: Clock) -> None:
    e = AlertEngine(hold_down_s=60)
    status = {"printer": {"state": "stopped", "reasons": ["media-empty"]}}
    a = assess(status, True)
    e.update("k1", clock.now, a.hits, a.unknown)
    a = assess(status, False)
    out = e.update("k1", clock.advance(30), a.hits, a.unknown)
    assert kinds(out) == [("Opened", "terminal_offline")]
    assert e.update("k1", clock.advance(3600), a.hits, a.unknown) == []
    assert {x.rule for x in e.active("k1")} == {"paper_out", "terminal_offline"}


def test_scope_lets_separate_sources_update_their_own_rules(clock: Clock) -> None:
    e = AlertEngine(hold_down_s=0)
    status_rules = set(RULES) - {"paper_runout_soon"}
    e.update("k1", clock.now, hits("paper_runout_soon"), scope={"paper_runout_soon"})
    e.update("k1", clock.now, hits("jam"), scope=status_rules)
    assert e.active_rules("k1") == {"jam", "paper_runout_soon"}
    # Status reports without a forecast do not clear the forecast's alert ...
    out = e.update("k1", clock.advance(10), hits(), scope=status_rules)
    assert kinds(out) == [("Cleared", "jam")]
    assert e.active_rules("k1") == {"paper_runout_soon"}
    # ... the forecast job does.
    out = e.update("k1", clock.advance(10), hits(), scope={"paper_runout_soon"})
    assert kinds(out) == [("Cleared", "paper_runout_soon")]
    with pytest.raises(ValueError):
        e.update("k1", clock.now, hits(), scope={"bogus"})


def test_terminals_are_independent(clock: Clock) -> None:
    e = AlertEngine(hold_down_s=0)
    e.update("k1", clock.now, hits("jam"))
    e.update("k2", clock.now, hits("jam"))
    assert kinds(e.update("k1", clock.advance(1), hits())) == [("Cleared", "jam")]
    assert e.active() == [ActiveAlert("k2", "jam", T0)]


def test_restore_after_restart(clock: Clock) -> None:
    e = AlertEngine(hold_down_s=60)
    e.restore(
        [
            ActiveAlert("k1", "paper_out", T0 - timedelta(hours=3), acknowledged=True),
            ActiveAlert("k1", "jam", T0 - timedelta(hours=1)),
            ActiveAlert("k2", "retired_rule", T0),
        ]
    )
    assert [a.rule for a in e.active()] == ["jam", "paper_out"]
    # Still out of paper: no duplicate alert. The jam is gone: cleared by the first report.
    out = e.update("k1", clock.now, hits("paper_out"))
    assert out == [Cleared("k1", "jam", clock.now, T0 - timedelta(hours=1), False)]
    assert e.update("k1", clock.advance(59), hits("paper_out")) == []
    assert e.active() == [ActiveAlert("k1", "paper_out", T0 - timedelta(hours=3), True)]


def test_restore_is_equivalent_to_having_run(clock: Clock) -> None:
    """Property: for random histories, an engine restored from another's active alerts at any
    point then makes the same Opened/Cleared decisions once timers have restarted."""
    rng = random.Random(7)
    pool = ["paper_low", "paper_out", "jam", "toner_low", "reader_fault"]
    for _ in range(200):
        a, c = AlertEngine(hold_down_s=30), Clock()
        for _ in range(rng.randint(0, 20)):
            a.update("k", c.advance(rng.choice([5, 20, 40])), hits(*rng.sample(pool, 2)))
        b = AlertEngine(hold_down_s=30)
        b.restore(a.active())
        # Feed both the same steady input for longer than every timer: same final state.
        final = hits(*rng.sample(pool, 2))
        for _ in range(5):
            now = c.advance(40)
            a.update("k", now, final)
            b.update("k", now, final)
        assert (
            [x.rule for x in a.active()]
            == [x.rule for x in b.active()]
            == sorted(h.rule for h in final)
        )


def test_random_inputs_keep_alerts_consistent(clock: Clock) -> None:
    """Property: transitions alternate Opened/Cleared per (terminal, rule), each Opened happens
    while the condition holds, replaying an input changes nothing."""
    rng = random.Random(11)
    e = AlertEngine()
    pool = sorted(RULES)
    open_now: set[tuple[str, str]] = set()
    for _ in range(3000):
        term = rng.choice(["a", "b", "c"])
        present = hits(*rng.sample(pool, rng.randint(0, 3)))
        unknown = set(rng.sample(pool, rng.randint(0, 2)))
        now = clock.advance(rng.choice([0, 1, 10, 30, 61, 200]))
        out = e.update(term, now, present, unknown)
        assert e.update(term, now, present, unknown) == []
        for t in out:
            key = (t.terminal, t.rule)
            assert t.terminal == term
            if isinstance(t, Opened):
                assert key not in open_now and RuleHit(t.rule) in present
                assert t.severity == RULES[t.rule].severity
                open_now.add(key)
            else:
                assert key in open_now and RuleHit(t.rule) not in present
                assert t.rule not in unknown
                open_now.remove(key)
        assert {(a.terminal, a.rule) for a in e.active()} == open_now


def test_clock_stepping_back_does_not_clear_early(clock: Clock) -> None:
    e = AlertEngine(hold_down_s=60)
    for _ in range(FLAP_OPENS - 1):  # flapping: the next clear waits the hold-down
        e.update("k1", clock.now, hits("jam"))
        e.update("k1", clock.advance(1), hits())
    e.update("k1", clock.advance(1), hits("jam"))
    start = clock.now
    e.update("k1", clock.advance(10), hits())  # absent since start + 10
    assert e.update("k1", clock.advance(-3600), hits()) == []
    assert e.update("k1", start + timedelta(seconds=69), hits()) == []
    assert kinds(e.update("k1", start + timedelta(seconds=70), hits())) == [("Cleared", "jam")]


def test_unknown_rule_ids_are_a_programming_error(clock: Clock) -> None:
    with pytest.raises(ValueError, match="nonsense"):
        AlertEngine().update("k1", clock.now, hits("nonsense"))


def test_forget_drops_a_terminal(clock: Clock) -> None:
    e = AlertEngine()
    e.update("k1", clock.now, hits("jam"))
    e.update("k2", clock.now, hits("jam"))
    e.update("k1", clock.now, hits("jam", "paper_low"))
    assert e.active_rules("k1") == {"jam", "paper_low"}
    e.forget("k1")
    assert [a.terminal for a in e.active()] == ["k2"]
    assert e.active_rules("k1") == frozenset()


def test_per_rule_timing_overrides(clock: Clock) -> None:
    e = AlertEngine(timings={"jam": Timing(raise_delay_s=10, hold_down_s=0)})
    assert e.update("k1", clock.now, hits("jam")) == []
    assert kinds(e.update("k1", clock.advance(10), hits("jam"))) == [("Opened", "jam")]
    assert kinds(e.update("k1", clock.advance(1), hits())) == [("Cleared", "jam")]


def test_a_kiosk_morning_through_rules_and_engine(clock: Clock) -> None:
    """Reports every 30 s: paper drains with a jittery sensor, runs out, the door opens for the
    refill, paper is back. Each alert opens once and clears once, in the expected order."""
    e = AlertEngine()
    log: list[tuple[str, str]] = []

    def feed(printer: dict[str, object], n: int = 1, online: bool = True) -> None:
        for _ in range(n):
            status = {"printer": {"state": "idle", **printer}, "reader": {"state": "ok"}}
            a = assess(status, online, active=e.active_rules("k1"))
            log.extend(kinds(e.update("k1", clock.advance(30), a.hits, a.unknown)))

    for level in (30, 25, 21, 19, 21, 19, 22, 18, 20, 17, 12, 8, 3):  # jitter around 20 %
        feed({"paper": {"level_pct": level}})
    feed({"paper": {"level_pct": 0}, "reasons": ["media-empty"], "state": "stopped"}, 4)
    feed({"paper": {"level_pct": 0}, "reasons": ["media-empty", "door-open"]}, 3)  # 90 s
    feed({"paper": {"level_pct": 100}, "reasons": []}, 1)
    feed({}, 2, online=False)  # a network blip right after: nothing else changes
    feed({"paper": {"level_pct": 100}, "reasons": []}, 4)
    assert log == [
        ("Opened", "paper_low"),  # once, however the sensor jitters (the clear margin)
        ("Cleared", "paper_low"),  # paper_out supersedes it (same report, rule order)
        ("Opened", "paper_out"),
        ("Cleared", "paper_out"),  # the report after the refill
        ("Opened", "terminal_offline"),
        ("Cleared", "terminal_offline"),
    ]
    assert e.active() == []
