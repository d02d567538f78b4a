"""The fleet list, one terminal, and its status history."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, status
from tortoise.expressions import Q, Subquery

from fleet.server.api.deps import Ctx, FleetReader
from fleet.server.api.errors import invalid
from fleet.server.api.params import (
    Instant,
    Limit,
    Offset,
    RuleFilter,
    SiteFilter,
    TerminalId,
    TerminalStateFilter,
)
from fleet.server.api.schemas import History, Page, SamplePublic, TerminalDetail, TerminalSummary
from fleet.server.db.models import Alert, StatusSample, Terminal
from fleet.server.desired.drift import drift_state
from fleet.server.terminal_state import STATES

router = APIRouter(prefix="/terminals", tags=["terminals"])
#: Derived state -> the printer_state column's value.
_PRINTER_STATES = {
    "printer_offline": "offline",
    "stopped": "stopped",
    "printing": "printing",
    "idle": "idle",
}
#: One history request returns at most this many samples (30 days of 30 s reports is 86,400).
HISTORY_MAX = 10_000


def _state_q(state: TerminalStateFilter) -> Q:
    """The filter for a derived state (see fleet.server.terminal_state)."""
    if state == "online":
        return Q(online=True)
    if state == "offline":
        return Q(online=False)
    if state == "unknown":
        known = list(_PRINTER_STATES.values())
        return Q(online=True) & (Q(printer_state__isnull=True) | ~Q(printer_state__in=known))
    return Q(online=True, printer_state=_PRINTER_STATES[state])


@router.get("", response_model=Page[TerminalSummary])
async def list_terminals(
    _: FleetReader,
    limit: Limit = 100,
    offset: Offset = 0,
    site: SiteFilter = None,
    state: Annotated[
        TerminalStateFilter | None, Query(description=f"online, or one of {', '.join(STATES)}")
    ] = None,
    alert: RuleFilter = None,
) -> Page[TerminalSummary]:
    """The fleet, ordered by terminal id, optionally filtered by site, state and open alert
    (`alert`: only terminals with an open alert of this rule)."""
    query = Terminal.all()
    if site is not None:
        query = query.filter(site_id=site)
    if state is not None:
        query = query.filter(_state_q(state))
    if alert is not None:
        has_alert = Alert.filter(rule=alert, active_key=1).values("terminal_id")
        query = query.filter(id__in=Subquery(has_alert))
    total = await query.count()
    rows = await query.order_by("id").offset(offset).limit(limit)
    open_rules: dict[str, list[str]] = {t.id: [] for t in rows}
    if rows:
        pairs = await Alert.filter(terminal_id__in=list(open_rules), active_key=1).values_list(
            "terminal_id", "rule"
        )
        for tid, rule in sorted(pairs):
            open_rules[tid].append(rule)
    items = [TerminalSummary.of(t, open_rules[t.id]) for t in rows]
    return Page[TerminalSummary](items=items, total=total, limit=limit, offset=offset)


@router.get("/{terminal_id}", response_model=TerminalDetail)
async def get_terminal(terminal_id: TerminalId, ctx: Ctx, _: FleetReader) -> TerminalDetail:
    """One terminal: latest status, presence, versions, configuration drift, open alerts."""
    t = await _terminal_or_404(terminal_id)
    alerts = await Alert.filter(terminal_id=t.id, active_key=1).order_by("rule")
    return TerminalDetail.of_detail(t, alerts, await drift_state(t.id, ctx.clock()))


@router.get("/{terminal_id}/history", response_model=History)
async def get_history(
    terminal_id: TerminalId,
    ctx: Ctx,
    _: FleetReader,
    from_: Annotated[
        Instant | None, Query(alias="from", description="default: `to` - 24 h")
    ] = None,
    to: Annotated[Instant | None, Query(description="default: now")] = None,
    limit: Annotated[int, Query(ge=1, le=HISTORY_MAX)] = HISTORY_MAX,
) -> History:
    """Status samples of one terminal in [from, to), oldest first."""
    t = await _terminal_or_404(terminal_id)
    end = to if to is not None else ctx.clock()
    start = from_ if from_ is not None else end - timedelta(hours=24)
    if start >= end:
        raise invalid(("query", "from"), "`from` must be before `to`", start.isoformat())
    query = StatusSample.filter(terminal_id=t.id, ts__gte=start)
    # Without `to`, nothing is cut at the top: a report stamped "now" (or by a clock running a
    # little ahead) is the one an operator is looking for.
    if to is not None:
        query = query.filter(ts__lt=end)
    rows = await query.order_by("ts", "seq").limit(limit + 1)
    items = [SamplePublic.of(s) for s in rows[:limit]]
    return History.model_validate(
        {"terminal": t.id, "from": start, "to": end, "items": items, "truncated": len(rows) > limit}
    )


async def _terminal_or_404(terminal_id: str) -> Terminal:
    t = await Terminal.get_or_none(id=terminal_id)
    if t is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "no such terminal")
    return t
