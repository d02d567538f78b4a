"""Paper run-out forecast on synthetic histories, service-hours arithmetic, and the refill round."""

from __future__ import annotations

import random
from collections.abc import Callable
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from fleet.server.forecast import (
    Confidence,
    Forecast,
    PaperSample,
    RoundStop,
    ServiceHours,
    TerminalPaper,
    forecast_runout,
    refill_round,
    runout_soon,
)

SH = ZoneInfo("Asia/Shanghai")
HOURS = ServiceHours()


def at(day: int, hh: int, mm: int = 0, month: int = 11) -> datetime:
    """Local hall time, November 2026 (the 25th is a Wednesday, the 27th a Friday)."""
    return datetime(2026, month, day, hh, mm, tzinfo=SH)


def series(
    start: datetime,
    minutes: int,
    every: int,
    level: Callable[[float], float],
    estimated: bool = False,
) -> list[PaperSample]:
    """Samples every `every` minutes for `minutes`; level(t_hours_since_start)."""
    return [
        PaperSample(start + timedelta(minutes=m), round(level(m / 60), 3), estimated=estimated)
        for m in range(0, minutes + 1, every)
    ]


def close(a: datetime | None, b: datetime, minutes: float = 1) -> bool:
    assert a is not None
    return abs((a - b).total_seconds()) <= minutes * 60


# --- service hours --------------------------------------------------------------------------


def test_service_seconds_within_a_day_and_across_night_and_weekend() -> None:
    assert HOURS.seconds_between(at(25, 9), at(25, 10)) == 3600
    assert HOURS.seconds_between(at(25, 7), at(25, 9)) == 1800  # opens at 08:30
    assert HOURS.seconds_between(at(25, 17), at(26, 9)) == 3600  # 17:00–17:30 + 08:30–09:00
    assert HOURS.seconds_between(at(27, 17), at(30, 9)) == 3600  # Friday → Monday
    assert HOURS.seconds_between(at(28, 10), at(29, 16)) == 0  # weekend
    assert HOURS.seconds_between(at(26, 9), at(25, 17)) == -HOURS.seconds_between(
        at(25, 17), at(26, 9)
    )
    # UTC input is the same instant.
    assert HOURS.seconds_between(at(25, 9).astimezone(UTC), at(25, 10)) == 3600


def test_add_service_time_skips_nights_weekends_and_holidays() -> None:
    assert HOURS.add(at(25, 16), 3600) == at(25, 17)
    assert HOURS.add(at(25, 17), 3600) == at(26, 9)
    assert HOURS.add(at(25, 20), 0) == at(26, 8, 30)  # next opening
    assert HOURS.add(at(27, 17), 3600) == at(30, 9)
    hol = ServiceHours(closed_dates=frozenset({date(2026, 11, 30)}))
    assert hol.add(at(27, 17), 3600) == datetime(2026, 12, 1, 9, tzinfo=SH)
    sat = ServiceHours(open_dates=frozenset({date(2026, 11, 28)}))
    assert sat.add(at(27, 17), 3600) == at(28, 9)
    six_days = ServiceHours(days=frozenset(range(6)), open=time(9), close=time(12))
    assert six_days.add(at(27, 11), 2 * 3600) == at(28, 10)


def test_add_and_between_are_inverse() -> None:
    rng = random.Random(3)
    for _ in range(300):
        start = at(25, 0) + timedelta(minutes=rng.randint(0, 60 * 24 * 12))
        secs = rng.uniform(0, 40 * 3600)
        end = HOURS.add(start, secs)
        assert end is not None
        assert abs(HOURS.seconds_between(start, end) - secs) < 1e-3


