"""Active and recent alerts, and acknowledging one."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated, Literal

from fastapi import APIRouter, HTTPException, Query, status
from tortoise.expressions import Q

from fleet.server.api.deps import Ctx, FleetReader, FleetWriter
from fleet.server.api.params import (
    AlertId,
    Limit,
    Offset,
    RuleFilter,
    SeverityFilter,
    SiteFilter,
    TerminalFilter,
)
from fleet.server.api.schemas import AlertPublic, ErrorBody, Page
from fleet.server.db.models import Alert

router = APIRouter(prefix="/alerts", tags=["alerts"])


@router.get("", response_model=Page[AlertPublic])
async def list_alerts(
    ctx: Ctx,
    _: FleetReader,
    limit: Limit = 100,
    offset: Offset = 0,
    state: Annotated[Literal["active", "cleared", "all"], Query()] = "all",
    recent_hours: Annotated[
        float, Query(gt=0, le=24 * 90, description="how far back cleared alerts are listed")
    ] = 24,
    rule: RuleFilter = None,
    severity: SeverityFilter = None,
    terminal: TerminalFilter = None,
    site: SiteFilter = None,
) -> Page[AlertPublic]:
    """Open alerts and those cleared in the last `recent_hours`, newest first."""
    recent = Q(cleared_at__gte=ctx.clock() - timedelta(hours=recent_hours))
    match state:
        case "active":
            query = Alert.filter(active_key=1)
        case "cleared":
            query = Alert.filter(Q(active_key__isnull=True) & recent)
        case _:
            query = Alert.filter(Q(active_key=1) | recent)
    if rule is not None:
        query = query.filter(rule=rule)
    if severity is not None:
        query = query.filter(severity=severity)
    if terminal is not None:
        query = query.filter(terminal_id=terminal)
    if site is not None:
        query = query.filter(terminal__site_id=site)
    total = await query.count()
    rows = await query.order_by("-opened_at", "-id").offset(offset).limit(limit)
    items = [AlertPublic.of(a) for a in rows]
    return Page[AlertPublic](items=items, total=total, limit=limit, offset=offset)


@router.post(
    "/{alert_id}/ack",
    response_model=AlertPublic,
    responses={409: {"model": ErrorBody, "description": "the alert has cleared"}},
)
async def ack_alert(alert_id: AlertId, ctx: Ctx, who: FleetWriter) -> AlertPublic:
    """Acknowledge an open alert; acknowledging it again changes nothing and is not an error."""
    now = ctx.clock()
    # One conditional UPDATE: of two operators acknowledging at once, the first is recorded.
    changed = await Alert.filter(id=alert_id, active_key=1, acked_at__isnull=True).update(
        acked_at=now, acked_by=who.name
    )
    alert = await Alert.get_or_none(id=alert_id)
    if alert is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "no such alert")
    if not changed and alert.acked_at is None:
        raise HTTPException(status.HTTP_409_CONFLICT, "the alert has cleared; nothing to ack")
    if changed:
        if ctx.alert_engine is not None:
            ctx.alert_engine.acknowledge(alert.terminal_id, alert.rule)
        body = AlertPublic.of(alert)
        data = body.model_dump(mode="json")
        ctx.bus.publish("alert", {"transition": "acked", "at": data["acked_at"], **data})
        return body
    return AlertPublic.of(alert)
