"""Staged rollouts of agent versions: create (with its plan), list, read, pause, resume, abort.

Admins create and control rollouts (an agent version reaches kiosks); operators and admins read.
A rollout's version must be published in the server's TUF repository (`fleet updates publish`).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Body, HTTPException, status

from agent.update.tuf_client import bundle_target_name
from fleet.server.api.deps import ConfigWriter, Ctx, FleetReader
from fleet.server.api.errors import invalid, message_loc
from fleet.server.api.params import Limit, Offset, RolloutId, RolloutStateFilter
from fleet.server.api.rollout_schemas import (
    Control,
    RolloutCreate,
    RolloutPublic,
    RolloutSummary,
    detail,
    summary,
)
from fleet.server.api.routes.updates import UpdatesDir
from fleet.server.api.schemas import UNAVAILABLE, ErrorBody, Page
from fleet.server.db.models import Rollout, RolloutTerminal
from fleet.server.rollouts.engine import RolloutConflict, RolloutError
from fleet.server.updates.repository import UpdateRepository

router = APIRouter(prefix="/rollouts", tags=["rollouts"])

_ERRORS: dict[int | str, dict[str, Any]] = {
    409: {
        "model": ErrorBody,
        "description": "conflicts with the rollout's state or another active rollout",
    },
}


def _published(base: Path, version: str) -> bool | None:
    """Is `version` a published agent release? None when there is no repository."""
    repo = UpdateRepository(base)
    if not repo.initialised:
        return None
    return bundle_target_name(version) in repo.targets().targets


async def _detail(rollout_id: int) -> RolloutPublic:
    r = await Rollout.get_or_none(id=rollout_id)
    if r is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no rollout {rollout_id}")
    return detail(r, list(await RolloutTerminal.filter(rollout_id=r.id)))


def _refused(e: Exception) -> Exception:
    if isinstance(e, LookupError):
        return HTTPException(status.HTTP_404_NOT_FOUND, str(e).strip("'\""))
    if isinstance(e, RolloutConflict):
        return HTTPException(status.HTTP_409_CONFLICT, str(e))
    return invalid(("body", *message_loc(str(e))), str(e))


@router.post("", status_code=status.HTTP_201_CREATED, responses=_ERRORS | UNAVAILABLE)
async def create_rollout(
    body: RolloutCreate, ctx: Ctx, who: ConfigWriter, base: UpdatesDir
) -> RolloutPublic:
    """Plan a rollout and start its first (canary) wave when the maintenance window allows."""
    if ctx.desired is None:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, "desired state is not running")
    published = await asyncio.to_thread(_published, base, body.version)
    if published is None:
        raise HTTPException(
            status.HTTP_409_CONFLICT,
            "no TUF repository of agent releases on this server: initialise it and publish "
            "the release first",
        )
    if not published:
        message = f"agent version {body.version} is not published in the update repository"
        raise invalid(("body", "version"), message, body.version)
    try:
        r = await ctx.rollouts.create(body.spec(), who.name)
    except RolloutError as e:
        raise _refused(e) from None
    return await _detail(r.id)


@router.get("", response_model=Page[RolloutSummary])
async def list_rollouts(
    _: FleetReader,
    limit: Limit = 50,
    offset: Offset = 0,
    state: RolloutStateFilter = None,
) -> Page[RolloutSummary]:
    """Rollouts, newest first, with per-state terminal counts."""
    query = Rollout.all() if state is None else Rollout.filter(state=state)
    total = await query.count()
    rollouts = await query.order_by("-id").offset(offset).limit(limit)
    rows = await RolloutTerminal.filter(rollout_id__in=[r.id for r in rollouts])
    by: dict[int, list[RolloutTerminal]] = {}
    for x in rows:
        by.setdefault(x.rollout_id, []).append(x)
    items = [summary(r, by.get(r.id, [])) for r in rollouts]
    return Page(items=items, total=total, limit=limit, offset=offset)


@router.get("/{rollout_id}")
async def get_rollout(rollout_id: RolloutId, _: FleetReader) -> RolloutPublic:
    """One rollout: its plan, wave by wave, with every terminal's state and reason."""
    return await _detail(rollout_id)


@router.post("/{rollout_id}/pause", responses=_ERRORS)
async def pause_rollout(
    rollout_id: RolloutId,
    ctx: Ctx,
    who: ConfigWriter,
    body: Annotated[Control | None, Body()] = None,
) -> RolloutPublic:
    """Start no further wave; terminals already updating go on."""
    try:
        await ctx.rollouts.pause(rollout_id, who.name, body.reason if body else "")
    except (RolloutError, LookupError) as e:
        raise _refused(e) from None
    return await _detail(rollout_id)


@router.post("/{rollout_id}/resume", responses=_ERRORS | UNAVAILABLE)
async def resume_rollout(rollout_id: RolloutId, ctx: Ctx, who: ConfigWriter) -> RolloutPublic:
    """Go on, accepting the failures so far (the current wave need not reach the threshold)."""
    if ctx.desired is None:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, "desired state is not running")
    try:
        await ctx.rollouts.resume(rollout_id, who.name)
    except (RolloutError, LookupError) as e:
        raise _refused(e) from None
    return await _detail(rollout_id)


@router.post("/{rollout_id}/abort", responses=_ERRORS)
async def abort_rollout(
    rollout_id: RolloutId,
    ctx: Ctx,
    who: ConfigWriter,
    body: Annotated[Control | None, Body()] = None,
) -> RolloutPublic:
    """Stop for good: terminals not started stay; updated ones keep their version (no downgrade)."""
    try:
        await ctx.rollouts.abort(rollout_id, who.name, body.reason if body else "")
    except (RolloutError, LookupError) as e:
        raise _refused(e) from None
    return await _detail(rollout_id)