def test_back_finds_where_a_lookback_starts() -> None:
    assert HOURS.back(at(25, 12), 3600) == at(25, 11)
    assert HOURS.back(at(25, 9), 3 * 3600) == at(24, 15)  # 30 min today, 2 h 30 yesterday
    assert HOURS.back(at(25, 20), 1800) == at(25, 17)
    assert HOURS.back(at(30, 9), 3 * 3600) == at(27, 15)  # Monday reaches back to Friday
    rng = random.Random(4)
    for _ in range(200):
        end = at(25, 0) + timedelta(minutes=rng.randint(0, 60 * 24 * 12))
        secs = rng.uniform(0, 30 * 3600)
        start = HOURS.back(end, secs)
        assert start <= end
        assert abs(HOURS.seconds_between(start, end) - secs) < 1e-3


def test_round_end() -> None:
    assert HOURS.round_end(at(25, 7)) == at(25, 17, 30)
    assert HOURS.round_end(at(25, 12)) == at(25, 17, 30)
    assert HOURS.round_end(at(25, 18)) == at(26, 17, 30)  # after close: plan tomorrow's
    assert HOURS.round_end(at(28, 12)) == at(30, 17, 30)  # Saturday: Monday's


def test_bad_service_hours_are_refused() -> None:
    with pytest.raises(ValueError):
        ServiceHours(open=time(18), close=time(9))
    with pytest.raises(Exception):  # noqa: B017 - zoneinfo raises its own error type
        ServiceHours(tz="Mars/Olympus")


# --- forecast -------------------------------------------------------------------------------


def test_steady_consumption() -> None:
    # 10 %/h from 100 % at 08:30; at 11:30 there is 70 %: 6 h today, 1 h tomorrow.
    fc = forecast_runout(series(at(25, 8, 30), 180, 5, lambda h: 100 - 10 * h))
    assert fc.reason == "ok" and fc.unit == "pct"
    assert fc.rate_per_hour == pytest.approx(10, rel=0.01)
    assert fc.remaining == pytest.approx(70, abs=0.5)
    assert close(fc.runout_at, at(26, 9, 30))
    assert fc.confidence == "high"
    assert fc.basis is not None and fc.basis.points == 37 and fc.basis.span_s == 3 * 3600


def test_sheets_based_and_percent_based_agree() -> None:
    sheets = [
        PaperSample(s.ts, sheets_left=round(5 * (s.level_pct or 0)), capacity=500)
        for s in series(at(25, 9), 120, 5, lambda h: 90 - 8 * h)
    ]
    fs = forecast_runout(sheets)
    assert fs.reason == "ok" and fs.unit == "sheets"
    assert fs.rate_per_hour == pytest.approx(40, rel=0.02)  # sheets per service hour
    pct = forecast_runout(series(at(25, 9), 120, 5, lambda h: 90 - 8 * h))
    assert pct.unit == "pct"
    assert close(fs.runout_at, pct.runout_at or at(1, 0), minutes=5)
    # 74 % left at 11:00, 8 %/h: 9.25 h → 6.5 h today, 2.75 h tomorrow → 11:15.
    assert close(pct.runout_at, at(26, 11, 15), minutes=2)


def test_sheets_without_capacity_still_forecast() -> None:
    samples = [
        PaperSample(at(25, 9) + timedelta(minutes=m), sheets_left=200 - m) for m in range(61)
    ]
    fc = forecast_runout(samples)
    assert fc.unit == "sheets" and fc.rate_per_hour == pytest.approx(60)
    assert close(fc.runout_at, at(25, 12, 20))


def test_refill_mid_window_restarts_the_rate() -> None:
    before = series(at(25, 8, 30), 120, 5, lambda h: 50 - 20 * h)  # 20 %/h down to 10 %
    after = series(at(25, 10, 40), 90, 5, lambda h: 100 - 4 * h)  # refilled, now 4 %/h
    for refills in ([], [at(25, 10, 39)]):  # by the jump, or by the paper_refilled event
        fc = forecast_runout(before + after, refills)
        assert fc.reason == "ok"
        assert fc.rate_per_hour == pytest.approx(4, rel=0.02)
        assert fc.basis is not None and fc.basis.refill_at is not None
        assert fc.basis.window_start >= at(25, 10, 39)
    # A refill event before any consumption is seen leaves too little data to judge.
    fc = forecast_runout(before + after[:2], [at(25, 10, 39)])
    assert fc.reason == "insufficient_data"


