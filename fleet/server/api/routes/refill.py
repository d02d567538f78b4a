"""Today's refill round: which terminals to refill before close, by site, most urgent first."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from datetime import datetime

from fastapi import APIRouter

from fleet.server.api.deps import Ctx, FleetReader
from fleet.server.api.schemas import RefillRound, RefillSite, RefillStop
from fleet.server.db.models import Alert, Site, StatusSample, Terminal, TerminalEvent
from fleet.server.forecast import (
    ForecastConfig,
    PaperSample,
    ServiceHours,
    SiteRound,
    TerminalPaper,
    forecast_runout,
    refill_round,
)

router = APIRouter(prefix="/refill-round", tags=["refill"])


@router.get("", response_model=RefillRound)
async def get_refill_round(ctx: Ctx, _: FleetReader) -> RefillRound:
    """Terminals to refill before today's close, grouped by site, by forecast paper run-out."""
    now, hours, config = ctx.clock(), ctx.service_hours, ForecastConfig()
    papers = await _load(now, hours, config)
    # Forecasting a whole fleet is CPU work: keep it off the loop that serves the other requests.
    rounds = await asyncio.to_thread(_plan, papers, now, hours, config)
    names = dict(await Site.all().values_list("id", "name"))
    sites = [
        RefillSite(
            site=r.site,
            name=str(names.get(r.site, r.site)),
            stops=[
                RefillStop(
                    terminal=s.terminal, why=s.why, runout_at=s.runout_at, level_pct=s.level_pct
                )
                for s in r.stops
            ],
        )
        for r in rounds
    ]
    return RefillRound(generated_at=now, round_end=hours.round_end(now), sites=sites)


_Papers = list[tuple[str, str, float | None, set[str], list[PaperSample], list[datetime]]]


async def _load(now: datetime, hours: ServiceHours, config: ForecastConfig) -> _Papers:
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


def _plan(
    papers: _Papers, now: datetime, hours: ServiceHours, config: ForecastConfig
) -> list[SiteRound]:
    return refill_round(
        (
            TerminalPaper(
                terminal=tid,
                site=site,
                forecast=forecast_runout(samples, refills, hours, config) if samples else None,
                level_pct=None if pct is None else float(pct),
                out="paper_out" in rules,
                low="paper_low" in rules,
            )
            for tid, site, pct, rules, samples, refills in papers
        ),
        now,
        hours,
    )
