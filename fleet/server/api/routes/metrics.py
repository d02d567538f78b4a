"""Prometheus scrape endpoint, unauthenticated like /healthz (bind or firewall it instead)."""

from __future__ import annotations

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST

from fleet.server.api.deps import Ctx

router = APIRouter(tags=["metrics"])


@router.get("/metrics", response_class=Response, responses={200: {"content": {"text/plain": {}}}})
async def metrics(ctx: Ctx) -> Response:
    """Prometheus text exposition: fleet state, ingest counters, process metrics."""
    return Response(await ctx.metrics.render(), media_type=CONTENT_TYPE_LATEST)