def test_refill_in_the_latest_report_starts_afresh() -> None:
    samples = series(at(25, 9), 120, 5, lambda h: 30 - 10 * h)
    samples.append(PaperSample(at(25, 11, 5), level_pct=100))
    fc = forecast_runout(samples)
    assert fc.reason == "insufficient_data" and fc.remaining == 100


def test_small_rises_are_noise_not_refills() -> None:
    rng = random.Random(1)
    samples = series(at(25, 9), 180, 3, lambda h: 80 - 6 * h + rng.choice([-3, 0, 3]))
    fc = forecast_runout(samples)
    assert fc.basis is not None and fc.basis.refill_at is None
    assert fc.rate_per_hour == pytest.approx(6, rel=0.15)


def test_overnight_gap_counts_service_hours_only() -> None:
    # 10 %/h from 15:30 to 17:30 (60 → 40), reports all night at 40 %, then 08:30–09:30 (→ 30).
    evening = series(at(25, 15, 30), 120, 5, lambda h: 60 - 10 * h)
    night = [PaperSample(at(25, 18) + timedelta(hours=i), level_pct=40) for i in range(14)]
    morning = series(at(26, 8, 30), 60, 5, lambda h: 40 - 10 * h)
    for samples in (evening + morning, evening + night + morning):
        fc = forecast_runout(samples)
        assert fc.reason == "ok"
        assert fc.rate_per_hour == pytest.approx(10, rel=0.02)
        assert close(fc.runout_at, at(26, 12, 30), minutes=3)


def test_friday_afternoon_runs_out_monday() -> None:
    fc = forecast_runout(series(at(27, 14), 180, 5, lambda h: 35 - 10 * h))
    # 5 % left at 17:00 with 10 %/h: half an hour, the last of Friday.
    assert close(fc.runout_at, at(27, 17, 30))
    # 15 % left at 17:00: half an hour on Friday, the hour after on Monday morning.
    fc = forecast_runout(series(at(27, 14), 180, 5, lambda h: 45 - 10 * h))
    assert close(fc.runout_at, at(30, 9, 30))


def test_no_consumption() -> None:
    fc = forecast_runout(series(at(25, 9), 240, 5, lambda h: 55))
    assert fc.reason == "not_consuming" and fc.runout_at is None
    assert fc.rate_per_hour == 0 and fc.remaining == pytest.approx(55)
    rng = random.Random(2)
    noisy = series(at(25, 9), 240, 5, lambda h: 55 + rng.uniform(-2, 2))
    fc = forecast_runout(noisy)
    assert fc.reason == "not_consuming" and fc.runout_at is None


def test_noisy_sensor_with_wild_readings() -> None:
    rng = random.Random(5)

    def level(h: float) -> float:
        return 90 - 8 * h + rng.gauss(0, 1.5)

    samples = series(at(25, 9), 180, 2, level)
    # Three glitches: a reading of 0, one of 100 and one of 3 in the middle of the window.
    for i, v in ((20, 0.0), (45, 100.0), (60, 3.0)):
        samples[i] = PaperSample(samples[i].ts, level_pct=v)
    fc = forecast_runout(samples)
    assert fc.reason == "ok"
    assert fc.basis is not None and fc.basis.refill_at is None  # a spike is not a refill
    assert fc.rate_per_hour == pytest.approx(8, rel=0.1)
    # Truth: 66 % at 12:00, 8 %/h → 8.25 h → tomorrow 11:45.
    assert close(fc.runout_at, at(26, 11, 45), minutes=45)


