"""Today's refill round: which terminals to refill before close, by site, most urgent first."""

from __future__ import annotations

import asyncio
from datetime import datetime

from fastapi import APIRouter

from fleet.server.api.deps import Ctx, FleetReader
from fleet.server.api.schemas import RefillRound, RefillSite, RefillStop
from fleet.server.db.models import Site
from fleet.server.forecast import (
    ForecastConfig,
    ServiceHours,
    SiteRound,
    TerminalPaper,
    forecast_runout,
    refill_round,
)
from fleet.server.forecast_job import Papers, load_papers

router = APIRouter(prefix="/refill-round", tags=["refill"])


@router.get("", response_model=RefillRound)
async def get_refill_round(ctx: Ctx, _: FleetReader) -> RefillRound:
    """Terminals to refill before today's close, grouped by site, by forecast paper run-out."""
    now, hours, config = ctx.clock(), ctx.service_hours, ForecastConfig()
    papers = await load_papers(now, hours, config)
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


def _plan(
    papers: Papers, now: datetime, hours: ServiceHours, config: ForecastConfig
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
