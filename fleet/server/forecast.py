"""Paper run-out forecast and the day's refill round.

Paper is only used while the hall is open, so time is measured in *service seconds*: the clock runs
08:30–17:30 (Asia/Shanghai) on service days and stands still otherwise. A terminal that used 30 % of
its tray between 15:30 and 17:30 is forecast to run out at 10:30 the next morning, not at 21:30.

The rate is the Theil–Sen slope (median of pairwise slopes) of the level against service time, over
the recent window since the last refill: a sensor that jitters by a few points, or one wild reading,
moves a median by little where a least-squares fit would swing. A refill (an event, or the level
jumping up) starts a new window: consumption before it says nothing about the paper in the tray now.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from itertools import combinations, pairwise
from typing import Any, Literal
from zoneinfo import ZoneInfo

from fleet.server.alerts.rules import RuleHit, paper_level

Unit = Literal["pct", "sheets"]
Reason = Literal["ok", "empty", "not_consuming", "insufficient_data"]
Confidence = Literal["high", "medium", "low"]

_MAX_DAYS = 3660  # no run-out is forecast further than ten years of calendar


@dataclass(frozen=True)
class ServiceHours:
    open: time = time(8, 30)
    close: time = time(17, 30)
    tz: str = "Asia/Shanghai"
    #: Service weekdays, Monday = 0.
    days: frozenset[int] = frozenset(range(5))
    #: Public holidays (closed) and make-up working days (open), as local dates.
    closed_dates: frozenset[date] = frozenset()
    open_dates: frozenset[date] = frozenset()

    def __post_init__(self) -> None:
        if self.close <= self.open:
            raise ValueError("service hours must close after they open")
        ZoneInfo(self.tz)  # fail at configuration time, not on the first forecast

    def is_service_day(self, d: date) -> bool:
        if d in self.open_dates:
            return True
        return d.weekday() in self.days and d not in self.closed_dates

    def window(self, d: date) -> tuple[datetime, datetime] | None:
        """The service window of local date `d` as aware datetimes, or None when closed."""
        if not self.is_service_day(d):
            return None
        zone = ZoneInfo(self.tz)
        return datetime.combine(d, self.open, zone), datetime.combine(d, self.close, zone)

    def _windows_from(self, start: datetime) -> Iterator[tuple[datetime, datetime]]:
        d = _aware(start).astimezone(ZoneInfo(self.tz)).date()
        for i in range(_MAX_DAYS):
            w = self.window(d + timedelta(days=i))
            if w is not None:
                yield w

    def seconds_between(self, a: datetime, b: datetime) -> float:
        """Service seconds from a to b (negative when b is before a)."""
        a, b = _aware(a), _aware(b)
        if b < a:
            return -self.seconds_between(b, a)
        total = 0.0
        for lo, hi in self._windows_from(a):
            if lo >= b:
                break
            total += max(0.0, (min(hi, b) - max(lo, a)).total_seconds())
        return total

    def add(self, start: datetime, seconds: float) -> datetime | None:
        """The moment `seconds` of service time after `start`; None beyond the calendar horizon."""
        start = _aware(start)
        left = max(0.0, seconds)
        for lo, hi in self._windows_from(start):
            lo = max(lo, start)
            if hi <= lo:
                continue
            span = (hi - lo).total_seconds()
            if left <= span:
                return lo + timedelta(seconds=left)
            left -= span
        return None

    def back(self, end: datetime, seconds: float) -> datetime:
        """The latest moment with `seconds` of service time before `end`: where a history query
        must start to cover a look-back (it may reach over a weekend or a holiday)."""
        end = _aware(end)
        local = end.astimezone(ZoneInfo(self.tz)).date()
        left = max(0.0, seconds)
        for i in range(_MAX_DAYS):
            w = self.window(local - timedelta(days=i))
            if w is None or w[0] >= end:
                continue
            lo, hi = w[0], min(w[1], end)
            span = (hi - lo).total_seconds()
            if left <= span:
                return hi - timedelta(seconds=left)
            left -= span
        raise ValueError("no service day in the calendar")

    def round_end(self, now: datetime) -> datetime:
        """Close of today's service, or of the next service day once today's is over."""
        now = _aware(now)
        for _lo, hi in self._windows_from(now):
            if hi > now:
                return hi
        raise ValueError("no service day in the calendar")


@dataclass(frozen=True)
class PaperSample:
    """One paper reading from a status report (history sample)."""

    ts: datetime
    level_pct: float | None = None
    sheets_left: int | None = None
    capacity: int | None = None
    estimated: bool = False

    @classmethod
    def from_status(cls, ts: datetime, status: Mapping[str, Any] | None) -> PaperSample | None:
        """The paper reading of a DESIGN.md status report; None when it has none."""
        printer = status.get("printer") if isinstance(status, Mapping) else None
        if not isinstance(printer, Mapping) or printer.get("state") == "offline":
            return None  # an unreachable printer's paper reading is stale
        paper = printer.get("paper")
        if not isinstance(paper, Mapping):
            return None
        level, estimated = paper_level(paper)
        sheets, capacity = paper.get("sheets_left"), paper.get("capacity")
        sheets = sheets if type(sheets) is int and sheets >= 0 else None
        capacity = capacity if type(capacity) is int and capacity > 0 else None
        if level is None and sheets is None:
            return None
        return cls(ts, level, sheets, capacity, estimated)


@dataclass(frozen=True)
class ForecastConfig:
    #: How much recent service time the rate is measured over.
    lookback_s: float = 3 * 3600
    min_points: int = 4
    min_span_s: float = 20 * 60
    #: A rise of at least this much (percent of the tray) is a refill, a smaller one sensor noise.
    refill_jump_pct: float = 10.0
    #: Less consumed than this over the window (pct points, or sheets) is "not consuming".
    min_drop_pct: float = 1.0
    min_drop_sheets: float = 2.0
    #: Histories are reduced to this many points (medians) before the O(n²) slope estimate.
    max_points: int = 48


@dataclass(frozen=True)
class Basis:
    """What a forecast rests on, for people to judge it."""

    points: int
    span_s: float  # service seconds covered
    window_start: datetime
    consumed: float  # in the forecast's unit
    estimated: bool  # levels were estimated from page counts, not measured
    refill_at: datetime | None


@dataclass(frozen=True)
class Forecast:
    reason: Reason
    unit: Unit | None = None
    remaining: float | None = None
    #: Consumption per service hour, in `unit`.
    rate_per_hour: float | None = None
    runout_at: datetime | None = None
    confidence: Confidence | None = None
    basis: Basis | None = field(default=None, compare=False)


def forecast_runout(
    samples: Iterable[PaperSample],
    refills: Iterable[datetime] = (),
    hours: ServiceHours | None = None,
    config: ForecastConfig | None = None,
) -> Forecast:
    """Expected paper run-out from a terminal's history (any order, gaps allowed)."""
    hours = hours or ServiceHours()
    cfg = config or ForecastConfig()
    ordered = sorted(samples, key=lambda s: _aware(s.ts))
    if not ordered:
        return Forecast("insufficient_data")
    unit: Unit = "sheets" if ordered[-1].sheets_left is not None else "pct"
    series = [(_aware(s.ts), v, s) for s in ordered if (v := _value(s, unit)) is not None]
    if not series:
        return Forecast("insufficient_data")
    start, refill_at = _window_start(series, refills, unit, cfg)
    series = series[start:]
    last_ts, last_v, last_s = series[-1]
    if last_v <= 0:
        zero_from = len(series) - 1
        while zero_from > 0 and series[zero_from - 1][1] <= 0:
            zero_from -= 1
        return Forecast("empty", unit, 0.0, runout_at=series[zero_from][0])
    xs = _service_axis([ts for ts, _, _ in series], hours)
    keep = [i for i, x in enumerate(xs) if x >= xs[-1] - cfg.lookback_s]
    pts = _reduce([(xs[i], series[i][1]) for i in keep], cfg.max_points)
    span = xs[keep[-1]] - xs[keep[0]]
    estimated = any(series[i][2].estimated for i in keep)
    if len(keep) < cfg.min_points or span < cfg.min_span_s:
        return Forecast("insufficient_data", unit, last_v)
    slope = _theil_sen(pts)
    intercept = statistics.median(y - slope * x for x, y in pts)
    remaining = max(0.0, intercept + slope * pts[-1][0])
    consumed = -slope * span
    basis = Basis(len(keep), span, series[keep[0]][0], consumed, estimated, refill_at)
    min_drop = cfg.min_drop_sheets if unit == "sheets" else cfg.min_drop_pct
    if consumed < min_drop:
        return Forecast("not_consuming", unit, remaining, max(0.0, -slope * 3600), basis=basis)
    rate_s = -slope
    runout = hours.add(last_ts, remaining / rate_s)
    capacity = last_s.capacity if unit == "sheets" else 100
    conf = _confidence(len(keep), span, consumed, capacity, estimated)
    return Forecast("ok", unit, remaining, rate_s * 3600, runout, conf, basis)