def test_gaps_in_reporting_during_service() -> None:
    full = series(at(25, 8, 30), 240, 5, lambda h: 90 - 10 * h)
    holey = [s for i, s in enumerate(full) if not 10 <= i < 35]  # two hours missing
    fc = forecast_runout(holey)
    assert fc.rate_per_hour == pytest.approx(10, rel=0.02)
    assert close(fc.runout_at, at(25, 17, 30), minutes=2)  # 50 % left at 12:30


def test_recent_rate_wins_over_old_rate() -> None:
    # A busy morning then a quiet afternoon, no refill: the last 3 service hours decide.
    samples = series(at(25, 8, 30), 300, 5, lambda h: 100 - (15 * h if h < 2 else 30 + 3 * (h - 2)))
    fc = forecast_runout(samples)
    assert fc.rate_per_hour == pytest.approx(3, rel=0.05)


def test_empty_and_insufficient() -> None:
    assert forecast_runout([]).reason == "insufficient_data"
    two = series(at(25, 9), 5, 5, lambda h: 50 - 10 * h)
    assert forecast_runout(two).reason == "insufficient_data"
    short = series(at(25, 9), 10, 1, lambda h: 50 - 10 * h)  # 10 minutes: too short to judge
    fc = forecast_runout(short)
    assert fc.reason == "insufficient_data" and fc.remaining is not None
    assert forecast_runout([PaperSample(at(25, 9))]).reason == "insufficient_data"
    out = series(at(25, 9), 60, 5, lambda h: max(0.0, 10 - 20 * h))
    fc = forecast_runout(out)
    assert fc.reason == "empty" and fc.remaining == 0
    assert fc.runout_at == at(25, 9, 30)


def test_estimated_levels_lower_confidence_and_order_does_not_matter() -> None:
    samples = series(at(25, 8, 30), 180, 5, lambda h: 100 - 10 * h, estimated=True)
    fc = forecast_runout(list(reversed(samples)))
    assert fc.reason == "ok" and fc.confidence == "medium"
    assert fc.basis is not None and fc.basis.estimated


def test_impossible_readings_are_skipped() -> None:
    samples = series(at(25, 9), 120, 5, lambda h: 80 - 10 * h)
    junk = [
        PaperSample(at(25, 9, 1), level_pct=float("nan")),
        PaperSample(at(25, 9, 2), level_pct=-5),
        PaperSample(at(25, 9, 3), level_pct=250),
        PaperSample(at(25, 9, 4)),
    ]
    assert forecast_runout(samples + junk) == forecast_runout(samples)
    assert forecast_runout(junk).reason == "insufficient_data"


def test_naive_timestamps_are_utc() -> None:
    aware = series(at(25, 9), 120, 5, lambda h: 80 - 10 * h)
    naive = [PaperSample(s.ts.astimezone(UTC).replace(tzinfo=None), s.level_pct) for s in aware]
    assert forecast_runout(naive).runout_at == forecast_runout(aware).runout_at


def test_random_steady_rates_are_recovered() -> None:
    rng = random.Random(9)
    for _ in range(40):
        rate = rng.uniform(2, 25)
        start_level = rng.uniform(50, 100)
        start = at(25, 8, 30) + timedelta(minutes=rng.randint(0, 200))

        def level(h: float, r: float = rate, s: float = start_level) -> float:
            return s - r * h

        samples = series(start, 150, rng.choice([1, 3, 5]), level)
        fc = forecast_runout(samples)
        if samples[-1].level_pct and samples[-1].level_pct > 0:
            assert fc.reason == "ok"
            assert fc.rate_per_hour == pytest.approx(rate, rel=0.03)


