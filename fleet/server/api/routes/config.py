"""Desired configuration: the layers (defaults <- model <- site <- terminal) and each terminal's
signed document, its history and rollback.

Operators and admins read; only admins change (a layer reaches every terminal under it at once).
A PUT replaces the layer whole (a `null` value deletes a setting, see layers.py), then every
affected terminal's document is recomputed, and published where it changed; the response lists
the result per terminal.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import APIRouter, Body, HTTPException, Query, status
from pydantic import WithJsonSchema

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
from fleet.server.api.errors import invalid, loc_of
from fleet.server.api.layer_schema import LAYER_SCHEMA
from fleet.server.api.params import Limit, ModelId, Offset, SiteId, TerminalId
from fleet.server.api.schemas import UNAVAILABLE
from fleet.server.db.models import ConfigLayer, DesiredDoc, LayerScope, Site, Terminal
from fleet.server.desired.layers import DEFAULTS, check_layer
from fleet.server.desired.service import DesiredService, content_of

router = APIRouter(prefix="/config", tags=["config"])

#: Checked by `check_layer` (the agent's rules); the schema states them for clients.
LayerBody = Annotated[dict[str, Any], WithJsonSchema(LAYER_SCHEMA), Body()]


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
        # The path starts with the layer's name ("site.paper.low_pct"): the body is the layer.
        raise invalid(("body", *loc_of(e.path)[1:]), str(e)) from None
    outcomes = await service(ctx).set_layer(scope, key, layer, who)
    results = Results.of(outcomes)
    return LayerChange(
        layer=await _read(ctx, scope, key),
        overridden=await service(ctx).overridden(scope, key, layer),
        **results.model_dump(),
    )


async def _exists(scope: LayerScope, key: str) -> None:
    if scope == LayerScope.SITE and not await Site.exists(id=key):
        raise HTTPException(status.HTTP_404_NOT_FOUND, "no such site")
    if scope == LayerScope.TERMINAL and not await Terminal.exists(id=key):
        raise HTTPException(status.HTTP_404_NOT_FOUND, "no such terminal")


@router.get("/defaults", response_model=LayerPublic)
async def get_defaults(ctx: Ctx, _: FleetReader) -> LayerPublic:
    """The fleet-wide layer (over the built-in defaults, shown as `base`)."""
    return await _read(ctx, LayerScope.DEFAULT, "")


@router.put("/defaults", response_model=LayerChange, responses=UNAVAILABLE)
async def put_defaults(ctx: Ctx, who: ConfigWriter, layer: LayerBody) -> LayerChange:
    """Replace the fleet-wide layer; every terminal is recomputed."""
    return await _write(ctx, LayerScope.DEFAULT, "", layer, who.name)


# One pair of routes per scope, so that each key's parameter states what such a key may be.


@router.get("/models/{model}", response_model=LayerPublic)
async def get_model_layer(model: ModelId, ctx: Ctx, _: FleetReader) -> LayerPublic:
    """A hardware model's layer (its firmware `[desired]` is shown as `base`)."""
    return await _read(ctx, LayerScope.MODEL, model)


@router.put("/models/{model}", response_model=LayerChange, responses=UNAVAILABLE)
async def put_model_layer(
    model: ModelId, ctx: Ctx, who: ConfigWriter, layer: LayerBody
) -> LayerChange:
    """Replace a model's layer; every terminal of that model is recomputed."""
    return await _write(ctx, LayerScope.MODEL, model, layer, who.name)


@router.get("/sites/{site}", response_model=LayerPublic)
async def get_site_layer(site: SiteId, ctx: Ctx, _: FleetReader) -> LayerPublic:
    """A site's layer."""
    await _exists(LayerScope.SITE, site)
    return await _read(ctx, LayerScope.SITE, site)


@router.put("/sites/{site}", response_model=LayerChange, responses=UNAVAILABLE)
async def put_site_layer(
    site: SiteId, ctx: Ctx, who: ConfigWriter, layer: LayerBody
) -> LayerChange:
    """Replace a site's layer; every terminal of the site is recomputed."""
    await _exists(LayerScope.SITE, site)
    return await _write(ctx, LayerScope.SITE, site, layer, who.name)


@router.get("/terminals/{terminal_id}", response_model=LayerPublic)
async def get_terminal_layer(terminal_id: TerminalId, ctx: Ctx, _: FleetReader) -> LayerPublic:
    """A terminal's own layer."""
    await _exists(LayerScope.TERMINAL, terminal_id)
    return await _read(ctx, LayerScope.TERMINAL, terminal_id)


@router.put("/terminals/{terminal_id}", response_model=LayerChange, responses=UNAVAILABLE)
async def put_terminal_layer(
    terminal_id: TerminalId, ctx: Ctx, who: ConfigWriter, layer: LayerBody
) -> LayerChange:
    """Replace a terminal's own layer; the terminal is recomputed."""
    await _exists(LayerScope.TERMINAL, terminal_id)
    return await _write(ctx, LayerScope.TERMINAL, terminal_id, layer, who.name)


@router.get("/terminals/{terminal_id}/desired", response_model=DesiredPublic)
async def get_desired(
    terminal_id: TerminalId,
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
    sources = await service(ctx).sources(t)
    return DesiredPublic(
        terminal=t.id,
        version=latest.version if latest else None,
        hash=latest.hash if latest else None,
        document=json.loads(latest.payload) if latest else None,
        computed=computed,
        computed_error=computed_error,
        pending=computed is not None and (latest is None or content_of(latest.payload) != computed),
        sources=sources,
        history=[DocSummary.of(d) for d in history],
    )


@router.get("/terminals/{terminal_id}/desired/history", response_model=list[DocSummary])
async def get_desired_history(
    terminal_id: TerminalId,
    _: FleetReader,
    limit: Limit = 100,
    offset: Offset = 0,
) -> list[DocSummary]:
    """The terminal's documents, newest first."""
    t = await _terminal(terminal_id)
    rows = (
        await DesiredDoc.filter(terminal_id=t.id).order_by("-version").offset(offset).limit(limit)
    )
    return [DocSummary.of(d) for d in rows]


@router.post(
    "/terminals/{terminal_id}/desired/rollback", response_model=OutcomePublic, responses=UNAVAILABLE
)
async def rollback(
    terminal_id: TerminalId, body: RollbackBody, ctx: Ctx, _: ConfigWriter
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
