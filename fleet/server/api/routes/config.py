"""Desired configuration: the layers (defaults <- model <- site <- terminal) and each terminal's
signed document, its history and rollback.

Operators and admins read; only admins change (a layer reaches every terminal under it at once).
A PUT replaces the layer whole (a `null` value deletes a setting, see layers.py), then every
affected terminal's document is recomputed, and published where it changed; the response lists
the result per terminal.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, HTTPException, Path, Query, status

from agent.desired.document import DocumentError
from fleet.server.api.deps import ConfigWriter, Ctx, FleetReader
from fleet.server.api.desired_schemas import (
    DesiredPublic,
    DocSummary,
    LayerChange,
    LayerPublic,
    OutcomePublic,
    Results,
    RollbackBody,
)
from fleet.server.db.models import ConfigLayer, DesiredDoc, LayerScope, Site, Terminal
from fleet.server.desired.layers import DEFAULTS, check_layer
from fleet.server.desired.service import DesiredService, content_of

router = APIRouter(prefix="/config", tags=["config"])

LayerBody = Annotated[dict[str, Any], Body(description="a partial configuration")]


def service(ctx: Ctx) -> DesiredService:
    if ctx.desired is None:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, "desired state is not running")
    return ctx.desired


async def _read(ctx: Ctx, scope: LayerScope, key: str) -> LayerPublic:
    row = await ConfigLayer.get_or_none(scope=scope, key=key)
    base: dict[str, Any] | None = None
    if scope == LayerScope.DEFAULT:
        base = DEFAULTS
    elif scope == LayerScope.MODEL and ctx.desired is not None:
        model = ctx.desired.models.get(key)
        base = dict(model.desired) if model is not None else None
    return LayerPublic.of(scope.value, key, row, base)


async def _write(
    ctx: Ctx, scope: LayerScope, key: str, layer: dict[str, Any], who: str
) -> LayerChange:
    try:
        check_layer(layer, scope.value)
    except DocumentError as e:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(e)) from None
    outcomes = await service(ctx).set_layer(scope, key, layer, who)
    results = Results.of(outcomes)
    return LayerChange(layer=await _read(ctx, scope, key), **results.model_dump())


async def _exists(scope: LayerScope, key: str) -> None:
    if scope == LayerScope.SITE and not await Site.exists(id=key):
        raise HTTPException(status.HTTP_404_NOT_FOUND, "no such site")
    if scope == LayerScope.TERMINAL and not await Terminal.exists(id=key):
        raise HTTPException(status.HTTP_404_NOT_FOUND, "no such terminal")


@router.get("/defaults", response_model=LayerPublic)
async def get_defaults(ctx: Ctx, _: FleetReader) -> LayerPublic:
    """The fleet-wide layer (over the built-in defaults, shown as `base`)."""
    return await _read(ctx, LayerScope.DEFAULT, "")


@router.put("/defaults", response_model=LayerChange)
async def put_defaults(ctx: Ctx, who: ConfigWriter, layer: LayerBody) -> LayerChange:
    """Replace the fleet-wide layer; every terminal is recomputed."""
    return await _write(ctx, LayerScope.DEFAULT, "", layer, who.name)


_SCOPES = {"models": LayerScope.MODEL, "sites": LayerScope.SITE, "terminals": LayerScope.TERMINAL}
Kind = Literal["models", "sites", "terminals"]


@router.get("/{kind}/{key}", response_model=LayerPublic)
async def get_layer(kind: Kind, key: str, ctx: Ctx, _: FleetReader) -> LayerPublic:
    """A model's, site's or terminal's layer (a model's firmware `[desired]` is its `base`)."""
    scope = _SCOPES[kind]
    await _exists(scope, key)
    return await _read(ctx, scope, key)


@router.put("/{kind}/{key}", response_model=LayerChange)
async def put_layer(
    kind: Kind,
    key: Annotated[str, Path(min_length=1, max_length=64)],
    ctx: Ctx,
    who: ConfigWriter,
    layer: LayerBody,
) -> LayerChange:
    """Replace a layer; every terminal of that model or site (or the terminal) is recomputed."""
    scope = _SCOPES[kind]
    await _exists(scope, key)
    return await _write(ctx, scope, key, layer, who.name)


@router.get("/terminals/{terminal_id}/desired", response_model=DesiredPublic)
async def get_desired(
    terminal_id: str,
    ctx: Ctx,
    _: FleetReader,
    limit: Annotated[int, Query(ge=1, le=500, description="history entries")] = 20,
) -> DesiredPublic:
    """The terminal's latest document, what the layers give now, and recent history."""
    t = await _terminal(terminal_id)
    history = await DesiredDoc.filter(terminal_id=t.id).order_by("-version").limit(limit)
    latest = history[0] if history else None
    computed: dict[str, Any] | None = None
    computed_error = None
    try:
        computed = await service(ctx).compute(t)
    except DocumentError as e:
        computed_error = str(e)
    return DesiredPublic(
        terminal=t.id,
        version=latest.version if latest else None,
        hash=latest.hash if latest else None,
        document=json.loads(latest.payload) if latest else None,
        computed=computed,
        computed_error=computed_error,
        pending=computed is not None and (latest is None or content_of(latest.payload) != computed),
        history=[DocSummary.of(d) for d in history],
    )


@router.get("/terminals/{terminal_id}/desired/history", response_model=list[DocSummary])
async def get_desired_history(
    terminal_id: str,
    _: FleetReader,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> list[DocSummary]:
    """The terminal's documents, newest first."""
    t = await _terminal(terminal_id)
    rows = (
        await DesiredDoc.filter(terminal_id=t.id).order_by("-version").offset(offset).limit(limit)
    )
    return [DocSummary.of(d) for d in rows]


@router.post("/terminals/{terminal_id}/desired/rollback", response_model=OutcomePublic)
async def rollback(
    terminal_id: str, body: RollbackBody, ctx: Ctx, _: ConfigWriter
) -> OutcomePublic:
    """Publish an old version's content as a new version (the layers stay as they are)."""
    t = await _terminal(terminal_id)
    outcome = await service(ctx).rollback(t.id, body.version)
    if outcome is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no version {body.version}")
    return OutcomePublic.of(outcome)


async def _terminal(terminal_id: str) -> Terminal:
    t = await Terminal.get_or_none(id=terminal_id)
    if t is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "no such terminal")
    return t