def test_paper_sample_from_status() -> None:
    status = {"printer": {"state": "idle", "paper": {"level_pct": 18, "sheets_left": 90}}}
    s = PaperSample.from_status(at(25, 9), status)
    assert s == PaperSample(at(25, 9), 18.0, 90, None, False)
    est = {
        "printer": {
            "state": "idle",
            "paper": {"sheets_left": 90, "capacity": 500, "estimated": True},
        }
    }
    assert PaperSample.from_status(at(25, 9), est) == PaperSample(at(25, 9), 18.0, 90, 500, True)
    junk: Any
    for junk in (
        None,
        {},
        {"printer": {"state": "offline", "paper": {"level_pct": 5}}},
        {"printer": {"state": "idle", "paper": {"capacity": 500}}},
        {"printer": {"state": "idle", "paper": "x"}},
        {"printer": []},
    ):
        assert PaperSample.from_status(at(25, 9), junk) is None


# --- the alert and the refill round ---------------------------------------------------------


def ok(runout: datetime, confidence: Confidence = "high") -> Forecast:
    return Forecast("ok", "pct", 10, 5, runout, confidence)


def test_runout_soon_counts_service_time() -> None:
    assert runout_soon(ok(at(25, 16, 30)), at(25, 15)) is not None
    assert runout_soon(ok(at(25, 17)), at(25, 15)) is None  # exactly 2 h is not "under"
    hit = runout_soon(ok(at(26, 9, 30)), at(25, 17))  # one working hour away, overnight
    assert hit is not None and hit.rule == "paper_runout_soon"
    assert runout_soon(ok(at(25, 9)), at(25, 10)) is not None  # overdue
    assert runout_soon(ok(at(25, 16), "low"), at(25, 15)) is None
    # Hysteresis: an open alert holds up to 2 h 30 min, then lets go.
    assert runout_soon(ok(at(25, 17, 15)), at(25, 15)) is None
    assert runout_soon(ok(at(25, 17, 15)), at(25, 15), active=True) is not None
    assert runout_soon(ok(at(25, 17, 30)), at(25, 15), active=True) is None
    assert runout_soon(Forecast("empty", "pct", 0, runout_at=at(25, 9)), at(25, 10)) is None
    assert runout_soon(Forecast("not_consuming"), at(25, 10)) is None


def test_refill_round_groups_by_site_and_orders_by_runout() -> None:
    now = at(25, 10)
    terminals = [
        TerminalPaper("hall-2", "hall", ok(at(25, 15)), 30),
        TerminalPaper("hall-1", "hall", ok(at(25, 12)), 12),
        TerminalPaper("hall-3", "hall", ok(at(26, 11)), 60),  # tomorrow: not in today's round
        TerminalPaper("st-1", "street-a", ok(at(25, 16)), 40),
        TerminalPaper("st-2", "street-a", Forecast("empty", "pct", 0, runout_at=at(25, 9)), 0),
        TerminalPaper("cm-1", "community", Forecast("not_consuming"), 15, low=True),
        TerminalPaper("cm-2", "community", None, None, out=True),
        TerminalPaper("cm-3", "community", None, 80),
        TerminalPaper("far", "far", ok(at(25, 17, 30)), 10),
    ]
    rounds = refill_round(terminals, now)
    assert [(r.site, [s.terminal for s in r.stops]) for r in rounds] == [
        ("community", ["cm-2", "cm-1"]),
        ("street-a", ["st-2", "st-1"]),
        ("hall", ["hall-1", "hall-2"]),
        ("far", ["far"]),
    ]
    assert rounds[1].stops[0] == RoundStop("st-2", "out", at(25, 9), 0)
    assert rounds[0].stops[1].why == "low" and rounds[2].stops[0].why == "forecast"


def test_refill_round_after_hours_plans_the_next_day() -> None:
    terminals = [
        TerminalPaper("a", "s", ok(at(26, 11))),
        TerminalPaper("b", "s", ok(at(27, 11))),
    ]
    assert [s.terminal for r in refill_round(terminals, at(25, 18)) for s in r.stops] == ["a"]
    assert refill_round(terminals, at(25, 12)) == []
    assert refill_round([], at(25, 12)) == []
