"""The simulated printer and reader: the paper model, its thresholds, jams, and determinism."""

from __future__ import annotations

import pytest

from agent.drivers.base import DriverError, PaperLevel
from agent.drivers.simulated import SimulatedPrinter, SimulatedReader


class FakeClock:
    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


HOUR = 3600.0


def printer(clock: FakeClock, **kw: object) -> SimulatedPrinter:
    kw.setdefault("seed", 7)
    return SimulatedPrinter(clock=clock, **kw)  # type: ignore[arg-type]


def test_full_tray_reads_idle_with_an_exact_level() -> None:
    p = printer(FakeClock())
    s = p.read()
    assert (p.name, s.driver, s.state, s.reasons) == ("sim", "sim", "idle", ())
    assert s.paper == PaperLevel(level_pct=100, sheets_left=500, capacity=500, estimated=False)
    assert s.pages_total == 0 and s.toner_pct == 100


def test_consumption_follows_the_print_rate() -> None:
    clock = FakeClock()
    p = printer(
        clock, capacity=100_000, prints_per_hour=360.0, sheets_per_licence=2, toner_pages=10**6
    )
    clock.advance(10 * HOUR)  # 3,600 licences expected; Poisson sd 60
    s = p.read()
    printed = p.take_completed()
    assert 3600 - 4 * 60 < printed < 3600 + 4 * 60
    assert s.pages_total == 2 * printed
    assert s.paper is not None and s.paper.sheets_left == 100_000 - 2 * printed
    assert p.take_completed() == 0  # taken once


def test_reads_between_prints_change_nothing() -> None:
    clock = FakeClock()
    p = printer(clock, prints_per_hour=0.0)
    first = p.read()
    clock.advance(24 * HOUR)
    assert p.read() == first


def test_media_low_starts_under_twenty_percent() -> None:
    clock = FakeClock()
    p = printer(clock, capacity=100, start_sheets=20, prints_per_hour=0.0)
    assert p.read().reasons == ()  # exactly 20 % is not low
    assert p.print_licence()
    s = p.read()
    assert (s.state, s.reasons) == ("idle", ("media-low",))
    assert s.paper is not None and (s.paper.level_pct, s.paper.sheets_left) == (19, 19)


def test_last_sheet_reads_one_percent_not_empty() -> None:
    p = printer(FakeClock(), capacity=500, start_sheets=1, prints_per_hour=0.0)
    s = p.read()
    assert s.paper is not None and s.paper.level_pct == 1
    assert "media-empty" not in s.reasons


def test_empty_tray_stops_the_printer_until_refilled() -> None:
    clock = FakeClock()
    p = printer(clock, capacity=50, start_sheets=3, prints_per_hour=60.0)
    clock.advance(2 * HOUR)  # ~120 arrivals for 3 sheets
    s = p.read()
    assert (s.state, s.reasons) == ("stopped", ("media-empty",))
    assert s.paper is not None and (s.paper.level_pct, s.paper.sheets_left) == (0, 0)
    assert p.take_completed() == 3
    assert not p.print_licence()
    clock.advance(HOUR)
    assert p.read().pages_total == 3  # nobody printed on an empty printer
    assert p.refill() == 50
    s = p.read()
    assert (s.state, s.reasons) == ("idle", ())
    clock.advance(HOUR)
    s = p.read()
    assert s.paper is not None and s.paper.sheets_left is not None
    assert s.paper.sheets_left < 50  # printing again


def test_partial_refill() -> None:
    p = printer(FakeClock(), capacity=500, start_sheets=0, prints_per_hour=0.0)
    assert p.refill(120) == 120
    assert p.refill(1000) == 380  # never above capacity
    assert p.sheets_left == 500


def test_licence_needing_more_sheets_than_left_is_not_completed() -> None:
    p = printer(FakeClock(), capacity=100, start_sheets=1, sheets_per_licence=2, prints_per_hour=0)
    assert not p.print_licence()
    s = p.read()
    assert (s.state, s.reasons, s.pages_total) == ("stopped", ("media-empty",), 1)
    assert p.take_completed() == 0