def runout_soon(
    fc: Forecast,
    now: datetime,
    hours: ServiceHours | None = None,
    within_s: float = 2 * 3600,
    active: bool = False,
) -> RuleHit | None:
    """The `paper_runout_soon` hit: run-out within `within_s` of *service* time from now.

    Service time, because a forecast of 09:30 tomorrow made at 17:00 means one working hour
    of paper: the round must be planned tonight. A low-confidence forecast raises nothing: an
    alert must be trusted, and "empty" and "low" have their own rules. While the alert is
    `active` it holds until the forecast moves a quarter beyond the limit, so a forecast that
    wobbles around 2 h does not open and close it; a refill ends the forecast and clears it.
    """
    if fc.reason != "ok" or fc.runout_at is None or fc.confidence == "low":
        return None
    left = (hours or ServiceHours()).seconds_between(now, fc.runout_at)
    if left >= within_s * (1.25 if active else 1.0):
        return None
    return RuleHit("paper_runout_soon", f"runout_at={fc.runout_at.isoformat()}")


@dataclass(frozen=True)
class TerminalPaper:
    """What the refill round needs to know about one terminal."""

    terminal: str
    site: str
    forecast: Forecast | None = None
    level_pct: float | None = None
    out: bool = False  # paper_out alert active
    low: bool = False  # paper_low alert active


