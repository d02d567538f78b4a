"""Remote commands to one terminal (print a test page, refresh status, restart the agent) and
their results. Operators and admins send and read them."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, status

from fleet.server.api.deps import Ctx, FleetReader, FleetWriter
from fleet.server.api.desired_schemas import CommandBody, CommandPublic
from fleet.server.api.params import Limit, Offset, TerminalId
from fleet.server.api.schemas import UNAVAILABLE, Page
from fleet.server.db.models import Command, CommandStatus, Terminal
from fleet.server.desired import commands

router = APIRouter(prefix="/terminals", tags=["commands"])


@router.post(
    "/{terminal_id}/commands",
    response_model=CommandPublic,
    status_code=status.HTTP_201_CREATED,
    responses=UNAVAILABLE,
)
async def send_command(
    terminal_id: TerminalId, body: CommandBody, ctx: Ctx, who: FleetWriter
) -> CommandPublic:
    """Store and publish a command; 503 (the command is kept, `failed`) if the broker is down."""
    if not await Terminal.exists(id=terminal_id):
        raise HTTPException(status.HTTP_404_NOT_FOUND, "no such terminal")
    publisher = ctx.desired.publisher if ctx.desired is not None else None
    cmd = await commands.issue(
        publisher, terminal_id, body.name, body.args, body.ttl_s, who.name, ctx.clock()
    )
    if cmd.status == CommandStatus.FAILED:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, f"command {cmd.id}: {cmd.detail}")
    return CommandPublic.of(cmd)


@router.get("/{terminal_id}/commands", response_model=Page[CommandPublic])
async def list_commands(
    terminal_id: TerminalId, ctx: Ctx, _: FleetReader, limit: Limit = 50, offset: Offset = 0
) -> Page[CommandPublic]:
    """The terminal's commands, newest first, with their results."""
    if not await Terminal.exists(id=terminal_id):
        raise HTTPException(status.HTTP_404_NOT_FOUND, "no such terminal")
    await commands.expire(terminal_id, ctx.clock())
    query = Command.filter(terminal_id=terminal_id)
    total = await query.count()
    rows = await query.order_by("-issued_at").offset(offset).limit(limit)
    items = [CommandPublic.of(c) for c in rows]
    return Page[CommandPublic](items=items, total=total, limit=limit, offset=offset)
