"""The paper run-out forecast job: every `forecast_interval_s`, the `paper_runout_soon` alert.

Each run loads the fleet's recent paper history (`load_papers`, shared with the refill round:
a few queries for the whole fleet), forecasts every terminal in a worker thread (a few ms a
terminal: CPU work kept off the event loop), and feeds the hits to the ingest's alert engine
with the scope limited to `paper_runout_soon`, so the status and presence rules are left alone.
The transitions are persisted and published by the pipeline, as its own are. An offline
terminal's forecast is stale: its rule is *unknown* (neither opened nor cleared).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import defaultdict
from collections.abc import Callable
from datetime import UTC, datetime

from fleet.server.alerts import AlertEngine, RuleHit, Transition
from fleet.server.db.models import Alert, StatusSample, Terminal, TerminalEvent
from fleet.server.forecast import (
    Forecast,
    ForecastConfig,
    PaperSample,
    ServiceHours,
    forecast_runout,
    runout_soon,
)
from fleet.server.ingest.pipeline import Pipeline
from fleet.server.settings import Settings

log = logging.getLogger(__name__)

RULE = "paper_runout_soon"
_SCOPE = frozenset({RULE})

#: Per terminal: id, site, latest paper %, its open paper alerts (paper_out/paper_low), its paper
#: samples over the look-back, and its refill events.
Papers = list[tuple[str, str, float | None, set[str], list[PaperSample], list[datetime]]]


def _utc_now() -> datetime:
    return datetime.now(UTC)


def service_hours(settings: Settings) -> ServiceHours:
    s = settings
    return ServiceHours(s.service_hours_start, s.service_hours_end, s.service_timezone)


async def load_papers(now: datetime, hours: ServiceHours, config: ForecastConfig) -> Papers:
    """Each terminal's paper history over the forecast look-back, refills and paper alerts:
    four queries for the whole fleet rather than four per terminal."""
    start = hours.back(now, config.lookback_s)
    samples: dict[str, list[PaperSample]] = defaultdict(list)
    rows = await StatusSample.filter(
        ts__gte=start, ts__lte=now, paper_pct__isnull=False
    ).values_list("terminal_id", "ts", "paper_pct", "printer_state")
    for tid, ts, pct, printer_state in rows:
        if printer_state != "offline":  # an unreachable printer's paper reading is stale
            samples[tid].append(PaperSample(ts, level_pct=float(pct)))
    refills: dict[str, list[datetime]] = defaultdict(list)
    events = await TerminalEvent.filter(
        kind="paper_refilled", ts__gte=start, ts__lte=now
    ).values_list("terminal_id", "ts")
    for tid, ts in events:
        refills[tid].append(ts)
    alerts: dict[str, set[str]] = defaultdict(set)
    pairs = await Alert.filter(active_key=1, rule__in=["paper_out", "paper_low"]).values_list(
        "terminal_id", "rule"
    )
    for tid, rule in pairs:
        alerts[tid].add(rule)
    terminals = await Terminal.all().values_list("id", "site_id", "paper_pct")
    return [
        (tid, site, pct, alerts[tid], samples[tid], refills[tid]) for tid, site, pct in terminals
    ]


def forecast_all(
    papers: Papers, hours: ServiceHours, config: ForecastConfig
) -> dict[str, Forecast | None]:
    """Every terminal's forecast (None without paper history): run it in a worker thread."""
    return {
        tid: forecast_runout(samples, refills, hours, config) if samples else None
        for tid, _, _, _, samples, refills in papers
    }


async def run_forecast(
    pipeline: Pipeline, now: datetime, config: ForecastConfig | None = None
) -> None:
    """One run: forecast the fleet and update its `paper_runout_soon` alerts as of `now`."""
    hours, cfg = service_hours(pipeline.settings), config or ForecastConfig()
    papers = await load_papers(now, hours, cfg)
    forecasts = await asyncio.to_thread(forecast_all, papers, hours, cfg)
    online = pipeline.presence.is_online

    def feed(engine: AlertEngine) -> list[Transition]:
        # Decided under the pipeline's lock: the hysteresis needs the engine's state of now.
        out: list[Transition] = []
        for tid, fc in forecasts.items():
            if online(tid) is False:
                out += engine.update(tid, now, [], unknown=_SCOPE, scope=_SCOPE)
                continue
            active = RULE in engine.active_rules(tid)
            hit = runout_soon(fc, now, hours, active=active) if fc is not None else None
            hits: list[RuleHit] = [hit] if hit is not None else []
            out += engine.update(tid, now, hits, scope=_SCOPE)
        return out

    await pipeline.feed_alerts(feed)


async def run_forecast_job(
    pipeline: Pipeline,
    stop: asyncio.Event,
    interval_s: float | None = None,
    clock: Callable[[], datetime] = _utc_now,
) -> None:
    """Run the forecast now and then every `interval_s` (default: the setting) until `stop`."""
    interval = pipeline.settings.forecast_interval_s if interval_s is None else interval_s
    while not stop.is_set():
        try:
            await run_forecast(pipeline, clock())
        except Exception:  # the next run tries again
            log.exception("paper forecast job failed")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), interval)