@dataclass(frozen=True)
class RoundStop:
    terminal: str
    why: Literal["out", "low", "forecast"]
    runout_at: datetime | None
    level_pct: float | None


@dataclass(frozen=True)
class SiteRound:
    site: str
    stops: tuple[RoundStop, ...]


def refill_round(
    terminals: Iterable[TerminalPaper],
    now: datetime,
    hours: ServiceHours | None = None,
) -> list[SiteRound]:
    """Terminals to refill before today's close (or the next service day's, after hours), grouped
    by site; stops and sites ordered by urgency: out of paper first, then by expected run-out."""
    hours = hours or ServiceHours()
    now = _aware(now)
    horizon = hours.round_end(now)
    by_site: dict[str, list[tuple[datetime, RoundStop]]] = {}
    for t in terminals:
        fc = t.forecast
        runout = fc.runout_at if fc is not None and fc.reason in ("ok", "empty") else None
        if t.out or (fc is not None and fc.reason == "empty"):
            why: Literal["out", "low", "forecast"] = "out"
            key = now  # already out: the most urgent, whatever was forecast
        elif t.low:
            why, key = "low", min(runout, horizon) if runout else horizon
        elif runout is not None and runout <= horizon:
            why, key = "forecast", runout
        else:
            continue
        stop = RoundStop(t.terminal, why, runout, t.level_pct)
        by_site.setdefault(t.site, []).append((key, stop))
    rounds = []
    for site, stops in by_site.items():
        stops.sort(key=lambda ks: (ks[0], ks[1].why != "out", ks[1].terminal))
        rounds.append((stops[0][0], site, SiteRound(site, tuple(s for _, s in stops))))
    rounds.sort(key=lambda r: (r[0], r[1]))
    return [r for _, _, r in rounds]