def test_a_jam_stops_the_printer_until_cleared() -> None:
    clock = FakeClock()
    p = printer(clock, jam_rate=1.0, prints_per_hour=0.0)
    assert not p.print_licence()
    s = p.read()
    assert (s.state, s.reasons) == ("stopped", ("media-jam",))
    assert s.paper is not None and s.paper.sheets_left == 499  # the jammed sheet is lost
    assert p.jammed
    p.clear_jam()
    assert p.read().state == "idle"


def test_jam_rate_is_per_print_and_seeded() -> None:
    clock = FakeClock()
    p = printer(clock, capacity=10_000, jam_rate=0.1, prints_per_hour=0.0, seed=42)
    jams = 0
    for _ in range(2000):
        if not p.print_licence():
            jams += 1
            p.clear_jam()
    assert 2000 * 0.1 - 4 * 13.4 < jams < 2000 * 0.1 + 4 * 13.4  # binomial sd ≈ 13.4
    again = printer(FakeClock(), capacity=10_000, jam_rate=0.1, prints_per_hour=0.0, seed=42)
    same = 0
    for _ in range(2000):
        if not again.print_licence():
            same += 1
            again.clear_jam()
    assert same == jams


def test_random_jams_stop_the_arrivals_while_jammed() -> None:
    clock = FakeClock()
    p = printer(clock, jam_rate=0.5, prints_per_hour=600.0)
    clock.advance(HOUR)
    s = p.read()
    assert s.reasons == ("media-jam",)
    before = s.pages_total
    clock.advance(HOUR)
    assert p.read().pages_total == before


def test_same_seed_and_clock_give_the_same_history() -> None:
    def history(seed: int) -> list[object]:
        clock = FakeClock()
        p = printer(clock, seed=seed, capacity=200, jam_rate=0.05, prints_per_hour=120.0)
        out: list[object] = []
        for step in range(300):
            clock.advance(37.0)
            s = p.read()
            out.append((s, p.take_completed()))
            if step % 25 == 0:
                p.clear_jam()
                p.refill()
        return out

    assert history(1) == history(1)
    assert history(1) != history(2)


def test_toner_runs_low_then_empty() -> None:
    p = printer(FakeClock(), toner_pages=20, prints_per_hour=0.0)
    for _ in range(18):
        p.print_licence()
    assert p.read().reasons == ()  # exactly 10 % is not low
    p.print_licence()
    s = p.read()
    assert (s.reasons, s.toner_pct, s.state) == (("toner-low",), 5, "idle")
    p.print_licence()
    s = p.read()
    assert (s.state, s.reasons, s.toner_pct) == ("stopped", ("toner-empty",), 0)
    p.replace_toner()
    assert p.read().state == "idle"


def test_closed_printer_raises_the_driver_error() -> None:
    p = printer(FakeClock())
    p.close()
    with pytest.raises(DriverError):
        p.read()


@pytest.mark.parametrize(
    "kw",
    [
        {"capacity": 0},
        {"sheets_per_licence": 0},
        {"prints_per_hour": -1.0},
        {"jam_rate": 1.5},
        {"start_sheets": 501},
    ],
)
def test_bad_settings_are_refused(kw: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        printer(FakeClock(), **kw)


def test_reader_card_comes_and_goes() -> None:
    clock = FakeClock()
    r = SimulatedReader(card_rate=60.0, card_hold_s=20.0, seed=3, clock=clock)
    assert r.name == "sim"
    seen = []
    for _ in range(3600):
        clock.advance(1.0)
        s = r.read()
        assert s.state == "ok"
        seen.append(s.card_present)
    share = sum(1 for x in seen if x) / len(seen)
    # One card a minute (plus the 20 s hold between them): present about 20 of every 80 s.
    assert 0.15 < share < 0.35
    clock2 = FakeClock()
    r2 = SimulatedReader(card_rate=60.0, card_hold_s=20.0, seed=3, clock=clock2)
    again = []
    for _ in range(3600):
        clock2.advance(1.0)
        again.append(r2.read().card_present)
    assert again == seen


def test_reader_without_cards_and_with_a_fault() -> None:
    clock = FakeClock()
    r = SimulatedReader(clock=clock)
    clock.advance(HOUR)
    assert r.read().card_present is False
    r.fault = True
    s = r.read()
    assert (s.state, s.card_present) == ("error", None)
    r.close()
    with pytest.raises(DriverError):
        r.read()