def _value(s: PaperSample, unit: Unit) -> float | None:
    """The sample's level in `unit`; None when absent or impossible (NaN, negative, over 100 %)."""
    if unit == "sheets":
        v = None if s.sheets_left is None else float(s.sheets_left)
        return v if v is not None and 0.0 <= v < math.inf else None
    if s.level_pct is not None:
        v = float(s.level_pct)
    elif s.sheets_left is not None and s.capacity:
        v = 100.0 * s.sheets_left / s.capacity
    else:
        return None
    return v if 0.0 <= v <= 100.0 else None  # NaN fails both comparisons


def _window_start(
    series: Sequence[tuple[datetime, float, PaperSample]],
    refills: Iterable[datetime],
    unit: Unit,
    cfg: ForecastConfig,
) -> tuple[int, datetime | None]:
    """Index of the first sample after the last refill, and that refill's time."""
    start, refill_at = 0, None
    last_ts = series[-1][0]
    events = [r for r in (_aware(r) for r in refills) if r <= last_ts]
    if events:
        refill_at = max(events)
        start = next(i for i, (ts, _, _) in enumerate(series) if ts >= refill_at)
    values = [v for _, v, _ in series]
    for i in range(len(values) - 1, start, -1):
        jump = _jump(series[i][2], unit, cfg)
        # A step up that the neighbours confirm: one wild reading (a spike, or the recovery
        # from a dip) moves the median of three on either side by little, a refill by a lot.
        if (
            values[i] - values[i - 1] >= jump
            and statistics.median(values[i : i + 3]) - statistics.median(values[max(0, i - 3) : i])
            >= jump
        ):
            return i, series[i][0]
    return start, refill_at


def _jump(s: PaperSample, unit: Unit, cfg: ForecastConfig) -> float:
    if unit == "pct":
        return cfg.refill_jump_pct
    # Without a capacity, assume a small 100-sheet tray: a smaller jump would not be a refill.
    return cfg.refill_jump_pct / 100.0 * (s.capacity or 100)


def _service_axis(stamps: Sequence[datetime], hours: ServiceHours) -> list[float]:
    xs = [0.0]
    for a, b in pairwise(stamps):
        xs.append(xs[-1] + hours.seconds_between(a, b))
    return xs


def _reduce(pts: list[tuple[float, float]], n: int) -> list[tuple[float, float]]:
    """At most n points: medians over equal slices of service time (order kept)."""
    if len(pts) <= n:
        return pts
    lo, hi = pts[0][0], pts[-1][0]
    width = (hi - lo) / n or 1.0
    buckets: dict[int, list[tuple[float, float]]] = {}
    for x, y in pts:
        buckets.setdefault(min(n - 1, int((x - lo) / width)), []).append((x, y))
    return [
        (statistics.median(x for x, _ in b), statistics.median(y for _, y in b))
        for _, b in sorted(buckets.items())
    ]


def _theil_sen(pts: Sequence[tuple[float, float]]) -> float:
    # Pairs closer than a minute of service time (both overnight, or the same report twice) give
    # no slope worth a vote.
    slopes = [(y2 - y1) / (x2 - x1) for (x1, y1), (x2, y2) in combinations(pts, 2) if x2 - x1 >= 60]
    return statistics.median(slopes) if slopes else 0.0


def _confidence(
    points: int, span: float, consumed: float, capacity: float | None, estimated: bool
) -> Confidence:
    share = consumed / capacity if capacity else 0.0
    if points < 8 or span < 3600:
        return "low"
    if points >= 12 and span >= 2 * 3600 and share >= 0.05 and not estimated:
        return "high"
    return "medium"


def _aware(dt: datetime) -> datetime:
    # DESIGN.md timestamps are UTC ("Z"); a naive one from a DB driver is taken as UTC too.
    return dt if dt.tzinfo is not None else dt.replace(tzinfo=UTC)
